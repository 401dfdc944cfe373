"""Image sources named by spec strings (the ``--data`` of the CLI), and the tiny-set load.

``npz:PATH``
    arrays ``images`` (uint8, N x H x W x 3, or N x H x W greyscale) and
    ``labels`` (int, N).
``folder:PATH`` (alias ``imagenet:PATH``)
    an image folder (`practise_jax.data.folders`).
``tfds:NAME[:SPLIT]``
    a TensorFlow Datasets dataset already prepared on this machine (split
    ``train`` by default; `practise_jax.data.tfds`).
``synthetic[:N[:CLASSES[:SEED]]]``, ``synthetic-hard[:N[:CLASSES[:SEED]]]``
    a generated task that needs nothing from outside (default 1000 images,
    10 classes, seed 0), easy or hard; see `practise_jax.data.synthetic`.
``ood:SPEC``
    any of the above as an *out-of-domain* set (PRACTISE_SPEC.md section 7):
    its labels mean nothing to the model (``ImageSet.labelled`` is False),
    which the label-free mimic loss does not mind; tiny sets are drawn from
    it with `sample_uniform`.

``image_size`` is the model's input size: images are stored as
`stored_size` squares (`practise_jax.data.imageset`). `load_tiny_set` lists
labels first and then decodes only the chosen images, so a folder of a
million images costs a directory walk, not a million decodes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from practise_jax.data import folders, tfds
from practise_jax.data.images import fit_image, pil_from_array
from practise_jax.data.imageset import ImageSet, check_indices, stored_size, validate, validate_labels
from practise_jax.data.sampling import sample_tiny_set, sample_uniform
from practise_jax.data.synthetic import synthetic, synthetic_labels
from practise_jax.errors import UserError

KINDS = ("npz:PATH, folder:PATH, imagenet:PATH, tfds:NAME[:SPLIT], synthetic[:N[:CLASSES[:SEED]]], "
         "synthetic-hard[:N[:CLASSES[:SEED]]], ood:SPEC")


def _split_spec(spec: str) -> tuple[str, str]:
    kind, sep, rest = spec.partition(":")
    if kind in ("synthetic", "synthetic-hard"):
        return kind, rest
    if not sep:
        raise UserError(f"data spec '{spec}' has no kind; write it as one of {KINDS}.")
    if kind not in {"npz", "folder", "imagenet", "tfds", "ood"}:
        raise UserError(f"unknown data kind '{kind}' in '{spec}'; supported: {KINDS}.")
    if not rest:
        raise UserError(f"data spec '{spec}' names no {'dataset' if kind == 'tfds' else 'path'} after '{kind}:'.")
    return kind, rest


def load_source(spec: str, *, image_size: int | None = None, indices=None) -> ImageSet:
    """Read the images named by ``spec`` (see the module docstring for the kinds).

    ``image_size`` is the model's input size S: images are stored as
    ``stored_size(S)`` squares (module docstring). ``indices`` keeps only
    those images, in that order, and decodes only them.
    """
    kind, rest = _split_spec(spec)
    if kind == "ood":
        inner = load_source(rest, image_size=image_size, indices=indices)
        return ImageSet(inner.images, inner.labels, f"ood:{inner.source}", labelled=False)
    if kind == "npz":
        data = load_npz(rest, image_size=image_size)
        return data if indices is None else data.take(check_indices(indices, len(data), spec))
    if kind in ("folder", "imagenet"):
        return folders.load_folder(rest, image_size=image_size, indices=indices)
    if kind == "tfds":
        return tfds.load_tfds(rest, image_size=image_size, indices=indices)
    count, classes, seed = _synthetic_args(spec, rest)
    return synthetic(count, image_size or 32, num_classes=classes, seed=seed, indices=indices, hard=kind == "synthetic-hard")


def source_labels(spec: str) -> np.ndarray:
    """The labels of a source, without decoding its images where the source allows."""
    kind, rest = _split_spec(spec)
    if kind == "ood":
        return source_labels(rest)
    if kind == "npz":
        return load_npz(rest).labels
    if kind in ("folder", "imagenet"):
        return folders.list_folder(rest)[1]
    if kind == "tfds":
        return tfds.labels(rest)
    count, classes, _ = _synthetic_args(spec, rest)
    return synthetic_labels(count, classes)


def out_of_domain(spec: str, image_size: int, *, indices=None) -> ImageSet:
    """``spec``'s images as an out-of-domain set for a model of input ``image_size``.

    E.g. ``out_of_domain("folder:shared/data/imagenet_sample", 32)`` gives
    the 1000 ImageNet sample images at 32x32 for the CIFAR models; their
    labels (0..999) stay as they are and ``labelled`` is False.
    """
    return load_source(spec if spec.startswith("ood:") else f"ood:{spec}", image_size=image_size, indices=indices)


def load_tiny_set(spec: str, shots: int, seed: int, *, num_classes: int | None = None, image_size: int | None = None,
                  balanced: bool = False) -> tuple[ImageSet, np.ndarray]:
    """Draw a tiny set from ``spec`` and decode only its images; returns the set and its indices (save them).

    Labelled sources use `sample_tiny_set`; out-of-domain ones (``ood:``)
    a uniformly random subset, as the reference does for CUB and Places.
    """
    labels = source_labels(spec)
    if spec.startswith("ood:"):
        indices = sample_uniform(len(labels), shots, seed)
    else:
        validate_labels(labels, spec, num_classes)
        indices = sample_tiny_set(labels, shots, seed, num_classes, balanced=balanced)
    return load_source(spec, image_size=image_size, indices=indices), indices


def load_npz(path: str, *, image_size: int | None = None) -> ImageSet:
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
    data = validate(images, labels, f"npz:{path}")
    if image_size is not None:
        target = stored_size(image_size)
        if data.images.shape[1:3] not in {(target, target), (image_size, image_size)}:
            data = ImageSet(np.stack([fit_image(pil_from_array(a), image_size) for a in data.images]),
                            data.labels, data.source)
    return data


def _synthetic_args(spec: str, rest: str) -> tuple[int, int, int]:
    parts = rest.split(":") if rest else []
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"'{spec}': write synthetic[:N[:CLASSES[:SEED]]] with whole numbers, e.g. synthetic:500:10.") from None
    if len(values) > 3:
        raise UserError(f"'{spec}': at most three numbers, synthetic:N:CLASSES:SEED.")
    count, classes, seed = values + [1000, 10, 0][len(values):]
    if count < 1 or classes < 2:
        raise UserError(f"'{spec}': needs at least 1 image and 2 classes.")
    return count, classes, seed
