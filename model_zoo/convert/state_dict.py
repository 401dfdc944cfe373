"""Read a PyTorch-style state dict from disk into ``{name: numpy array}``.

Accepted: ``.pth/.pt/.th/.tar`` (``torch.load(weights_only=True)``, needs the
``torch`` extra), ``.safetensors`` and ``.npz`` (no torch needed). Training
wrappers are unpacked: a dict holding ``state_dict``/``model``/
``model_state_dict``, the ``module.`` prefix of ``nn.DataParallel``, and
``num_batches_tracked`` counters.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from practise_jax.errors import UserError

TORCH_SUFFIXES = (".pth", ".pt", ".th", ".tar", ".bin", ".ckpt")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a weight file as float/int numpy arrays, keys normalised."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weight file '{path}' does not exist; check the path given to --weights.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            raw = _read_safetensors(path)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                raw = {key: archive[key] for key in archive.files}
        elif suffix in TORCH_SUFFIXES:
            raw = _read_torch(path)
        else:
            raise UserError(
                f"cannot read weights from '{path}': unknown extension '{suffix}'. "
                f"Use a PyTorch file ({', '.join(TORCH_SUFFIXES)}), .safetensors or .npz."
            )
    except UserError:
        raise
    except Exception as error:  # a truncated or foreign file surfaces as many different exceptions
        raise UserError(
            f"could not read weight file '{path}' ({type(error).__name__}: {error}). "
            "The file is truncated, corrupt or not a state dict; download or export it again."
        ) from None
    return normalise_keys(raw, path)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def _read_torch(path: Path) -> dict:
    try:
        import torch
    except ImportError:
        raise UserError(
            f"reading '{path}' needs PyTorch: install the torch extra (pip install torch==2.13.0 'practise-jax[torch]'), "
            "or convert the file to .safetensors or .npz."
        ) from None
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise UserError(f"'{path}' holds a {type(obj).__name__}, not a state dict of tensors; save model.state_dict() instead.")
    return {key: value.detach().cpu().numpy() for key, value in obj.items() if hasattr(value, "detach")}


def normalise_keys(raw: dict, path: Path) -> dict[str, np.ndarray]:
    """Strip ``module.``, drop ``num_batches_tracked``; refuse an empty dict."""
    state = {}
    for key, value in raw.items():
        key = key.removeprefix("module.")
        if key.endswith("num_batches_tracked"):
            continue
        state[key] = np.asarray(value)
    if not state:
        raise UserError(f"'{path}' holds no tensors; it is not a model state dict.")
    return state
