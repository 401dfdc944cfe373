"""Keras models in: ``keras.applications`` ResNets and MobileNetV2 as zoo models, from memory or from files.

Three sources, read without TensorFlow:

* a live ``keras.Model`` (any backend);
* a ``.keras`` file: a zip of ``config.json`` (the architecture, the input
  shape, the classifier's activation), ``metadata.json`` (the Keras version)
  and ``model.weights.h5``, read with h5py; Keras itself is not needed;
* a weights file: Keras 3's ``.weights.h5`` (each layer's variables under
  ``layers/<class>_<n>/vars``, named in the group's ``name`` attribute) or
  the legacy Keras 2 ``.h5`` layout that ``keras.applications`` downloads
  (``layer_names`` / ``weight_names`` attributes).

The family is recognised from the layer names (``conv2_block1_preact_bn``
says ResNet v2, ``block_16_project`` MobileNetV2; the stage sizes say 50, 101
or 152); widths, classes, input size and classifier activation from the
weights and the config. Each Keras layer then fills the NNX module of the
same name (``model.keras_layers()``), shapes checked; anything that does not
fit is named in one error.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
from flax import nnx

from model_zoo import registry
from practise_jax import surgery
from practise_jax.errors import UserError
from practise_jax.latency.programs import materialise

SUPPORTED = ("keras.applications ResNet50, ResNet101, ResNet152 (keras_resnet50/101/152), ResNet50V2/101V2/152V2 "
             "(keras_resnet50v2/101v2/152v2) and MobileNetV2 (keras_mobilenet_v2)")
STAGE_SIZES = {(3, 4, 6, 3): "50", (3, 4, 23, 3): "101", (3, 8, 36, 3): "152"}


@dataclasses.dataclass
class KerasWeights:
    """What a Keras source holds: each layer's weights (Keras order) and what the config says about the model."""

    layers: dict[str, list[np.ndarray]]
    source: str
    input_size: int | None = None
    classifier_activation: str | None = None
    keras_version: str | None = None
    layer_order: tuple[str, ...] = ()  # every layer of the config in order, weightless ones included


