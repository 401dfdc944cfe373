"""The latency profiler: interleaved timing on a fake clock, tau, the cost model, the cache and bad input.

No assertion depends on how fast this machine is: timing logic runs on a fake
clock, and real (tiny) models are only checked for structure and XLA costs.
"""

from __future__ import annotations

import csv
import json
import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import model_zoo
import practise_jax as pj
from practise_jax import latency
from practise_jax.cli import main
from practise_jax.cli.profile_cmd import candidates_from_args
from practise_jax.errors import UserError

TINY = {"widths": (4, 8, 16)}  # cifar_resnet20 with 4/8/16 channels


class FakeClock:
    """A clock that only moves when told to; ``load`` scales every simulated call (machine load)."""

    def __init__(self):
        self.now = 0.0
        self.load = 1.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def work(self, name: str, seconds: float):
        def run():
            self.calls.append(name)
            self.now += seconds * self.load
        return run


# --------------------------------------------------------------------------- timing logic

def test_interleaved_order_and_exact_tau():
    clock = FakeClock()
    raw = latency.run_interleaved(clock.work("A", 10.0), [clock.work("B1", 8.0), clock.work("B2", 6.0)], 2, clock)
    assert clock.calls == ["A", "B1", "A", "B2", "A", "A", "B2", "A", "B1", "A"]
    assert raw.teacher == (10.0,) * 6
    assert raw.candidates == ((8.0, 8.0), (6.0, 6.0))
    assert raw.taus == ((pytest.approx(0.2), pytest.approx(0.2)), (pytest.approx(0.4), pytest.approx(0.4)))


def test_linear_drift_cancels_in_paired_tau():
    clock = FakeClock()

    def drifting(name, seconds):
        def run():
            clock.load += 0.05  # the machine gets slower with every call
            clock.now += seconds * clock.load
        return run

    raw = latency.run_interleaved(drifting("A", 10.0), [drifting("B", 9.0), drifting("C", 7.0)], 5, clock)
    assert all(t == pytest.approx(0.1) for t in raw.taus[0])
    assert all(t == pytest.approx(0.3) for t in raw.taus[1])
    # unpaired medians would be fooled by the drift
    naive = 1 - latency.Spread.of(raw.candidates[0]).median / latency.Spread.of(raw.teacher).median
    assert abs(naive - 0.1) > 0.01


def test_median_ignores_a_spike():
    clock = FakeClock()
    count = {"n": 0}

    def spiky_candidate():
        count["n"] += 1
        clock.now += 8.0 * (5.0 if count["n"] == 3 else 1.0)

    raw = latency.run_interleaved(clock.work("A", 10.0), [spiky_candidate], 5, clock)
    assert latency.Spread.of(raw.taus[0]).median == pytest.approx(0.2)


def test_tau_compares_the_fast_ends_and_ignores_interference():
    """Interference only adds time: slow calls of either model must not move tau."""
    cost = latency.Cost(1.0, 1.0, 1)
    clean = latency.Measurement(("b",), (8.0,) * 10, (10.0,) * 20, (0.2,) * 10, cost)
    disturbed = latency.Measurement(("b",), (8.0,) * 8 + (30.0, 12.0), (10.0,) * 16 + (50.0, 20.0, 13.0, 11.0), (0.2,) * 10, cost)
    assert clean.tau == pytest.approx(0.2) and disturbed.tau == pytest.approx(0.2)
    assert latency.Measurement((), (10.0,) * 3, (10.0,) * 3, (), cost).tau == 0.0  # the reference: no paired rounds
    assert latency.Measurement((), (8.0,) * 3, (10.0,) * 3, (0.2,) * 3, cost).tau == pytest.approx(0.2)  # a filter-pruned student
    # with 6 of 10 candidate calls slowed, its median latency moves but the fast fifth still holds the true ratio
    slow = latency.Measurement(("b",), (8.0,) * 4 + (30.0,) * 6, (10.0,) * 20, (0.2,) * 10, cost)
    assert slow.tau == pytest.approx(0.2) and slow.latency.median == 30.0


