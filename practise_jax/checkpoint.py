"""A compressed model on disk: orbax weights plus a JSON architecture spec.

Layout of a checkpoint directory::

    DIR/architecture.json   what to build: model name, dropped blocks
                            (original addresses), constructor overrides,
                            normalisation, classes, input size
    DIR/weights/            orbax checkpoint of the nnx.Param and
                            nnx.BatchStat leaves, as a pure nested dict

Reloading needs no pickles: `load_compressed` rebuilds the pruned
architecture with `model_zoo.create` under `nnx.eval_shape` (no random init)
and restores the weights into it, as the Flax NNX checkpointing guide does.
The weights are stored as `nnx.to_pure_dict` (plain arrays under module
paths), not as `nnx.State`, so the files do not depend on how a Flax version
flattens its `Variable` objects.

A save is written to a temporary sibling directory and moved into place with
renames, so a killed save never leaves a directory that loads half a model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import model_zoo
from model_zoo.base import ZooModel
from model_zoo.convert.load import _materialise
from model_zoo.errors import UserError
from model_zoo.layers import check_no_adaptors

FORMAT = "practise-jax/compressed"
FORMAT_VERSION = 1
SPEC_FILE = "architecture.json"
WEIGHTS_DIR = "weights"
WEIGHTS = (nnx.Param, nnx.BatchStat)


@dataclasses.dataclass(frozen=True)
class CompressedSpec:
    """What `architecture.json` says: enough to rebuild and use the model."""

    model: str
    dropped: tuple[str, ...]
    overrides: dict[str, Any]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    input_size: int
    blocks: tuple[str, ...] = ()
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        from practise_jax import __version__

        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "practise_jax_version": __version__,
            "model": self.model,
            "dropped": list(self.dropped),
            "overrides": _json_overrides(self.overrides),
            "mean": list(self.mean),
            "std": list(self.std),
            "num_classes": self.num_classes,
            "input_size": self.input_size,
            "blocks": list(self.blocks),
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str) -> CompressedSpec:
        try:
            return cls(
                model=str(data["model"]),
                dropped=tuple(data["dropped"]),
                overrides=_python_overrides(data.get("overrides", {})),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                num_classes=int(data["num_classes"]),
                input_size=int(data["input_size"]),
                blocks=tuple(data.get("blocks", ())),
                extra=dict(data.get("extra") or {}),
                format_version=int(data["format_version"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"{source} is damaged ({type(error).__name__}: {error}); save the model again.") from None


# --------------------------------------------------------------------------- overrides <-> JSON


def _json_value(key: str, value: Any) -> Any:
    """A JSON-safe form of one constructor override; dtypes become {"dtype": name}."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(key, v) for v in value]
    try:
        return {"dtype": jnp.dtype(value).name}
    except TypeError:
        raise UserError(
            f"model override {key}={value!r} cannot be written to {SPEC_FILE}; "
            "use plain numbers, strings, lists or dtypes as overrides."
        ) from None


def _json_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _json_value(key, value) for key, value in sorted(overrides.items())}


def _python_value(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_python_value(v) for v in value)
    if isinstance(value, dict) and set(value) == {"dtype"}:
        return jnp.dtype(value["dtype"])
    return value


def _python_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _python_value(value) for key, value in overrides.items()}


# --------------------------------------------------------------------------- save


