"""``practise-jax inspect``: what a weight file holds, and how its keys meet a model's."""

from __future__ import annotations

import argparse

from flax import nnx

import model_zoo
from model_zoo.convert.load import best_fit, match_keys, rename_keys
from model_zoo.convert.state_dict import read_checkpoint
from practise_jax.cli.options import add_weights_arguments

SHOWN = 12  # mismatches listed per kind


def register(commands) -> None:
    parser = commands.add_parser("inspect", help="list a weight file's tensors; with --model, how its keys fit the model")
    parser.add_argument("--weights", required=True, help="a PyTorch file (.pth/.pt/.th/...), .safetensors or .npz")
    parser.add_argument("--model", help=f"compare with this model's keys: one of {', '.join(model_zoo.list_models())}")
    add_weights_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="do not list every tensor")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    checkpoint = read_checkpoint(args.weights, key=args.weights_key)
    tensors = rename_keys(checkpoint.tensors, args.rename) if args.rename else checkpoint.tensors
    print(f"{args.weights}: {len(tensors)} tensors, state dict found at "
          f"{repr(checkpoint.key) if checkpoint.key else 'the top level'}")
    for note in checkpoint.notes:
        print(f"  note: {note}")
    if not args.quiet:
        width = max(len(k) for k in tensors)
        for key, value in tensors.items():
            print(f"  {key:<{width}}  {str(tuple(value.shape)):<18} {value.dtype}")
    if args.model:
        match = match_keys(nnx.eval_shape(lambda: model_zoo.create(args.model)), tensors)
        print(f"\n{args.model}: {len(match.values)} keys match (name and shape); {len(match.missing)} missing from the file, "
              f"{len(match.unexpected)} in the file unused, {len(match.mismatched)} of another shape")
        for title, items in (("missing", match.missing), ("unused", match.unexpected), ("shape", match.mismatched)):
            for item in items[:SHOWN]:
                print(f"  {title:8s} {item}")
            if len(items) > SHOWN:
                print(f"  {title:8s} ... {len(items) - SHOWN} more")
    ranked = best_fit(tensors)
    name, share = ranked[0]
    print(f"\nbest-fitting registered model: {name} ({100 * share:.0f}% of keys match by name and shape)"
          + ("" if share > 0 else "; no registered model fits: map the keys with --rename, or use your own model"))
    return 0
