"""Adaptor placement follows the reference; identity adaptors change nothing; folding is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import model_zoo
from model_zoo.layers import Adaptor
from practise_jax import adaptors

TINY = {
    "cifar_resnet20": (dict(widths=(4, 8, 16)), 16),
    "resnet18": (dict(widths=(8, 8, 16, 16), num_classes=10), 32),
    "resnet50": (dict(widths=(4, 4, 8, 8), num_classes=10), 32),
    "mobilenet_v2": (dict(width_mult=0.25, num_classes=10), 32),
}


def names(name, dropped, **overrides):
    student = model_zoo.create(name, dropped=[dropped], **overrides)
    return [site.name for site in adaptors.placement(student, dropped)]


def test_resnet34_layer1_1_matches_the_spec_example():
    assert names("resnet34", "layer1.1", widths=(8, 8, 8, 8)) == [
        "layer1.0.conv2:post", "layer1.1.conv1:pre", "layer2.0.conv1:pre", "layer2.0.downsample.0:pre"]


def test_resnet50_writers_include_the_downsample_conv():
    assert names("resnet50", "layer2.2", widths=(4, 4, 8, 8)) == [
        "layer2.0.downsample.0:post", "layer2.0.conv3:post", "layer2.1.conv3:post",
        "layer2.2.conv1:pre", "layer3.0.conv1:pre", "layer3.0.downsample.0:pre"]


def test_last_stage_adds_nothing_after_the_stage():
    assert names("resnet34", "layer4.2", widths=(8, 8, 8, 8)) == [
        "layer4.0.downsample.0:post", "layer4.0.conv2:post", "layer4.1.conv2:post"]


def test_cifar_option_a_has_no_downsample_sites():
    assert names("cifar_resnet20", "layer2.1", widths=(4, 8, 16)) == [
        "layer2.0.conv2:post", "layer2.1.conv1:pre", "layer3.0.conv1:pre"]


def test_mobilenet_features_9_matches_the_spec_example():
    # after-adaptors on the projections of features.7 and .8; pre-adaptors on the
    # expansion convs of the original features.10 and .11 (now features.9 and .10)
    assert names("mobilenet_v2", "features.9", width_mult=0.25) == [
        "features.7.conv.2:post", "features.8.conv.2:post", "features.9.conv.0.0:pre", "features.10.conv.0.0:pre"]


def tiny_student(name, with_random_adaptors=False):
    overrides, size = TINY[name]
    teacher = model_zoo.create(name, rngs=nnx.Rngs(1), **overrides)
    block = teacher.droppable[0]
    student = model_zoo.prune(teacher, [block])
    sites = adaptors.placement(student, block)
    adaptors.attach(student, sites)
    student.eval()
    if with_random_adaptors:
        flat = nnx.to_flat_state(nnx.state(student, Adaptor))
        keys = jax.random.split(jax.random.key(7), len(flat))
        nnx.update(student, nnx.from_flat_state([
            (p, v.replace(v.get_value() + 0.1 * jax.random.normal(k, v.get_value().shape))) for k, (p, v) in zip(keys, flat)]))
    x = jax.random.normal(jax.random.key(3), (2, size, size, 3))
    return teacher, block, student, x


@pytest.mark.parametrize("name", list(TINY))
def test_identity_adaptors_leave_the_pruned_student_unchanged(name):
    teacher, block, student, x = tiny_student(name)
    plain = model_zoo.prune(teacher, [block])
    plain.eval()
    np.testing.assert_allclose(student(x)[1]["pre_gap"], plain(x)[1]["pre_gap"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(TINY))
def test_folding_trained_adaptors_is_exact(name):
    _, _, student, x = tiny_student(name, with_random_adaptors=True)
    before = student(x)[1]["pre_gap"]
    adaptors.fold(student)
    assert not jax.tree.leaves(nnx.state(student, Adaptor))
    after = student(x)[1]["pre_gap"]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * float(jnp.abs(before).max()))
