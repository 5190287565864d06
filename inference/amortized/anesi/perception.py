"""The perception network: an 8x8 image to logits over the ten digit classes.

A small MLP (``64 -> width -> ... -> 10``, ReLU), enough for scikit-learn's digits (0.928
single-digit accuracy on the fixed test split when trained with digit labels). Its softmax is
the belief ``P_j`` over the symbol of image ``j`` that the inference model reads.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .data import IMAGE_SIZE
from .programs import INPUT_ARITY

__all__ = ["PerceptionNetwork", "beliefs", "log_beliefs", "train_supervised"]


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





def train_supervised(key, *, steps: int = 3000, batch_size: int = 64,
                     learning_rate: float = 1e-3, width: int = 128, depth: int = 2
                     ) -> tuple[PerceptionNetwork, float]:
    """The perception network trained with digit labels on the training split, and its
    single-digit accuracy on the test split.

    This is the reference for A-NeSI's targets, not part of A-NeSI (which never sees a digit
    label): with single-digit accuracy ``p``, an output that needs all ``K`` images read
    right is right with probability about ``p^K`` (``p^(2N)`` for N-digit addition).
    """
    import optax

    from .data import load_split

    train_split, test_split = load_split("train"), load_split("test")
    init_key, data_key = jax.random.split(key)
    network = PerceptionNetwork(init_key, width=width, depth=depth)
    params, static = eqx.partition(network, eqx.is_array)
    optimizer = optax.adam(learning_rate)

    def loss_fn(params, index):
        rows = jax.random.randint(jax.random.fold_in(data_key, index), (batch_size,), 0,
                                  train_split.labels.shape[0])
        log_p = log_beliefs(eqx.combine(params, static), train_split.images[rows])
        return -jnp.mean(jnp.take_along_axis(log_p, train_split.labels[rows, None], -1))

    @jax.jit
    def run(params, opt_state):
        def step(carry, index):
            params, opt_state = carry
            grads = jax.grad(loss_fn)(params, index)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        return jax.lax.scan(step, (params, opt_state), jnp.arange(steps))[0][0]

    network = eqx.combine(run(params, optimizer.init(params)), static)
    predicted = jnp.argmax(beliefs(network, test_split.images), axis=-1)
    return network, float(jnp.mean(predicted == test_split.labels))
