"""Images in: sources named by spec strings, their checks, and the seeded tiny-set draw.

``imageset``: the arrays and their checks. ``sources``: spec strings
(``npz:``, ``folder:``, ``tfds:``, ``synthetic``, ``ood:``) and the tiny-set
load. ``folders``, ``tfds``, ``synthetic``: one kind of source each.
``images``: decoding and fitting image files. ``sampling``: the draw.
"""

from practise_jax.data.imageset import ImageSet, check_fits, check_indices, stored_size, validate, validate_labels
from practise_jax.data.sampling import sample_tiny_set, sample_uniform
from practise_jax.data.sources import KINDS, load_npz, load_source, load_tiny_set, out_of_domain, source_labels
from practise_jax.data.synthetic import synthetic, synthetic_image, synthetic_labels

__all__ = [
    "KINDS", "ImageSet", "check_fits", "check_indices", "load_npz", "load_source", "load_tiny_set", "out_of_domain",
    "sample_tiny_set", "sample_uniform", "source_labels", "stored_size", "synthetic", "synthetic_image",
    "synthetic_labels", "validate", "validate_labels",
]
