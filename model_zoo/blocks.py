"""Block addresses and drop sets, as plain data.

A block address is a torchvision-style name such as ``layer3.2`` or
``features.9``: a group prefix and an index. A model's architecture is the
ordered tuple of its block addresses; a *drop set* removes some of them.
Kept blocks are renumbered consecutively within their group, exactly as the
reference implementation does when it loads teacher weights into a pruned
model (dropping ``layer1.1`` turns the old ``layer1.2`` into ``layer1.1``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from model_zoo.errors import UserError


def split_address(address: str) -> tuple[str, int]:
    """``"layer3.2"`` -> ``("layer3", 2)``."""
    prefix, _, index = address.rpartition(".")
    if not prefix or not index.isdigit():
        raise UserError(f"'{address}' is not a block address; expected a name like 'layer3.2' or 'features.9'.")
    return prefix, int(index)


def parse_block_list(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """Accept ``"layer1.1,layer2.3"`` or an iterable of addresses; strip blanks."""
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(item.strip() for item in items if item and item.strip())


def validate_drop_set(dropped: Iterable[str], blocks: Sequence[str], droppable: Sequence[str], model: str) -> tuple[str, ...]:
    """Return ``dropped`` in architecture order, or raise naming the droppable blocks."""
    dropped = tuple(dropped)
    allowed = ", ".join(droppable)
    for address in dropped:
        if address not in blocks:
            raise UserError(f"{model} has no block '{address}'. Droppable blocks are: {allowed}.")
        if address not in droppable:
            raise UserError(
                f"block '{address}' of {model} cannot be dropped (it changes shape or is a stage's first block). "
                f"Droppable blocks are: {allowed}."
            )
    if len(set(dropped)) != len(dropped):
        raise UserError(f"the drop set {list(dropped)} names a block twice; name each block once.")
    return tuple(b for b in blocks if b in set(dropped))


def renumber(blocks: Sequence[str], dropped: Iterable[str]) -> dict[str, str]:
    """Map each kept block's new address to its original address.

    >>> renumber(["layer1.0", "layer1.1", "layer1.2"], ["layer1.1"])
    {'layer1.0': 'layer1.0', 'layer1.1': 'layer1.2'}
    """
    dropped = set(dropped)
    counters: dict[str, int] = {}
    mapping = {}
    for address in blocks:
        if address in dropped:
            continue
        prefix, _ = split_address(address)
        new_index = counters.get(prefix, 0)
        counters[prefix] = new_index + 1
        mapping[f"{prefix}.{new_index}"] = address
    return mapping


def kept_droppable(blocks: Sequence[str], droppable: Sequence[str], dropped: Iterable[str]) -> tuple[str, ...]:
    """The droppable blocks of a pruned model, under their new addresses."""
    original = set(droppable)
    return tuple(new for new, old in renumber(blocks, dropped).items() if old in original)
