"""Keras 3 models in and out: keras.applications ResNets and MobileNetV2 as zoo models, and back to Keras.

Keras is the reference: each family is built by ``keras.applications``
(``weights=None``, random weights and random BatchNorm statistics so that no
term hides), run by Keras on the JAX backend on its own ``preprocess_input``
output, and compared with our model fed the registry's normalisation of the
same uint8 images. Inputs are 32 px, the smallest Keras accepts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import missing, require  # noqa: E402

keras = require("keras", "pip install 'practise-jax[keras]'")
if keras.backend.backend() != "jax" or int(keras.__version__.split(".")[0]) < 3:
    missing(f"Keras model tests need Keras 3 with KERAS_BACKEND=jax; found keras {keras.__version__} on {keras.backend.backend()}")
require("h5py", "pip install 'practise-jax[keras]'")

import model_zoo  # noqa: E402
from model_zoo.convert.keras_import import assign, load_keras, read_keras  # noqa: E402
from practise_jax import checkpoint, surgery  # noqa: E402
from practise_jax.cli import main  # noqa: E402
from practise_jax.errors import UserError  # noqa: E402
from tiny_models import logits  # noqa: E402

ATOL = 1e-4
SIZE = 32
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

FAMILIES = {  # keras.applications builder, its preprocess_input, our registry name
    "ResNet50": (lambda **kw: keras.applications.ResNet50(**kw), keras.applications.resnet.preprocess_input, "keras_resnet50"),
    "ResNet50V2": (lambda **kw: keras.applications.ResNet50V2(**kw), keras.applications.resnet_v2.preprocess_input,
                   "keras_resnet50v2"),
    "MobileNetV2": (lambda **kw: keras.applications.MobileNetV2(alpha=0.35, **kw),
                    keras.applications.mobilenet_v2.preprocess_input, "keras_mobilenet_v2"),
}


def keras_model(family: str, *, classes: int = 10, activation: str | None = None, seed: int = 0):
    """A keras.applications model with random weights and random BatchNorm statistics."""
    build, _, _ = FAMILIES[family]
    model = build(input_shape=(SIZE, SIZE, 3), weights=None, classes=classes, classifier_activation=activation)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 2.0, var.shape)])
    return model


def uint8_images(n: int = 2, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def normalised(model, images: np.ndarray) -> np.ndarray:
    spec = model.input_spec
    return ((images / 255.0 - np.asarray(spec.mean)) / np.asarray(spec.std)).astype(np.float32)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def keras_outputs(model, images: np.ndarray, family: str) -> np.ndarray:
    _, preprocess, _ = FAMILIES[family]
    return np.asarray(model.predict(preprocess(images.astype(np.float32)), verbose=0))


@pytest.fixture(scope="module")
def mobilenet():
    return keras_model("MobileNetV2")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_keras_applications(family):
    reference = keras_model(family)
    ours = model_zoo.from_keras(reference)
    assert ours.model_name == FAMILIES[family][2] and ours.input_spec.size == SIZE
    x = uint8_images()
    np.testing.assert_allclose(logits(ours, normalised(ours, x)), keras_outputs(reference, x, family), atol=ATOL, rtol=0)


def test_keras_files_of_every_kind_give_the_same_model(tmp_path, mobilenet):
    mobilenet.save(tmp_path / "m.keras")
    mobilenet.save_weights(tmp_path / "m.weights.h5")
    mobilenet.save(tmp_path / "legacy.h5")  # Keras 2's layout: layer_names / weight_names attributes
    x = uint8_images()
    expected = keras_outputs(mobilenet, x, "MobileNetV2")
    for source in ("m.keras", "m.weights.h5", "legacy.h5"):
        ours = model_zoo.load("keras_mobilenet_v2", tmp_path / source) if source.endswith("weights.h5") \
            else model_zoo.from_keras(tmp_path / source)
        np.testing.assert_allclose(logits(ours, normalised(ours, x)), expected, atol=ATOL, rtol=0, err_msg=source)


def test_compressed_keras_model_keeps_keras_names_and_logits():
    reference = keras_model("ResNet50", activation="softmax")
    teacher = model_zoo.from_keras(reference)
    dropped = ("conv3_block2", "conv4_block4")
    student = surgery.drop(teacher, dropped)
    exported = model_zoo.to_keras(student, input_size=SIZE)
    x = uint8_images()
    # the export takes preprocess_input's output (BGR for ResNet v1) and keeps the softmax head. Probabilities from
    # two differently compiled float32 ResNet-50s agree to a few 1e-6 relative (a wrong weight or order: 1e-1)
    np.testing.assert_allclose(keras_outputs(exported, x, "ResNet50"), softmax(logits(student, normalised(student, x))),
                               atol=1e-6, rtol=1e-5)
    with_weights = {layer.name for layer in reference.layers if layer.weights}
    kept = {name for name in with_weights if not name.startswith(tuple(f"{b}_" for b in dropped))}
    assert {layer.name for layer in exported.layers if layer.weights} == kept
    undropped = model_zoo.to_keras(teacher, input_size=SIZE)
    np.testing.assert_allclose(keras_outputs(undropped, x, "ResNet50"), keras_outputs(reference, x, "ResNet50"),
                               atol=1e-6, rtol=0)


def test_compress_keras_model_from_the_cli_writes_a_keras_student(tmp_path, capsys, mobilenet):
    mobilenet.save(tmp_path / "teacher.keras")
    out = tmp_path / "run"
    assert main(["compress", "--keras-model", str(tmp_path / "teacher.keras"), "--data", "synthetic:32", "--shots", "32",
                 "--blocks", "block_14,block_15", "--finetune-steps", "2", "--batch-size", "16", "--eval-every", "1",
                 "--latency-budget", "0.2", "--latency-batch-size", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{out}/student.keras" in printed and "mobilenet_v2.preprocess_input" in printed
    student, spec = checkpoint.load_compressed(out / "student")
    assert list(spec.dropped) == ["block_14", "block_15"] and dict(spec.overrides)["alpha"] == 0.35
    exported = keras.saving.load_model(out / "student.keras")
    x = uint8_images()
    np.testing.assert_allclose(keras_outputs(exported, x, "MobileNetV2"), logits(student, normalised(student, x)),
                               atol=ATOL, rtol=0)
    assert {layer.name for layer in exported.layers if layer.weights} == {
        layer.name for layer in mobilenet.layers if layer.weights and not layer.name.startswith(("block_14_", "block_15_"))}


def test_exported_model_loads_and_trains_in_a_fresh_process(tmp_path, mobilenet):
    student = surgery.drop(model_zoo.from_keras(mobilenet), ["block_15"])
    model_zoo.to_keras(student, input_size=SIZE).save(tmp_path / "student.keras")
    x = normalised(student, uint8_images(8))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", logits(student, x))
    script = textwrap.dedent(f"""
        import numpy as np, keras
        assert keras.backend.backend() == "jax"
        model = keras.saving.load_model({str(tmp_path / 'student.keras')!r})
        x = np.load({str(tmp_path / 'x.npy')!r})
        print("max_diff", float(np.abs(model.predict(x, verbose=0) - np.load({str(tmp_path / 'expected.npy')!r})).max()))
        model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(x, np.arange(8) % 10, batch_size=4, epochs=2, verbose=0)
        print("losses", *history.history["loss"])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": "jax"})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.startswith(("max_diff", "losses")))
    assert float(lines["max_diff"]) < ATOL
    assert all(np.isfinite(float(v)) for v in lines["losses"].split())


