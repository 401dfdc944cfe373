"""``practise-jax score``: recoverability, tau and score of every candidate block, ranked."""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

import model_zoo
from model_zoo.blocks import parse_block_list, validate_drop_set
from practise_jax import data as data_lib
from practise_jax import latency, selection, transforms
from practise_jax.recoverability import STEPS_HELP, RecoverConfig, default_steps, score_candidates, scoring_settings
from practise_jax.store import ResultsStore



def register(commands) -> None:
    parser = commands.add_parser("score", help="recoverability R, latency reduction tau and R/tau of every candidate block")
    parser.add_argument("--model", required=True, help=f"one of: {', '.join(model_zoo.list_models())}")
    parser.add_argument("--weights", required=True, help="teacher weights: PyTorch state dict (.pth/.th), .safetensors or .npz")
    parser.add_argument("--data", required=True, help="tiny-set source, npz:PATH (arrays images, labels)")
    parser.add_argument("--shots", type=int, default=500, help="images in the tiny set (default 500; -1 = all)")
    parser.add_argument("--seed", type=int, default=2021, help="seed of the tiny-set draw and of training (default 2021)")
    parser.add_argument("--recover-steps", type=int, help=STEPS_HELP)
    parser.add_argument("--batch-size", type=int, default=64, help="adaptor-training batch (default 64, as the reference)")
    parser.add_argument("--blocks", help="score only these candidates (comma-separated); default: every droppable block")
    parser.add_argument("--latency-batch-size", type=int, default=64, help="batch of the latency measurement (default 64)")
    parser.add_argument("--latency-budget", type=float, default=latency.DEFAULT_TIME_BUDGET_S, help="seconds of timed latency calls per candidate "
                        f"(default {latency.DEFAULT_TIME_BUDGET_S:g})")
    select = parser.add_mutually_exclusive_group()
    select.add_argument("--drop", type=int, metavar="K", help="also choose the K best blocks")
    select.add_argument("--speedup", type=float, metavar="F", help="also choose blocks for a latency reduction F (0.22 = 22%%)")
    parser.add_argument("--out", required=True, help="output folder: scores.csv, recoverability.jsonl (resumable), tiny_set.npy")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    info = model_zoo.get_info(args.model)
    blocks = validate_drop_set(parse_block_list(args.blocks), info.blocks, info.droppable, args.model) if args.blocks else info.droppable
    if args.drop is not None:
        selection.check_count(args.drop, len(blocks))
    if args.speedup is not None:
        selection.check_target(args.speedup)
    config = RecoverConfig(steps=default_steps() if args.recover_steps is None else args.recover_steps, batch_size=args.batch_size, seed=args.seed)
    dataset = data_lib.load_source(args.data)
    data_lib.check_fits(dataset, info.input_size, info.num_classes, args.model)
    indices = data_lib.sample_tiny_set(dataset.labels, args.shots, args.seed, info.num_classes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "tiny_set.npy", indices)
    teacher = model_zoo.load(args.model, args.weights)
    store = ResultsStore(out / "recoverability.jsonl",
                         scoring_settings(args.model, args.weights, args.data, args.shots, args.seed, config))
    started = time.perf_counter()
    views = transforms.views_for(info, dataset.images.shape[1])
    records = score_candidates(teacher, blocks, dataset.images[indices], views, config, store)
    recover_seconds = time.perf_counter() - started
    profile = latency.profile(args.model, [(b,) for b in blocks], batch_size=args.latency_batch_size,
                              time_budget_s=args.latency_budget, cache=latency.Cache(),
                              log=lambda m: print(f"[latency] {m}", file=sys.stderr, flush=True))
    taus = {b: profile.tau((b,)) for b in blocks}
    scored = selection.score({r["block"]: r["recoverability"] for r in records}, taus)
    raw = {r["block"]: r["raw_distance"] for r in records}
    write_scores(out / "scores.csv", scored, raw)
    print(format_scores(scored, raw))
    print(f"\n{len(blocks)} candidates, {config.steps} adaptor steps each: recoverability took {recover_seconds:.0f} s "
          f"(candidates read back from {store.path.name} cost nothing). Latency: batch {args.latency_batch_size}, {profile.setting.device}.")
    if args.drop is not None or args.speedup is not None:
        chosen = selection.top_k(scored, args.drop) if args.drop is not None else selection.for_speedup(scored, args.speedup)
        predicted = sum(taus[b] for b in chosen)
        measured = latency.profile(args.model, [tuple(chosen)], batch_size=args.latency_batch_size,
                                   time_budget_s=args.latency_budget, cache=latency.Cache()).tau(chosen)
        print(f"chosen: {','.join(chosen)}  tau predicted {100 * predicted:.1f}% (sum of single blocks), measured {100 * measured:.1f}%")
    return 0


def write_scores(path: Path, scored, raw) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["rank", "block", "recoverability", "raw_distance", "tau", "tau_pct", "score"])
        for s in scored:
            writer.writerow([s.rank, s.block, f"{s.recoverability:.6g}", f"{raw[s.block]:.6g}", f"{s.tau:.6f}", f"{100 * s.tau:.3f}", f"{s.score:.6g}"])


def format_scores(scored, raw) -> str:
    lines = [f"{'rank':>4}  {'block':<12} {'R':>10} {'R no adapt':>10} {'tau %':>7} {'R/tau%':>10}"]
    lines += [f"{s.rank:>4}  {s.block:<12} {s.recoverability:>10.5f} {raw[s.block]:>10.5f} {100 * s.tau:>7.2f} {s.score:>10.5f}" for s in scored]
    return "\n".join(lines)
