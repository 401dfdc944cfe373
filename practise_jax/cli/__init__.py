"""The ``practise-jax`` command: one module per subcommand, registered here.

A `UserError` ends the command with one line naming the cause and the fix
(exit status 2); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from practise_jax.errors import UserError
from practise_jax import jit_cache, xla_cpu
from practise_jax.cli import (compress_cmd, demo_cmd, eval_cmd, export_cmd, inspect_cmd, profile_cmd, score_cmd,
                              synthesize_cmd)
from practise_jax.cli.options import int_list  # noqa: F401  (the experiment scripts use it)

SUBCOMMANDS = (compress_cmd, score_cmd, profile_cmd, eval_cmd, export_cmd, inspect_cmd, synthesize_cmd, demo_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="practise-jax", description="Make a pretrained CNN faster with a tiny set of images (PRACTISE).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    xla_cpu.use_fast_flags()  # before anything starts JAX's backends
    args = build_parser().parse_args(argv)
    jit_cache.use_persistent_cache()
    return run_reporting_errors(lambda: args.run(args), f"practise-jax {args.command}")


def run_reporting_errors(run, name: str) -> int:
    """Exit status of ``run()``: a `UserError` ends in one line naming cause and fix, Ctrl-C in a resume hint.

    The command's subcommands and the experiment scripts share it, so none shows a traceback for a user's mistake.
    """
    try:
        return run() or 0
    except UserError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted; finished work is kept, rerun the same command to resume.", file=sys.stderr)
        return 130

