"""Adaptor-training steps of ours against the same steps in PyTorch, side by side.

The step (PRACTISE_SPEC.md section 4.2): teacher and student (teacher minus one
block, identity 1x1 adaptors around the gap) in eval mode, MSE between their
pre-GAP features, SGD (lr 0.02, momentum 0.9, weight decay 1e-4) on the
adaptors only. Both sides get the same fixed, already augmented batch (ours
adds its in-step crop/flip, which is cheap), the same weights and the same
adaptor sites; each is warmed up, then timed over ``--steps`` steps, blocking
until the result is ready. The two sides alternate in ``--rounds`` rounds so
that drift on a shared machine hits both.

Two comparisons, one CSV row each:

* ``single``, per block of ``--blocks``: one candidate's step. Ours is our
  scorer's step for one candidate alone (a teacher pass, then the student
  from its first adapted block); PyTorch's is the reference's (full teacher
  and student forward, backward to the adaptors).
* ``lockstep`` (``--lockstep``): one step of *every* droppable candidate, as
  scoring runs it. Ours: `recoverability.make_lockstep_step` for each stage's
  candidates, one compiled computation per stage with one teacher pass shared
  by its candidates; PyTorch: the reference's step once per candidate.

    python experiments/bench_recover_step.py --model cifar_resnet56 --blocks layer1.1,layer2.4,layer3.8 \
        --lockstep --batch-size 64 --steps 10 --rounds 3 --out experiments/results/bench_recover_step.csv

Needs the ``torch`` extra (``pip install torch==2.13.0``). Weights: the real
checkpoint from ``$PRACTISE_DATA`` (default ../shared/data) when present, else random.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the PyTorch reference models live beside the parity tests

import model_zoo  # noqa: E402
from practise_jax import jit_cache, xla_cpu  # noqa: E402
from practise_jax import recoverability as rec  # noqa: E402
from practise_jax.cli import run_reporting_errors  # noqa: E402
from practise_jax.latency import write_csv  # noqa: E402
from practise_jax.protocol import parse_block_list  # noqa: E402
from practise_jax.transforms import views_for  # noqa: E402
from torch_reference import cifar_resnet  # noqa: E402

CHECKPOINTS = {20: "resnet20-12fca82f.th", 32: "resnet32-d509ac18.th", 44: "resnet44-014dd654.th", 56: "resnet56-4bfd9763.th"}


class TorchAdaptor(nn.Module):
    """A bias-free 1x1 conv at identity, as the reference's adaptor."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)
        nn.init.eye_(self.conv.weight.view(channels, channels))

    def forward(self, x):
        return self.conv(x)


def torch_student(teacher: nn.Module, block: str, sites) -> tuple[nn.Module, list[nn.Parameter]]:
    """The teacher with ``block`` replaced by the identity, adaptors wrapped around the convs our placement names."""
    student = copy.deepcopy(teacher)
    stage, index = block.split(".")
    getattr(student, stage)[int(index)] = nn.Identity()  # kept blocks keep their addresses, as ours do
    params = []
    for site in sites:
        *parent_path, name = site.path.split(".")
        parent = student
        for step in parent_path:
            parent = parent[int(step)] if step.isdigit() else getattr(parent, step)
        conv = getattr(parent, name)
        adaptor = TorchAdaptor(conv.in_channels if site.kind == "pre" else conv.out_channels)
        params += list(adaptor.parameters())
        setattr(parent, name, nn.Sequential(adaptor, conv) if site.kind == "pre" else nn.Sequential(conv, adaptor))
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return student.eval(), params


