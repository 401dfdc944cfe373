"""Accuracy of a model on an image set: top-1 and the mean of per-class accuracies."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from practise_jax.data.imageset import ImageSet
from practise_jax.transforms import Views


@dataclasses.dataclass(frozen=True)
class Accuracy:
    top1: float  # percent over all images
    class_mean: float  # percent, mean over the classes present
    per_class: dict[int, float]
    count: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@functools.lru_cache(maxsize=16)
def _classifier(graphdef: nnx.GraphDef, views: Views):
    """One compiled predictor per architecture and view, reused across evaluations."""

    @jax.jit
    def classify(state, images):
        logits, _ = nnx.merge(graphdef, state)(views.eval(images))
        return jnp.argmax(logits, axis=-1)

    return classify


def on_one_device(state):
    """``state`` committed to one device: its own if it has one, else the first local device (all shards local).

    Weights replicated over a mesh (a finetune spread over devices) would run
    every batch on each device and compile a program of their own; gathered,
    finetuning's evaluations and the final one share one program.
    """
    arrays = [x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)]
    if not all(x.is_fully_addressable for x in arrays):
        return state
    devices = {device for x in arrays for device in x.sharding.device_set}
    return jax.device_put(state, devices.pop() if len(devices) == 1 else jax.local_devices()[0])


def predict(model: nnx.Module, data: ImageSet, views: Views, *, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Predicted class of every image; the last batch is padded so one compiled function serves all."""
    model.eval()
    graphdef, state = nnx.split(model)
    state = on_one_device(state)
    classify = _classifier(graphdef, views)
    predictions = []
    for start in tqdm(range(0, len(data), batch_size), desc="evaluate", unit="batch", disable=not progress, leave=False):
        batch = data.images[start:start + batch_size]
        pad = batch_size - len(batch)
        padded = np.concatenate([batch, np.zeros((pad,) + batch.shape[1:], batch.dtype)]) if pad else batch
        predictions.append(np.asarray(classify(state, padded))[:len(batch)])
    return np.concatenate(predictions)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> Accuracy:
    correct = predictions == labels
    per_class = {int(c): float(100 * correct[labels == c].mean()) for c in np.unique(labels)}
    return Accuracy(
        top1=float(100 * correct.mean()),
        class_mean=float(np.mean(list(per_class.values()))),
        per_class=per_class,
        count=int(len(labels)),
    )


def evaluate(model: nnx.Module, data: ImageSet, views: Views, *, batch_size: int = 256, progress: bool = False) -> Accuracy:
    return accuracy(predict(model, data, views, batch_size=batch_size, progress=progress), data.labels)
