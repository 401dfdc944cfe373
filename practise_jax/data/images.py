"""Decoding image files into uint8 RGB arrays fitted to a model's input (resize, centre square).

For models above 32 pixels the eval view's ``CenterCrop(S)`` of the stored
square is exactly torchvision's ``Resize(256) + CenterCrop(224)`` (same Pillow
resize). The train view's RandomResizedCrop, however, draws its boxes from the
stored square, not from the full (non-square) image as torchvision does:
boxes never reach the parts of a wide or tall image outside its central
square, and small crops are resampled from the 256-pixel copy rather than
from the original resolution. For small models, JPEGs are decoded by
Pillow's ``draft`` at 1/2..1/8 scale (never below twice the target side)
before the resize, which saves most of the decode time of large photos at a
negligible cost at 32 pixels. Without an image size the images are kept as
they are and must all have one size.
"""

from __future__ import annotations

import concurrent.futures
import os
import warnings

import numpy as np

from practise_jax.data.imageset import stored_size
from practise_jax.errors import UserError
from practise_jax.transforms import small_recipe


def read_images(files, image_size: int | None) -> np.ndarray:
    """Decode image files (a few threads) into one uint8 array, fitted to ``image_size`` (module docstring)."""
    files = list(files)
    workers = min(8, os.cpu_count() or 1, max(1, len(files)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        arrays = list(pool.map(lambda f: read_image(f, image_size), files))
    return stack_images(arrays, [str(f) for f in files])


def stack_images(arrays: list[np.ndarray], names: list[str]) -> np.ndarray:
    if not arrays:
        return np.zeros((0, 0, 0, 3), np.uint8)
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        odd = next(i for i, a in enumerate(arrays) if a.shape != first)
        raise UserError(f"images differ in size ({names[0]} is {first[1]}x{first[0]}, {names[odd]} is "
                        f"{arrays[odd].shape[1]}x{arrays[odd].shape[0]}); give an image size (the model's input size) "
                        "so they are resized to one.")
    return np.stack(arrays)


def read_image(file, image_size: int | None) -> np.ndarray:
    """One image file as uint8 RGB (H, W, 3), fitted to ``image_size``; a clear error names a bad file."""
    from PIL import Image

    try:
        with Image.open(file) as image:
            if image_size is not None and small_recipe(image_size) and image.format == "JPEG":
                image.draft("RGB", (2 * image_size, 2 * image_size))  # decode at 1/2..1/8 scale, keeping 2x the side
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # palette-with-transparency notices
                rgb = image.convert("RGBA").convert("RGB") if image.mode == "P" else image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UserError(f"cannot read image '{file}' ({type(error).__name__}: {error}); remove or replace the file.") from None
    return fit_image(rgb, image_size)


def fit_image(image, image_size: int | None) -> np.ndarray:
    """A PIL RGB image -> uint8 (T, T, 3) with T = stored_size(image_size) (module docstring); as-is without a size."""
    from PIL import Image

    if image_size is None:
        return np.asarray(image, np.uint8)
    if small_recipe(image_size):
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.BILINEAR)
        return np.asarray(image, np.uint8)
    target = stored_size(image_size)
    width, height = image.size
    if width <= height:
        size = (target, int(target * height / width))
    else:
        size = (int(target * width / height), target)
    if size != image.size:
        image = image.resize(size, Image.BILINEAR)
    left, top = int(round((size[0] - target) / 2.0)), int(round((size[1] - target) / 2.0))
    return np.asarray(image.crop((left, top, left + target, top + target)), np.uint8)


def pil_from_array(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array, "RGB")
