"""TensorFlow Datasets sources, read from a local data dir only (nothing is downloaded at run time)."""

from __future__ import annotations

import os

import numpy as np

from practise_jax.data.images import fit_image, stack_images
from practise_jax.data.imageset import ImageSet, check_indices, validate
from practise_jax.errors import UserError

TFDS_INSTALL = "pip install 'practise-jax[tfds]'"


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError(f"tfds: sources need tensorflow-datasets, which is not installed; {TFDS_INSTALL} "
                        "(or use folder:PATH / npz:PATH).") from None
    return tfds


def _tfds_open(rest: str, decoders=None):
    tfds = _import_tfds()
    name, _, split = rest.partition(":")
    split = split or "train"
    try:
        dataset = tfds.load(name, split=split, as_supervised=True, download=False, try_gcs=False,
                            shuffle_files=False, decoders=decoders)
    except Exception as error:  # tfds raises assorted types (AssertionError, DatasetNotFoundError, ValueError)
        where = os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
        first_line = (str(error).splitlines() or [""])[0]
        raise UserError(
            f"tfds:{name}:{split} is not available locally in {where} ({type(error).__name__}: {first_line}). "
            f"Nothing is downloaded at run time: prepare it once with `tfds build {name}` on a machine with internet "
            "(datasets with manual downloads, such as imagenet2012, need their archives in <data_dir>/downloads/manual "
            "first), then copy the data folder here or set TFDS_DATA_DIR to it; check the name and split.") from None
    return tfds, dataset, f"tfds:{name}:{split}"


def load_tfds(rest: str, *, image_size: int | None = None, indices=None) -> ImageSet:
    from PIL import Image

    tfds, dataset, source = _tfds_open(rest)
    wanted = None if indices is None else {int(i): k for k, i in enumerate(np.asarray(indices))}
    images, labels = {}, {}
    count = 0
    for i, (image, label) in enumerate(tfds.as_numpy(dataset)):
        count += 1
        if wanted is not None and i not in wanted:
            continue
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        rgb = Image.fromarray(array.astype(np.uint8)).convert("RGB")
        position = i if wanted is None else wanted[i]
        images[position], labels[position] = fit_image(rgb, image_size), int(label)
    if indices is not None:
        check_indices(indices, count, source)
    order = sorted(images)
    stacked = stack_images([images[k] for k in order], [f"{source}#{k}" for k in order])
    return validate(stacked, np.asarray([labels[k] for k in order], np.int64), source)


def labels(rest: str) -> np.ndarray:
    tfds = _import_tfds()
    try:
        decoders = {"image": tfds.decode.SkipDecoding()}
    except AttributeError:
        decoders = None
    _, dataset, _ = _tfds_open(rest, decoders)
    return np.asarray([int(label) for _, label in tfds.as_numpy(dataset)], np.int64)
