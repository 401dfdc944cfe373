"""Cost study: how many adaptor steps does the recoverability ranking need?

Scores every candidate of a CIFAR ResNet with each step count, records the
wall time of each, and compares each ranking (by R, and by R / tau) with the
ranking at the largest step count (Spearman rank correlation, and whether the
k best blocks agree). Results per step count are kept in resumable stores
under ``--work``, so a killed study continues.

    python experiments/cost_study.py --model cifar_resnet56 --shots 500 --steps 25,50,100,200 \
        --out experiments/results/cost_study_cifar_resnet56.csv

``--reuse 100=runs/score56/recoverability.jsonl`` takes one step count's
records from a finished ``practise-jax score`` run of the same model, shots,
seed and steps instead of recomputing them (marked in the CSV).

Reads the real checkpoint and CIFAR-10 training images from $PRACTISE_DATA
(default ../shared/data).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

import model_zoo
from practise_jax import defaults, jit_cache, latency, xla_cpu
from practise_jax.cli import int_list, run_reporting_errors
from practise_jax.latency import write_csv
from practise_jax.pipeline import load_inputs
from practise_jax.recoverability import RecoverConfig, score_candidates, scoring_settings
from practise_jax.selection import Scores
from practise_jax.store import ResultsStore

REPO = Path(__file__).resolve().parents[1]


def average_ranks(values) -> np.ndarray:
    """Ranks 0..n-1 of ``values``, tied values sharing the mean of their ranks."""
    values = np.asarray(values, dtype=float)
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation of two equally long sequences (Pearson of the average ranks)."""
    return float(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])


def store_name(model: str, shots: int, seed: int, steps: int, vmap: bool = False) -> str:
    return f"{model}_{shots}shots_seed{seed}_{steps}steps{'_vmap' if vmap else ''}.jsonl"


def read_score_run(path: str, settings: dict, blocks) -> list[dict]:
    """The records of a finished score run, which must have the study's teacher, tiny set and settings."""
    store = ResultsStore.open_existing(path, settings)
    missing = [b for b in blocks if b not in store]
    if missing:
        raise SystemExit(f"{path} lacks candidates {', '.join(missing)}")
    return [store.get(b) for b in blocks]


def main(argv=None) -> int:
    xla_cpu.use_fast_flags()  # as the practise-jax command does; PRACTISE_XLA_DEFAULTS=0 for XLA's own
    jit_cache.use_persistent_cache()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cifar_resnet56")
    parser.add_argument("--shots", type=int, default=500)
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument("--steps", type=int_list, default="25,50,100,200")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--k", type=int, default=5, help="compare the k best blocks of each ranking")
    parser.add_argument("--vmap", action="store_true")
    parser.add_argument("--latency-budget", type=float, default=defaults.LATENCY_BUDGET_S,
                        help="seconds of timed calls per candidate for tau (picks the cached profile to reuse)")
    parser.add_argument("--reuse", action="append", default=[], metavar="STEPS=JSONL",
                        help="records of a finished 'practise-jax score' run for that step count")
    parser.add_argument("--work", default="runs/cost_study")
    parser.add_argument("--out", default=str(REPO / "experiments/results/cost_study_cifar_resnet56.csv"))
    args = parser.parse_args(argv)
    data_dir = Path(os.environ.get("PRACTISE_DATA", REPO.parent / "shared" / "data"))
    info = model_zoo.get_info(args.model)
    weights = data_dir / "cifar10_resnets" / info.weights[0].filename
    data = f"npz:{data_dir / 'cifar10' / 'cifar10_train_exact.npz'}"
    inputs = load_inputs(args.model, str(weights), data, args.shots, args.seed)  # as compress and score load them
    teacher, tiny, views = inputs.teacher, inputs.tiny, inputs.views
    reused = dict(item.split("=", 1) for item in args.reuse)

    results = {}
    for steps in sorted(args.steps):
        config = RecoverConfig(steps=steps, batch_size=args.batch_size, seed=args.seed)
        # keyed as 'practise-jax score' keys its store, so compress --scores-from can reuse it
        settings = scoring_settings(teacher, tiny.images, views, config)
        if str(steps) in reused:
            records = read_score_run(reused[str(steps)], settings, info.droppable)
            results[steps] = {"records": records, "train_s": sum(r["train_seconds"] for r in records),
                              "reused": reused[str(steps)]}
            continue
        store = ResultsStore(Path(args.work) / store_name(args.model, args.shots, args.seed, steps, args.vmap), settings)
        started = time.perf_counter()
        records = score_candidates(teacher, info.droppable, tiny.images, views, config, store, vmap=args.vmap)
        elapsed = time.perf_counter() - started
        results[steps] = {"records": records, "this_session_s": elapsed,
                          "train_s": sum(r["train_seconds"] for r in records), "reused": ""}
        print(f"{steps:5d} steps: {results[steps]['train_s']:.0f} s of adaptor training for {len(records)} candidates", flush=True)

    profile = latency.profile(teacher, (64, info.input_size, info.input_size, 3), time_budget_s=args.latency_budget,
                              cache=latency.Cache())
    taus = profile.tau()

    for result in results.values():  # compare candidate by candidate, in architecture order
        result["records"] = sorted(result["records"], key=lambda r: info.droppable.index(r["block"]))
    reference = max(results)
    ref_r = [r["recoverability"] for r in results[reference]["records"]]
    ref_s = Scores.rank({r["block"]: r["recoverability"] for r in results[reference]["records"]}, taus)
    ref_top = {s.block for s in ref_s[:args.k]}
    rows = []
    for steps, result in results.items():
        rs = [r["recoverability"] for r in result["records"]]
        scored = Scores.rank({r["block"]: r["recoverability"] for r in result["records"]}, taus)
        order = {s.block: s.rank for s in scored}
        rows.append({
            "model": args.model, "shots": args.shots, "steps": steps, "candidates": len(rs),
            "adaptor_train_s": round(result["train_s"], 1),
            "spearman_R_vs_max": round(spearman(rs, ref_r), 4),
            "spearman_score_vs_max": round(spearman([order[b] for b in info.droppable], [{s.block: s.rank for s in ref_s}[b] for b in info.droppable]), 4),
            f"top{args.k}_overlap_vs_max": len({s.block for s in scored[:args.k]} & ref_top),
            "top_blocks": " ".join(s.block for s in scored[:args.k]),
            "reference_steps": reference, "device": profile.setting.device, "reused_from": result["reused"],
        })
    write_csv(rows, args.out)
    for row in rows:
        print(row)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, "cost_study"))
