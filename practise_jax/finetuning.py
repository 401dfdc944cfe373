"""Finetuning the pruned student on the tiny set (PRACTISE_SPEC.md section 6).

Three losses, one training loop:

* ``mimic`` (PRACTISE / MiR): MSE between the student's and the teacher's
  ``pre_gap`` features; labels unused. The classifier (``model.head``) is the
  teacher's and is kept out of the update *and* of weight decay (in PyTorch it
  gets no gradient, so SGD skips it). lr 0.02.
* ``ce`` (the "BP" baseline): cross-entropy on the labels, classifier trained,
  lr 1e-4. Needs no teacher.
* ``kd``: KL divergence to the teacher's softened logits (temperature 4,
  scaled by T^2), classifier trained, lr 0.02 (the reference has no KD code; our choice).

Recipes for large cuts (ours, not the reference's; experiments/README.md
"Finetune recipes at large cuts"): ``mimic_at`` matches more features than
``pre_gap`` (``("stages",)``: every stage's output, the sum of their MSEs);
``kd_weight`` adds that much KD to the mimic loss; ``reestimate_bn`` sets the
student's BatchNorm statistics from the tiny set before the first step
(`batch_norm.reestimate`).

Always: the student's BatchNorm in *train* mode (batch statistics, running
statistics updated with PyTorch's momentum 0.1), the teacher in eval mode,
SGD momentum 0.9 with coupled weight decay 1e-4, lr x0.1 at 40% and 80% of
the steps, batch 64.

The host reads the loss back every ``log_every`` steps only, so the device
runs ahead. A non-finite loss (or weights) is caught inside the step: from then on the step
keeps the state it was given, so when the host sees it, the state in hand is
the last good one, and the loop stops naming the step. With a state file the
loop saves its whole state every ``save_every`` steps and resumes exactly
where a killed run stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from practise_jax import batch_norm, defaults, devices
from practise_jax.errors import UserError
from practise_jax.recoverability import batch_indices, mse, step_decay_sgd

LOSSES = tuple(defaults.FINETUNE_LR)
STAGES = "stages"  # in mimic_at: the output of every stage


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    loss: str = "mimic"
    steps: int = defaults.FINETUNE_STEPS
    batch_size: int = defaults.BATCH_SIZE
    lr: float | None = None  # None: the loss's default (defaults.FINETUNE_LR)
    momentum: float = defaults.MOMENTUM
    weight_decay: float = defaults.WEIGHT_DECAY
    decay_every: float = defaults.DECAY_EVERY
    kd_temperature: float = defaults.KD_TEMPERATURE
    mimic_at: tuple[str, ...] = ("pre_gap",)  # the features the mimic loss matches (STAGES: every stage's output)
    kd_weight: float = 0.0  # mimic + this x KD
    reestimate_bn: bool = False  # BatchNorm statistics from the tiny set before the first step
    eval_every: int = defaults.EVAL_EVERY
    save_every: int = defaults.SAVE_EVERY
    log_every: int = defaults.LOG_EVERY
    seed: int = 0

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise UserError(f"unknown finetune loss '{self.loss}'; choose one of: {', '.join(LOSSES)}.")
        if self.steps < 0:
            raise UserError(f"finetune steps must be 0 or more, got {self.steps}.")
        if self.batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {self.batch_size}.")
        if self.loss != "mimic" and (self.kd_weight or tuple(self.mimic_at) != ("pre_gap",)):
            raise UserError(f"mimic_at and kd_weight shape the mimic loss; the {self.loss} loss takes neither.")
        if not self.mimic_at:
            raise UserError(f"mimic_at names no features; give feature names (e.g. pre_gap) or '{STAGES}'.")
        if not self.kd_weight >= 0:
            raise UserError(f"kd_weight must be 0 or more, got {self.kd_weight}.")
        for name in ("eval_every", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1 step, got {getattr(self, name)}.")

    @property
    def learning_rate(self) -> float:
        return defaults.FINETUNE_LR[self.loss] if self.lr is None else self.lr


def optimizer(config: FinetuneConfig, trainable: nnx.State) -> optax.GradientTransformation:
    """SGD + coupled L2 + StepLR where ``trainable`` is True; no update at all elsewhere.

    Not ``optax.masked`` alone: it passes the masked-out leaves' gradients
    through unchanged, which `apply_updates` then adds to the weights (a frozen
    classifier would climb the KD loss's gradient with step size 1).
    """
    sgd = step_decay_sgd(config.learning_rate, config.steps, momentum=config.momentum, weight_decay=config.weight_decay,
                         decay_every=config.decay_every)
    labels = jax.tree.map(lambda train: "train" if train else "frozen", trainable)
    return optax.multi_transform({"train": sgd, "frozen": optax.set_to_zero()}, labels)


def trainable_mask(params: nnx.State, head: str, loss: str) -> nnx.State:
    """True for every parameter the loss trains: all but the classifier under ``mimic``."""
    return jax.tree_util.tree_map_with_path(lambda path, _: not (loss == "mimic" and path[0].key == head), params)


def mimicked_features(mimic_at: tuple[str, ...], student_features: dict, teacher_features: dict) -> list[str]:
    """The feature names the mimic loss matches; ``STAGES`` stands for every stage's output (the last one's is ``pre_gap``)."""
    stages = [k for k in teacher_features if k not in ("stem", "pre_gap", "pre_logits")][:-1] + ["pre_gap"]
    names = list(dict.fromkeys(n for name in mimic_at for n in (stages if name == STAGES else [name])))
    missing = [n for n in names if n not in student_features or n not in teacher_features]
    if missing:
        shared = [k for k in teacher_features if k in student_features]
        raise UserError(f"cannot mimic {', '.join(missing)}: the student and teacher share the features "
                        f"{', '.join(shared)} (or '{STAGES}').")
    return names


def make_loss(config: FinetuneConfig) -> Callable:
    t = config.kd_temperature

    def kd(student_logits, teacher_logits):
        return (t * t) * optax.kl_divergence(jax.nn.log_softmax(student_logits / t), jax.nn.softmax(teacher_logits / t)).mean()

    def value(student_logits, student_features, teacher_logits, teacher_features, labels):
        if config.loss == "ce":
            return optax.softmax_cross_entropy_with_integer_labels(student_logits, labels).mean()
        if config.loss == "kd":
            return kd(student_logits, teacher_logits)
        names = mimicked_features(config.mimic_at, student_features, teacher_features)
        mimic = sum(mse(student_features[n], teacher_features[n]) for n in names)
        return mimic + config.kd_weight * kd(student_logits, teacher_logits) if config.kd_weight else mimic

    return value


def make_step(student_graphdef, teacher_graphdef, tx, config: FinetuneConfig, train_view: Callable, batch_sharding=None):
    """``step(params, rest, opt_state, failed, teacher_state, images, labels, batch, key, index)``, jitted, buffers donated.

    The batch ``images[batch]`` (and its labels) is gathered inside the step;
    ``batch_sharding`` splits it over a mesh's devices (data parallelism: XLA
    reduces the gradients and the BatchNorm statistics across them).

    ``failed`` is the first step whose loss or updated weights were not
    finite (-1: none); once set, the step returns its inputs unchanged.
    """
    loss_of = make_loss(config)

    def loss_fn(params, rest, teacher_state, x, labels):
        student = nnx.merge(student_graphdef, params, rest, copy=True)
        logits, features = student(x)
        if teacher_graphdef is None:
            teacher_logits, teacher_features = None, None
        else:
            teacher_logits, teacher_features = jax.lax.stop_gradient(nnx.merge(teacher_graphdef, teacher_state)(x))
        new_rest = nnx.split(student, nnx.Param, ...)[2]
        return loss_of(logits, features, teacher_logits, teacher_features, labels), new_rest

    def split(x):
        return x if batch_sharding is None else jax.lax.with_sharding_constraint(x, batch_sharding)

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, rest, opt_state, failed, teacher_state, images, labels, batch, key, index):
        x = split(train_view(key, images[batch]))
        (loss, new_rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, teacher_state, x, split(labels[batch]))
        updates, new_opt_state = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.all(jnp.asarray([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(new_params)]))
        good = finite & (failed < 0)
        keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(good, new, old))
        failed = jnp.where((failed < 0) & ~finite, index, failed)
        return keep(new_params, params), keep(new_rest, rest), keep(new_opt_state, opt_state), failed, loss

    return step


@dataclasses.dataclass
class TrainState:
    step: int
    params: nnx.State
    rest: nnx.State  # batch statistics (and RNG streams)
    opt_state: optax.OptState
    history: list  # [{"step", "loss"} or {"step", "top1", ...}]


def _key_safe(x):
    return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def save_state(path: Path, state: TrainState) -> None:
    """Arrays, step and history in one .npz, replaced atomically (a kill leaves the previous one)."""
    leaves = jax.tree.leaves((state.params, state.rest, state.opt_state))
    arrays = {f"a{i}": np.asarray(_key_safe(x)) for i, x in enumerate(leaves)}
    meta = json.dumps({"step": state.step, "history": state.history, "leaves": len(leaves)})
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, meta=np.array(meta), **arrays)
    os.replace(tmp, path)


def load_state(path: Path, template: TrainState) -> TrainState | None:
    if not path.exists():
        return None
    leaves, treedef = jax.tree.flatten((template.params, template.rest, template.opt_state))
    with np.load(path) as archive:
        meta = json.loads(str(archive["meta"]))
        shapes_match = meta["leaves"] == len(leaves) and all(
            archive[f"a{i}"].shape == np.shape(_key_safe(x)) for i, x in enumerate(leaves))
        if not shapes_match:
            raise UserError(f"{path} holds a finetune state of another model or loss; delete it or use another output folder.")
        restored = [jax.random.wrap_key_data(archive[f"a{i}"]) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
                    else jnp.asarray(archive[f"a{i}"]) for i, x in enumerate(leaves)]
    params, rest, opt_state = jax.tree.unflatten(treedef, restored)
    return TrainState(meta["step"], params, rest, opt_state, meta["history"])


def finetune(student: nnx.Module, teacher: nnx.Module | None, images: np.ndarray, labels: np.ndarray | None,
             config: FinetuneConfig, train_view: Callable, *, evaluate: Callable[[nnx.Module], dict] | None = None,
             state_path: Path | None = None, progress: bool = False, spread: list | None = None) -> tuple[nnx.Module, list]:
    """Train ``student`` on the tiny set; returns the trained student (eval mode) and its history.

    ``train_view(key, images)`` gives the augmented, normalised batch.
    ``evaluate(model)`` (optional) runs at the start, every ``eval_every``
    steps and at the end. With ``state_path`` the loop resumes from, and saves to, that file.
    """
    if teacher is None and config.loss != "ce":
        raise UserError(f"the {config.loss} loss learns from a teacher; pass the teacher, or use loss='ce' with labels.")
    if labels is None and config.loss == "ce":
        raise UserError("the ce loss needs the images' labels; pass labels, or use the label-free mimic loss.")
    head = getattr(student, "head", None)
    if config.loss == "mimic" and head is None:
        raise UserError(f"{type(student).__name__} names no classifier (.head); the mimic finetune keeps it out of "
                        "the update. Set head = '<attribute of the classifier>' on the model class.")
    teacher_graphdef, teacher_state = None, None
    if teacher is not None:
        teacher.eval()
        teacher_graphdef, teacher_state = nnx.split(teacher)
    if config.reestimate_bn:
        student = batch_norm.reestimate(student, images, train_view, config.batch_size, seed=config.seed)
    student.train()
    graphdef, params, rest = nnx.split(student, nnx.Param, ...)
    params, rest = jax.tree.map(jnp.copy, (params, rest))  # own buffers: the step donates them, the teacher may share them
    tx = optimizer(config, trainable_mask(params, head, config.loss))
    state = TrainState(0, params, rest, tx.init(params), [])
    if state_path is not None:
        state = load_state(state_path, state) or state
    placement = devices.Placement(devices.batch_mesh(list(spread)) if spread else None)
    batch_sharding = placement.batch_split(min(config.batch_size, len(images)))
    everywhere = placement.everywhere if spread else jnp.asarray
    if spread:
        state.params, state.rest, state.opt_state, teacher_state = everywhere(
            (state.params, state.rest, state.opt_state, teacher_state))
    step_fn = make_step(graphdef, teacher_graphdef, tx, config, train_view, batch_sharding)
    batches = batch_indices(len(images), config.batch_size, np.random.RandomState(config.seed))
    for _ in range(state.step):  # replay the batch order up to where the saved run stopped
        next(batches)
    keys = jax.random.split(jax.random.key(config.seed), max(config.steps, 1))
    device_images = everywhere(images)
    device_labels = everywhere(labels if labels is not None else np.zeros(len(images), np.int32))
    failed = everywhere(np.asarray(-1, np.int32))  # placed as the step returns it: no second compile

    def current_model():
        model = nnx.merge(graphdef, state.params, state.rest)
        model.eval()
        return model

    if evaluate is not None and state.step == 0:  # the start: what dropping cost before any recovery
        state.history.append({"step": 0, **evaluate(current_model())})
    bar = tqdm(total=config.steps, initial=state.step, desc=f"finetune ({config.loss})", unit="step", disable=not progress)
    started = time.perf_counter()
    pending: list[tuple[int, jax.Array]] = []  # (step, loss on the device) not yet read back
    while state.step < config.steps:
        index = next(batches)
        params, rest, opt_state, failed, loss = step_fn(state.params, state.rest, state.opt_state, failed, teacher_state,
                                                        device_images, device_labels, index, keys[state.step],
                                                        state.step + 1)
        state = TrainState(state.step + 1, params, rest, opt_state, state.history)
        pending.append((state.step, loss))
        due_eval = evaluate is not None and (state.step % config.eval_every == 0 or state.step == config.steps)
        due_save = state_path is not None and (state.step % config.save_every == 0 or due_eval or state.step == config.steps)
        if state.step % config.log_every == 0 or due_eval or due_save or state.step == config.steps:
            losses = _read_back(pending, failed, config, state, state_path)
            bar.update(len(pending))
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
            state.history.extend({"step": s, "loss": v} for (s, _), v in zip(pending, losses) if s % 10 == 0 or s == config.steps)
            pending = []
            if due_eval:
                state.history.append({"step": state.step, **evaluate(current_model())})
            if due_save:
                save_state(state_path, state)
    bar.close()
    state.history.append({"finetune_seconds_this_session": time.perf_counter() - started})
    return current_model(), state.history


def _read_back(pending, failed, config: FinetuneConfig, state: TrainState, state_path) -> list[float]:
    """The pending losses as floats (one host sync); stop with a clear message if a step's loss was not finite."""
    first_bad = int(failed)
    losses = [float(v) for v in jax.device_get([loss for _, loss in pending])]
    if first_bad >= 0:
        value = dict(zip([s for s, _ in pending], losses)).get(first_bad, float("nan"))
        state.step = first_bad - 1  # the state in hand is the one after the last good step
        if state_path is not None:
            save_state(state_path, state)
        raise UserError(
            f"training diverged at finetune step {first_bad} (the {config.loss} loss was {value:.4g}, or the weights stopped "
            f"being finite); the last good state (step {state.step}) "
            f"is kept{f' in {state_path}' if state_path else ''}. Lower the learning rate (--lr) and rerun.")
    return losses
