"""Finetune recipes at a large cut: what more steps, multi-stage mimic, mimic + KD and BN re-estimation add.

The blocks are fixed: those a finished ``compress`` run (``--from-run``, by
default the 50%-cut PRACTISE run of the large-cuts table) dropped, so every
recipe finetunes the same student from the same tiny set (the run's model,
weights, data, shots and seed). One resumable ``compress --blocks`` run per
recipe under ``--work``; rerun the same command after a kill.

Per recipe: the class mean and top-1 over all of ``--test-data``, the
class mean right after dropping (step 0, with re-estimated BatchNorm where the
recipe re-estimates it), and the class mean after re-estimating the finished
student's BatchNorm statistics from the tiny set ("precise BN" after
finetuning; a diagnostic, not a recipe).

    python experiments/finetune_recipes.py --from-run runs/large_cuts/practise_500shots_seed2021 \
        --work runs/recipes --out experiments/results/finetune_recipes_cifar_resnet56_speedup0.5.csv

Writes ``--out`` and its bar plot ``<out>.png``, rewritten after each recipe.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from practise_jax import batch_norm, checkpoint, jit_cache, xla_cpu
from practise_jax.cli import run_reporting_errors
from practise_jax.data import load_source
from practise_jax.evaluation import evaluate
from practise_jax.latency import write_csv
from practise_jax.pipeline import CompressConfig, compress
from practise_jax.transforms import views_for

REPO = Path(__file__).resolve().parents[1]
RECIPES = {
    "mimic": {},
    "mimic-1000-steps": {"finetune_steps": 1000},
    "mimic-stages": {"mimic_at": ("stages",)},
    "mimic+kd": {"kd_weight": 1.0},
    "mimic+kd-0.1": {"kd_weight": 0.1},
    "mimic+kd-0.01": {"kd_weight": 0.01},
    "bn-reestimate": {"reestimate_bn": True},
    "stages-1000-steps": {"finetune_steps": 1000, "mimic_at": ("stages",)},
    "stages-2000-steps": {"finetune_steps": 2000, "mimic_at": ("stages",)},  # the reference's finetune length
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from-run", default="runs/large_cuts/practise_500shots_seed2021",
                        help="a finished compress run: its dropped blocks, model, weights, data, shots and seed")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--finetune-steps", type=int, default=300, help="steps of the recipes that do not set their own")
    parser.add_argument("--latency-budget", type=float, default=4.0,
                        help="seconds of timed calls for the final latency (the architecture is the run's; its cut is known)")
    parser.add_argument("--work", default="runs/recipes")
    parser.add_argument("--out", default=str(REPO / "experiments/results/finetune_recipes_cifar_resnet56_speedup0.5.csv"))
    args = parser.parse_args(argv)
    args.recipes = [r for r in args.recipes.split(",") if r]
    unknown = set(args.recipes) - set(RECIPES)
    if unknown:
        parser.error(f"unknown recipes {sorted(unknown)}; choose from {', '.join(RECIPES)}")
    return args


def run_recipe(args, source: dict, blocks: list[str], recipe: str) -> dict:
    out = Path(args.work) / recipe
    settings = {"finetune_steps": args.finetune_steps, **RECIPES[recipe]}
    config = CompressConfig(
        model=source["model"], weights=source["weights"], data=source["data"], eval_data=source["eval_data"],
        shots=source["shots"], seed=source["seed"], blocks=tuple(blocks), eval_every=settings["finetune_steps"],
        latency_budget=args.latency_budget, **settings)
    summary = compress(config, out, progress=False, log=lambda m: print(f"  {recipe}: {m}", flush=True))
    start = next(h for h in summary["history"] if h.get("step") == 0 and "class_mean" in h)
    return {"recipe": recipe, "finetune_steps": config.finetune_steps, "mimic_at": "+".join(config.mimic_at),
            "kd_weight": config.kd_weight, "reestimate_bn": config.reestimate_bn,
            "class_mean": summary["class_mean_student"], "top1": summary["top1_student"],
            "class_mean_start": start["class_mean"], "class_mean_precise_bn_after": _precise_bn_after(config, out),
            "class_mean_teacher": summary["class_mean_teacher"], "dropped": " ".join(blocks),
            "seconds_finetune": round(summary["phase_seconds"]["finetune"], 1)}


def _precise_bn_after(config: CompressConfig, out: Path) -> float:
    """The finished student's class mean with BatchNorm statistics re-estimated from the run's tiny set (cached in the run)."""
    cached = out / "precise_bn_after.json"
    if not cached.exists():
        student, _ = checkpoint.load_compressed(out / "student")
        train = load_source(config.data, image_size=student.input_spec.size)
        tiny = train.take(np.load(out / "tiny_set.npy"))
        views = views_for(student.input_spec, tiny.images.shape[1])
        tuned = batch_norm.reestimate(student, tiny.images, views.train, config.batch_size, seed=config.seed)
        test = load_source(config.eval_data, image_size=student.input_spec.size)
        cached.write_text(json.dumps({"class_mean": evaluate(tuned, test, views_for(student.input_spec, test.images.shape[1]),
                                                             progress=False).class_mean}))
    return json.loads(cached.read_text())["class_mean"]


def plot(rows: list[dict], path: Path) -> None:
    """Class mean per recipe: right after dropping, after finetuning, and with precise BN after; teacher dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(rows), 3.6))
    xs = np.arange(len(rows))
    bars = ax.bar(xs, [r["class_mean"] for r in rows], 0.6, label="finetuned")
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.plot(xs, [r["class_mean_precise_bn_after"] for r in rows], "k_", markersize=18, label="+ precise BN after")
    ax.axhline(rows[0]["class_mean_teacher"], color="gray", linestyle="--", label="teacher")
    ax.set_xticks(xs, [r["recipe"] for r in rows], fontsize=7, rotation=15)
    ax.set_ylim(min(r["class_mean"] for r in rows) - 3, rows[0]["class_mean_teacher"] + 1)
    ax.set_ylabel("per-class mean accuracy (%)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    xla_cpu.use_fast_flags()
    jit_cache.use_persistent_cache()
    args = parse_args(argv)
    source_dir = Path(args.from_run)
    source = json.loads((source_dir / "run.json").read_text())
    blocks = json.loads((source_dir / "summary.json").read_text())["dropped_blocks"]
    print(f"blocks of {source_dir}: {' '.join(blocks)}", flush=True)
    rows = []
    for recipe in args.recipes:
        print(f"== {recipe}", flush=True)
        rows.append(run_recipe(args, source, blocks, recipe))
        write_csv(rows, args.out)
        plot(rows, Path(args.out).with_suffix(".png"))
    for row in rows:
        print(f"{row['recipe']:18s} start {row['class_mean_start']:.2f}  finetuned {row['class_mean']:.2f}  "
              f"precise BN after {row['class_mean_precise_bn_after']:.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, "finetune_recipes"))
