"""Tiny pruned zoo models with non-trivial weights and BN statistics, built fast.

The weights are drawn with numpy into an `nnx.eval_shape` skeleton: random
init through JAX would compile one XLA program per weight shape, which costs
seconds per model on a loaded CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import model_zoo

# name -> (overrides, input size, dropped blocks)
TINY = {
    "cifar_resnet20": ({"widths": (4, 8, 16)}, 32, ("layer2.1",)),
    "resnet18": ({"widths": (8, 8, 16, 16), "num_classes": 10}, 64, ("layer3.1",)),
    "resnet50": ({"widths": (4, 4, 8, 8), "num_classes": 10}, 64, ("layer3.2",)),
    "mobilenet_v2": ({"width_mult": 0.25, "num_classes": 10}, 64, ("features.3",)),
}
DEEPER = {"cifar_resnet56": ({"widths": (4, 8, 16)}, 32, ())}  # not in the per-family parametrisations


def _draw(rng: np.random.Generator, name: str, shape: tuple) -> np.ndarray:
    if name == "kernel":  # variance-preserving: keeps logits of order 1 through the tiny nets
        return rng.normal(0.0, np.sqrt(1.0 / np.prod(shape[:-1])), shape)
    if name == "scale":
        return rng.uniform(0.3, 0.8, shape)
    if name == "var":
        return rng.uniform(0.5, 2.0, shape)
    return rng.normal(0.0, 0.2, shape)  # bias, mean


def tiny_model(name: str, *, seed: int = 0, dropped=None) -> model_zoo.ZooModel:
    """``TINY[name]`` with its block dropped (or ``dropped``), random weights and BN statistics, in eval mode."""
    overrides, _, default_drop = {**TINY, **DEEPER}[name]
    return random_model(name, seed=seed, dropped=default_drop if dropped is None else dropped, **overrides)


def random_model(name: str, *, seed: int = 0, dropped=(), **overrides) -> model_zoo.ZooModel:
    """A registered model with random weights and BN statistics drawn with numpy, in eval mode."""
    abstract = nnx.eval_shape(lambda: model_zoo.create(name, dropped=dropped, **overrides))
    graphdef, weights, rest = nnx.split(abstract, (nnx.Param, nnx.BatchStat), ...)
    rng = np.random.default_rng(seed)
    pure = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(_draw(rng, path[-1].key, leaf.shape), leaf.dtype), nnx.to_pure_dict(weights))
    nnx.replace_by_pure_dict(weights, pure)

    def materialise(leaf):  # RNG streams (MobileNetV2's dropout)
        return jax.random.key(0) if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else jnp.zeros(leaf.shape, leaf.dtype)

    model = nnx.merge(graphdef, weights, jax.tree.map(materialise, rest))
    model.eval()
    return model


def images(name: str, batch: int = 2, seed: int = 1) -> np.ndarray:
    """A normalised-looking float32 NHWC batch at the tiny model's input size."""
    size = TINY[name][1]
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)[0]


def logits(model: nnx.Module, x) -> np.ndarray:
    """``model(x)[0]`` under one jit, compiled once per architecture (eager NNX compiles every op)."""
    graphdef, state = nnx.split(model)
    return np.asarray(_forward(graphdef, state, x))
