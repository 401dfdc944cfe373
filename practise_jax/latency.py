"""Latency profiler and XLA cost model: tau for every candidate block.

PRACTISE ranks a drop set B by recoverability per latency saved, with the
latency reduction

    tau(B) = (lat(teacher) - lat(teacher without B)) / lat(teacher).

**In this API tau is a fraction** (0.05 means 5 %); the tables print it in
percent. The reference implementation multiplies by 100 inside its score
(docs/PRACTISE_SPEC.md section 3); that factor does not change the ranking.

How a figure is measured
------------------------
Each model (the teacher, and one statically pruned model per candidate) is
built with random weights in eval mode, split once, and its forward pass
``(state, x) -> logits`` is jitted, lowered and compiled once for the given
batch, image size and dtype. The input is one N(0, 1) batch on the device.
After ``warmup`` untimed calls, a timed call is ``clock(); fn();
block_until_ready; clock()``.

The machine may be shared, so candidates are never timed alone. Each round
runs the teacher (A) and every candidate (B1..Bn) interleaved::

    A B1 A B2 A ... A Bn A     (the next round runs the candidates in reverse)

Teacher and candidates are thus sampled over the same stretch of time, so
slow drift reaches both alike. ``tau`` of a candidate compares the fast ends of
the two samples::

    tau = 1 - quantile(t_B, FAST_QUANTILE) / quantile(t_A, FAST_QUANTILE)

with every teacher call of the run in ``t_A``. Interference on a shared
machine only ever adds time, so the fast end of a sample is where it is
thinnest; the 20th percentile keeps enough calls to be steady. On the 2-vCPU
reference machine (cifar_resnet56, batch 64, two quiet pairs of 43-44 round
runs) two runs agreed to 0.59 and 0.70 percentage points at worst over 24
blocks, where the median of per-round paired ratios (this module's earlier
estimator) differed by up to 1.05 and 1.61 pp on the same calls
(``experiments/latency_estimators.py``; ``experiments/README.md``). The
per-round paired ratio ``1 - t_B / mean(t_A before, t_A after)`` is kept as
the spread of one round (``tau_round_q25`` / ``tau_round_q75``). A latency is
the median per-call time with its interquartile range. (The reference instead
reports the mean of 500 consecutive calls at batch 64.)

The number of rounds is ``repeats`` when given, otherwise as many as fit a
time budget of ``time_budget_s`` seconds of timed calls *per candidate* (at
least ``MIN_ROUNDS``): fast devices get many, a 2-core CPU few. The default,
24 s per candidate, gives about 43 rounds for cifar_resnet56 at batch 64 on one
pinned core of the reference machine (about 11 minutes for its 24 blocks).
CPU noise. On a small shared CPU, timing in the process that trains, with
XLA's thread pool spread over every core, is noisy (per-call spread of several
percent from scheduling alone). So on a CPU device the calls run by default in
a fresh child process pinned to ``cpu_threads`` cores with XLA's intra-op
threads set to match (``DEFAULT_CPU_THREADS`` = 1: single-threaded, pinned to
one core, which on the 2-core reference machine cut the per-round spread of tau
from 4.1 to 1.3 percentage points). Such a figure is the latency on that many
cores; ``cpu_threads=0`` measures in this process with all of its threads.
GPUs and TPUs are always measured in-process.

The clock is injected: ``"wall"`` (``time.perf_counter``) measures latency;
``"cpu"`` (``time.process_time``) measures this process's CPU time, which on a
CPU host shared with other jobs ignores the time they take from us (steadier,
but it is work, not latency); tests pass a fake clock.

Cost model
----------
``Cost`` holds XLA's own cost analysis of the compiled forward pass (FLOPs and
bytes accessed per call, i.e. for the whole batch) and the parameter count.
Its FLOP reduction is a latency-free prediction of tau.

Cache
-----
Every measurement is stored as one JSON file under ``default_cache_dir()``
(``$PRACTISE_CACHE/latency``, else ``~/.cache/practise-jax/latency``), keyed by
model, drop set, device, batch, image size, dtype, JAX version and the
repeat setting; a repeated profile reads it back without building a model.
"""

