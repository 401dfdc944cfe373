"""``practise-jax eval``: accuracy of a model (with optional weights, or a saved compressed model) on an image file."""

from __future__ import annotations

import argparse
import json

import model_zoo
from practise_jax import checkpoint as checkpoint_lib
from practise_jax import protocol
from practise_jax import data as data_lib
from practise_jax.errors import UserError
from practise_jax.cli.options import add_input_arguments, add_weights_arguments, normalization_from_args, resolve_model
from practise_jax.evaluation import evaluate
from practise_jax.pipeline import load_teacher
from practise_jax.protocol import parse_block_list
from practise_jax.surgery import drop
from practise_jax.transforms import views_for


def register(commands) -> None:
    parser = commands.add_parser("eval", help="top-1 and per-class mean accuracy on an image file")
    parser.add_argument("--model", help=f"one of: {', '.join(model_zoo.list_models())} (not needed with --checkpoint)")
    parser.add_argument("--checkpoint", metavar="DIR", help="a compressed model saved by practise-jax (compress --out DIR/student, save_compressed)")
    parser.add_argument("--weights", help="PyTorch/torchvision state dict (.pth/.th), .safetensors, .npz, or a Keras file")
    parser.add_argument("--keras-model", metavar="FILE", help="a keras.applications ResNet or MobileNetV2 saved by Keras "
                                                              "(.keras, .weights.h5 or .h5): sets --model and --weights")
    add_weights_arguments(parser)
    add_input_arguments(parser)
    parser.add_argument("--drop", default="", help="comma-separated blocks to drop, e.g. layer1.1,layer2.3")
    parser.add_argument("--data", required=True, help="npz:PATH with arrays images (uint8 NHWC) and labels")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def _load_model(args: argparse.Namespace):
    """The model to evaluate (eval mode) and what to call it."""
    given = normalization_from_args(args)
    if args.checkpoint:
        if args.weights:
            raise UserError("--checkpoint already holds the weights; pass either --checkpoint DIR or --weights FILE, not both.")
        if args.drop:
            raise UserError("--checkpoint fixes its dropped blocks; leave out --drop (compress again to drop more).")
        spec = checkpoint_lib.read_spec(args.checkpoint)
        if args.model and args.model != spec.model:
            raise UserError(f"the checkpoint '{args.checkpoint}' holds a {spec.model}, not a {args.model}; leave out --model.")
        return load_teacher(spec.model, args.checkpoint, normalization=given), spec.model
    if not (args.model or args.keras_model):
        raise UserError("say which model to evaluate: --model NAME (with --weights FILE), --keras-model FILE, or "
                        "--checkpoint DIR.")
    resolve_model(args)
    model = load_teacher(args.model, args.weights, rename=tuple(args.rename), key=args.weights_key, normalization=given)
    dropped = parse_block_list(args.drop)
    return (drop(model, dropped) if dropped else model), args.model


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}.")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}.")
    model, name = _load_model(args)
    model.eval()
    spec = model.input_spec
    dataset = data_lib.load_source(args.data)
    if args.limit is not None:
        dataset = dataset.take(slice(0, args.limit))
    num_classes = model_zoo.num_classes(model)
    data_lib.check_fits(dataset, spec.size, num_classes, name)
    result = evaluate(model, dataset, views_for(spec, dataset.images.shape[1]), batch_size=args.batch_size, progress=True)
    summary = {
        "model": name, "weights": args.weights, "dropped": list(protocol.dropped(model)), "data": dataset.source,
        **({"checkpoint": str(args.checkpoint)} if args.checkpoint else {}),
        "normalization": spec.describe(),
        "images": result.count, "top1": round(result.top1, 4), "class_mean_top1": round(result.class_mean, 4),
    }
    if args.json:
        print(json.dumps(summary | {"per_class_top1": result.per_class}, indent=2))
    else:
        print(f"{name} on {dataset.source} ({result.count} images): "
              f"top-1 {result.top1:.2f}%  per-class mean {result.class_mean:.2f}%  (input: {spec.describe()})")
    return 0
