"""Every mistake a user can make ends in one clear message, and the CLI prints it without a traceback."""

import numpy as np
import pytest

import model_zoo
from practise_jax.errors import UserError
from practise_jax import data as data_lib
from practise_jax.cli import main


def run_cli(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def tiny_npz(tmp_path):
    path = tmp_path / "tiny.npz"
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), labels=np.arange(6) % 3)
    return path


def test_unknown_model(capsys, tiny_npz):
    status, _, err = run_cli(capsys, "eval", "--model", "resnet999", "--data", f"npz:{tiny_npz}")
    assert status == 2
    assert "unknown model 'resnet999'" in err and "Traceback" not in err


def test_undroppable_block(capsys, tiny_npz):
    status, _, err = run_cli(capsys, "eval", "--model", "cifar_resnet20", "--drop", "layer2.0", "--data", f"npz:{tiny_npz}")
    assert status == 2 and "cannot be dropped" in err and "layer1.1" in err


def test_missing_data_file(capsys, tmp_path):
    status, _, err = run_cli(capsys, "eval", "--model", "cifar_resnet20", "--data", f"npz:{tmp_path / 'nope.npz'}")
    assert status == 2 and "does not exist" in err


def test_images_of_the_wrong_size(capsys, tmp_path):
    path = tmp_path / "big.npz"
    np.savez(path, images=np.zeros((2, 64, 64, 3), np.uint8), labels=np.zeros(2, np.int64))
    status, _, err = run_cli(capsys, "eval", "--model", "cifar_resnet20", "--data", f"npz:{path}")
    assert status == 2 and "64x64" in err and "32x32" in err


def test_missing_weight_file(capsys, tiny_npz, tmp_path):
    status, _, err = run_cli(capsys, "eval", "--model", "cifar_resnet20", "--weights", str(tmp_path / "w.th"), "--data", f"npz:{tiny_npz}")
    assert status == 2 and "does not exist" in err


@pytest.mark.parametrize("images, labels, words", [
    (np.zeros((2, 32, 32, 3), np.float32), np.zeros(2, np.int64), "uint8"),
    (np.zeros((2, 32, 32, 4), np.uint8), np.zeros(2, np.int64), "N x H x W x 3"),
    (np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64), "no images"),
    (np.zeros((2, 32, 32, 3), np.uint8), np.zeros(3, np.int64), "expected 2 integers"),
    (np.zeros((2, 32, 32, 3), np.uint8), np.array([0, -1]), "outside"),
])
def test_bad_arrays(images, labels, words):
    with pytest.raises(UserError, match=words):
        data_lib.validate(images, labels, "test")


def test_greyscale_becomes_rgb():
    data = data_lib.validate(np.zeros((2, 8, 8), np.uint8), np.zeros(2, np.int64), "grey")
    assert data.images.shape == (2, 8, 8, 3)


def test_npz_without_the_right_arrays(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, pixels=np.zeros(3))
    with pytest.raises(UserError, match="'images'"):
        data_lib.load_source(f"npz:{path}")


def test_data_spec_without_kind():
    with pytest.raises(UserError, match="npz:PATH"):
        data_lib.load_source("some/file.npz")


def test_weights_of_another_depth_name_the_right_model(tmp_path):
    small = model_zoo.create("cifar_resnet20")
    path = tmp_path / "r20.npz"
    from flax import nnx
    from model_zoo.convert import torch_key
    from model_zoo.convert.load import WEIGHTS

    def torch_layout(a):
        a = np.asarray(a)
        return a.transpose(3, 2, 0, 1) if a.ndim == 4 else (a.T if a.ndim == 2 else a)

    np.savez(path, **{torch_key(p): torch_layout(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(small, WEIGHTS))})
    model_zoo.load("cifar_resnet20", path)  # the file itself is fine
    with pytest.raises(UserError) as error:
        model_zoo.load("cifar_resnet56", path)
    message = str(error.value)
    assert "missing keys" in message and "use --model cifar_resnet20" in message


def test_truncated_weight_file(tmp_path, shared_data):
    original = (shared_data / "cifar10_resnets" / "resnet20-12fca82f.th").read_bytes()
    path = tmp_path / "cut.th"
    path.write_bytes(original[: len(original) // 2])
    with pytest.raises(UserError, match="truncated, corrupt"):
        model_zoo.load("cifar_resnet20", path)


def test_unknown_weight_extension(tmp_path):
    path = tmp_path / "w.h5"
    path.write_bytes(b"x")
    with pytest.raises(UserError, match="unknown extension"):
        model_zoo.read_state_dict(path)


def test_finetune_recipe_for_another_loss(capsys, tiny_npz, tmp_path):
    status, _, err = run_cli(capsys, "compress", "--model", "cifar_resnet20", "--weights", "random", "--data", f"npz:{tiny_npz}",
                             "--blocks", "layer1.1", "--finetune", "ce", "--kd-weight", "1", "--out", str(tmp_path / "run"))
    assert status == 2 and "the ce loss takes neither" in err and "Traceback" not in err
