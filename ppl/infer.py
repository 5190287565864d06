"""``ppl.infer``: the one facade over every engine."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from ppl.model import AbstractModel
from ppl.posterior import Posterior
from ppl.registry import get_engine

__all__ = ["infer", "as_key"]


def as_key(key: Any) -> jax.Array:
    """Accept a typed or raw JAX PRNG key, or an int seed; refuse anything else."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            return key
        if key.dtype == np.uint32 and key.shape == (2,):
            return jax.random.wrap_key_data(key)
    raise ValueError(
        f"Expected key to be a JAX PRNG key (jax.random.key(0)) or an int seed, got {key!r}."
    )


def infer(model: AbstractModel, method: str = "nuts", *, key: Any, **settings: Any) -> Posterior:
    """Run the inference engine ``method`` on ``model``.

    Args:
        model: a ppl Model (``ppl.from_numpyro`` or ``ppl.from_logdensity``).
        method: engine name; ``ppl.available_engines()`` lists them.
        key: a JAX PRNG key (or an int seed).
        **settings: the engine's own settings (see each engine's docstring).

    Returns:
        A :class:`~ppl.Posterior`.

    Example:
        >>> import jax, jax.numpy as jnp, ppl
        >>> m = ppl.from_logdensity(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(2))
        >>> post = ppl.infer(m, "nuts", key=jax.random.key(0), num_chains=2,
        ...                  num_warmup=200, num_samples=200, progress_bar=False)
        >>> post.samples["x"].shape
        (2, 200, 2)
    """
    engine = get_engine(method)
    if not isinstance(model, AbstractModel):
        raise TypeError(
            "Expected a ppl Model (build one with ppl.from_numpyro or ppl.from_logdensity), "
            f"got {type(model).__name__}."
        )
    return engine(as_key(key), model, **settings)
