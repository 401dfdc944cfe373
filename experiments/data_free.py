"""Data-free PRACTISE on cifar_resnet56: the tiny set synthesised from the teacher, against real and out-of-domain sets.

The three steps, each resumable (rerun the same command after a kill):

    # 1. synthesise (DeepInversion, the NVlabs CIFAR-10 recipe: 2000 steps per batch of 256)
    practise-jax synthesize --model cifar_resnet56 --weights ../shared/data/cifar10_resnets/resnet56-4bfd9763.th \
        --images 500 --seed 2021 --out runs/data_free/syn500.npz
    practise-jax synthesize --model cifar_resnet56 --weights ../shared/data/cifar10_resnets/resnet56-4bfd9763.th \
        --images 50 --seed 2021 --out runs/data_free/syn50.npz
    # 2. PRACTISE on each, at the main table's settings (20% target, 50 adaptor steps, 300 mimic steps)
    python experiments/main_table.py --train-data npz:runs/data_free/syn500.npz --rows practise --shots 500 \
        --seeds 2021 --speedup 0.2 --recover-steps 50 --finetune-steps 300 \
        --tau experiments/results/latency_cpu_cifar_resnet56_b64_pinned1_run2.csv \
        --work runs/data_free/syn500 --out experiments/results/main_table_cifar_resnet56_synthetic500.csv
    (the same with syn50.npz, --shots 50, --work runs/data_free/syn50, ..._synthetic50.csv)
    # 3. this script: the table, the Spearman of R against real images, the grid picture
    python experiments/data_free.py --runs runs/data_free --out experiments/results/data_free_cifar_resnet56.csv

Step 3 reads each synthesis summary (``FILE.json``, written by ``synthesize``),
each run's ``summary.json`` and ``recoverability.jsonl``, and the R of 500
real CIFAR-10 images at the same steps (`results/score_cifar_resnet56_500shots_50steps.csv`);
it writes the CSV and copies the 500-image grid to ``<out>_grid.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

from cost_study import spearman

REPO = Path(__file__).resolve().parents[1]
REAL_SCORES = REPO / "experiments" / "results" / "score_cifar_resnet56_500shots_50steps.csv"
FIELDS = ["tiny_set", "images", "synthesis_s", "teacher_top1_on_targets", "dropped", "latency_cut_predicted",
          "latency_cut_measured", "class_mean", "class_mean_teacher", "top1_all", "spearman_r_vs_real500",
          "same_top5_as_real500"]


def recoverability(path: Path) -> dict[str, float]:
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {r["block"]: float(r["recoverability"]) for r in records if "block" in r}


def row(runs: Path, images: int, seed: int, real: dict[str, float]) -> dict:
    synthesis = json.loads((runs / f"syn{images}.json").read_text())
    run = runs / f"syn{images}" / f"practise_{images}shots_seed{seed}"
    summary = json.loads((run / "summary.json").read_text())
    r = recoverability(run / "recoverability.jsonl")
    blocks = list(real)
    top5 = lambda values: set(sorted(values, key=values.get)[:5])  # noqa: E731  (lowest R: most recoverable)
    return {
        "tiny_set": "synthesised (DeepInversion)", "images": images, "synthesis_s": synthesis["seconds_this_run"],
        "teacher_top1_on_targets": synthesis["teacher_top1_on_targets"],
        "dropped": " ".join(summary["dropped_blocks"]),
        "latency_cut_predicted": round(100 * summary["latency_reduction_predicted"], 2),
        "latency_cut_measured": round(100 * summary["latency_reduction"], 2),
        "class_mean": round(summary["class_mean_student"], 2), "class_mean_teacher": round(summary["class_mean_teacher"], 2),
        "top1_all": round(summary["top1_student"], 2),
        "spearman_r_vs_real500": round(spearman([r[b] for b in blocks], [real[b] for b in blocks]), 3),
        "same_top5_as_real500": len(top5(r) & top5(real)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, required=True, help="the folder of syn*.npz/json and the syn*/ run folders")
    parser.add_argument("--images", default="500,50", help="synthesised set sizes to report (default 500,50)")
    parser.add_argument("--seed", type=int, default=2021, help="the runs' seed (default 2021)")
    parser.add_argument("--real-scores", type=Path, default=REAL_SCORES, help="R on real images (a scores.csv)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    real = {r["block"]: float(r["recoverability"]) for r in csv.DictReader(args.real_scores.open())}
    rows = [row(args.runs, int(n), args.seed, real) for n in args.images.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as file:
        writer = csv.DictWriter(file, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    grid = args.runs / f"syn{rows[0]['images']}.png"
    shutil.copyfile(grid, args.out.with_name(args.out.stem + "_grid.png"))
    print("| images | synthesis | teacher agrees | dropped | cut (predicted / measured) | class mean | Spearman R vs real |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['images']} synthesised | {r['synthesis_s'] / 60:.0f} min | {r['teacher_top1_on_targets']:.1f}% | "
              f"{r['dropped']} | {r['latency_cut_predicted']:.1f}% / {r['latency_cut_measured']:.1f}% | "
              f"{r['class_mean']:.2f} | {r['spearman_r_vs_real500']:.3f} |")
    print(f"wrote {args.out} and {args.out.with_name(args.out.stem + '_grid.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
