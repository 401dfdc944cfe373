"""An image set as arrays (uint8 NHWC images, int64 labels), its checks, and the stored image size.

Stored size. Images of varying size (folders, tfds) are kept as one uint8
array of squares. For a model input ``S``: models with small inputs
(``S <= 32``, the CIFAR recipe) get each image resized straight to
``S x S``; larger models get the shorter side resized to
``round(S * 256 / 224)`` (256 for 224) and the centred square of that side
kept, a margin for the crops (see `practise_jax.data.images.fit_image`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from practise_jax.errors import UserError
from practise_jax.transforms import small_recipe


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """uint8 images (N, H, W, 3) and int64 labels (N,), with where they came from.

    ``labelled`` is False for out-of-domain sets, whose labels are the
    source's own and mean nothing to the model.
    """

    images: np.ndarray
    labels: np.ndarray
    source: str
    labelled: bool = True

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices) -> ImageSet:
        return ImageSet(self.images[indices], self.labels[indices], self.source, self.labelled)


def stored_size(input_size: int) -> int:
    """Side of the stored square images for a model input: S itself up to 32, else round(S * 256 / 224)."""
    return int(input_size) if small_recipe(input_size) else int(round(input_size * 256 / 224))


def check_indices(indices, count: int, source: str) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise UserError(f"{source}: indices must be a 1-D integer array, got shape {indices.shape} dtype {indices.dtype}.")
    if len(indices) and (indices.min() < 0 or indices.max() >= count):
        raise UserError(f"{source}: indices span {indices.min()}..{indices.max()} but the source holds {count} images; "
                        "were they saved for another data set?")
    return indices


def validate_labels(labels: np.ndarray, source: str, num_classes: int | None = None) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{source}: labels have shape {labels.shape} and dtype {labels.dtype}; expected a 1-D array of integers.")
    if len(labels) == 0:
        raise UserError(f"{source}: holds no images.")
    if labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes):
        allowed = f"0..{num_classes - 1}" if num_classes is not None else "0 or more"
        raise UserError(f"{source}: labels span {labels.min()}..{labels.max()}, outside {allowed}; "
                        "check the label column, or choose a model with as many classes.")
    return labels


def validate(images: np.ndarray, labels: np.ndarray, source: str, num_classes: int | None = None) -> ImageSet:
    """Check shapes, dtypes and label range; greyscale (N, H, W) or (N, H, W, 1) becomes RGB."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 1):
        images = np.repeat(images.reshape(images.shape[:3] + (1,)), 3, axis=-1)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"{source}: images have shape {images.shape}; expected N x H x W x 3 (NHWC, RGB).")
    if images.dtype != np.uint8:
        raise UserError(f"{source}: images are {images.dtype}; expected uint8 pixels in 0..255.")
    if len(images) == 0:
        raise UserError(f"{source}: holds no images.")
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{source}: labels have shape {labels.shape} and dtype {labels.dtype}; expected {len(images)} integers.")
    validate_labels(labels, source, num_classes)
    return ImageSet(images, labels.astype(np.int64), source)


def check_fits(data: ImageSet, input_size: int, num_classes: int, model: str, *, margin: bool = False) -> None:
    """Refuse images of another size than the model's input, or labels it cannot predict.

    By default the images must be exactly ``input_size`` square (views that
    only normalise). With ``margin=True`` (views from
    `practise_jax.transforms.views_for`), models above 32 pixels also accept
    larger squares such as the stored ``stored_size(input_size)``. Labels are
    not checked for out-of-domain sets (``data.labelled`` False).
    """
    height, width = data.images.shape[1:3]
    larger_ok = margin and not small_recipe(input_size)
    fits = (height == width and height >= input_size) if larger_ok else (height, width) == (input_size, input_size)
    if not fits:
        wanted = f"{input_size}x{input_size} or a larger square" if larger_ok else f"{input_size}x{input_size}"
        raise UserError(
            f"{data.source}: images are {height}x{width} but {model} takes {wanted}; "
            f"load them with image size {input_size} (resized as the model expects), or choose the model they were made for."
        )
    if data.labelled and data.labels.max() >= num_classes:
        raise UserError(f"{data.source}: label {data.labels.max()} is out of range for {model}, which has {num_classes} classes; "
                        "use data with the model's classes, or mark it out-of-domain with ood:SPEC.")
