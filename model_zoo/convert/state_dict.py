"""Read a PyTorch-style state dict from disk into ``{name: numpy array}``.

Accepted: ``.pth/.pt/.th/.tar/.bin/.ckpt`` (read by `torch_file`, which needs
no torch and runs nothing in the file), ``.safetensors`` and ``.npz``. A
training checkpoint wraps its state dict: under ``state_dict``, ``model``,
``net``, ``model_ema``... one or more levels deep, or as a whole pickled
``nn.Module``. Names differ from project to project, so the state dict is
found by its shape (a dict of tensors), not its name; where a file holds
several (model and EMA weights), the caller picks one with ``key``. Keys lose
the ``module.`` prefix of ``nn.DataParallel`` and the ``_orig_mod.`` prefix of
``torch.compile``, and ``num_batches_tracked`` counters are dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_zoo.convert import torch_file
from practise_jax.errors import UserError

TORCH_SUFFIXES = (".pth", ".pt", ".th", ".tar", ".bin", ".ckpt")
PREFIXES = ("module.", "_orig_mod.")
_LISTED = 10


@dataclass(frozen=True)
class Checkpoint:
    """The tensors of a weight file and where they came from.

    ``key`` is the path of the state dict inside the file's wrapper
    (``"net"``, ``"checkpoint.model"``; ``""`` for the top level); ``notes``
    say what was changed on the way (``"stripped prefix 'module.'"``).
    """

    tensors: dict[str, np.ndarray]
    key: str
    notes: tuple[str, ...]
    source: str


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a weight file as numpy arrays, keys normalised (see `read_checkpoint`)."""
    return read_checkpoint(path).tensors


def read_checkpoint(path: str | os.PathLike, *, key: str | None = None) -> Checkpoint:
    """The state dict of a weight file; ``key`` picks one by its wrapper path where the file holds several."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weight file '{path}' does not exist; check the path given to --weights.")
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        obj, notes = torch_file.load_with_notes(path)
        found, raw = find_state_dict(obj, key=key, source=f"'{path}'")
    elif suffix in (".safetensors", ".npz"):
        if key:
            raise UserError(f"'{path}' is a flat {suffix} file with no wrapper keys; leave out --weights-key (key=).")
        found, raw, notes = "", _read_flat(path, suffix), ()
    else:
        raise UserError(
            f"cannot read weights from '{path}': unknown extension '{suffix}'. "
            f"Use a PyTorch file ({', '.join(TORCH_SUFFIXES)}), .safetensors or .npz."
        )
    tensors, cleaned = normalise_state_dict(raw)
    if not tensors:
        raise UserError(f"'{path}' holds no tensors; it is not a model state dict.")
    return Checkpoint(tensors=tensors, key=found, notes=notes + cleaned, source=str(path))


def _read_flat(path: Path, suffix: str) -> dict[str, np.ndarray]:
    try:
        if suffix == ".safetensors":
            from safetensors.numpy import load_file

            return load_file(str(path))
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except Exception as error:  # a truncated or foreign file surfaces as many different exceptions
        raise UserError(
            f"could not read weight file '{path}' ({type(error).__name__}: {error}). "
            "The file is truncated, corrupt or not a state dict; download or export it again."
        ) from None


def find_state_dict(obj, *, key: str | None = None, source: str = "the checkpoint") -> tuple[str, dict[str, np.ndarray]]:
    """The state dict inside a loaded checkpoint and its wrapper path (``""`` for the top level).

    A state dict is a dict of tensors, at least one not a scalar. Optimizer
    states (``{'state': ..., 'param_groups': ...}``) hold tensors too and are
    never candidates. Two or more candidates stop with an error that names
    them, unless ``key`` picks one (or any dict on the way, whose tensors are taken).
    """
    dicts = dict(_dicts(obj, "", set()))
    if key is not None:
        if key not in dicts:
            choices = ", ".join(f"'{path}'" for path in dicts if path) or "none"
            raise UserError(f"{source} has no dict at key '{key}' (dicts in it: {choices}); check --weights-key (key=).")
        tensors = {name: value for name, value in dicts[key].items() if isinstance(value, np.ndarray)}
        return key, tensors
    candidates = {path: tensors for path, tensors in dicts.items() if _is_state_dict(tensors)}
    if len(candidates) == 1:
        return next(iter(candidates.items()))
    if candidates:
        listing = ", ".join(f"'{path}' ({len(tensors)} tensors)" for path, tensors in candidates.items())
        raise UserError(f"{source} holds {len(candidates)} state dicts: {listing}; choose one with --weights-key KEY (key= in Python).")
    raise UserError(
        f"{source} holds no dict of tensors: it holds {_describe(obj)}. Save model.state_dict(), "
        "or name the dict that holds the weights with --weights-key KEY (key= in Python)."
    )


def _dicts(obj, path: str, seen: set[int]) -> Iterator[tuple[str, Mapping]]:
    """(path, dict) for every string-keyed dict and pickled module in ``obj``, outside optimizer states."""
    if id(obj) in seen:  # a pickle may hold the same dict twice, or a dict inside itself
        return
    seen.add(id(obj))
    module = torch_file.module_state_dict(obj)
    if module is not None:
        yield path, module
    elif isinstance(obj, Mapping) and all(isinstance(name, str) for name in obj) and not {"state", "param_groups"} <= obj.keys():
        yield path, obj
        for name, value in obj.items():
            yield from _dicts(value, f"{path}.{name}" if path else name, seen)


def _is_state_dict(mapping: Mapping) -> bool:
    values = list(mapping.values())
    return bool(values) and all(isinstance(v, np.ndarray) for v in values) and any(v.ndim for v in values)


def _describe(obj) -> str:
    """A short account of an unrecognised checkpoint: its type, and for a dict its keys and their types."""
    def kind(value) -> str:
        return "tensor" if isinstance(value, np.ndarray) else getattr(value, "global_name", type(value).__name__)

    if not isinstance(obj, Mapping):
        return f"a {kind(obj)}"
    items = [f"'{name}' ({kind(value)})" for name, value in list(obj.items())[:_LISTED]]
    more = f", ... ({len(obj) - _LISTED} more)" if len(obj) > _LISTED else ""
    return f"a dict with keys {', '.join(items) or 'none'}{more}"


def normalise_state_dict(raw: Mapping) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """Drop ``num_batches_tracked``, strip prefixes every key shares; notes on both."""
    tensors = {name: np.asarray(value) for name, value in raw.items() if name.rpartition(".")[2] != "num_batches_tracked"}
    dropped = len(raw) - len(tensors)
    notes = [f"dropped {dropped} num_batches_tracked counter{'s' * (dropped > 1)}"] if dropped else []
    while tensors and (prefix := next((p for p in PREFIXES if all(name.startswith(p) for name in tensors)), None)):
        tensors = {name.removeprefix(prefix): value for name, value in tensors.items()}
        notes.append(f"stripped prefix '{prefix}'")
    return tensors, tuple(notes)
