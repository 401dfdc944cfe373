"""``practise-jax profile``: latency, tau and XLA cost of the teacher and of each candidate drop set.

Without ``--drop`` every single droppable block is a candidate. Each
``--drop`` adds one drop set (repeat it for several); its blocks are also
profiled alone (``--singles drop``, the default then) so the table shows the
sum of single-block taus beside the measured tau of the set.
"""

from __future__ import annotations

import argparse
import sys

from flax import nnx

import model_zoo
from practise_jax import defaults, latency, protocol


def register(commands) -> None:
    parser = commands.add_parser(
        "profile", help="latency and tau of every candidate block (and drop sets), with XLA FLOPs; CSV for device comparisons",
        description="Time the teacher and each pruned candidate interleaved (A B A B ...), report tau = "
                    "(lat teacher - lat pruned) / lat teacher, and XLA's FLOPs and bytes per call.",
    )
    parser.add_argument("--model", required=True, help=f"one of: {', '.join(model_zoo.list_models())}")
    parser.add_argument("--batch-size", type=int, default=64, help="images per call (default 64, as the reference)")
    parser.add_argument("--image-size", type=int, help="input height and width in px (default: the model's native size)")
    parser.add_argument("--dtype", default="float32", choices=sorted(latency.DTYPES), help="compute and weight dtype (default float32)")
    parser.add_argument("--drop", action="append", default=[], metavar="BLOCKS",
                        help="a drop set to profile, e.g. layer1.1,layer2.3; repeat for several sets")
    parser.add_argument("--singles", choices=("all", "drop", "none"),
                        help="single-block candidates: every droppable block (default without --drop), "
                             "the blocks named in --drop (default with --drop), or none")
    parser.add_argument("--repeats", type=int, help="rounds of interleaved calls (default: as many as fit --time-budget, at least "
                                                    f"{latency.MIN_ROUNDS})")
    parser.add_argument("--time-budget", type=float, default=defaults.LATENCY_BUDGET_S,
                        help="seconds of timed calls per distinct candidate when --repeats is not given "
                             f"(default {defaults.LATENCY_BUDGET_S:g})")
    parser.add_argument("--warmup", type=int, default=latency.DEFAULT_WARMUP,
                        help=f"untimed calls per model after compiling (default {latency.DEFAULT_WARMUP})")
    parser.add_argument("--clock", choices=sorted(latency.CLOCKS), default="wall",
                        help="wall: latency (default). cpu: CPU time of this process, steadier on a CPU shared with "
                             "other jobs, but work rather than latency")
    parser.add_argument("--cpu-threads", type=int, default=defaults.LATENCY_CPU_THREADS,
                        help="on a CPU: time in a child process pinned to this many cores, XLA threads to match "
                             f"(default {defaults.LATENCY_CPU_THREADS}: steadiest); 0: in this process with all threads")
    parser.add_argument("--all-candidates", action="store_true",
                        help="time every candidate on its own, even where identical blocks compile to one program "
                             "(slower; shows the noise between identical blocks)")
    parser.add_argument("--platform", help="cpu, gpu or tpu (default: JAX's default backend)")
    parser.add_argument("--cache-dir", help=f"where results are kept (default {latency.default_cache_dir()}; $PRACTISE_CACHE moves it)")
    parser.add_argument("--no-cache", action="store_true", help="remeasure everything (the new figures replace the cached ones)")
    parser.add_argument("--out", help="write tidy CSV rows here (tau columns are fractions, tau_pct is percent)")
    parser.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(run=run)


def candidates_from_args(model: str, drop_args: list[str], singles: str | None) -> list[tuple[str, ...]]:
    """The single blocks and drop sets the options ask for, singles first."""
    info = model_zoo.get_info(model)
    sets = [protocol.parse_block_list(text) for text in drop_args]
    for drop in sets:
        if not drop:
            raise model_zoo.UserError("--drop needs at least one block, e.g. --drop layer1.1,layer2.3.")
    singles = singles or ("drop" if sets else "all")
    if singles == "all":
        single_blocks = list(info.droppable)
    elif singles == "drop":
        named = {b for drop in sets for b in drop}
        single_blocks = [b for b in info.blocks if b in named] + sorted(named - set(info.blocks))
    else:
        single_blocks = []
    candidates = [(b,) for b in single_blocks] + [d for d in sets if len(d) > 1 or d not in [(b,) for b in single_blocks]]
    if not candidates:
        raise model_zoo.UserError("nothing to profile: --singles none needs at least one --drop set.")
    return candidates


def run(args: argparse.Namespace) -> int:
    info = model_zoo.get_info(args.model)
    candidates = candidates_from_args(args.model, args.drop, args.singles)
    device = latency.pick_device(args.platform)
    log = None if args.quiet else (lambda message: print(f"[profile] {message}", file=sys.stderr, flush=True))
    model = nnx.eval_shape(lambda: model_zoo.create(args.model))  # shapes are all a latency needs
    size = info.input_size if args.image_size is None else args.image_size
    if args.batch_size < 1:
        raise model_zoo.UserError(f"batch size must be at least 1, got {args.batch_size}.")
    result = latency.profile(
        model, (args.batch_size, size, size, 3), candidates, dtype=args.dtype, repeats=args.repeats,
        time_budget_s=args.time_budget, warmup=args.warmup, device=device, cache=latency.Cache(args.cache_dir),
        reuse=not args.no_cache, log=log, clock=args.clock, cpu_threads=args.cpu_threads, distinct=not args.all_candidates,
    )
    print(latency.format_table(result))
    if args.out:
        rows = latency.rows(result)
        latency.write_csv(rows, args.out, append=args.append)
        print(f"wrote {len(rows)} rows to {args.out}")
    return 0
