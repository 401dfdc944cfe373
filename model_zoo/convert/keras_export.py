"""Export a zoo model (pruned or not) to a Keras 3 functional model.

The Keras graph is rebuilt from the NNX modules themselves: each family says
how in its own file (``model.keras(builder, x)`` for the stem, neck and head,
``block.keras(builder, x, name)`` per block), with the layer helpers of
`KerasBuilder`; the kept blocks (`practise_jax.protocol.blocks`) are built,
dropped ones are not. Weights are copied from the NNX state. What is kept exact:

- convs: explicit ``ZeroPadding2D`` with the conv's symmetric padding, then a
  ``'valid'`` conv (Keras ``'same'`` pads asymmetrically at stride 2, as
  Flax's does); depthwise convs become ``DepthwiseConv2D``;
- BatchNorm: ``BatchNormalization`` with the model's epsilon (1e-5) and
  momentum, in inference mode when called with ``training=False``;
- the ResNet stem max-pool: ``ZeroPadding2D(1)`` + ``MaxPooling2D(3, 2)``.
  Zero padding equals the -inf padding of ``nnx.max_pool`` here because the
  pool follows a ReLU (inputs >= 0);
- CIFAR option-A shortcuts: ``MaxPooling2D(pool_size=1, strides=2)`` picks
  ``x[:, ::2, ::2]``, and the channel zero-padding is a ``ZeroPadding2D``
  between two ``Permute`` layers. Only built-in layers are used, so the saved
  ``.keras`` file reloads with ``keras.saving.load_model`` and no custom code.

The Keras model takes normalised float32 images, NHWC (channels-last), and
returns logits, like ``model(x)[0]`` (the Keras families: what their
``classifier_activation`` makes of them, softmax by default, as
``keras.applications`` does). Layer names are the model's own
(``layer2.0.conv1``, ``features.3.conv.1.0``; ``conv3_block2_1_conv`` in the
Keras families); kept blocks keep the teacher's addresses.

Keras reads ``KERAS_BACKEND`` once, at its first import; this module sets it
to ``jax`` (``os.environ.setdefault``) before importing keras, so set it
yourself before any keras import to use another backend.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from practise_jax import protocol
from practise_jax.adaptors import check_no_adaptors
from practise_jax.errors import UserError

# Every weight is overwritten right after its layer is built; zero init skips Keras's random
# initialisers, which on the JAX backend compile one XLA program per weight shape (seconds in all).
ZEROS = "zeros"


def import_keras():
    """``keras`` (3.x), on the JAX backend unless ``KERAS_BACKEND`` already says otherwise."""
    os.environ.setdefault("KERAS_BACKEND", "jax")  # must precede the first `import keras`
    try:
        import keras
    except ImportError:
        raise UserError("Keras export needs Keras 3: pip install 'practise-jax[keras]' (or pip install 'keras>=3.5').") from None
    if int(keras.__version__.split(".")[0]) < 3:
        raise UserError(f"Keras export needs Keras 3, found keras {keras.__version__}: pip install 'keras>=3.5'.")
    return keras


def _array(variable) -> np.ndarray:
    return np.asarray(variable[...], np.float32)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class KerasBuilder:
    """Calls Keras layers on symbolic tensors and copies each layer's weights once it is built."""

    def __init__(self, keras):
        self.keras = keras
        self.layers = keras.layers

    def conv(self, x, conv: nnx.Conv, name: str, *, reverse_input: bool = False):
        """A conv as ``Conv2D`` / ``DepthwiseConv2D``; ``reverse_input``: the Keras layer takes BGR where ``conv`` takes RGB."""
        if any(d not in (None, 1, (1, 1)) for d in (conv.kernel_dilation, conv.input_dilation)):
            raise ValueError(f"{name}: dilated convs are not supported by the Keras export")
        padding, keras_padding = conv.padding, "valid"
        if isinstance(padding, str):
            if padding.upper() not in ("VALID", "SAME"):
                raise ValueError(f"{name}: padding {padding!r} has no Keras equivalent")
            keras_padding, padding = padding.lower(), ((0, 0), (0, 0))  # Flax's SAME is TensorFlow's, as Keras'
        padding = tuple(tuple(int(p) for p in side) for side in padding)
        if any(p for side in padding for p in side):
            x = self.layers.ZeroPadding2D(padding, name=f"{name}.pad")(x)
        kernel = _array(conv.kernel)  # HWIO; grouped convs: (h, w, in / groups, out)
        if reverse_input:
            kernel = kernel[:, :, ::-1]
        h, w, _, out = kernel.shape
        groups = conv.feature_group_count
        common = dict(strides=_pair(conv.strides or 1), padding=keras_padding, use_bias=conv.use_bias, name=name,
                      bias_initializer=ZEROS)
        if groups > 1 and groups == conv.in_features:
            multiplier = out // groups
            layer = self.layers.DepthwiseConv2D((h, w), depth_multiplier=multiplier, depthwise_initializer=ZEROS, **common)
            kernel = kernel.reshape(h, w, groups, multiplier)  # out channel g * multiplier + m
        else:
            layer = self.layers.Conv2D(out, (h, w), groups=groups, kernel_initializer=ZEROS, **common)
        y = layer(x)
        layer.set_weights([kernel] + ([_array(conv.bias)] if conv.use_bias else []))
        return y

    def batch_norm(self, x, bn: nnx.BatchNorm, name: str):
        layer = self.layers.BatchNormalization(
            axis=-1, epsilon=bn.epsilon, momentum=bn.momentum, center=bn.use_bias, scale=bn.use_scale, name=name,
        )
        y = layer(x)
        weights = ([_array(bn.scale)] if bn.use_scale else []) + ([_array(bn.bias)] if bn.use_bias else [])
        layer.set_weights(weights + [_array(bn.mean), _array(bn.var)])
        return y

    def dense(self, x, linear: nnx.Linear, name: str, activation: str | None = None):
        layer = self.layers.Dense(linear.out_features, use_bias=linear.use_bias, activation=activation,
                                  kernel_initializer=ZEROS, name=name)
        y = layer(x)
        layer.set_weights([_array(linear.kernel)] + ([_array(linear.bias)] if linear.use_bias else []))
        return y

    def relu(self, x, name: str, max_value: float | None = None):
        return self.layers.ReLU(max_value=max_value, name=name)(x)

    def add(self, a, b, name: str):
        return self.layers.Add(name=name)([a, b])

    def sequential(self, x, seq: nnx.Sequential, name: str):
        """An ``nnx.Sequential`` of convs, BNs, activations (and nested Sequentials), named by index."""
        for i, layer in enumerate(seq.layers):
            x = self.module(x, layer, f"{name}.{i}")
        return x

    def module(self, x, module, name: str):
        if isinstance(module, nnx.Sequential):
            return self.sequential(x, module, name)
        if isinstance(module, nnx.Conv):
            return self.conv(x, module, name)
        if isinstance(module, nnx.BatchNorm):
            return self.batch_norm(x, module, name)
        if isinstance(module, nnx.Linear):
            return self.dense(x, module, name)
        if isinstance(module, nnx.Dropout):
            return self.layers.Dropout(module.rate, name=name)(x)
        if module is jax.nn.relu6:
            return self.relu(x, name, max_value=6.0)
        if module is jax.nn.relu or module is nnx.relu:
            return self.relu(x, name)
        raise ValueError(f"{name}: no Keras equivalent for {module!r}")

    def blocks(self, model, x):
        """Every kept residual block of ``model``, in forward order, by its own ``keras`` method."""
        for block in protocol.blocks(model):
            x = block.module.keras(self, x, block.address)
        return x

    def channel_pad(self, x, before: int, after: int, name: str):
        """Zero-pad the channel axis: move channels to a spatial position, pad, move back."""
        x = self.layers.Permute((3, 1, 2), name=f"{name}.to_chw")(x)
        x = self.layers.ZeroPadding2D(((before, after), (0, 0)), name=f"{name}.pad_channels")(x)
        return self.layers.Permute((2, 3, 1), name=f"{name}.to_hwc")(x)


