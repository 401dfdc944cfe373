"""The tiny-set draw: the reference's seeded sampling, a class-balanced variant, and uniform subsets."""

from __future__ import annotations

import numpy as np

from practise_jax.data.imageset import validate_labels
from practise_jax.errors import UserError


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
