"""A generated, label-consistent image task that needs no files (demos and tests)."""

from __future__ import annotations

import colorsys

import numpy as np

from practise_jax.data.imageset import ImageSet, check_indices, stored_size, validate


def synthetic_labels(count: int, num_classes: int = 10) -> np.ndarray:
    """Image i of a synthetic set has class i mod num_classes (equal counts, known without drawing)."""
    return np.arange(count, dtype=np.int64) % num_classes


SHAPES = ("disc", "square", "triangle", "ring", "cross")


def _class_style(c: int, num_classes: int) -> dict:
    """What makes class c recognisable: hue, stripe angle and frequency, and a shape."""
    golden = 0.6180339887498949
    return {
        "hue": (c / num_classes) if num_classes <= 24 else (c * golden) % 1.0,
        "angle": np.pi * ((c * golden + 0.1) % 1.0),
        "frequency": 2.0 + (c % 3),
        "shape": SHAPES[c % len(SHAPES)],
    }


def synthetic_image(index: int, size: int, num_classes: int = 10, seed: int = 0) -> np.ndarray:
    """Image ``index`` of the synthetic task: uint8 (size, size, 3), a pure function of its arguments."""
    label = index % num_classes
    style = _class_style(label, num_classes)
    rng = np.random.default_rng([seed, index])
    hue = (style["hue"] + rng.uniform(-0.02, 0.02)) % 1.0
    foreground = np.asarray(colorsys.hsv_to_rgb(hue, rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0)))
    background = np.asarray(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, rng.uniform(0.4, 0.6), rng.uniform(0.25, 0.45)))
    centres = (np.arange(size) + 0.5) / size
    y, x = np.meshgrid(centres, centres, indexing="ij")
    # Background: the class's stripes (angle, frequency) at a random phase.
    along = x * np.cos(style["angle"]) + y * np.sin(style["angle"])
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (style["frequency"] * along + rng.uniform()))
    canvas = background[None, None, :] * (0.6 + 0.4 * stripes[..., None])
    # Foreground: the class's shape at a random place and size, soft-edged over about one pixel.
    cy, cx = rng.uniform(0.35, 0.65, size=2)
    radius = rng.uniform(0.18, 0.28)
    dy, dx = y - cy, x - cx
    shape = style["shape"]
    if shape == "disc":
        distance = np.hypot(dy, dx) - radius
    elif shape == "square":
        distance = np.maximum(np.abs(dy), np.abs(dx)) - 0.85 * radius
    elif shape == "triangle":  # pointing up
        distance = np.maximum(np.maximum(dy - 0.7 * radius, -0.866 * dx - 0.5 * dy - 0.35 * radius),
                              0.866 * dx - 0.5 * dy - 0.35 * radius) * 1.6
    elif shape == "ring":
        distance = np.abs(np.hypot(dy, dx) - 0.8 * radius) - 0.3 * radius
    else:  # cross
        arm = 0.3 * radius
        distance = np.minimum(np.maximum(np.abs(dy) - radius, np.abs(dx) - arm),
                              np.maximum(np.abs(dx) - radius, np.abs(dy) - arm))
    cover = np.clip(0.5 - distance * size, 0.0, 1.0)[..., None]
    image = canvas * (1 - cover) + foreground[None, None, :] * cover
    image = image * 255 + rng.normal(0, 6, image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def synthetic(count: int = 1000, image_size: int = 32, *, num_classes: int = 10, seed: int = 0,
              indices=None) -> ImageSet:
    """A label-consistent generated task that needs no files.

    Class c has its own hue (foreground; the complementary, darker hue for
    the background), its own stripe angle and frequency in the background
    and its own shape (disc, square, triangle, ring, cross); each image
    draws a hue jitter, saturation, brightness, stripe phase, shape position
    and size, and pixel noise from ``(seed, index)``. Class identity is
    plain at 16 pixels (colour and layout), so a small CNN learns it
    quickly; labels are ``index mod num_classes``. Images are drawn at
    ``stored_size(image_size)``; the set is deterministic for a seed, and a
    shorter set is a prefix of a longer one.
    """
    side = stored_size(image_size)
    chosen = np.arange(count) if indices is None else check_indices(indices, count, f"synthetic:{count}")
    images = np.stack([synthetic_image(int(i), side, num_classes, seed) for i in chosen]) if len(chosen) else \
        np.zeros((0, side, side, 3), np.uint8)
    labels = synthetic_labels(count, num_classes)[chosen]
    return validate(images, labels, f"synthetic:{count}:{num_classes}:{seed}")
