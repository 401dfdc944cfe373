"""Adaptor placement follows the reference; identity adaptors change nothing; folding is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import model_zoo
import practise_jax as pj
from practise_jax import adaptors
from practise_jax.adaptors import Adaptor
from tiny_models import TINY, images, logits, tiny_model


def names(name, dropped, **overrides):
    teacher = nnx.eval_shape(lambda: model_zoo.create(name, **overrides))  # placement needs no weights
    return [site.name for site in adaptors.placement(teacher, dropped)]


def test_resnet34_layer1_1_matches_the_spec_example():
    assert names("resnet34", "layer1.1", widths=(8, 8, 8, 8)) == [
        "layer1.0.conv2:post", "layer1.2.conv1:pre", "layer2.0.conv1:pre", "layer2.0.downsample.0:pre"]


def test_resnet50_writers_include_the_downsample_conv():
    assert names("resnet50", "layer2.2", widths=(4, 4, 8, 8)) == [
        "layer2.0.downsample.0:post", "layer2.0.conv3:post", "layer2.1.conv3:post",
        "layer2.3.conv1:pre", "layer3.0.conv1:pre", "layer3.0.downsample.0:pre"]


def test_last_stage_adds_nothing_after_the_stage():
    assert names("resnet34", "layer4.2", widths=(8, 8, 8, 8)) == [
        "layer4.0.downsample.0:post", "layer4.0.conv2:post", "layer4.1.conv2:post"]


def test_cifar_option_a_has_no_downsample_sites():
    assert names("cifar_resnet20", "layer2.1", widths=(4, 8, 16)) == [
        "layer2.0.conv2:post", "layer2.2.conv1:pre", "layer3.0.conv1:pre"]


def test_mobilenet_features_9_matches_the_spec_example():
    # after-adaptors on the projections of features.7 and .8; pre-adaptors on the expansion convs of features.10 and .11
    assert names("mobilenet_v2", "features.9", width_mult=0.25) == [
        "features.7.conv.2:post", "features.8.conv.2:post", "features.10.conv.0.0:pre", "features.11.conv.0.0:pre"]


def test_several_gaps_share_their_sites_and_skip_dropped_blocks():
    assert names("cifar_resnet20", ["layer1.1", "layer1.2"], widths=(4, 8, 16)) == [
        "layer1.0.conv2:post", "layer2.0.conv1:pre"]


def adapted_student(name, random_adaptors=False):
    teacher = tiny_model(name, dropped=())
    block = teacher.droppable[0]
    student = adaptors.attach(pj.drop(teacher, [block]), adaptors.placement(teacher, block))
    if random_adaptors:
        flat = nnx.to_flat_state(nnx.state(student, Adaptor))
        keys = jax.random.split(jax.random.key(7), len(flat))
        nnx.update(student, nnx.from_flat_state([
            (p, v.replace(v.get_value() + 0.1 * jax.random.normal(k, v.get_value().shape))) for k, (p, v) in zip(keys, flat)]))
    return teacher, block, student


@pytest.mark.parametrize("name", list(TINY))
def test_identity_adaptors_leave_the_pruned_student_unchanged(name):
    teacher, block, student = adapted_student(name)
    x = images(name)
    np.testing.assert_allclose(logits(student, x), logits(pj.drop(teacher, [block]), x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(TINY))
def test_folding_trained_adaptors_is_exact(name):
    _, _, student = adapted_student(name, random_adaptors=True)
    x = images(name)
    before = logits(student, x)
    adaptors.fold(student)
    assert not jax.tree.leaves(nnx.state(student, Adaptor)) and not adaptors.adapted_convs(student)
    np.testing.assert_allclose(logits(student, x), before, rtol=1e-5, atol=1e-5 * float(jnp.abs(before).max()))
