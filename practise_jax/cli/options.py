"""Options several commands share: how weights are read, the input normalisation, how tau is measured."""

from __future__ import annotations

import argparse

from practise_jax import defaults
from practise_jax.errors import UserError
from practise_jax.transforms import NORMALIZATIONS, normalization


def int_list(text: str) -> list[int]:
    """An argparse type for comma-separated integers ("50,500"): a typo is a usage error, not a traceback."""
    try:
        return [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers (e.g. 50,500)") from None


def rgb(text: str) -> tuple[float, float, float]:
    """An argparse type for three comma-separated numbers (R,G,B)."""
    try:
        values = tuple(float(item) for item in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"'{text}' is not three comma-separated numbers R,G,B (e.g. 0.4914,0.4822,0.4465)")
    return values


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The teacher: --model with --weights, or a Keras model (--keras-model) whose family is recognised."""
    import model_zoo

    parser.add_argument("--model", help=f"one of: {', '.join(model_zoo.list_models())}")
    parser.add_argument("--weights", help="teacher weights (.pth/.th/.safetensors/.npz, a Keras .keras/.weights.h5/.h5) "
                                          "or a practise-jax checkpoint folder")
    parser.add_argument("--keras-model", metavar="FILE", help="a keras.applications ResNet or MobileNetV2 saved by Keras "
                                                              "(.keras, .weights.h5 or .h5): sets --model and --weights")


def resolve_model(args: argparse.Namespace, *, weights_required: bool = False) -> None:
    """Fill ``args.model`` and ``args.weights`` from ``--keras-model``; one clear error for what is missing."""
    if args.keras_model:
        if args.weights:
            raise UserError("give the teacher either as --keras-model FILE or as --model NAME --weights FILE, not both.")
        from model_zoo.convert.keras_import import identify, read_keras

        name, _ = identify(read_keras(args.keras_model))
        if args.model and args.model != name:
            raise UserError(f"{args.keras_model} holds a {name}, not a {args.model}; leave out --model.")
        args.model, args.weights = name, args.keras_model
    if not args.model:
        raise UserError("say which model: --model NAME (with --weights FILE), or --keras-model FILE.")
    if weights_required and not args.weights:
        raise UserError(f"give the teacher's weights: --weights FILE (or --keras-model FILE); {args.model} with random "
                        "weights has nothing to score.")


def add_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """--rename and --weights-key: reading a checkpoint of another layout or wrapper."""
    parser.add_argument("--rename", action="append", default=[], metavar="REGEX=REPLACEMENT",
                        help="map the file's keys onto the model's (repeatable, applied in order), e.g. "
                             "'^backbone\\.=' or '\\.bn_([ab])\\.=.norm_\\1.'; see `practise-jax inspect`")
    parser.add_argument("--weights-key", metavar="KEY", help="which state dict of the file to use when it holds several "
                                                             "(e.g. state_dict_ema); the error lists them")


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The input normalisation the weights were trained with (default: the registry's, marked as assumed)."""
    group = parser.add_argument_group("input normalisation (x / 255 - mean) / std, RGB; default: the model's, assumed")
    group.add_argument("--mean", type=rgb, metavar="R,G,B", help="per-channel mean, fractions of 1")
    group.add_argument("--std", type=rgb, metavar="R,G,B", help="per-channel std, fractions of 1")
    group.add_argument("--normalization", choices=sorted(NORMALIZATIONS),
                       help="named constants: " + "; ".join(f"{k} mean {m} std {s}" for k, (m, s) in NORMALIZATIONS.items()))


def normalization_from_args(args: argparse.Namespace):
    """``(mean, std)`` the options give, or None (checked: lengths, positive std, not both kinds)."""
    return normalization(args.mean, args.std, args.normalization)


def add_latency_arguments(parser: argparse.ArgumentParser) -> None:
    """How tau is measured (or read), shared by compress and score."""
    parser.add_argument("--latency-batch-size", type=int, default=defaults.LATENCY_BATCH_SIZE,
                        help=f"batch of latency measurements (default {defaults.LATENCY_BATCH_SIZE})")
    parser.add_argument("--latency-budget", type=float, default=defaults.LATENCY_BUDGET_S,
                        help=f"seconds of timed latency calls per distinct candidate (default {defaults.LATENCY_BUDGET_S:g})")
    parser.add_argument("--tau", metavar="CSV", help="read each block's tau from a `practise-jax profile --out` CSV (or a "
                                                     "scores.csv) instead of measuring it, e.g. one measured on the target device")


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """Devices of this process, and the processes of a multi-host run (``jax.distributed``)."""
    parser.add_argument("--devices", type=int, metavar="N", help="local devices to spread the candidates over (default: all)")
    group = parser.add_argument_group("several processes (hosts): start the same command on each; "
                                      "the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and "
                                      "JAX_PROCESS_ID serve as well")
    group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0, which hosts the coordinator; "
                       "'auto': JAX detects the cluster (TPU slice, SLURM, Open MPI) and needs nothing else")
    group.add_argument("--num-processes", type=int, metavar="P", help="how many processes take part")
    group.add_argument("--process-id", type=int, metavar="I", help="this process's id, 0..P-1")
    group.add_argument("--connect-timeout", type=int, default=120, metavar="S",
                       help="seconds to wait for the other processes (default 120)")
