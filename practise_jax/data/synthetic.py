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


def _distance(shape: str, dy: np.ndarray, dx: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance (negative inside) to a shape centred at the origin."""
    if shape == "disc":
        return np.hypot(dy, dx) - radius
    if shape == "square":
        return np.maximum(np.abs(dy), np.abs(dx)) - 0.85 * radius
    if shape == "triangle":  # pointing up
        return np.maximum(np.maximum(dy - 0.7 * radius, -0.866 * dx - 0.5 * dy - 0.35 * radius),
                          0.866 * dx - 0.5 * dy - 0.35 * radius) * 1.6
    if shape == "ring":
        return np.abs(np.hypot(dy, dx) - 0.8 * radius) - 0.3 * radius
    arm = 0.3 * radius  # cross
    return np.minimum(np.maximum(np.abs(dy) - radius, np.abs(dx) - arm), np.maximum(np.abs(dx) - radius, np.abs(dy) - arm))


def _paint(canvas, y, x, shape, centre, radius, colour, size, alpha=1.0):
    """``canvas`` with ``shape`` drawn over it, soft-edged over about one pixel."""
    cover = alpha * np.clip(0.5 - _distance(shape, y - centre[0], x - centre[1], radius) * size, 0.0, 1.0)[..., None]
    return canvas * (1 - cover) + colour[None, None, :] * cover


def synthetic_image(index: int, size: int, num_classes: int = 10, seed: int = 0, *, hard: bool = False) -> np.ndarray:
    """Image ``index`` of the synthetic task: uint8 (size, size, 3), a pure function of its arguments.

    The easy task gives each class its own hue, background stripes and shape.
    The hard one (``hard=True``) leaves only the shape and its size to tell the
    classes apart: class c is shape ``c mod 5`` drawn small or large (``c // 5``
    mod 2, with overlapping size ranges), in a random colour over random
    stripes, beside a smaller distractor shape, under stronger pixel noise.
    """
    label = index % num_classes
    rng = np.random.default_rng([seed, index])
    centres = (np.arange(size) + 0.5) / size
    y, x = np.meshgrid(centres, centres, indexing="ij")
    if hard:
        hue = rng.uniform()
        angle, frequency, shape = np.pi * rng.uniform(), rng.uniform(1.5, 4.0), SHAPES[label % len(SHAPES)]
        sizes = (0.12, 0.19) if (label // len(SHAPES)) % 2 == 0 else (0.18, 0.26)
    else:
        style = _class_style(label, num_classes)
        hue = (style["hue"] + rng.uniform(-0.02, 0.02)) % 1.0
        angle, frequency, shape, sizes = style["angle"], style["frequency"], style["shape"], (0.18, 0.28)
    foreground = np.asarray(colorsys.hsv_to_rgb(hue, rng.uniform(0.75, 1.0), rng.uniform(0.8, 1.0)))
    background = np.asarray(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, rng.uniform(0.4, 0.6), rng.uniform(0.25, 0.45)))
    along = x * np.cos(angle) + y * np.sin(angle)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (frequency * along + rng.uniform()))
    canvas = background[None, None, :] * (0.6 + 0.4 * stripes[..., None])
    if hard:
        distractor = np.asarray(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.5, 1.0), rng.uniform(0.6, 1.0)))
        canvas = _paint(canvas, y, x, SHAPES[rng.integers(len(SHAPES))], rng.uniform(0.15, 0.85, size=2),
                        rng.uniform(0.07, 0.12), distractor, size, alpha=0.7)
    centre = rng.uniform(0.35, 0.65, size=2)
    canvas = _paint(canvas, y, x, shape, centre, rng.uniform(*sizes), foreground, size)
    image = canvas * 255 + rng.normal(0, 14 if hard else 6, canvas.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def synthetic(count: int = 1000, image_size: int = 32, *, num_classes: int = 10, seed: int = 0, indices=None,
              hard: bool = False) -> ImageSet:
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
    images = np.stack([synthetic_image(int(i), side, num_classes, seed, hard=hard) for i in chosen]) if len(chosen) else \
        np.zeros((0, side, side, 3), np.uint8)
    labels = synthetic_labels(count, num_classes)[chosen]
    return validate(images, labels, f"synthetic{'-hard' if hard else ''}:{count}:{num_classes}:{seed}")