def test_gc_is_restored_after_timing():
    import gc

    clock = FakeClock()
    assert gc.isenabled()
    latency.run_interleaved(clock.work("A", 1.0), [], 3, clock)
    assert gc.isenabled()


def test_spread_and_choose_rounds():
    s = latency.Spread.of([4.0, 1.0, 3.0, 2.0, 5.0])
    assert (s.median, s.q25, s.q75, s.n, s.iqr) == (3.0, 2.0, 4.0, 5, 2.0)
    assert math.isnan(latency.Spread.of([]).median)
    assert latency.choose_rounds(1.0, 60.0) == 60
    assert latency.choose_rounds(100.0, 60.0) == latency.MIN_ROUNDS
    assert latency.choose_rounds(1e-6, 60.0) == latency.MAX_ROUNDS
    with pytest.raises(ValueError):
        latency.run_interleaved(lambda: None, [], 0)


# --------------------------------------------------------------------------- profile() on a fake compiler and clock

MODEL = nnx.eval_shape(lambda: model_zoo.create("cifar_resnet20", **TINY))  # shapes are all a latency needs
SHAPE = (2, 16, 16, 3)


class FakeCompiler:
    """Stands in for ``compile_program``: a call takes (parameters / 1000) s on the fake clock; counts compilations."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.compiled: list[str] = []

    def __call__(self, prog, device):
        self.compiled.append(prog.key)
        seconds = prog.params / 1000
        cost = latency.Cost(flops=1e9 * seconds, bytes_accessed=1e6 * seconds, params=prog.params)
        return latency.Compiled(self.clock.work(prog.key, seconds), cost)


def fake_profile(tmp_path, candidates=None, **kwargs):
    clock = kwargs.pop("clock", None) or FakeClock()
    compiler = kwargs.pop("compiler", None) or FakeCompiler(clock)
    result = latency.profile(MODEL, SHAPE, candidates, repeats=3, clock=clock, cache=latency.Cache(tmp_path / "cache"),
                             compile_fn=compiler, **kwargs)
    return result, compiler, clock


def params_tau(drop):
    total = latency.program(MODEL, SHAPE).params
    return 1 - latency.program(pj.drop(MODEL, drop), SHAPE).params / total


def test_profile_every_single_block_identical_blocks_once_then_cache(tmp_path):
    result, compiler, clock = fake_profile(tmp_path)
    droppable = ("layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2")
    assert [m.drop for m in result.candidates] == [(b,) for b in droppable]
    assert len(compiler.compiled) == 4 and result.distinct == 3  # the teacher and one block of each stage
    assert result.tau(("layer1.1",)) == result.tau(("layer1.2",)) == pytest.approx(params_tau(["layer1.1"]))
    assert result.tau(("layer3.2",)) == pytest.approx(params_tau(["layer3.2"])) != result.tau(("layer1.1",))
    assert result.tau() == {b: result.tau((b,)) for b in droppable}
    assert result.teacher.tau == 0.0 and result.teacher.calls == 3 * 4  # A B1 A B2 A B3 A per round
    assert all(m.calls == 3 for m in result.candidates)
    assert result.flops_tau(("layer1.1",)) == pytest.approx(params_tau(["layer1.1"]))
    assert result.setting.clock == "FakeClock"

    again, compiler2, _ = fake_profile(tmp_path)
    assert compiler2.compiled == []  # nothing compiled, nothing timed
    assert all(m.cached for m in (again.teacher, *again.candidates))
    assert [m.tau for m in again.candidates] == [m.tau for m in result.candidates]

    fresh, compiler3, _ = fake_profile(tmp_path, reuse=False)
    assert len(compiler3.compiled) == 4 and not any(m.cached for m in fresh.candidates)


def test_identical_blocks_are_identified_by_their_program():
    """Same input shape, widths and strides compile to the same program; a stage's first block does not."""
    keys = {b: latency.program(pj.drop(MODEL, [b]), SHAPE).key for b in ("layer1.1", "layer1.2", "layer2.1", "layer3.1")}
    assert keys["layer1.1"] == keys["layer1.2"] and len(set(keys.values())) == 3
    assert latency.program(MODEL, SHAPE).key != keys["layer1.1"]
    assert latency.program(MODEL, (4,) + SHAPE[1:]).key != latency.program(MODEL, SHAPE).key


