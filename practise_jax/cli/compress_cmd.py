"""``practise-jax compress``: the whole method, resumable, ending with a checkpoint and a report."""

from __future__ import annotations

import argparse
import json
import sys

from practise_jax import defaults
from practise_jax.cli.options import (add_input_arguments, add_latency_arguments, add_model_arguments, add_weights_arguments,
                                      normalization_from_args, resolve_model)
from practise_jax.pipeline import INITS, METHODS, CompressConfig, compress
from practise_jax.protocol import parse_block_list


def add_compress_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_weights_arguments(parser)
    add_input_arguments(parser)
    parser.add_argument("--data", required=True, help="tiny-set source: npz:PATH, folder:PATH, tfds:NAME[:SPLIT], synthetic[:N], ood:SPEC")
    parser.add_argument("--eval-data", help="evaluation source (same kinds as --data)")
    parser.add_argument("--eval-limit", type=int, help="evaluate on the first N images of --eval-data only")
    parser.add_argument("--shots", type=int, default=defaults.SHOTS, help=f"tiny-set size (default {defaults.SHOTS}; -1 = all)")
    parser.add_argument("--seed", type=int, default=defaults.SEED,
                        help=f"seed of the tiny-set draw, training and random selection (default {defaults.SEED})")
    parser.add_argument("--balanced", action="store_true", help="draw the same number of images per class")
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument("--drop", type=int, metavar="K", help="drop K blocks")
    amount.add_argument("--speedup", type=float, metavar="F", help="drop blocks until the latency falls by F (0.22 = 22%%)")
    amount.add_argument("--blocks", help="drop exactly these blocks, e.g. layer1.1,layer2.3")
    parser.add_argument("--target-tolerance", type=float, default=100 * defaults.TARGET_TOLERANCE, metavar="PP",
                        help="--speedup is met when the chosen set's measured cut is within PP points of it: blocks are "
                             f"added or removed until it is (default {100 * defaults.TARGET_TOLERANCE:g}; not with --tau)")
    parser.add_argument("--rounds", type=int, default=defaults.PROGRESSIVE_ROUNDS,
                        help=f"--method progressive: drop in N rounds, re-scoring between them (default {defaults.PROGRESSIVE_ROUNDS})")
    parser.add_argument("--round-finetune-steps", type=int, default=defaults.PROGRESSIVE_FINETUNE_STEPS, metavar="S",
                        help="--method progressive: mimic steps after each round, before re-scoring "
                             f"(default {defaults.PROGRESSIVE_FINETUNE_STEPS})")
    parser.add_argument("--predicted-target", action="store_true",
                        help="trust the sum of single-block taus for --speedup; do not measure the chosen set first")
    parser.add_argument("--method", choices=METHODS, default="practise", help="practise (default), progressive (practise in --rounds, re-scoring between), first-k, random, influence (1 - cos of a block's input and output, "
                        "per tau) or greedy (least rise of the mimic loss per tau, re-evaluated after each drop) choose "
                        "blocks to drop; filter keeps the same fraction of every block's inner filters by L1 norm, to a "
                        "--speedup target (CIFAR ResNets)")
    parser.add_argument("--finetune", choices=sorted(defaults.FINETUNE_LR), default="mimic", help="finetune loss (default mimic)")
    parser.add_argument("--init", choices=INITS, default="plain",
                        help="finetune start: the plain pruned student (the reference), or with recovered adaptors folded in")
    parser.add_argument("--recover-steps", type=int, help=defaults.ADAPTOR_STEPS_HELP)
    parser.add_argument("--finetune-steps", type=int, default=defaults.FINETUNE_STEPS,
                        help=f"finetune steps (default {defaults.FINETUNE_STEPS})")
    parser.add_argument("--lr", type=float, help="finetune learning rate (default: " +
                        ", ".join(f"{k} {v:g}" for k, v in defaults.FINETUNE_LR.items()) + ")")
    parser.add_argument("--mimic-at", default="pre_gap", metavar="FEATURES",
                        help="mimic finetune: the features matched, comma-separated (default pre_gap; 'stages': every "
                             "stage's output, e.g. layer1,layer2,pre_gap)")
    parser.add_argument("--kd-weight", type=float, default=0.0, metavar="W",
                        help="mimic finetune: add W x KD on the teacher's logits (temperature 4; default 0)")
    parser.add_argument("--reestimate-bn", action="store_true",
                        help="set the student's BatchNorm statistics from the tiny set before finetuning")
    parser.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE, help=f"training batch (default {defaults.BATCH_SIZE})")
    parser.add_argument("--eval-every", type=int, default=defaults.EVAL_EVERY,
                        help=f"evaluate every N finetune steps (default {defaults.EVAL_EVERY})")
    add_latency_arguments(parser)
    parser.add_argument("--vmap", action="store_true", help="score the candidates of a stage together (pays on GPUs)")
    parser.add_argument("--devices", type=int, metavar="N",
                        help="local devices to spread scoring (candidates) and finetuning (batch) over (default: all)")
    parser.add_argument("--scores-from", metavar="DIR", help="reuse the recoverability of a 'practise-jax score --out DIR' run "
                                                             "with the same model, weights, data, shots, seed and steps")
    parser.add_argument("--out", required=True, help="run folder (resumable: rerun the same command to continue)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run of other settings in --out")


