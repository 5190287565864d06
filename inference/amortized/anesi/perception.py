"""The perception network: an 8x8 image to logits over the ten digit classes.

A small MLP (``64 -> width -> ... -> 10``, ReLU), enough for scikit-learn's digits (0.928
single-digit accuracy on the fixed test split when trained with digit labels). Its softmax is
the belief ``P_j`` over the symbol of image ``j`` that the inference model reads.
"""

from __future__ import annotations

import equinox as eqx
import jax
from jaxtyping import Array, Float

from .data import IMAGE_SIZE
from .programs import INPUT_ARITY

__all__ = ["PerceptionNetwork", "beliefs", "log_beliefs"]


class PerceptionNetwork(eqx.Module):
    """MLP from one flat image ``(64,)`` in [0, 1] to ``(10,)`` logits."""

    mlp: eqx.nn.MLP
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)

    def __init__(self, key, *, width: int = 128, depth: int = 2):
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
        self.width, self.depth = int(width), int(depth)
        self.mlp = eqx.nn.MLP(IMAGE_SIZE, INPUT_ARITY, width, depth, activation=jax.nn.relu,
                              key=key)

    def __call__(self, image: Float[Array, " 64"]) -> Float[Array, " 10"]:
        # Centre the pixels so that the first layer starts near its linear regime.
        return self.mlp(image - 0.5)

    def architecture(self) -> dict:
        return {"width": self.width, "depth": self.depth}


def beliefs(perception: PerceptionNetwork,
            images: Float[Array, "*batch 64"]) -> Float[Array, "*batch 10"]:
    """The beliefs ``P = softmax(f(x))`` of every image (any leading batch axes)."""
    flat = images.reshape(-1, IMAGE_SIZE)
    logits = jax.vmap(perception)(flat)
    return jax.nn.softmax(logits, axis=-1).reshape(*images.shape[:-1], INPUT_ARITY)


def log_beliefs(perception: PerceptionNetwork, images):
    """``log P``, computed stably from the logits."""
    flat = images.reshape(-1, IMAGE_SIZE)
    logits = jax.vmap(perception)(flat)
    return jax.nn.log_softmax(logits, axis=-1).reshape(*images.shape[:-1], INPUT_ARITY)



