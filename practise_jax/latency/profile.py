"""tau of every candidate: time the teacher against each of its pruned versions, interleaved.

    tau(B) = (lat(teacher) - lat(teacher without B)) / lat(teacher)

**tau is a fraction** (0.05 means 5 %); tables print it in percent. The
reference multiplies by 100 inside its score (PRACTISE_SPEC.md section 3);
that factor does not change the ranking.

Each model's forward pass becomes a `programs.Program`; models that compile to
the same computation (for cifar_resnet56, the network minus any one block of
a stage but its first) are timed once, each distinct program with the whole
time budget, and share the figure. The calls of one run are interleaved
(`timing.run_interleaved`), and ``tau`` of a candidate compares the fast ends
of its and the teacher's calls::

    tau = 1 - quantile(t_B, FAST_QUANTILE) / quantile(t_A, FAST_QUANTILE)

Interference on a shared machine only ever adds time, so the fast end of a
sample is where it is thinnest; the 20th percentile keeps enough calls to be
steady (on the 2-vCPU reference machine two quiet cifar_resnet56 runs agreed
within 0.59 pp over 24 blocks, where the median of per-round paired ratios
differed by up to 1.05 pp; ``experiments/latency_estimators.py``). The
per-round paired ratio is kept as the spread of one round. A latency is the
median per-call time with its interquartile range.

The number of rounds is ``repeats`` when given, otherwise as many as fit
``time_budget_s`` seconds of timed calls per distinct candidate (at least
``MIN_ROUNDS``). The clock is injected: ``"wall"`` measures latency, ``"cpu"``
this process's CPU time (steadier on a shared CPU, but work, not latency);
tests pass a fake clock and a fake compiler.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import platform as platform_lib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from practise_jax import defaults, protocol, surgery
from practise_jax.errors import UserError
from practise_jax.latency.cache import Cache
from practise_jax.latency.programs import DTYPES, Compiled, Cost, Program, compile_program, in_child, program
from practise_jax.latency.stats import Spread, quantile
from practise_jax.latency.timing import CLOCKS, Clock, choose_rounds, run_interleaved, time_call

Log = Callable[[str], None]
FAST_QUANTILE = 0.2  # tau compares this quantile of candidate and teacher call times
DEFAULT_WARMUP = 2  # untimed calls per program; the first after compiling is slow, the last sizes the rounds
CACHE_FORMAT = 4  # 3: keyed by program content; 4: inputs like a trained net's (finite everywhere)


@dataclasses.dataclass(frozen=True)
class Setting:
    """Everything a latency figure depends on besides the programs; goes with every figure and keys the cache."""

    label: str  # the model's name, for tables and cache file names
    batch_size: int
    image_size: int
    dtype: str
    platform: str
    device_kind: str
    device: str  # device_kind, plus the CPU model and core count on a CPU
    jax_version: str
    repeats: str  # the request: "12" rounds, or "auto:60s" (time budget per distinct candidate)
    warmup: int
    clock: str = "wall"
    cpu_threads: int = 0  # CPU only: cores of the pinned child process that measured (0: the caller's process)
    xla_flags: str = ""  # CPU only: XLA_FLAGS in force (they change XLA:CPU's kernels; see practise_jax.xla_cpu)

    def cache_key(self, reference: str, candidate: str) -> dict:
        return {"format": CACHE_FORMAT, **dataclasses.asdict(self), "reference": reference, "program": candidate}


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One model's figures: its own calls, every teacher call of its run, the paired tau of each round (fractions)."""

    drop: tuple[str, ...]
    latency_s: tuple[float, ...]
    teacher_s: tuple[float, ...]
    taus: tuple[float, ...]
    cost: Cost
    program: str = ""  # the key of the timed program
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
        fast = functools.partial(quantile, q=FAST_QUANTILE)
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
        return {"latency_s": list(self.latency_s), "teacher_s": list(self.teacher_s), "taus": list(self.taus),
                "cost": dataclasses.asdict(self.cost)}

    @classmethod
    def from_json(cls, data: Mapping, drop: tuple[str, ...], program_key: str, *, cached: bool = False) -> Measurement:
        return cls(drop, tuple(data["latency_s"]), tuple(data["teacher_s"]), tuple(data["taus"]), Cost(**data["cost"]),
                   program_key, cached)


