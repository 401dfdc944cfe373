"""Accuracy of the four akamaster CIFAR-10 ResNet checkpoints under our JAX models.

Run from the repository root:

    python experiments/cifar_checkpoint_accuracy.py

(``--data-dir`` or ``$PRACTISE_DATA`` points at shared/data; default ``../shared/data``.)

Two unbiased estimates on the exact CIFAR-10 test pixels
(``cifar10/cifar10_test_exact.npz``, 4,599 images, class-imbalanced):

* ``top1_prefix``: top-1 on the 1,017 images with ``source == 0``, a uniform
  prefix (indices 0-1016) of the official test set;
* ``class_mean_all``: mean of the per-class accuracies over all 4,599 images.

``top1_all`` (plain top-1 over the imbalanced 4,599) is written too, for
reference only. Writes ``experiments/results/cifar_checkpoint_accuracy.csv``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import jax
import numpy as np

import model_zoo
from practise_jax.cli import int_list, run_reporting_errors
from practise_jax.data import load_source
from practise_jax.evaluation import evaluate
from practise_jax.latency import write_csv
from practise_jax.transforms import views_for

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "experiments" / "results" / "cifar_checkpoint_accuracy.csv"
DEPTHS = (20, 32, 44, 56)
# shared/data/README.md section 1, measured there with an independent PyTorch model.
README_TOP1_PREFIX = {20: 91.64, 32: 92.82, 44: 93.41, 56: 92.72}
README_CLASS_MEAN_ALL = {20: 92.09, 32: 93.38, 44: 93.89, 56: 93.62}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("PRACTISE_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--depths", type=int_list, default=",".join(map(str, DEPTHS)), help="which checkpoints (default: all four)")
    parser.add_argument("--limit", type=int, help="only the first N images of each set (a quick check; the results use all)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    depths = args.depths
    if unknown := sorted(set(depths) - set(DEPTHS)):
        parser.error(f"no checkpoint for depth {unknown}; choose from {', '.join(map(str, DEPTHS))}")

    npz = args.data_dir / "cifar10" / "cifar10_test_exact.npz"
    data = load_source(f"npz:{npz}")
    with np.load(npz, allow_pickle=False) as archive:
        prefix = data.take(np.flatnonzero(archive["source"] == 0))
    if args.limit:
        data, prefix = data.take(slice(0, args.limit)), prefix.take(slice(0, args.limit))

    rows = []
    for depth in depths:
        name = f"cifar_resnet{depth}"
        info = model_zoo.get_info(name)
        known = info.weights[0]
        weights = args.data_dir / "cifar10_resnets" / known.filename
        model = model_zoo.load(name, weights)
        views = views_for(model.input_spec, info.input_size)
        on_prefix = evaluate(model, prefix, views, batch_size=args.batch_size, progress=False)
        on_all = evaluate(model, data, views, batch_size=args.batch_size, progress=False)
        rows.append({
            "model": name,
            "weights": known.filename,
            "prefix_images": on_prefix.count,
            "top1_prefix": round(on_prefix.top1, 2),
            "readme_top1_prefix": README_TOP1_PREFIX[depth],
            "all_images": on_all.count,
            "class_mean_all": round(on_all.class_mean, 2),
            "readme_class_mean_all": README_CLASS_MEAN_ALL[depth],
            "top1_all": round(on_all.top1, 2),
            "published_top1": known.top1,
            "device": jax.devices()[0].platform,
            "jax": jax.__version__,
            "python": platform.python_version(),
        })
        print(f"{name}: top-1 on the 1,017-image prefix {on_prefix.top1:.2f}% (README {README_TOP1_PREFIX[depth]}), "
              f"class-mean over {on_all.count} {on_all.class_mean:.2f}% (README {README_CLASS_MEAN_ALL[depth]})")

    write_csv(rows, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, "cifar_checkpoint_accuracy"))