def test_an_unsupported_keras_model_is_named():
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, name="my_stem")(inputs)
    y = keras.layers.Conv2D(4, 3, padding="same", name="my_branch")(x)
    residual = keras.Model(inputs, keras.layers.Add(name="my_add")([x, y]))
    with pytest.raises(UserError, match=r"not an architecture practise-jax knows \(its layers begin .*my_stem.*Supported: "
                                        r"keras\.applications ResNet50"):
        model_zoo.from_keras(residual)
    plain = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(4, 3, name="conv"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, name="logits")])
    with pytest.raises(UserError, match="no residual blocks"):
        model_zoo.from_keras(plain)


def test_keras_files_that_do_not_fit_say_why(tmp_path, mobilenet):
    mobilenet.save(tmp_path / "m.keras")
    with pytest.raises(UserError, match="holds a keras_mobilenet_v2, not a keras_resnet50"):
        load_keras(tmp_path / "m.keras", model="keras_resnet50")
    (tmp_path / "cut.keras").write_bytes((tmp_path / "m.keras").read_bytes()[:5000])
    with pytest.raises(UserError, match="not a readable .keras file"):
        model_zoo.from_keras(tmp_path / "cut.keras")
    with zipfile.ZipFile(tmp_path / "old.keras", "w") as archive:  # another Keras version's layout
        archive.writestr("config.json", json.dumps({"class_name": "Functional", "config": {"layers": []}}))
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.0.0-alpha"}))
        archive.writestr("model.weights.h5", b"not hdf5")
    with pytest.raises(UserError, match=r"saved by Keras 3\.0\.0-alpha.*could not be read"):
        model_zoo.from_keras(tmp_path / "old.keras")
    resnet_weights = tmp_path / "r.weights.h5"
    keras_model("ResNet50V2").save_weights(resnet_weights)
    with pytest.raises(UserError, match="holds a keras_resnet50v2, not a keras_mobilenet_v2; use --model keras_resnet50v2"):
        model_zoo.load("keras_mobilenet_v2", resnet_weights)
    found = read_keras(tmp_path / "m.keras")
    del found.layers["block_3_project"]
    found.layers["Conv1"] = [np.zeros((3, 3, 3, 8), np.float32)]
    with pytest.raises(UserError, match=r"does not fit keras_mobilenet_v2: Conv1: shape \(3, 3, 3, 8\), expected "
                                        r"\(3, 3, 3, 16\); block_3_project: missing"):
        assign(model_zoo.from_keras(mobilenet), found)


def test_cli_refuses_keras_model_with_weights(tmp_path, capsys, mobilenet):
    mobilenet.save(tmp_path / "m.keras")
    assert main(["score", "--keras-model", str(tmp_path / "m.keras"), "--weights", "x.th", "--data", "synthetic:8",
                 "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "either as --keras-model FILE or as --model NAME --weights FILE" in err and "Traceback" not in err
