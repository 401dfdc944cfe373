"""L1 filter pruning: which filters survive, exactness when nothing is cut, the search, the pipeline row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model_zoo
import practise_jax
from model_zoo.errors import UserError
from practise_jax import filter_pruning, pipeline
from practise_jax.latency import Cache, Cost, Measurement
from test_pipeline import tiny_config
from tiny_models import tiny_model


def test_the_largest_l1_filters_are_kept_in_order():
    kernel = np.zeros((3, 3, 2, 5))
    kernel[..., 1] = 1.0
    kernel[..., 3] = -2.0
    kernel[..., 4] = 0.5
    assert filter_pruning.kept_filters(kernel, 2).tolist() == [1, 3]
    assert filter_pruning.kept_filters(kernel, 3).tolist() == [1, 3, 4]


def test_keeping_every_filter_changes_nothing_and_pruning_narrows_only_inner_channels():
    teacher = tiny_model("cifar_resnet20")  # layer2.1 already dropped
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    same = filter_pruning.filter_prune(teacher, 1.0)
    same.eval()
    np.testing.assert_allclose(same(x)[0], teacher(x)[0], atol=1e-5)

    half = filter_pruning.filter_prune(teacher, 0.5)
    half.eval()
    for (address, block), (_, original) in zip(half.residual_blocks(), teacher.residual_blocks()):
        assert block.conv1.out_features == max(1, round(original.conv1.out_features / 2)), address
        assert block.conv2.out_features == original.conv2.out_features
    assert half(x)[1]["pre_gap"].shape == teacher(x)[1]["pre_gap"].shape
    assert half.dropped == teacher.dropped


def test_the_pruned_block_computes_with_the_kept_filters_of_the_teacher():
    teacher = tiny_model("cifar_resnet20", dropped=())
    student = filter_pruning.filter_prune(teacher, 0.5)
    student.eval()
    kept = filter_pruning.kept_filters(np.asarray(teacher.layer1[0].conv1.kernel[...]), 2)
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 4))
    inner_teacher = jax.nn.relu(teacher.layer1[0].bn1(teacher.layer1[0].conv1(x)))[..., kept]
    inner_student = jax.nn.relu(student.layer1[0].bn1(student.layer1[0].conv1(x)))
    np.testing.assert_allclose(inner_student, inner_teacher, atol=1e-5)


def test_bisection_finds_the_largest_fraction_that_reaches_the_target():
    measured = []

    def tau(keep):  # latency proportional to the kept fraction
        measured.append(keep)
        return 1.0 - keep

    keep, reached = filter_pruning.keep_for_speedup(0.3, tau, steps=7)
    assert reached >= 0.3 and 0.69 - 1 / 128 <= keep <= 0.7
    with pytest.raises(UserError, match="cannot reach.*Lower --speedup"):
        filter_pruning.keep_for_speedup(0.5, lambda keep: 0.01)


def test_only_cifar_resnets_are_supported():
    with pytest.raises(UserError, match="CIFAR ResNets only"):
        filter_pruning.filter_prune(tiny_model("resnet18"), 0.5)
    with pytest.raises(UserError, match=r"in \(0, 1\]"):
        filter_pruning.filter_prune(tiny_model("cifar_resnet20"), 0.0)


def test_measuring_a_narrowed_model_is_cached(tmp_path):
    teacher = tiny_model("cifar_resnet20")
    cache = Cache(tmp_path)
    setting, first = filter_pruning.measure(teacher, 0.5, batch_size=2, time_budget_s=0.01, cache=cache)
    assert len(first.taus) >= 5 and not first.cached
    assert dict(setting.overrides)["inner_widths"] == filter_pruning.inner_widths(teacher, 0.5)
    _, again = filter_pruning.measure(teacher, 0.5, batch_size=2, time_budget_s=0.01, cache=cache)
    assert again.cached and again.taus == first.taus


def test_the_filter_row_of_the_pipeline_saves_a_reloadable_narrow_student(tmp_path, monkeypatch):
    real_setting = filter_pruning.measure(tiny_model("cifar_resnet20"), 1.0, batch_size=2, time_budget_s=0.01)[0]

    def fake_measure(teacher, keep, **kwargs):  # latency proportional to the kept filters: deterministic
        return real_setting, Measurement((), (keep,) * 5, (1.0,) * 5, (1.0 - keep,) * 5, Cost(0.0, 0.0, 0))

    monkeypatch.setattr(filter_pruning, "measure", fake_measure)
    config = tiny_config(tmp_path, method="filter", drop=None, speedup=0.3)
    summary = pipeline.compress(config, tmp_path / "run", progress=False, log=lambda m: None)
    assert summary["dropped_blocks"] == [] and 0.6 < summary["filter_keep"] <= 0.7
    assert summary["latency_reduction"] == pytest.approx(1.0 - summary["filter_keep"])
    student, spec = practise_jax.load_compressed(tmp_path / "run" / "student")
    widths = dict(spec.overrides)["inner_widths"]
    assert [block.conv1.out_features for _, block in student.residual_blocks()] == list(widths)
    assert student(jnp.zeros((1, 32, 32, 3)))[0].shape == (1, 10)
    assert "inner filters kept" in (tmp_path / "run" / "report.md").read_text()
    with pytest.raises(UserError, match="--method filter"):
        pipeline.compress(tiny_config(tmp_path, method="filter"), tmp_path / "other", progress=False, log=lambda m: None)


def test_inner_widths_must_cover_every_block():
    with pytest.raises(ValueError, match="one width per block"):
        model_zoo.create("cifar_resnet20", inner_widths=(4, 4))
