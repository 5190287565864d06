"""scikit-learn's 8x8 digits: the fixed split, image validation and task example sampling.

The 1,797 images of :func:`sklearn.datasets.load_digits` (shipped with scikit-learn, no
download) are split once and for all: images ``0..1199`` train, ``1200..1796`` test. The test
split is never seen in training.

Image convention: float pixels scaled to ``[0, 1]`` (the raw ``load_digits`` values in
``[0, 16]`` divided by 16), each image shaped ``(8, 8)`` or flat ``(64,)``. Raw ``[0, 16]``
pixels are refused by name rather than silently rescaled, so that a caller who forgot the
scaling learns it instead of getting confident nonsense.

A task example for a program with ``K`` inputs draws ``K`` images uniformly with replacement
from one split; its label is only the program's output on their digit classes (for
``Addition(N)``: ``2N`` images and the ``N + 1`` digits of the sum).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .programs import AbstractProgram

__all__ = ["Split", "Examples", "load_split", "validate_images", "sample_examples", "NUM_TRAIN",
           "NUM_IMAGES", "IMAGE_SIZE"]

NUM_IMAGES = 1797
NUM_TRAIN = 1200
IMAGE_SIZE = 64
RAW_MAX = 16.0


class Split(NamedTuple):
    """One split of the digits.

    Attributes:
        images: ``(n, 64)`` pixels in ``[0, 1]``.
        labels: ``(n,)`` digit classes (used only to compute task labels and to evaluate).
        indices: ``(n,)`` positions of these images in ``load_digits``.
    """

    images: Float[Array, "n 64"]
    labels: Int[Array, " n"]
    indices: Int[Array, " n"]


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.asarray(digits.data, np.float32)
    if images.shape != (NUM_IMAGES, IMAGE_SIZE) or images.min() < 0 or images.max() > RAW_MAX:
        raise ValueError(f"load_digits returned unexpected data: shape {images.shape}, "
                         f"range [{images.min()}, {images.max()}]")
    return images / RAW_MAX, np.asarray(digits.target, np.int32)


def load_split(name: str) -> Split:
    """The ``"train"`` (images 0..1199) or ``"test"`` (1200..1796) split, pixels in [0, 1]."""
    images, labels = _load_digits()
    if name == "train":
        indices = np.arange(0, NUM_TRAIN)
    elif name == "test":
        indices = np.arange(NUM_TRAIN, NUM_IMAGES)
    else:
        raise ValueError(f"split must be 'train' or 'test', got {name!r}")
    return Split(jnp.asarray(images[indices]), jnp.asarray(labels[indices]),
                 jnp.asarray(indices))


def validate_images(images, *, argument: str = "images",
                    leading_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Check images against the convention and return them flat, ``(*leading, 64)`` float32.

    Args:
        images: an array shaped ``(*leading, 8, 8)`` or ``(*leading, 64)``, pixels in [0, 1].
        argument: the name used in error messages.
        leading_shape: the required leading shape, where ``None`` entries are free.

    Raises:
        ValueError: wrong shape, non-finite pixels, raw ``[0, 16]`` pixels, or another range.
    """
    array = np.asarray(images)
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{argument}: expected a numeric array, got dtype {array.dtype}")
    if array.ndim >= 2 and array.shape[-2:] == (8, 8):
        leading = array.shape[:-2]
    elif array.ndim >= 1 and array.shape[-1] == IMAGE_SIZE:
        leading = array.shape[:-1]
    else:
        raise ValueError(f"{argument}: expected images shaped (..., 8, 8) or (..., 64), "
                         f"got shape {array.shape}")
    if leading_shape is not None:
        ok = len(leading) == len(leading_shape) and all(
            want is None or want == got for want, got in zip(leading_shape, leading, strict=True))
        if not ok:
            wanted = tuple("n" if w is None else w for w in leading_shape)
            raise ValueError(f"{argument}: expected leading shape {wanted} before the image "
                             f"axes, got shape {array.shape}")
    array = array.reshape(*leading, IMAGE_SIZE).astype(np.float32)
    if array.size and not np.all(np.isfinite(array)):
        raise ValueError(f"{argument}: pixels must be finite")
    if array.size and array.min() < 0.0:
        raise ValueError(f"{argument}: pixels must lie in [0, 1], found {array.min()}")
    if array.size and array.max() > 1.0:
        if array.max() <= RAW_MAX:
            raise ValueError(f"{argument}: pixels look like raw load_digits values in [0, 16] "
                             f"(max {array.max()}); expected pixels scaled to [0, 1] "
                             "(divide by 16)")
        raise ValueError(f"{argument}: pixels must lie in [0, 1], found {array.max()}")
    return array


class Examples(NamedTuple):
    """A batch of task examples: ``images`` ``(batch, K, 64)``, their digit classes
    ``symbols`` ``(batch, K)`` (hidden from training) and the label ``outputs``
    ``(batch, num_outputs)``."""

    images: Float[Array, "batch inputs 64"]
    symbols: Int[Array, "batch inputs"]
    outputs: Int[Array, "batch outputs"]


def sample_examples(key, split: Split, program: AbstractProgram, batch_size: int) -> Examples:
    """``batch_size`` task examples, each drawing ``program.num_inputs`` images with
    replacement from ``split``; jit-compatible (``program`` and ``batch_size`` static)."""
    index = jax.random.randint(key, (batch_size, program.num_inputs), 0, split.labels.shape[0])
    symbols = split.labels[index]
    return Examples(split.images[index], symbols, program(symbols))
