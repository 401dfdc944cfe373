"""Image folders: one subfolder per class (torchvision's ``ImageFolder``), or a flat folder with a ``labels.csv``.

Classes are the sorted subfolder names, label = index in that order, so an
ImageNet ``train/`` folder of synset folders gets the standard 0..999 labels;
hidden files and folders are skipped; images may sit deeper inside a class
folder. A ``labels.csv`` in PATH (or PATH itself naming a ``.csv`` file) has
a header holding a ``file`` column (paths relative to the CSV's folder) and a
``label`` or ``class_index`` column; ``shared/data/imagenet_sample`` loads
this way. JPEG, PNG, BMP and WebP files are read; greyscale, palette, CMYK
and RGBA images become RGB (alpha dropped, as torchvision's loader does).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from practise_jax.data.images import read_images
from practise_jax.data.imageset import ImageSet, check_indices, validate
from practise_jax.errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


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
        indices = check_indices(indices, len(files), f"folder:{path}")
        files, labels = [files[i] for i in indices], labels[indices]
    images = read_images(files, image_size)
    return validate(images, labels, f"folder:{path}")