def read_keras(source) -> KerasWeights:
    """The layers of a live ``keras.Model``, a ``.keras`` file, or a ``.weights.h5`` / legacy ``.h5`` file."""
    if not isinstance(source, (str, Path)):
        return _from_model(source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise UserError(f"Keras file '{source}' does not exist.")
    if path.suffix == ".keras":
        return _from_keras_file(path)
    if path.suffix == ".h5":
        return _from_h5(path, path.read_bytes(), f"'{path}'")
    raise UserError(f"'{source}' is not a Keras file; give a .keras model, a .weights.h5 or a Keras .h5 weights file.")


def _from_model(model) -> KerasWeights:
    if not (hasattr(model, "layers") and hasattr(model, "get_config")):
        raise UserError(f"expected a keras.Model, a .keras file or a .weights.h5 file; got a {type(model).__name__}.")
    layers = {layer.name: [np.asarray(w) for w in layer.get_weights()] for layer in model.layers if layer.weights}
    shape = model.input_shape if not isinstance(model.input_shape, list) else model.input_shape[0]
    return KerasWeights(layers, f"the Keras model '{model.name}'", _square(shape[1:3]),
                        _activation(model.get_config()), _keras_version(), tuple(layer.name for layer in model.layers))


def _keras_version() -> str | None:
    try:
        import keras

        return keras.__version__
    except ImportError:
        return None


def _square(shape) -> int | None:
    height, width = (None, None) if shape is None else tuple(shape)
    return int(height) if height is not None and height == width else None


def _activation(config: dict) -> str | None:
    """The activation of the Dense layer named ``predictions``, from a functional model's config."""
    for layer in config.get("layers", []):
        if layer.get("class_name") == "Dense" and layer.get("config", {}).get("name") == "predictions":
            activation = layer["config"].get("activation")
            return None if activation in (None, "linear") else str(activation)
    return None


def _from_keras_file(path: Path) -> KerasWeights:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if not {"config.json", "model.weights.h5"} <= names:
                raise UserError(f"'{path}' is a zip but not a Keras 3 model file (it lacks config.json or "
                                "model.weights.h5); save the model with model.save('model.keras').")
            config = json.loads(archive.read("config.json"))
            version = json.loads(archive.read("metadata.json")).get("keras_version") if "metadata.json" in names else None
            weights = archive.read("model.weights.h5")
    except zipfile.BadZipFile:
        raise UserError(f"'{path}' is not a readable .keras file (not a zip archive, or a truncated one).") from None
    found = _from_h5(path, weights, f"'{path}'", version)
    inner = config.get("config", {})
    inputs = [layer for layer in inner.get("layers", []) if layer.get("class_name") == "InputLayer"]
    shape = inputs[0]["config"].get("batch_shape") if inputs else None
    found.input_size = _square(shape[1:3]) if shape else None
    found.classifier_activation = _activation(inner)
    found.keras_version = version
    found.layer_order = tuple(layer.get("name") or layer.get("config", {}).get("name") for layer in inner.get("layers", []))
    if config.get("class_name") not in ("Functional", "Sequential", "Model"):
        raise UserError(f"'{path}' holds a {config.get('class_name')} (a subclassed model); only functional models "
                        f"can be read, such as {SUPPORTED}.")
    return found


def _from_h5(path: Path, data: bytes, source: str, version: str | None = None) -> KerasWeights:
    try:
        import h5py
    except ImportError:
        raise UserError("reading Keras weight files needs h5py: pip install 'practise-jax[keras]' (or pip install h5py).") from None
    try:
        with h5py.File(io.BytesIO(data), "r") as handle:
            root = handle["model_weights"] if "model_weights" in handle else handle
            layers = _legacy_layers(root) if "layer_names" in root.attrs else _keras3_layers(root)
    except (OSError, KeyError, ValueError) as error:
        made = f" (saved by Keras {version})" if version else ""
        raise UserError(f"{source}{made} could not be read as Keras weights ({type(error).__name__}: {error}); "
                        "it may be truncated, or written by a Keras version whose layout this reader does not know: "
                        "load it in that Keras and save it again with model.save('model.keras').") from None
    if not layers:
        raise UserError(f"{source} holds no layer weights.")
    return KerasWeights(layers, source, keras_version=version)


def _keras3_layers(root) -> dict[str, list[np.ndarray]]:
    """``layers/<class>_<n>/vars/<i>``, the layer's own name in the ``vars`` group's ``name`` attribute."""
    layers = {}
    group = root["layers"]
    for key in group:
        variables = group[key].get("vars")
        if variables is None or not len(variables):
            continue
        name = variables.attrs.get("name", key)
        layers[str(name)] = [np.asarray(variables[str(i)]) for i in range(len(variables))]
    return layers


def _legacy_layers(root) -> dict[str, list[np.ndarray]]:
    """Keras 2's layout: ``layer_names`` on the root, ``weight_names`` on each layer's group."""
    layers = {}
    for name in root.attrs["layer_names"]:
        name = name.decode() if isinstance(name, bytes) else str(name)
        weight_names = [w.decode() if isinstance(w, bytes) else str(w) for w in root[name].attrs.get("weight_names", [])]
        if weight_names:
            layers[name] = [np.asarray(root[name][w]) for w in weight_names]
    return layers


def identify(found: KerasWeights) -> tuple[str, dict]:
    """The zoo model (registry name) and constructor overrides that ``found`` fits; a clear error otherwise."""
    names = set(found.layers) | set(found.layer_order)
    head = found.layers.get("predictions")
    overrides: dict = {}
    if head:
        overrides["num_classes"] = int(head[0].shape[-1])
    overrides["classifier_activation"] = found.classifier_activation
    if "conv1_conv" in names and any(n.startswith("conv2_block1_") for n in names):
        sizes = tuple(max((int(m.group(1)) for n in names if (m := re.match(rf"conv{s}_block(\d+)_", n))), default=0)
                      for s in range(2, 6))
        depth = STAGE_SIZES.get(sizes)
        if depth is None:
            raise UserError(f"{found.source} is a ResNet with stages of {sizes} blocks; supported are {SUPPORTED}.")
        version = "v2" if "conv2_block1_preact_bn" in names else ""
        return f"keras_resnet{depth}{version}", overrides
    if "Conv1" in names and "block_16_project" in names:
        overrides["alpha"] = _mobilenet_alpha(int(found.layers["Conv1"][0].shape[-1]), int(found.layers["Conv_1"][0].shape[-1]))
        return "keras_mobilenet_v2", overrides
    listed = ", ".join(list(found.layer_order or found.layers)[:6])
    residual = "" if any("add" in n.lower() or n.endswith("_out") for n in names) else " It has no residual blocks (no Add layer)."
    raise UserError(f"{found.source} is not an architecture practise-jax knows (its layers begin {listed}).{residual} "
                    f"Supported: {SUPPORTED}; other models: follow the model protocol (practise_jax.protocol).")


def _mobilenet_alpha(stem: int, last: int) -> float:
    """Keras' width multiplier from the stem and last conv widths (the alphas keras.applications offers)."""
    from model_zoo.mobilenetv2 import make_divisible

    for alpha in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4):
        if make_divisible(32 * alpha) == stem and (make_divisible(1280 * alpha) if alpha > 1.0 else 1280) == last:
            return alpha
    raise UserError(f"a MobileNetV2 with a {stem}-channel stem and a {last}-channel last conv matches no alpha of "
                    "keras.applications (0.35, 0.5, 0.75, 1.0, 1.3, 1.4).")


