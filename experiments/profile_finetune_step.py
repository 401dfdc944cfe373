"""Where a finetune step's time goes on XLA:CPU: a JAX profile of cifar_resnet56 finetune steps, by kind of operation.

The student is cifar_resnet56 without layer1.1-1.5 (mimic, batch 64, the
benchmark's step, `bench_scaling.py`). After compiling, ``--steps`` steps run
under ``jax.profiler.trace``; every XLA operation the trace records is
attributed, from the compiled program's HLO (shape and JAX op name), to one of:
forward convolutions, input-gradient convolutions, weight-gradient
convolutions, layout copies (the transposes XLA inserts around the weight
gradient), reductions, cross-device all-reduces (with ``--devices N``: the
batch split over N one-thread CPU devices, as ``practise-jax --devices``;
an all-reduce's time includes waiting for the other devices), other fused
elementwise work, and the rest. Times are per step, summed over threads and
devices (so they can exceed the step's wall time when XLA runs operations
side by side). Before profiling, the same number of steps runs unprofiled
for the step's wall time and the process's CPU time (all its threads).

    python experiments/profile_finetune_step.py --out experiments/results/profile_finetune_step_cpu.csv

Writes the CSV (kind, ms per step, share, the largest operations of each
kind) and prints it. ``--plain-conv-backward`` profiles the step as it was before
`practise_jax.conv_backward`: every conv with ``lax.conv_general_dilated``'s own backward pass.

    python experiments/profile_finetune_step.py --plain-conv-backward \
        --out experiments/results/profile_finetune_step_cpu_plain_conv_backward.csv

    python experiments/profile_finetune_step.py --devices 2 \
        --out experiments/results/profile_finetune_step_cpu_devices2.csv

Real weights and images from ``$PRACTISE_DATA``.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PRACTISE_DATA", REPO.parent / "shared" / "data"))
DROP = ("layer1.1", "layer1.2", "layer1.3", "layer1.4", "layer1.5")
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) (\w[\w\-]*)\(")


def instruction_kinds(hlo: str) -> dict[str, str]:
    """The kind of every instruction of a compiled program, by name: what the profile's events are called."""
    kinds, fused = {}, {}
    computation = None
    for line in hlo.splitlines():
        if line and not line.startswith(" ") and "{" in line:
            computation = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            continue
        match = INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, op = match.groups()
        kind = _kind(op, shape, line)
        kinds[name] = kind
        if kind.startswith("conv"):
            fused[computation] = kind
        if op == "fusion":
            called = re.search(r"calls=%?([\w.\-]+)", line)
            if called and called.group(1) in fused:
                kinds[name] = fused[called.group(1)]
    return kinds


