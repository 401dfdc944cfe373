"""The main table: block-dropping methods on cifar_resnet56 at one latency cut, per tiny-set size and seed.

Every row is one resumable ``compress`` run under ``--work`` (rerun the same
command after a kill: finished runs are read back, an unfinished one resumes):

* ``bp``: the first droppable blocks until the latency target, cross-entropy finetune (the paper's BP baseline);
* ``first-k``: the same blocks, mimic finetune;
* ``random``: blocks in a seeded random order until the target, mimic finetune;
* ``practise``: recoverability / tau selection, mimic finetune;
* ``practise-folded``: the same selection, the trained adaptors folded into the convs as the finetune start
  (reuses the ``practise`` run's scores, so it must come after it);
* ``progressive``: PRACTISE in 3 rounds, a 100-step mimic finetune and re-scoring between them, mimic finetune;
* ``influence``: block influence (1 - cos of a block's input and output over the tiny set) per tau, mimic finetune;
* ``greedy``: greedy removal by the least rise of the pre-GAP mimic loss per tau (no adaptors), mimic finetune;
* ``filter``: L1-norm pruning of every block's inner filters to the same measured latency cut, mimic finetune.

``--scores DIR`` reuses recoverability scores that `cost_study.py --work DIR`
computed with the same model, data, shots, seed and steps.

Accuracy: per-class mean over all images of ``--test-data`` (the 4,599 exact
CIFAR-10 test images are class-imbalanced) and top-1 on its first
``--prefix`` images (the uniform 1,017-image prefix). Latency: each run's
measured reduction (paired, interleaved, batch 64 on this machine).

Reduced CPU grid (the one in experiments/README.md):

    python experiments/main_table.py --shots 50,500 --seeds 2021,2022 --speedup 0.2 \
        --recover-steps 50 --finetune-steps 300 --scores runs/cost_study --work runs/main_table \
        --out experiments/results/main_table_cifar_resnet56.csv

Writes ``--out`` (one line per run), ``<out>_summary.csv`` (mean and
standard deviation over seeds per row and tiny-set size) and its plot
``<out>_summary.png``, rewritten after each run so a partial grid is readable.
Lines already in ``--out`` for runs this command does not make (another seed,
size or row) are kept, so parts of a grid run separately add up in one table;
the ``device`` column says where each ran. Commands may run side by side
with one ``--out`` (one per core, ``taskset -c 0`` and ``-c 1``): each merges
its finished runs into the file under a lock. Real data from ``$PRACTISE_DATA``
(default ../shared/data).
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import os
import statistics
import sys
from pathlib import Path

from cost_study import store_name
from practise_jax import checkpoint, jit_cache, xla_cpu
from practise_jax.cli import int_list, run_reporting_errors
from practise_jax.data import load_source
from practise_jax.evaluation import evaluate
from practise_jax.latency import write_csv
from practise_jax.pipeline import CompressConfig, compress, load_teacher
from practise_jax.transforms import views_for

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PRACTISE_DATA", REPO.parent / "shared" / "data"))
ROWS = {
    "bp": dict(method="first-k", finetune="ce"),
    "first-k": dict(method="first-k", finetune="mimic"),
    "random": dict(method="random", finetune="mimic"),
    "practise": dict(method="practise", finetune="mimic"),
    "practise-folded": dict(method="practise", finetune="mimic", init="folded"),
    "progressive": dict(method="progressive", finetune="mimic"),
    "influence": dict(method="influence", finetune="mimic"),
    "greedy": dict(method="greedy", finetune="mimic"),
    "filter": dict(method="filter", finetune="mimic"),
}
METRICS = ("class_mean", "top1_prefix", "latency_reduction", "n_dropped")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cifar_resnet56")
    parser.add_argument("--weights", default=str(DATA / "cifar10_resnets" / "resnet56-4bfd9763.th"),
                        help="teacher weights, or 'random'")
    parser.add_argument("--train-data", default=f"npz:{DATA / 'cifar10' / 'cifar10_train_exact.npz'}")
    parser.add_argument("--test-data", default=f"npz:{DATA / 'cifar10' / 'cifar10_test_exact.npz'}")
    parser.add_argument("--prefix", type=int, default=1017, help="top-1 on the first N test images")
    parser.add_argument("--shots", type=int_list, default="50,500")
    parser.add_argument("--seeds", type=int_list, default="2021,2022")
    parser.add_argument("--speedup", type=float, default=0.2)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--recover-steps", type=int, default=50)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--latency-budget", type=float, default=24.0, help="seconds of timed calls per candidate")
    parser.add_argument("--latency-batch-size", type=int, default=64)
    parser.add_argument("--tau", help="read single-block tau from this profile CSV (practise-jax profile --out) instead of "
                                      "measuring it, so rows compare on one profile")
    parser.add_argument("--scores", help="folder of cost_study.py score stores to reuse for the practise row")
    parser.add_argument("--work", default="runs/main_table")
    parser.add_argument("--out", default=str(REPO / "experiments/results/main_table_cifar_resnet56.csv"))
    args = parser.parse_args(argv)
    args.rows = args.rows.split(",")
    unknown = set(args.rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    return args


def run_row(args, row: str, shots: int, seed: int) -> dict:
    """One compress run (resumed or read back if done before) and its accuracy on the test prefix."""
    out = Path(args.work) / f"{row}_{shots}shots_seed{seed}"
    settings = ROWS[row]
    scores_from = None
    if settings.get("init") == "folded":
        scores_from = _practise_scores(args, shots, seed) or str(Path(args.work) / f"practise_{shots}shots_seed{seed}")
    elif row == "practise":
        scores_from = _practise_scores(args, shots, seed)
    config = CompressConfig(
        model=args.model, weights=None if args.weights == "random" else args.weights, data=args.train_data,
        eval_data=args.test_data, shots=shots, seed=seed, speedup=args.speedup,
        recover_steps=args.recover_steps, finetune_steps=args.finetune_steps, eval_every=args.finetune_steps,
        latency_budget=args.latency_budget, latency_batch_size=args.latency_batch_size, tau_from=args.tau,
        scores_from=scores_from,
        **settings,
    )
    summary = compress(config, out, progress=False, log=lambda m: print(f"  {out.name}: {m}", flush=True))
    prefix_file = out / "prefix_accuracy.json"
    if not prefix_file.exists():
        student, _ = checkpoint.load_compressed(out / "student")
        spec = _teacher(args).input_spec
        test = load_source(args.test_data, image_size=spec.size)
        prefix = test.take(slice(0, args.prefix))
        views = views_for(spec, prefix.images.shape[1])
        teacher_top1 = evaluate(_teacher(args), prefix, views, progress=False).top1
        prefix_file.write_text(json.dumps({"images": len(prefix), "student": evaluate(student, prefix, views, progress=False).top1,
                                           "teacher": teacher_top1}))
    prefix = json.loads(prefix_file.read_text())
    return {
        "row": row, "shots": shots, "seed": seed, "method": config.method, "finetune": config.finetune,
        "finetune_start": config.init, "dropped": " ".join(summary["dropped_blocks"]),
        "n_dropped": len(summary["dropped_blocks"]),
        "latency_reduction": summary["latency_reduction"], "latency_reduction_predicted": summary["latency_reduction_predicted"],
        "latency_ms_teacher": summary["latency_ms_teacher"], "latency_ms_student": summary["latency_ms_student"],
        "class_mean": summary["class_mean_student"], "class_mean_teacher": summary["class_mean_teacher"],
        "top1_prefix": prefix["student"], "top1_prefix_teacher": prefix["teacher"], "prefix_images": prefix["images"],
        "top1_all": summary["top1_student"], "test_images": summary["eval_images"],
        "recover_steps": config.recover_steps, "finetune_steps": config.finetune_steps,
        "device": summary["device"], "seconds": round(sum(v or 0 for v in summary["phase_seconds"].values()), 1),
    }


def _practise_scores(args, shots: int, seed: int) -> str | None:
    """A finished cost-study store for these settings, if ``--scores`` names a folder holding one."""
    if not args.scores:
        return None
    path = Path(args.scores) / store_name(args.model, shots, seed, args.recover_steps)
    return str(path) if path.exists() else None


_TEACHERS: dict = {}


def _teacher(args):
    if args.weights not in _TEACHERS:
        _TEACHERS[args.weights] = load_teacher(args.model, None if args.weights == "random" else args.weights)
    return _TEACHERS[args.weights]


def earlier_runs(path: Path, planned: set[tuple[str, int, int]]) -> list[dict]:
    """The lines of an earlier ``--out`` whose (row, shots, seed) this command does not run again."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        lines = [{k: _number(v) for k, v in line.items()} for line in csv.DictReader(handle)]
    return [line for line in lines if (line["row"], line["shots"], line["seed"]) not in planned]


