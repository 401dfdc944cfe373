"""The phases of a compression run, one function each; each returns what its phase file keeps (JSON).

    latency -> recoverability -> selection -> student -> finetune -> evaluation -> final_latency -> keras_export

Every phase reads what it needs from a `Context` (the settings, the inputs,
the run folder and the results of earlier phases) and calls the in-memory
API; `practise_jax.pipeline.compress` runs them through the run folder, so a
finished phase is read back instead of being computed again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from practise_jax import (checkpoint, depth_criteria, devices, filter_pruning, latency, progressive, protocol,
                          recoverability, selection, surgery)
from practise_jax.errors import UserError
from practise_jax.evaluation import evaluate
from practise_jax.finetuning import finetune
from practise_jax.pipeline.config import CompressConfig
from practise_jax.pipeline.inputs import Inputs
from practise_jax.store import ResultsStore

PHASES = ("latency", "recoverability", "selection", "student", "finetune", "evaluation", "final_latency", "keras_export")


@dataclasses.dataclass
class Context:
    config: CompressConfig
    inputs: Inputs
    dir: Path
    progress: bool = True
    log: Callable[[str], None] = print
    results: dict = dataclasses.field(default_factory=dict)  # phase name -> its result

    @property
    def batch_shape(self) -> tuple[int, int, int, int]:
        size = self.inputs.views.input_size
        return (self.config.latency_batch_size, size, size, 3)

    @property
    def latency_cache(self) -> latency.Cache:
        return latency.Cache()

    def profile(self, candidates) -> latency.Profile:
        return latency.profile(self.inputs.teacher, self.batch_shape, candidates, time_budget_s=self.config.latency_budget,
                               cpu_threads=self.config.latency_threads, cache=self.latency_cache,
                               log=lambda m: self.log(f"  [latency] {m}"))


def latency_phase(ctx: Context) -> dict:
    """tau of every candidate, measured here (identical blocks timed once) or read from ``tau_from``."""
    config, teacher = ctx.config, ctx.inputs.teacher
    if not config.needs_tau:
        return {"tau": {}}
    candidates = protocol.candidates(teacher)
    if config.tau_from:
        tau = latency.read_tau(config.tau_from)
        missing = [b for b in candidates if b not in tau]
        if missing:
            raise UserError(f"'{config.tau_from}' has no tau for {', '.join(missing)}; profile every candidate of "
                            f"{config.model} (practise-jax profile --model {config.model} --out FILE).")
        return {"tau": {b: tau[b] for b in candidates}, "from": config.tau_from}
    singles = ctx.profile([(b,) for b in candidates])
    return {"tau": singles.tau(), "teacher_ms": 1e3 * singles.teacher.latency.median, "distinct": singles.distinct}


def recoverability_phase(ctx: Context) -> dict:
    """R of every candidate (practise only), kept candidate by candidate in a results store."""
    config, inputs = ctx.config, ctx.inputs
    recover = config.recover_config()
    settings = recoverability.scoring_settings(inputs.teacher, inputs.tiny.images, inputs.views, recover)
    if config.scores_from:
        path = Path(config.scores_from)
        store = ResultsStore.open_existing(path / "recoverability.jsonl" if path.is_dir() else path, settings)
        missing = [b for b in protocol.candidates(inputs.teacher) if b not in store]
        if missing:
            raise UserError(f"'{store.path}' lacks candidates {', '.join(missing)}; finish that score run first.")
    else:
        store = ResultsStore(ctx.dir / "recoverability.jsonl", settings)
    records = recoverability.score_candidates(inputs.teacher, protocol.candidates(inputs.teacher), inputs.tiny.images,
                                              inputs.views, recover, store, progress=ctx.progress, vmap=config.vmap,
                                              spread=devices.spread(config.devices, batch=min(recover.batch_size, len(inputs.tiny.images))))
    return {"records": records, "from": str(store.path)}


def scores_of(ctx: Context) -> selection.Scores | None:
    records = ctx.results.get("recoverability", {}).get("records")
    if not records:
        return None
    return selection.Scores.rank({r["block"]: r["recoverability"] for r in records}, ctx.results["latency"]["tau"],
                                 {r["block"]: r["raw_distance"] for r in records})


def selection_phase(ctx: Context) -> dict:
    """The blocks to drop by the chosen method and amount (forward order), or the filters to keep."""
    config, teacher = ctx.config, ctx.inputs.teacher
    candidates = protocol.candidates(teacher)
    taus = ctx.results["latency"]["tau"]
    if config.method == "filter":
        keep, tau = filter_pruning.keep_for_speedup(config.speedup, lambda k: filter_pruning.measure(
            teacher, k, ctx.batch_shape, time_budget_s=config.latency_budget, cpu_threads=config.latency_threads,
            cache=ctx.latency_cache).tau)
        return {"blocks": [], "keep": keep, "tau_search": tau}
    extra = {}  # what the criterion found, kept with the selection
    if config.blocks:
        chosen, ranking = list(config.blocks), list(config.blocks)
    elif config.method in ("practise", "influence"):
        scores = scores_of(ctx) if config.method == "practise" else _influence_scores(ctx)
        extra = {"criterion": {s.block: s.recoverability for s in scores}}
        chosen = selection.top_k(scores, config.drop) if config.drop is not None else selection.for_speedup(scores, config.speedup)
        ranking = scores.blocks
    elif config.method == "progressive":
        inputs, recover = ctx.inputs, config.recover_config()
        chosen, history, rest = progressive.progressive_selection(
            teacher, inputs.tiny.images, inputs.views, taus, scores_of(ctx), speedup=config.speedup, rounds=config.rounds,
            finetune_steps=config.round_finetune_steps, score_steps=recover.steps, batch_size=recover.batch_size,
            seed=config.seed, log=lambda m: ctx.log(f"  [selection] {m}"))
        ranking, extra = chosen + rest, {"rounds": history}
    else:  # an order to take blocks in: greedy's, forward (first-k) or seeded (random)
        if config.method == "greedy":
            order = _greedy(ctx)
            extra, ranking = {"criterion": {b: v for b, v in order if v == v}}, [b for b, _ in order]
        else:
            ranking = _order(config, candidates)
        chosen = ranking[:config.drop] if config.drop is not None else selection.in_order(ranking, taus, config.speedup)
    result = {"blocks": [b for b in candidates if b in chosen]} | extra
    if not config.fits_measured_target:
        return result
    fitted = selection.fit_measured(chosen, ranking, taus, lambda blocks: ctx.profile([blocks]).tau(blocks),
                                    config.speedup, tolerance=config.target_tolerance)
    for blocks, cut in fitted.trail:
        ctx.log(f"  [selection] {len(blocks)} blocks measure {100 * cut:.1f}% (target {100 * config.speedup:.1f}%)")
    return result | {"blocks": [b for b in candidates if b in fitted.blocks], "measured": fitted.measured,
                     "first_choice": result["blocks"],
                     "trail": [{"blocks": list(blocks), "tau": cut} for blocks, cut in fitted.trail]}


def _influence_scores(ctx: Context) -> selection.Scores:
    """Block influence over the tiny set, divided by tau like R (`practise_jax.depth_criteria`)."""
    inputs = ctx.inputs
    influence = depth_criteria.block_influence(inputs.teacher, inputs.tiny.images, inputs.views)
    return selection.Scores.rank(influence, ctx.results["latency"]["tau"])


def _greedy(ctx: Context) -> list[tuple[str, float]]:
    """The greedy mimic-loss order, far enough past the target to leave blocks to add (or K blocks)."""
    config, inputs = ctx.config, ctx.inputs
    until = 1.0 if config.speedup is None else min(1.0, config.speedup + 0.1)
    order = depth_criteria.greedy_order(inputs.teacher, inputs.tiny.images, inputs.views, ctx.results["latency"]["tau"],
                                        until=until, count=config.drop)
    return order  # blocks not reached (NaN loss) follow in forward order


def _order(config: CompressConfig, candidates: list[str]) -> list[str]:
    """The order first-k and random take blocks in: forward, or a seeded permutation."""
    if config.method != "random":
        return list(candidates)
    return [candidates[i] for i in np.random.RandomState(config.seed).permutation(len(candidates))]


def student_phase(ctx: Context) -> dict:
    """The finetune start: the plain student, the student with recovered adaptors folded in, or the filter-pruned one."""
    config, inputs = ctx.config, ctx.inputs
    selected = ctx.results["selection"]
    figures = {}
    if config.init == "folded":
        student, figures = recoverability.recovered_student(inputs.teacher, selected["blocks"], inputs.tiny.images,
                                                            inputs.views, config.recover_config(), progress=ctx.progress)
    elif "keep" in selected:
        student = filter_pruning.filter_prune(inputs.teacher, selected["keep"])
    else:
        student = surgery.drop(inputs.teacher, selected["blocks"])
    checkpoint.save_compressed(ctx.dir / "finetune_start", student)
    return {"init": config.init, "adaptors": figures}


def _accuracy(model, data, views) -> dict:
    result = evaluate(model, data, views)
    return {"top1": result.top1, "class_mean": result.class_mean}


def finetune_phase(ctx: Context) -> dict:
    """Finetune the start on the tiny set (resumable), evaluating as it goes; save the student."""
    config, inputs = ctx.config, ctx.inputs
    student, _ = checkpoint.load_compressed(ctx.dir / "finetune_start")
    monitor = None
    if inputs.eval_set is not None:
        def monitor(model):
            return _accuracy(model, inputs.eval_set, inputs.eval_views)
    ft = config.finetune_config()
    trained, history = finetune(student, inputs.teacher, inputs.tiny.images, inputs.tiny.labels, ft, inputs.views.train,
                                evaluate=monitor, state_path=ctx.dir / "finetune_state.npz", progress=ctx.progress,
                                spread=devices.spread_locally(config.devices, batch=min(ft.batch_size, len(inputs.tiny.images))))
    checkpoint.save_compressed(ctx.dir / "student", trained, extra={
        "dropped": ctx.results["selection"]["blocks"], "method": config.method, "finetune": config.finetune})
    return {"history": history, "lr": ft.learning_rate}


def evaluation_phase(ctx: Context) -> dict:
    inputs = ctx.inputs
    if inputs.eval_set is None:
        return {}
    student, _ = checkpoint.load_compressed(ctx.dir / "student")
    return {"teacher": _accuracy(inputs.teacher, inputs.eval_set, inputs.eval_views),
            "student": _accuracy(student, inputs.eval_set, inputs.eval_views),
            "images": len(inputs.eval_set), "source": inputs.eval_set.source}


def final_latency_phase(ctx: Context) -> dict:
    """The student's measured latency against the teacher's (the chosen set as one drop set, or the narrowed model)."""
    config, selected, taus = ctx.config, ctx.results["selection"], ctx.results["latency"]["tau"]
    if "keep" in selected:
        student = filter_pruning.measure(ctx.inputs.teacher, selected["keep"], ctx.batch_shape,
                                         time_budget_s=config.latency_budget, cpu_threads=config.latency_threads,
                                         cache=ctx.latency_cache)
        predicted = selected["tau_search"]
        setting = latency.make_setting(config.model, batch_size=ctx.batch_shape[0], image_size=ctx.batch_shape[1],
                                       cpu_threads=config.latency_threads)
    else:
        chosen = selected["blocks"]
        measured = ctx.profile([tuple(chosen)])
        setting, student = measured.setting, measured.get(chosen)
        predicted = sum(taus[b] for b in chosen) if taus else None
    return {"teacher_ms": 1e3 * student.teacher_latency.median, "student_ms": 1e3 * student.latency.median,
            "tau": student.tau, "tau_predicted": predicted, "device": setting.device, "batch_size": setting.batch_size,
            "dtype": setting.dtype, "jax_version": setting.jax_version}


def keras_export_phase(ctx: Context) -> dict:
    """A teacher read from Keras gets its student back as Keras: ``student.keras``, the kept blocks' Keras names."""
    from model_zoo.convert.keras_export import save_keras  # imports keras (KERAS_BACKEND=jax unless set)

    student, spec = checkpoint.load_compressed(ctx.dir / "student")
    return save_keras(student, ctx.dir / "student.keras", input_size=spec.input_size, mean=spec.mean, std=spec.std)


RUNNERS = {"latency": latency_phase, "recoverability": recoverability_phase, "selection": selection_phase,
           "student": student_phase, "finetune": finetune_phase, "evaluation": evaluation_phase,
           "final_latency": final_latency_phase, "keras_export": keras_export_phase}
