"""Image sources, their validation, and the tiny-set draw.

A source is named by a spec string (the ``--data`` of the CLI):

``npz:PATH``
    arrays ``images`` (uint8, N x H x W x 3, or N x H x W greyscale) and
    ``labels`` (int, N).
``folder:PATH`` (alias ``imagenet:PATH``)
    an image folder. Either one subfolder per class (torchvision's
    ``ImageFolder``: classes are the sorted subfolder names, label = index in
    that order, so an ImageNet ``train/`` folder of synset folders gets the
    standard 0..999 labels; hidden files and folders are skipped; images may
    sit deeper inside a class folder), or a flat layout described by a
    ``labels.csv`` in PATH (or PATH itself naming a ``.csv`` file) with a
    header holding a ``file`` column (paths relative to the CSV's folder)
    and a ``label`` or ``class_index`` column. ``shared/data/imagenet_sample``
    (``images/<synset>_<name>.JPEG`` + ``labels.csv``) loads this way.
    JPEG, PNG, BMP and WebP files are read; greyscale, palette, CMYK and
    RGBA images become RGB (alpha dropped, as torchvision's loader does).
``tfds:NAME[:SPLIT]``
    a TensorFlow Datasets dataset already prepared on this machine (split
    ``train`` by default). Nothing is downloaded at run time
    (``download=False, try_gcs=False``); the extra ``practise-jax[tfds]``
    provides the package.
``synthetic[:N[:CLASSES[:SEED]]]``
    a generated task that needs nothing from outside (default 1000 images,
    10 classes, seed 0); see `synthetic`.
``ood:SPEC``
    any of the above as an *out-of-domain* set (PRACTISE_SPEC.md section 7):
    its labels mean nothing to the model (``ImageSet.labelled`` is False),
    which the label-free mimic loss does not mind; draw tiny sets from it
    with `sample_uniform`.

Stored size. Images of varying size (folders, tfds) are kept as one uint8
array of squares. For a model input ``S`` (``image_size``): models with small
inputs (``S <= 32``, the CIFAR recipe) get each image resized straight to
``S x S`` (aspect ratio not kept); larger models get the shorter side resized
to ``round(S * 256 / 224)`` (256 for 224) with bilinear, antialiased
resampling (torchvision's ``Resize(256)``, long side truncated as torchvision
does) and the centred square of that side kept, a margin for the crops. The
eval view's ``CenterCrop(S)`` of that square is exactly torchvision's
``Resize(256) + CenterCrop(224)`` (same Pillow resize). The train view's
RandomResizedCrop, however, draws its boxes from the stored square, not from
the full (non-square) image as torchvision does: boxes never reach the parts
of a wide or tall image outside its central square, and small crops are
resampled from the 256-pixel copy rather than from the original resolution.
For small models, JPEGs are decoded by Pillow's ``draft`` at 1/2..1/8 scale
(never below twice the target side) before the resize, which saves most of
the decode time of large photos at a negligible cost at 32 pixels. Without
``image_size`` the images are kept as they are and must all have one size.

Tiny sets. `sample_tiny_set` is the reference's seeded draw (class-uniform
per draw below the class count, not class-balanced); ``balanced=True`` gives
equal counts per class instead. `load_tiny_set` lists labels first and then
decodes only the chosen images, so a folder of a million images costs a
directory walk, not a million decodes.
"""

from __future__ import annotations

import colorsys
import concurrent.futures
import csv
import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np

from model_zoo.errors import UserError
from practise_jax.transforms import small_recipe

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
KINDS = "npz:PATH, folder:PATH, imagenet:PATH, tfds:NAME[:SPLIT], synthetic[:N[:CLASSES[:SEED]]], ood:SPEC"
TFDS_INSTALL = "pip install 'practise-jax[tfds]'"


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


# --------------------------------------------------------------------------- spec strings

def _split_spec(spec: str) -> tuple[str, str]:
    kind, sep, rest = spec.partition(":")
    if kind == "synthetic":
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
        return data if indices is None else data.take(_check_indices(indices, len(data), spec))
    if kind in ("folder", "imagenet"):
        return load_folder(rest, image_size=image_size, indices=indices)
    if kind == "tfds":
        return load_tfds(rest, image_size=image_size, indices=indices)
    count, classes, seed = _synthetic_args(spec, rest)
    return synthetic(count, image_size or 32, num_classes=classes, seed=seed, indices=indices)


def source_labels(spec: str) -> np.ndarray:
    """The labels of a source, without decoding its images where the source allows."""
    kind, rest = _split_spec(spec)
    if kind == "ood":
        return source_labels(rest)
    if kind == "npz":
        return load_npz(rest).labels
    if kind in ("folder", "imagenet"):
        return list_folder(rest)[1]
    if kind == "tfds":
        return _tfds_labels(rest)
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


