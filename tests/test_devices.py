"""Scoring and finetuning spread over devices (forced host devices, each test in its own process) and processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def with_devices(devices: int) -> str:
    """The session's XLA_FLAGS (conftest's: the users' kernels, fast compiling) with ``devices`` CPU devices."""
    kept = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
            if not flag.startswith("--xla_force_host_platform_device_count")]
    return " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])


def run_with_devices(code: str, devices: int = 4, timeout: int = 600) -> dict:
    """Run ``code`` in a fresh interpreter with ``devices`` CPU devices; it prints one JSON line last."""
    env = dict(os.environ, XLA_FLAGS=with_devices(devices), PYTHONPATH=str(TESTS))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


SCORE = """
    import json, numpy as np, jax
    import practise_jax as pj
    from tiny_models import tiny_model
    assert len(jax.devices()) == 4
    images = np.random.default_rng(0).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    out = {}
    # a group of 8 (candidates over 4 devices); groups of 2 (a 2 x 2 mesh: candidates and batch); the batch alone
    for name, stage, shards in (("cifar_resnet56", "layer2", ("candidates",)), ("cifar_resnet20", "layer", ("candidates", "batch"))):
        teacher = tiny_model(name, dropped=())
        tau = {b: 0.01 * (1 + i % 3) for i, b in enumerate(teacher.droppable)}
        blocks = [b for b in teacher.droppable if b.startswith(stage)]
        common = dict(tau=tau, blocks=blocks, steps=3, batch_size=8, seed=3)
        for shard in shards:  # against the same computation on one device
            alone = dict(vmap=True) if shard == "candidates" else {}
            one = pj.score(teacher, images, devices=1, **alone, **common)
            four = pj.score(teacher, images, devices=4, shard=shard, **common)
            out[f"{name}, {shard}"] = {"one": {s.block: s.recoverability for s in one},
                                       "four": {s.block: s.recoverability for s in four},
                                       "select_one": pj.select(one, k=3), "select_four": pj.select(four, k=3)}
    print(json.dumps(out))
"""


def test_candidates_spread_over_devices_give_the_single_device_result():
    result = run_with_devices(SCORE)
    for name, r in result.items():
        assert set(r["one"]) == set(r["four"]) and r["select_one"] == r["select_four"], name
        for block, value in r["one"].items():
            assert abs(r["four"][block] - value) <= 1e-5 * abs(value), (name, block, value, r["four"][block])


def test_more_devices_than_present_is_refused_naming_how_many():
    code = """
        import json, numpy as np, practise_jax as pj
        from tiny_models import tiny_model
        try:
            pj.score(tiny_model("cifar_resnet20"), np.zeros((8, 32, 32, 3), np.uint8), tau={}, devices=8)
        except pj.UserError as error:
            print(json.dumps({"error": str(error)}))
    """
    assert "more devices than this process has: 2 CPU device(s)" in run_with_devices(code, devices=2)["error"]


# --------------------------------------------------------------------------- several processes

