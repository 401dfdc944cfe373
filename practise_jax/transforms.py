"""Image views, written in JAX so they run inside the compiled training step.

Every view takes the stored uint8 NHWC images (see `practise_jax.data`) and
returns float32 NHWC normalised as ``(x / 255 - mean) / std``. Two recipes,
picked by the model's input size (`views_for`):

* **CIFAR recipe** (input 32; PRACTISE_SPEC.md section 10.20, a project
  choice): train = torchvision's ``RandomCrop(32, padding=4)`` (zero padding)
  + horizontal flip p = 0.5; eval = normalisation alone. Images are stored at
  the input size.
* **ImageNet recipe** (every larger input; section 1): train =
  ``RandomResizedCrop(S)`` with torchvision's defaults (scale (0.08, 1),
  ratio (3/4, 4/3), bilinear, 10 attempts then the centre-crop fallback) +
  flip p = 0.5; eval = ``CenterCrop(S)`` of the stored images, which
  `practise_jax.data` resized so their shorter side is ``round(S * 256 /
  224)`` (256 for S = 224) and cropped square. So the eval view is exactly
  torchvision's ``Resize(256) + CenterCrop(224)``; the train view crops from
  the stored square rather than from the full image (an approximation, see
  `practise_jax.data.stored_size`).

Out-of-domain sets (section 7: CUB, Places) use ``Resize + RandomCrop`` with
no flip: a random ``S x S`` window of the stored image; on small models,
whose images are stored at the input size, the zero-padded crop of the CIFAR
recipe without its flip.

`views_for` returns a frozen `Views` whose ``train(key, images)`` and
``eval(images)`` close over static shapes only, so they can be called inside
``jax.jit`` (and a `Views` can itself be a static argument). The older
``train_view`` / ``eval_view`` functions are the CIFAR recipe.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
import jax
import jax.numpy as jnp

from practise_jax.errors import UserError

SMALL_INPUT = 32  # models with inputs up to this size use the CIFAR recipe
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_ATTEMPTS = 10


def small_recipe(input_size: int) -> bool:
    """True for models that take CIFAR-size inputs (images stored at the input size, pad-crop views)."""
    return input_size <= SMALL_INPUT


def normalise(images: jax.Array, mean: Sequence[float] | None, std: Sequence[float] | None) -> jax.Array:
    """Pixels in 0..255 (uint8 or float) NHWC -> float32, (x / 255 - mean) / std per channel.

    ``mean=None``: the images are model inputs already (normalised floats) and pass through as float32.
    """
    if mean is None:
        return images.astype(jnp.float32)
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_flip(key: jax.Array, images: jax.Array, p: float = 0.5) -> jax.Array:
    """Mirror each image left-right with probability ``p``, independently."""
    flips = jax.random.bernoulli(key, p, (images.shape[0],))
    return jnp.where(flips[:, None, None, None], images[:, :, ::-1, :], images)


def pad_crop(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """torchvision ``RandomCrop(size, padding)``: a random same-size window of the zero-padded image, per image."""
    n, h, w, c = images.shape
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    return jax.vmap(lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, c)))(padded, offsets)


def pad_crop_flip(key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """Random crop of the zero-padded images (same size) and random horizontal flip, per image."""
    crop_key, flip_key = jax.random.split(key)
    return random_flip(flip_key, pad_crop(crop_key, images, padding))


def random_crop(key: jax.Array, images: jax.Array, size: int) -> jax.Array:
    """torchvision ``RandomCrop(size)`` without padding: a random ``size x size`` window, per image."""
    n, h, w, c = images.shape
    if size > h or size > w:
        raise UserError(f"cannot crop {size}x{size} from {h}x{w} images; store them at least {size} pixels on a side.")
    offsets = jax.random.randint(key, (n, 2), 0, jnp.asarray([h - size + 1, w - size + 1]))
    return jax.vmap(lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (size, size, c)))(images, offsets)


def centre_crop(images: jax.Array, size: int) -> jax.Array:
    """torchvision ``CenterCrop(size)`` (top = round((H - size) / 2)); shapes are static, so this is a slice."""
    h, w = images.shape[1:3]
    if size > h or size > w:
        raise UserError(f"cannot centre-crop {size}x{size} from {h}x{w} images; store them at least {size} pixels on a side.")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return images[:, top:top + size, left:left + size, :]


@functools.partial(jax.jit, static_argnames=("count", "height", "width", "scale", "ratio", "attempts"))
def random_resized_crop_boxes(key: jax.Array, count: int, height: int, width: int,
                              scale: tuple[float, float] = RRC_SCALE, ratio: tuple[float, float] = RRC_RATIO,
                              attempts: int = RRC_ATTEMPTS) -> jax.Array:
    """Crop boxes ``(top, left, height, width)`` (int32, shape (count, 4)) drawn as torchvision's RandomResizedCrop.

    Per image, up to ``attempts`` tries: area fraction ~ U(scale), log aspect
    ~ U(log ratio), ``w = round(sqrt(A * s * r))``, ``h = round(sqrt(A * s / r))``;
    the first try that fits is kept and placed uniformly. If none fits, the
    fallback is torchvision's: the whole image, cut to the nearest allowed
    aspect ratio, centred. All tries are drawn at once (vectorised); the
    kept box follows the same distribution as torchvision's sequential loop.
    """
    # One draw serves everything (each random call costs compile time): per image, the tries' area
    # fractions and log aspects, then the top and left of the kept box as uniform fractions.
    u = jax.random.uniform(key, (count, 2 * attempts + 2))
    area = float(height * width)
    fraction = scale[0] + (scale[1] - scale[0]) * u[:, :attempts]
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(log_low + (log_high - log_low) * u[:, attempts:2 * attempts])
    w = jnp.round(jnp.sqrt(area * fraction * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(area * fraction / aspect)).astype(jnp.int32)
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = jnp.argmax(fits, axis=1)
    found = jnp.any(fits, axis=1)
    pick = lambda a: jnp.take_along_axis(a, first[:, None], axis=1)[:, 0]  # noqa: E731

    # Fallback (static shapes, so plain Python): centre crop at the closest allowed aspect ratio.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    crop_h = jnp.where(found, pick(h), fh)
    crop_w = jnp.where(found, pick(w), fw)
    uniform_int = lambda v, n: jnp.minimum(jnp.floor(v * n).astype(jnp.int32), n - 1)  # noqa: E731  U{0..n-1}
    top = jnp.where(found, uniform_int(u[:, -2], height - crop_h + 1), (height - fh) // 2)
    left = jnp.where(found, uniform_int(u[:, -1], width - crop_w + 1), (width - fw) // 2)
    return jnp.stack([top, left, crop_h, crop_w], axis=1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("size",))
def resized_crop(images: jax.Array, boxes: jax.Array, size: int) -> jax.Array:
    """Resample each image's box ``(top, left, height, width)`` to ``size x size``, bilinear, float32.

    Antialiased when shrinking (a triangle filter widened by the shrink
    factor), as PIL's bilinear resize is; ``jax.image.scale_and_translate``
    under ``vmap`` with the static output size. Values stay within the
    input range (the weights are non-negative and sum to one).
    """
    channels = images.shape[-1]

    def one(image, box):
        top, left, h, w = (box[i].astype(jnp.float32) for i in range(4))
        scale = jnp.stack([size / h, size / w])
        translation = jnp.stack([-top * size / h, -left * size / w])
        return jax.image.scale_and_translate(image, (size, size, channels), (0, 1), scale, translation,
                                             method="linear", antialias=True)

    return jax.vmap(one)(images.astype(jnp.float32), boxes)


@functools.partial(jax.jit, static_argnames=("size", "scale", "ratio"))
def random_resized_crop(key: jax.Array, images: jax.Array, size: int,
                        scale: tuple[float, float] = RRC_SCALE, ratio: tuple[float, float] = RRC_RATIO) -> jax.Array:
    """torchvision ``RandomResizedCrop(size)`` per image: float32 pixels in 0..255 at ``size x size``."""
    n, h, w, _ = images.shape
    return resized_crop(images, random_resized_crop_boxes(key, n, h, w, scale, ratio), size)


# --- the CIFAR recipe under its historical names (recoverability.py, evaluate.py) ---

def train_view(key: jax.Array, images: jax.Array, mean, std) -> jax.Array:
    """The augmented, normalised view used for training (CIFAR recipe)."""
    return normalise(pad_crop_flip(key, images), mean, std)


def eval_view(images: jax.Array, mean, std) -> jax.Array:
    """The metric/evaluation view of the CIFAR recipe: normalisation alone."""
    return normalise(images, mean, std)


# --- the ImageNet recipe ---

def imagenet_train_view(key: jax.Array, images: jax.Array, size: int, mean, std) -> jax.Array:
    """RandomResizedCrop(size) + flip p = 0.5 + normalise."""
    crop_key, flip_key = jax.random.split(key)
    return normalise(random_flip(flip_key, random_resized_crop(crop_key, images, size)), mean, std)


def imagenet_eval_view(images: jax.Array, size: int, mean, std) -> jax.Array:
    """CenterCrop(size) of the stored (already resized) images + normalise."""
    return normalise(centre_crop(images, size), mean, std)


def out_of_domain_train_view(key: jax.Array, images: jax.Array, size: int, mean, std) -> jax.Array:
    """Resize + RandomCrop(size), no flip (section 7); images stored at ``size`` get the pad-4 crop instead."""
    if images.shape[1] == size and images.shape[2] == size:
        return normalise(pad_crop(key, images), mean, std)
    return normalise(random_crop(key, images, size), mean, std)


RECIPES = ("cifar", "imagenet", "out_of_domain")


@dataclasses.dataclass(frozen=True)
class Views:
    """The train and eval views of one model on images stored at ``stored_size``; hashable, jit-friendly."""

    recipe: str  # one of RECIPES
    input_size: int
    stored_size: int
    mean: tuple[float, ...] | None  # None: the images are normalised model inputs already
    std: tuple[float, ...] | None

    def _check(self, images) -> None:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise UserError(f"views take images of shape N x H x W x 3; got {tuple(images.shape)}.")
        if tuple(images.shape[1:3]) != (self.stored_size, self.stored_size):
            raise UserError(
                f"these views expect images stored at {self.stored_size}x{self.stored_size}, got "
                f"{images.shape[1]}x{images.shape[2]}; load the data with image_size={self.input_size} "
                "or build the views with the stored size.")

    def train(self, key: jax.Array, images: jax.Array) -> jax.Array:
        """Augmented view: float32 NHWC, normalised, ``input_size`` square."""
        self._check(images)
        if self.recipe == "cifar":
            return train_view(key, images, self.mean, self.std)
        if self.recipe == "imagenet":
            return imagenet_train_view(key, images, self.input_size, self.mean, self.std)
        return out_of_domain_train_view(key, images, self.input_size, self.mean, self.std)

    def eval(self, images: jax.Array) -> jax.Array:
        """Deterministic (metric/evaluation) view: centre crop to ``input_size`` + normalise."""
        self._check(images)
        if self.stored_size == self.input_size:
            return normalise(images, self.mean, self.std)
        return imagenet_eval_view(images, self.input_size, self.mean, self.std)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMALIZATIONS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),  # torchvision's; the akamaster CIFAR ResNets were trained with it too
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),  # the constants of kuangliu/pytorch-cifar
}


def normalization(mean=None, std=None, name: str | None = None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` from numbers or a name in `NORMALIZATIONS`, checked; None when nothing was given."""
    if name is not None:
        if mean is not None or std is not None:
            raise UserError("give either a named normalization or --mean/--std, not both.")
        if name not in NORMALIZATIONS:
            raise UserError(f"unknown normalization '{name}'; choose one of: {', '.join(NORMALIZATIONS)}, "
                            "or give --mean R,G,B --std R,G,B.")
        return NORMALIZATIONS[name]
    if (mean is None) != (std is None):
        raise UserError("give both --mean and --std (three fractions of 1 each, R,G,B), or neither.")
    if mean is None:
        return None
    spec = InputSpec(1, tuple(mean), tuple(std))  # checks lengths and signs
    return spec.mean, spec.std


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What a model takes: ``size`` x ``size`` RGB images normalised as ``(x / 255 - mean) / std``.

    ``source`` says where the normalisation came from: ``"given"`` by the
    user, ``"assumed"`` (a registry default nobody confirmed for these
    weights) or ``"checkpoint"`` (stored with a compressed model).
    """

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = "given"

    def __post_init__(self):
        if len(self.mean) != 3 or len(self.std) != 3:
            raise UserError(f"the normalisation needs 3 means and 3 stds (R, G, B), got mean={list(self.mean)} "
                            f"std={list(self.std)}.")
        if any(not s > 0 for s in self.std):
            raise UserError(f"every std must be positive (it divides the pixels), got std={list(self.std)}.")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def describe(self) -> str:
        """``mean (..) std (..), given`` — for summaries and reports."""
        def fmt(values):
            return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

        return f"mean {fmt(self.mean)} std {fmt(self.std)}, {self.source}"


def views_for(spec: InputSpec, stored_size: int, *, out_of_domain: bool = False) -> Views:
    """The views of a model taking ``spec``: the CIFAR recipe for inputs up to 32 pixels, ImageNet's otherwise.

    ``stored_size`` is the side of the stored square images (see
    `practise_jax.data.stored_size`); ``out_of_domain`` selects section 7's
    Resize + RandomCrop without flip for training.
    """
    size = int(spec.size)
    if stored_size < size:
        raise UserError(f"the model takes {size}x{size} inputs but the images are stored at {stored_size}x{stored_size}; "
                        f"load them with image_size={size}.")
    if out_of_domain:
        recipe = "out_of_domain"
    elif small_recipe(size):
        if stored_size != size:
            raise UserError(f"the model takes {size}x{size} inputs and its recipe crops with padding at that size, "
                            f"but the images are stored at {stored_size}x{stored_size}; load them with image_size={size}.")
        recipe = "cifar"
    else:
        recipe = "imagenet"
    return Views(recipe, size, int(stored_size), spec.mean, spec.std)
