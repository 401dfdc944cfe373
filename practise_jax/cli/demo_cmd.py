"""``practise-jax demo``: the whole method on a built-in default (lands with the compress pipeline)."""

from __future__ import annotations


def register(commands) -> None:
    parser = commands.add_parser("demo", help="compress a built-in default model end to end")
    parser.set_defaults(run=run)


def run(args) -> int:
    print("practise-jax demo: not yet available; the end-to-end compress pipeline lands in a later release.")
    print("Try now: practise-jax eval --model cifar_resnet56 --weights ../shared/data/cifar10_resnets/resnet56-4bfd9763.th "
          "--data npz:../shared/data/cifar10/cifar10_test_exact.npz --limit 1017")
    return 0
