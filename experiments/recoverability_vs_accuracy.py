"""Does recoverability predict accuracy? Every single-block drop, scored and then finetuned.

For each candidate block B of ``--model`` (PRACTISE_SPEC.md section 4, the
paper's argument for recoverability over "feature distance without recovery"):

* R(B), the raw distance (the same MSE before any adaptor training) and tau(B);
* the accuracy of the student lacking B: straight after the drop, with its
  trained adaptors folded in (no finetune), and after a mimic finetune of
  ``--finetune-steps`` on the tiny set.

It prints and writes the rank correlations (Spearman) of R, R / tau and the raw
distance with each accuracy, per block in ``--out`` and the correlations in
``<out>_summary.csv``, with a scatter plot ``<out>.png``. Resumable: every
finished block is a line in ``--work``'s stores, the finetune saves its state.
To use every core, run one process per core with its own ``--blocks`` and the
same ``--work`` (each pinned with ``taskset``), then once more with all the
blocks: it reads every finished block back and writes the table.

    python experiments/recoverability_vs_accuracy.py --model cifar_resnet20 --shots 500 --seed 2021 \
        --recover-steps 50 --finetune-steps 300 --work runs/r_vs_acc \
        --out experiments/results/recoverability_vs_accuracy_cifar_resnet20.csv

Accuracy: per-class mean over the 4,599 exact CIFAR-10 test images and top-1
on their first 1,017 (``--prefix``). Real data from ``$PRACTISE_DATA``
(default ../shared/data).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

import model_zoo
from cost_study import spearman
from practise_jax import defaults, jit_cache, latency, xla_cpu
from practise_jax.cli import run_reporting_errors
from practise_jax.evaluation import evaluate
from practise_jax.finetuning import FinetuneConfig, finetune
from practise_jax.latency import write_csv
from practise_jax.pipeline import load_inputs
from practise_jax.recoverability import RecoverConfig, recovered_student, score_candidates, scoring_settings
from practise_jax.store import ResultsStore
from practise_jax.surgery import drop

REPO = Path(__file__).resolve().parents[1]
PREDICTORS = ("recoverability", "score", "raw_distance")  # score = R / tau%
OUTCOMES = ("class_mean_dropped", "class_mean_adapted", "class_mean_finetuned", "top1_prefix_finetuned")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = Path(os.environ.get("PRACTISE_DATA", REPO.parent / "shared" / "data"))
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--train-data", default=f"npz:{data / 'cifar10' / 'cifar10_train_exact.npz'}")
    parser.add_argument("--test-data", default=f"npz:{data / 'cifar10' / 'cifar10_test_exact.npz'}")
    parser.add_argument("--data-dir", default=str(data), help="folder holding cifar10_resnets/ (the weights)")
    parser.add_argument("--prefix", type=int, default=1017)
    parser.add_argument("--shots", type=int, default=500)
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument("--recover-steps", type=int, default=50)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--blocks", help="only these candidates (comma-separated; default all)")
    parser.add_argument("--latency-budget", type=float, default=defaults.LATENCY_BUDGET_S)
    parser.add_argument("--work", default="runs/r_vs_acc")
    parser.add_argument("--out", default=str(REPO / "experiments/results/recoverability_vs_accuracy.csv"))
    return parser.parse_args(argv)


def block_outcomes(args, teacher, block, tiny, test, views, config: RecoverConfig, state_path: Path) -> dict:
    """Accuracy of the student lacking ``block``: dropped, adapted (folded adaptors), finetuned."""
    prefix = test.take(slice(0, args.prefix))

    def measure(model, tag):
        return {f"class_mean_{tag}": evaluate(model, test, views, progress=False).class_mean,
                f"top1_prefix_{tag}": evaluate(model, prefix, views, progress=False).top1}

    adapted, _ = recovered_student(teacher, [block], tiny.images, views, config, progress=False)
    student = drop(teacher, [block])
    outcome = {**measure(student, "dropped"), **measure(adapted, "adapted")}
    tuned, _ = finetune(student, teacher, tiny.images, tiny.labels,
                        FinetuneConfig(steps=args.finetune_steps, seed=args.seed, eval_every=args.finetune_steps),
                        views.train, state_path=state_path, progress=False)
    return {**outcome, **measure(tuned, "finetuned")}


def bootstrap_interval(a, b, draws: int = 2000, seed: int = 0, versus=None) -> tuple[float, float]:
    """95% percentile interval of the Spearman of ``a`` and ``b`` over candidates resampled with replacement.

    With ``versus`` (another predictor of ``b``), the interval of Spearman(a, b) - Spearman(versus, b) on the
    same resamples: a paired test of whether ``a`` ranks ``b`` better than ``versus`` does.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    versus = None if versus is None else np.asarray(versus, dtype=float)
    ranked = [c for c in (a, b, versus) if c is not None]
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(draws):
        pick = rng.integers(0, len(a), len(a))
        if all(np.ptp(c[pick]) > 0 for c in ranked):  # a resample of one repeated value has no ranking
            rho = spearman(a[pick], b[pick])
            samples.append(rho if versus is None else rho - spearman(versus[pick], b[pick]))
    if not samples:
        return float("nan"), float("nan")
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def correlations(rows: list[dict]) -> list[dict]:
    """Spearman of each predictor with each outcome (a good predictor is negative: lower R, higher accuracy).

    With a few dozen candidates one swap moves a coefficient a lot, so each comes with a bootstrap interval,
    and each predictor's difference from the distance without recovery (the criterion R is meant to beat)
    with a paired one: an interval below zero says it ranks the outcome better than that distance.
    """
    table = []
    distance = [r["raw_distance"] for r in rows]
    for p in PREDICTORS:
        for o in OUTCOMES:
            a, b = [r[p] for r in rows], [r[o] for r in rows]
            low, high = bootstrap_interval(a, b)
            line = {"predictor": p, "outcome": o, "candidates": len(rows), "spearman": spearman(a, b),
                    "bootstrap_95_low": low, "bootstrap_95_high": high,
                    "minus_distance": None, "minus_distance_95_low": None, "minus_distance_95_high": None}
            if p != "raw_distance":
                low, high = bootstrap_interval(a, b, versus=distance)
                line.update(minus_distance=line["spearman"] - spearman(distance, b),
                            minus_distance_95_low=low, minus_distance_95_high=high)
            table.append(line)
    return table


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, predictor, label in ((axes[0], "recoverability", "R (MSE after adaptor training)"),
                                 (axes[1], "raw_distance", "feature distance without recovery")):
        ax.scatter([r[predictor] for r in rows], [r["class_mean_finetuned"] for r in rows], s=14)
        for r in rows:
            ax.annotate(r["block"].removeprefix("layer"), (r[predictor], r["class_mean_finetuned"]), fontsize=6)
        rho = spearman([r[predictor] for r in rows], [r["class_mean_finetuned"] for r in rows])
        ax.set_xlabel(label)
        ax.set_title(f"Spearman {rho:+.2f}", fontsize=9)
    axes[0].set_ylabel("per-class mean after finetune (%)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    xla_cpu.use_fast_flags()  # as the practise-jax command does; PRACTISE_XLA_DEFAULTS=0 for XLA's own
    jit_cache.use_persistent_cache()
    args = parse_args(argv)
    info = model_zoo.get_info(args.model)
    weights = Path(args.data_dir) / "cifar10_resnets" / info.weights[0].filename
    inputs = load_inputs(args.model, str(weights), args.train_data, args.shots, args.seed, eval_data=args.test_data)
    teacher, tiny, test, views = inputs.teacher, inputs.tiny, inputs.eval_set, inputs.views
    blocks = args.blocks.split(",") if args.blocks else list(info.droppable)
    work = Path(args.work) / f"{args.model}_{args.shots}shots_seed{args.seed}"

    profile = latency.profile(teacher, (64, info.input_size, info.input_size, 3), time_budget_s=args.latency_budget,
                              cache=latency.Cache(), log=lambda m: print(m, flush=True))
    config = RecoverConfig(steps=args.recover_steps, seed=args.seed)
    settings = scoring_settings(teacher, tiny.images, views, config)
    scores = {r["block"]: r for r in score_candidates(teacher, blocks, tiny.images, views, config,
                                                      ResultsStore(work / "recoverability.jsonl", settings))}
    finetuned = ResultsStore(work / "accuracy.jsonl", {**settings, "finetune_steps": args.finetune_steps,
                                                       "test_data": args.test_data, "prefix": args.prefix})
    rows = []
    for block in blocks:
        if block not in finetuned:
            print(f"{block}: finetuning the single drop", flush=True)
            finetuned.put(block, block_outcomes(args, teacher, block, tiny, test, views, config, work / f"{block}.npz"))
        tau = profile.tau((block,))
        record = scores[block]
        rows.append({"model": args.model, "block": block, "recoverability": record["recoverability"],
                     "raw_distance": record["raw_distance"], "tau_pct": 100 * tau,
                     "score": record["recoverability"] / (100 * tau),
                     **{k: v for k, v in finetuned.get(block).items() if k != "key"},
                     "shots": args.shots, "seed": args.seed, "recover_steps": args.recover_steps,
                     "finetune_steps": args.finetune_steps, "device": profile.setting.device})
    write_csv(rows, args.out)
    summary = correlations(rows)
    out = Path(args.out)
    write_csv(summary, out.with_name(out.stem + "_summary.csv"))
    plot(rows, out.with_suffix(".png"), f"{args.model}, single-block drops, {args.shots} images, "
                                         f"{args.finetune_steps} finetune steps")
    print(f"{'block':10s} {'R':>9s} {'raw':>9s} {'tau%':>6s} {'dropped':>8s} {'adapted':>8s} {'finetuned':>9s}")
    for r in sorted(rows, key=lambda r: r["recoverability"]):
        print(f"{r['block']:10s} {r['recoverability']:9.4f} {r['raw_distance']:9.4f} {r['tau_pct']:6.2f} "
              f"{r['class_mean_dropped']:8.2f} {r['class_mean_adapted']:8.2f} {r['class_mean_finetuned']:9.2f}")
    for s in summary:
        against = ("" if s["minus_distance"] is None else
                   f"; minus the distance's {s['minus_distance']:+.3f} ({s['minus_distance_95_low']:+.2f} to "
                   f"{s['minus_distance_95_high']:+.2f})")
        print(f"Spearman({s['predictor']}, {s['outcome']}) = {s['spearman']:+.3f}  "
              f"(bootstrap 95%: {s['bootstrap_95_low']:+.2f} to {s['bootstrap_95_high']:+.2f}{against})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, "recoverability_vs_accuracy"))