def test_cache_key_separates_settings(tmp_path):
    fake_profile(tmp_path, ["layer1.1"])
    base = latency.make_setting("m", batch_size=2, image_size=16)
    assert base.cache_key("a", "b") != latency.make_setting("m", batch_size=2, image_size=16, dtype="bfloat16").cache_key("a", "b")
    for change in ({"dtype": "bfloat16"}, {"repeats": 4}, {"warmup": 3}):
        clock = FakeClock()
        compiler = FakeCompiler(clock)
        latency.profile(MODEL, SHAPE, ["layer1.1"], clock=clock, cache=latency.Cache(tmp_path / "cache"),
                        compile_fn=compiler, **({"repeats": 3} | change))
        assert len(compiler.compiled) == 2, change
    # a new candidate alone is measured together with a fresh teacher; cached candidates are not rebuilt
    _, compiler, _ = fake_profile(tmp_path, ["layer1.1", "layer2.1"])
    assert len(compiler.compiled) == 2


def test_drop_sets_and_additivity(tmp_path):
    result, _, _ = fake_profile(tmp_path, ["layer1.1", "layer2.2", "layer2.2,layer1.1", "layer3.1,layer3.2,layer1.2"])
    assert result.get(["layer1.1", "layer2.2"]).drop == ("layer1.1", "layer2.2")  # forward order
    assert result.tau(["layer1.1", "layer2.2"]) == pytest.approx(params_tau(["layer1.1", "layer2.2"]))
    assert result.predicted_tau(["layer1.1", "layer2.2"]) == pytest.approx(params_tau(["layer1.1", "layer2.2"]))
    assert result.predicted_tau(["layer3.1", "layer3.2", "layer1.2"]) is None  # singles not profiled
    rows = latency.additivity(result)
    assert [r["drop"] for r in rows] == ["layer1.1+layer2.2", "layer1.2+layer3.1+layer3.2"]
    assert rows[0]["difference"] == pytest.approx(0.0) and rows[1]["tau_predicted"] is None
    assert rows[0]["flops_tau_predicted"] == pytest.approx(rows[0]["flops_tau"])
    with pytest.raises(KeyError):
        result.get(["layer3.1"])