def assign(model, found: KerasWeights) -> None:
    """Copy every Keras layer into the module of the same name (``model.keras_layers()``); one error for all misfits."""
    expected = model.keras_layers()
    reversed_input = getattr(model, "keras_reversed_input", None)
    problems, unused = [], sorted(set(found.layers) - set(expected))
    for name, module in expected.items():
        arrays = found.layers.get(name)
        if arrays is None:
            problems.append(f"{name}: missing")
            continue
        targets = _targets(module)
        if len(arrays) != len(targets):
            problems.append(f"{name}: {len(arrays)} weights, expected {len(targets)}")
            continue
        for (variable, reshape), array in zip(targets, arrays):
            array = np.asarray(array, np.float32)
            if name == reversed_input and array.ndim == 4:
                array = array[:, :, ::-1]  # Keras' stem reads BGR
            want = variable[...].shape
            if reshape:
                array = array.reshape(want) if array.size == np.prod(want) else array
            if array.shape != want:
                problems.append(f"{name}: shape {array.shape}, expected {want}")
                break
            variable[...] = array
    if problems or unused:
        listed = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        extra = f"{'; ' if problems else ''}layers the model lacks: {', '.join(unused[:5])}" if unused else ""
        raise UserError(f"{found.source} does not fit {getattr(model, 'model_name', type(model).__name__)}: "
                        f"{listed}{extra}. Supported: {SUPPORTED}.")


def _targets(module) -> list[tuple[object, bool]]:
    """The module's variables in Keras' weight order, and whether the Keras array needs a reshape (depthwise)."""
    if isinstance(module, nnx.BatchNorm):
        return ([(module.scale, False)] if module.use_scale else []) + ([(module.bias, False)] if module.use_bias else []) + [
            (module.mean, False), (module.var, False)]
    depthwise = isinstance(module, nnx.Conv) and module.feature_group_count > 1
    return [(module.kernel, depthwise)] + ([(module.bias, False)] if module.use_bias else [])


def is_keras_file(path) -> bool:
    return isinstance(path, (str, Path)) and Path(path).suffix in (".keras", ".h5")


def load_keras(source, *, model: str | None = None, dropped=()):
    """A zoo model holding the weights of a Keras model or file, in eval mode; ``model`` checks the family found.

    The input normalisation is the one ``keras.applications`` documents for
    the family (``caffe`` for ResNet v1, [-1, 1] for ResNet v2 and
    MobileNetV2), marked assumed; the input size the Keras model's, else 224.
    """
    found = read_keras(source)
    name, overrides = identify(found)
    if model is not None and model != name:
        raise UserError(f"{found.source} holds a {name}, not a {model}; use --model {name} (or --keras-model alone).")
    abstract = nnx.eval_shape(lambda: registry.create(name, **overrides))
    graphdef, state = nnx.split(abstract)
    built = nnx.merge(graphdef, materialise(state))  # zeros, every variable then filled by assign
    assign(built, found)
    built.input_spec = dataclasses.replace(abstract.input_spec, size=found.input_size or abstract.input_spec.size)
    built.eval()
    return surgery.drop(built, dropped) if dropped else built