@dataclasses.dataclass(frozen=True)
class Profile:
    """The teacher and every candidate under one setting."""

    setting: Setting
    teacher: Measurement
    candidates: tuple[Measurement, ...]

    @property
    def distinct(self) -> int:
        """How many distinct candidate programs were timed (identical blocks share one)."""
        return len({m.program for m in self.candidates})

    def get(self, drop: Iterable[str]) -> Measurement:
        wanted = set(drop)
        if not wanted:
            return self.teacher
        for m in self.candidates:
            if set(m.drop) == wanted:
                return m
        raise KeyError(f"drop set {sorted(wanted)} was not profiled")

    def tau(self, drop: Iterable[str] | None = None):
        """Measured tau of a drop set, as a fraction; without one, ``{block: tau}`` of every single-block candidate."""
        if drop is None:
            return {m.drop[0]: m.tau for m in self.candidates if len(m.drop) == 1}
        return self.get(drop).tau

    def predicted_tau(self, drop: Iterable[str]) -> float | None:
        """Sum of the single-block taus of ``drop`` (the additive model), or None if one is missing."""
        singles = self.tau()
        drop = tuple(drop)
        if not drop or any(b not in singles for b in drop):
            return None
        return sum(singles[b] for b in drop)

    def flops_tau(self, drop: Iterable[str]) -> float:
        """FLOP reduction of a drop set relative to the teacher, as a fraction (the cost model's tau)."""
        return 1.0 - self.get(drop).cost.flops / self.teacher.cost.flops


# --------------------------------------------------------------------------- devices and settings

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
            f"Install the matching jax extra (e.g. pip install -e .[cuda12]) or use --platform {present[0]}.") from None