def _check_indices(indices, count: int, source: str) -> np.ndarray:
    indices = np.asarray(indices)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise UserError(f"{source}: indices must be a 1-D integer array, got shape {indices.shape} dtype {indices.dtype}.")
    if len(indices) and (indices.min() < 0 or indices.max() >= count):
        raise UserError(f"{source}: indices span {indices.min()}..{indices.max()} but the source holds {count} images; "
                        "were they saved for another data set?")
    return indices


# --------------------------------------------------------------------------- npz

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
            data = ImageSet(np.stack([fit_image(_pil_from_array(a), image_size) for a in data.images]),
                            data.labels, data.source)
    return data


def _pil_from_array(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array, "RGB")


# --------------------------------------------------------------------------- image folders

def _visible(entry: os.DirEntry | Path | str) -> bool:
    return not (entry if isinstance(entry, str) else entry.name).startswith(".")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and _visible(path)


def list_folder(path: str) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image files, their labels and the class names of a folder source (no image is decoded)."""
    root = Path(path)
    if root.is_file() and root.suffix.lower() == ".csv":
        return _list_csv(root)
    if not root.is_dir():
        raise UserError(f"image folder '{path}' does not exist; check the path after 'folder:'.")
    if (root / "labels.csv").is_file():
        return _list_csv(root / "labels.csv")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and _visible(entry))
    if not classes:
        loose = any(_is_image(p) for p in root.iterdir())
        hint = (" It holds images directly: move them into one subfolder per class, or add a labels.csv "
                "(columns file,label) beside them." if loose else "")
        raise UserError(f"image folder '{path}' has no class subfolders.{hint} Expected PATH/<class>/<image>.jpg.")
    files: list[Path] = []
    labels: list[int] = []
    empty = []
    for index, name in enumerate(classes):
        members = sorted(p for p in (root / name).rglob("*")
                         if _is_image(p) and p.is_file() and all(_visible(part) for part in p.relative_to(root).parts))
        if not members:
            empty.append(name)
        files += members
        labels += [index] * len(members)
    if not files:
        shown = ", ".join(classes[:5]) + (" ..." if len(classes) > 5 else "")
        raise UserError(f"image folder '{path}' has class subfolders ({shown}) but no images in them; "
                        f"expected files ending in {', '.join(sorted(IMAGE_EXTENSIONS))}.")
    if empty:
        raise UserError(f"image folder '{path}': class folders {empty[:10]}{' ...' if len(empty) > 10 else ''} hold no images; "
                        "add images or remove those folders (class indices follow the sorted folder names).")
    return files, np.asarray(labels, np.int64), classes


def _list_csv(table: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    try:
        with open(table, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"could not read the label table '{table}' ({type(error).__name__}: {error}).") from None
    columns = set(rows[0]) if rows else set()
    label_column = next((c for c in ("label", "class_index") if c in columns), None)
    if not rows or "file" not in columns or label_column is None:
        raise UserError(f"label table '{table}' must have a header with a 'file' column and a 'label' (or 'class_index') "
                        f"column and at least one row; found columns {sorted(columns)} and {len(rows)} rows.")
    files, labels = [], []
    for line, row in enumerate(rows, start=2):
        file = table.parent / row["file"]
        if not file.is_file():
            raise UserError(f"{table}, line {line}: image '{row['file']}' does not exist (paths are relative to {table.parent}).")
        try:
            labels.append(int(row[label_column]))
        except (TypeError, ValueError):
            raise UserError(f"{table}, line {line}: label '{row[label_column]}' is not an integer.") from None
        files.append(file)
    names = {label: row.get("class_name") or str(label) for row, label in zip(rows, labels)}
    return files, np.asarray(labels, np.int64), [names[k] for k in sorted(names)]


def load_folder(path: str, *, image_size: int | None = None, indices=None) -> ImageSet:
    files, labels, _ = list_folder(path)
    if indices is not None:
        indices = _check_indices(indices, len(files), f"folder:{path}")
        files, labels = [files[i] for i in indices], labels[indices]
    images = read_images(files, image_size)
    return validate(images, labels, f"folder:{path}")


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


# --------------------------------------------------------------------------- tensorflow-datasets

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
        _check_indices(indices, count, source)
    order = sorted(images)
    stacked = stack_images([images[k] for k in order], [f"{source}#{k}" for k in order])
    return validate(stacked, np.asarray([labels[k] for k in order], np.int64), source)


def _tfds_labels(rest: str) -> np.ndarray:
    tfds = _import_tfds()
    try:
        decoders = {"image": tfds.decode.SkipDecoding()}
    except AttributeError:
        decoders = None
    _, dataset, _ = _tfds_open(rest, decoders)
    return np.asarray([int(label) for _, label in tfds.as_numpy(dataset)], np.int64)


# --------------------------------------------------------------------------- synthetic

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
    chosen = np.arange(count) if indices is None else _check_indices(indices, count, f"synthetic:{count}")
    images = np.stack([synthetic_image(int(i), side, num_classes, seed) for i in chosen]) if len(chosen) else \
        np.zeros((0, side, side, 3), np.uint8)
    labels = synthetic_labels(count, num_classes)[chosen]
    return validate(images, labels, f"synthetic:{count}:{num_classes}:{seed}")


# --------------------------------------------------------------------------- validation

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


# --------------------------------------------------------------------------- tiny sets

def _check_shots(shots, count: int) -> int:
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)):
        raise UserError(f"--shots must be a whole number of images (or -1 for all), got {shots!r}.")
    shots = int(shots)
    if shots != -1 and shots < 1:
        raise UserError(f"--shots must be a positive number of images (or -1 for all), got {shots}.")
    if shots > count:
        raise UserError(f"--shots {shots} asks for more images than the data holds ({count}); use at most {count}.")
    return shots


def sample_uniform(count: int, shots: int, seed: int) -> np.ndarray:
    """A seeded, uniformly random subset of ``shots`` of ``count`` indices (out-of-domain sets; -1 = all)."""
    if count < 1:
        raise UserError("the data holds no images.")
    shots = _check_shots(shots, count)
    if shots == -1:
        return np.arange(count)
    return np.sort(np.random.RandomState(seed).choice(count, shots, replace=False))


def sample_tiny_set(labels: np.ndarray, shots: int, seed: int, num_classes: int | None = None, *,
                    balanced: bool = False) -> np.ndarray:
    """Indices of a seeded tiny set, drawn as the reference draws it (PRACTISE_SPEC.md section 1).

    Fewer shots than classes: each draw picks a class uniformly, then an image
    of it uniformly, redrawing duplicates (so not class-balanced). Otherwise
    ``shots // num_classes`` images of every class, without replacement. The
    reference's threshold is 1000 because ImageNet has 1000 classes; here it
    is the number of classes. ``shots = -1`` takes everything.

    ``balanced=True`` (not the reference's draw): exactly ``shots`` images,
    ``shots // C`` of every class and one more for ``shots mod C`` classes
    chosen at random, so per-class counts differ by at most one (below the
    class count: ``shots`` distinct classes, one image each).
    """
    labels = validate_labels(labels, "labels", num_classes)
    shots = _check_shots(shots, len(labels))
    if shots == -1:
        return np.arange(len(labels))
    classes = np.arange(num_classes if num_classes is not None else labels.max() + 1)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    rng = np.random.RandomState(seed)
    if balanced:
        return _balanced(by_class, shots, rng)
    if shots < len(classes):
        chosen: list[int] = []
        seen: set[int] = set()
        while len(chosen) < shots:
            members = by_class[rng.randint(len(classes))]
            if len(members) == 0:
                continue
            index = int(members[rng.randint(len(members))])
            if index not in seen:
                seen.add(index)
                chosen.append(index)
        return np.asarray(chosen)
    per_class = shots // len(classes)
    short = [int(c) for c, members in zip(classes, by_class) if len(members) < per_class]
    if short:
        raise UserError(f"--shots {shots} needs {per_class} images of every class, but classes {short[:10]} have fewer; "
                        "use fewer shots.")
    return np.concatenate([rng.choice(members, per_class, replace=False) for members in by_class])


def _balanced(by_class: list[np.ndarray], shots: int, rng: np.random.RandomState) -> np.ndarray:
    count = len(by_class)
    base, remainder = divmod(shots, count)
    sizes = np.asarray([len(members) for members in by_class])
    short = np.flatnonzero(sizes < base).tolist()
    roomy = np.flatnonzero(sizes > base)  # classes that can give one image more
    if short or len(roomy) < remainder:
        lacking = (short or np.flatnonzero(sizes <= base).tolist())[:10]
        raise UserError(f"--shots {shots} balanced over {count} classes needs {base} images of every class "
                        f"and {base + 1} of {remainder} of them, but classes {lacking} have too few; "
                        "use fewer shots or the reference draw (no --balanced).")
    wanted = np.full(count, base)
    wanted[rng.choice(roomy, remainder, replace=False)] += 1
    return np.concatenate([rng.choice(by_class[c], wanted[c], replace=False) for c in range(count)])
