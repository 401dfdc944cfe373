"""Block selection: score s(B) = R(B) / tau(B) and the choice of blocks to drop.

tau is a fraction everywhere in this library; the score divides by tau in
*percent*, as the reference does (PRACTISE_SPEC.md sections 3-4), so printed
scores compare with the reference's. The factor 100 never changes a ranking.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from model_zoo.errors import UserError


@dataclasses.dataclass(frozen=True)
class Scored:
    block: str
    recoverability: float
    tau: float  # fraction of the teacher's latency saved by dropping this block alone
    score: float  # recoverability / (100 * tau); +inf when the block saves no measurable time
    rank: int  # 1 = best (smallest score)


def score(recoverability: Mapping[str, float], tau: Mapping[str, float]) -> list[Scored]:
    """Rank candidates by R / tau(%) ascending; a block that saves nothing ranks last."""
    raw = []
    for block, r in recoverability.items():
        t = tau[block]
        raw.append((r / (100.0 * t) if t > 0 else math.inf, block, r, t))
    raw.sort(key=lambda item: (item[0], item[2]))
    return [Scored(block, r, t, s, rank) for rank, (s, block, r, t) in enumerate(raw, start=1)]


def check_count(k: int, candidates: int) -> None:
    if not 1 <= k <= candidates:
        raise UserError(f"cannot drop {k} blocks: there are {candidates} candidates; choose k from 1 to {candidates}.")


def check_target(target: float) -> None:
    if not 0 < target < 1:
        raise UserError(f"the latency target must be a fraction between 0 and 1 (0.22 = 22% faster), got {target}.")


def check_reachable(target: float, reachable: float) -> None:
    if reachable < target:
        raise UserError(
            f"a latency reduction of {100 * target:.1f}% is out of reach: dropping every candidate saves about "
            f"{100 * reachable:.1f}%. Ask for at most that."
        )


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


def top_k(scored: Sequence[Scored], k: int) -> list[str]:
    """The k blocks with the smallest scores."""
    check_count(k, len(scored))
    return [s.block for s in sorted(scored, key=lambda s: s.rank)[:k]]


def for_speedup(scored: Sequence[Scored], target: float, resolution: float = 1e-4) -> list[str]:
    """The drop set whose summed single-block tau reaches ``target`` with the least total score.

    Exact min-cost cover by dynamic programming over tau in steps of
    ``resolution`` (0.01 percentage points). The sum of single-block taus
    predicts the set's tau; measure the chosen set to confirm it.
    """
    check_target(target)
    usable = [s for s in scored if s.tau > 0 and math.isfinite(s.score)]
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
    return [s.block for s in sorted(scored, key=lambda s: s.rank) if s.block in chosen]
