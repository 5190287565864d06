"""Resampling schemes: ``(key, log_weights, num_samples) -> ancestor indices``.

A resampler never sees the particles, only their log-weights, so the same scheme moves
arrays, pytrees, KV caches or lists of host objects (the caller gathers). Every scheme here
is unbiased: the number of offspring ``O_i`` of particle ``i`` satisfies
``E[O_i] = n W_i`` with ``W`` the normalised weights. They differ in variance:
multinomial > stratified, residual > systematic (usually; Douc, Cappé & Moulines 2005).

All are jittable, with static ``num_samples``. Systematic resampling counts offspring from
the cumulative weights (``O(N)``: one cumulative sum, one scatter-add) instead of a sorted
search, which is what a bootstrap filter with ``N = 10^4`` spends most of its time on.

References:
    Douc, R., Cappé, O. and Moulines, E. (2005). Comparison of resampling schemes for
    particle filtering. ISPA 2005.
    Chopin, N. and Papaspiliopoulos, O. (2020). An Introduction to Sequential Monte Carlo,
    chapter 9. Springer.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

__all__ = [
    "multinomial",
    "systematic",
    "stratified",
    "residual",
    "get_resampler",
    "RESAMPLERS",
    "normalize_log_weights",
    "effective_sample_size",
    "counts_to_indices",
]


def normalize_log_weights(log_weights: Float[Array, " n"]) -> Float[Array, " n"]:
    """Log of the normalised weights, ``log W_i = log w_i - logsumexp(log w)``."""
    return log_weights - jax.scipy.special.logsumexp(log_weights)


def effective_sample_size(log_weights: Float[Array, " n"]) -> Float[Array, ""]:
    """Kish's effective sample size ``(sum w)^2 / sum w^2``, computed in log space."""
    log_w = normalize_log_weights(log_weights)
    return jnp.exp(-jax.scipy.special.logsumexp(2.0 * log_w))


def _cdf(log_weights):
    w = jnp.exp(normalize_log_weights(log_weights))
    cumulative = jnp.cumsum(w)
    return cumulative / cumulative[-1]  # the last value is exactly one


def counts_to_indices(starts: Int[Array, " m"], num_samples: int) -> Int[Array, " n"]:
    """Indices from each particle's first output slot (``starts`` nondecreasing, in [0, n]).

    Particle ``i`` fills slots ``starts[i] <= j < starts[i + 1]``; so the index at slot ``j``
    is the number of particles that start at or before ``j``, minus one.
    """
    hits = jnp.zeros(num_samples + 1, jnp.int32).at[starts].add(1)
    return jnp.cumsum(hits[:num_samples]) - 1


def _from_sorted_uniforms(log_weights, uniforms, num_samples):
    # Index i is chosen by u when cdf[i - 1] <= u < cdf[i].
    idx = jnp.searchsorted(_cdf(log_weights), uniforms, side="right", method="sort")
    return jnp.clip(idx, 0, log_weights.shape[0] - 1).astype(jnp.int32)


def multinomial(
    key: PRNGKeyArray, log_weights: Float[Array, " m"], num_samples: int
) -> Int[Array, " n"]:
    """Multinomial resampling: ``num_samples`` i.i.d. draws from ``W``, returned sorted.

    Sorted uniforms come from normalised cumulative sums of exponential spacings
    (Devroye 1986, ch. V.3), so no sort is needed.
    """
    spacings = jax.random.exponential(key, (num_samples + 1,))
    uniforms = jnp.cumsum(spacings)
    uniforms = uniforms[:-1] / uniforms[-1]
    return _from_sorted_uniforms(log_weights, uniforms, num_samples)


def stratified(
    key: PRNGKeyArray, log_weights: Float[Array, " m"], num_samples: int
) -> Int[Array, " n"]:
    """Stratified resampling: one uniform in each stratum ``[j / n, (j + 1) / n)``."""
    u = jax.random.uniform(key, (num_samples,))
    uniforms = (jnp.arange(num_samples) + u) / num_samples
    return _from_sorted_uniforms(log_weights, uniforms, num_samples)


def systematic(
    key: PRNGKeyArray, log_weights: Float[Array, " m"], num_samples: int
) -> Int[Array, " n"]:
    """Systematic resampling: one uniform ``u``, points ``(j + u) / n``.

    Particle ``i`` receives the points in ``[n C_{i-1}, n C_i)`` (``C`` the cumulative
    weights), so its first slot is ``ceil(n C_{i-1} - u)`` and offspring counts follow
    without a search.
    """
    u = jax.random.uniform(key, ())
    cdf = _cdf(log_weights)
    previous = jnp.concatenate([jnp.zeros((1,), cdf.dtype), cdf[:-1]])
    starts = jnp.clip(jnp.ceil(num_samples * previous - u), 0, num_samples).astype(jnp.int32)
    return counts_to_indices(starts, num_samples)


def residual(
    key: PRNGKeyArray, log_weights: Float[Array, " m"], num_samples: int
) -> Int[Array, " n"]:
    """Residual resampling: ``floor(n W_i)`` copies, the rest multinomial on the remainder."""
    w = jnp.exp(normalize_log_weights(log_weights))
    deterministic = jnp.floor(num_samples * w).astype(jnp.int32)
    num_deterministic = jnp.sum(deterministic)
    starts = jnp.cumsum(deterministic) - deterministic
    fixed = counts_to_indices(starts, num_samples)
    remainder = num_samples * w - deterministic
    # Only the last (n - sum floor) draws are used; they are i.i.d., so any subset is valid.
    safe = jnp.where(jnp.sum(remainder) > 0, remainder, jnp.ones_like(remainder))
    random = multinomial(key, jnp.log(safe), num_samples)
    random = jax.random.permutation(jax.random.fold_in(key, 1), random)
    slots = jnp.arange(num_samples)
    return jnp.where(slots < num_deterministic, fixed, random).astype(jnp.int32)


RESAMPLERS: dict[str, Callable] = {
    "multinomial": multinomial,
    "systematic": systematic,
    "stratified": stratified,
    "residual": residual,
}


def get_resampler(resampling: str | Callable) -> Callable:
    """A resampler by name (or a callable, returned as it is)."""
    if callable(resampling):
        return resampling
    if resampling not in RESAMPLERS:
        raise ValueError(
            f"Expected resampling to be one of {sorted(RESAMPLERS)} or a callable "
            f"(key, log_weights, n) -> indices, got {resampling!r}."
        )
    return RESAMPLERS[resampling]
