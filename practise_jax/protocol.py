"""The model protocol: what PRACTISE needs from a network, and nothing more.

Any Flax NNX module can be profiled, scored, pruned, finetuned, checkpointed
and exported when it

1. lists its residual blocks in forward order with addresses:
   ``model.residual_blocks() -> [(address, block_module), ...]``
   (addresses such as ``layer3.2``, ``features.9``, ``stage2.unit1``);
2. says which of them may be dropped: ``model.droppable`` (a tuple of
   addresses; only blocks with an identity shortcut qualify);
3. names, per block, the convs that write to and read from the residual
   stream: every block module carries a `Stream` as ``block.stream``
   (conv paths inside the block, torchvision style: ``conv2``,
   ``downsample.0``, ``conv.2``), and whether its shortcut is the identity;
4. runs ``model(x, mask=None, start=None) -> (logits, features)`` with
   ``features["pre_gap"]``, the map before global average pooling.

`ResidualNetwork` gives item 4 for free: a subclass defines ``stem``,
``residual_blocks``, ``classify`` (and ``neck`` if something runs between the
last block and pooling), and inherits the forward pass with a dynamic block
mask and a start at any block. ``head`` names the classifier's attribute,
which the mimic finetune leaves untouched.

Adaptor placement (`practise_jax.adaptors`), static dropping
(`practise_jax.surgery`) and folding follow from these lists alone; nothing
in the method looks at a family name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from practise_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Stream:
    """How a residual block touches the residual stream.

    ``writers``: convs whose raw output (before their BN) ends up in the block's
    output stream (the last conv of the branch; a projection shortcut's conv).
    ``readers``: convs that read the block's input stream (the first conv of
    the branch; a projection shortcut's conv). ``identity``: the block's output
    is its input plus a branch, so the stream runs on through it. Paths are
    relative to the block, dot-separated; an index picks an element of an
    ``nnx.Sequential`` or ``nnx.List``.
    """

    writers: tuple[str, ...]
    readers: tuple[str, ...]
    identity: bool


@dataclasses.dataclass(frozen=True)
class Block:
    """A residual block as the method sees it: address, module, stream, droppability."""

    address: str
    module: nnx.Module
    stream: Stream
    droppable: bool


class DroppedBlock(nnx.Module):
    """What a statically dropped block becomes: it returns its input, holds no weights, computes nothing."""

    stream = Stream((), (), identity=True)

    def __call__(self, x, *args, **kwargs):
        return x


def blocks(model: nnx.Module) -> list[Block]:
    """The blocks a model still has (statically dropped ones left out), in forward order."""
    check(model)
    droppable = set(model.droppable)
    return [Block(address, module, module.stream, address in droppable)
            for address, module in model.residual_blocks() if not isinstance(module, DroppedBlock)]


def candidates(model: nnx.Module) -> tuple[str, ...]:
    """Addresses of the blocks that may still be dropped, in forward order."""
    return tuple(b.address for b in blocks(model) if b.droppable)


def dropped(model: nnx.Module) -> tuple[str, ...]:
    """Addresses of the blocks already dropped statically, in forward order."""
    check(model)
    return tuple(address for address, module in model.residual_blocks() if isinstance(module, DroppedBlock))


def addresses(model: nnx.Module) -> tuple[str, ...]:
    """Every block address of the unpruned network, dropped ones included."""
    check(model)
    return tuple(address for address, _ in model.residual_blocks())


def check(model) -> None:
    """Raise one clear error if ``model`` does not follow the protocol (module docstring)."""
    name = type(model).__name__
    missing = [attr for attr in ("residual_blocks", "droppable") if not hasattr(model, attr)]
    if missing:
        raise UserError(
            f"{name} does not follow the practise-jax model protocol: it lacks {', '.join(missing)}. "
            "Subclass practise_jax.ResidualNetwork (or give the model residual_blocks() and droppable), and a "
            "Stream on every block; see practise_jax.protocol and examples/custom_resnet.py.")
    listed = model.residual_blocks()
    seen = set()
    for item in listed:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise UserError(f"{name}.residual_blocks() must return (address, block) pairs; got {item!r}.")
        address, module = item
        if address in seen:
            raise UserError(f"{name}.residual_blocks() lists '{address}' twice; give every block its own address.")
        seen.add(address)
        if not isinstance(getattr(module, "stream", None), Stream):
            raise UserError(
                f"block '{address}' of {name} ({type(module).__name__}) has no practise_jax.Stream as .stream: "
                "set block.stream = Stream(writers=(...), readers=(...), identity=...) naming its stream convs.")
    unknown = [a for a in model.droppable if a not in seen]
    if unknown:
        raise UserError(f"{name}.droppable names {unknown}, which residual_blocks() does not list.")
    by_address = dict(listed)
    reshaping = [a for a in model.droppable if not by_address[a].stream.identity]
    if reshaping:
        raise UserError(f"{name}.droppable names {reshaping}, whose shortcut is not the identity; "
                        "only a block whose output is its input plus a branch can be dropped.")


def check_drop_set(model: nnx.Module, drop: Sequence[str]) -> tuple[str, ...]:
    """``drop`` in forward order, or a clear error naming what may be dropped."""
    drop = tuple(drop)
    live = candidates(model)
    allowed = ", ".join(live) or "none"
    gone = set(dropped(model))
    everything = set(addresses(model))
    name = getattr(model, "model_name", type(model).__name__)
    for address in drop:
        if address in gone:
            raise UserError(f"block '{address}' of {name} is already dropped. Droppable blocks are: {allowed}.")
        if address not in everything:
            raise UserError(f"{name} has no block '{address}'. Droppable blocks are: {allowed}.")
        if address not in live:
            raise UserError(
                f"block '{address}' of {name} cannot be dropped (it changes shape or is a stage's first block). "
                f"Droppable blocks are: {allowed}.")
    if len(set(drop)) != len(drop):
        raise UserError(f"the drop set {list(drop)} names a block twice; name each block once.")
    return tuple(a for a in live if a in set(drop))


def mask_of(model: nnx.Module, drop: Sequence[str]) -> jax.Array:
    """A dynamic block mask over ``model.droppable`` (1 keeps, 0 drops) that drops ``drop``."""
    drop = set(drop)
    return jnp.asarray([0.0 if a in drop else 1.0 for a in model.droppable], jnp.float32)


def split_address(address: str) -> tuple[str, int]:
    """``"layer3.2"`` -> ``("layer3", 2)``: the group a block belongs to, and its index."""
    prefix, _, index = address.rpartition(".")
    if not prefix or not index.isdigit():
        raise UserError(f"'{address}' is not a block address; expected a name like 'layer3.2' or 'features.9'.")
    return prefix, int(index)


def parse_block_list(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Accept ``"layer1.1,layer2.3"`` or an iterable of addresses; strip blanks."""
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(item.strip() for item in items if item and item.strip())


def global_avg_pool(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=(1, 2))


class ResidualNetwork(nnx.Module):
    """Base of a network that follows the protocol: ``model(x, mask=None, start=None) -> (logits, features)``.

    ``x`` is a normalised NHWC float batch (with ``start``, the input of block
    ``start``). ``mask`` is an optional dynamic 0/1 block mask over
    ``model.droppable``: a masked block passes its input on unchanged, which
    is exactly what the statically dropped block does. ``features`` holds
    ``stem``, the output of each group of blocks (``layer1``, ...) when
    ``group_features`` is set, ``pre_gap`` and ``pre_logits``.

    A subclass defines ``stem(x)``, ``residual_blocks()``, ``classify(pooled)``,
    ``droppable`` and ``head``; ``neck(x)`` runs between the last block and
    pooling (identity by default).
    """

    group_features = True  # record each group's output under its prefix (layer1, ...)
    head: str  # attribute holding the classifier

    def stem(self, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def residual_blocks(self) -> list[tuple[str, nnx.Module]]:
        raise NotImplementedError

    def neck(self, x: jax.Array) -> jax.Array:
        return x

    def group_of(self, address: str) -> str:
        """The group a block belongs to (its features key): the address up to its last dot (``layer3``)."""
        return address.rpartition(".")[0]

    def classify(self, pooled: jax.Array) -> jax.Array:
        raise NotImplementedError

    def __call__(self, x: jax.Array, mask: jax.Array | None = None, *, start: str | None = None):
        features = {}
        listed = self.residual_blocks()
        if start is None:
            x = self.stem(x)
            features["stem"] = x
        else:
            listed = listed[self._position(listed, start):]
        for address, block in listed:
            y = block(x)
            keep = self._keep(mask, address)
            x = y if keep is None else jnp.where(keep > 0, y, x)
            if self.group_features:
                features[self.group_of(address)] = x
        x = self.neck(x)
        features["pre_gap"] = x
        pooled = global_avg_pool(x)
        features["pre_logits"] = pooled
        return self.classify(pooled), features

    def block_inputs(self, x: jax.Array, wanted: Sequence[str], mask: jax.Array | None = None) -> dict[str, jax.Array]:
        """The activations entering several blocks, from one pass that stops before the last of them."""
        listed = self.residual_blocks()
        wanted = set(wanted)
        for address in wanted:
            self._position(listed, address)  # unknown addresses fail here
        inputs = {}
        x = self.stem(x)
        for address, block in listed:
            if address in wanted:
                inputs[address] = x
                if len(inputs) == len(wanted):
                    break
            y = block(x)
            keep = self._keep(mask, address)
            x = y if keep is None else jnp.where(keep > 0, y, x)
        return inputs

    def block_input(self, x: jax.Array, address: str, mask: jax.Array | None = None) -> jax.Array:
        """The activation entering block ``address``: everything the forward pass computes before it."""
        return self.block_inputs(x, [address], mask)[address]

    def _keep(self, mask, address):
        if mask is None or address not in self.droppable:
            return None
        return mask[self.droppable.index(address)]

    def _position(self, listed, address: str) -> int:
        order = [a for a, _ in listed]
        if address not in order:
            raise UserError(f"{type(self).__name__} has no residual block '{address}'.")
        return order.index(address)
