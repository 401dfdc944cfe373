"""The end-to-end compression run, phase by phase, each phase's result kept on disk.

    data -> latency (tau of every candidate) -> recoverability (PRACTISE only)
    -> selection -> student (plain, or with folded recovered adaptors)
    -> finetune -> evaluation -> final latency -> checkpoint, summary, report

Every phase writes ``DIR/phases/<name>.json`` when it finishes, the
recoverability phase a JSON line per candidate and the finetune phase its whole
state every few steps, so rerunning the same command after a kill continues
where it stopped and recomputes nothing finished. ``DIR/run.json`` holds the
settings; a folder holding a run of other settings is refused unless
``overwrite`` is set.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

import model_zoo
from model_zoo.base import ZooModel
from model_zoo.blocks import validate_drop_set
from model_zoo.errors import UserError
from practise_jax import checkpoint, filter_pruning, latency, selection
from practise_jax import data as data_lib
from practise_jax.evaluate import evaluate
from practise_jax.finetune import FinetuneConfig, finetune
from practise_jax.recoverability import RecoverConfig, recovered_student, score_candidates, scoring_settings
from practise_jax.store import ResultsStore, differing_keys
from practise_jax.transforms import views_for

METHODS = ("practise", "first-k", "random", "filter")
PHASES = ("latency", "recoverability", "selection", "student", "finetune", "evaluation", "final_latency")
INITS = ("plain", "folded")


@dataclasses.dataclass(frozen=True)
class CompressConfig:
    model: str
    weights: str | None  # a weight file, a practise-jax checkpoint folder, or None for random weights
    data: str
    eval_data: str | None = None
    eval_limit: int | None = None
    shots: int = 500
    seed: int = 2021
    balanced: bool = False
    method: str = "practise"
    drop: int | None = None
    speedup: float | None = None
    blocks: tuple[str, ...] = ()
    finetune: str = "mimic"
    init: str = "plain"
    recover_steps: int = 2000
    finetune_steps: int = 2000
    finetune_lr: float | None = None
    batch_size: int = 64
    eval_every: int = 500
    latency_batch_size: int = 64
    latency_budget: float = latency.DEFAULT_TIME_BUDGET_S
    latency_threads: int = latency.DEFAULT_CPU_THREADS  # CPU: cores of the pinned timing process (0: this process)
    vmap: bool = False
    scores_from: str | None = None  # recoverability.jsonl (or its folder) of a 'score' run with the same settings

    def check(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown method '{self.method}'; choose one of: {', '.join(METHODS)}.")
        if self.init not in INITS:
            raise UserError(f"unknown finetune start '{self.init}'; choose one of: {', '.join(INITS)}.")
        if sum(x is not None and x != () for x in (self.drop, self.speedup, self.blocks)) != 1:
            raise UserError("say what to drop with exactly one of --drop K, --speedup F or --blocks a,b.")
        if self.speedup is not None:
            selection.check_target(self.speedup)
        if self.method == "filter" and (self.speedup is None or self.init != "plain"):
            raise UserError("--method filter prunes inner filters to a latency target: give --speedup F "
                            "(not --drop or --blocks) and the plain finetune start.")
        FinetuneConfig(method=self.finetune, steps=self.finetune_steps)  # validates
        RecoverConfig(steps=self.recover_steps, batch_size=self.batch_size)


class Run:
    """A run folder: settings, phase results, and the timing of each phase."""

    def __init__(self, out: str | Path, config: CompressConfig, overwrite: bool = False, log: Callable[[str], None] = print):
        self.dir = Path(out)
        self.config = config
        self.log = log
        settings = json.loads(json.dumps(dataclasses.asdict(config)))
        run_file = self.dir / "run.json"
        if run_file.exists():
            saved = json.loads(run_file.read_text())
            changed = differing_keys(saved, settings)
            if changed and not overwrite:
                what = f"of model {saved.get('model')}" if saved.get("model") != config.model else "with other settings"
                raise UserError(f"'{self.dir}' holds a run {what} ({', '.join(changed)} differ); "
                                "use another --out, or --overwrite to replace it.")
            if changed:
                shutil.rmtree(self.dir)
        elif self.dir.exists() and any(self.dir.iterdir()):
            if not overwrite:
                raise UserError(f"'{self.dir}' is not empty and holds no practise-jax run; use another --out, or --overwrite.")
            shutil.rmtree(self.dir)
        (self.dir / "phases").mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps(settings, indent=1))

    def phase(self, name: str, compute: Callable[[], dict]) -> dict:
        """The result of phase ``name``: read back if finished before, else computed, timed and saved."""
        path = self.dir / "phases" / f"{name}.json"
        if path.exists():
            self.log(f"[{name}] done before, read from {path}")
            return json.loads(path.read_text())
        self.log(f"[{name}] ...")
        started = time.perf_counter()
        result = compute()
        result["seconds"] = time.perf_counter() - started
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)
        self.log(f"[{name}] {result['seconds']:.1f} s")
        return result


def load_teacher(model: str, weights: str | None) -> ZooModel:
    """The teacher: from a weight file, from a practise-jax checkpoint folder, or random."""
    if weights is None:
        teacher = model_zoo.create(model)
    elif Path(weights).is_dir():
        teacher, spec = checkpoint.load_compressed(weights)
        if spec.model != model:
            raise UserError(f"the checkpoint '{weights}' holds a {spec.model}, not a {model}; use --model {spec.model}.")
    else:
        teacher = model_zoo.load(model, weights)
    teacher.eval()
    return teacher


def compress(config: CompressConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True,
             log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the whole compression; returns the summary also written to ``DIR/summary.json``."""
    config.check()
    run = Run(out, config, overwrite, log)
    info = model_zoo.get_info(config.model)
    teacher = load_teacher(config.model, config.weights)
    candidates = teacher.droppable
    if config.blocks:
        validate_drop_set(config.blocks, teacher.blocks, teacher.droppable, config.model)
    if config.drop is not None:
        selection.check_count(config.drop, len(candidates))

    tiny, indices = data_lib.load_tiny_set(config.data, config.shots, config.seed, num_classes=info.num_classes,
                                           image_size=info.input_size, balanced=config.balanced)
    data_lib.check_fits(tiny, info.input_size, info.num_classes, config.model, margin=True)
    np.save(run.dir / "tiny_set.npy", indices)
    views = views_for(info, tiny.images.shape[1], out_of_domain=config.data.startswith("ood:"))
    eval_set = _eval_set(config, info)
    eval_views = views_for(info, eval_set.images.shape[1]) if eval_set is not None else None

    def profile(drops):
        return latency.profile(config.model, drops, batch_size=config.latency_batch_size, time_budget_s=config.latency_budget,
                               cpu_threads=config.latency_threads,
                               cache=latency.Cache(), overrides=dict(teacher.overrides) or None,
                               log=lambda m: log(f"  [latency] {m}"))

    def latency_phase():
        if config.method == "filter" or not (config.speedup is not None or (config.method == "practise" and not config.blocks)):
            return {"tau": {}}
        singles = profile([(b,) for b in candidates])
        return {"tau": {b: singles.tau((b,)) for b in candidates}, "teacher_ms": 1e3 * singles.teacher.latency.median}

    taus = run.phase("latency", latency_phase)["tau"]

    recover_config = RecoverConfig(steps=config.recover_steps, batch_size=config.batch_size, seed=config.seed)

    def score_phase():
        settings = scoring_settings(config.model, config.weights, config.data, config.shots, config.seed, recover_config)
        if config.scores_from:
            path = Path(config.scores_from)
            store = ResultsStore.open_existing(path / "recoverability.jsonl" if path.is_dir() else path, settings)
            missing = [b for b in candidates if b not in store]
            if missing:
                raise UserError(f"'{store.path}' lacks candidates {', '.join(missing)}; finish that score run first.")
        else:
            store = ResultsStore(run.dir / "recoverability.jsonl", settings)
        records = score_candidates(teacher, candidates, tiny.images, views, recover_config, store,
                                   progress=progress, vmap=config.vmap)
        return {"records": records, "from": str(store.path)}

    scored = []
    if config.method == "practise" and not config.blocks:
        records = run.phase("recoverability", score_phase)["records"]
        scored = selection.score({r["block"]: r["recoverability"] for r in records}, taus)

    def filter_latency(keep: float, budget: float):
        return filter_pruning.measure(teacher, keep, batch_size=config.latency_batch_size, time_budget_s=budget,
                                      cpu_threads=config.latency_threads, cache=latency.Cache())

    def selection_phase():
        if config.method != "filter":
            return {"blocks": _select(config, candidates, scored, taus)}
        keep, tau = filter_pruning.keep_for_speedup(config.speedup, lambda k: filter_latency(k, config.latency_budget)[1].tau)
        return {"blocks": [], "keep": keep, "tau_search": tau}

    selected = run.phase("selection", selection_phase)
    chosen = selected["blocks"]
    log(f"keeping {100 * selected['keep']:.1f}% of every block's inner filters" if "keep" in selected
        else f"dropping {', '.join(chosen)}")

    student_dir = run.dir / "student"

    def student_phase():
        start = run.dir / "finetune_start"
        figures = {}
        if config.init == "folded":
            student, figures = recovered_student(teacher, chosen, tiny.images, views, recover_config, progress=progress)
        elif "keep" in selected:
            student = filter_pruning.filter_prune(teacher, selected["keep"])
        else:
            student = model_zoo.prune(teacher, chosen)
        checkpoint.save_compressed(start, student, normalization=(info.mean, info.std))
        return {"init": config.init, "adaptors": figures}

    init = run.phase("student", student_phase)

    def finetune_phase():
        student, _ = checkpoint.load_compressed(run.dir / "finetune_start")
        ft_config = FinetuneConfig(method=config.finetune, steps=config.finetune_steps, batch_size=config.batch_size,
                                   lr=config.finetune_lr, eval_every=config.eval_every, seed=config.seed)

        def monitor(model):
            return _accuracy(model, eval_set, eval_views) if eval_set is not None else {}

        trained, history = finetune(student, teacher, tiny.images, tiny.labels, ft_config, views.train,
                                    evaluate=monitor, state_path=run.dir / "finetune_state.npz", progress=progress)
        checkpoint.save_compressed(student_dir, trained, normalization=(info.mean, info.std),
                                   extra={"dropped": list(chosen), "method": config.method, "finetune": config.finetune})
        return {"history": history, "lr": ft_config.learning_rate}

    tuned = run.phase("finetune", finetune_phase)

    def evaluation_phase():
        if eval_set is None:
            return {}
        student, _ = checkpoint.load_compressed(student_dir)
        return {"teacher": _accuracy(teacher, eval_set, eval_views), "student": _accuracy(student, eval_set, eval_views),
                "images": len(eval_set), "source": eval_set.source}

    accuracy = run.phase("evaluation", evaluation_phase)

    def latency_phase():
        if "keep" in selected:
            setting, student = filter_latency(selected["keep"], config.latency_budget)
            teacher_ms, predicted = 1e3 * student.teacher_latency.median, selected["tau_search"]
        else:
            measured = profile([tuple(chosen)])
            setting, student = measured.setting, measured.get(chosen)
            teacher_ms, predicted = 1e3 * measured.teacher.latency.median, sum(taus[b] for b in chosen) if taus else None
        return {"teacher_ms": teacher_ms, "student_ms": 1e3 * student.latency.median,
                "tau": student.tau, "tau_predicted": predicted,
                "device": setting.device, "batch_size": setting.batch_size, "dtype": setting.dtype,
                "jax_version": setting.jax_version}

    speed = run.phase("final_latency", latency_phase)
    summary = _summary(config, run, selected, scored, taus, init, tuned, accuracy, speed)
    (run.dir / "summary.json").write_text(json.dumps(summary, indent=1))
    from practise_jax.report import write_report  # matplotlib only when a report is written

    write_report(run.dir, summary)
    return summary


