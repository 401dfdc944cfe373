"""``practise-jax export``: a saved compressed model in another framework's format (Keras 3)."""

from __future__ import annotations

import argparse
from pathlib import Path

from practise_jax.errors import UserError
from practise_jax import checkpoint as checkpoint_lib

FORMATS = ("keras",)
SUFFIXES = {"keras": ".keras"}


def register(commands) -> None:
    parser = commands.add_parser("export", help="export a compressed checkpoint (Keras 3 .keras file)")
    parser.add_argument("--checkpoint", required=True, metavar="DIR", help="a compressed model saved by practise-jax")
    parser.add_argument("--format", default="keras", help=f"output format: {', '.join(FORMATS)} (default keras)")
    parser.add_argument("--out", required=True, help="output file, e.g. model.keras")
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip comparing the exported model's outputs with the JAX model's on a random batch")
    parser.set_defaults(run=run)


def describe_export(model_name: str, dropped, saved: dict) -> str:
    """One line on an exported model (and its check, when made)."""
    blocks = f"without {', '.join(dropped)}" if dropped else "no blocks dropped"
    line = f"{model_name} ({blocks}) -> {saved['path']} ({saved['parameters']:,} parameters; {saved['io']})"
    if "max_difference" in saved:
        line += f"\ncheck: max |output difference| on a random batch = {saved['max_difference']:.2e}"
    return line


def run(args: argparse.Namespace) -> int:
    if args.format not in FORMATS:
        raise UserError(f"unknown export format '{args.format}'; supported: {', '.join(FORMATS)}.")
    out = Path(args.out).expanduser()
    if out.suffix != SUFFIXES[args.format]:
        raise UserError(f"a {args.format} export is written to a '{SUFFIXES[args.format]}' file; got --out {args.out}.")
    if out.is_dir():
        raise UserError(f"--out {args.out} is a directory; name the file to write, e.g. {out / ('model' + SUFFIXES[args.format])}.")
    model, spec = checkpoint_lib.load_compressed(args.checkpoint)
    from model_zoo.convert.keras_export import save_keras  # imports keras (KERAS_BACKEND=jax unless set)

    saved = save_keras(model, out, input_size=spec.input_size, mean=spec.mean, std=spec.std, check=args.check)
    print(describe_export(spec.model, spec.dropped, saved))
    return 0
