"""``predict``: the most likely sum of two numbers written in 8x8 digit images, the next most
likely sums, and the digits that explain it."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from .data import validate_images
from .programs import Addition
from .train import ANeSI, load_pretrained

__all__ = ["AdditionPrediction", "predict"]


class AdditionPrediction(NamedTuple):
    """The result of :func:`predict`, one entry per example.

    Attributes:
        sums: ``(batch,)`` the most likely sum under ``q`` (int64; object for N > 17).
        digits: ``(batch, N + 1)`` its digits, most significant first.
        probability: ``(batch,)`` ``q(sum | P)``, the inference model's approximation of the
            weighted model count of that sum.
        beliefs: ``(batch, 2N, 10)`` the perception network's beliefs (``A``'s digits, then
            ``B``'s).
        explanation_a, explanation_b: ``(batch, N)`` the most likely digits of ``A`` and ``B``
            given the predicted sum (they always add up to it), from the checkpoint's
            explanation model; ``None`` when the checkpoint has none.
        alternatives: ``(batch, beam_width)`` the best sums found by the beam, best first
            (the first column is ``sums``); ``alternative_probabilities`` their ``q``. With
            greedy decoding (``beam_width=1``) a single column.
    """

    sums: np.ndarray
    digits: np.ndarray
    probability: np.ndarray
    beliefs: np.ndarray
    explanation_a: np.ndarray | None
    explanation_b: np.ndarray | None
    alternatives: np.ndarray
    alternative_probabilities: np.ndarray


def predict(checkpoint_or_model: ANeSI | str | Path | int, images_a, images_b, *,
            beam_width: int = 1) -> AdditionPrediction:
    """The most likely ``A + B`` per example, from the images of ``A``'s and ``B``'s digits.

    Args:
        checkpoint_or_model: a trained :class:`ANeSI` for ``Addition(N)``, its checkpoint
            folder, or ``N`` itself for the shipped checkpoint (:func:`load_pretrained`).
        images_a, images_b: ``(batch, N, 8, 8)`` or ``(batch, N, 64)``, most significant digit
            first, pixels in [0, 1] (``load_digits().images / 16``).
        beam_width: 1 for greedy decoding, more for the best output of a beam search.

    Raises:
        ValueError: a model for another program, images of the wrong shape or range.
    """
    model = checkpoint_or_model
    if isinstance(model, int) and not isinstance(model, bool):
        model = load_pretrained(model)
    elif not isinstance(model, ANeSI):
        model = ANeSI.load(model)
    if not isinstance(model.program, Addition):
        raise ValueError(f"predict needs an addition model, got one for "
                         f"{model.program.describe()}; use ANeSI.predict_outputs")
    n = model.program.num_digits
    a = validate_images(images_a, argument="images_a", leading_shape=(None, n))
    b = validate_images(images_b, argument="images_b", leading_shape=(a.shape[0], n))
    prediction = model.predict_outputs(np.concatenate([a, b], axis=1), beam_width=beam_width)
    explanation = prediction.explanation
    return AdditionPrediction(
        prediction.values, prediction.digits, prediction.probability, prediction.beliefs,
        None if explanation is None else explanation[:, :n],
        None if explanation is None else explanation[:, n:],
        prediction.alternatives, prediction.alternative_probabilities)