def spec_of(
    model: ZooModel,
    *,
    normalization: Mapping[str, Sequence[float]] | Sequence[Sequence[float]] | None = None,
    input_size: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> CompressedSpec:
    """The architecture spec of ``model`` (metadata from the registry unless given)."""
    info = model_zoo.get_info(model.model_name)
    overrides = dict(getattr(model, "overrides", ()))
    if normalization is None:
        mean, std = info.mean, info.std
    elif isinstance(normalization, Mapping):
        mean, std = normalization["mean"], normalization["std"]
    else:
        mean, std = normalization
    if len(mean) != 3 or len(std) != 3:
        raise UserError(f"normalization needs 3 means and 3 stds (RGB), got mean={list(mean)} std={list(std)}.")
    if extra is not None:
        try:
            json.dumps(dict(extra))
        except TypeError as error:
            raise UserError(f"extra metadata must be JSON-serialisable ({error}).") from None
    return CompressedSpec(
        model=model.model_name,
        dropped=tuple(model.dropped),
        overrides=overrides,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        num_classes=int(overrides.get("num_classes", info.num_classes)),
        input_size=int(input_size if input_size is not None else info.input_size),
        blocks=tuple(model.blocks),
        extra=dict(extra or {}),
    )


def _is_checkpoint(directory: Path) -> bool:
    return (directory / SPEC_FILE).is_file()


def save_compressed(
    directory: str | os.PathLike,
    model: ZooModel,
    *,
    normalization: Mapping[str, Sequence[float]] | Sequence[Sequence[float]] | None = None,
    extra: Mapping[str, Any] | None = None,
    input_size: int | None = None,
) -> CompressedSpec:
    """Write ``model`` (weights + architecture spec) to ``directory``; return the spec.

    ``normalization`` is ``{"mean": ..., "std": ...}`` or ``(mean, std)``
    (default: the registry's); ``extra`` is any JSON-serialisable metadata
    (accuracy, speed-up, command line); ``input_size`` defaults to the
    registry's. An existing checkpoint at ``directory`` is replaced; any other
    non-empty directory is refused rather than deleted.
    """
    check_no_adaptors(model, "cannot save a compressed checkpoint")
    directory = Path(directory).expanduser().resolve()
    spec = spec_of(model, normalization=normalization, input_size=input_size, extra=extra)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"'{directory}' is a file; choose a directory path for the checkpoint.")
    if directory.is_dir() and any(directory.iterdir()) and not _is_checkpoint(directory):
        raise UserError(
            f"'{directory}' is a non-empty directory that is not a practise-jax checkpoint; "
            "choose a new or empty directory (nothing was overwritten)."
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = directory.with_name(f".{directory.name}.saving-{token}")
    try:
        _write(staging, model, spec)
        _replace(staging, directory, token)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return spec


def _write(staging: Path, model: ZooModel, spec: CompressedSpec) -> None:
    import orbax.checkpoint as ocp

    staging.mkdir()
    weights = nnx.to_pure_dict(nnx.state(model, WEIGHTS))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(staging / WEIGHTS_DIR, weights)
        checkpointer.wait_until_finished()
    # The spec is written last: a directory without it is never taken for a checkpoint.
    tmp = staging / f"{SPEC_FILE}.tmp"
    tmp.write_text(json.dumps(spec.to_json(), indent=2) + "\n")
    os.replace(tmp, staging / SPEC_FILE)


def _replace(staging: Path, directory: Path, token: str) -> None:
    """Move ``staging`` to ``directory``; an old checkpoint there is set aside first, then deleted."""
    if not directory.exists():
        os.rename(staging, directory)
        return
    old = directory.with_name(f".{directory.name}.old-{token}")
    os.rename(directory, old)
    try:
        os.rename(staging, directory)
    except OSError:
        os.rename(old, directory)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- load


def read_spec(directory: str | os.PathLike) -> CompressedSpec:
    """The architecture spec of a checkpoint directory, with clear errors for anything else."""
    directory = Path(directory).expanduser()
    if not directory.exists():
        leftovers = sorted(p.name for p in directory.parent.glob(f".{directory.name}.*")) if directory.parent.is_dir() else []
        hint = f" ({', '.join(leftovers)} beside it are left from an interrupted save)" if leftovers else ""
        raise UserError(f"checkpoint directory '{directory}' does not exist{hint}; check the path.")
    if not directory.is_dir():
        raise UserError(f"'{directory}' is a file, not a checkpoint directory; pass the directory save_compressed wrote.")
    spec_file = directory / SPEC_FILE
    if not spec_file.is_file():
        raise UserError(
            f"'{directory}' is not a practise-jax checkpoint (it has no {SPEC_FILE}); "
            "pass a directory written by save_compressed or `practise-jax compress --out`."
        )
    try:
        data = json.loads(spec_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{spec_file} cannot be read as JSON ({error}); save the model again.") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{spec_file} is not a practise-jax architecture spec (no \"format\": \"{FORMAT}\").")
    version = data.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise UserError(
            f"{spec_file} has format version {version!r}, but this practise-jax reads versions 1..{FORMAT_VERSION}; "
            "upgrade practise-jax (or save the model again with this version)."
        )
    return CompressedSpec.from_json(data, str(spec_file))


def _shapes(tree) -> dict[str, tuple]:
    """``{"layer1.0.conv1.kernel": shape}`` for a nested dict of arrays or array metadata."""
    def name(path) -> str:
        return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)

    return {name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_shapes(stored: dict[str, tuple], wanted: dict[str, tuple], weights_dir: Path, described: str) -> None:
    missing = sorted(set(wanted) - set(stored))
    unexpected = sorted(set(stored) - set(wanted))
    mismatched = sorted(f"{k} {stored[k]} vs {wanted[k]}" for k in set(stored) & set(wanted) if stored[k] != wanted[k])
    if missing or unexpected or mismatched:
        problems = [f"{title}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
                    for title, items in (("missing", missing), ("unexpected", unexpected), ("shape (file vs model)", mismatched))
                    if items]
        raise UserError(f"the weights in '{weights_dir}' do not fit {described} ({'; '.join(problems)}); "
                        "the checkpoint is damaged, save the model again.")


def load_compressed(directory: str | os.PathLike) -> tuple[ZooModel, CompressedSpec]:
    """Rebuild the compressed model saved in ``directory``; return ``(model, spec)``, model in eval mode."""
    import orbax.checkpoint as ocp

    spec = read_spec(directory)
    weights_dir = Path(directory).expanduser().resolve() / WEIGHTS_DIR
    if not weights_dir.is_dir():
        raise UserError(f"checkpoint '{directory}' has no {WEIGHTS_DIR}/ folder; it is incomplete, save the model again.")
    abstract = nnx.eval_shape(lambda: model_zoo.create(spec.model, dropped=spec.dropped, **spec.overrides))
    graphdef, weights, rest = nnx.split(abstract, WEIGHTS, ...)
    target = nnx.to_pure_dict(weights)
    dropped = f"without {', '.join(spec.dropped)}" if spec.dropped else "with no blocks dropped"
    described = f"{spec.model} {dropped} as {SPEC_FILE} describes it"
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            # Compare shapes first: a failed orbax restore leaves its pending reads to be garbage-collected noisily.
            stored = checkpointer.metadata(weights_dir)
            _check_shapes(_shapes(getattr(stored, "item_metadata", stored)), _shapes(target), weights_dir, described)
            restored = checkpointer.restore(weights_dir, target)
    except UserError:
        raise
    except Exception as error:  # unreadable or damaged files
        raise UserError(
            f"could not read the weights in '{weights_dir}' ({type(error).__name__}: {str(error).splitlines()[0][:300]}); "
            "the checkpoint is damaged, save it again."
        ) from None
    nnx.replace_by_pure_dict(weights, restored)
    model = nnx.merge(graphdef, weights, jax.tree.map(_materialise, rest))
    model.eval()
    return model, spec
