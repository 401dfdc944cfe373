"""Edits of a model's module graph: find a submodule by its path, replace it, drop blocks.

Paths are dot-separated, torchvision style (``layer1.0.conv2``,
``features.3.conv.2``): an integer picks an element of an ``nnx.List`` or of
an ``nnx.Sequential``'s layers. Every edit works on a copy
(`nnx.clone` shares the arrays, which are immutable, so a copy is cheap) and
on abstract models from ``nnx.eval_shape`` as well as concrete ones, so a
checkpoint can rebuild a pruned architecture without allocating weights.

Dropping a block replaces it with `protocol.DroppedBlock`, which returns its
input: the kept blocks keep their addresses (the teacher's), so drop sets
compose, results of different rounds name the same blocks, and exported
layers keep their names.
"""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from practise_jax import protocol
from practise_jax.errors import UserError


def _child(module, step: str):
    if step.isdigit():
        container = module.layers if isinstance(module, nnx.Sequential) else module
        return container[int(step)]
    return getattr(module, step)


def get(model: nnx.Module, path: str) -> nnx.Module:
    """The submodule at ``path`` (``"layer1.0.conv2"``); a clear error if there is none."""
    module = model
    for step in path.split("."):
        try:
            module = _child(module, step)
        except (AttributeError, IndexError, KeyError, TypeError):
            raise UserError(f"{type(model).__name__} has no submodule '{path}' (no '{step}' in it).") from None
    return module


def replace(model: nnx.Module, path: str, new: nnx.Module) -> None:
    """Put ``new`` at ``path`` in ``model``, in place."""
    parent_path, _, last = path.rpartition(".")
    parent = get(model, parent_path) if parent_path else model
    if last.isdigit():
        container = parent.layers if isinstance(parent, nnx.Sequential) else parent
        container[int(last)] = new
    else:
        setattr(parent, last, new)


def path_of(model: nnx.Module, target: nnx.Module) -> str:
    """The path of submodule ``target`` inside ``model`` (found by identity)."""
    for path, node in nnx.iter_graph(model):
        if node is target:
            return ".".join(str(p) for p in path if p != "layers")
    raise UserError(f"{type(target).__name__} is not a submodule of {type(model).__name__}.")


def block_paths(model: nnx.Module) -> dict[str, str]:
    """Block address -> path of the block module in the graph."""
    paths = {}
    for path, node in nnx.iter_graph(model):
        paths.setdefault(id(node), ".".join(str(p) for p in path if p != "layers"))
    return {address: paths[id(module)] for address, module in model.residual_blocks()}


def drop(model: nnx.Module, blocks: Sequence[str]) -> nnx.Module:
    """A copy of ``model`` without ``blocks``: each becomes a `protocol.DroppedBlock` (no weights, no compute).

    Every kept weight is the model's own (shared, not copied). Works on an
    already pruned model (drop sets compose) and on abstract models.
    """
    blocks = protocol.check_drop_set(model, blocks)
    student = nnx.clone(model)
    paths = block_paths(student)
    for address in blocks:
        replace(student, paths[address], protocol.DroppedBlock())
    return student