def record(path: Path, mine: list[dict]) -> list[dict]:
    """Merge this command's finished runs into ``--out`` and rewrite its summary and plot; returns the table.

    The file is re-read under an exclusive lock each time, so commands run side
    by side (one per core) with the same ``--out`` add up instead of
    overwriting each other's lines.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:  # the table itself is the lock: no file left beside it
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = earlier_runs(path, {(r["row"], r["shots"], r["seed"]) for r in mine}) + mine
        summary_path, summary = path.with_name(path.stem + "_summary.csv"), aggregate(rows)
        write_csv(rows, path)
        write_csv(summary, summary_path)
        plot(summary, summary_path.with_suffix(".png"))
    return rows


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per (row, shots), with the teacher's figures first."""
    if not rows:
        return []
    first = rows[0]
    table = [{"row": "teacher", "shots": "", "seeds": "", "class_mean": first["class_mean_teacher"],
              "top1_prefix": first["top1_prefix_teacher"], "latency_reduction": 0.0, "n_dropped": 0,
              **{f"{metric}_std": "" for metric in METRICS}}]  # every column, as the header comes from this line
    order = list(ROWS)  # rows in a fixed order, whichever command finished first
    for key in sorted(dict.fromkeys((r["row"], r["shots"]) for r in rows),
                      key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[1])):
        group = [r for r in rows if (r["row"], r["shots"]) == key]
        line = {"row": key[0], "shots": key[1], "seeds": len(group)}
        for metric in METRICS:
            values = [float(r[metric]) for r in group]
            line[metric] = statistics.fmean(values)
            line[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else ""
        table.append(line)
    return table


def plot(table: list[dict], path: Path) -> None:
    """Per-class mean accuracy of each row (mean over seeds, std as error bars) per tiny-set size, teacher dashed.

    Each bar is labelled with its accuracy and, below, its measured latency cut.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [t for t in table if t["row"] != "teacher"]
    shots = sorted({t["shots"] for t in rows})
    names = list(dict.fromkeys(t["row"] for t in rows))
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 3.6))
    width = 0.8 / max(1, len(shots))
    for k, n in enumerate(shots):
        found = {t["row"]: t for t in rows if t["shots"] == n}
        xs = [i + k * width for i, name in enumerate(names) if name in found]
        lines = [found[name] for name in names if name in found]
        bars = ax.bar(xs, [t["class_mean"] for t in lines], width, label=f"{n} images")
        spread = [(x, t) for x, t in zip(xs, lines) if t["class_mean_std"]]  # error bars only over several seeds
        if spread:
            ax.errorbar([x for x, _ in spread], [t["class_mean"] for _, t in spread],
                        [t["class_mean_std"] for _, t in spread], fmt="none", ecolor="black", capsize=3)
        ax.bar_label(bars, [f"{t['class_mean']:.1f}\n{100 * t['latency_reduction']:.0f}%" for t in lines],
                     label_type="center", fontsize=7)  # inside the bar: clear of the error bars
    ax.axhline(table[0]["class_mean"], color="gray", linestyle="--", label="teacher")
    ax.set_xticks([i + width * (len(shots) - 1) / 2 for i in range(len(names))], names, fontsize=8)
    low = min(t["class_mean"] for t in table)
    ax.set_ylim(max(0.0, low - 8), 100)  # room for the label inside the lowest bar
    ax.set_ylabel("per-class mean accuracy (%)")
    ax.set_title("bar labels: accuracy, measured latency cut", fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never over a bar
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    xla_cpu.use_fast_flags()  # as the practise-jax command does; PRACTISE_XLA_DEFAULTS=0 for XLA's own
    jit_cache.use_persistent_cache()
    args = parse_args(argv)
    out = Path(args.out)
    planned = {(row, shots, seed) for row in args.rows for shots in args.shots for seed in args.seeds}
    kept = earlier_runs(out, planned)
    if kept:
        print(f"keeping {len(kept)} earlier runs from {out}", flush=True)
    mine, rows = [], kept
    for seed in args.seeds:
        for shots in args.shots:
            for row in args.rows:
                print(f"== {row}, {shots} images, seed {seed}", flush=True)
                mine.append(run_row(args, row, shots, seed))
                rows = record(out, mine)
    for line in aggregate(rows):
        print("  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in line.items()))
    print(f"wrote {out} and {out.with_name(out.stem + '_summary.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, "main_table"))
