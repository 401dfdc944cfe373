"""Keras 3 export: same logits as the JAX model for every family (pruned), through save and reload.

Keras reads KERAS_BACKEND once, at its first import: it is set to ``jax`` here
(unless already set) before anything imports keras, and the tests skip when
another backend was chosen or keras is not installed.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import missing, require  # noqa: E402

keras = require("keras", "pip install 'practise-jax[keras]'")
if keras.backend.backend() != "jax" or int(keras.__version__.split(".")[0]) < 3:
    missing(f"Keras export tests need Keras 3 with KERAS_BACKEND=jax; found keras {keras.__version__} on {keras.backend.backend()}")

from model_zoo.convert.keras_export import to_keras  # noqa: E402
from practise_jax import adaptors, checkpoint, protocol  # noqa: E402
from practise_jax.cli import main  # noqa: E402
from practise_jax.errors import UserError  # noqa: E402
from tiny_models import TINY, images, logits, tiny_model  # noqa: E402

ATOL = 1e-4
# Keras's own numpy conversion on save (keras/src/backend/jax/core.py) warns under numpy 2; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@pytest.mark.parametrize("name", list(TINY))
def test_keras_logits_match_and_survive_save_and_reload(tmp_path, name):
    model = tiny_model(name)
    exported = to_keras(model)
    x = images(name)
    ours = logits(model, x)
    np.testing.assert_allclose(exported.predict(x, verbose=0), ours, atol=ATOL, rtol=0)

    exported.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), ours, atol=ATOL, rtol=0)
    kept = {b.address for b in protocol.blocks(model)}
    groups = {address.split(".")[0] for address in kept}
    built = {".".join(layer.name.split(".")[:2]) for layer in reloaded.layers if layer.name.split(".")[0] in groups}
    assert built & set(protocol.addresses(model)) == kept  # exactly the kept blocks, under the teacher's names


def test_blocks_and_depthwise_convs_map_to_keras_layers():
    model = tiny_model("mobilenet_v2")
    layers = {layer.name: layer for layer in to_keras(model, input_size=64).layers}
    assert isinstance(layers["features.2.conv.1.0"], keras.layers.DepthwiseConv2D)
    assert isinstance(layers["features.2.conv.1.1"], keras.layers.BatchNormalization)
    assert layers["features.2.conv.1.1"].epsilon == pytest.approx(1e-5)
    # features.3 dropped: features.5 is residual, features.2 and .4 open stages; nothing is renumbered
    assert "features.5.add" in layers and "features.2.add" not in layers and "features.4.add" not in layers
    assert not any(name.startswith("features.3.") for name in layers)
    assert "features.18.0" in layers
    assert layers["images"].batch_shape == (None, 64, 64, 3)


def test_adaptors_must_be_folded_first():
    model = adaptors.attach(tiny_model("cifar_resnet20"), [adaptors.Site("layer3.1.conv1", adaptors.PRE)])
    model.layer3[1].conv1.pre[...] = jnp.eye(16) * 1.5
    with pytest.raises(UserError, match=r"layer3\.1\.conv1.*adaptors\.fold"):
        to_keras(model)
    adaptors.fold(model)
    x = images("cifar_resnet20")
    np.testing.assert_allclose(to_keras(model).predict(x, verbose=0), logits(model, x), atol=ATOL, rtol=0)


def test_cli_export(tmp_path, capsys):
    model = tiny_model("cifar_resnet20")
    checkpoint.save_compressed(tmp_path / "student", model)
    out = tmp_path / "export" / "model.keras"
    assert main(["export", "--checkpoint", str(tmp_path / "student"), "--format", "keras", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "without layer2.1" in printed and "max |output difference|" in printed
    x = images("cifar_resnet20")
    np.testing.assert_allclose(keras.saving.load_model(out).predict(x, verbose=0), logits(model, x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("argv, words", [
    (["--format", "onnx", "--out", "m.onnx"], "unknown export format 'onnx'; supported: keras"),
    (["--out", "m.h5"], "'.keras' file"),
])
def test_cli_export_errors(tmp_path, capsys, argv, words):
    assert main(["export", "--checkpoint", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