def register(commands) -> None:
    parser = commands.add_parser("compress", help="profile, score, select, finetune, evaluate; checkpoint and report")
    add_compress_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> CompressConfig:
    resolve_model(args)
    mean, std = normalization_from_args(args) or (None, None)
    return CompressConfig(
        model=args.model, weights=args.weights, rename=tuple(args.rename), weights_key=args.weights_key, mean=mean, std=std, data=args.data, eval_data=args.eval_data, eval_limit=args.eval_limit,
        shots=args.shots, seed=args.seed, balanced=args.balanced, method=args.method, drop=args.drop,
        speedup=args.speedup, blocks=parse_block_list(args.blocks), finetune=args.finetune, init=args.init,
        recover_steps=args.recover_steps, finetune_steps=args.finetune_steps, finetune_lr=args.lr,
        mimic_at=tuple(n.strip() for n in args.mimic_at.split(",") if n.strip()), kd_weight=args.kd_weight,
        reestimate_bn=args.reestimate_bn,
        batch_size=args.batch_size, eval_every=args.eval_every, latency_batch_size=args.latency_batch_size,
        latency_budget=args.latency_budget, tau_from=args.tau,
        rounds=args.rounds, round_finetune_steps=args.round_finetune_steps,
        target_tolerance=None if args.predicted_target else args.target_tolerance / 100, devices=args.devices, vmap=args.vmap, scores_from=args.scores_from,
    )


def print_summary(summary: dict, out: str) -> None:
    from practise_jax.report import pruned  # matplotlib: imported once a report exists anyway

    def pct(value):
        return "–" if value is None else f"{value:.2f}%"

    print(f"\n{summary['model']}: {pruned(summary)} ({summary['method']}, {summary['finetune']} finetune)")
    print(f"  top-1        teacher {pct(summary['top1_teacher'])}  student {pct(summary['top1_student'])}  "
          f"(right after dropping, before finetuning: {pct(summary.get('top1_dropped'))})")
    print(f"  class mean   teacher {pct(summary['class_mean_teacher'])}  student {pct(summary['class_mean_student'])}")
    print(f"  latency      teacher {summary['latency_ms_teacher']:.2f} ms  student {summary['latency_ms_student']:.2f} ms  "
          f"(-{100 * summary['latency_reduction']:.1f}%, batch {summary['latency_batch_size']}, {summary['device']})")
    print(f"  input        {summary['normalization']}")
    if summary.get("keras_export"):
        from practise_jax.cli.export_cmd import describe_export

        exported = describe_export(summary["model"], summary["dropped_blocks"], summary["keras_export"])
        print("  keras        " + exported.replace("\n", "\n               "))
    print(f"  report {out}/report.md   checkpoint {out}/student   summary {out}/summary.json")


def progress_line(message: str) -> None:
    """Phase lines go to stderr, so stdout holds only the summary (JSON with --json)."""
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    summary = compress(config_from_args(args), args.out, overwrite=args.overwrite, log=progress_line)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print_summary(summary, args.out)
    return 0
