"""What a run reads: the teacher, the tiny set and the evaluation set, with their views.

`compress` and `practise-jax score` load through here, so the same options
give the same tiny set (the draw, ``--balanced``, the stored image size and
view recipe all follow from them) and the same recoverability.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from flax import nnx

import model_zoo
from practise_jax import checkpoint
from practise_jax import data as data_lib
from practise_jax.errors import UserError
from practise_jax.transforms import InputSpec, Views, views_for


@dataclasses.dataclass
class Inputs:
    teacher: nnx.Module
    tiny: data_lib.ImageSet
    indices: np.ndarray  # of the tiny set in its source
    views: Views
    eval_set: data_lib.ImageSet | None = None
    eval_views: Views | None = None


def load_teacher(model: str, weights: str | None, *, rename=(), key: str | None = None, normalization=None) -> nnx.Module:
    """The teacher in eval mode: from a weight file, from a practise-jax checkpoint folder, or random.

    ``normalization`` ``(mean, std)``, when given, replaces the input
    normalisation the model carries (the registry's, marked assumed, or the
    checkpoint's) and is marked as given.
    """
    if weights is None:
        teacher = model_zoo.create(model)
    elif Path(weights).is_dir():
        if rename or key:
            raise UserError(f"'{weights}' is a practise-jax checkpoint; --rename and --weights-key apply to weight files.")
        teacher, spec = checkpoint.load_compressed(weights)
        if spec.model != model:
            raise UserError(f"the checkpoint '{weights}' holds a {spec.model}, not a {model}; use --model {spec.model}.")
    else:
        teacher = model_zoo.load(model, weights, rename=rename, key=key)
    if normalization is not None:
        teacher.input_spec = InputSpec(teacher.input_spec.size, *normalization, "given")
    teacher.eval()
    return teacher


def load_inputs(model: str, weights: str | None, data: str, shots: int, seed: int, *, balanced: bool = False,
                eval_data: str | None = None, eval_limit: int | None = None, rename=(), key: str | None = None,
                normalization=None) -> Inputs:
    """Teacher, tiny set (seeded draw, decoded at the model's stored size) and optional evaluation set."""
    teacher = load_teacher(model, weights, rename=rename, key=key, normalization=normalization)
    spec, classes = teacher.input_spec, model_zoo.num_classes(teacher)
    tiny, indices = data_lib.load_tiny_set(data, shots, seed, num_classes=classes, image_size=spec.size,
                                           balanced=balanced)
    data_lib.check_fits(tiny, spec.size, classes, model, margin=True)
    views = views_for(spec, tiny.images.shape[1], out_of_domain=data.startswith("ood:"))
    inputs = Inputs(teacher, tiny, indices, views)
    if eval_data is not None:
        test = data_lib.load_source(eval_data, image_size=spec.size)
        if eval_limit is not None:
            test = test.take(slice(0, eval_limit))
        data_lib.check_fits(test, spec.size, classes, model, margin=True)
        inputs.eval_set, inputs.eval_views = test, views_for(spec, test.images.shape[1])
    return inputs
