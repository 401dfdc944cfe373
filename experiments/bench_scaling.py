"""Scaling benchmark: scoring, profiling and finetuning of cifar_resnet56 on 1 and 2 CPU devices, against PyTorch.

Every figure comes from a fresh process, so each configuration gets its own
XLA flags: ``1 device`` is XLA's one CPU device (our XLA:CPU flags: no
intra-op threading; a lockstep step runs its candidates side by side on the
cores), ``2 devices`` is ``--xla_force_host_platform_device_count=2`` with one
thread each (``--devices 2``: the batch split over them). Parts (``--parts``):

* ``score``: wall time of ``practise-jax score`` end to end (500 images, 50
  adaptor steps, every candidate, latency measured from an empty cache), per
  device configuration; the recoverability part and the latency part apart.
* ``profile``: wall time of ``practise-jax profile`` of every candidate, each
  timed on its own (``--all-candidates``, how it was) and identical blocks
  timed once (the default), empty caches.
* ``steps``: seconds per step, measured in one process side by side with a
  plain PyTorch loop on the same 2 cores: (a) finetuning cifar_resnet56
  without layer1.1-1.5 (mimic, batch 64); (b) one adaptor step of all 24
  candidates, ours as scoring runs it, PyTorch's one candidate at a time with
  full teacher and student passes (the reference).

    python experiments/bench_scaling.py --out experiments/results/bench_scaling_cpu.csv

Writes the CSV and a bar chart beside it. Real weights and images from
``$PRACTISE_DATA`` (default ../shared/data); PyTorch for the ``steps`` part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PRACTISE_DATA", REPO.parent / "shared" / "data"))
WEIGHTS = DATA / "cifar10_resnets" / "resnet56-4bfd9763.th"
TRAIN = f"npz:{DATA / 'cifar10' / 'cifar10_train_exact.npz'}"
DEVICES = {1: "--xla_force_host_platform_device_count=1", 2: "--xla_force_host_platform_device_count=2"}
FINETUNE_DROP = ("layer1.1", "layer1.2", "layer1.3", "layer1.4", "layer1.5")


def in_fresh_process(argv: list[str], devices: int, cache: Path) -> float:
    """Wall seconds of ``argv`` in a new process with the flags of ``devices`` and an empty practise-jax cache."""
    env = dict(os.environ, XLA_FLAGS=DEVICES[devices], PRACTISE_CACHE=str(cache), PRACTISE_XLA_CACHE="0")
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return seconds


def score_rows(args, work: Path) -> list[dict]:
    rows = []
    for devices in (1, 2):
        out = work / f"score_{devices}"
        argv = [sys.executable, "-m", "practise_jax.cli", "score", "--model", "cifar_resnet56", "--weights", str(WEIGHTS),
                "--data", TRAIN, "--shots", "500", "--recover-steps", str(args.steps), "--devices", str(devices),
                "--speedup", "0.2", "--out", str(out)]
        seconds = in_fresh_process(argv, devices, work / f"cache_score_{devices}")
        rows.append({"part": "score", "config": f"{devices} device(s)", "seconds": seconds,
                     "recoverability_s": sum(json.loads(line).get("train_seconds", 0) for line in
                                             (out / "recoverability.jsonl").read_text().splitlines()[1:]),
                     "note": f"{args.steps} adaptor steps, 24 candidates, 500 images, latency from an empty cache"})
        print(rows[-1], flush=True)
    return rows


def profile_rows(args, work: Path) -> list[dict]:
    rows = []
    for label, extra in (("every candidate timed", ["--all-candidates"]), ("identical blocks timed once", [])):
        argv = [sys.executable, "-m", "practise_jax.cli", "profile", "--model", "cifar_resnet56", "--batch-size", "64",
                "--quiet", "--cache-dir", str(work / f"profile_{len(extra)}"), *extra,
                "--out", str(work / f"profile_{len(extra)}.csv")]
        seconds = in_fresh_process(argv, 1, work / "cache_profile")
        rows.append({"part": "profile", "config": label, "seconds": seconds, "note": "24 s of timed calls per timed candidate"})
        print(rows[-1], flush=True)
    return rows


def step_rows(args) -> list[dict]:
    """Seconds per step, ours (in a subprocess per device setting) interleaved with PyTorch (in this process)."""
    rows = []
    for kind in ("finetune", "score"):
        torch_s = torch_seconds(kind, args.repeats)
        for devices in (1, 2):
            env = dict(os.environ, XLA_FLAGS=DEVICES[devices], PRACTISE_XLA_CACHE="0")
            done = subprocess.run([sys.executable, __file__, "--ours", kind, "--repeats", str(args.repeats)], env=env,
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            ours = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
            rows.append({"part": f"{kind} step", "config": f"ours, {devices} device(s)", "seconds": ours,
                         "torch_seconds": torch_s, "speed_vs_torch": torch_s / ours,
                         "note": "finetune: cifar_resnet56 without layer1.1-1.5, mimic, batch 64" if kind == "finetune"
                         else "all 24 candidates, batch 64; PyTorch: one candidate at a time, full passes"})
            print(rows[-1], flush=True)
    return rows


def our_seconds(kind: str, repeats: int) -> float:
    """Median seconds per step of ours (finetune, or one adaptor step of every candidate) in this process."""
    from practise_jax import xla_cpu

    xla_cpu.use_fast_flags()
    import jax
    import numpy as np

    import model_zoo
    import practise_jax as pj
    from practise_jax import data, devices as device_lib, finetuning
    from practise_jax import recoverability as rec

    teacher = model_zoo.load("cifar_resnet56", WEIGHTS)
    images = data.load_tiny_set(TRAIN, 500, 2021, num_classes=10)[0].images
    views = pj.views(teacher, images)
    spread = device_lib.spread_locally(None)
    if kind == "finetune":  # the time of 10 more steps, compile and the first steps cancelling out
        def finetune(steps):
            config = finetuning.FinetuneConfig(steps=steps, eval_every=10 ** 6)
            return timed(lambda: finetuning.finetune(pj.drop(teacher, FINETUNE_DROP), teacher, images, None, config,
                                                      views.train, spread=spread), 1)

        return (finetune(10 + 20 * repeats) - finetune(10)) / (20 * repeats)
    config = rec.RecoverConfig(steps=10 ** 6)
    placement = device_lib.Placement(device_lib.batch_mesh(spread) if spread else None)
    index, key = placement.everywhere((np.arange(64), jax.random.key_data(jax.random.key(0))))
    steps = []
    for group in rec.groups(teacher, teacher.droppable):
        candidates = [rec.build_candidate(teacher, [b]) for b in group]
        optimizer, step = rec.make_lockstep_step(teacher, candidates, config, views, placement.batch_split(64))
        adaptors, opt_states, frozen, teacher_state, images_here = placement.everywhere(
            ([c.adaptors for c in candidates], [optimizer.init(c.adaptors) for c in candidates],
             [c.frozen for c in candidates], nnx_state(teacher), images))
        state = {"a": adaptors, "o": opt_states}

        def run(step=step, state=state, frozen=frozen, teacher_state=teacher_state, images_here=images_here):
            state["a"], state["o"], losses = step(state["a"], state["o"], frozen, teacher_state, images_here, index, key)
            jax.block_until_ready(losses)

        steps.append(run)
    for run in steps:
        run()  # compile
    return statistics.median(timed(lambda: [run() for run in steps], 2) for _ in range(repeats))


def nnx_state(model):
    from flax import nnx

    return nnx.state(model)


def timed(fn, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n


def torch_seconds(kind: str, repeats: int) -> float:
    """Median seconds per step of the plain PyTorch loop (2 threads) doing the same."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO / "experiments"))
    from bench_recover_step import torch_step, torch_student
    from torch_reference import cifar_resnet

    import model_zoo
    from practise_jax import adaptors

    torch.set_num_threads(os.cpu_count() or 1)
    teacher = cifar_resnet(56).eval()
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)["state_dict"]
    teacher.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    x = torch.randn(64, 3, 32, 32)
    if kind == "finetune":
        student = cifar_resnet(56)
        student.load_state_dict(teacher.state_dict())
        for address in FINETUNE_DROP:
            stage, index = address.split(".")
            getattr(student, stage)[int(index)] = torch.nn.Identity()
        student.train()
        params = [p for n, p in student.named_parameters() if not n.startswith("linear")]
        optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)
        rng = np.random.default_rng(0)

        def step():
            batch = x[torch.from_numpy(rng.permutation(64))]
            crops = torch.nn.functional.pad(batch, (4, 4, 4, 4))[:, :, 2:34, 3:35].flip(3)
            with torch.no_grad():
                target = teacher.forward_features(crops)[1]
            loss = F.mse_loss(student.forward_features(crops)[1], target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step()
        return statistics.median(timed(step, 5) for _ in range(repeats))
    abstract = model_zoo.create("cifar_resnet56")
    steps = [torch_step(teacher, *torch_student(teacher, block, adaptors.placement(abstract, block)), x)
             for block in abstract.droppable]
    for step in steps:
        step()
    return statistics.median(timed(lambda: [step() for step in steps], 1) for _ in range(repeats))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = list(dict.fromkeys(r["part"] for r in rows))
    fig, axes = plt.subplots(1, len(parts), figsize=(3.6 * len(parts), 3.6))
    for ax, part in zip(axes if len(parts) > 1 else [axes], parts):
        chosen = [r for r in rows if r["part"] == part]
        labels = [r["config"] for r in chosen] + (["PyTorch"] if "torch_seconds" in chosen[0] else [])
        values = [r["seconds"] for r in chosen] + ([chosen[0]["torch_seconds"]] if "torch_seconds" in chosen[0] else [])
        bars = ax.bar(range(len(values)), values, color=["tab:green"] * len(chosen) + ["tab:gray"] * (len(values) - len(chosen)))
        ax.bar_label(bars, fmt="%.2f" if max(values) < 10 else "%.0f")
        ax.set_xticks(range(len(values)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_title(part + (" (s/step)" if "step" in part else " (s)"), fontsize=9)
    fig.suptitle(f"cifar_resnet56 on {platform.processor() or platform.machine()} x{os.cpu_count()}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="score,profile,steps")
    parser.add_argument("--steps", type=int, default=50, help="adaptor steps of the score runs")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per step figure")
    parser.add_argument("--ours", choices=("finetune", "score"), help=argparse.SUPPRESS)  # the child of `steps`
    parser.add_argument("--out", default=str(REPO / "experiments/results/bench_scaling_cpu.csv"))
    args = parser.parse_args(argv)
    if args.ours:
        print(json.dumps({"seconds": our_seconds(args.ours, args.repeats)}))
        return 0
    sys.path.insert(0, str(REPO))
    from practise_jax.latency import write_csv

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as folder:
        work = Path(folder)
        for part in args.parts.split(","):
            rows += {"score": score_rows, "profile": profile_rows, "steps": lambda a, w: step_rows(a)}[part](args, work)
    for row in rows:
        row.update(device=f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()}")
    write_csv(rows, args.out)
    plot(rows, Path(args.out).with_suffix(".png"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
