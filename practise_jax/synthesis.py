"""Data-free tiny sets: images synthesised from the teacher alone by BatchNorm-statistics inversion.

DeepInversion (Yin et al., CVPR 2020; NVlabs/DeepInversion) optimises a
batch of images, starting from noise, so that at every BatchNorm layer the
batch mean and variance of the layer's input match its running statistics,
while the teacher classifies each image as its target class. PRACTISE's
data-free setting compresses with such images (its "ADI" set).

Loss per step, on the batch rolled by a random jitter and flipped at random:
``CE(teacher(x), targets) + bn * (first * d_1 + d_2 + ... + d_L)
+ tv_l2 * TV_2(x) + tv_l1 * TV_1(x) + l2 * mean_i ||x_i|| + adi * (1 - JS)``,
where ``d_l = ||var_l - running_var_l|| + ||mean_l - running_mean_l||`` and
the last term (Adaptive DeepInversion) rewards images on which a student
disagrees with the teacher. Adam on the images (in the model's normalised
input space), cosine learning rate, and each step clipped to the range of
valid pixels; the images are returned as uint8.

Recipes (`SynthesisConfig.for_input`), looked up in NVlabs/DeepInversion:

* 32 px and smaller: its CIFAR-10 script with the README's "better"
  settings: batch 256, 2000 iterations, Adam lr 0.1, BN weight 10, TV-L2
  1e-3, L2 0, jitter 2, targets evenly over the classes. Unlike that script
  (constant lr, no flips, no clipping, no weight on the first BN) we take the
  ImageNet script's cosine schedule, flips, clipping and first-BN weight 10.
* larger inputs: its ImageNet script (``imagenet_inversion.py``, README):
  Adam lr 0.25 with betas (0.5, 0.9), cosine with 100 warm-up steps, BN
  weight 0.01 with 10 on the first BN, TV-L2 1e-4, L2 1e-5, jitter 30,
  flips, clipping; 2000 iterations at full resolution (its ``setting_id 1``;
  we do not run its low-resolution warm start), batch 64 (theirs: 84-152).

Both keep the last images (the reference tracks a best loss on the CIFAR
path only). ADI is off by default (``adi=0``; the reference's logs use 0.2).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from practise_jax.errors import UserError

_DISTANCES: contextvars.ContextVar[list | None] = contextvars.ContextVar("bn_distances", default=None)


@dataclasses.dataclass(frozen=True)
class SynthesisConfig:
    """Every setting of the inversion (see the module docstring for where each comes from)."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 0
    bn: float = 10.0
    first_bn: float = 10.0
    tv_l2: float = 1e-3
    tv_l1: float = 0.0
    l2: float = 0.0
    jitter: int = 2
    flip: bool = True
    adi: float = 0.0
    adi_temperature: float = 3.0

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"synthesis needs {name.replace('_', ' ')} of at least 1, got {getattr(self, name)}.")
        if not self.lr > 0:
            raise UserError(f"the synthesis learning rate must be positive, got {self.lr}.")
        if self.warmup >= self.steps:
            raise UserError(f"{self.warmup} warm-up steps leave none of the {self.steps} steps; give more steps.")

    @classmethod
    def for_input(cls, size: int, **overrides) -> SynthesisConfig:
        """The recipe for ``size`` px inputs (CIFAR up to 32 px, ImageNet above), with ``overrides`` (None: keep)."""
        base = {} if size <= 32 else dict(batch_size=64, lr=0.25, betas=(0.5, 0.9), warmup=100, bn=0.01,
                                          tv_l2=1e-4, l2=1e-5, jitter=30)
        return cls(**(base | {k: v for k, v in overrides.items() if v is not None}))