def test_rows_csv_and_reading_tau_back(tmp_path):
    result, _, _ = fake_profile(tmp_path, ["layer1.1", "layer2.1", "layer1.1,layer2.1"])
    path = tmp_path / "out.csv"
    latency.write_csv(latency.rows(result), path)
    latency.write_csv(latency.rows(result), path, append=True)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 8 and list(rows[0]) == list(latency.CSV_FIELDS)
    assert [r["kind"] for r in rows[:4]] == ["teacher", "block", "block", "set"]
    assert rows[3]["drop"] == "layer1.1+layer2.1"
    assert float(rows[3]["tau_predicted"]) == pytest.approx(params_tau(["layer1.1"]) + params_tau(["layer2.1"]), rel=1e-5)
    assert float(rows[1]["tau_pct"]) == pytest.approx(100 * float(rows[1]["tau"]))
    for key in ("device_kind", "jax_version", "dtype", "batch_size", "image_size", "clock", "program"):
        assert rows[1][key]
    table = latency.format_table(result)
    assert "(teacher)" in table and "layer1.1+layer2.1" in table and "3 distinct programs" in table
    latency.write_csv(latency.rows(result), path)
    assert latency.read_tau(path) == pytest.approx({"layer1.1": result.tau(["layer1.1"]), "layer2.1": result.tau(["layer2.1"])},
                                                   rel=1e-5)
    (tmp_path / "empty.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="holds no single-block tau"):
        latency.read_tau(tmp_path / "empty.csv")


# --------------------------------------------------------------------------- the cache itself

def test_cache_roundtrip_and_damage(tmp_path):
    cache = latency.Cache(tmp_path)
    key = {"model": "m", "drop": ["layer1.1"], "batch_size": 2}
    assert cache.get(key) is None
    cache.put(key, {"x": 1})
    assert cache.get(key) == {"x": 1}
    assert cache.get(key | {"batch_size": 3}) is None
    cache.path(key).write_text("{not json")
    assert cache.get(key) is None  # a damaged entry is a miss, not a crash
    cache.path(key).write_text(json.dumps({"key": key | {"drop": []}, "value": {"x": 2}}))
    assert cache.get(key) is None  # stored key must match exactly
    assert not list(tmp_path.glob("*.tmp"))


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PRACTISE_CACHE", str(tmp_path))
    assert latency.default_cache_dir() == tmp_path / "latency"
    monkeypatch.delenv("PRACTISE_CACHE")
    assert latency.default_cache_dir().parts[-2:] == ("practise-jax", "latency")


# --------------------------------------------------------------------------- real tiny models

def test_programs_cost_model():
    full = latency.compile_program(latency.program(MODEL, SHAPE), jax.devices()[0])
    pruned = latency.compile_program(latency.program(pj.drop(MODEL, ["layer2.1"]), SHAPE), jax.devices()[0])
    assert full.run().shape == (2, 10)
    assert full.cost.flops > pruned.cost.flops > 0 and full.cost.bytes_accessed > 0
    assert full.cost.params - pruned.cost.params == 2 * 8 * 8 * 9 + 4 * 8  # two 3x3 convs and two BN (scale, bias)
    half = latency.compile_program(latency.program(MODEL, SHAPE, "bfloat16"), jax.devices()[0])
    assert half.run().dtype == jnp.bfloat16


def test_profile_tiny_model_end_to_end_in_the_pinned_child(tmp_path):
    result = latency.profile(MODEL, SHAPE, ["layer3.2", "layer1.1,layer3.2"], repeats=2, cache=latency.Cache(tmp_path))
    assert result.setting.device_kind == jax.devices()[0].device_kind
    assert result.setting.jax_version == jax.__version__ and result.setting.clock == "wall"
    for m in (result.teacher, *result.candidates):
        assert m.latency.median > 0 and math.isfinite(m.tau)
    assert result.flops_tau(["layer1.1", "layer3.2"]) > result.flops_tau(["layer3.2"]) > 0
    assert result.setting.cpu_threads == (1 if jax.devices()[0].platform == "cpu" else 0)


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="no CPU affinity on this OS")
def test_the_timing_child_is_pinned_and_single_threaded():
    flags, cores = latency.in_child(1, _child_view)
    assert "--xla_cpu_multi_thread_eigen=false" in flags and "intra_op_parallelism_threads=1" in flags
    assert len(cores) == 1


def _child_view():
    import os
    return os.environ["XLA_FLAGS"], sorted(os.sched_getaffinity(0))


def test_profile_measures_in_the_pinned_child_by_default(monkeypatch):
    import importlib

    profile_module = importlib.import_module("practise_jax.latency.profile")  # the package's `profile` is the function

    calls = []
    monkeypatch.setattr(profile_module, "in_child", lambda threads, *args: calls.append(threads) or [
        {"latency_s": [1.0], "teacher_s": [1.0], "taus": [], "cost": {"flops": 1.0, "bytes_accessed": 1.0, "params": 1}},
        {"latency_s": [0.5], "teacher_s": [1.0], "taus": [0.5], "cost": {"flops": 1.0, "bytes_accessed": 1.0, "params": 1}}])
    result = latency.profile(MODEL, SHAPE, ["layer1.1"], repeats=1)
    assert calls == ([1] if jax.devices()[0].platform == "cpu" else []) and result.tau(["layer1.1"]) == 0.5


