"""Is tau additive? Measured tau of 2-4 block drop sets vs the sum of their single-block taus.

PRACTISE scores single blocks and then drops several; the latency it expects
to save is the sum of their taus. This measures each set and each of its
blocks in one interleaved run (same teacher, same conditions) and compares.
FLOP reductions are exactly additive for these networks; latency need not be.

Commands that produced experiments/results/latency_additivity_<model>.csv on
the shared 2-core CPU (process CPU-time clock, 10 rounds, because wall-clock
figures there swing with the other jobs; see experiments/README.md):

    python experiments/latency_additivity.py --model cifar_resnet56 --batch-size 64 --clock cpu --repeats 10 --no-cache
    python experiments/latency_additivity.py --model resnet34 --batch-size 8 --image-size 224 --clock cpu --repeats 10 --no-cache

Options mirror `practise-jax profile` (--dtype, --repeats, --time-budget,
--clock, --platform); --sets "a,b;c,d,e" replaces the built-in sets.
tau columns in the CSV are fractions; the printed table is in percent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flax import nnx

import model_zoo
from practise_jax import defaults, latency
from practise_jax.protocol import parse_block_list
from practise_jax.cli import run_reporting_errors

RESULTS = Path(__file__).resolve().parent / "results"

SETS = {
    "resnet34": [
        "layer1.1,layer1.2",  # the paper's first step: 16.3 % on a TITAN Xp at batch 64
        "layer1.1,layer1.2,layer2.1",  # the paper: 22.1 %
        "layer3.1,layer3.2,layer3.3",
        "layer2.3,layer3.5,layer4.1,layer4.2",
    ],
    "cifar_resnet56": [
        "layer1.1,layer1.2",
        "layer2.1,layer2.2,layer2.3",
        "layer1.5,layer2.5,layer3.5",
        "layer3.1,layer3.2,layer3.3,layer3.4",
    ],
}


def sets_for(model: str, text: str | None) -> list[tuple[str, ...]]:
    if text:
        return [parse_block_list(item) for item in text.split(";") if item.strip()]
    if model not in SETS:
        raise SystemExit(f"no built-in sets for {model}; pass --sets 'a,b;c,d,e'")
    return [parse_block_list(item) for item in SETS[model]]


def run(model: str, sets: list[tuple[str, ...]], *, batch_size: int, image_size: int | None = None, log=None,
        **options) -> tuple[latency.Profile, list[dict]]:
    """Profile the blocks of ``sets`` alone and the sets, in one interleaved run; return the additivity rows."""
    singles: list[tuple[str, ...]] = []
    for drop in sets:
        for block in drop:
            if (block,) not in singles:
                singles.append((block,))
    size = image_size or model_zoo.get_info(model).input_size
    abstract = nnx.eval_shape(lambda: model_zoo.create(model))  # shapes are all a latency needs
    result = latency.profile(abstract, (batch_size, size, size, 3), singles + list(sets), log=log, **options)
    return result, latency.additivity(result)


def format_rows(rows: list[dict]) -> str:
    width = max(len(r["drop"]) for r in rows)
    lines = [f"{'drop set':<{width}}  {'measured tau % (round IQR)':>20}  {'sum singles %':>13}  {'diff pp':>8}  "
             f"{'FLOP cut %':>10}  {'sum FLOP cuts %':>15}"]
    for r in rows:
        iqr = 100 * (r["tau_round_q75"] - r["tau_round_q25"])
        lines.append(
            f"{r['drop']:<{width}}  {100 * r['tau_measured']:12.2f} ({iqr:5.2f})  {100 * r['tau_predicted']:13.2f}  "
            f"{100 * r['difference']:8.2f}  {100 * r['flops_tau']:10.2f}  {100 * r['flops_tau_predicted']:15.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--dtype", default="float32", choices=sorted(latency.DTYPES))
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--time-budget", type=float, default=defaults.LATENCY_BUDGET_S)
    parser.add_argument("--clock", default="wall", choices=sorted(latency.CLOCKS))
    parser.add_argument("--platform")
    parser.add_argument("--cpu-threads", type=int, default=defaults.LATENCY_CPU_THREADS,
                        help="CPU: cores of the pinned timing process (0: this process, all threads)")
    parser.add_argument("--sets", help="drop sets separated by ';', blocks by ','")
    parser.add_argument("--no-cache", action="store_true", help="remeasure (recommended: singles and sets then share one run)")
    parser.add_argument("--out", help="CSV path (default experiments/results/latency_additivity_<model>.csv)")
    args = parser.parse_args(argv)

    result, rows = run(
        args.model, sets_for(args.model, args.sets), batch_size=args.batch_size, image_size=args.image_size,
        dtype=args.dtype, repeats=args.repeats, time_budget_s=args.time_budget, clock=args.clock,
        cpu_threads=args.cpu_threads, device=latency.pick_device(args.platform), cache=latency.Cache(), reuse=not args.no_cache,
        log=lambda message: print(f"[additivity] {message}", file=sys.stderr, flush=True),
    )
    print(latency.format_table(result))
    print()
    print(format_rows(rows))
    out = Path(args.out) if args.out else RESULTS / f"latency_additivity_{args.model}.csv"
    latency.write_csv(rows, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, "latency_additivity"))
