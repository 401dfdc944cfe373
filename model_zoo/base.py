"""What every zoo model shares: its block layout and its static drop set."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from flax import nnx

from model_zoo import blocks as block_algebra


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
    """

    def _set_layout(self, layout: BlockLayout) -> None:
        self.model_name = layout.name
        self.blocks = layout.blocks
        self.droppable = layout.droppable
        self.dropped = layout.dropped
        self.origin = layout.origin
