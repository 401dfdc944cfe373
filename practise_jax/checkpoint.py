"""A compressed model on disk: orbax weights plus a JSON architecture spec.

Layout of a checkpoint directory::

    DIR/architecture.json   what to build: the registry name of the unpruned
                            model (null for a model of your own), dropped
                            blocks, filters kept per block (filter pruning),
                            constructor overrides, input normalisation,
                            classes, input size
    DIR/weights/            orbax checkpoint of the nnx.Param and
                            nnx.BatchStat leaves, as a pure nested dict

Reloading needs no pickles: `load_compressed` builds the unpruned network
under `nnx.eval_shape` (no random init; from the registry, or from the
``model`` you pass for a network of your own), applies the same surgery
(`practise_jax.surgery.drop`, `practise_jax.filter_pruning.narrow`) and
restores the weights into it, as the Flax NNX checkpointing guide does.
Format 1 (practise-jax 0.1) stored pruned models with renumbered blocks;
they load and get the teacher's addresses back.
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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from practise_jax import protocol, surgery
from practise_jax.adaptors import check_no_adaptors
from practise_jax.errors import UserError
from practise_jax.latency.programs import _materialise
from practise_jax.transforms import InputSpec

FORMAT = "practise-jax/compressed"
FORMAT_VERSION = 2  # 2: blocks keep the teacher's addresses; filters kept per block
SPEC_FILE = "architecture.json"
WEIGHTS_DIR = "weights"
WEIGHTS = (nnx.Param, nnx.BatchStat)


@dataclasses.dataclass(frozen=True)
class CompressedSpec:
    """What `architecture.json` says: enough to rebuild and use the model."""

    model: str | None  # registry name of the unpruned network; None for a network of your own
    dropped: tuple[str, ...]
    overrides: dict[str, Any]
    input_spec: InputSpec
    num_classes: int
    filters: dict[str, int] = dataclasses.field(default_factory=dict)  # block -> inner filters kept (filter pruning)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def mean(self) -> tuple[float, ...]:
        return self.input_spec.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.input_spec.std

    @property
    def input_size(self) -> int:
        return self.input_spec.size

    def to_json(self) -> dict[str, Any]:
        from practise_jax import __version__

        return {
            "format": FORMAT, "format_version": self.format_version, "practise_jax_version": __version__,
            "model": self.model, "dropped": list(self.dropped), "filters": dict(self.filters),
            "overrides": _json_overrides(self.overrides),
            "mean": list(self.mean), "std": list(self.std), "normalization": self.input_spec.source,
            "num_classes": self.num_classes, "input_size": self.input_size, "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str) -> CompressedSpec:
        try:
            spec = InputSpec(int(data["input_size"]), tuple(data["mean"]), tuple(data["std"]),
                             str(data.get("normalization", "checkpoint")))
            return cls(
                model=None if data["model"] is None else str(data["model"]),
                dropped=tuple(data["dropped"]),
                overrides=_python_overrides(data.get("overrides", {})),
                input_spec=spec,
                num_classes=int(data["num_classes"]),
                filters={str(k): int(v) for k, v in (data.get("filters") or {}).items()},
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
        raise UserError(f"model override {key}={value!r} cannot be written to {SPEC_FILE}; "
                        "use plain numbers, strings, lists or dtypes as overrides.") from None


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


def spec_of(model: nnx.Module, *, input_spec: InputSpec | None = None, extra: Mapping[str, Any] | None = None,
            num_classes: int | None = None) -> CompressedSpec:
    """The architecture spec of ``model``: its registry name, drop set, narrowed filters, normalisation."""
    from practise_jax.filter_pruning import kept_filters

    input_spec = input_spec or getattr(model, "input_spec", None)
    if input_spec is None:
        raise UserError(f"{type(model).__name__} carries no input normalisation (.input_spec); pass "
                        "input_spec=practise_jax.InputSpec(size, mean, std) so the checkpoint can be used later.")
    if extra is not None:
        try:
            json.dumps(dict(extra))
        except TypeError as error:
            raise UserError(f"extra metadata must be JSON-serialisable ({error}).") from None
    if num_classes is None:
        graphdef, state = nnx.split(model)
        spec = jax.ShapeDtypeStruct((1, input_spec.size, input_spec.size, 3), jnp.float32)
        num_classes = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x)[0], state, spec).shape[-1]
    return CompressedSpec(
        model=_registered_name(model), dropped=protocol.dropped(model), overrides=dict(getattr(model, "overrides", ())),
        input_spec=input_spec, num_classes=int(num_classes), filters=kept_filters(model), extra=dict(extra or {}))


def _registered_name(model: nnx.Module) -> str | None:
    import model_zoo

    name = getattr(model, "model_name", None)
    return name if name in model_zoo.list_models() else None


def _is_checkpoint(directory: Path) -> bool:
    return (directory / SPEC_FILE).is_file()


def save_compressed(directory: str | os.PathLike, model: nnx.Module, *, input_spec: InputSpec | None = None,
                    extra: Mapping[str, Any] | None = None) -> CompressedSpec:
    """Write ``model`` (weights + architecture spec) to ``directory``; return the spec.

    ``input_spec`` is the normalisation the model takes (default: the one it
    carries, ``model.input_spec``); ``extra`` is any JSON-serialisable
    metadata (accuracy, speed-up, command line). An existing checkpoint at
    ``directory`` is replaced; any other non-empty directory is refused rather than deleted.
    """
    check_no_adaptors(model, "cannot save a compressed checkpoint")
    protocol.check(model)
    directory = Path(directory).expanduser().resolve()
    spec = spec_of(model, input_spec=input_spec, extra=extra)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"'{directory}' is a file; choose a directory path for the checkpoint.")
    if directory.is_dir() and any(directory.iterdir()) and not _is_checkpoint(directory):
        raise UserError(f"'{directory}' is a non-empty directory that is not a practise-jax checkpoint; "
                        "choose a new or empty directory (nothing was overwritten).")
    directory.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = directory.with_name(f".{directory.name}.saving-{token}")
    try:
        _write(staging, model, spec)
        _replace(staging, directory, token)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return spec


def _write(staging: Path, model: nnx.Module, spec: CompressedSpec) -> None:
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
        raise UserError(f"'{directory}' is not a practise-jax checkpoint (it has no {SPEC_FILE}); "
                        "pass a directory written by save_compressed or `practise-jax compress --out`.")
    try:
        data = json.loads(spec_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{spec_file} cannot be read as JSON ({error}); save the model again.") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{spec_file} is not a practise-jax architecture spec (no \"format\": \"{FORMAT}\").")
    version = data.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise UserError(f"{spec_file} has format version {version!r}, but this practise-jax reads versions "
                        f"1..{FORMAT_VERSION}; upgrade practise-jax (or save the model again with this version).")
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
                        "the checkpoint is damaged or belongs to another model.")


def architecture(spec: CompressedSpec, model: nnx.Module | Callable[[], nnx.Module] | None = None) -> nnx.Module:
    """The abstract pruned network ``spec`` describes: the unpruned one (registry, or ``model``), then its surgery."""
    from practise_jax.filter_pruning import narrow

    if model is None:
        if spec.model is None:
            raise UserError("this checkpoint holds a network of your own (no registry name): pass the unpruned network "
                            "or a function building it, load_compressed(path, model=lambda: MyNet(...)).")
        import model_zoo

        abstract = nnx.eval_shape(lambda: model_zoo.create(spec.model, **spec.overrides))
    else:
        abstract = nnx.eval_shape(model) if callable(model) and not isinstance(model, nnx.Module) else model
    protocol.check(abstract)
    if spec.filters:
        abstract = narrow(abstract, spec.filters)
    return surgery.drop(abstract, spec.dropped) if spec.dropped else abstract


def _from_v1(stored: dict, spec: CompressedSpec, addresses: tuple[str, ...]) -> dict:
    """Format 1 renumbered the kept blocks of each group from 0; give them their teacher addresses back."""
    kept = [a for a in addresses if a not in set(spec.dropped)]
    renumbered: dict[str, list[str]] = {}
    for address in kept:
        renumbered.setdefault(protocol.split_address(address)[0], []).append(address)
    out = {k: v for k, v in stored.items() if k not in renumbered}
    for group, originals in renumbered.items():
        old = stored.get(group, {})
        out[group] = {protocol.split_address(originals[int(i)])[1]: v for i, v in old.items()}
    return out


def load_compressed(directory: str | os.PathLike,
                    model: nnx.Module | Callable[[], nnx.Module] | None = None) -> tuple[nnx.Module, CompressedSpec]:
    """Rebuild the compressed model saved in ``directory``; return ``(model, spec)``, the model in eval mode.

    ``model``: for a network outside the registry, the unpruned network (an
    instance, abstract or not) or a function that builds it.
    """
    import orbax.checkpoint as ocp

    spec = read_spec(directory)
    weights_dir = Path(directory).expanduser().resolve() / WEIGHTS_DIR
    if not weights_dir.is_dir():
        raise UserError(f"checkpoint '{directory}' has no {WEIGHTS_DIR}/ folder; it is incomplete, save the model again.")
    abstract = architecture(spec, model)
    graphdef, weights, rest = nnx.split(abstract, WEIGHTS, ...)
    target = nnx.to_pure_dict(weights)
    dropped = f"without {', '.join(spec.dropped)}" if spec.dropped else "with no blocks dropped"
    described = f"{spec.model or type(abstract).__name__} {dropped} as {SPEC_FILE} describes it"
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            # A target in the stored layout, on this process's first device: orbax restores each process its own copy.
            metadata = checkpointer.metadata(weights_dir)
            here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            layout = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
                                  getattr(metadata, "item_metadata", metadata))
            stored = checkpointer.restore(weights_dir, layout)
    except Exception as error:  # unreadable or damaged files
        raise UserError(f"could not read the weights in '{weights_dir}' ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:300]}); the checkpoint is damaged, save it again.") from None
    stored = _int_keys(stored)
    if spec.format_version == 1:
        stored = _from_v1(stored, spec, protocol.addresses(abstract))
    _check_shapes(_shapes(stored), _shapes(target), weights_dir, described)
    nnx.replace_by_pure_dict(weights, jax.tree.map(jnp.asarray, stored))
    restored = nnx.merge(graphdef, weights, jax.tree.map(_materialise, rest))
    restored.input_spec = spec.input_spec
    if spec.overrides or spec.model:
        restored.overrides = tuple(sorted(spec.overrides.items()))
    restored.eval()
    return restored, spec


def _int_keys(tree):
    """Orbax gives list indices back as strings ('0'); NNX pure dicts use ints."""
    if isinstance(tree, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in tree.items()}
    return tree
