"""Fill any NNX model's state from a PyTorch state dict, by name.

The PyTorch key of every NNX leaf follows from its path: drop the ``layers``
level of ``nnx.Sequential`` and rename leaves (conv/linear ``kernel`` ->
``weight``, BN ``scale/bias/mean/var`` -> ``weight/bias/running_mean/
running_var``). Zoo models mirror torchvision attribute names, so torchvision
files load as they are; a file of another layout loads through ``rename``
rules (``REGEX=REPLACEMENT``, applied in order to the file's keys). Conv
kernels go OIHW -> HWIO (depthwise too), linear weights are transposed. A
pruned model has the teacher's addresses, so it reads the teacher's file;
the keys of its dropped blocks are left unused.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model_zoo import registry
from model_zoo.convert.state_dict import normalise_state_dict, read_checkpoint
from practise_jax import protocol, surgery
from practise_jax.errors import UserError
from practise_jax.latency.programs import _materialise

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


Rename = Sequence[str | tuple[str, str]]


def rename_keys(state_dict: Mapping[str, np.ndarray], rules: Rename) -> dict[str, np.ndarray]:
    """The state dict with every rule (``"REGEX=REPLACEMENT"`` or ``(regex, replacement)``) applied in order to each key."""
    compiled = []
    for rule in rules:
        if isinstance(rule, str) and "=" not in rule:
            raise UserError(f"rename rule '{rule}' has no '='; write it as REGEX=REPLACEMENT, e.g. '^backbone\\.='.")
        pattern, replacement = rule.split("=", 1) if isinstance(rule, str) else rule
        try:
            compiled.append((re.compile(pattern), replacement, rule))
        except re.error as error:
            raise UserError(f"rename rule '{rule}': '{pattern}' is not a regular expression ({error}).") from None
    renamed: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for key, value in state_dict.items():
        new = key
        for pattern, replacement, rule in compiled:
            try:
                new = pattern.sub(replacement, new)
            except (re.error, IndexError) as error:
                raise UserError(f"rename rule '{rule}' cannot be applied to '{key}' ({error}).") from None
        if new in renamed:
            raise UserError(f"the rename rules map both '{origin[new]}' and '{key}' onto '{new}'; make them distinguish the two.")
        renamed[new], origin[new] = value, key
    return renamed


@dataclasses.dataclass
class KeyMatch:
    """How a state dict's keys meet a model's: values to load, and every mismatch (PyTorch key names)."""

    values: list  # (NNX path, array in Flax layout)
    missing: list[str]  # the model's keys the file lacks
    unexpected: list[str]  # the file's keys the model has no place for
    mismatched: list[str]  # "key: file (shape), model (shape)"

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def match_keys(model: nnx.Module, state_dict: Mapping[str, np.ndarray]) -> KeyMatch:
    """Pair each weight of ``model`` (concrete or abstract) with the file's tensor of its PyTorch key."""
    paths = surgery.block_paths(model) if hasattr(model, "residual_blocks") else {}
    dropped_prefixes = tuple(f"{paths[address]}." for address in protocol.dropped(model)) if paths else ()
    used, match = set(), KeyMatch([], [], [], [])
    for path, variable in nnx.to_flat_state(nnx.state(model, WEIGHTS)):
        key = torch_key(path)
        if key not in state_dict:
            match.missing.append(key)
            continue
        used.add(key)
        value = to_flax_layout(np.asarray(state_dict[key]))
        if value.shape != variable.get_value().shape:
            match.mismatched.append(f"{key}: file {tuple(np.shape(state_dict[key]))}, model {_torch_shape(variable.get_value().shape)}")
            continue
        match.values.append((path, value))
    match.unexpected = [k for k in state_dict if k not in used and not k.startswith(dropped_prefixes)]
    return match


def load_state_dict(model: nnx.Module, state_dict: Mapping[str, np.ndarray], *, rename: Rename = (),
                    source: str = "state dict") -> nnx.Module:
    """Copy ``state_dict`` (keys renamed by ``rename``) into ``model`` in place; raise listing every mismatch."""
    state_dict = rename_keys(state_dict, rename) if rename else state_dict
    match = match_keys(model, state_dict)
    if not match.fits:
        raise UserError(_mismatch_message(model, state_dict, source, match.missing, match.unexpected, match.mismatched))
    flat = dict(nnx.to_flat_state(nnx.state(model, WEIGHTS)))
    for path, value in match.values:
        variable = flat[path]
        flat[path] = variable.replace(jnp.asarray(value, dtype=variable.get_value().dtype))
    nnx.update(model, nnx.from_flat_state(list(flat.items())))
    return model


