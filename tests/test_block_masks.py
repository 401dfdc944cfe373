"""Static drop sets and dynamic block masks compute the same function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import practise_jax as pj
from practise_jax import protocol
from tiny_models import TINY, images, tiny_model


def teacher_and_input(name):
    return tiny_model(name, dropped=()), jnp.asarray(images(name))


@pytest.mark.parametrize("name", list(TINY))
def test_static_drop_equals_dynamic_mask(name):
    teacher, x = teacher_and_input(name)
    dropped = [teacher.droppable[0], teacher.droppable[-1]]
    student = pj.drop(teacher, dropped)
    graphdef, state = nnx.split(teacher)
    forward = jax.jit(lambda state, x, mask: nnx.merge(graphdef, state)(x, mask))
    static_logits, static_features = jax.jit(lambda s, x: nnx.merge(nnx.graphdef(student), s)(x))(nnx.state(student), x)
    dynamic_logits, dynamic_features = forward(state, x, protocol.mask_of(teacher, dropped))
    np.testing.assert_allclose(static_logits, dynamic_logits, rtol=1e-5, atol=1e-5)  # two programs: rounding may differ
    np.testing.assert_allclose(static_features["pre_gap"], dynamic_features["pre_gap"], rtol=1e-5, atol=1e-5)
    full_logits, _ = forward(state, x, protocol.mask_of(teacher, []))
    assert not np.allclose(full_logits, static_logits, atol=1e-4), "dropping blocks must change the output"
    np.testing.assert_allclose(full_logits, teacher(x)[0], rtol=1e-5, atol=1e-5)  # an all-ones mask is the unmasked model


def test_vmap_over_masks_equals_separate_calls():
    teacher, x = teacher_and_input("cifar_resnet20")
    graphdef, state = nnx.split(teacher)
    masks = jnp.stack([protocol.mask_of(teacher, [b]) for b in teacher.droppable[:3]])

    @jax.jit
    def logits(state, mask):
        return nnx.merge(graphdef, state)(x, mask)[0]

    batched = jax.vmap(logits, in_axes=(None, 0))(state, masks)
    for i, mask in enumerate(masks):
        np.testing.assert_allclose(batched[i], logits(state, mask), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(TINY))
def test_starting_at_a_block_input_gives_the_full_forward(name):
    teacher, x = teacher_and_input(name)
    address = teacher.droppable[len(teacher.droppable) // 2]
    full_logits, full_features = teacher(x)
    logits, features = teacher(teacher.block_input(x, address), start=address)
    np.testing.assert_allclose(logits, full_logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(features["pre_gap"], full_features["pre_gap"], rtol=1e-6, atol=1e-6)