def to_keras(model: nnx.Module, *, input_size: int | None = None, name: str | None = None):
    """A ``keras.Model`` computing ``model``'s logits from normalised NHWC float32 images.

    ``input_size`` fixes the spatial input shape (default: any height and
    width). Adaptors must be folded first (`practise_jax.adaptors.fold`).
    """
    check_no_adaptors(model, "cannot export")
    unsupported = [type(b.module).__name__ for b in protocol.blocks(model) if not hasattr(b.module, "keras")]
    if not hasattr(model, "keras") or unsupported:
        raise UserError(f"no Keras export for {type(model).__name__}: the model and each block need a keras(builder, ...) "
                        "method (the zoo families have them; see model_zoo/cifar_resnet.py).")
    keras = import_keras()
    builder = KerasBuilder(keras)
    inputs = keras.Input(shape=(input_size, input_size, 3), dtype="float32", name="images")
    x, classify = model.keras(builder, inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name=getattr(model, "keras_pool", "pool"))(x)
    logits = classify(pooled)
    return keras.Model(inputs, logits, name=name or getattr(model, "model_name", type(model).__name__))


def exported_outputs(model: nnx.Module, logits):
    """What the exported model returns for ``logits``: the logits, or what the Keras head's activation makes of them."""
    activation = getattr(model, "classifier_activation", None)
    return logits if activation in (None, "linear") else np.asarray(import_keras().activations.get(activation)(logits))


def describe_io(model: nnx.Module, mean, std, input_size: int | None) -> str:
    """The exported model's input and output, in words (the Keras families: the ``preprocess_input`` they take)."""
    size = "any size" if input_size is None else f"{input_size}x{input_size}x3"
    preprocessing = getattr(model, "keras_preprocessing", None)
    given = (f"the output of {preprocessing}" if preprocessing
             else f"normalised float32 NHWC, mean {list(mean)} std {list(std)}")
    activation = getattr(model, "classifier_activation", None)
    return f"input: {given}, {size}; output: {'logits' if activation in (None, 'linear') else activation}"


def save_keras(model: nnx.Module, out, *, input_size: int | None, mean, std, check: bool = True) -> dict:
    """Export ``model`` to the ``.keras`` file ``out``; what it takes and returns, and (``check``) its largest
    output difference from ``model`` on a random batch."""
    exported = to_keras(model, input_size=input_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    exported.save(out)
    saved = {"path": str(out), "parameters": int(exported.count_params()), "io": describe_io(model, mean, std, input_size)}
    if check:
        size = input_size or 32
        images = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
        graphdef, state = nnx.split(model)
        ours = exported_outputs(model, np.asarray(jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)[0])(state, images)))
        saved["max_difference"] = float(np.abs(ours - np.asarray(exported.predict(images, verbose=0))).max())
    return saved

