"""Static drop sets and dynamic block masks compute the same function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import model_zoo

TINY = {
    "cifar_resnet20": (dict(widths=(4, 8, 16)), 16),
    "resnet18": (dict(widths=(8, 8, 16, 16), num_classes=10), 32),
    "resnet50": (dict(widths=(4, 4, 8, 8), num_classes=10), 32),
    "mobilenet_v2": (dict(width_mult=0.25, num_classes=10), 32),
}


def randomise_batch_stats(model, seed):
    """Non-trivial BN statistics, so a wrongly placed block would show."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.BatchStat))
    keys = jax.random.split(jax.random.key(seed), len(flat))
    low_high = {"mean": (-0.2, 0.2), "var": (0.5, 1.5)}
    new = [(path, variable.replace(jax.random.uniform(key, variable.get_value().shape, minval=low_high[path[-1]][0], maxval=low_high[path[-1]][1])))
           for key, (path, variable) in zip(keys, flat)]
    nnx.update(model, nnx.from_flat_state(new))


def teacher_and_input(name):
    overrides, size = TINY[name]
    teacher = model_zoo.create(name, rngs=nnx.Rngs(1), **overrides)
    randomise_batch_stats(teacher, 2)
    teacher.eval()
    x = jax.random.normal(jax.random.key(3), (2, size, size, 3))
    return teacher, overrides, x


def student_from(teacher, dropped):
    student = model_zoo.prune(teacher, dropped)
    student.eval()
    return student


def drop_mask(model, dropped):
    return jnp.asarray([0.0 if b in dropped else 1.0 for b in model.droppable])


@pytest.mark.parametrize("name", list(TINY))
def test_static_drop_equals_dynamic_mask(name):
    teacher, overrides, x = teacher_and_input(name)
    droppable = model_zoo.get_info(name).droppable
    dropped = [droppable[0], droppable[-1]]
    student = student_from(teacher, dropped)
    static_logits, static_features = student(x)
    dynamic_logits, dynamic_features = teacher(x, drop_mask(teacher, dropped))
    np.testing.assert_allclose(static_logits, dynamic_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(static_features["pre_gap"], dynamic_features["pre_gap"], rtol=1e-5, atol=1e-5)
    full_logits, _ = teacher(x)
    assert not np.allclose(full_logits, static_logits, atol=1e-4), "dropping blocks must change the output"


@pytest.mark.parametrize("name", ["cifar_resnet20", "mobilenet_v2"])
def test_all_ones_mask_is_the_unmasked_model(name):
    teacher, _, x = teacher_and_input(name)
    np.testing.assert_array_equal(teacher(x)[0], teacher(x, jnp.ones(len(teacher.droppable)))[0])


def test_vmap_over_masks_equals_separate_calls():
    teacher, _, x = teacher_and_input("cifar_resnet20")
    graphdef, state = nnx.split(teacher)
    masks = jnp.stack([drop_mask(teacher, [b]) for b in teacher.droppable[:3]])

    @jax.jit
    def logits(state, mask):
        return nnx.merge(graphdef, state)(x, mask)[0]

    batched = jax.vmap(logits, in_axes=(None, 0))(state, masks)
    for i, mask in enumerate(masks):
        np.testing.assert_allclose(batched[i], logits(state, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(TINY))
def test_starting_at_a_block_input_gives_the_full_forward(name):
    teacher, _, x = teacher_and_input(name)
    address = teacher.droppable[len(teacher.droppable) // 2]
    full_logits, full_features = teacher(x)
    logits, features = teacher(teacher.block_input(x, address), start=address)
    np.testing.assert_allclose(logits, full_logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(features["pre_gap"], full_features["pre_gap"], rtol=1e-6, atol=1e-6)


def test_pruning_composes():
    teacher, _, x = teacher_and_input("cifar_resnet20")
    once = student_from(student_from(teacher, ["layer1.1"]), ["layer1.1"])  # second call drops the old layer1.2
    twice = student_from(teacher, ["layer1.1", "layer1.2"])
    assert once.dropped == twice.dropped == ("layer1.1", "layer1.2")
    np.testing.assert_array_equal(once(x)[0], twice(x)[0])