def total_stride(model: nnx.Module, image_size: int) -> int:
    """How much the network downsamples an ``image_size`` input: its side / the side of ``pre_gap``."""
    graphdef, state = nnx.split(model)
    spec = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x)[1]["pre_gap"], state, spec)
    return max(1, image_size // max(1, out.shape[1]))


def check_image_size(model: nnx.Module, image_size: int, native: int | None = None) -> None:
    """Raise unless every pixel of the last stage comes from the image rather than from padding alone."""
    if image_size < 1:
        raise UserError(f"image size must be at least 1 px, got {image_size}.")
    reference = native or max(image_size, 224)
    stride = total_stride(model, reference)
    if image_size < stride:
        name = getattr(model, "model_name", type(model).__name__)
        hint = f" (its native size is {native})" if native else ""
        raise UserError(f"image size {image_size} is too small for {name}: it downsamples by {stride}, so it needs at "
                        f"least {stride} px{hint}. Pass --image-size {native or stride} or another size >= {stride}.")


def make_setting(label: str, *, batch_size: int, image_size: int, dtype: str = "float32", repeats: int | None = None,
                 time_budget_s: float = defaults.LATENCY_BUDGET_S, warmup: int = DEFAULT_WARMUP,
                 device: jax.Device | None = None, clock: str = "wall", cpu_threads: int = 0) -> Setting:
    """Validate the user's options and describe the measurement conditions."""
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
    device = device or jax.devices()[0]
    return Setting(
        label=label, batch_size=batch_size, image_size=image_size, dtype=dtype, platform=device.platform,
        device_kind=device.device_kind, device=describe_device(device), jax_version=jax.__version__,
        repeats=str(repeats) if repeats is not None else f"auto:{time_budget_s:g}s", warmup=warmup, clock=clock,
        cpu_threads=cpu_threads if device.platform == "cpu" else 0,
        xla_flags=os.environ.get("XLA_FLAGS", "") if device.platform == "cpu" else "")


# --------------------------------------------------------------------------- measuring programs

def _measure(setting: Setting, programs: Sequence[Program], *, device, clock: Clock, time_budget_s: float, log: Log,
             compile_fn) -> list[dict]:
    """Compile every program, warm them up, run the interleaved rounds (``programs[0]`` is the reference)."""
    compiled: list[Compiled] = []
    for k, prog in enumerate(programs):
        log(f"{setting.label}: compiling " + (f"candidate {k}/{len(programs) - 1}" if k else "the reference"))
        compiled.append(compile_fn(prog, device))
    estimate = []
    for c in compiled:
        last = math.nan
        for _ in range(max(1, setting.warmup)):  # at least one: the last warm-up call estimates the per-call time
            last = time_call(c.run, clock)
        estimate.append(last)
    per_round = (len(compiled) - 1) * estimate[0] + sum(estimate)
    budget = time_budget_s * max(1, len(compiled) - 1)
    rounds = int(setting.repeats) if not setting.repeats.startswith("auto") else choose_rounds(per_round, budget)
    log(f"{setting.label}: {rounds} rounds of {2 * len(compiled) - 1} calls, about {rounds * per_round:.0f} s")
    raw = run_interleaved(compiled[0].run, [c.run for c in compiled[1:]], rounds, clock)
    reference = {"latency_s": raw.teacher, "teacher_s": raw.teacher, "taus": (), "cost": dataclasses.asdict(compiled[0].cost)}
    return [reference] + [{"latency_s": raw.candidates[i], "teacher_s": raw.teacher, "taus": raw.taus[i],
                           "cost": dataclasses.asdict(c.cost)} for i, c in enumerate(compiled[1:])]


def _measure_in_child(setting: Setting, programs: list[Program], time_budget_s: float) -> list[dict]:
    return _measure(setting, programs, device=jax.devices("cpu")[0], clock=CLOCKS[setting.clock],
                    time_budget_s=time_budget_s, log=lambda message: None, compile_fn=compile_program)


def measure(setting: Setting, programs: Sequence[Program], *, device=None, clock: Clock | None = None,
            time_budget_s: float = defaults.LATENCY_BUDGET_S, log: Log | None = None,
            compile_fn=compile_program) -> list[dict]:
    """Time ``programs[0]`` (the reference) interleaved with every other program; raw figures per program.

    With ``setting.cpu_threads`` the work goes to a pinned child process (see `programs`).
    """
    log = log or (lambda message: None)
    if setting.cpu_threads:
        log(f"{setting.label}: measuring in a child process pinned to {setting.cpu_threads} core(s)")
        return in_child(setting.cpu_threads, _measure_in_child, setting, list(programs), time_budget_s)
    return _measure(setting, programs, device=device or jax.devices()[0], clock=clock or CLOCKS[setting.clock],
                    time_budget_s=time_budget_s, log=log, compile_fn=compile_fn)


def compare(setting: Setting, reference: Program, candidates: Sequence[tuple[tuple[str, ...], Program]], *,
            cache: Cache | None = None, reuse: bool = True, **measure_options) -> tuple[Measurement, list[Measurement]]:
    """The reference and each ``(label, program)`` candidate, identical programs timed once, through the cache."""
    distinct = list(dict.fromkeys(p.key for _, p in candidates))
    by_key = {p.key: p for _, p in candidates}
    found: dict[str, dict] = {}
    if cache is not None and reuse:
        for key in [reference.key, *distinct]:
            value = cache.get(setting.cache_key(reference.key, key))
            if value is not None:
                found[key] = value
    missing = [key for key in distinct if key not in found]
    cached = set(found)
    if missing or reference.key not in found:
        measured = measure(setting, [reference] + [by_key[k] for k in missing], **measure_options)
        for key, value in zip([reference.key, *missing], measured):
            found[key] = value
            if cache is not None:
                cache.put(setting.cache_key(reference.key, key), value)
        cached -= {reference.key, *missing}
    teacher = Measurement.from_json(found[reference.key], (), reference.key, cached=reference.key in cached)
    return teacher, [Measurement.from_json(found[p.key], drop, p.key, cached=p.key in cached) for drop, p in candidates]


def normalise_candidates(model: nnx.Module, candidates: Iterable[Iterable[str] | str] | None) -> tuple[tuple[str, ...], ...]:
    """Validated drop sets in forward order, duplicates removed; None means every single droppable block."""
    if candidates is None:
        return tuple((b,) for b in protocol.candidates(model))
    out: list[tuple[str, ...]] = []
    for candidate in candidates:
        drop = protocol.check_drop_set(model, protocol.parse_block_list(candidate))
        if not drop:
            raise UserError("an empty drop set is the teacher itself; name at least one block to drop.")
        if drop not in out:
            out.append(drop)
    return tuple(out)


def batch_shape_of(x) -> tuple[int, int, int, int]:
    """An example batch (array) or its shape ``(N, H, W, C)``."""
    shape = tuple(int(d) for d in (x.shape if hasattr(x, "shape") else x))
    if len(shape) != 4 or shape[1] != shape[2]:
        raise UserError(f"latency needs an NHWC batch of square images, e.g. (64, 32, 32, 3); got shape {shape}.")
    return shape


def profile(model: nnx.Module, x, candidates: Iterable[Iterable[str] | str] | None = None, *, dtype: str = "float32",
            repeats: int | None = None, time_budget_s: float = defaults.LATENCY_BUDGET_S, warmup: int = DEFAULT_WARMUP,
            device: jax.Device | None = None, cache: Cache | None = None, reuse: bool = True, clock: str | Clock = "wall",
            cpu_threads: int = defaults.LATENCY_CPU_THREADS, log: Log | None = None, distinct: bool = True,
            compile_fn: Callable[[Program, jax.Device], Compiled] = compile_program) -> Profile:
    """Latency, tau and cost of ``model`` and of each candidate drop set, on batches shaped like ``x``.

    ``x``: an example batch, or its shape ``(N, H, W, C)``; weights do not
    matter (an abstract model from ``nnx.eval_shape`` works). ``candidates``:
    drop sets (iterables of addresses, or strings ``"layer1.1,layer2.3"``);
    None profiles every single droppable block. ``repeats``: rounds of
    interleaved calls; None fits rounds into ``time_budget_s`` seconds per
    distinct candidate. ``cache``: where results are kept (None: nothing is
    read or written); ``reuse=False`` remeasures. ``clock``: "wall", "cpu" or
    a callable returning seconds. ``cpu_threads``: on a CPU, measure in a
    child process pinned to that many cores (0: in this process); an injected
    clock or ``compile_fn`` always measures in this process. ``distinct=False``
    times every candidate on its own even where identical blocks compile to
    one program (slower; it shows the timing noise between identical blocks).

    >>> import practise_jax as pj, model_zoo
    >>> net = model_zoo.create("cifar_resnet20", widths=(4, 8, 16))
    >>> result = pj.profile(net, (2, 16, 16, 3), ["layer1.1"], repeats=1, cpu_threads=0)
    >>> result.tau(["layer1.1"]) < 1
    True
    """
    log = log or (lambda message: None)
    device = device or jax.devices()[0]
    if isinstance(clock, str):
        if clock not in CLOCKS:
            raise UserError(f"unknown clock '{clock}'; choose one of: {', '.join(CLOCKS)}.")
        clock_name, clock = clock, CLOCKS[clock]
    else:
        clock_name = getattr(clock, "__name__", type(clock).__name__)
    if compile_fn is not compile_program or clock_name not in CLOCKS:
        cpu_threads = 0
    shape = batch_shape_of(x)
    label = getattr(model, "model_name", type(model).__name__)
    setting = make_setting(label, batch_size=shape[0], image_size=shape[1], dtype=dtype, repeats=repeats,
                           time_budget_s=time_budget_s, warmup=warmup, device=device, clock=clock_name,
                           cpu_threads=cpu_threads)
    input_spec = getattr(model, "input_spec", None)
    check_image_size(model, shape[1], getattr(input_spec, "size", None))
    drops = normalise_candidates(model, candidates)
    log(f"{label}: exporting the teacher and {len(drops)} candidates")
    reference = program(model, shape, dtype)
    students = [(drop, program(surgery.drop(model, drop), shape, dtype)) for drop in drops]
    if not distinct:  # each candidate its own measurement (and cache entry), identical programs or not
        students = [(drop, dataclasses.replace(p, key=f"{p.key}#{'+'.join(drop)}")) for drop, p in students]
    count = len({p.key for _, p in students})
    if count < len(students):
        log(f"{label}: {len(students)} candidates compile to {count} distinct programs; each is timed once")
    teacher, measured = compare(setting, reference, students, cache=cache, reuse=reuse, device=device, clock=clock,
                                time_budget_s=time_budget_s, log=log, compile_fn=compile_fn)
    return Profile(setting, teacher, tuple(measured))