def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny CIFAR ResNet-20 checkpoint and a tau file, the inputs of the score commands below."""
    from practise_jax import checkpoint
    from tiny_models import tiny_model

    folder = tmp_path_factory.mktemp("multi")
    teacher = tiny_model("cifar_resnet20", dropped=())
    checkpoint.save_compressed(folder / "teacher", teacher)
    (folder / "tau.csv").write_text("block,tau\n" + "".join(f"{b},{0.01 * (1 + i % 3)}\n" for i, b in enumerate(teacher.droppable)))
    return folder


def score_argv(folder: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "practise_jax.cli", "score", "--model", "cifar_resnet20", "--weights",
            str(folder / "teacher"), "--data", "synthetic:64:10:1", "--shots", "16", "--recover-steps", "3",
            "--batch-size", "8", "--tau", str(folder / "tau.csv"), "--out", str(out), *extra]


def processes(argvs: list[list[str]], timeout: int = 600) -> list[subprocess.CompletedProcess]:
    env = dict(os.environ, XLA_FLAGS=with_devices(1))
    running = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for argv in argvs]
    results = []
    for proc in running:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def read_scores(path: Path) -> dict[str, float]:
    import csv

    with path.open() as handle:
        return {row["block"]: float(row["recoverability"]) for row in csv.DictReader(handle)}


def test_two_processes_score_into_one_store_and_table_equal_to_one_process(tiny_run, tmp_path):
    [single] = processes([score_argv(tiny_run, tmp_path / "single")])  # on a CPU the processes split the batch
    assert single.returncode == 0, single.stderr[-2000:]
    coordinator = f"localhost:{free_port()}"
    common = ["--coordinator", coordinator, "--num-processes", "2"]
    # the first run scores two candidates; the second finds them in the store and scores the rest
    partial = processes([score_argv(tiny_run, tmp_path / "multi", *common, "--process-id", str(i), "--blocks", "layer1.1,layer1.2")
                         for i in range(2)])
    assert all(p.returncode == 0 for p in partial), [p.stderr[-2000:] for p in partial]
    coordinator = f"localhost:{free_port()}"
    common = ["--coordinator", coordinator, "--num-processes", "2"]
    runs = processes([score_argv(tiny_run, tmp_path / "multi", *common, "--process-id", str(i)) for i in range(2)])
    assert all(p.returncode == 0 for p in runs), [p.stderr[-2000:] for p in runs]
    assert "scored over 2 processes, 2 devices" in runs[0].stderr and "R/tau%" not in runs[1].stdout  # one table
    one, two = read_scores(tmp_path / "single" / "scores.csv"), read_scores(tmp_path / "multi" / "scores.csv")
    assert list(one) == list(two)  # the same ranking
    for block, value in one.items():
        assert abs(two[block] - value) <= 1e-5 * abs(value) + 1e-12, block
    store = (tmp_path / "multi" / "recoverability.jsonl").read_text().splitlines()
    assert len(store) == 1 + 6 and sorted(json.loads(line)["key"] for line in store[1:]) == sorted(one)


def test_processes_with_different_settings_refuse_to_mix(tiny_run, tmp_path):
    common = ["--coordinator", f"localhost:{free_port()}", "--num-processes", "2"]
    runs = processes([score_argv(tiny_run, tmp_path / "mixed", *common, "--process-id", "0"),
                      score_argv(tiny_run, tmp_path / "mixed", *common, "--process-id", "1", "--recover-steps", "4")])
    assert all(p.returncode == 2 for p in runs)
    assert all("were started with other settings" in p.stderr for p in runs)
    assert not (tmp_path / "mixed" / "scores.csv").exists()


def test_a_coordinator_that_does_not_answer_times_out_clearly(tiny_run, tmp_path):
    [run] = processes([score_argv(tiny_run, tmp_path / "alone", "--coordinator", f"localhost:{free_port()}",
                                  "--num-processes", "2", "--process-id", "1", "--connect-timeout", "5")], timeout=120)
    assert run.returncode == 2 and "could not reach the coordinator" in run.stderr and "Traceback" not in run.stderr


def test_auto_detection_outside_a_cluster_says_what_to_give(tiny_run, tmp_path):
    [run] = processes([score_argv(tiny_run, tmp_path / "auto", "--coordinator", "auto")], timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "could not join the cluster's coordinator" in run.stderr and "--coordinator HOST:PORT" in run.stderr


def test_the_zoo_convs_backward_adds_no_all_reduce_when_the_batch_is_split():
    """conv_backward's conditional takes its predicate from the (replicated) weights, so with the batch split over
    devices the only all-reduce is the weight gradient's, and a mesh of explicit axes (jax.make_mesh's) works too."""
    code = """
        import json, jax, numpy as np
        from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
        from practise_jax import conv_backward
        out = {}
        for axis_type in (AxisType.Auto, AxisType.Explicit):
            mesh = jax.make_mesh((4,), ("batch",), axis_types=(axis_type,))
            x = jax.device_put(np.ones((8, 6, 6, 4), np.float32), NamedSharding(mesh, P("batch")))
            w = jax.device_put(np.ones((3, 3, 4, 4), np.float32), NamedSharding(mesh, P()))
            loss = lambda x, w: (conv_backward.conv_general_dilated(x, w, (1, 1), "SAME",
                                                                    dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2).sum()
            with jax.set_mesh(mesh):
                hlo = jax.jit(jax.grad(loss, (0, 1))).lower(x, w).compile().as_text()
            out[str(axis_type)] = [hlo.count(" conditional("), hlo.count(" all-reduce(")]
        print(json.dumps(out))
    """
    result = run_with_devices(code)
    assert list(result.values()) == [[1, 1], [1, 1]], result  # the operands stored; one all-reduce: the weight gradient


def test_finetuning_is_data_parallel_over_devices_and_equals_one_device():
    code = """
        import json, numpy as np, jax
        import practise_jax as pj
        from flax import nnx
        from practise_jax import finetuning
        from tiny_models import tiny_model
        steps, make_step = [], finetuning.make_step
        finetuning.make_step = lambda *args, **kwargs: steps.append(make_step(*args, **kwargs)) or steps[-1]
        teacher = tiny_model("cifar_resnet20", dropped=())
        images = np.random.default_rng(0).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
        runs = {n: pj.finetune(pj.drop(teacher, ["layer1.1"]), images, teacher=teacher, steps=4, batch_size=16, devices=n)
                for n in (1, 4)}
        params = {n: jax.tree.leaves(nnx.state(m, nnx.Param)) for n, (m, _) in runs.items()}
        moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                    for a, b in zip(params[1], jax.tree.leaves(nnx.state(pj.drop(teacher, ["layer1.1"]), nnx.Param))))
        worst = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(params[1], params[4]))
        try:
            pj.finetune(pj.drop(teacher, ["layer1.1"]), images, teacher=teacher, steps=1, batch_size=10, devices=4)
        except pj.UserError as error:
            message = str(error)
        print(json.dumps({"moved": moved, "worst": worst, "error": message, "compiled": [s._cache_size() for s in steps],
                          "losses": [h["loss"] for n in (1, 4) for h in runs[n][1] if "loss" in h]}))
    """
    result = run_with_devices(code)
    assert result["moved"] > 1e-4 and result["worst"] <= 1e-5 * max(1.0, result["moved"]) * 10
    assert result["losses"][0] == pytest.approx(result["losses"][1], rel=1e-5)
    assert "does not split over 4 devices" in result["error"]
    assert result["compiled"] == [1, 1], "a finetune step compiled more than once"