def _kind(op: str, shape: str, line: str) -> str:
    if op == "convolution":
        window = [int(d) for d in re.search(r"window=\{size=([\dx]+)", line).group(1).split("x")]
        if max(window) > 7:  # the output gradient as the window: XLA's form of a weight gradient (no op name kept)
            return "conv weight gradient"
        return "conv input gradient" if "transpose(jvp" in line else "conv forward"
    if op in ("copy", "transpose") or "transpose_copy" in line.split("=")[0]:
        return "layout copies"
    if op.startswith(("all-", "collective-", "reduce-scatter")):
        return "cross-device collectives"
    if op == "reduce" or "reduce" in line.split("=")[0]:
        return "reductions"
    if op == "fusion":
        return "elementwise fusions"
    return "other"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--plain-conv-backward", action="store_true", help="the convs' backward pass as XLA fuses it unaided")
    parser.add_argument("--devices", type=int, default=1,
                        help="split the batch over this many CPU devices (one thread each), as `--devices` does")
    parser.add_argument("--out", default=str(REPO / "experiments/results/profile_finetune_step_cpu.csv"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from practise_jax import xla_cpu

    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices}"
    xla_cpu.use_fast_flags()
    import jax
    import numpy as np
    from flax import nnx
    from jax.profiler import ProfileData

    import model_zoo
    import practise_jax as pj
    from practise_jax import data, devices, finetuning
    from practise_jax.latency import write_csv

    teacher = model_zoo.load("cifar_resnet56", DATA / "cifar10_resnets" / "resnet56-4bfd9763.th")
    images = data.load_tiny_set(f"npz:{DATA / 'cifar10' / 'cifar10_train_exact.npz'}", 500, 2021, num_classes=10)[0].images
    views = pj.views(teacher, images)
    config = finetuning.FinetuneConfig(steps=10 ** 6)
    student = pj.drop(teacher, DROP)
    if args.plain_conv_backward:
        for _, module in nnx.iter_modules(student):
            if isinstance(module, nnx.Conv):
                module.conv_general_dilated = jax.lax.conv_general_dilated
    student.train()
    teacher.eval()
    graphdef, params, rest = nnx.split(student, nnx.Param, ...)
    teacher_graphdef, teacher_state = nnx.split(teacher)
    tx = finetuning.optimizer(config, finetuning.trainable_mask(params, student.head, config.loss))
    placement = devices.Placement(devices.batch_mesh(jax.local_devices()) if args.devices > 1 else None)
    step = finetuning.make_step(graphdef, teacher_graphdef, tx, config, views.train, placement.batch_split(64))
    params, rest = jax.tree.map(jax.numpy.copy, (params, rest))  # own buffers: the step donates them
    state = [params, rest, tx.init(params), jax.numpy.asarray(-1)]
    state, teacher_state, device_images, labels, batches = placement.everywhere(jax.tree.map(jax.numpy.asarray, (
        state, teacher_state, images, np.zeros(len(images), np.int32), np.random.RandomState(0).permutation(len(images))[:64])))
    key = jax.random.key(0)

    def run(index):
        p, r, o, failed, loss = step(*state, teacher_state, device_images, labels, batches, key, index)
        state[:] = [p, r, o, failed]
        return loss

    hlo = step.lower(*state, teacher_state, device_images, labels, batches, key, 1).compile().as_text()
    kinds = instruction_kinds(hlo)
    for i in range(3):
        jax.block_until_ready(run(i + 1))
    cpu, started = time.process_time(), time.perf_counter()
    for i in range(args.steps):  # unprofiled: the step's wall time, and how many cores the process kept busy
        jax.block_until_ready(run(i + 4))
    plain_wall, plain_cpu = (time.perf_counter() - started) / args.steps, (time.process_time() - cpu) / args.steps
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        with jax.profiler.trace(folder):
            for i in range(args.steps):
                jax.block_until_ready(run(i + 4))
        wall = (time.perf_counter() - started) / args.steps
        profile = ProfileData.from_file(sorted(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True))[-1])
    per_kind, per_op = collections.Counter(), collections.Counter()
    for plane in profile.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):
                continue
            for event in line.events:
                if event.name in kinds:
                    per_kind[kinds[event.name]] += event.duration_ns / 1e6 / args.steps
                    per_op[(kinds[event.name], event.name)] += event.duration_ns / 1e6 / args.steps
    total = sum(per_kind.values())
    rows = [{"kind": kind, "ms_per_step": ms, "share": ms / total,
             "largest": " ".join(f"{name}:{v:.1f}" for (k, name), v in per_op.most_common() if k == kind)[:200]}
            for kind, ms in per_kind.most_common()]
    rows.append({"kind": "all XLA operations", "ms_per_step": total, "share": 1.0, "largest": ""})
    rows.append({"kind": "wall time of a step (under the profiler)", "ms_per_step": 1000 * wall, "share": "", "largest": ""})
    rows.append({"kind": "wall time of a step (no profiler)", "ms_per_step": 1000 * plain_wall, "share": "", "largest": ""})
    rows.append({"kind": "process CPU time of a step (no profiler)", "ms_per_step": 1000 * plain_cpu, "share": "",
                 "largest": "all threads: XLA's, the JAX runtime's and Python's"})
    write_csv(rows, args.out)
    for row in rows:
        share = "" if row["share"] == "" else f"{100 * row['share']:.0f}%"
        print(f"{row['kind']:42s} {row['ms_per_step']:8.1f} ms  {share}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
