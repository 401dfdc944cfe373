"""BatchNorm statistics re-estimated from the tiny set ("precise BN", Wu & Johnson 2021).

Dropping blocks shifts every later layer's input distribution, so the
teacher's running statistics no longer fit the student. Before finetuning,
`reestimate` sets each BatchNorm's running mean and variance to their
average over one pass of the tiny set, each batch normalised by its own
statistics as in training (so every layer sees the inputs training gives it).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from practise_jax.errors import UserError


def reestimate(model: nnx.Module, images: np.ndarray, view: Callable, batch_size: int, *, seed: int = 0) -> nnx.Module:
    """A copy of ``model`` whose BatchNorm running statistics are their mean over ``view(key, batch)`` of the images.

    The batches cover every image once, in a seeded order; each weighs by its size.
    """
    probe = nnx.clone(model)
    norms = [m for _, m in nnx.iter_modules(probe) if isinstance(m, nnx.BatchNorm)]
    if not norms:
        raise UserError(f"{type(model).__name__} has no BatchNorm layers, so there are no statistics to re-estimate; "
                        "drop the BatchNorm re-estimation (reestimate_bn / --reestimate-bn).")
    for norm in norms:
        norm.momentum = 0.0  # one forward pass leaves exactly that batch's statistics in the running ones
    probe.train()
    graphdef, state = nnx.split(probe)

    @jax.jit
    def batch_statistics(state, key, x):
        module = nnx.merge(graphdef, state)
        module(view(key, x))
        return nnx.state(module, nnx.BatchStat)

    order = np.random.RandomState(seed).permutation(len(images))
    keys = jax.random.split(jax.random.key(seed), -(-len(images) // batch_size))
    total = None
    for key, start in zip(keys, range(0, len(images), batch_size)):
        batch = order[start:start + batch_size]
        weighted = jax.tree.map(lambda s: s * len(batch), batch_statistics(state, key, jnp.asarray(images[batch])))
        total = weighted if total is None else jax.tree.map(jnp.add, total, weighted)
    result = nnx.clone(model)
    nnx.update(result, jax.tree.map(lambda s: s / len(images), total))
    return result
