"""Torch parity: zoo models loaded with `model_zoo.load` match PyTorch references.

Random-weight cases compare every family against the independent PyTorch
implementations in `torch_reference` (with randomised BatchNorm statistics, so
that a swapped mean/var or scale/bias cannot hide), through every weight format
the loader reads. Real-weight cases use the akamaster CIFAR-10 checkpoints on
exact CIFAR-10 test images.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require
from flax import nnx

torch = require("torch")

import model_zoo  # noqa: E402
import torch_reference  # noqa: E402
from model_zoo.registry import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from practise_jax import cli, protocol  # noqa: E402

ATOL = 1e-4
CIFAR_CHECKPOINTS = {
    20: "resnet20-12fca82f.th",
    32: "resnet32-d509ac18.th",
    44: "resnet44-014dd654.th",
    56: "resnet56-4bfd9763.th",
}


# --------------------------------------------------------------------------- helpers


def reference(name: str, seed: int, size: int, **overrides) -> torch.nn.Module:
    """A torch reference with seeded random weights and randomised BN statistics, in eval mode.

    BN statistics are calibrated on a random batch of ``size`` x ``size``
    images, then perturbed (see `torch_reference.randomise_batch_norm`).
    """
    torch.manual_seed(seed)
    model = torch_reference.build(name, **overrides)
    calibration = torch.from_numpy(random_input(seed + 100, 8, size))
    torch_reference.randomise_batch_norm(model, torch.Generator().manual_seed(seed + 1), calibration)
    return model.eval()


def save(state_dict: dict, path: Path, fmt: str) -> Path:
    """Write a state dict as ``pth``, ``wrapped`` (DataParallel checkpoint), ``safetensors`` or ``npz``."""
    if fmt == "pth":
        torch.save(state_dict, path.with_suffix(".pth"))
        return path.with_suffix(".pth")
    if fmt == "wrapped":
        wrapped = {"state_dict": {f"module.{k}": v for k, v in state_dict.items()}, "epoch": 7, "best_prec1": 12.5}
        torch.save(wrapped, path.with_suffix(".th"))
        return path.with_suffix(".th")
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path.with_suffix(".safetensors")))
        return path.with_suffix(".safetensors")
    if fmt == "npz":
        np.savez(path.with_suffix(".npz"), **{k: v.numpy() for k, v in state_dict.items()})
        return path.with_suffix(".npz")
    raise ValueError(fmt)


def run_both(torch_model, jax_model, x_nchw: np.ndarray):
    """Logits and pre-GAP features (NHWC) of both models on the same batch."""
    with torch.no_grad():
        t_logits, t_pre_gap = torch_model.forward_features(torch.from_numpy(x_nchw))
    jax_model.eval()
    graphdef, state = nnx.split(jax_model)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    j_logits, features = forward(state, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)))
    return (t_logits.numpy(), t_pre_gap.numpy().transpose(0, 2, 3, 1)), (np.asarray(j_logits), np.asarray(features["pre_gap"]))


def assert_parity(torch_model, jax_model, x_nchw: np.ndarray) -> np.ndarray:
    (t_logits, t_pre_gap), (j_logits, j_pre_gap) = run_both(torch_model, jax_model, x_nchw)
    assert j_pre_gap.shape == t_pre_gap.shape
    np.testing.assert_allclose(j_pre_gap, t_pre_gap, atol=ATOL, rtol=0, err_msg="pre_gap features differ")
    np.testing.assert_allclose(j_logits, t_logits, atol=ATOL, rtol=0, err_msg="logits differ")
    return t_logits


def random_input(seed: int, batch: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


# --------------------------------------------------------------------------- random weights, every family and format

# name, zoo/reference overrides, input size, weight format
RANDOM_CASES = [  # narrow widths: the layout and conversion are what is tested, not the arithmetic at scale
    ("resnet18", {"num_classes": 37, "widths": (8, 16, 16, 24)}, 64, "pth"),
    ("resnet50", {"num_classes": 100, "widths": (8, 8, 16, 16)}, 64, "wrapped"),  # {'state_dict': {'module.' + key}}
    ("mobilenet_v2", {"num_classes": 50, "width_mult": 0.35}, 64, "safetensors"),
    ("cifar_resnet20", {"widths": (8, 16, 32), "num_classes": 7}, 32, "npz"),
]


@pytest.mark.parametrize("name,overrides,size,fmt", RANDOM_CASES, ids=[f"{c[0]}-{c[3]}" for c in RANDOM_CASES])
def test_random_weights_match_torch(tmp_path, name, overrides, size, fmt):
    torch_model = reference(name, seed=len(name) + size, size=size, **overrides)
    path = save(torch_model.state_dict(), tmp_path / name, fmt)
    jax_model = model_zoo.load(name, path, **overrides)
    logits = assert_parity(torch_model, jax_model, random_input(0, 2, size))
    assert logits.std() > 1e-2, "degenerate reference: logits almost constant"


# --------------------------------------------------------------------------- teacher weights into a pruned student

PRUNED_CASES = [
    ("resnet18", {"num_classes": 20, "widths": (8, 16, 16, 24)}, 64, ["layer1.1"]),
    ("resnet50", {"num_classes": 20, "widths": (8, 8, 16, 16)}, 64, ["layer1.1", "layer3.4", "layer3.2"]),
    ("mobilenet_v2", {"num_classes": 20, "width_mult": 0.35}, 64, ["features.3", "features.9", "features.15"]),
    ("cifar_resnet56", {"widths": (8, 16, 32)}, 32, ["layer1.1", "layer2.8", "layer3.3"]),
]


@pytest.mark.parametrize("name,overrides,size,dropped", PRUNED_CASES, ids=[f"{c[0]}-{'+'.join(c[3])}" for c in PRUNED_CASES])
def test_teacher_weights_into_pruned_student(tmp_path, name, overrides, size, dropped):
    teacher = reference(name, seed=11, size=size, **overrides)
    path = save(teacher.state_dict(), tmp_path / name, "pth")
    kept = {k for k in teacher.state_dict() if not k.endswith("num_batches_tracked") and not k.startswith(tuple(f"{d}." for d in dropped))}
    student_ref = torch_reference.drop_blocks(teacher, dropped).eval()
    student = model_zoo.load(name, path, dropped=dropped, **overrides)
    assert set(protocol.dropped(student)) == set(dropped)
    # the student has the teacher's parameters but those of the dropped blocks, under the teacher's names
    assert set(_zoo_keys(student)) == kept
    assert_parity(student_ref, student, random_input(2, 2, size))  # the reference renumbers; the function is the same


def _zoo_keys(model) -> list[str]:
    from model_zoo.convert.load import WEIGHTS, torch_key

    return [torch_key(path) for path, _ in nnx.to_flat_state(nnx.state(model, WEIGHTS))]


# --------------------------------------------------------------------------- real checkpoints on real images


def _cifar_images(shared_data: Path, count: int | None = None):
    with np.load(shared_data / "cifar10" / "cifar10_test_exact.npz") as archive:
        images, labels = archive["images"], archive["labels"]
    if count is not None:
        images, labels = images[:count], labels[:count]
    x = (images.astype(np.float32) / 255.0 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), labels


def _akamaster_reference(depth: int, path: Path) -> torch.nn.Module:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
    model = torch_reference.cifar_resnet(depth)
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.mark.parametrize("depth", sorted(CIFAR_CHECKPOINTS))
def test_real_cifar_checkpoints_match_torch(shared_data, depth):
    path = shared_data / "cifar10_resnets" / CIFAR_CHECKPOINTS[depth]
    torch_model = _akamaster_reference(depth, path)
    jax_model = model_zoo.load(f"cifar_resnet{depth}", path)
    x, labels = _cifar_images(shared_data, 64)
    (t_logits, t_pre_gap), (j_logits, j_pre_gap) = run_both(torch_model, jax_model, x)
    np.testing.assert_allclose(j_pre_gap, t_pre_gap, atol=ATOL, rtol=0)
    np.testing.assert_allclose(j_logits, t_logits, atol=ATOL, rtol=0)
    np.testing.assert_array_equal(j_logits.argmax(-1), t_logits.argmax(-1))
    assert (t_logits.argmax(-1) == labels).mean() > 0.8  # a trained model, not noise


def test_cli_eval_resnet56_top1_equals_torch(shared_data, capsys):
    limit = 1017
    path = shared_data / "cifar10_resnets" / CIFAR_CHECKPOINTS[56]
    data = shared_data / "cifar10" / "cifar10_test_exact.npz"
    x, labels = _cifar_images(shared_data, limit)
    with torch.no_grad():
        torch_top1 = 100 * float((_akamaster_reference(56, path)(torch.from_numpy(x)).argmax(-1).numpy() == labels).mean())
    assert round(torch_top1, 2) == 92.72  # shared/data/README.md, section 1

    capsys.readouterr()
    status = cli.main(["eval", "--model", "cifar_resnet56", "--weights", str(path), "--data", f"npz:{data}",
                       "--limit", str(limit), "--json"])
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == limit
    assert summary["top1"] == round(torch_top1, 4)
