"""``practise-jax export``: a saved compressed model in another framework's format (Keras 3)."""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np
from flax import nnx

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
                        help="skip comparing the exported model's logits with the JAX model's on a random batch")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.format not in FORMATS:
        raise UserError(f"unknown export format '{args.format}'; supported: {', '.join(FORMATS)}.")
    out = Path(args.out).expanduser()
    if out.suffix != SUFFIXES[args.format]:
        raise UserError(f"a {args.format} export is written to a '{SUFFIXES[args.format]}' file; got --out {args.out}.")
    if out.is_dir():
        raise UserError(f"--out {args.out} is a directory; name the file to write, e.g. {out / ('model' + SUFFIXES[args.format])}.")
    model, spec = checkpoint_lib.load_compressed(args.checkpoint)
    from model_zoo.convert.keras_export import to_keras  # imports keras (sets KERAS_BACKEND=jax unless set)

    exported = to_keras(model, input_size=spec.input_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    exported.save(out)
    dropped = f"without {', '.join(spec.dropped)}" if spec.dropped else "no blocks dropped"
    line = (f"{spec.model} ({dropped}) -> {out} "
            f"({exported.count_params():,} parameters; input: normalised float32 NHWC "
            f"{spec.input_size}x{spec.input_size}x3, mean {list(spec.mean)} std {list(spec.std)}; output: logits)")
    print(line)
    if args.check:
        images = np.random.default_rng(0).normal(size=(2, spec.input_size, spec.input_size, 3)).astype(np.float32)
        graphdef, state = nnx.split(model)
        ours = np.asarray(jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)[0])(state, images))
        theirs = np.asarray(exported.predict(images, verbose=0))
        print(f"check: max |logit difference| on a random batch = {np.abs(ours - theirs).max():.2e}")
    return 0
