"""``practise-jax demo``: compress a built-in default end to end (real CIFAR-10 data when present)."""

from __future__ import annotations

from practise_jax.cli.compress_cmd import print_summary, progress_line
from practise_jax.demo import DemoSteps, run_demo


def register(commands) -> None:
    parser = commands.add_parser("demo", help="compress a built-in default model end to end (a few minutes on 2 cores)")
    parser.add_argument("--out", default="runs/demo", help="where the run goes (default runs/demo; rerun to resume)")
    parser.set_defaults(run=run)


def run(args) -> int:
    summary = run_demo(args.out, DemoSteps(), log=progress_line)
    print_summary(summary, f"{args.out}/run")
    return 0
