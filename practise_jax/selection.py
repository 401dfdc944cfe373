"""Scores and block selection: s(B) = R(B) / tau(B), then top-k or a latency target.

tau is a fraction everywhere in this library; the score divides by tau in
*percent*, as the reference does (PRACTISE_SPEC.md sections 3-4), so printed
scores compare with the reference's. The factor 100 never changes a ranking.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from practise_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Score:
    """One candidate: recoverability R, latency reduction tau (a fraction), score R / tau%, rank (1 = best)."""

    block: str
    recoverability: float
    tau: float
    score: float  # recoverability / (100 * tau); +inf when the block saves no measurable time
    rank: int
    raw_distance: float = math.nan  # the feature distance before adaptor training (logged by the reference)


class Scores(Sequence[Score]):
    """Every candidate's R, tau and R / tau%, ranked best first; a read-only sequence of `Score` rows.

    ``scores["layer1.2"]`` looks a block up; ``scores.blocks`` lists them by
    rank; ``scores.to_csv(path)`` writes the table, ``Scores.from_csv`` reads it back.
    """

    CSV_FIELDS = ("rank", "block", "recoverability", "raw_distance", "tau", "tau_pct", "score")

    def __init__(self, rows: Iterable[Score]):
        self._rows = tuple(sorted(rows, key=lambda s: s.rank))

    @classmethod
    def rank(cls, recoverability: Mapping[str, float], tau: Mapping[str, float],
             raw_distance: Mapping[str, float] | None = None) -> Scores:
        """Rank candidates by R / tau% ascending (ties: smaller R first); a block that saves nothing ranks last."""
        missing = [b for b in recoverability if b not in tau]
        if missing:
            raise UserError(f"no latency reduction tau for {', '.join(missing)}; profile those blocks too.")
        raw = []
        for block, r in recoverability.items():
            t = tau[block]
            raw.append((r / (100.0 * t) if t > 0 else math.inf, r, block, t))
        raw.sort(key=lambda item: (item[0], item[1]))
        distance = raw_distance or {}
        return cls(Score(block, r, t, s, rank, distance.get(block, math.nan))
                   for rank, (s, r, block, t) in enumerate(raw, start=1))

    def __getitem__(self, key):
        if isinstance(key, str):
            for row in self._rows:
                if row.block == key:
                    return row
            raise KeyError(f"no score for block '{key}'")
        return self._rows[key]

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def blocks(self) -> list[str]:
        """The candidates, best first."""
        return [s.block for s in self._rows]

    @property
    def tau(self) -> dict[str, float]:
        return {s.block: s.tau for s in self._rows}

    def to_csv(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(self.CSV_FIELDS)
            for s in self._rows:
                writer.writerow([s.rank, s.block, f"{s.recoverability:.6g}", f"{s.raw_distance:.6g}", f"{s.tau:.6f}",
                                 f"{100 * s.tau:.3f}", f"{s.score:.6g}"])
        return path

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> Scores:
        try:
            with open(path, newline="") as file:
                rows = list(csv.DictReader(file))
            return cls(Score(r["block"], float(r["recoverability"]), float(r["tau"]), float(r["score"]), int(r["rank"]),
                             float(r.get("raw_distance") or math.nan)) for r in rows)
        except (OSError, KeyError, ValueError) as error:
            raise UserError(f"cannot read scores from '{path}' ({type(error).__name__}: {error}); "
                            "give a scores.csv written by Scores.to_csv or `practise-jax score`.") from None

    def __str__(self) -> str:
        lines = [f"{'rank':>4}  {'block':<14} {'R':>10} {'R no adapt':>10} {'tau %':>7} {'R/tau%':>10}"]
        lines += [f"{s.rank:>4}  {s.block:<14} {s.recoverability:>10.5f} {s.raw_distance:>10.5f} {100 * s.tau:>7.2f} "
                  f"{s.score:>10.5f}" for s in self._rows]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Scores({len(self)} candidates, best {self.blocks[:3]})"


def check_count(k: int, candidates: int) -> None:
    if not 1 <= k <= candidates:
        raise UserError(f"cannot drop {k} blocks: there are {candidates} candidates; choose k from 1 to {candidates}.")


def check_target(target: float) -> None:
    if not 0 < target < 1:
        raise UserError(f"the latency target must be a fraction between 0 and 1 (0.22 = 22% faster), got {target}.")


def check_reachable(target: float, reachable: float) -> None:
    if reachable <= 0:
        raise UserError(
            f"a latency reduction of {100 * target:.1f}% is out of reach: the latency profile measured no saving for "
            "any candidate (every tau <= 0), so its timings were noise. Profile again with more repeats on an idle "
            "machine, or choose a number of blocks to drop (k=... in the API, --drop K on the command line).")
    if reachable < target:
        raise UserError(
            f"a latency reduction of {100 * target:.1f}% is out of reach: dropping every candidate saves about "
            f"{100 * reachable:.1f}%. Ask for at most that.")


def in_order(order: Sequence[str], tau: Mapping[str, float], target: float) -> list[str]:
    """The shortest prefix of ``order`` whose summed single-block tau reaches ``target`` (first-k, random baselines)."""
    check_target(target)
    chosen, saved = [], 0.0
    for block in order:
        if saved >= target:
            break
        chosen.append(block)
        saved += tau[block]
    check_reachable(target, saved)
    return chosen


def top_k(scores: Sequence[Score], k: int) -> list[str]:
    """The k blocks with the smallest scores."""
    check_count(k, len(scores))
    return [s.block for s in sorted(scores, key=lambda s: s.rank)[:k]]


def for_speedup(scores: Sequence[Score], target: float, resolution: float = 1e-4) -> list[str]:
    """The drop set whose summed single-block tau reaches ``target`` with the least total score.

    Exact min-cost cover by dynamic programming over tau in steps of
    ``resolution`` (0.01 percentage points). The sum of single-block taus
    predicts the set's tau; measure the chosen set to confirm it.
    """
    check_target(target)
    usable = [s for s in scores if s.tau > 0 and math.isfinite(s.score)]
    check_reachable(target, sum(s.tau for s in usable))
    need = math.ceil(target / resolution - 1e-9)
    best: list[tuple[float, tuple[int, ...]] | None] = [None] * (need + 1)  # best[t]: least cost covering >= t units
    best[0] = (0.0, ())
    for i, s in enumerate(usable):
        units = max(1, round(s.tau / resolution))
        for covered in range(need, -1, -1):
            if best[covered] is None:
                continue
            total = min(need, covered + units)
            cost = best[covered][0] + s.score
            if best[total] is None or cost < best[total][0]:
                best[total] = (cost, best[covered][1] + (i,))
    chosen = {usable[i].block for i in best[need][1]}
    return [s.block for s in sorted(scores, key=lambda s: s.rank) if s.block in chosen]


@dataclasses.dataclass(frozen=True)
class Fitted:
    """A drop set adjusted to a latency target as measured: its blocks, its measured cut (a fraction), and every
    set measured on the way with its cut."""

    blocks: list[str]
    measured: float
    trail: tuple[tuple[tuple[str, ...], float], ...]


def fit_measured(chosen: Sequence[str], ranking: Sequence[str], single_tau: Mapping[str, float],
                 measure, target: float, *, tolerance: float = 0.01, max_measurements: int = 12) -> Fitted:
    """Add or remove blocks until the *measured* latency cut of the set is within ``tolerance`` of ``target``.

    The sum of single-block taus only predicts a set's cut (sets of many
    blocks measure several points more on a CPU), so a set chosen for a target
    is measured (``measure(blocks) -> tau``) and adjusted: below the target,
    the best-ranked block not yet in it is added; above it, the worst-ranked
    chosen block whose removal is predicted to come closer to the target (its
    single tau below twice the excess) is removed. ``ranking`` lists the criterion's order, best first (by score for
    PRACTISE, forward order for first-k). A block is never added back after
    its removal, nor removed after being added. Stops within tolerance, when
    no move is left, or after ``max_measurements``; returns the measured set
    closest to the target, preferring those within tolerance.
    """
    check_target(target)
    order = [b for b in ranking if b in single_tau]
    current, added, removed, trail = list(chosen), set(), set(), []
    for _ in range(max_measurements):
        cut = float(measure(tuple(current)))
        trail.append((tuple(current), cut))
        if abs(cut - target) <= tolerance:
            break
        if cut < target:
            extra = next((b for b in order if b not in current and b not in removed), None)
            if extra is None:
                break
            current.append(extra)
            added.add(extra)
        else:
            excess = cut - target
            removable = [b for b in reversed(order) if b in current and b not in added and single_tau[b] < 2 * excess]
            if not removable or len(current) == 1:
                break
            current.remove(removable[0])
            removed.add(removable[0])
    blocks, cut = min(trail, key=lambda entry: (abs(entry[1] - target) > tolerance, abs(entry[1] - target)))
    return Fitted(list(blocks), cut, tuple(trail))
