"""What the wrong input normalisation costs: a checkpoint trained with CIFAR statistics, read with the right and the wrong.

1. Make the checkpoint a user of the pytorch-cifar recipe would have: the
   akamaster ResNet-20 (trained with ImageNet statistics) finetuned in
   PyTorch with CIFAR-10 statistics (kuangliu/pytorch-cifar's mean
   (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010)) on the 5,085 exact
   training images (SGD, pad-4 crop and flip, cross-entropy), and saved as
   pytorch-cifar saves: ``torch.save({'net': state_dict, 'acc': top1, 'epoch': n})``,
   ``acc`` being the top-1 its training measured on the first 1,017 exact test images.
2. Read it back with practise-jax (no torch needed) and evaluate it with the
   normalisation it was trained with (``--normalization cifar10``) and with the
   one practise-jax would otherwise assume for a CIFAR ResNet (ImageNet's).
   Two more wrong ones show the range: [-1, 1] scaling (Keras-style) and no
   normalisation at all.
3. Optionally (``--compress``) compress it with the right and the assumed
   normalisation (PRACTISE, 20% latency target, 500 images) and evaluate
   both students with the right one.

    python experiments/normalization_risk.py --steps 400 --compress \
        --out experiments/results/normalization_risk.csv

Needs torch for step 1 (``pip install torch==2.13.0``); real data from
``$PRACTISE_DATA`` (default ../shared/data).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the PyTorch reference models

from practise_jax import jit_cache, xla_cpu  # noqa: E402
from practise_jax.cli import main as cli  # noqa: E402
from practise_jax.cli import run_reporting_errors  # noqa: E402
from practise_jax.latency import write_csv  # noqa: E402
from practise_jax.transforms import NORMALIZATIONS  # noqa: E402

CIFAR_MEAN, CIFAR_STD = NORMALIZATIONS["cifar10"]
PREFIX = 1017  # the uniform prefix of the test set with exact pixels


def make_checkpoint(data: Path, out: Path, steps: int, seed: int) -> dict:
    """Finetune the akamaster ResNet-20 with CIFAR statistics in PyTorch; save it the pytorch-cifar way."""
    import torch
    import torch.nn.functional as F
    from torch_reference import cifar_resnet

    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    model = cifar_resnet(20)
    source = torch.load(data / "cifar10_resnets" / "resnet20-12fca82f.th", map_location="cpu", weights_only=True)
    model.load_state_dict({k.removeprefix("module."): v for k, v in source["state_dict"].items()})
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

    def tensor(images):
        return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std

    with np.load(data / "cifar10" / "cifar10_train_exact.npz") as archive:
        train_x, train_y = archive["images"], torch.from_numpy(archive["labels"])
    with np.load(data / "cifar10" / "cifar10_test_exact.npz") as archive:
        test_x, test_y = archive["images"][:PREFIX], archive["labels"][:PREFIX]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    model.train()
    for _ in range(steps):
        index = rng.choice(len(train_x), 128, replace=False)
        batch = np.pad(train_x[index], ((0, 0), (4, 4), (4, 4), (0, 0)))
        offsets = rng.integers(0, 9, (128, 2))
        crops = np.stack([b[o[0]:o[0] + 32, o[1]:o[1] + 32] for b, o in zip(batch, offsets)])
        flips = rng.random(128) < 0.5
        crops[flips] = crops[flips, :, ::-1]
        loss = F.cross_entropy(model(tensor(np.ascontiguousarray(crops))), train_y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        top1 = 100.0 * float((model(tensor(test_x)).argmax(1).numpy() == test_y).mean())
    torch.save({"net": model.state_dict(), "acc": top1, "epoch": steps}, out)
    return {"steps": steps, "train_seconds": time.perf_counter() - started, "logged_top1": top1}


def evaluate(source: list[str], data: Path, *extra: str) -> dict:
    """``practise-jax eval --json`` of ``source`` (its options) on the first 1,017 exact test images and on all 4,599."""
    results = {}
    for limit, field in ((PREFIX, "top1"), (None, "class_mean_top1")):
        argv = ["eval", *source, "--data", f"npz:{data / 'cifar10' / 'cifar10_test_exact.npz'}", "--json", *extra]
        out = _capture(argv + ([] if limit is None else ["--limit", str(limit)]))
        results[field], results["normalization"] = out[field], out["normalization"]
    return results


def _capture(argv: list[str]) -> dict:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = cli(argv)
    if status != 0:
        raise SystemExit(f"practise-jax {' '.join(argv)} failed with status {status}")
    return json.loads(buffer.getvalue())


def compress(checkpoint: Path, data: Path, work: Path, given: list[str], steps: int) -> dict:
    """PRACTISE at a 20% latency target with the given normalisation; the student evaluated correctly."""
    out = work / ("compress_" + ("_".join(given).replace("--", "") or "assumed"))
    argv = ["compress", "--model", "cifar_resnet20", "--weights", str(checkpoint), *given,
            "--data", f"npz:{data / 'cifar10' / 'cifar10_train_exact.npz'}", "--shots", "500", "--speedup", "0.2",
            "--recover-steps", "50", "--finetune-steps", str(steps), "--eval-every", str(steps), "--out", str(out), "--json"]
    summary = _capture(argv)
    right = evaluate(["--checkpoint", str(out / "student")], data, "--normalization", "cifar10")
    return {"dropped": " ".join(summary["dropped_blocks"]), "student_top1": right["top1"],
            "student_class_mean": right["class_mean_top1"], "latency_reduction": summary["latency_reduction"]}


def main(argv=None) -> int:
    xla_cpu.use_fast_flags()
    jit_cache.use_persistent_cache()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("PRACTISE_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--steps", type=int, default=400, help="PyTorch finetune steps with CIFAR statistics (batch 128)")
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument("--compress", action="store_true", help="also compress with each normalisation")
    parser.add_argument("--finetune-steps", type=int, default=300, help="finetune steps of the compress runs")
    parser.add_argument("--work", type=Path, default=Path("runs/normalization_risk"))
    parser.add_argument("--out", default=str(REPO / "experiments/results/normalization_risk.csv"))
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.work / f"resnet20_cifar_stats_{args.steps}steps.pth"
    info_file = checkpoint.with_suffix(".json")
    if not info_file.exists():
        info_file.write_text(json.dumps(make_checkpoint(args.data_dir, checkpoint, args.steps, args.seed)))
    made = json.loads(info_file.read_text())
    print(f"checkpoint {checkpoint}: {made['steps']} PyTorch steps with CIFAR statistics, logged top-1 "
          f"{made['logged_top1']:.2f}% on the first {PREFIX} test images")
    cases = {"right: --normalization cifar10": ["--normalization", "cifar10"],
             "wrong: none given (ImageNet's, assumed)": [],
             "wrong: [-1, 1] (mean 0.5, std 0.5, Keras-style)": ["--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"],
             "wrong: none applied (mean 0, std 1)": ["--mean", "0,0,0", "--std", "1,1,1"]}
    compressed = tuple(cases)[:2]  # the two a user meets: the right one, and the registry's assumed one
    rows = []
    for name, extra in cases.items():
        result = evaluate(["--model", "cifar_resnet20", "--weights", str(checkpoint)], args.data_dir, *extra)
        row = {"case": name, "normalization": result["normalization"], "top1_prefix": result["top1"],
               "class_mean_all": result["class_mean_top1"], "logged_top1": made["logged_top1"],
               "torch_finetune_steps": made["steps"]}
        if args.compress and name in compressed:
            row.update(compress(checkpoint, args.data_dir, args.work, extra, args.finetune_steps))
        rows.append(row)
        print(row, flush=True)
    write_csv(rows, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, "normalization_risk"))