def best_fit(state_dict: Mapping[str, np.ndarray]) -> list[tuple[str, float]]:
    """Registered models by how well the file fits them: the share of keys present in both with equal shapes."""
    fits = []
    for name in registry.list_models():
        if registry.get_info(name).family.startswith("keras_"):
            continue  # Keras layer names: read from Keras files (model_zoo.from_keras), never from a state dict
        match = match_keys(nnx.eval_shape(lambda name=name: registry.create(name)), state_dict)
        total = len(match.values) + len(match.missing) + len(match.mismatched)
        fits.append((name, len(match.values) / max(total, len(state_dict), 1)))
    return sorted(fits, key=lambda item: -item[1])


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
    """The registered model with the most blocks, all of which the file holds, if any."""
    file_blocks = _blocks_in(state_dict)
    fitting = [name for name in registry.list_models() if set(registry.get_info(name).blocks) <= file_blocks]
    return max(fitting, key=lambda name: len(registry.get_info(name).blocks), default=None)


def _mismatch_message(model, state_dict, source, missing, unexpected, mismatched) -> str:
    def listing(title, items):
        shown = ", ".join(items[:_LISTED]) + (f", ... ({len(items) - _LISTED} more)" if len(items) > _LISTED else "")
        return f"\n  {title} ({len(items)}): {shown}"

    addresses = protocol.addresses(model)
    name = getattr(model, "model_name", type(model).__name__)
    text = f"the weights in {source} do not fit {name} (blocks {addresses[0]}..{addresses[-1]}):"
    if missing:
        text += listing("missing keys", missing)
    if unexpected:
        text += listing("unexpected keys", unexpected)
    if mismatched:
        text += listing("shape mismatches", mismatched)
    guess = _guess_model(state_dict)
    fix = f"This file looks like a '{guess}' checkpoint: use --model {guess}." if guess and guess != name else (
        "Use the model the file was trained for, or map the file's keys onto the model's with rename rules "
        "(REGEX=REPLACEMENT); `practise-jax inspect --weights FILE --model NAME` shows both."
    )
    return text + "\n" + fix


def load_weights(model: nnx.Module, weights: str | os.PathLike | Mapping[str, np.ndarray], *, rename: Rename = (),
                 key: str | None = None) -> nnx.Module:
    """``model`` (any NNX module, concrete or from ``nnx.eval_shape``) with its weights from a file or a state dict, in eval mode.

    ``rename``: rules ``"REGEX=REPLACEMENT"`` that map the file's keys onto the
    model's PyTorch-style keys (`torch_key` of each parameter path), applied in
    order. ``key``: which state dict of a file that holds several (``"state_dict_ema"``).
    """
    if isinstance(weights, Mapping):
        state_dict, source = normalise_state_dict({k: np.asarray(v) for k, v in weights.items()})[0], "the state dict"
    else:
        state_dict, source = read_checkpoint(weights, key=key).tensors, f"'{weights}'"
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, jax.tree.map(lambda leaf: _materialise(leaf) if isinstance(leaf, jax.ShapeDtypeStruct) else leaf, state))
    model = load_state_dict(model, state_dict, rename=rename, source=source)
    model.eval()  # pretrained weights: BatchNorm on its running statistics until you call model.train()
    return model


def load(name: str, weights: str | os.PathLike, *, dropped: Iterable[str] = (), rename: Rename = (), key: str | None = None,
         **overrides) -> nnx.Module:
    """A registered model with weights read from a file, in eval mode; with ``dropped``, a student that starts from the teacher.

    A Keras file (``.keras``, ``.weights.h5``, ``.h5``) goes to `model_zoo.convert.keras_import.load_keras`,
    which takes the classes, width and input size from the file.
    """
    from model_zoo.convert import keras_import

    if keras_import.is_keras_file(weights):
        if rename or key or overrides:
            raise UserError(f"'{weights}' is a Keras file: its layers load by their Keras names, so rename rules, "
                            "--weights-key and overrides do not apply.")
        return keras_import.load_keras(weights, model=name, dropped=dropped)
    abstract = nnx.eval_shape(lambda: registry.create(name, dropped=dropped, **overrides))
    return load_weights(abstract, weights, rename=rename, key=key)