def torch_step(teacher, student, params, x):
    """The reference's step for one candidate: ``() -> loss``."""
    optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=1e-4)

    def step():
        with torch.no_grad():
            target = teacher.forward_features(x)[1]
        loss = F.mse_loss(student.forward_features(x)[1], target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def jax_steps(teacher, candidates, config, views, images):
    """Our lockstep step of ``candidates``, as ``() -> losses`` with fresh adaptors each time it is built."""
    optimizer, step = rec.make_lockstep_step(teacher, candidates, config, views)
    teacher_state = nnx.state(teacher)
    adaptors = [jax.tree.map(jnp.array, c.adaptors) for c in candidates]
    state = {"adaptors": adaptors, "opt": [optimizer.init(a) for a in adaptors]}
    frozen = [c.frozen for c in candidates]
    key, index = jax.random.key_data(jax.random.key(0)), jnp.arange(len(images))

    def run():
        state["adaptors"], state["opt"], losses = step(state["adaptors"], state["opt"], frozen, teacher_state, images, index, key)
        return jax.block_until_ready(losses)

    return run


def seconds_per_step(run, steps: int) -> float:
    """Seconds per call of ``run`` (blocking) over ``steps`` calls after one warm-up call."""
    run()
    started = time.perf_counter()
    for _ in range(steps):
        run()
    return (time.perf_counter() - started) / steps


def compare(ours, theirs, steps: int, rounds: int) -> tuple[float, float]:
    """Median seconds per step of both sides over alternating rounds."""
    a, b = [], []
    for _ in range(rounds):
        a.append(seconds_per_step(ours, steps))
        b.append(seconds_per_step(theirs, steps))
    return statistics.median(a), statistics.median(b)


def main(argv=None) -> int:
    xla_cpu.use_fast_flags()  # as the practise-jax command does; PRACTISE_XLA_DEFAULTS=0 for XLA's own
    jit_cache.use_persistent_cache()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cifar_resnet56")
    parser.add_argument("--blocks", default="layer1.1,layer2.4,layer3.8")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lockstep", action="store_true", help="also time one step of every candidate, as scoring runs it")
    parser.add_argument("--out", default=str(REPO / "experiments/results/bench_recover_step.csv"))
    args = parser.parse_args(argv)
    depth = int(args.model.removeprefix("cifar_resnet"))
    data = Path(os.environ.get("PRACTISE_DATA", REPO.parent / "shared" / "data"))
    weights = data / "cifar10_resnets" / CHECKPOINTS.get(depth, "")
    info = model_zoo.get_info(args.model)

    torch_teacher = cifar_resnet(depth).eval()
    if weights.is_file():
        jax_teacher = model_zoo.load(args.model, weights)
        state = torch.load(weights, map_location="cpu", weights_only=True)["state_dict"]
        torch_teacher.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    else:
        jax_teacher = model_zoo.create(args.model)
    jax_teacher.eval()

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch_size, 32, 32, 3), dtype=np.uint8)
    x_torch = ((torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(info.mean).view(1, 3, 1, 1))
               / torch.tensor(info.std).view(1, 3, 1, 1))
    device_images = jnp.asarray(images)
    config = rec.RecoverConfig(steps=1000, batch_size=args.batch_size)

    views = views_for(jax_teacher.input_spec, 32)

    def row(kind, blocks, ours, theirs):
        jax_s, torch_s = compare(ours, theirs, args.steps, args.rounds)
        line = {
            "kind": kind, "model": args.model, "block": blocks, "batch_size": args.batch_size, "steps_per_round": args.steps,
            "rounds": args.rounds, "jax_s_per_step": jax_s, "torch_s_per_step": torch_s,
            "speed_ratio_jax_over_torch": torch_s / jax_s,
            "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        }
        print(f"{kind:8s} {blocks:10s} ours {1e3 * jax_s:8.1f} ms/step   PyTorch {1e3 * torch_s:8.1f} ms/step   "
              f"speed ours/PyTorch {line['speed_ratio_jax_over_torch']:.2f}x", flush=True)
        return line

    rows = []
    for block in parse_block_list(args.blocks):
        candidate = rec.build_candidate(jax_teacher, [block])
        ours = jax_steps(jax_teacher, [candidate], config, views, device_images)
        rows.append(row("single", block, ours, torch_step(torch_teacher, *torch_student(torch_teacher, block, candidate.sites), x_torch)))
    if args.lockstep:  # the groups scoring trains together (a stage each), one after the other
        ours, reference = [], []
        for group in rec.groups(jax_teacher, jax_teacher.droppable):
            candidates = [rec.build_candidate(jax_teacher, [b]) for b in group]
            ours.append(jax_steps(jax_teacher, candidates, config, views, device_images))
            reference += [torch_step(torch_teacher, *torch_student(torch_teacher, c.name, c.sites), x_torch) for c in candidates]
        rows.append(row("lockstep", f"all {len(reference)}", lambda: [run() for run in ours], lambda: [step() for step in reference]))
    write_csv(rows, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, "bench_recover_step"))
