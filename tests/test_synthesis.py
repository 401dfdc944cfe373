"""Data-free tiny sets: DeepInversion's loss against the reference's formulas, the optimisation, resume, bad input."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_models import tiny_model

import model_zoo
import practise_jax as pj
from practise_jax import cli, synthesis
from practise_jax.data import load_source


def test_the_loss_equals_the_reference_formulas_computed_in_pytorch():
    """BN hooks, CE, TV-L1/L2, L2 and the ADI term as NVlabs/DeepInversion computes them, on the same weights and batch."""
    torch = pytest.importorskip("torch", reason="the reference formulas run in PyTorch (pip install torch==2.13.0)")
    import torch.nn.functional as F
    import torch_reference
    from test_parity_torch import reference

    teacher_torch = reference("cifar_resnet20", seed=3, size=32, widths=(8, 16, 32), num_classes=7)
    student_torch = reference("cifar_resnet20", seed=4, size=32, widths=(8, 16, 32), num_classes=7)
    as_zoo = [model_zoo.load_weights(model_zoo.create("cifar_resnet20", widths=(8, 16, 32), num_classes=7),
                                     {k: v.numpy() for k, v in m.state_dict().items()}) for m in (teacher_torch, student_torch)]
    x = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    targets = np.arange(6) % 7

    distances = []  # the reference's forward hook on every BatchNorm2d: norm of the variance gap + of the mean gap
    def hook(module, inputs, _):
        mean, var = inputs[0].mean([0, 2, 3]), inputs[0].permute(1, 0, 2, 3).flatten(1).var(1, unbiased=False)
        distances.append(torch.norm(module.running_var - var, 2) + torch.norm(module.running_mean - mean, 2))

    for module in teacher_torch.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.register_forward_hook(hook)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        logits, rival = teacher_torch(xt), student_torch(xt)
        diffs = (xt[:, :, :, :-1] - xt[:, :, :, 1:], xt[:, :, :-1, :] - xt[:, :, 1:, :],
                 xt[:, :, 1:, :-1] - xt[:, :, :-1, 1:], xt[:, :, :-1, :-1] - xt[:, :, 1:, 1:])
        p, q = F.softmax(rival / 3.0, 1), F.softmax(logits / 3.0, 1)
        m = (0.5 * (p + q)).clamp(0.01, 0.99)
        p, q = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
        js = 0.5 * F.kl_div(torch.log(p), m, reduction="batchmean") + 0.5 * F.kl_div(torch.log(q), m, reduction="batchmean")
        expected = {"ce": F.cross_entropy(logits, torch.from_numpy(targets)).item(),
                    "bn": (10.0 * distances[0] + sum(distances[1:])).item(),
                    "tv_l2": sum(torch.norm(d) for d in diffs).item(),
                    "tv_l1": sum(d.abs().mean() for d in diffs).item(),
                    "l2": torch.norm(xt.flatten(1), dim=1).mean().item(),
                    "adi": (1.0 - js.clamp(0.0, 1.0)).item()}
    assert len(distances) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in teacher_torch.modules()) > 10

    config = synthesis.SynthesisConfig(first_bn=10.0, adi=0.2)
    ours = synthesis.inversion_terms(synthesis.probed(as_zoo[0]), jnp.asarray(x.transpose(0, 2, 3, 1)),
                                     jnp.asarray(targets), config, as_zoo[1])
    for name, value in expected.items():
        assert float(ours[name]) == pytest.approx(value, rel=2e-4), name
    weights = {"ce": 1, "bn": config.bn, "tv_l2": config.tv_l2, "tv_l1": config.tv_l1, "l2": config.l2, "adi": config.adi}
    assert float(ours["loss"]) == pytest.approx(sum(weights[k] * v for k, v in expected.items()), rel=2e-4)
    del torch_reference


def test_probes_keep_the_forward_pass_and_find_every_batch_norm():
    model = tiny_model("cifar_resnet20", dropped=())
    watched = synthesis.probed(model)
    norms = [n for _, n in nnx.iter_graph(model) if isinstance(n, nnx.BatchNorm)]
    probes = [n for _, n in nnx.iter_graph(watched) if isinstance(n, synthesis.StatisticsProbe)]
    assert len(probes) == len(norms) > 10
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 32, 32, 3)), jnp.float32)
    with synthesis.collecting() as distances:
        probed_logits = watched(x)[0]
    np.testing.assert_array_equal(np.asarray(probed_logits), np.asarray(model(x)[0]))
    assert len(distances) == len(norms)
    first = model.conv1(x)  # the stem BatchNorm's input, computed directly
    gap = (jnp.linalg.norm(first.var((0, 1, 2)) - model.bn1.var[...])
           + jnp.linalg.norm(first.mean((0, 1, 2)) - model.bn1.mean[...]))
    assert float(distances[0]) == pytest.approx(float(gap), rel=1e-5)  # forward order: the stem first
    assert not any(isinstance(n, synthesis.StatisticsProbe) for _, n in nnx.iter_graph(model))  # the original untouched


def test_inversion_of_a_real_teacher_matches_its_statistics_and_targets(shared_data):
    teacher = model_zoo.load("cifar_resnet20", shared_data / "cifar10_resnets" / "resnet20-12fca82f.th")
    config = synthesis.SynthesisConfig(steps=200, batch_size=20)
    mean, std = teacher.input_spec.mean, teacher.input_spec.std
    optimizer, step = synthesis.make_step(teacher, config, mean, std)
    targets = synthesis.targets_for(0, 20, 10)
    first = []
    images, last = synthesis.invert_batch(step, optimizer, targets, 32, mean, std, config.steps, jax.random.key(0),
                                          lambda i, terms: first.append({k: float(v) for k, v in terms.items()}) if i == 0 else None)
    assert images.dtype == np.uint8 and images.shape == (20, 32, 32, 3)
    assert last["bn"] < 0.2 * first[0]["bn"]  # the BN statistics moved towards the running ones (measured: 623 -> 83)
    assert last["ce"] < 0.2 * first[0]["ce"]  # and the teacher sees the targets (13.8 -> 1.2)
    assert pj.evaluate(teacher, images, targets).top1 >= 40  # still once stored as uint8 pixels (measured: 60)


def test_api_spreads_targets_keeps_batches_and_resumes(tmp_path, monkeypatch):
    teacher = tiny_model("cifar_resnet20", dropped=())
    whole = pj.synthesize(teacher, 10, steps=3, batch_size=4, seed=5)
    assert whole.images.shape == (10, 32, 32, 3) and list(whole.labels) == [i % 10 for i in range(10)]
    original, calls = synthesis.invert_batch, []

    class Killed(Exception):
        pass

    def killed_after_one(*args, **kwargs):  # the first run is killed during its second batch
        calls.append(1)
        if len(calls) == 2 and kill:
            raise Killed
        return original(*args, **kwargs)

    kill = True

    monkeypatch.setattr(synthesis, "invert_batch", killed_after_one)
    with pytest.raises(Killed):
        pj.synthesize(teacher, 10, steps=3, batch_size=4, seed=5, store=tmp_path / "parts")
    assert sorted(p.name for p in (tmp_path / "parts").glob("*.npz")) == ["batch_00000.npz"]
    calls.clear()
    kill = False
    resumed = pj.synthesize(teacher, 10, steps=3, batch_size=4, seed=5, store=tmp_path / "parts")
    assert len(calls) == 2  # batches 1 and 2 only
    np.testing.assert_array_equal(resumed.images, whole.images)  # a batch depends on the seed and its index only
    with pytest.raises(pj.UserError, match="other settings"):
        pj.synthesize(teacher, 10, steps=4, batch_size=4, seed=5, store=tmp_path / "parts")


class NoNorm(nnx.Module):
    def __init__(self):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0))

    def __call__(self, x):
        return self.conv(x).mean((1, 2))


def test_bad_input_is_refused_clearly():
    teacher = tiny_model("cifar_resnet20", dropped=())
    with pytest.raises(pj.UserError, match="no BatchNorm layer"):
        pj.synthesize(NoNorm(), 4, mean=(0.5,) * 3, std=(0.5,) * 3, size=8, steps=1)
    for n in (0, -3, 2.5):
        with pytest.raises(pj.UserError, match="positive number of images"):
            pj.synthesize(teacher, n, steps=1)
    with pytest.raises(pj.UserError, match="needs a student"):
        pj.synthesize(teacher, 2, steps=1, adi=0.2)
    broken = tiny_model("cifar_resnet20", dropped=())
    broken.bn1.var[...] = -broken.bn1.var[...]  # a negative variance: NaN from the first step on
    with pytest.raises(pj.UserError, match="diverged at step 3"):
        pj.synthesize(broken, 2, steps=3)


def test_a_diverging_batch_keeps_the_finished_ones(tmp_path, monkeypatch):
    teacher = tiny_model("cifar_resnet20", dropped=())
    original = synthesis.invert_batch

    def second_diverges(step, optimizer, targets, *args, **kwargs):
        if targets[0] == 4:
            raise pj.UserError("image synthesis diverged at step 2 (loss nan)")
        return original(step, optimizer, targets, *args, **kwargs)

    monkeypatch.setattr(synthesis, "invert_batch", second_diverges)
    with pytest.raises(pj.UserError, match="diverged"):
        pj.synthesize(teacher, 8, steps=2, batch_size=4, store=tmp_path / "parts")
    assert [json.loads(line)["key"] for line in (tmp_path / "parts" / "batches.jsonl").read_text().splitlines()[1:]] == [
        "batch_00000"]


def test_cli_writes_the_npz_compress_reads_and_a_grid(tmp_path, capsys):
    weights = tmp_path / "teacher"
    pj.save_compressed(weights, tiny_model("cifar_resnet20", dropped=()))
    out = tmp_path / "syn.npz"
    argv = ["synthesize", "--model", "cifar_resnet20", "--weights", str(weights), "--images", "6", "--steps", "3",
            "--batch-size", "4", "--out", str(out)]
    assert cli.main(argv) == 0
    tiny = load_source(f"npz:{out}")
    assert tiny.images.shape == (6, 32, 32, 3) and list(tiny.labels) == [0, 1, 2, 3, 4, 5]
    assert out.with_suffix(".png").stat().st_size > 1000 and not out.with_name("syn.npz.parts").exists()
    assert json.loads(out.with_suffix(".json").read_text())["images"] == 6
    capsys.readouterr()
    assert cli.main(argv) == 2  # the file exists: refused, nothing computed
    assert "pass --overwrite" in capsys.readouterr().err
    assert cli.main([*argv, "--overwrite", "--adi", "0.2"]) == 2
    assert "--student-drop" in capsys.readouterr().err
