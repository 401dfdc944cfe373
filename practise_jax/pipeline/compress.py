"""``compress``: the whole method as a resumable run in a folder, ending with a checkpoint, a summary and a report.

Every phase (`practise_jax.pipeline.phases`) writes ``DIR/phases/<name>.json``
when it finishes, the recoverability phase a JSON line per candidate and the
finetune phase its whole state every few steps, so rerunning the same command
after a kill continues where it stopped and recomputes nothing finished.
``DIR/run.json`` holds the settings; a folder holding a run of other
settings is refused unless ``overwrite`` is set.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from practise_jax import protocol, selection
from practise_jax.pipeline.config import CompressConfig
from practise_jax.pipeline.inputs import load_inputs
from practise_jax.pipeline.phases import PHASES, RUNNERS, Context, scores_of
from practise_jax.pipeline.run import Run


def compress(config: CompressConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True,
             log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the whole compression; returns the summary also written to ``DIR/summary.json``."""
    config.check()
    run = Run(out, config, overwrite, log)
    inputs = load_inputs(config.model, config.weights, config.data, config.shots, config.seed, balanced=config.balanced,
                         eval_data=config.eval_data, eval_limit=config.eval_limit, rename=config.rename,
                         key=config.weights_key, normalization=config.normalization())
    teacher = inputs.teacher
    if config.blocks:
        protocol.check_drop_set(teacher, config.blocks)
    if config.drop is not None:
        selection.check_count(config.drop, len(protocol.candidates(teacher)))
    np.save(run.dir / "tiny_set.npy", inputs.indices)
    ctx = Context(config, inputs, run.dir, progress, log)
    for name in PHASES:
        if (name == "recoverability" and not config.needs_scores) or (name == "keras_export" and not config.keras_teacher):
            continue
        ctx.results[name] = run.phase(name, lambda: RUNNERS[name](ctx))
        if name == "selection":
            selected = ctx.results[name]
            log(f"keeping {100 * selected['keep']:.1f}% of every block's inner filters" if "keep" in selected
                else f"dropping {', '.join(selected['blocks'])}")
    summary = summarise(ctx, run)
    (run.dir / "summary.json").write_text(json.dumps(summary, indent=1))
    from practise_jax.report import write_report  # matplotlib only when a report is written

    write_report(run.dir, summary)
    return summary


def summarise(ctx: Context, run: Run) -> dict:
    config, results = ctx.config, ctx.results
    scores = scores_of(ctx)
    taus = results["latency"]["tau"]
    accuracy, speed, tuned = results["evaluation"], results["final_latency"], results["finetune"]
    spec = ctx.inputs.teacher.input_spec
    return {
        "model": config.model, "weights": config.weights, "method": config.method, "finetune": config.finetune,
        "finetune_start": results["student"]["init"], "shots": config.shots, "seed": config.seed, "data": config.data,
        "eval_data": config.eval_data, "dropped_blocks": list(results["selection"]["blocks"]),
        "filter_keep": results["selection"].get("keep"),
        "normalization": spec.describe(),
        "scores": [dataclasses.asdict(s) for s in scores] if scores else [{"block": b, "tau": t} for b, t in taus.items()],
        "tau_from": config.tau_from,
        "latency_ms_teacher": speed["teacher_ms"], "latency_ms_student": speed["student_ms"],
        "latency_reduction": speed["tau"], "latency_reduction_predicted": speed["tau_predicted"],
        "top1_teacher": accuracy.get("teacher", {}).get("top1"), "top1_student": accuracy.get("student", {}).get("top1"),
        "top1_dropped": next((h["top1"] for h in tuned["history"] if h.get("step") == 0 and "top1" in h), None),
        "class_mean_teacher": accuracy.get("teacher", {}).get("class_mean"),
        "class_mean_student": accuracy.get("student", {}).get("class_mean"),
        "eval_images": accuracy.get("images"), "device": speed["device"], "latency_batch_size": speed["batch_size"],
        "jax_version": jax.__version__, "recover_steps": config.adaptor_steps, "finetune_steps": config.finetune_steps,
        "finetune_lr": tuned["lr"],
        "finetune_recipe": {"mimic_at": list(config.mimic_at), "kd_weight": config.kd_weight, "reestimate_bn": config.reestimate_bn},
        "history": [h for h in tuned["history"] if "top1" in h or "loss" in h],
        "keras_export": results.get("keras_export"),
        "phase_seconds": run.seconds(PHASES),
    }
