"""Fill a zoo model's NNX state from a PyTorch state dict, by name.

Zoo models mirror torchvision attribute names, so the PyTorch key of every
NNX leaf follows from its path: drop the ``layers`` level of
``nnx.Sequential`` and rename leaves (conv/linear ``kernel`` -> ``weight``,
BN ``scale/bias/mean/var`` -> ``weight/bias/running_mean/running_var``).
Conv kernels go OIHW -> HWIO (depthwise too), linear weights are transposed.
A pruned model reads its blocks from the teacher's renumbered addresses.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model_zoo import registry
from model_zoo.base import ZooModel
from model_zoo.convert.state_dict import read_state_dict
from model_zoo.errors import UserError

_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_LISTED = 8  # how many keys an error message lists per category
WEIGHTS = (nnx.Param, nnx.BatchStat)  # RNG streams and the like are not weights


def torch_key(path: tuple) -> str:
    """NNX state path -> PyTorch state-dict key, e.g. ``('layer1', 0, 'bn1', 'mean')`` -> ``layer1.0.bn1.running_mean``."""
    *modules, leaf = path
    names = [str(p) for p in modules if p != "layers"]
    return ".".join(names + [_LEAF_NAMES.get(leaf, leaf)])


def to_flax_layout(array: np.ndarray) -> np.ndarray:
    """OIHW conv kernel -> HWIO; (out, in) linear weight -> (in, out); vectors unchanged."""
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 2:
        return array.T
    return array


def _teacher_key(key: str, origin: Mapping[str, str]) -> str:
    """Rename a pruned model's key to the teacher's (``layer1.1.x`` -> ``layer1.2.x``)."""
    parts = key.split(".")
    address = ".".join(parts[:2])
    if address in origin:
        return ".".join([origin[address]] + parts[2:])
    return key


def load_state_dict(model: ZooModel, state_dict: Mapping[str, np.ndarray], *, source: str = "state dict") -> ZooModel:
    """Copy ``state_dict`` into ``model`` in place; raise listing every mismatch."""
    origin = dict(zip(model.blocks, model.origin))
    dropped_prefixes = tuple(f"{address}." for address in model.dropped)
    flat = dict(nnx.to_flat_state(nnx.state(model, WEIGHTS)))
    used, missing, mismatched, values = set(), [], [], []
    for path, variable in flat.items():
        key = _teacher_key(torch_key(path), origin)
        if key not in state_dict:
            missing.append(key)
            continue
        used.add(key)
        value = to_flax_layout(state_dict[key])
        if value.shape != variable.get_value().shape:
            mismatched.append(f"{key}: file {tuple(state_dict[key].shape)}, model {_torch_shape(variable.get_value().shape)}")
            continue
        values.append((path, value))
    unexpected = [k for k in state_dict if k not in used and not k.startswith(dropped_prefixes)]
    if missing or unexpected or mismatched:
        raise UserError(_mismatch_message(model, state_dict, source, missing, unexpected, mismatched))
    for path, value in values:
        variable = flat[path]
        flat[path] = variable.replace(jnp.asarray(value, dtype=variable.get_value().dtype))
    nnx.update(model, nnx.from_flat_state(list(flat.items())))
    return model


def _torch_shape(flax_shape: tuple) -> tuple:
    """The PyTorch shape that corresponds to a Flax parameter shape."""
    if len(flax_shape) == 4:
        h, w, i, o = flax_shape
        return (o, i, h, w)
    if len(flax_shape) == 2:
        return tuple(flax_shape[::-1])
    return tuple(flax_shape)


def _blocks_in(keys: Iterable[str]) -> set[str]:
    return {".".join(k.split(".")[:2]) for k in keys if k.split(".")[1:2] and k.split(".")[1].isdigit()}


def _guess_model(state_dict: Mapping[str, np.ndarray]) -> str | None:
    """A registered model whose block layout matches the file's, if any."""
    file_blocks = _blocks_in(state_dict)
    for name in registry.list_models():
        if set(registry.get_info(name).blocks) == file_blocks:
            return name
    return None


def _mismatch_message(model, state_dict, source, missing, unexpected, mismatched) -> str:
    def listing(title, items):
        shown = ", ".join(items[:_LISTED]) + (f", ... ({len(items) - _LISTED} more)" if len(items) > _LISTED else "")
        return f"\n  {title} ({len(items)}): {shown}"

    text = f"the weights in {source} do not fit {model.model_name} (blocks {model.blocks[0]}..{model.blocks[-1]}):"
    if missing:
        text += listing("missing keys", missing)
    if unexpected:
        text += listing("unexpected keys", unexpected)
    if mismatched:
        text += listing("shape mismatches", mismatched)
    guess = _guess_model(state_dict)
    fix = f"This file looks like a '{guess}' checkpoint: use --model {guess}." if guess else (
        "Use the model the file was trained for, or a file made for this model."
    )
    return text + "\n" + fix


def _materialise(leaf):
    """A concrete value for an abstract leaf that is not a weight (RNG keys and counters)."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.key(0)
    return jnp.zeros(leaf.shape, leaf.dtype)


def load(name: str, weights: str | os.PathLike, *, dropped: Iterable[str] = (), **overrides) -> ZooModel:
    """A registered model with weights read from a file; with ``dropped``, a student that starts from the teacher."""
    state_dict = read_state_dict(weights)
    abstract = nnx.eval_shape(lambda: registry.create(name, dropped=dropped, **overrides))
    graphdef, state = nnx.split(abstract)
    state = jax.tree.map(_materialise, state)
    model = nnx.merge(graphdef, state)
    return load_state_dict(model, state_dict, source=f"'{weights}'")
