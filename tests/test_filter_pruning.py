"""L1 filter pruning: which filters survive, exactness when nothing is cut, the search, the pipeline row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import practise_jax
from practise_jax import filter_pruning, pipeline, protocol
from practise_jax.errors import UserError
from practise_jax.latency import Cache, Cost, Measurement
from test_pipeline import tiny_config
from tiny_models import tiny_model


def test_the_largest_l1_filters_are_kept_in_order():
    kernel = np.zeros((3, 3, 2, 5))
    kernel[..., 1] = 1.0
    kernel[..., 3] = -2.0
    kernel[..., 4] = 0.5
    assert filter_pruning.largest_l1(kernel, 2).tolist() == [1, 3]
    assert filter_pruning.largest_l1(kernel, 3).tolist() == [1, 3, 4]


@pytest.mark.parametrize("name", ["cifar_resnet20", "resnet18"])
def test_keeping_every_filter_changes_nothing_and_pruning_narrows_only_inner_channels(name):
    teacher = tiny_model(name)  # one block already dropped
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    same = filter_pruning.filter_prune(teacher, 1.0)
    np.testing.assert_allclose(same(x)[0], teacher(x)[0], atol=1e-5)

    half = filter_pruning.filter_prune(teacher, 0.5)
    for block, original in zip(protocol.blocks(half), protocol.blocks(teacher)):
        assert block.module.conv1.out_features == max(1, round(original.module.conv1.out_features / 2)), block.address
        assert block.module.conv2.out_features == original.module.conv2.out_features
    assert half(x)[1]["pre_gap"].shape == teacher(x)[1]["pre_gap"].shape
    assert protocol.dropped(half) == protocol.dropped(teacher)
    assert filter_pruning.kept_filters(half) == {b.address: b.module.conv1.out_features for b in protocol.blocks(half)}


def test_the_pruned_block_computes_with_the_kept_filters_of_the_teacher():
    teacher = tiny_model("cifar_resnet20", dropped=())
    student = filter_pruning.filter_prune(teacher, 0.5)
    kept = filter_pruning.largest_l1(np.asarray(teacher.layer1[0].conv1.kernel[...]), 2)
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 4))
    inner_teacher = jax.nn.relu(teacher.layer1[0].bn1(teacher.layer1[0].conv1(x)))[..., kept]
    inner_student = jax.nn.relu(student.layer1[0].bn1(student.layer1[0].conv1(x)))
    np.testing.assert_allclose(inner_student, inner_teacher, atol=1e-5)
    # the whole block: the teacher with the pruned filters' weights into conv2 zeroed computes the same
    reference = nnx.clone(teacher)
    dropped = np.setdiff1d(np.arange(4), kept)
    reference.layer1[0].conv2.kernel[...] = reference.layer1[0].conv2.kernel[...].at[:, :, dropped, :].set(0.0)
    np.testing.assert_allclose(student.layer1[0](x), reference.layer1[0](x), atol=1e-5)


def test_narrowing_an_abstract_model_gives_the_shapes_of_the_real_one():
    teacher = tiny_model("cifar_resnet20")
    real = filter_pruning.filter_prune(teacher, 0.5)
    abstract = filter_pruning.narrow(nnx.eval_shape(lambda: nnx.clone(teacher)), filter_pruning.kept_filters(real))
    shapes = jax.tree.map(lambda a: a.shape, nnx.state(abstract, nnx.Param))
    assert shapes == jax.tree.map(lambda a: a.shape, nnx.state(real, nnx.Param))


def test_bisection_finds_the_largest_fraction_that_reaches_the_target():
    measured = []

    def tau(keep):  # latency proportional to the kept fraction
        measured.append(keep)
        return 1.0 - keep

    keep, reached = filter_pruning.keep_for_speedup(0.3, tau, steps=7)
    assert reached >= 0.3 and 0.69 - 1 / 128 <= keep <= 0.7
    with pytest.raises(UserError, match="cannot reach.*Lower --speedup"):
        filter_pruning.keep_for_speedup(0.5, lambda keep: 0.01)


def test_models_without_inner_channels_are_refused():
    with pytest.raises(UserError, match="names its inner_channels"):
        filter_pruning.filter_prune(tiny_model("mobilenet_v2"), 0.5)
    with pytest.raises(UserError, match=r"in \(0, 1\]"):
        filter_pruning.filter_prune(tiny_model("cifar_resnet20"), 0.0)


def test_measuring_a_narrowed_model_is_cached(tmp_path):
    teacher = tiny_model("cifar_resnet20")
    cache = Cache(tmp_path)
    first = filter_pruning.measure(teacher, 0.5, (2, 32, 32, 3), time_budget_s=0.01, cpu_threads=0, cache=cache)
    assert len(first.taus) >= 5 and not first.cached
    again = filter_pruning.measure(teacher, 0.5, (2, 32, 32, 3), time_budget_s=0.01, cpu_threads=0, cache=cache)
    assert again.cached and again.taus == first.taus


def test_the_filter_row_of_the_pipeline_saves_a_reloadable_narrow_student(tmp_path, monkeypatch):
    def fake_measure(teacher, keep, batch_shape, **kwargs):  # latency proportional to the kept filters: deterministic
        return Measurement(("filters",), (keep,) * 5, (1.0,) * 5, (1.0 - keep,) * 5, Cost(0.0, 0.0, 0))

    monkeypatch.setattr(filter_pruning, "measure", fake_measure)
    config = tiny_config(tmp_path, method="filter", drop=None, speedup=0.3)
    summary = pipeline.compress(config, tmp_path / "run", progress=False, log=lambda m: None)
    assert summary["dropped_blocks"] == [] and 0.6 < summary["filter_keep"] <= 0.7
    assert summary["latency_reduction"] == pytest.approx(1.0 - summary["filter_keep"])
    student, spec = practise_jax.load_compressed(tmp_path / "run" / "student")
    assert [b.module.conv1.out_features for b in protocol.blocks(student)] == list(spec.filters.values())
    assert student(jnp.zeros((1, 32, 32, 3)))[0].shape == (1, 10)
    assert "inner filters kept" in (tmp_path / "run" / "report.md").read_text()
    with pytest.raises(UserError, match="--method filter"):
        pipeline.compress(tiny_config(tmp_path, method="filter"), tmp_path / "other", progress=False, log=lambda m: None)
