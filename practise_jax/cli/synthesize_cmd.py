"""``practise-jax synthesize``: a data-free tiny set, images inverted from the teacher's BatchNorm statistics."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from practise_jax.cli.options import (add_input_arguments, add_model_arguments, add_weights_arguments,
                                      normalization_from_args, resolve_model)
from practise_jax.errors import UserError
from practise_jax.pipeline import load_teacher
from practise_jax.protocol import parse_block_list


def register(commands) -> None:
    parser = commands.add_parser("synthesize", help="synthesise a tiny set from the teacher alone (DeepInversion)")
    add_model_arguments(parser)
    add_weights_arguments(parser)
    add_input_arguments(parser)
    parser.add_argument("--images", type=int, required=True, metavar="N", help="how many images to make")
    parser.add_argument("--steps", type=int, help="optimisation steps per batch (default 2000)")
    parser.add_argument("--batch-size", type=int, help="images optimised together (default 256; 64 above 32 px)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default 0.1; 0.25 above 32 px)")
    parser.add_argument("--bn-weight", type=float, help="weight of the BatchNorm statistics term (default 10; 0.01 above "
                                                        "32 px)")
    parser.add_argument("--first-bn-weight", type=float, help="extra factor on the first BatchNorm (default 10)")
    parser.add_argument("--tv-l2", type=float, help="weight of the total-variation (L2) prior (default 1e-3; 1e-4 above "
                                                    "32 px)")
    parser.add_argument("--adi", type=float, help="weight of Adaptive DeepInversion's disagreement with a student "
                                                  "(default 0: off); the student is the teacher without --student-drop")
    parser.add_argument("--student-drop", default="", metavar="BLOCKS", help="blocks the ADI student lacks, e.g. "
                                                                             "layer1.1,layer1.2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, metavar="FILE.npz", help="images (uint8 NHWC) and labels, the layout "
                                                                         "`compress --data npz:FILE` reads; a grid "
                                                                         "FILE.png and a summary FILE.json beside it")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import practise_jax as pj
    from practise_jax import report, surgery

    out = Path(args.out).expanduser()
    if out.suffix != ".npz":
        raise UserError(f"--out must name a .npz file (e.g. synthetic.npz); got {args.out}.")
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; choose another --out, or pass --overwrite to replace it.")
    if args.images < 1:
        raise UserError(f"--images must be at least 1, got {args.images}.")
    resolve_model(args)
    parts = out.with_name(out.name + ".parts")  # finished batches, so a killed run resumes
    teacher = load_teacher(args.model, args.weights, rename=tuple(args.rename), key=args.weights_key,
                           normalization=normalization_from_args(args))
    dropped = parse_block_list(args.student_drop)
    if dropped and not args.adi:
        raise UserError("--student-drop builds the student of the ADI term; give --adi WEIGHT too (e.g. 0.2).")
    student = surgery.drop(teacher, dropped) if args.adi else None
    if args.adi and not dropped:
        raise UserError("the ADI term needs a student that differs from the teacher: give --student-drop BLOCKS.")
    print(f"synthesising {args.images} images from {args.model} (input: {teacher.input_spec.describe()}); "
          f"finished batches are kept in {parts}", flush=True)
    started = time.perf_counter()
    tiny = pj.synthesize(teacher, args.images, steps=args.steps, batch_size=args.batch_size, lr=args.lr, bn=args.bn_weight,
                         first_bn=args.first_bn_weight, tv_l2=args.tv_l2, adi=args.adi, student=student, seed=args.seed,
                         store=parts, progress=True)
    seconds = time.perf_counter() - started
    agree = pj.evaluate(teacher, tiny.images, tiny.labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    draft = out.with_name(f".{out.name}.{os.getpid()}.draft.npz")
    np.savez(draft, images=tiny.images, labels=tiny.labels)
    os.replace(draft, out)
    grid = report.image_grid(tiny.images, tiny.labels, out.with_suffix(".png"))
    shutil.rmtree(parts, ignore_errors=True)
    summary = {"images": len(tiny), "file": str(out), "grid": str(grid), "seconds_this_run": round(seconds, 1),
               "teacher_top1_on_targets": round(agree.top1, 2)}
    print(json.dumps(summary))
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out}, {grid} and {out.with_suffix('.json')}; the teacher gives its target class to {agree.top1:.1f}% of them. "
          f"Compress with: practise-jax compress --data npz:{out} ...", flush=True)
    return 0