def test_in_process_and_pinned_measurements_are_cached_apart():
    settings = [latency.make_setting("m", batch_size=2, image_size=16, cpu_threads=n) for n in (0, 1)]
    assert settings[0].cache_key("a", "b") != settings[1].cache_key("a", "b")
    with pytest.raises(UserError, match="cpu threads must be between 0"):
        latency.make_setting("m", batch_size=2, image_size=16, cpu_threads=10_000)


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, message", [
    ({"shape": (0, 16, 16, 3)}, "batch size must be at least 1"),
    ({"shape": (2, 2, 2, 3)}, "too small for cifar_resnet20: it downsamples by 4"),
    ({"shape": (2, 16, 8, 3)}, "NHWC batch of square images"),
    ({"dtype": "int8"}, "unknown dtype"),
    ({"repeats": 0}, "repeats must be at least 1"),
    ({"candidates": ["layer9.1"]}, "has no block 'layer9.1'"),
    ({"candidates": ["layer2.0"]}, "cannot be dropped"),
    ({"candidates": [""]}, "empty drop set"),
    ({"clock": "sundial"}, "unknown clock"),
])
def test_bad_input(tmp_path, kwargs, message):
    args = {"repeats": 1} | kwargs
    candidates = args.pop("candidates", ["layer1.1"])
    shape = args.pop("shape", SHAPE)
    with pytest.raises(UserError, match=message):
        latency.profile(MODEL, shape, candidates, cache=latency.Cache(tmp_path), compile_fn=FakeCompiler(FakeClock()), **args)


def test_image_size_rule_for_resnet():
    resnet = nnx.eval_shape(lambda: model_zoo.create("resnet34"))
    assert latency.total_stride(resnet, 224) == 32
    with pytest.raises(UserError, match="needs at least 32 px"):
        latency.check_image_size(resnet, 16, 224)
    latency.check_image_size(resnet, 32, 224)


def test_cli_errors_are_one_line(capsys):
    assert main(["profile", "--model", "cifar_resnet20", "--batch-size", "0"]) == 2
    assert main(["profile", "--model", "cifar_resnet20", "--drop", "layer1.1,layer7.3"]) == 2
    assert main(["profile", "--model", "resnet34", "--image-size", "8"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(line.startswith("practise-jax profile: error:") for line in errors)


def test_cli_candidates():
    assert candidates_from_args("cifar_resnet20", [], None) == [(b,) for b in (
        "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2")]
    assert candidates_from_args("cifar_resnet20", ["layer2.1,layer1.1", "layer3.1"], None) == [
        ("layer1.1",), ("layer2.1",), ("layer3.1",), ("layer2.1", "layer1.1")]
    assert candidates_from_args("cifar_resnet20", ["layer2.1,layer1.1"], "none") == [("layer2.1", "layer1.1")]
    with pytest.raises(UserError, match="nothing to profile"):
        candidates_from_args("cifar_resnet20", [], "none")


def test_cli_profile_writes_csv_and_reads_cache(tmp_path, capsys):
    out = tmp_path / "p.csv"
    argv = ["profile", "--model", "cifar_resnet20", "--batch-size", "1", "--image-size", "8", "--repeats", "1",
            "--singles", "none", "--drop", "layer1.1,layer3.2", "--cpu-threads", "0", "--cache-dir", str(tmp_path / "c"),
            "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "layer1.1+layer3.2" in printed and "tau % (IQR)" in printed
    rows = list(csv.DictReader(out.open()))
    assert [r["kind"] for r in rows] == ["teacher", "set"] and all(r["cached"] == "True" for r in rows)
    assert rows[0]["batch_size"] == "1" and rows[0]["image_size"] == "8" and rows[0]["dtype"] == "float32"