from __future__ import annotations

import csv
import ctypes
import dataclasses
import functools
import gc
import hashlib
import json
import math
import multiprocessing
import os
import platform as platform_lib
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

import model_zoo
from model_zoo.blocks import parse_block_list, validate_drop_set
from model_zoo.errors import UserError

Clock = Callable[[], float]
Log = Callable[[str], None]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# "wall" is latency. "cpu" is the CPU time of this process (all its threads): on a host shared with other jobs it
# does not count the time they take from us, so it ranks candidates more stably, but it is work, not latency.
CLOCKS: dict[str, Clock] = {"wall": time.perf_counter, "cpu": time.process_time}
DEFAULT_TIME_BUDGET_S = 24.0  # seconds of timed calls per candidate
FAST_QUANTILE = 0.2  # tau compares this quantile of candidate and teacher call times (see the module docstring)
DEFAULT_CPU_THREADS = 1  # on CPU: measure in a child process pinned to this many cores (0: in this process)
MIN_ROUNDS = 5
DEFAULT_WARMUP = 2  # untimed calls per model; the first after compiling is slow, the last sizes the rounds
MAX_ROUNDS = 500
CACHE_FORMAT = 2  # 2: a candidate's teacher_s holds every teacher call of its run


# --------------------------------------------------------------------------- statistics

@dataclasses.dataclass(frozen=True)
class Spread:
    """Median and quartiles of a sample (quartiles by linear interpolation)."""

    median: float
    q25: float
    q75: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        values = sorted(float(v) for v in values)
        if not values:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(_quantile(values, 0.5), _quantile(values, 0.25), _quantile(values, 0.75), len(values))

    @property
    def iqr(self) -> float:
        return self.q75 - self.q25