def _eval_set(config: CompressConfig, info):
    if config.eval_data is None:
        return None
    data = data_lib.load_source(config.eval_data, image_size=info.input_size)
    if config.eval_limit is not None:
        data = data.take(slice(0, config.eval_limit))
    data_lib.check_fits(data, info.input_size, info.num_classes, config.model, margin=True)
    return data


def _accuracy(model, data, views) -> dict:
    result = evaluate(model, data, views, progress=False)
    return {"top1": result.top1, "class_mean": result.class_mean}


def _select(config: CompressConfig, candidates, scored, taus) -> list[str]:
    """The blocks to drop, by the chosen method and amount, in architecture order."""
    if config.blocks:
        return list(config.blocks)
    if config.method == "practise":
        chosen = selection.top_k(scored, config.drop) if config.drop is not None else selection.for_speedup(scored, config.speedup)
    else:
        order = list(candidates)
        if config.method == "random":
            order = [order[i] for i in np.random.RandomState(config.seed).permutation(len(order))]
        chosen = order[:config.drop] if config.drop is not None else selection.in_order(order, taus, config.speedup)
    return [b for b in candidates if b in chosen]  # architecture order, as the student's spec lists them


def _summary(config, run, selected, scored, taus, init, tuned, accuracy, speed) -> dict:
    phases = {name: json.loads(path.read_text()).get("seconds")
              for name in PHASES if (path := run.dir / "phases" / f"{name}.json").exists()}
    history = tuned["history"]
    return {
        "model": config.model, "weights": config.weights, "method": config.method, "finetune": config.finetune,
        "finetune_start": init["init"], "shots": config.shots, "seed": config.seed, "data": config.data,
        "eval_data": config.eval_data, "dropped_blocks": list(selected["blocks"]), "filter_keep": selected.get("keep"),
        "scores": [dataclasses.asdict(s) for s in scored] or [{"block": b, "tau": t} for b, t in taus.items()],
        "latency_ms_teacher": speed["teacher_ms"], "latency_ms_student": speed["student_ms"],
        "latency_reduction": speed["tau"], "latency_reduction_predicted": speed["tau_predicted"],
        "top1_teacher": accuracy.get("teacher", {}).get("top1"), "top1_student": accuracy.get("student", {}).get("top1"),
        "class_mean_teacher": accuracy.get("teacher", {}).get("class_mean"),
        "class_mean_student": accuracy.get("student", {}).get("class_mean"),
        "eval_images": accuracy.get("images"), "device": speed["device"], "latency_batch_size": speed["batch_size"],
        "jax_version": jax.__version__, "recover_steps": config.recover_steps, "finetune_steps": config.finetune_steps,
        "finetune_lr": tuned["lr"], "history": [h for h in history if "top1" in h or "loss" in h],
        "phase_seconds": phases,
    }
