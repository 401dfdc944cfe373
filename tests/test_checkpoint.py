"""Compressed checkpoints: orbax weights + architecture.json round trip, replacement, errors, and `eval --checkpoint`."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import practise_jax
from practise_jax import adaptors, checkpoint, protocol
from practise_jax.cli import main
from practise_jax.errors import UserError
from practise_jax.transforms import InputSpec
from tiny_models import TINY, images, logits, tiny_model


@pytest.mark.parametrize("name", list(TINY))
def test_round_trip_gives_identical_outputs(tmp_path, name):
    model = tiny_model(name)
    spec = checkpoint.save_compressed(tmp_path / "ckpt", model, extra={"top1": 12.5})
    loaded, read = practise_jax.load_compressed(tmp_path / "ckpt")

    x = images(name)
    np.testing.assert_array_equal(logits(loaded, x), logits(model, x))
    assert read == spec
    assert (loaded.model_name, protocol.dropped(loaded)) == (model.model_name, protocol.dropped(model))
    assert loaded.overrides == model.overrides and loaded.input_spec == model.input_spec
    assert all(bn.use_running_average for _, bn in nnx.iter_graph(loaded) if isinstance(bn, nnx.BatchNorm))

    data = json.loads((tmp_path / "ckpt" / "architecture.json").read_text())
    assert data["format_version"] == checkpoint.FORMAT_VERSION
    assert data["model"] == name and data["dropped"] == list(TINY[name][2])
    assert data["overrides"] == {k: list(v) if isinstance(v, tuple) else v for k, v in TINY[name][0].items()}
    assert data["num_classes"] == 10 and data["extra"] == {"top1": 12.5}


def test_spec_records_normalisation_input_size_and_dtype_overrides(tmp_path):
    model = tiny_model("cifar_resnet20")
    model.overrides = model.overrides + (("dtype", jnp.float32),)
    given = InputSpec(40, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "given")
    spec = checkpoint.save_compressed(tmp_path / "c", model, input_spec=given)
    data = json.loads((tmp_path / "c" / "architecture.json").read_text())
    assert data["mean"] == [0.5] * 3 and data["std"] == [0.25] * 3 and data["input_size"] == 40
    assert data["normalization"] == "given" and data["overrides"]["dtype"] == {"dtype": "float32"}
    loaded, read = checkpoint.load_compressed(tmp_path / "c")
    assert read.overrides["dtype"] == jnp.float32 and read.mean == (0.5, 0.5, 0.5) and spec.input_size == 40
    assert loaded.input_spec == given
    x = images("cifar_resnet20")
    np.testing.assert_array_equal(logits(loaded, x), logits(model, x))


def test_saving_over_a_checkpoint_replaces_it(tmp_path):
    target = tmp_path / "ckpt"
    first, second = tiny_model("cifar_resnet20", seed=0), tiny_model("cifar_resnet20", seed=1, dropped=("layer1.2",))
    checkpoint.save_compressed(target, first)
    checkpoint.save_compressed(target, second)
    loaded, spec = checkpoint.load_compressed(target)
    assert spec.dropped == ("layer1.2",)
    x = images("cifar_resnet20")
    np.testing.assert_array_equal(logits(loaded, x), logits(second, x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging or old copies left behind


def test_a_save_killed_midway_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    old = tiny_model("cifar_resnet20", seed=0)
    checkpoint.save_compressed(target, old)

    def killed(staging, model, spec):  # the weights are written, then the process dies before the spec
        (staging / checkpoint.WEIGHTS_DIR).mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "_write", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_compressed(target, tiny_model("cifar_resnet20", seed=1))
    monkeypatch.undo()
    loaded, _ = checkpoint.load_compressed(target)
    x = images("cifar_resnet20")
    np.testing.assert_array_equal(logits(loaded, x), logits(old, x))
    # a staging folder without architecture.json (as after a real kill) is never a checkpoint
    (tmp_path / ".half").mkdir()
    (tmp_path / ".half" / checkpoint.WEIGHTS_DIR).mkdir()
    with pytest.raises(UserError, match="not a practise-jax checkpoint"):
        checkpoint.load_compressed(tmp_path / ".half")


def test_missing_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        checkpoint.load_compressed(tmp_path / "nope")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(UserError, match="not a practise-jax checkpoint.*architecture.json"):
        checkpoint.load_compressed(tmp_path)
    (tmp_path / "architecture.json").write_text(json.dumps({"model": "resnet18"}))
    with pytest.raises(UserError, match="not a practise-jax architecture spec"):
        checkpoint.load_compressed(tmp_path)
    (tmp_path / "architecture.json").write_text("{ not json")
    with pytest.raises(UserError, match="cannot be read as JSON"):
        checkpoint.load_compressed(tmp_path)


def test_unknown_format_version(tmp_path):
    checkpoint.save_compressed(tmp_path / "c", tiny_model("cifar_resnet20"))
    spec_file = tmp_path / "c" / "architecture.json"
    data = json.loads(spec_file.read_text())
    spec_file.write_text(json.dumps(data | {"format_version": checkpoint.FORMAT_VERSION + 1}))
    with pytest.raises(UserError, match="format version 3.*upgrade practise-jax"):
        checkpoint.load_compressed(tmp_path / "c")


def test_weights_that_do_not_fit_the_spec(tmp_path):
    checkpoint.save_compressed(tmp_path / "c", tiny_model("cifar_resnet20"))
    spec_file = tmp_path / "c" / "architecture.json"
    spec_file.write_text(json.dumps(json.loads(spec_file.read_text()) | {"overrides": {"widths": [8, 8, 16]}}))
    with pytest.raises(UserError, match="do not fit cifar_resnet20"):
        checkpoint.load_compressed(tmp_path / "c")


def test_save_refuses_a_foreign_directory_and_adaptors(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a practise-jax checkpoint.*nothing was overwritten"):
        checkpoint.save_compressed(tmp_path, tiny_model("cifar_resnet20"))
    assert (tmp_path / "mine.txt").read_text() == "keep me"

    model = adaptors.attach(tiny_model("cifar_resnet20"), [adaptors.Site("layer2.2.conv1", adaptors.PRE)])
    with pytest.raises(UserError, match=r"layer2\.2\.conv1.*adaptors\.fold"):
        checkpoint.save_compressed(tmp_path / "c", model)


def test_a_format_1_checkpoint_gets_its_teacher_addresses_back(tmp_path):
    """practise-jax 0.1 renumbered kept blocks (layer2.2 saved as layer2.1); such checkpoints still load."""
    import orbax.checkpoint as ocp

    model = tiny_model("cifar_resnet20")  # without layer2.1
    checkpoint.save_compressed(tmp_path / "c", model)
    pure = nnx.to_pure_dict(nnx.state(model, (nnx.Param, nnx.BatchStat)))
    pure["layer2"] = {new: pure["layer2"][old] for new, old in ((0, 0), (1, 2))}
    weights = tmp_path / "c" / checkpoint.WEIGHTS_DIR
    import shutil
    shutil.rmtree(weights)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(weights, pure)
    spec_file = tmp_path / "c" / checkpoint.SPEC_FILE
    spec_file.write_text(json.dumps(json.loads(spec_file.read_text()) | {"format_version": 1}))
    loaded, spec = checkpoint.load_compressed(tmp_path / "c")
    x = images("cifar_resnet20")
    np.testing.assert_array_equal(logits(loaded, x), logits(model, x))


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny CIFAR ResNet-20 checkpoint and a tiny npz of 32 x 32 images."""
    tmp_path = tmp_path_factory.mktemp("cli")
    model = tiny_model("cifar_resnet20")
    checkpoint.save_compressed(tmp_path / "student", model, input_spec=InputSpec(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    normalised = (pixels.astype(np.float32) / 255 - 0.5) / 0.25
    predictions = logits(model, normalised).argmax(-1)
    labels = np.where(np.arange(12) < 9, predictions, (predictions + 1) % 10)  # 9 of 12 right: 75 %
    np.savez(tmp_path / "tiny.npz", images=pixels, labels=labels)
    return tmp_path / "student", tmp_path / "tiny.npz"


def test_cli_eval_checkpoint(capsys, saved):
    ckpt, npz = saved
    assert main(["eval", "--checkpoint", str(ckpt), "--data", f"npz:{npz}", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "cifar_resnet20" and result["dropped"] == ["layer2.1"]
    assert result["images"] == 12 and result["top1"] == pytest.approx(75.0)


@pytest.mark.parametrize("extra, words", [
    (["--weights", "w.th"], "either --checkpoint DIR or --weights FILE"),
    (["--drop", "layer1.1"], "leave out --drop"),
    (["--model", "resnet18"], "holds a cifar_resnet20, not a resnet18"),
])
def test_cli_eval_checkpoint_refuses_conflicting_options(capsys, saved, extra, words):
    ckpt, npz = saved
    assert main(["eval", "--checkpoint", str(ckpt), "--data", f"npz:{npz}", *extra]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_cli_eval_needs_a_model_or_a_checkpoint(capsys, saved):
    _, npz = saved
    assert main(["eval", "--data", f"npz:{npz}"]) == 2
    assert "--model NAME" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(npz.parent / "nope"), "--data", f"npz:{npz}"]) == 2
    assert "does not exist" in capsys.readouterr().err
