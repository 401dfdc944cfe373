"""Image views, written in JAX so they run inside the compiled training step.

Train view (CIFAR, as torchvision's RandomCrop(32, padding=4) + horizontal
flip): zero-pad raw pixels by 4, crop a random window, flip with p = 0.5,
then normalise. The eval ("metric") view is normalisation alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def normalise(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """uint8 NHWC -> float32, (x / 255 - mean) / std per channel."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def pad_crop_flip(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """Random crop of the zero-padded images (same size) and random horizontal flip, per image."""
    n, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * padding + 1)
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    crops = jax.vmap(lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, c)))(padded, offsets)
    flips = jax.random.bernoulli(flip_key, 0.5, (n,))
    return jnp.where(flips[:, None, None, None], crops[:, :, ::-1, :], crops)


def train_view(key: jax.Array, images: jax.Array, mean, std) -> jax.Array:
    """The augmented, normalised view used for training (CIFAR recipe)."""
    return normalise(pad_crop_flip(key, images), mean, std)


def eval_view(images: jax.Array, mean, std) -> jax.Array:
    return normalise(images, mean, std)
