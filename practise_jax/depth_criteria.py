"""Training-free depth-pruning criteria from large models, for CNN blocks on a tiny set: baselines beside R.

* **Block influence** (ShortGPT, Men et al. 2024): ``BI = 1 - cos(x_in, x_out)``
  of a block's input and output, here per spatial position over channels and
  averaged over positions and images; a block that barely turns its input is
  cheap to lose. Only identity-shortcut blocks are droppable, so input and
  output have the same shape.
* **Greedy mimic loss** (the layer-pruning greedy of "The Unreasonable
  Ineffectiveness of the Deeper Layers" / SLEB, without adaptors): drop the
  block whose removal from the *current* student raises the MSE of the pre-GAP
  features against the teacher least, then re-evaluate the rest; repeat.

Both are "damage" measures, like R (lower: better to drop), so they are
divided by tau as R is (``damage / tau%``, `practise_jax.selection.Scores`):
what a block costs in damage per point of latency saved. For the greedy order
each round's pick minimises the *increase* of the loss divided by the
block's tau, so it too trades damage for latency.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from practise_jax import protocol
from practise_jax.transforms import Views


def _batches(images: np.ndarray, batch_size: int):
    return [images[i:i + batch_size] for i in range(0, len(images), batch_size)]


def block_influence(model: nnx.Module, images: np.ndarray, views: Views, blocks: Sequence[str] | None = None,
                    batch_size: int = 100) -> dict[str, float]:
    """``1 - cos(input, output)`` of each block (default: every candidate), averaged over positions and images."""
    blocks = list(protocol.candidates(model) if blocks is None else blocks)
    model.eval()
    graphdef, state = nnx.split(model)

    @jax.jit
    def per_batch(state, images):
        net = nnx.merge(graphdef, state)
        inputs = net.block_inputs(views.eval(images), blocks)
        sums = []
        for address in blocks:
            x = inputs[address].astype(jnp.float32)
            y = _block_of(net, address)(inputs[address]).astype(jnp.float32)
            cos = jnp.sum(x * y, -1) / (jnp.linalg.norm(x, axis=-1) * jnp.linalg.norm(y, axis=-1) + 1e-12)
            sums.append(jnp.sum(1.0 - cos) / cos[0].size)
        return jnp.stack(sums)

    total = sum(np.asarray(per_batch(state, batch)) for batch in _batches(images, batch_size))
    return {address: float(value) / len(images) for address, value in zip(blocks, total)}


def _block_of(model: nnx.Module, address: str) -> nnx.Module:
    return next(b.module for b in protocol.blocks(model) if b.address == address)


def greedy_order(model: nnx.Module, images: np.ndarray, views: Views, tau: Mapping[str, float], *,
                 until: float = 1.0, count: int | None = None, batch_size: int = 100) -> list[tuple[str, float]]:
    """Blocks in the order the greedy mimic-loss criterion drops them, each with the student's loss after its drop.

    Every round evaluates each remaining candidate dropped from the current
    student (block masks: one compiled forward), picks the least loss increase
    per point of tau, and stops once the picked blocks' summed tau reaches
    ``until`` (default: all of them) or ``count`` blocks are picked. Blocks not
    reached (and those saving no time, tau <= 0) follow in forward order, their
    loss NaN.
    """
    candidates = [b for b in protocol.candidates(model) if tau.get(b, 0.0) > 0]
    model.eval()
    graphdef, state = nnx.split(model)
    batches = _batches(images, batch_size)

    @jax.jit
    def loss_of(state, mask, images, target):
        features = nnx.merge(graphdef, state)(views.eval(images), mask)[1]["pre_gap"]
        return jnp.sum(jnp.square(features.astype(jnp.float32) - target.astype(jnp.float32)))

    features = jax.jit(lambda state, x: nnx.merge(graphdef, state)(views.eval(x))[1]["pre_gap"])
    targets = [features(state, b) for b in batches]
    size = sum(int(np.prod(t.shape)) for t in targets)

    def loss(dropped: Sequence[str]) -> float:
        mask = protocol.mask_of(model, dropped)
        return sum(float(loss_of(state, mask, b, t)) for b, t in zip(batches, targets)) / size

    order, current, saved = [], 0.0, 0.0
    remaining = list(candidates)
    while remaining and saved < until and (count is None or len(order) < count):
        losses = {b: loss([*(o for o, _ in order), b]) for b in remaining}
        best = min(remaining, key=lambda b: (losses[b] - current) / (100 * tau[b]))
        current, saved = losses[best], saved + tau[best]
        order.append((best, current))
        remaining.remove(best)
    return order + [(b, float("nan")) for b in protocol.candidates(model) if b not in {o for o, _ in order}]
