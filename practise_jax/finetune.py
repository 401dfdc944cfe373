"""Finetuning the pruned student on the tiny set (PRACTISE_SPEC.md section 6).

Three losses, one training loop:

* ``mimic`` (PRACTISE / MiR): MSE between the student's and the teacher's
  ``pre_gap`` features; labels unused. The classifier is the teacher's and is
  kept out of the update *and* of weight decay (in PyTorch it gets no gradient,
  so SGD skips it). lr 0.02.
* ``ce`` (the "BP" baseline): cross-entropy on the labels, classifier trained, lr 1e-4.
* ``kd``: KL divergence to the teacher's softened logits (temperature 4,
  scaled by T^2), classifier trained, lr 0.02 (the reference has no KD code; our choice).

Always: the student's BatchNorm in *train* mode (batch statistics, running
statistics updated with PyTorch's momentum 0.1), the teacher in eval mode,
SGD momentum 0.9 with coupled weight decay 1e-4, lr x0.1 at 40% and 80% of
the steps, batch 64. The loop saves its whole state every ``save_every``
steps, so a killed run resumes exactly where it stopped, and stops with a
message naming the step if the loss becomes NaN, keeping the last good state.
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

from model_zoo.base import ZooModel
from model_zoo.errors import UserError
from practise_jax.recoverability import batch_indices, mse

DEFAULT_LR = {"mimic": 0.02, "ce": 1e-4, "kd": 0.02}


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    method: str = "mimic"
    steps: int = 2000
    batch_size: int = 64
    lr: float | None = None  # None: the method's default (DEFAULT_LR)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    decay_every: float = 0.4
    kd_temperature: float = 4.0
    eval_every: int = 500
    save_every: int = 100
    seed: int = 0

    def __post_init__(self):
        if self.method not in DEFAULT_LR:
            raise UserError(f"unknown finetune method '{self.method}'; choose one of: {', '.join(DEFAULT_LR)}.")
        if self.steps < 0:
            raise UserError(f"finetune steps must be 0 or more, got {self.steps}.")

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.method] if self.lr is None else self.lr


def optimizer(config: FinetuneConfig, trainable: nnx.State) -> optax.GradientTransformation:
    """SGD + coupled L2 + StepLR, applied only where ``trainable`` is True."""
    schedule = optax.exponential_decay(config.learning_rate, max(1, int(config.decay_every * config.steps)), 0.1, staircase=True)
    sgd = optax.chain(optax.add_decayed_weights(config.weight_decay), optax.sgd(schedule, momentum=config.momentum))
    return optax.masked(sgd, trainable)


def trainable_mask(params: nnx.State, head: str, method: str) -> nnx.State:
    """True for every parameter the method trains: all but the classifier under ``mimic``."""
    return jax.tree_util.tree_map_with_path(lambda path, _: not (method == "mimic" and path[0].key == head), params)


def make_loss(method: str, temperature: float) -> Callable:
    def loss(student_logits, student_features, teacher_logits, teacher_features, labels):
        if method == "mimic":
            return mse(student_features["pre_gap"], teacher_features["pre_gap"])
        if method == "ce":
            return optax.softmax_cross_entropy_with_integer_labels(student_logits, labels).mean()
        t = temperature
        return (t * t) * optax.kl_divergence(jax.nn.log_softmax(student_logits / t), jax.nn.softmax(teacher_logits / t)).mean()

    return loss


def make_step(student_graphdef, teacher_graphdef, tx, config: FinetuneConfig, train_view: Callable):
    loss_of = make_loss(config.method, config.kd_temperature)

    def loss_fn(params, rest, teacher_state, x, labels):
        student = nnx.merge(student_graphdef, params, rest, copy=True)
        logits, features = student(x)
        teacher_logits, teacher_features = nnx.merge(teacher_graphdef, teacher_state)(x)
        teacher_logits, teacher_features = jax.lax.stop_gradient((teacher_logits, teacher_features))
        new_rest = nnx.split(student, nnx.Param, ...)[2]
        return loss_of(logits, features, teacher_logits, teacher_features, labels), new_rest

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, rest, opt_state, teacher_state, images, labels, key):
        x = train_view(key, images)
        (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, teacher_state, x, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), rest, opt_state, loss

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
            raise UserError(f"{path} holds a finetune state of another model or method; delete it or use another output folder.")
        restored = [jax.random.wrap_key_data(archive[f"a{i}"]) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
                    else jnp.asarray(archive[f"a{i}"]) for i, x in enumerate(leaves)]
    params, rest, opt_state = jax.tree.unflatten(treedef, restored)
    return TrainState(meta["step"], params, rest, opt_state, meta["history"])


def finetune(student: ZooModel, teacher: ZooModel, images: np.ndarray, labels: np.ndarray, config: FinetuneConfig,
             train_view: Callable, *, evaluate: Callable[[ZooModel], dict] | None = None,
             state_path: Path | None = None, progress: bool = True) -> tuple[ZooModel, list]:
    """Train ``student`` towards ``teacher`` on the tiny set; returns the trained student and its history.

    ``train_view(key, uint8_images)`` gives the augmented, normalised batch.
    ``evaluate(model)`` (optional) runs every ``eval_every`` steps and at the
    end. With ``state_path`` the loop resumes from, and saves to, that file.
    """
    teacher.eval()
    teacher_graphdef, teacher_state = nnx.split(teacher)
    student.train()
    graphdef, params, rest = nnx.split(student, nnx.Param, ...)
    params, rest = jax.tree.map(jnp.copy, (params, rest))  # own buffers: the step donates them, the teacher may share them
    tx = optimizer(config, trainable_mask(params, student.head, config.method))
    state = TrainState(0, params, rest, tx.init(params), [])
    if state_path is not None:
        state = load_state(state_path, state) or state
    step_fn = make_step(graphdef, teacher_graphdef, tx, config, train_view)
    batches = batch_indices(len(images), config.batch_size, np.random.RandomState(config.seed))
    for _ in range(state.step):  # replay the batch order up to where the saved run stopped
        next(batches)
    keys = jax.random.split(jax.random.key(config.seed), max(config.steps, 1))
    device_images, device_labels = jnp.asarray(images), jnp.asarray(labels)

    def current_model():
        model = nnx.merge(graphdef, state.params, state.rest)
        model.eval()
        return model

    bar = tqdm(total=config.steps, initial=state.step, desc=f"finetune ({config.method})", unit="step", disable=not progress)
    started = time.perf_counter()
    while state.step < config.steps:
        index = next(batches)
        params, rest, opt_state, loss = step_fn(state.params, state.rest, state.opt_state, teacher_state,
                                                device_images[index], device_labels[index], keys[state.step])
        loss = float(loss)
        if not np.isfinite(loss):
            raise UserError(
                f"the {config.method} loss became {loss} at finetune step {state.step + 1}; the last good state "
                f"(step {state.step}) is kept{f' in {state_path}' if state_path else ''}. Lower --lr and rerun."
            )
        state = TrainState(state.step + 1, params, rest, opt_state, state.history)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4g}")
        if state.step % 10 == 0 or state.step == config.steps:
            state.history.append({"step": state.step, "loss": loss})
        if evaluate is not None and (state.step % config.eval_every == 0 or state.step == config.steps):
            state.history.append({"step": state.step, **evaluate(current_model())})
        checkpoint_due = state.step % config.save_every == 0 or state.step % config.eval_every == 0 or state.step == config.steps
        if state_path is not None and checkpoint_due:
            save_state(state_path, state)
    bar.close()
    if evaluate is not None and config.steps == 0:
        state.history.append({"step": 0, **evaluate(current_model())})
    state.history.append({"finetune_seconds_this_session": time.perf_counter() - started})
    return current_model(), state.history
