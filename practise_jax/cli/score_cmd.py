"""``practise-jax score``: recoverability, tau and score of every candidate block, ranked (`practise_jax.score`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

from practise_jax import api, defaults, latency, protocol, selection
from practise_jax import devices
from practise_jax.cli.options import (add_device_arguments, add_input_arguments, add_latency_arguments, add_model_arguments,
                                      add_weights_arguments, normalization_from_args, resolve_model)
from practise_jax.pipeline import load_inputs


def register(commands) -> None:
    parser = commands.add_parser("score", help="recoverability R, latency reduction tau and R/tau of every candidate block")
    add_model_arguments(parser)
    add_weights_arguments(parser)
    add_input_arguments(parser)
    parser.add_argument("--data", required=True, help="tiny-set source: npz:PATH, folder:PATH, tfds:NAME[:SPLIT], synthetic[:N], ood:SPEC")
    parser.add_argument("--shots", type=int, default=defaults.SHOTS, help=f"images in the tiny set (default {defaults.SHOTS}; -1 = all)")
    parser.add_argument("--seed", type=int, default=defaults.SEED,
                        help=f"seed of the tiny-set draw and of training (default {defaults.SEED})")
    parser.add_argument("--balanced", action="store_true", help="draw the same number of images per class")
    parser.add_argument("--recover-steps", type=int, help=defaults.ADAPTOR_STEPS_HELP)
    parser.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE,
                        help=f"adaptor-training batch (default {defaults.BATCH_SIZE}, as the reference)")
    parser.add_argument("--blocks", help="score only these candidates (comma-separated); default: every droppable block")
    parser.add_argument("--vmap", action="store_true", help="train a stage's candidates as one batched computation")
    add_device_arguments(parser)
    add_latency_arguments(parser)
    select = parser.add_mutually_exclusive_group()
    select.add_argument("--drop", type=int, metavar="K", help="also choose the K best blocks")
    select.add_argument("--speedup", type=float, metavar="F", help="also choose blocks for a latency reduction F (0.22 = 22%%)")
    parser.add_argument("--out", required=True, help="output folder: scores.csv, recoverability.jsonl (resumable), tiny_set.npy")
    parser.set_defaults(run=run)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measured_tau(teacher, shape, blocks, args) -> latency.Profile | dict:
    """tau of every candidate: read from --tau, or measured (by process 0 alone, shared with the others)."""
    if args.tau:
        return latency.read_tau(args.tau)
    profile = None
    if jax.process_index() == 0:
        profile = latency.profile(teacher, shape, [(b,) for b in blocks], time_budget_s=args.latency_budget,
                                  cache=latency.Cache(), log=lambda m: log(f"[latency] {m}"))
        log(f"[latency] {len(blocks)} candidates, {profile.distinct} distinct programs timed")
    if jax.process_count() == 1:
        return profile
    from jax.experimental import multihost_utils

    values = np.asarray([profile.tau((b,)) if profile else 0.0 for b in blocks], np.float64)
    return dict(zip(blocks, map(float, multihost_utils.broadcast_one_to_all(values))))


def run(args: argparse.Namespace) -> int:
    resolve_model(args, weights_required=True)
    joined = devices.initialize_processes(args.coordinator, args.num_processes, args.process_id, timeout_s=args.connect_timeout)
    if args.speedup is not None:
        selection.check_target(args.speedup)
    inputs = load_inputs(args.model, args.weights, args.data, args.shots, args.seed, balanced=args.balanced,
                         rename=tuple(args.rename), key=args.weights_key, normalization=normalization_from_args(args))
    teacher = inputs.teacher
    log(f"input: {teacher.input_spec.describe()}")
    blocks = protocol.check_drop_set(teacher, protocol.parse_block_list(args.blocks)) if args.blocks else protocol.candidates(teacher)
    if args.drop is not None:
        selection.check_count(args.drop, len(blocks))
    out = Path(args.out)
    first = jax.process_index() == 0  # process 0 writes; every process computes its share
    if first:
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "tiny_set.npy", inputs.indices)
    shape = (args.latency_batch_size, teacher.input_spec.size, teacher.input_spec.size, 3)
    tau = measured_tau(teacher, shape, blocks, args)
    started = time.perf_counter()
    steps = defaults.adaptor_steps() if args.recover_steps is None else args.recover_steps
    scores = api.score(teacher, inputs.tiny.images, tau=tau, blocks=blocks, steps=steps, batch_size=args.batch_size,
                       seed=args.seed, views=inputs.views, vmap=args.vmap, devices=args.devices,
                       store=out / "recoverability.jsonl", progress=first)
    recover_seconds = time.perf_counter() - started
    if not first:
        return 0
    if joined:
        log(f"scored over {jax.process_count()} processes, {len(jax.devices())} devices")
    scores.to_csv(out / "scores.csv")
    print(scores)
    device = (tau.setting.device if isinstance(tau, latency.Profile)
              else f"read from {args.tau}" if args.tau else "measured by process 0")
    print(f"\n{len(blocks)} candidates, {steps} adaptor steps each: recoverability took {recover_seconds:.0f} s "
          f"(candidates read back from recoverability.jsonl cost nothing). Latency: batch {args.latency_batch_size}, {device}.")
    print(f"input normalisation: {teacher.input_spec.describe()}")
    if args.drop is not None or args.speedup is not None:
        chosen = api.select(scores, k=args.drop, speedup=args.speedup)
        predicted = sum(scores.tau[b] for b in chosen)
        measured = latency.profile(teacher, shape, [tuple(chosen)], time_budget_s=args.latency_budget,
                                   cache=latency.Cache()).tau(chosen)
        print(f"chosen: {','.join(chosen)}  tau predicted {100 * predicted:.1f}% (sum of single blocks), measured {100 * measured:.1f}%")
    return 0
