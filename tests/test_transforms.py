"""In-step image views: RandomResizedCrop, flips, crops, and the recipe chosen per model by views_for."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageFilter

from model_zoo.registry import IMAGENET_MEAN, IMAGENET_STD
from practise_jax.errors import UserError
from practise_jax import transforms as T

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def random_images(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_rrc_boxes_follow_torchvision_limits_and_are_deterministic_per_key():
    boxes = np.asarray(T.random_resized_crop_boxes(jax.random.key(0), 4000, 256, 256))
    top, left, h, w = boxes.T
    assert np.all((top >= 0) & (left >= 0) & (top + h <= 256) & (left + w <= 256) & (h > 0) & (w > 0))
    fraction, aspect = h * w / 256**2, w / h
    tried = ~((h == 256) & (w == 256))  # the full-image fallback is allowed outside the limits
    assert fraction[tried].min() > 0.07 and fraction.max() <= 1.0  # scale (0.08, 1), up to rounding
    assert aspect[tried].min() > 0.74 and aspect[tried].max() < 1.35  # ratio (3/4, 4/3), up to rounding
    assert 0.45 < fraction.mean() < 0.6  # E[U(0.08, 1)] = 0.54, less the tries that do not fit
    again = np.asarray(T.random_resized_crop_boxes(jax.random.key(0), 4000, 256, 256))
    np.testing.assert_array_equal(boxes, again)
    assert not np.array_equal(boxes, np.asarray(T.random_resized_crop_boxes(jax.random.key(1), 4000, 256, 256)))


@pytest.mark.parametrize("height, width, expected", [
    (256, 256, (0, 0, 256, 256)),  # square: the whole image
    (100, 300, (0, 83, 100, 133)),  # too wide: w = round(100 * 4/3) = 133, centred
    (300, 100, (83, 0, 133, 100)),  # too tall: h = round(100 / (3/4)) = 133, centred
])
def test_rrc_fallback_is_the_centre_crop(height, width, expected):
    boxes = np.asarray(T.random_resized_crop_boxes(jax.random.key(0), 3, height, width, scale=(5.0, 6.0)))
    assert all(tuple(b) == expected for b in boxes.tolist())


def test_resized_crop_matches_pil_bilinear_box_resize():
    image = np.asarray(Image.fromarray(random_images(1, 96, 96)[0]).filter(ImageFilter.GaussianBlur(1.5)))
    for box in [(10, 20, 50, 70), (0, 0, 96, 96), (30, 5, 20, 16)]:  # shrink, shrink, enlarge
        ours = np.asarray(T.resized_crop(jnp.asarray(image[None]), jnp.asarray([box]), 64))[0]
        top, left, h, w = box
        pil = np.asarray(Image.fromarray(image).resize((64, 64), Image.BILINEAR, box=(left, top, left + w, top + h)))
        assert np.abs(ours - pil.astype(np.float32)).max() <= 1.01  # PIL rounds to uint8


def test_random_resized_crop_shape_range_and_constant_image():
    images = jnp.asarray(random_images(3, 80, 80))
    out = T.random_resized_crop(jax.random.key(3), images, 64)
    assert out.shape == (3, 64, 64, 3) and out.dtype == jnp.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 255.0
    flat = T.random_resized_crop(jax.random.key(3), jnp.full((2, 80, 80, 3), 77, jnp.uint8), 64)
    np.testing.assert_allclose(np.asarray(flat), 77.0, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(T.random_resized_crop(jax.random.key(3), images, 64)))


def test_random_flip_mirrors_whole_images():
    images = jnp.asarray(random_images(64, 8, 8))
    out = np.asarray(T.random_flip(jax.random.key(0), images))
    raw = np.asarray(images)
    flipped = np.array([np.array_equal(o, r[:, ::-1]) for o, r in zip(out, raw)])
    kept = np.array([np.array_equal(o, r) for o, r in zip(out, raw)])
    assert np.all(flipped ^ kept) and 10 < flipped.sum() < 54
    np.testing.assert_array_equal(np.asarray(T.random_flip(jax.random.key(0), images, p=1.0)), raw[:, :, ::-1])


def test_pad_crop_flip_is_a_window_of_the_padded_image():
    images = random_images(16, 32, 32)
    out = np.asarray(T.pad_crop_flip(jax.random.key(1), jnp.asarray(images)))
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for o, p in zip(out, padded):
        windows = [p[i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
        assert any(np.array_equal(o, w) or np.array_equal(o[:, ::-1], w) for w in windows)


def test_centre_crop_uses_torchvision_rounding():
    images = random_images(2, 256, 256)
    np.testing.assert_array_equal(np.asarray(T.centre_crop(jnp.asarray(images), 224)), images[:, 16:240, 16:240])
    odd = random_images(1, 37, 38)
    np.testing.assert_array_equal(np.asarray(T.centre_crop(jnp.asarray(odd), 32)), odd[:, 2:34, 3:35])
    with pytest.raises(UserError, match="cannot centre-crop"):
        T.centre_crop(jnp.asarray(odd), 40)


def test_views_for_cifar_models():
    info = T.InputSpec(32, IMAGENET_MEAN, IMAGENET_STD)
    views = T.views_for(info, 32)
    assert views.recipe == "cifar" and hash(views) == hash(T.views_for(info, 32))
    images = jnp.asarray(random_images(4, 32, 32))
    key = jax.random.key(0)
    np.testing.assert_allclose(np.asarray(views.train(key, images)), np.asarray(T.train_view(key, images, MEAN, STD)))
    np.testing.assert_allclose(np.asarray(views.eval(images)), np.asarray(T.normalise(images, MEAN, STD)))
    with pytest.raises(UserError, match="image_size=32"):
        T.views_for(info, 40)


def test_views_for_imagenet_models_inside_jit():
    info = T.InputSpec(224, IMAGENET_MEAN, IMAGENET_STD)
    views = T.views_for(info, 256)
    assert views.recipe == "imagenet" and (views.input_size, views.stored_size) == (224, 256)
    images = jnp.asarray(random_images(2, 256, 256))

    @jax.jit
    def step(key, images):  # a Views is a closure constant of the compiled step
        return views.train(key, images)

    train = step(jax.random.key(0), images)
    assert train.shape == (2, 224, 224, 3) and train.dtype == jnp.float32
    low, high = (0 - max(MEAN)) / min(STD), (1 - min(MEAN)) / min(STD)
    assert float(train.min()) >= low - 1e-4 and float(train.max()) <= high + 1e-4
    evaluated = jax.jit(views.eval)(images)
    expected = T.normalise(jnp.asarray(np.asarray(images)[:, 16:240, 16:240]), MEAN, STD)
    np.testing.assert_allclose(np.asarray(evaluated), np.asarray(expected), atol=1e-6)
    np.testing.assert_allclose(np.asarray(views.train(jax.random.key(0), images)), np.asarray(train), atol=1e-5)  # jit = eager
    with pytest.raises(UserError, match="stored at 256x256"):
        views.eval(jnp.asarray(random_images(1, 224, 200)))
    with pytest.raises(UserError, match="image_size=224"):
        T.views_for(info, 200)


def test_out_of_domain_views_crop_without_flip():
    info = T.InputSpec(24, IMAGENET_MEAN, IMAGENET_STD)
    views = T.views_for(info, 40, out_of_domain=True)
    assert views.recipe == "out_of_domain"
    images = random_images(8, 40, 40)
    out = np.asarray(views.train(jax.random.key(2), jnp.asarray(images)))
    normalised = (images / 255.0 - np.asarray(MEAN)) / np.asarray(STD)
    for k in range(8):
        windows = [normalised[k, i:i + 24, j:j + 24] for i in range(17) for j in range(17)]
        assert any(np.allclose(out[k], w, atol=1e-5) for w in windows)  # a window, never mirrored
    small = T.views_for(T.InputSpec(32, IMAGENET_MEAN, IMAGENET_STD), 32, out_of_domain=True)
    assert small.train(jax.random.key(0), jnp.asarray(random_images(2, 32, 32))).shape == (2, 32, 32, 3)
