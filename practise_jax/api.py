"""The method as functions over NNX models and arrays in memory; nothing touches the disk unless given a path.

    tau = pj.profile(teacher, images[:64])            # latency saved by dropping each candidate
    scores = pj.score(teacher, images, tau=tau)       # R, tau and R / tau of every candidate, ranked
    blocks = pj.select(scores, speedup=0.2)           # or k=3
    student = pj.drop(teacher, blocks)                # or drop(..., images=images): recovered adaptors folded in
    student = pj.finetune(student, images, teacher=teacher)   # mimic; loss="ce" (labels) or "kd"
    pj.evaluate(student, test_images, test_labels).top1
    tiny = pj.synthesize(teacher, 500)                # no real image at all: a tiny set from BN statistics

Any Flax NNX module that follows the model protocol (`practise_jax.protocol`)
works. ``images`` are uint8 NHWC arrays of the tiny set (normalised with the
model's ``input_spec``, or ``mean``/``std`` given here) or float arrays that
are model inputs already. Every function takes its settings as keywords and
reads its defaults from `practise_jax.defaults`, as the CLI does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from practise_jax import defaults, latency, protocol, recoverability, selection, surgery
from practise_jax import devices as device_list
from practise_jax.data.imageset import ImageSet, validate_labels
from practise_jax.errors import UserError
from practise_jax.evaluation import Accuracy
from practise_jax.evaluation import evaluate as evaluate_set
from practise_jax.finetuning import FinetuneConfig
from practise_jax.finetuning import finetune as finetune_loop
from practise_jax.recoverability import RecoverConfig
from practise_jax.selection import Scores
from practise_jax.store import ResultsStore
from practise_jax.transforms import InputSpec, Views, views_for


def views(model: nnx.Module, images, *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
          out_of_domain: bool = False) -> Views:
    """The train and eval views of ``model`` on ``images``: recipe by input size, normalisation by the model.

    The normalisation is ``mean``/``std`` when given (fractions of 1, RGB),
    else the model's ``input_spec``; float ``images`` are taken as normalised
    model inputs already. The CIFAR recipe (pad-4 crop, flip) serves inputs up
    to 32 pixels, the ImageNet recipe (RandomResizedCrop, flip; eval centre
    crop) larger ones.

    >>> import numpy as np, practise_jax as pj, model_zoo
    >>> net = model_zoo.create("cifar_resnet20", widths=(4, 8, 16))
    >>> pj.views(net, np.zeros((8, 32, 32, 3), np.uint8)).recipe
    'cifar'
    """
    images = _image_array(images)
    own = getattr(model, "input_spec", None)
    if (mean is None) != (std is None):
        raise UserError("give both mean and std (three fractions of 1 each, R, G, B), or neither.")
    size = own.size if own is not None else int(images.shape[1])
    if mean is not None:
        return views_for(InputSpec(size, tuple(mean), tuple(std), "given"), images.shape[1], out_of_domain=out_of_domain)
    if np.issubdtype(images.dtype, np.floating):
        plain = views_for(InputSpec(size, (0.0,) * 3, (1.0,) * 3), images.shape[1], out_of_domain=out_of_domain)
        return Views(plain.recipe, plain.input_size, plain.stored_size, None, None)
    if own is None:
        raise UserError(f"{type(model).__name__} carries no input normalisation (.input_spec) and the images are uint8: "
                        "pass mean=(r, g, b) and std=(r, g, b) (fractions of 1), or float images already normalised.")
    return views_for(own, images.shape[1], out_of_domain=out_of_domain)


def _image_array(images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"images must be an N x H x W x 3 array (NHWC, RGB); got shape {images.shape}.")
    if len(images) == 0:
        raise UserError("no images given; the tiny set needs at least one.")
    return images


def _resolve_views(model, images, given: Views | None, mean, std, out_of_domain: bool = False) -> Views:
    return given if given is not None else views(model, images, mean=mean, std=std, out_of_domain=out_of_domain)


def profile(model: nnx.Module, x, candidates: Iterable[Iterable[str] | str] | None = None, **options) -> latency.Profile:
    """Latency of ``model`` and of each candidate drop set on batches shaped like ``x``; tau per candidate.

    ``x`` is an example batch or its shape ``(N, H, W, C)``. Options are those
    of `practise_jax.latency.profile` (``repeats``, ``time_budget_s``,
    ``dtype``, ``cpu_threads``, ``cache``...). ``result.tau()`` maps each
    single-block candidate to its latency reduction (a fraction).

    >>> import practise_jax as pj, model_zoo
    >>> net = model_zoo.create("cifar_resnet20", widths=(4, 8, 16))
    >>> sorted(pj.profile(net, (2, 16, 16, 3), repeats=1, cpu_threads=0).tau())[:2]
    ['layer1.1', 'layer1.2']
    """
    return latency.profile(model, x, candidates, **options)


def score(teacher: nnx.Module, images, *, tau: latency.Profile | Mapping[str, float] | None = None,
          blocks: Sequence[str] | None = None, steps: int | None = None, batch_size: int = defaults.BATCH_SIZE,
          seed: int = 0, views: Views | None = None, mean=None, std=None, vmap: bool = False,
          devices: int | Sequence | None = None, shard: str = "auto", store: str | os.PathLike | None = None,
          progress: bool = False, latency_options: Mapping | None = None) -> Scores:
    """Recoverability R, latency reduction tau and score R / tau% of every candidate block, ranked best first.

    R: drop the block, put identity 1x1 adaptors on the convs that write and
    read its residual stream, train only them (``steps`` SGD steps, default
    `defaults.adaptor_steps`) for the student's pre-pooling features to mimic
    the teacher's on ``images``, and take the remaining feature MSE. ``tau``:
    a `profile` result or ``{block: fraction}``; None measures it here at batch
    64 (``latency_options`` go to `profile`). ``blocks``: the candidates
    (default: every droppable block). ``devices``: how many local devices (or
    which) to spread each group's candidates over, the batch too where a group
    has fewer candidates than devices (default: all of them; one device trains
    a group in lockstep); ``shard`` says how ("candidates", "batch", or "auto":
    `practise_jax.devices.preferred_shard`); with several processes
    (`practise_jax.devices`) the mesh spans all of theirs. ``store``: a JSON-lines file that keeps each
    finished candidate, so a rerun resumes; it refuses results made from
    another teacher, other images or other settings (process 0 keeps it).

    >>> import numpy as np, practise_jax as pj, model_zoo
    >>> net = model_zoo.create("cifar_resnet20", widths=(4, 8, 16))
    >>> images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    >>> tau = {b: 0.05 for b in net.droppable}
    >>> scores = pj.score(net, images, tau=tau, steps=2, batch_size=8)
    >>> len(scores), scores[0].rank
    (6, 1)
    """
    protocol.check(teacher)
    images = _image_array(images)
    chosen = protocol.check_drop_set(teacher, blocks) if blocks is not None else protocol.candidates(teacher)
    if not chosen:
        raise UserError(f"{type(teacher).__name__} has no droppable block left to score.")
    view = _resolve_views(teacher, images, views, mean, std)
    config = RecoverConfig(steps=defaults.adaptor_steps() if steps is None else steps, batch_size=batch_size, seed=seed)
    settings = recoverability.scoring_settings(teacher, images, view, config)
    device_list.check_same_settings(settings)
    spread = device_list.spread(devices, batch=min(batch_size, len(images)))
    results = None if store is None or jax.process_index() > 0 else ResultsStore(store, settings)
    teacher.eval()
    records = recoverability.score_candidates(teacher, chosen, images, view, config, results, progress=progress, vmap=vmap,
                                              spread=spread, shard=shard)
    if tau is None:
        tau = profile(teacher, (defaults.LATENCY_BATCH_SIZE, view.input_size, view.input_size, 3), [(b,) for b in chosen],
                      **dict(latency_options or {}))
    taus = tau.tau() if isinstance(tau, latency.Profile) else dict(tau)
    return Scores.rank({r["block"]: r["recoverability"] for r in records}, taus,
                       {r["block"]: r["raw_distance"] for r in records})


def select(scores: Sequence[selection.Score], *, k: int | None = None, speedup: float | None = None) -> list[str]:
    """The blocks to drop: the ``k`` best-scoring, or the least-score set whose summed tau reaches ``speedup``.

    Blocks come back in forward order when ``scores`` rank them; with
    ``speedup`` the sum of single-block taus predicts the set's latency cut
    (measure the student to confirm it).

    >>> import practise_jax as pj
    >>> scores = pj.Scores.rank({"a.1": 1.0, "a.2": 2.0, "b.1": 0.5}, {"a.1": 0.1, "a.2": 0.1, "b.1": 0.1})
    >>> pj.select(scores, k=2), pj.select(scores, speedup=0.15)
    (['b.1', 'a.1'], ['b.1', 'a.1'])
    """
    if (k is None) == (speedup is None):
        raise UserError("say how much to drop with exactly one of k=... (blocks) or speedup=... (latency fraction).")
    return selection.top_k(scores, k) if k is not None else selection.for_speedup(scores, speedup)


def fit_latency(teacher: nnx.Module, blocks: Sequence[str], *, speedup: float, x, ranking: Sequence[str] | None = None,
                tau: Mapping[str, float] | None = None, tolerance: float = defaults.TARGET_TOLERANCE,
                **latency_options) -> selection.Fitted:
    """``blocks`` adjusted until ``teacher`` without them is measured ``speedup`` faster, within ``tolerance``.

    Sums of single-block taus mispredict large sets by several points, so
    comparisons at a latency target should hold the *measured* cut equal.
    Blocks are added in ``ranking``'s order (best first: ``scores.blocks``
    for PRACTISE; default forward order, first-k) or removed worst first
    (`practise_jax.selection.fit_measured`); each set is measured on batches
    shaped like ``x`` (options as for `profile`). ``tau``: single-block taus
    (default: ``ranking``'s scores' taus when it is a `Scores`, else measured).
    Returns the set, its measured cut and every set tried.

    >>> import practise_jax as pj, model_zoo
    >>> teacher = model_zoo.create("cifar_resnet20")
    >>> fitted = pj.fit_latency(teacher, ["layer1.1"], speedup=0.3, x=(8, 32, 32, 3), time_budget_s=0.2)
    >>> len(fitted.blocks) >= 1 and len(fitted.trail) >= 1
    True
    """
    if isinstance(ranking, Scores):
        tau = {s.block: s.tau for s in ranking} if tau is None else tau
        ranking = ranking.blocks
    ranking = list(protocol.candidates(teacher) if ranking is None else ranking)
    if tau is None:
        tau = profile(teacher, x, [(b,) for b in ranking], **latency_options).tau()
    return selection.fit_measured(blocks, ranking, tau, lambda chosen: profile(teacher, x, [chosen], **latency_options).tau(chosen),
                                  speedup, tolerance=tolerance)


def drop(teacher: nnx.Module, blocks: Sequence[str], *, images=None, steps: int | None = None,
         batch_size: int = defaults.BATCH_SIZE, seed: int = 0, views: Views | None = None, mean=None, std=None,
         progress: bool = False) -> nnx.Module:
    """The student: ``teacher`` without ``blocks`` (kept blocks keep their weights and addresses).

    With ``images``, identity adaptors are put around the gaps, trained on
    them as for scoring (``steps``), and folded into their convs: a student
    that starts closer to the teacher (the "folded" finetune start).

    >>> import practise_jax as pj, model_zoo
    >>> net = model_zoo.create("cifar_resnet20", widths=(4, 8, 16))
    >>> pj.drop(net, ["layer1.1", "layer3.2"]).layer1[1]
    DroppedBlock()
    """
    blocks = protocol.check_drop_set(teacher, blocks)
    if images is None:
        return surgery.drop(teacher, blocks)
    images = _image_array(images)
    view = _resolve_views(teacher, images, views, mean, std)
    config = RecoverConfig(steps=defaults.adaptor_steps() if steps is None else steps, batch_size=batch_size, seed=seed)
    student, _ = recoverability.recovered_student(teacher, blocks, images, view, config, progress=progress)
    return student


def finetune(student: nnx.Module, images, *, teacher: nnx.Module | None = None, labels=None, loss: str = "mimic",
             steps: int = defaults.FINETUNE_STEPS, lr: float | None = None, batch_size: int = defaults.BATCH_SIZE,
             seed: int = 0, mimic_at: Sequence[str] = ("pre_gap",), kd_weight: float = 0.0, reestimate_bn: bool = False,
             views: Views | None = None, mean=None, std=None,
             evaluate: Callable[[nnx.Module], dict] | None = None, eval_every: int = defaults.EVAL_EVERY,
             devices: int | Sequence | None = None, state_path: str | os.PathLike | None = None,
             progress: bool = False) -> tuple[nnx.Module, list[dict]]:
    """Train ``student`` on the tiny set; return the trained student (a new module, in eval mode) and its history.

    ``loss``: ``"mimic"`` (PRACTISE: the teacher's pre-pooling features, no
    labels; the classifier stays the teacher's), ``"ce"`` (cross-entropy on
    ``labels``; no teacher needed) or ``"kd"`` (the teacher's softened logits).
    ``lr`` defaults to the loss's (mimic/kd 0.02, ce 1e-4); the schedule drops
    it x0.1 at 40% and 80% of ``steps``. Recipes for large cuts: ``mimic_at``
    names the features mimicked (``"stages"``: every stage's output),
    ``kd_weight`` adds KD to the mimic loss, ``reestimate_bn`` sets the
    BatchNorm statistics from ``images`` first. ``evaluate(model) -> dict`` runs every
    ``eval_every`` steps; the history lists the losses and those results.
    ``devices``: how many local devices (or which) to split each batch over,
    data-parallel (default: all of them). ``state_path``: a file to resume a
    killed run from.

    >>> import numpy as np, practise_jax as pj, model_zoo
    >>> teacher = model_zoo.create("cifar_resnet20", widths=(4, 8, 16))
    >>> images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    >>> student, history = pj.finetune(pj.drop(teacher, ["layer1.1"]), images, teacher=teacher, steps=2, batch_size=8)
    >>> history[-2]["step"]
    2
    """
    images = _image_array(images)
    view = _resolve_views(student, images, views, mean, std)
    config = FinetuneConfig(loss=loss, steps=steps, lr=lr, batch_size=batch_size, seed=seed, eval_every=eval_every,
                            mimic_at=(mimic_at,) if isinstance(mimic_at, str) else tuple(mimic_at), kd_weight=kd_weight,
                            reestimate_bn=reestimate_bn)
    labels = None if labels is None else _labels(labels, len(images))
    return finetune_loop(student, teacher, images, labels, config, view.train, evaluate=evaluate,
                         state_path=None if state_path is None else Path(state_path), progress=progress,
                         spread=device_list.spread_locally(devices, batch=min(batch_size, len(images))))


def evaluate(model: nnx.Module, images, labels, *, views: Views | None = None, mean=None, std=None,
             batch_size: int = 256) -> Accuracy:
    """Top-1 and the mean of per-class accuracies (percent) of ``model`` on ``images`` (eval view: normalise, centre crop).

    >>> import numpy as np, practise_jax as pj, model_zoo
    >>> net = model_zoo.create("cifar_resnet20", widths=(4, 8, 16))
    >>> images = np.zeros((4, 32, 32, 3), np.uint8)
    >>> 0 <= pj.evaluate(net, images, [0, 1, 2, 3]).top1 <= 100
    True
    """
    images = _image_array(images)
    view = _resolve_views(model, images, views, mean, std)
    return evaluate_set(model, ImageSet(images, _labels(labels, len(images)), "arrays"), view, batch_size=batch_size)


def synthesize(teacher: nnx.Module, n: int, *, steps: int | None = None, batch_size: int | None = None,
               lr: float | None = None, bn: float | None = None, adi: float | None = None,
               student: nnx.Module | None = None, seed: int = 0, mean=None, std=None, size: int | None = None,
               store: str | os.PathLike | None = None, progress: bool = False, **settings) -> ImageSet:
    """``n`` images synthesised from ``teacher`` alone (DeepInversion), a data-free tiny set; targets as labels.

    The images are optimised so that every BatchNorm's input has the layer's
    running mean and variance and the teacher predicts their target class
    (classes taken in turn, so evenly spread); `practise_jax.synthesis` says
    which published recipe each default follows (CIFAR-sized inputs: 2000
    steps, batches of 256, lr 0.1, BN weight 10). ``adi`` with a ``student``
    adds Adaptive DeepInversion's disagreement term; ``settings`` are the other
    fields of `practise_jax.synthesis.SynthesisConfig` (``tv_l2``, ``jitter``,
    ...). The normalisation and size are the teacher's ``input_spec`` unless
    given. ``store``: a folder that keeps each finished batch, so a killed run
    resumes. Returns uint8 NHWC images and int64 labels (an ``ImageSet``).

    >>> import practise_jax as pj, model_zoo
    >>> net = model_zoo.create("cifar_resnet20", widths=(4, 8, 16))
    >>> tiny = pj.synthesize(net, 6, steps=2, batch_size=4)
    >>> tiny.images.shape, tiny.images.dtype, list(tiny.labels)
    ((6, 32, 32, 3), dtype('uint8'), [0, 1, 2, 3, 4, 5])
    """
    from practise_jax import synthesis

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UserError(f"synthesize needs a positive number of images, got {n!r}.")
    own = getattr(teacher, "input_spec", None)
    if (mean is None) != (std is None):
        raise UserError("give both mean and std (three fractions of 1 each, R, G, B), or neither.")
    size = size or (own.size if own is not None else None)
    if own is None and (mean is None or size is None):
        raise UserError(f"{type(teacher).__name__} carries no input spec (.input_spec): pass mean=(r, g, b) and "
                        "std=(r, g, b) (fractions of 1) and size= (input pixels).")
    spec = InputSpec(size, tuple(mean), tuple(std)) if mean is not None else own
    config = synthesis.SynthesisConfig.for_input(size, steps=steps, batch_size=batch_size, lr=lr, bn=bn, adi=adi,
                                                 **settings)
    if config.adi and student is None:
        raise UserError("the adaptive (ADI) term needs a student to disagree with: pass student=, or adi=0.")
    images, labels = synthesis.synthesize(teacher, int(n), config, size=size, mean=spec.mean, std=spec.std, seed=seed,
                                          student=student, store=store, progress=progress)
    return ImageSet(images, labels, f"synthesized from {type(teacher).__name__} ({n} images, {config.steps} steps)")


def _labels(labels, count: int) -> np.ndarray:
    labels = validate_labels(np.asarray(labels), "labels")
    if len(labels) != count:
        raise UserError(f"{count} images but {len(labels)} labels; give one label per image.")
    return labels.astype(np.int64)


__all__ = ["drop", "evaluate", "finetune", "profile", "score", "select", "synthesize", "views"]