class StatisticsProbe(nnx.Module):
    """A BatchNorm that also reports how far its input's batch statistics are from its running ones.

    Inside `collecting` each call appends ``||var - running_var|| +
    ||mean - running_mean||`` (over every axis but the features) to the
    collector, in forward order; elsewhere it is the BatchNorm alone.
    """

    def __init__(self, norm: nnx.BatchNorm):
        self.norm = norm

    def __call__(self, x, *args, **kwargs):
        sink = _DISTANCES.get()
        if sink is not None:
            axes = tuple(range(x.ndim - 1))
            values = x.astype(jnp.float32)
            mean, var = values.mean(axes), values.var(axes)
            sink.append(jnp.linalg.norm(var - self.norm.var[...]) + jnp.linalg.norm(mean - self.norm.mean[...]))
        return self.norm(x, *args, **kwargs)


@contextlib.contextmanager
def collecting():
    """The BatchNorm distances of the forward passes run inside, as a list (traced values under jit)."""
    sink: list = []
    token = _DISTANCES.set(sink)
    try:
        yield sink
    finally:
        _DISTANCES.reset(token)


def probed(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` (weights shared) in eval mode with every BatchNorm wrapped in a `StatisticsProbe`."""
    copy = nnx.clone(model)
    found = [path for path, node in nnx.iter_graph(copy) if isinstance(node, nnx.BatchNorm)]
    if not found:
        raise UserError(f"{type(model).__name__} has no BatchNorm layer: inversion matches the running statistics "
                        "that BatchNorm layers keep, so it cannot synthesise images for this model. Use real images or "
                        "an out-of-domain set (--data ood:...) instead.")
    for path in found:
        parent = copy
        for step in path[:-1]:
            parent = parent[step] if isinstance(step, int) else getattr(parent, step)
        last = path[-1]
        if isinstance(last, int):
            parent[last] = StatisticsProbe(parent[last])
        else:
            setattr(parent, last, StatisticsProbe(getattr(parent, last)))
    copy.eval()
    return copy


def logits_of(output) -> jax.Array:
    """The logits of a model's output: the output itself, or the first item of a tuple (the zoo's (logits, features))."""
    return output[0] if isinstance(output, tuple) else output


def cosine_lr(lr: float, warmup: int, steps: int):
    """NVlabs' ``lr_cosine_policy``: linear warm-up over ``warmup`` steps, then a cosine from ``lr`` to 0."""
    def schedule(step):
        warm = lr * (step + 1) / max(warmup, 1)
        done = (step - warmup) / max(steps - warmup, 1)
        return jnp.where(step < warmup, warm, 0.5 * (1 + jnp.cos(math.pi * done)) * lr)

    return schedule


def image_priors(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(TV-L1, TV-L2) of NHWC images: differences to the right, below and along both diagonals, as the reference."""
    diffs = (x[:, :, :-1] - x[:, :, 1:], x[:, :-1, :] - x[:, 1:, :],
             x[:, 1:, :-1] - x[:, :-1, 1:], x[:, :-1, :-1] - x[:, 1:, 1:])
    return sum(jnp.abs(d).mean() for d in diffs), sum(jnp.linalg.norm(d.ravel()) for d in diffs)


def disagreement(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
    """1 - the Jensen-Shannon divergence of student and teacher (clamped as the reference): low when they differ."""
    p = jax.nn.softmax(student_logits / temperature)
    q = jax.nn.softmax(teacher_logits / temperature)
    m = jnp.clip(0.5 * (p + q), 0.01, 0.99)
    p, q = jnp.clip(p, 0.01, 0.99), jnp.clip(q, 0.01, 0.99)
    kl = lambda log_a, b: (b * (jnp.log(b) - log_a)).sum(-1).mean()  # noqa: E731  (KLDivLoss, batchmean)
    return 1.0 - jnp.clip(0.5 * kl(jnp.log(p), m) + 0.5 * kl(jnp.log(q), m), 0.0, 1.0)


def valid_range(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest model input per channel: pixels 0 and 255 normalised."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return -mean / std, (1.0 - mean) / std


def inversion_terms(probed_teacher: nnx.Module, seen: jax.Array, targets: jax.Array, config: SynthesisConfig,
                    student: nnx.Module | None = None) -> dict[str, jax.Array]:
    """The loss on an (already jittered and flipped) batch and its parts; ``probed_teacher`` from `probed`."""
    with collecting() as distances:
        logits = logits_of(probed_teacher(seen))
    terms = {"ce": optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean(),
             "bn": config.first_bn * distances[0] + sum(distances[1:])}
    terms["tv_l1"], terms["tv_l2"] = image_priors(seen)
    terms["l2"] = jnp.linalg.norm(seen.reshape(len(seen), -1), axis=1).mean()
    if student is not None:
        terms["adi"] = disagreement(logits_of(student(seen)), logits, config.adi_temperature)
    weights = {"ce": 1.0, "bn": config.bn, "tv_l1": config.tv_l1, "tv_l2": config.tv_l2, "l2": config.l2,
               "adi": config.adi}
    terms["loss"] = sum(weights[name] * value for name, value in terms.items())
    terms["accuracy"] = (logits.argmax(-1) == targets).mean()
    return terms


def make_step(teacher: nnx.Module, config: SynthesisConfig, mean, std, student: nnx.Module | None = None):
    """One jit-compiled inversion step over a batch; returns ``(optimizer, step)``.

    ``step(x, opt_state, key, targets) -> (x, opt_state, terms)``: ``x`` the
    images in the model's normalised input space (kept within `valid_range`),
    ``terms`` the loss and its parts. A non-finite loss leaves ``x`` and the
    optimiser unchanged (the caller stops).
    """
    teacher_def, teacher_state = nnx.split(probed(teacher))
    if student is not None:
        student.eval()
    student_def, student_state = nnx.split(student) if student is not None else (None, None)
    optimizer = optax.adam(cosine_lr(config.lr, config.warmup, config.steps), b1=config.betas[0], b2=config.betas[1],
                           eps=1e-8)
    low, high = valid_range(mean, std)

    def loss(x, key, targets):
        shift_key, flip_key = jax.random.split(key)
        shift = jax.random.randint(shift_key, (2,), -config.jitter, config.jitter + 1)
        seen = jnp.roll(x, (shift[0], shift[1]), axis=(1, 2))
        if config.flip:
            seen = jnp.where(jax.random.bernoulli(flip_key), seen[:, :, ::-1], seen)
        rival = nnx.merge(student_def, student_state) if student is not None and config.adi else None
        terms = inversion_terms(nnx.merge(teacher_def, teacher_state), seen, targets, config, rival)
        return terms["loss"], terms

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(x, opt_state, key, targets):
        (value, terms), grads = jax.value_and_grad(loss, has_aux=True)(x, key, targets)
        updates, new_state = optimizer.update(grads, opt_state, x)
        new_x = jnp.clip(optax.apply_updates(x, updates), low, high)
        finite = jnp.isfinite(value)
        keep = functools.partial(jnp.where, finite)
        return keep(new_x, x), jax.tree.map(keep, new_state, opt_state), terms

    return optimizer, step


def to_pixels(x: np.ndarray, mean, std) -> np.ndarray:
    """Normalised model inputs back to uint8 RGB: ``round(255 * (x * std + mean))``."""
    return np.clip(np.rint(255.0 * (np.asarray(x) * np.asarray(std) + np.asarray(mean))), 0, 255).astype(np.uint8)


def targets_for(start: int, count: int, num_classes: int) -> np.ndarray:
    """Target classes of images ``start..start+count-1``: image i wants class i mod num_classes (evenly spread)."""
    return (np.arange(start, start + count) % num_classes).astype(np.int32)


def invert_batch(step, optimizer, targets: np.ndarray, size: int, mean, std, steps: int, key: jax.Array,
                 on_step=None) -> tuple[np.ndarray, dict]:
    """One batch from noise: ``steps`` steps; returns uint8 images and the last step's terms (floats).

    ``on_step(index, terms)`` runs after each step (terms stay on the device).
    Raises `UserError` naming the step when the loss stops being finite.
    """
    init_key, key = jax.random.split(key)
    low, high = valid_range(mean, std)
    x = jnp.clip(jax.random.normal(init_key, (len(targets), size, size, 3)), low, high)
    opt_state = optimizer.init(x)
    targets = jnp.asarray(targets)
    terms = {}
    for index, step_key in enumerate(jax.random.split(key, steps)):
        x, opt_state, terms = step(x, opt_state, step_key, targets)
        if on_step is not None:
            on_step(index, terms)
        if ((index + 1) % 100 == 0 or index + 1 == steps) and not np.isfinite(float(terms["loss"])):
            raise UserError(f"image synthesis diverged at step {index + 1} (loss {float(terms['loss'])}); lower the "
                            "learning rate or the loss weights.")
    return to_pixels(x, mean, std), {name: float(value) for name, value in terms.items()}


def num_classes_of(model: nnx.Module, size: int) -> int:
    """How many classes ``model`` predicts (its logits' width on one ``size`` px image; nothing computed)."""
    graphdef, state = nnx.split(model)
    shape = jax.eval_shape(lambda s: logits_of(nnx.merge(graphdef, s)(jnp.zeros((1, size, size, 3)))), state).shape
    return int(shape[-1])


def synthesis_settings(teacher: nnx.Module, count: int, config: SynthesisConfig, size: int, mean, std, seed: int,
                       student: nnx.Module | None) -> dict:
    """Everything the images depend on: keys a store of finished batches, so batches never mix."""
    from practise_jax.recoverability import fingerprint

    def weights(model):
        return None if model is None else f"{type(model).__qualname__}:{fingerprint(nnx.state(model, (nnx.Param, nnx.BatchStat)))}"

    return {"teacher": weights(teacher), "student": weights(student), "images": count, "size": size,
            "mean": list(mean), "std": list(std), "seed": seed, "config": dataclasses.asdict(config)}


def synthesize(teacher: nnx.Module, count: int, config: SynthesisConfig, *, size: int, mean, std, seed: int = 0,
               student: nnx.Module | None = None, store=None, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images (uint8 NHWC) and their target classes, in batches of ``config.batch_size``.

    Batch ``b`` depends on ``seed`` and ``b`` only, so batches can be made in
    any order: with a ``store`` (a directory) each finished batch is kept
    there as an ``.npz`` and a rerun makes only the missing ones; a store of
    other settings is refused.
    """
    from tqdm.auto import tqdm

    from practise_jax.store import ResultsStore

    if count < 1:
        raise UserError(f"synthesis needs at least 1 image, got {count}.")
    num_classes = num_classes_of(teacher, size)
    starts = list(range(0, count, config.batch_size))
    kept = None
    if store is not None:
        from pathlib import Path

        folder = Path(store)
        kept = ResultsStore(folder / "batches.jsonl",
                            synthesis_settings(teacher, count, config, size, mean, std, seed, student))
    optimizer, step = make_step(teacher, config, mean, std, student)
    todo = [s for s in starts if kept is None or f"batch_{s // config.batch_size:05d}" not in kept]
    images, bar = {}, tqdm(total=len(todo) * config.steps, desc="synthesis", unit="step", disable=not progress)

    def on_step(index, terms):
        bar.update(1)
        if index % 50 == 0:
            bar.set_postfix(loss=f"{float(terms['loss']):.3g}", bn=f"{float(terms['bn']):.3g}",
                            acc=f"{float(terms['accuracy']):.2f}")

    try:
        for start in starts:
            name = f"batch_{start // config.batch_size:05d}"
            if kept is not None and name in kept:
                with np.load(kept.path.parent / f"{name}.npz") as archive:
                    images[start] = archive["images"]
                continue
            targets = targets_for(start, min(config.batch_size, count - start), num_classes)
            key = jax.random.fold_in(jax.random.key(seed), start // config.batch_size)
            pixels, terms = invert_batch(step, optimizer, targets, size, mean, std, config.steps, key, on_step)
            images[start] = pixels
            if kept is not None:
                np.savez(kept.path.parent / f"{name}.npz", images=pixels, labels=targets.astype(np.int64))
                kept.put(name, {"targets": len(targets), **terms})
    finally:
        bar.close()
    return np.concatenate([images[s] for s in starts]), targets_for(0, count, num_classes).astype(np.int64)