def _quantile(ordered: Sequence[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --------------------------------------------------------------------------- timing (pure: callables and a clock)

def time_call(fn: Callable[[], object], clock: Clock = time.perf_counter) -> float:
    """Seconds one blocking call of ``fn`` takes on ``clock``."""
    start = clock()
    fn()
    return clock() - start


@dataclasses.dataclass(frozen=True)
class Interleaved:
    """Raw samples of one interleaved run, in seconds.

    ``teacher[k]`` are all teacher calls in order; ``candidates[i]`` the calls
    of candidate i; ``taus[i][r] = 1 - candidates[i][r] / (mean of the two
    teacher calls around it)``, candidate i's paired tau in round r.
    """

    teacher: tuple[float, ...]
    candidates: tuple[tuple[float, ...], ...]
    taus: tuple[tuple[float, ...], ...]


def run_interleaved(
    teacher: Callable[[], object],
    candidates: Sequence[Callable[[], object]],
    rounds: int,
    clock: Clock = time.perf_counter,
) -> Interleaved:
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
    return Interleaved(
        teacher=tuple(teacher_times),
        candidates=tuple(tuple(c) for c in cand_times),
        taus=taus,
    )


def choose_rounds(seconds_per_round: float, time_budget_s: float, *, minimum: int = MIN_ROUNDS, maximum: int = MAX_ROUNDS) -> int:
    """How many rounds fit ``time_budget_s``, clamped to ``[minimum, maximum]``."""
    if seconds_per_round <= 0 or not math.isfinite(seconds_per_round):
        return maximum
    return int(min(maximum, max(minimum, time_budget_s // seconds_per_round)))


# --------------------------------------------------------------------------- results

@dataclasses.dataclass(frozen=True)
class Cost:
    """XLA's cost analysis of one compiled forward call (whole batch) and the parameter count."""

    flops: float
    bytes_accessed: float
    params: int


@dataclasses.dataclass(frozen=True)
class Setting:
    """Everything a latency figure depends on; goes with every figure and keys the cache."""

    model: str
    batch_size: int
    image_size: int
    dtype: str
    platform: str
    device_kind: str
    device: str  # device_kind, plus the CPU model and core count on a CPU
    jax_version: str
    repeats: str  # the request: "12" rounds, or "auto:60s" (time budget)
    warmup: int
    clock: str = "wall"  # "wall" (latency), "cpu" (process CPU time) or the name of an injected clock
    overrides: tuple[tuple[str, object], ...] = ()  # model constructor overrides (tiny test models)
    cpu_threads: int = 0  # CPU only: cores of the pinned child process that measured (0: the caller's process)
    xla_flags: str = ""  # CPU only: XLA_FLAGS in force (they change XLA:CPU's kernels; see practise_jax.xla_cpu)

    def cache_key(self, drop: Sequence[str]) -> dict:
        key = dataclasses.asdict(self)
        key["overrides"] = [[k, _jsonable(v)] for k, v in self.overrides]
        return {"format": CACHE_FORMAT, **key, "drop": list(drop)}


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One model's figures: its own calls, every teacher call of its run, the paired tau of each round (fractions)."""

    drop: tuple[str, ...]
    latency_s: tuple[float, ...]
    teacher_s: tuple[float, ...]
    taus: tuple[float, ...]
    cost: Cost
    cached: bool = False

    @property
    def latency(self) -> Spread:
        return Spread.of(self.latency_s)

    @property
    def teacher_latency(self) -> Spread:
        return Spread.of(self.teacher_s)

    @property
    def tau(self) -> float:
        """Latency reduction as a fraction, from the fast ends of candidate and teacher calls (0 for the reference)."""
        if not self.taus:  # the reference of its run (the teacher) has no paired rounds
            return 0.0
        fast = functools.partial(_quantile, q=FAST_QUANTILE)
        return 1.0 - fast(sorted(self.latency_s)) / fast(sorted(self.teacher_s))

    @property
    def round_tau(self) -> Spread:
        """The paired tau of single rounds: median and quartiles, the scatter behind ``tau``."""
        return Spread.of(self.taus) if self.taus else Spread(0.0, 0.0, 0.0, 0)

    @property
    def calls(self) -> int:
        """Timed calls of this model (a candidate: one per round; the teacher: all its interleaved calls)."""
        return len(self.latency_s)

    def to_json(self) -> dict:
        return {
            "drop": list(self.drop), "latency_s": list(self.latency_s), "teacher_s": list(self.teacher_s),
            "taus": list(self.taus), "cost": dataclasses.asdict(self.cost),
        }

    @classmethod
    def from_json(cls, data: Mapping, *, cached: bool = False) -> Measurement:
        return cls(
            drop=tuple(data["drop"]), latency_s=tuple(data["latency_s"]), teacher_s=tuple(data["teacher_s"]),
            taus=tuple(data["taus"]), cost=Cost(**data["cost"]), cached=cached,
        )


@dataclasses.dataclass(frozen=True)
class Profile:
    """The teacher and every candidate under one setting."""

    setting: Setting
    teacher: Measurement
    candidates: tuple[Measurement, ...]

    def get(self, drop: Iterable[str]) -> Measurement:
        wanted = set(drop)
        if not wanted:
            return self.teacher
        for m in self.candidates:
            if set(m.drop) == wanted:
                return m
        raise KeyError(f"drop set {sorted(wanted)} was not profiled")

    def tau(self, drop: Iterable[str]) -> float:
        """Measured tau of a drop set, as a fraction."""
        return self.get(drop).tau

    def predicted_tau(self, drop: Iterable[str]) -> float | None:
        """Sum of the single-block taus of ``drop`` (the additive model), or None if one is missing."""
        singles = {m.drop[0]: m.tau for m in self.candidates if len(m.drop) == 1}
        drop = tuple(drop)
        if not drop or any(b not in singles for b in drop):
            return None
        return sum(singles[b] for b in drop)

    def flops_tau(self, drop: Iterable[str]) -> float:
        """FLOP reduction of a drop set relative to the teacher, as a fraction (the cost model's tau)."""
        return 1.0 - self.get(drop).cost.flops / self.teacher.cost.flops

    def rows(self) -> list[dict]:
        """Tidy rows: one per model, with the setting on every row. tau columns are fractions, ``tau_pct`` percent."""
        s = self.setting
        rows = []
        for m in (self.teacher, *self.candidates):
            lat, tlat, rounds = m.latency, m.teacher_latency, m.round_tau
            predicted = self.predicted_tau(m.drop) if len(m.drop) > 1 else None
            rows.append({
                "model": s.model, "kind": "teacher" if not m.drop else ("block" if len(m.drop) == 1 else "set"),
                "drop": "+".join(m.drop), "n_dropped": len(m.drop),
                "latency_ms": 1e3 * lat.median, "latency_q25_ms": 1e3 * lat.q25, "latency_q75_ms": 1e3 * lat.q75,
                "teacher_latency_ms": 1e3 * tlat.median,
                "tau": m.tau, "tau_round_q25": rounds.q25, "tau_round_q75": rounds.q75, "tau_pct": 100 * m.tau,
                "tau_predicted": predicted, "flops_tau": self.flops_tau(m.drop),
                "gflops": m.cost.flops / 1e9, "bytes_accessed_mb": m.cost.bytes_accessed / 1e6, "params": m.cost.params,
                "calls": m.calls, "warmup": s.warmup, "repeats": s.repeats, "clock": s.clock, "cpu_threads": s.cpu_threads,
                "device": s.device, "device_kind": s.device_kind, "platform": s.platform, "jax_version": s.jax_version,
                "dtype": s.dtype, "batch_size": s.batch_size, "image_size": s.image_size, "cached": m.cached,
                "xla_flags": s.xla_flags,
            })
        return rows


def additivity(profile: Profile) -> list[dict]:
    """For each multi-block drop set: measured tau vs the sum of its single-block taus (fractions)."""
    rows = []
    for m in profile.candidates:
        if len(m.drop) < 2:
            continue
        predicted = profile.predicted_tau(m.drop)
        rounds = m.round_tau
        rows.append({
            "model": profile.setting.model, "drop": "+".join(m.drop), "n_dropped": len(m.drop),
            "tau_measured": m.tau, "tau_round_q25": rounds.q25, "tau_round_q75": rounds.q75,
            "tau_predicted": predicted, "difference": None if predicted is None else m.tau - predicted,
            "flops_tau": profile.flops_tau(m.drop),
            "flops_tau_predicted": sum(profile.flops_tau((b,)) for b in m.drop)
            if all(_has(profile, (b,)) for b in m.drop) else None,
            "device": profile.setting.device, "dtype": profile.setting.dtype,
            "batch_size": profile.setting.batch_size, "image_size": profile.setting.image_size,
            "jax_version": profile.setting.jax_version, "rounds": m.calls, "clock": profile.setting.clock,
            "cpu_threads": profile.setting.cpu_threads, "xla_flags": profile.setting.xla_flags,
        })
    return rows


def _has(profile: Profile, drop) -> bool:
    try:
        profile.get(drop)
        return True
    except KeyError:
        return False


# --------------------------------------------------------------------------- cache

def default_cache_dir() -> Path:
    root = os.environ.get("PRACTISE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "practise-jax") / "latency"


class Cache:
    """One JSON file per measurement, named by the hash of its key; writes are atomic."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, key: Mapping) -> Path:
        digest = hashlib.sha256(_canonical(key).encode()).hexdigest()[:24]
        return self.root / f"{key.get('model', 'model')}-{digest}.json"

    def get(self, key: Mapping) -> dict | None:
        path = self.path(key)
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or _canonical(entry.get("key")) != _canonical(key):
            return None
        return entry.get("value")

    def put(self, key: Mapping, value: Mapping) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "value": value}, indent=1))
        os.replace(tmp, path)


def _canonical(data) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


# --------------------------------------------------------------------------- models

def describe_device(device: jax.Device) -> str:
    """``device_kind``; on a CPU also the CPU model and core count, so CPU rows of different hosts differ."""
    if device.platform != "cpu":
        return device.device_kind
    name = platform_lib.processor() or "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {name} x{os.cpu_count()}"


def pick_device(platform: str | None = None) -> jax.Device:
    """The first device of ``platform`` ('cpu', 'gpu', 'tpu'), or JAX's default device."""
    if platform is None:
        return jax.devices()[0]
    try:
        return jax.devices(platform)[0]
    except RuntimeError:
        present = sorted({d.platform for d in jax.devices()})
        raise UserError(
            f"no {platform} device is visible to JAX (present: {', '.join(present)}). "
            f"Install the matching jax extra (e.g. pip install -e .[cuda12]) or use --platform {present[0]}."
        ) from None


@functools.lru_cache(maxsize=None)
def total_stride(model: str, overrides: tuple[tuple[str, object], ...] = ()) -> int:
    """How much the network downsamples: native input size / spatial size of ``pre_gap``."""
    info = model_zoo.get_info(model)
    spec = jax.ShapeDtypeStruct((1, info.input_size, info.input_size, 3), jnp.float32)
    out = jax.eval_shape(lambda x: model_zoo.create(model, **dict(overrides))(x)[1]["pre_gap"], spec)
    return max(1, info.input_size // out.shape[1])


def check_image_size(model: str, image_size: int, overrides: tuple[tuple[str, object], ...] = ()) -> None:
    """Raise unless every pixel of the last stage comes from the image rather than from padding alone."""
    stride = total_stride(model, overrides)
    if image_size < stride:
        native = model_zoo.get_info(model).input_size
        raise UserError(
            f"image size {image_size} is too small for {model}: it downsamples by {stride}, so it needs at least "
            f"{stride} px (its native size is {native}). Pass --image-size {native} or another size >= {stride}."
        )


@dataclasses.dataclass
class Compiled:
    """A compiled forward pass bound to its state and input: ``run()`` is one blocking call."""

    drop: tuple[str, ...]
    run: Callable[[], object]
    cost: Cost


def cost_of(compiled, params: int) -> Cost:
    """FLOPs and bytes accessed from XLA's cost analysis (a dict, or a list of dicts in older JAX)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return Cost(
        flops=float(analysis.get("flops", math.nan)),
        bytes_accessed=float(analysis.get("bytes accessed", math.nan)),
        params=int(params),
    )


def compile_forward(
    model: str, drop: Sequence[str], x: jax.Array, *, dtype: str = "float32", device: jax.Device | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Compiled:
    """Build ``model`` without ``drop`` (random weights, eval mode) and compile ``(state, x) -> logits``.

    In a reduced dtype the floating state is cast to it too, as for inference.
    """
    jdtype = DTYPES[dtype]
    net = model_zoo.create(model, dropped=tuple(drop), dtype=jdtype, **dict(overrides or {}))
    net.eval()
    params = sum(int(leaf.size) for leaf in jax.tree.leaves(nnx.state(net, nnx.Param)))
    graphdef, state = nnx.split(net)
    if jdtype != jnp.float32:
        state = jax.tree.map(lambda a: a.astype(jdtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
    if device is not None:
        state = jax.device_put(state, device)

    def forward(state, x):
        logits, _ = nnx.merge(graphdef, state)(x)
        return logits

    compiled = jax.jit(forward).lower(state, x).compile()
    cost = cost_of(compiled, params)
    return Compiled(tuple(drop), lambda: jax.block_until_ready(compiled(state, x)), cost)


# --------------------------------------------------------------------------- the profiler

def normalise_candidates(model: str, candidates: Iterable[Iterable[str] | str] | None) -> tuple[tuple[str, ...], ...]:
    """Validated drop sets in architecture order, duplicates removed; None means every single droppable block."""
    info = model_zoo.get_info(model)
    if candidates is None:
        return tuple((b,) for b in info.droppable)
    out: list[tuple[str, ...]] = []
    for candidate in candidates:
        drop = validate_drop_set(parse_block_list(candidate), info.blocks, info.droppable, model)
        if not drop:
            raise UserError("an empty drop set is the teacher itself; name at least one block to drop.")
        if drop not in out:
            out.append(drop)
    return tuple(out)


def make_setting(
    model: str, *, batch_size: int = 64, image_size: int | None = None, dtype: str = "float32",
    repeats: int | None = None, time_budget_s: float = DEFAULT_TIME_BUDGET_S, warmup: int = DEFAULT_WARMUP,
    device: jax.Device | None = None, overrides: Mapping[str, object] | None = None, clock: str = "wall",
    cpu_threads: int = 0,
) -> Setting:
    """Validate the user's options and describe the measurement conditions."""
    info = model_zoo.get_info(model)
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}.")
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; choose one of: {', '.join(DTYPES)}.")
    if repeats is not None and repeats < 1:
        raise UserError(f"repeats must be at least 1 (rounds of paired calls), got {repeats}.")
    if repeats is None and not time_budget_s > 0:
        raise UserError(f"the time budget must be positive, got {time_budget_s} s.")
    if warmup < 0:
        raise UserError(f"warmup must be 0 or more calls, got {warmup}.")
    if not 0 <= cpu_threads <= (os.cpu_count() or 1):
        raise UserError(f"cpu threads must be between 0 (this process, all threads) and the {os.cpu_count()} cores here, "
                        f"got {cpu_threads}.")
    image_size = info.input_size if image_size is None else image_size
    frozen = tuple(sorted((overrides or {}).items()))
    if image_size < 1:
        raise UserError(f"image size must be at least 1 px, got {image_size}.")
    check_image_size(model, image_size, frozen)
    device = device or jax.devices()[0]
    return Setting(
        model=model, batch_size=batch_size, image_size=image_size, dtype=dtype, platform=device.platform,
        device_kind=device.device_kind, device=describe_device(device), jax_version=jax.__version__,
        repeats=str(repeats) if repeats is not None else f"auto:{time_budget_s:g}s", warmup=warmup, overrides=frozen,
        clock=clock, cpu_threads=cpu_threads if device.platform == "cpu" else 0,
        xla_flags=os.environ.get("XLA_FLAGS", "") if device.platform == "cpu" else "",
    )


def profile(
    model: str,
    candidates: Iterable[Iterable[str] | str] | None = None,
    *,
    batch_size: int = 64,
    image_size: int | None = None,
    dtype: str = "float32",
    repeats: int | None = None,
    time_budget_s: float = DEFAULT_TIME_BUDGET_S,
    warmup: int = DEFAULT_WARMUP,
    device: jax.Device | None = None,
    cache: Cache | None = None,
    reuse: bool = True,
    clock: str | Clock = "wall",
    cpu_threads: int = DEFAULT_CPU_THREADS,
    overrides: Mapping[str, object] | None = None,
    log: Log | None = None,
    compile_fn: Callable[..., Compiled] = compile_forward,
) -> Profile:
    """Latency, tau and cost of the teacher and of each candidate drop set.

    ``candidates``: drop sets (each an iterable of block addresses or a string
    ``"layer1.1,layer2.3"``); None profiles every single droppable block.
    ``repeats``: rounds of interleaved calls; None fits rounds into
    ``time_budget_s`` seconds of timed calls per candidate (at least ``MIN_ROUNDS``).
    ``cache``: where results are kept (None: nothing is read or written);
    ``reuse=False`` remeasures and overwrites. ``clock``: "wall" (latency),
    "cpu" (process CPU time, see ``CLOCKS``) or a callable returning seconds
    (tests pass a fake clock); its name goes into the setting and the cache key.
    ``cpu_threads``: on a CPU, measure in a child process pinned to that many
    cores (0: in this process); an injected clock or ``compile_fn`` (tests)
    always measures in this process.
    """
    log = log or (lambda message: None)
    device = device or jax.devices()[0]
    if isinstance(clock, str):
        if clock not in CLOCKS:
            raise UserError(f"unknown clock '{clock}'; choose one of: {', '.join(CLOCKS)}.")
        clock_name, clock = clock, CLOCKS[clock]
    else:
        clock_name = getattr(clock, "__name__", type(clock).__name__)
    if compile_fn is not compile_forward or clock_name not in CLOCKS:
        cpu_threads = 0
    setting = make_setting(
        model, batch_size=batch_size, image_size=image_size, dtype=dtype, repeats=repeats,
        time_budget_s=time_budget_s, warmup=warmup, device=device, overrides=overrides, clock=clock_name,
        cpu_threads=cpu_threads,
    )
    drops = normalise_candidates(model, candidates)

    found: dict[tuple[str, ...], Measurement] = {}
    if cache is not None and reuse:
        for drop in ((), *drops):
            value = cache.get(setting.cache_key(drop))
            if value is not None:
                found[drop] = Measurement.from_json(value, cached=True)
    missing = [drop for drop in drops if drop not in found]
    if not missing and () in found:
        log(f"{model}: all {len(drops)} candidates and the teacher read from the cache")
        return Profile(setting, found[()], tuple(found[d] for d in drops))

    builds = [Build(drop, setting.overrides) for drop in ((), *missing)]
    measured = measure(setting, builds, device=device, clock=clock, time_budget_s=time_budget_s, log=log,
                       compile_fn=compile_fn)
    if cache is not None:
        for m in measured:
            cache.put(setting.cache_key(m.drop), m.to_json())
    found.update((m.drop, m) for m in measured)
    return Profile(setting, found[()], tuple(found[d] for d in drops))


@dataclasses.dataclass(frozen=True)
class Build:
    """One model to time: the setting's model without ``drop``, built with constructor ``overrides``."""

    drop: tuple[str, ...]
    overrides: tuple[tuple[str, object], ...] = ()


def measure(setting: Setting, builds: Sequence[Build], *, device=None, clock: Clock | None = None,
            time_budget_s: float = DEFAULT_TIME_BUDGET_S, log: Log | None = None,
            compile_fn: Callable[..., Compiled] = compile_forward) -> list[Measurement]:
    """Time ``builds[0]`` (the reference, tau 0) interleaved with every other build; one Measurement each.

    With ``setting.cpu_threads`` the work goes to a pinned child process (see the module docstring).
    """
    log = log or (lambda message: None)
    if setting.cpu_threads:
        log(f"{setting.model}: measuring in a child process pinned to {setting.cpu_threads} core(s)")
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: XLA reads its thread flags at start-up
        with ProcessPoolExecutor(1, mp_context=context, initializer=_pin_child, initargs=(setting.cpu_threads,)) as pool:
            results = pool.submit(_measure_in_child, setting, list(builds), time_budget_s).result()
        return [Measurement.from_json(r) for r in results]
    clock = clock or CLOCKS[setting.clock]
    return _measure(setting, builds, device=device or jax.devices()[0], clock=clock, time_budget_s=time_budget_s,
                    log=log, compile_fn=compile_fn)


def _pin_child(threads: int) -> None:
    """Runs first in the child: XLA single- or few-threaded, the process pinned to the last ``threads`` cores.

    On Linux the child also asks to be terminated when its parent dies, so a
    killed profile leaves no timing process behind.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    flags = [f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}",
             f"intra_op_parallelism_threads={threads}"]
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cores:
        os.sched_setaffinity(0, cores[-threads:])


def _measure_in_child(setting: Setting, builds: list[Build], time_budget_s: float) -> list[dict]:
    measured = _measure(setting, builds, device=jax.devices("cpu")[0], clock=CLOCKS[setting.clock],
                        time_budget_s=time_budget_s, log=lambda message: None, compile_fn=compile_forward)
    return [m.to_json() for m in measured]


def _measure(setting: Setting, builds: Sequence[Build], *, device, clock, time_budget_s, log: Log,
             compile_fn) -> list[Measurement]:
    """Compile every build, warm them up, run the interleaved rounds (``builds[0]`` is the reference)."""
    shape = (setting.batch_size, setting.image_size, setting.image_size, 3)
    x = jax.device_put(jax.random.normal(jax.random.key(0), shape, DTYPES[setting.dtype]), device)
    compiled = []
    for k, build in enumerate(builds):
        log(f"{setting.model}: compiling " + (f"{k}/{len(builds) - 1} without {'+'.join(build.drop)}" if k else "the teacher"))
        compiled.append(compile_fn(setting.model, build.drop, x, dtype=setting.dtype, device=device,
                                   overrides=dict(build.overrides) or None))

    estimate = []
    for c in compiled:
        last = math.nan
        for _ in range(max(1, setting.warmup)):  # at least one: the last warm-up call estimates the per-call time
            last = time_call(c.run, clock)
        estimate.append(last)
    per_round = (len(compiled) - 1) * estimate[0] + sum(estimate)
    budget = time_budget_s * max(1, len(compiled) - 1)
    rounds = int(setting.repeats) if not setting.repeats.startswith("auto") else choose_rounds(per_round, budget)
    log(f"{setting.model}: {rounds} rounds of {2 * len(compiled) - 1} calls, about {rounds * per_round:.0f} s")

    raw = run_interleaved(compiled[0].run, [c.run for c in compiled[1:]], rounds, clock)
    reference = compiled[0]
    return [Measurement(reference.drop, raw.teacher, raw.teacher, (), reference.cost)] + [
        Measurement(c.drop, raw.candidates[i], raw.teacher, raw.taus[i], c.cost)
        for i, c in enumerate(compiled[1:])]


# --------------------------------------------------------------------------- presentation

def format_table(profile: Profile) -> str:
    """A plain-text table: latency ms (IQR), tau % (IQR of single rounds), predicted tau % for sets, GFLOPs, FLOP cut %."""
    s = profile.setting
    rounds = sorted({m.calls for m in profile.candidates}) or [profile.teacher.calls]
    header = (f"{s.model} | {s.device} | {s.platform} | jax {s.jax_version} | {s.dtype} | batch {s.batch_size} | "
              f"{s.image_size}px | {s.clock} clock{f' | pinned to {s.cpu_threads} core(s)' if s.cpu_threads else ''} | rounds {'/'.join(map(str, rounds))} (repeats {s.repeats}, warmup {s.warmup})")
    width = max([len("drop")] + [len("+".join(m.drop)) for m in profile.candidates] + [len("(teacher)")])
    lines = [header, f"tau = (lat teacher - lat pruned) / lat teacher from the {100 * FAST_QUANTILE:.0f}th percentiles of their "
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
            f"{m.cost.flops / 1e9:9.4f}  {100 * profile.flops_tau(m.drop):10.2f}  {'yes' if m.cached else 'no'}"
        )
    return "\n".join(lines)


CSV_FIELDS = (
    "model", "kind", "drop", "n_dropped", "latency_ms", "latency_q25_ms", "latency_q75_ms", "teacher_latency_ms",
    "tau", "tau_round_q25", "tau_round_q75", "tau_pct", "tau_predicted", "flops_tau", "gflops", "bytes_accessed_mb", "params",
    "calls", "warmup", "repeats", "clock", "cpu_threads", "device", "device_kind", "platform", "jax_version", "dtype", "batch_size",
    "image_size", "cached", "xla_flags",
)


def write_csv(rows: Sequence[Mapping], path: str | os.PathLike, *, fields: Sequence[str] | None = None, append: bool = False) -> None:
    """Write tidy rows (floats rounded to 6 significant digits); ``append`` adds to an existing file without a header."""
    path = Path(path)
    fields = list(fields or (CSV_FIELDS if rows and set(CSV_FIELDS) <= set(rows[0]) else rows[0].keys()))
    path.parent.mkdir(parents=True, exist_ok=True)
    header = not (append and path.exists() and path.stat().st_size > 0)
    with path.open("a" if append else "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        if header:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in fields})


def _fmt(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value
