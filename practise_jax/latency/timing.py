"""Interleaved timing of blocking calls on an injected clock (pure: callables in, seconds out).

The machine may be shared, so candidates are never timed alone. Each round
runs the reference (A) and every candidate (B1..Bn) interleaved::

    A B1 A B2 A ... A Bn A     (the next round runs the candidates in reverse)

so reference and candidates are sampled over the same stretch of time and
slow drift reaches both alike.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from collections.abc import Callable, Sequence

Clock = Callable[[], float]
# "wall" is latency. "cpu" is the CPU time of this process (all its threads): on a host shared with other jobs it
# does not count the time they take from us, so it ranks candidates more stably, but it is work, not latency.
CLOCKS: dict[str, Clock] = {"wall": time.perf_counter, "cpu": time.process_time}
MIN_ROUNDS = 5
MAX_ROUNDS = 500


def time_call(fn: Callable[[], object], clock: Clock = time.perf_counter) -> float:
    """Seconds one blocking call of ``fn`` takes on ``clock``."""
    start = clock()
    fn()
    return clock() - start


@dataclasses.dataclass(frozen=True)
class Interleaved:
    """Raw samples of one interleaved run, in seconds.

    ``teacher[k]`` are all reference calls in order; ``candidates[i]`` the calls
    of candidate i; ``taus[i][r] = 1 - candidates[i][r] / (mean of the two
    reference calls around it)``, candidate i's paired tau in round r.
    """

    teacher: tuple[float, ...]
    candidates: tuple[tuple[float, ...], ...]
    taus: tuple[tuple[float, ...], ...]


def run_interleaved(teacher: Callable[[], object], candidates: Sequence[Callable[[], object]], rounds: int,
                    clock: Clock = time.perf_counter) -> Interleaved:
    """Time ``A B1 A B2 ... A Bn A`` for ``rounds`` rounds, reversing the candidate order every other round.

    Each callable must run once and block until its result is ready. Python's
    garbage collector is paused meanwhile, so it cannot land inside a timed call.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        return _interleaved_rounds(teacher, candidates, rounds, clock)
    finally:
        if collecting:
            gc.enable()


def _interleaved_rounds(teacher, candidates, rounds, clock) -> Interleaved:
    n = len(candidates)
    teacher_times: list[float] = []
    cand_times: list[list[float]] = [[] for _ in range(n)]
    paired: list[list[float]] = [[] for _ in range(n)]
    for r in range(rounds):
        order = range(n) if r % 2 == 0 else range(n - 1, -1, -1)
        before = time_call(teacher, clock)
        teacher_times.append(before)
        for i in order:
            t_b = time_call(candidates[i], clock)
            after = time_call(teacher, clock)
            teacher_times.append(after)
            cand_times[i].append(t_b)
            paired[i].append(0.5 * (before + after))
            before = after
    taus = tuple(tuple(1.0 - b / a for b, a in zip(cand_times[i], paired[i])) for i in range(n))
    return Interleaved(teacher=tuple(teacher_times), candidates=tuple(tuple(c) for c in cand_times), taus=taus)


def choose_rounds(seconds_per_round: float, time_budget_s: float, *, minimum: int = MIN_ROUNDS, maximum: int = MAX_ROUNDS) -> int:
    """How many rounds fit ``time_budget_s``, clamped to ``[minimum, maximum]``."""
    if seconds_per_round <= 0 or not math.isfinite(seconds_per_round):
        return maximum
    return int(min(maximum, max(minimum, time_budget_s // seconds_per_round)))
