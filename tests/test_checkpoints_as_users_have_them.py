"""Weights as users have them: wrappers, key mapping, input normalisation, and no torch needed (CLI and API)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import require
from flax import nnx

import model_zoo
from model_zoo.convert import torch_key
from practise_jax.cli import main
from practise_jax.errors import UserError
from practise_jax.transforms import NORMALIZATIONS
from tiny_models import logits, random_model, tiny_model

R20 = "cifar10_resnets/resnet20-12fca82f.th"


def torch_layout(a):
    a = np.asarray(a)
    return a.transpose(3, 2, 0, 1) if a.ndim == 4 else (a.T if a.ndim == 2 else a)


def state_dict_of(model) -> dict[str, np.ndarray]:
    return {torch_key(p): torch_layout(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat)))}


@pytest.fixture(scope="module")
def cifar_checkpoint(tmp_path_factory):
    """A CIFAR ResNet-20 saved the pytorch-cifar way, {'net': ..., 'acc': ...}, and 24 images it was 'trained' for."""
    torch = require("torch")
    folder = tmp_path_factory.mktemp("net")
    model = random_model("cifar_resnet20", seed=4)
    path = folder / "ckpt.pth"
    torch.save({"net": {k: torch.from_numpy(np.array(v)) for k, v in state_dict_of(model).items()},
                "acc": 91.0, "epoch": 200}, path)
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    mean, std = NORMALIZATIONS["cifar10"]
    right = logits(model, ((pixels / 255 - np.float32(mean)) / np.float32(std)).astype(np.float32)).argmax(-1)
    np.savez(folder / "images.npz", images=pixels, labels=right)  # labels: what the model predicts with CIFAR statistics
    return path, folder / "images.npz"


def eval_json(capsys, *argv) -> dict:
    assert main(["eval", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_net_wrapped_checkpoint_evaluates_with_the_normalisation_it_was_trained_with(capsys, cifar_checkpoint):
    path, images = cifar_checkpoint
    common = ["--model", "cifar_resnet20", "--weights", str(path), "--data", f"npz:{images}"]
    right = eval_json(capsys, *common[:4], "--data", f"npz:{images}", "--normalization", "cifar10")
    assert right["top1"] == 100.0 and "given" in right["normalization"] and "0.4914" in right["normalization"]
    assumed = eval_json(capsys, *common)
    assert assumed["top1"] < 100.0 and "assumed" in assumed["normalization"] and "0.485" in assumed["normalization"]
    same = eval_json(capsys, *common, "--mean", "0.4914,0.4822,0.4465", "--std", "0.2023,0.1994,0.2010")
    assert same["top1"] == 100.0


def test_compressed_checkpoints_keep_the_given_normalisation(tmp_path, capsys, cifar_checkpoint):
    path, images = cifar_checkpoint
    teacher = model_zoo.load("cifar_resnet20", path)
    from practise_jax import checkpoint
    from practise_jax.pipeline import load_teacher
    from practise_jax.transforms import InputSpec

    teacher.input_spec = InputSpec(32, *NORMALIZATIONS["cifar10"], "given")
    checkpoint.save_compressed(tmp_path / "student", teacher)
    result = eval_json(capsys, "--checkpoint", str(tmp_path / "student"), "--data", f"npz:{images}")
    assert result["top1"] == 100.0 and "given" in result["normalization"]
    assert load_teacher("cifar_resnet20", str(tmp_path / "student")).input_spec.mean == NORMALIZATIONS["cifar10"][0]


def test_inspect_lists_tensors_the_wrapper_and_the_best_model(capsys, shared_data):
    assert main(["inspect", "--weights", str(shared_data / R20), "--model", "cifar_resnet56", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "97 tensors" in out and "'state_dict'" in out and "stripped prefix 'module.'" in out
    assert "missing from the file" in out and "best-fitting registered model: cifar_resnet20 (100%" in out
    assert main(["inspect", "--weights", str(shared_data / R20)]) == 0
    assert "layer3.2.bn2.running_var" in capsys.readouterr().out


def test_rename_rules_map_another_layout(tmp_path):
    model = tiny_model("cifar_resnet20", dropped=())
    theirs = {k.replace("layer", "stage").replace("linear", "head.fc"): v for k, v in state_dict_of(model).items()}
    np.savez(tmp_path / "theirs.npz", **theirs)
    with pytest.raises(UserError, match="rename rules"):
        model_zoo.load("cifar_resnet20", tmp_path / "theirs.npz", widths=(4, 8, 16))
    loaded = model_zoo.load("cifar_resnet20", tmp_path / "theirs.npz", widths=(4, 8, 16),
                            rename=[r"^stage=layer", r"^head\.fc\.=linear."])
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(logits(loaded, x), logits(model, x))


def test_checkpoints_read_and_evaluate_without_torch(shared_data):
    """The package imports and evaluates the real (legacy-format) checkpoint where torch cannot be imported."""
    code = (
        "import sys, json; sys.modules['torch'] = None\n"
        "from practise_jax.cli import main\n"
        f"sys.exit(main(['eval', '--model', 'cifar_resnet20', '--weights', {str(shared_data / R20)!r}, "
        f"'--data', 'npz:{shared_data / 'cifar10' / 'cifar10_test_exact.npz'}', '--limit', '1017', '--json']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["top1"] == 91.6421  # shared/data/README.md: 91.64, as torch gives


@pytest.mark.parametrize("argv, words", [
    (["--mean", "0.5,0.5", "--std", "0.2,0.2,0.2"], "is not three comma-separated numbers"),
    (["--mean", "0.5,0.5,0.5", "--std", "0.2,0,0.2"], "every std must be positive"),
    (["--mean", "0.5,0.5,0.5"], "give both --mean and --std"),
    (["--normalization", "cifar10", "--std", "0.2,0.2,0.2", "--mean", "0.5,0.5,0.5"], "not both"),
    (["--rename", r"^layer\d\.=x."], "map both"),
    (["--rename", "nothing"], "has no '='"),
])
def test_bad_weight_and_normalisation_options_end_in_one_line(capsys, shared_data, argv, words):
    try:  # argparse ends a malformed value with its usage line and the error (SystemExit 2)
        status = main(["eval", "--model", "cifar_resnet20", "--weights", str(shared_data / R20),
                       "--data", f"npz:{shared_data / 'cifar10' / 'cifar10_test_exact.npz'}", "--limit", "8", *argv])
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after argparse's usage lines, if any: the one message
    assert status == 2 and words in last and last.startswith("practise-jax eval: error:") and "Traceback" not in err


def test_a_checkpoint_with_model_and_ema_asks_which(tmp_path, capsys):
    torch = require("torch")
    model = tiny_model("cifar_resnet20", dropped=())
    sd = {k: torch.from_numpy(np.array(v)) for k, v in state_dict_of(model).items()}
    ema = {k: v.clone() for k, v in sd.items()}  # its own tensors, as an EMA copy has
    torch.save({"state_dict": sd, "state_dict_ema": ema, "epoch": 3}, tmp_path / "both.pth")
    images = tmp_path / "x.npz"
    np.savez(images, images=np.zeros((2, 32, 32, 3), np.uint8), labels=np.zeros(2, np.int64))
    argv = ["eval", "--model", "cifar_resnet20", "--weights", str(tmp_path / "both.pth"), "--data", f"npz:{images}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "state_dict_ema" in err and "'state_dict'" in err and "--weights-key" in err
    with pytest.raises(UserError, match="do not fit"):  # the chosen one is read (full-width model: shapes differ)
        model_zoo.load("cifar_resnet20", tmp_path / "both.pth", key="state_dict_ema")
    assert model_zoo.load("cifar_resnet20", tmp_path / "both.pth", key="state_dict_ema", widths=(4, 8, 16)) is not None


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path, capsys):
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"state_dict": Evil()}))
    status = main(["inspect", "--weights", str(tmp_path / "evil.pth")])
    err = capsys.readouterr().err
    assert status == 2 and "nothing in the file was run" in err and not marker.exists()
