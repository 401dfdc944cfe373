"""What every zoo model shares: its block layout and its static drop set."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax
from flax import nnx

from model_zoo import blocks as block_algebra
from model_zoo import layers


class BlockLayout:
    """The blocks of a network family before and after a static drop set.

    ``all_blocks``/``all_droppable`` describe the unpruned network; ``blocks``
    and ``droppable`` are the renumbered addresses of the built model, and
    ``origin[i]`` is the unpruned address of ``blocks[i]``.
    """

    def __init__(self, name: str, all_blocks: Sequence[str], all_droppable: Sequence[str], dropped: Iterable[str]):
        self.name = name
        self.dropped = block_algebra.validate_drop_set(dropped, all_blocks, all_droppable, name)
        mapping = block_algebra.renumber(all_blocks, self.dropped)
        self.blocks = tuple(mapping)
        self.origin = tuple(mapping.values())
        self.droppable = block_algebra.kept_droppable(all_blocks, all_droppable, self.dropped)

    def count(self, prefix: str) -> int:
        """How many blocks of group ``prefix`` (``"layer2"``) the built model has."""
        return sum(1 for address in self.blocks if block_algebra.split_address(address)[0] == prefix)


class ZooModel(nnx.Module):
    """Base of every zoo model: ``model(x, mask=None) -> (logits, features)``.

    ``x`` is a normalised NHWC float batch. ``mask`` is an optional dynamic
    block mask over ``model.droppable`` (see ``layers.mask_entry``).
    ``features`` maps names (``stem``, ``layer1``..., ``pre_gap``,
    ``pre_logits``) to intermediate activations.

    A family defines ``stem``, ``residual_blocks`` (address, module) in
    forward order, ``neck`` (what runs between the last block and pooling)
    and ``classify``; the forward pass is shared, so every family can also
    start at any block (``start=``) from a cached ``block_input``.
    """

    stage_features = True  # record each stage's output under its group name (layer1, ...)
    head: str  # each family names the attribute holding its classifier (kept out of the mimic finetune)

    def _set_layout(self, layout: BlockLayout) -> None:
        self.model_name = layout.name
        self.blocks = layout.blocks
        self.droppable = layout.droppable
        self.dropped = layout.dropped
        self.origin = layout.origin

    def neck(self, x: jax.Array) -> jax.Array:
        return x

    def __call__(self, x: jax.Array, mask: jax.Array | None = None, *, start: str | None = None):
        """Forward pass; with ``start``, ``x`` is the input of block ``start`` (see `block_input`)."""
        features = {}
        blocks = self.residual_blocks()
        if start is None:
            x = self.stem(x)
            features["stem"] = x
        else:
            blocks = blocks[self._position(start):]
        for address, block in blocks:
            x = block(x, layers.mask_entry(mask, self.droppable, address))
            if self.stage_features:
                features[block_algebra.split_address(address)[0]] = x
        x = self.neck(x)
        features["pre_gap"] = x
        pooled = layers.global_avg_pool(x)
        features["pre_logits"] = pooled
        return self.classify(pooled), features

    def block_input(self, x: jax.Array, address: str, mask: jax.Array | None = None) -> jax.Array:
        """The activation entering block ``address``: everything the forward pass computes before it."""
        return self.block_inputs(x, [address], mask)[address]

    def block_inputs(self, x: jax.Array, addresses: Sequence[str], mask: jax.Array | None = None) -> dict[str, jax.Array]:
        """The activations entering several blocks, from one pass that stops before the last of them."""
        wanted = set(addresses)
        for address in wanted:
            self._position(address)  # unknown addresses fail here
        inputs = {}
        x = self.stem(x)
        for address, block in self.residual_blocks():
            if address in wanted:
                inputs[address] = x
                if len(inputs) == len(wanted):
                    break
            x = block(x, layers.mask_entry(mask, self.droppable, address))
        return inputs

    def _position(self, address: str) -> int:
        addresses = [a for a, _ in self.residual_blocks()]
        if address not in addresses:
            raise ValueError(f"{self.model_name} has no residual block '{address}'")
        return addresses.index(address)
