"""``practise-jax eval``: accuracy of a model (with optional weights, or a saved compressed model) on an image file."""

from __future__ import annotations

import argparse
import dataclasses
import json

import model_zoo
from model_zoo.blocks import parse_block_list
from practise_jax import checkpoint as checkpoint_lib
from practise_jax import data as data_lib
from practise_jax.evaluate import evaluate
from practise_jax.transforms import views_for


def register(commands) -> None:
    parser = commands.add_parser("eval", help="top-1 and per-class mean accuracy on an image file")
    parser.add_argument("--model", help=f"one of: {', '.join(model_zoo.list_models())} (not needed with --checkpoint)")
    parser.add_argument("--checkpoint", metavar="DIR", help="a compressed model saved by practise-jax (compress --out DIR/student, save_compressed)")
    parser.add_argument("--weights", help="PyTorch/torchvision state dict (.pth/.th), .safetensors or .npz")
    parser.add_argument("--drop", default="", help="comma-separated blocks to drop, e.g. layer1.1,layer2.3")
    parser.add_argument("--data", required=True, help="npz:PATH with arrays images (uint8 NHWC) and labels")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def _checkpoint_info(args: argparse.Namespace):
    """The spec of ``--checkpoint`` and registry info carrying its input size, classes and normalisation."""
    if args.weights:
        raise model_zoo.UserError("--checkpoint already holds the weights; pass either --checkpoint DIR or --weights FILE, not both.")
    if args.drop:
        raise model_zoo.UserError("--checkpoint fixes its dropped blocks; leave out --drop (compress again to drop more).")
    spec = checkpoint_lib.read_spec(args.checkpoint)
    if args.model and args.model != spec.model:
        raise model_zoo.UserError(f"the checkpoint '{args.checkpoint}' holds a {spec.model}, not a {args.model}; leave out --model.")
    info = dataclasses.replace(model_zoo.get_info(spec.model), input_size=spec.input_size, num_classes=spec.num_classes,
                               mean=spec.mean, std=spec.std)
    return spec, info


def run(args: argparse.Namespace) -> int:
    spec = None
    if args.checkpoint:
        spec, info = _checkpoint_info(args)
        args.model = spec.model
    elif not args.model:
        raise model_zoo.UserError("say which model to evaluate: --model NAME (with --weights FILE), or --checkpoint DIR.")
    else:
        info = model_zoo.get_info(args.model)
    if args.batch_size < 1:
        raise model_zoo.UserError(f"--batch-size must be at least 1, got {args.batch_size}.")
    dataset = data_lib.load_source(args.data)
    if args.limit is not None:
        if args.limit < 1:
            raise model_zoo.UserError(f"--limit must be at least 1, got {args.limit}.")
        dataset = dataset.take(slice(0, args.limit))
    data_lib.check_fits(dataset, info.input_size, info.num_classes, args.model)
    dropped = parse_block_list(args.drop)
    if spec is not None:
        model, spec = checkpoint_lib.load_compressed(args.checkpoint)
        dropped = spec.dropped
    elif args.weights:
        model = model_zoo.load(args.model, args.weights, dropped=dropped)
    else:
        model = model_zoo.create(args.model, dropped=dropped)
    result = evaluate(model, dataset, views_for(info, dataset.images.shape[1]), batch_size=args.batch_size)
    summary = {
        "model": args.model, "weights": args.weights, "dropped": list(dropped), "data": dataset.source,
        **({"checkpoint": str(args.checkpoint)} if spec is not None else {}),
        "images": result.count, "top1": round(result.top1, 4), "class_mean_top1": round(result.class_mean, 4),
    }
    if args.json:
        print(json.dumps(summary | {"per_class_top1": result.per_class}, indent=2))
    else:
        print(f"{args.model} on {dataset.source} ({result.count} images): "
              f"top-1 {result.top1:.2f}%  per-class mean {result.class_mean:.2f}%")
    return 0
