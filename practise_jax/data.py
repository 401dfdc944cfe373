"""Image sources and their validation.

A source is named by a spec string: ``npz:PATH`` (arrays ``images`` uint8
NHWC and ``labels`` int). Every source yields a validated `ImageSet`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from model_zoo.errors import UserError


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """uint8 images (N, H, W, 3) and int64 labels (N,), with where they came from."""

    images: np.ndarray
    labels: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices) -> ImageSet:
        return ImageSet(self.images[indices], self.labels[indices], self.source)


def load_source(spec: str) -> ImageSet:
    """Read the images named by ``spec`` (``npz:PATH``)."""
    kind, sep, rest = spec.partition(":")
    if not sep:
        raise UserError(f"data spec '{spec}' has no kind; write it as npz:PATH.")
    if kind == "npz":
        return load_npz(rest)
    raise UserError(f"unknown data kind '{kind}' in '{spec}'; supported: npz:PATH.")


def load_npz(path: str) -> ImageSet:
    file = Path(path)
    if not file.is_file():
        raise UserError(f"data file '{path}' does not exist; check the path after 'npz:'.")
    try:
        with np.load(file, allow_pickle=False) as archive:
            names = set(archive.files)
            if not {"images", "labels"} <= names:
                raise UserError(
                    f"'{path}' must hold arrays 'images' (uint8, N x H x W x 3) and 'labels' (int, N); it holds {sorted(names)}."
                )
            images, labels = archive["images"], archive["labels"]
    except UserError:
        raise
    except Exception as error:
        raise UserError(f"could not read '{path}' as a numpy .npz file ({type(error).__name__}: {error}).") from None
    return validate(images, labels, f"npz:{path}")


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
    if labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes):
        raise UserError(f"{source}: labels span {labels.min()}..{labels.max()}, outside 0..{(num_classes or 0) - 1}.")
    return ImageSet(images, labels.astype(np.int64), source)


def check_fits(data: ImageSet, input_size: int, num_classes: int, model: str) -> None:
    """Refuse images of another size than the model's input, or labels it cannot predict."""
    height, width = data.images.shape[1:3]
    if (height, width) != (input_size, input_size):
        raise UserError(
            f"{data.source}: images are {height}x{width} but {model} takes {input_size}x{input_size}; "
            "resize them, or choose the model they were made for."
        )
    if data.labels.max() >= num_classes:
        raise UserError(f"{data.source}: label {data.labels.max()} is out of range for {model}, which has {num_classes} classes.")


def sample_tiny_set(labels: np.ndarray, shots: int, seed: int, num_classes: int | None = None) -> np.ndarray:
    """Indices of a seeded tiny set, drawn as the reference draws it (PRACTISE_SPEC.md section 1).

    Fewer shots than classes: each draw picks a class uniformly, then an image
    of it uniformly, redrawing duplicates (so not class-balanced). Otherwise
    ``shots // num_classes`` images of every class, without replacement. The
    reference's threshold is 1000 because ImageNet has 1000 classes; here it
    is the number of classes. ``shots = -1`` takes everything.
    """
    labels = np.asarray(labels)
    if shots == -1:
        return np.arange(len(labels))
    if shots < 1:
        raise UserError(f"--shots must be a positive number of images (or -1 for all), got {shots}.")
    if shots > len(labels):
        raise UserError(f"--shots {shots} asks for more images than the data holds ({len(labels)}); use at most {len(labels)}.")
    classes = np.arange(num_classes if num_classes is not None else labels.max() + 1)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    rng = np.random.RandomState(seed)
    if shots < len(classes):
        chosen: list[int] = []
        while len(chosen) < shots:
            members = by_class[rng.randint(len(classes))]
            if len(members) == 0:
                continue
            index = int(members[rng.randint(len(members))])
            if index not in chosen:
                chosen.append(index)
        return np.asarray(chosen)
    per_class = shots // len(classes)
    short = [int(c) for c, members in zip(classes, by_class) if len(members) < per_class]
    if short:
        raise UserError(f"--shots {shots} needs {per_class} images of every class, but classes {short} have fewer; use fewer shots.")
    return np.concatenate([rng.choice(members, per_class, replace=False) for members in by_class])
