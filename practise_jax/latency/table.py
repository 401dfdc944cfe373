"""A profile as tidy rows, a printed table and CSV; reading tau back from such a CSV."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from practise_jax.errors import UserError
from practise_jax.latency.profile import FAST_QUANTILE, Profile

CSV_FIELDS = (
    "model", "kind", "drop", "n_dropped", "latency_ms", "latency_q25_ms", "latency_q75_ms", "teacher_latency_ms",
    "tau", "tau_round_q25", "tau_round_q75", "tau_pct", "tau_predicted", "flops_tau", "gflops", "bytes_accessed_mb", "params",
    "calls", "warmup", "repeats", "clock", "cpu_threads", "device", "device_kind", "platform", "jax_version", "dtype",
    "batch_size", "image_size", "cached", "xla_flags", "program",
)


def rows(profile: Profile) -> list[dict]:
    """Tidy rows: one per model, with the setting on every row. tau columns are fractions, ``tau_pct`` percent."""
    s = profile.setting
    out = []
    for m in (profile.teacher, *profile.candidates):
        lat, tlat, rounds = m.latency, m.teacher_latency, m.round_tau
        out.append({
            "model": s.label, "kind": "teacher" if not m.drop else ("block" if len(m.drop) == 1 else "set"),
            "drop": "+".join(m.drop), "n_dropped": len(m.drop),
            "latency_ms": 1e3 * lat.median, "latency_q25_ms": 1e3 * lat.q25, "latency_q75_ms": 1e3 * lat.q75,
            "teacher_latency_ms": 1e3 * tlat.median,
            "tau": m.tau, "tau_round_q25": rounds.q25, "tau_round_q75": rounds.q75, "tau_pct": 100 * m.tau,
            "tau_predicted": profile.predicted_tau(m.drop) if len(m.drop) > 1 else None, "flops_tau": profile.flops_tau(m.drop),
            "gflops": m.cost.flops / 1e9, "bytes_accessed_mb": m.cost.bytes_accessed / 1e6, "params": m.cost.params,
            "calls": m.calls, "warmup": s.warmup, "repeats": s.repeats, "clock": s.clock, "cpu_threads": s.cpu_threads,
            "device": s.device, "device_kind": s.device_kind, "platform": s.platform, "jax_version": s.jax_version,
            "dtype": s.dtype, "batch_size": s.batch_size, "image_size": s.image_size, "cached": m.cached,
            "xla_flags": s.xla_flags, "program": m.program,
        })
    return out


def additivity(profile: Profile) -> list[dict]:
    """For each multi-block drop set: measured tau vs the sum of its single-block taus (fractions)."""
    singles = profile.tau()
    out = []
    for m in profile.candidates:
        if len(m.drop) < 2:
            continue
        predicted = profile.predicted_tau(m.drop)
        rounds = m.round_tau
        s = profile.setting
        out.append({
            "model": s.label, "drop": "+".join(m.drop), "n_dropped": len(m.drop),
            "tau_measured": m.tau, "tau_round_q25": rounds.q25, "tau_round_q75": rounds.q75,
            "tau_predicted": predicted, "difference": None if predicted is None else m.tau - predicted,
            "flops_tau": profile.flops_tau(m.drop),
            "flops_tau_predicted": sum(profile.flops_tau((b,)) for b in m.drop) if all(b in singles for b in m.drop) else None,
            "device": s.device, "dtype": s.dtype, "batch_size": s.batch_size, "image_size": s.image_size,
            "jax_version": s.jax_version, "rounds": m.calls, "clock": s.clock, "cpu_threads": s.cpu_threads,
            "xla_flags": s.xla_flags,
        })
    return out


def format_table(profile: Profile) -> str:
    """A plain-text table: latency ms (IQR), tau % (IQR of single rounds), predicted tau % for sets, GFLOPs, FLOP cut %."""
    s = profile.setting
    rounds = sorted({m.calls for m in profile.candidates}) or [profile.teacher.calls]
    header = (f"{s.label} | {s.device} | {s.platform} | jax {s.jax_version} | {s.dtype} | batch {s.batch_size} | "
              f"{s.image_size}px | {s.clock} clock{f' | pinned to {s.cpu_threads} core(s)' if s.cpu_threads else ''} | "
              f"rounds {'/'.join(map(str, rounds))} (repeats {s.repeats}, warmup {s.warmup})")
    width = max([len("drop"), len("(teacher)")] + [len("+".join(m.drop)) for m in profile.candidates])
    lines = [header,
             f"{len(profile.candidates)} candidates, {profile.distinct} distinct programs timed (identical blocks share one)",
             f"tau = (lat teacher - lat pruned) / lat teacher from the {100 * FAST_QUANTILE:.0f}th percentiles of their "
             "interleaved calls, in % (IQR: paired single rounds); GFLOPs per call (whole batch), from XLA's cost analysis",
             f"{'drop':<{width}}  {'latency ms (IQR)':>18}  {'tau % (IQR)':>15}  {'sum singles %':>13}  "
             f"{'GFLOPs':>9}  {'FLOP cut %':>10}  cached"]
    for m in (profile.teacher, *profile.candidates):
        lat = m.latency
        predicted = profile.predicted_tau(m.drop) if len(m.drop) > 1 else None
        tau_text = "-" if not m.drop else f"{100 * m.tau:6.2f} ({100 * m.round_tau.iqr:5.2f})"
        lines.append(
            f"{'+'.join(m.drop) or '(teacher)':<{width}}  {1e3 * lat.median:10.2f} ({1e3 * lat.iqr:5.2f})  "
            f"{tau_text:>15}  {'' if predicted is None else f'{100 * predicted:6.2f}':>13}  "
            f"{m.cost.flops / 1e9:9.4f}  {100 * profile.flops_tau(m.drop):10.2f}  {'yes' if m.cached else 'no'}")
    return "\n".join(lines)


def write_csv(table: Sequence[Mapping], path: str | os.PathLike, *, fields: Sequence[str] | None = None,
              append: bool = False) -> None:
    """Write tidy rows (floats rounded to 6 significant digits); ``append`` adds to an existing file without a header."""
    path = Path(path)
    fields = list(fields or (CSV_FIELDS if table and set(CSV_FIELDS) <= set(table[0]) else table[0].keys()))
    path.parent.mkdir(parents=True, exist_ok=True)
    header = not (append and path.exists() and path.stat().st_size > 0)
    with path.open("a" if append else "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        if header:
            writer.writeheader()
        for row in table:
            writer.writerow({k: _fmt(row.get(k)) for k in fields})


def _fmt(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


def read_tau(path: str | os.PathLike) -> dict[str, float]:
    """``{block: tau}`` of the single-block rows of a profile CSV (`write_csv`) or a scores CSV (``block,tau``)."""
    try:
        with open(path, newline="") as handle:
            table = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"cannot read latency reductions from '{path}' ({type(error).__name__}: {error}).") from None
    if table and "drop" in table[0] and "tau" in table[0]:
        tau = {r["drop"]: float(r["tau"]) for r in table if r.get("kind") == "block"}
    elif table and "block" in table[0] and "tau" in table[0]:
        tau = {r["block"]: float(r["tau"]) for r in table}
    else:
        tau = {}
    if not tau:
        raise UserError(f"'{path}' holds no single-block tau; give the CSV of `practise-jax profile --out` "
                        "or a scores.csv (columns block, tau).")
    return tau
