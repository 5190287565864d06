"""Resampling schemes: ``(key, log_weights, num_samples) -> ancestor indices``.

A resampler never sees the particles, only their log-weights, so the same scheme moves
arrays, pytrees, KV caches or lists of host objects (the caller gathers). Every scheme here
is unbiased: the number of offspring ``O_i`` of particle ``i`` satisfies
``E[O_i] = n W_i`` with ``W`` the normalised weights. They differ in variance:
multinomial > stratified, residual > systematic (usually; Douc, Cappé & Moulines 2005).

All are jittable, with static ``num_samples``. Systematic and stratified resampling find
each particle's first output slot from the cumulative weights in closed form (``O(N)``: one
cumulative sum, one scatter-add, one cumulative count) instead of a sorted search, which is
what a bootstrap filter with ``N = 10^4`` would otherwise spend most of its time on. On CPU,
XLA's cumulative sum is a tree of reduce-windows; :func:`cumulative_sum` does it as a
blocked triangular matrix product instead (3-4x faster at ``N = 10^4``, and no less
accurate).

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
import numpy as np
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
    "cumulative_sum",
    "anneal_to_ess",
]

# Block length of the matrix-product cumulative sum: 64 was fastest at N = 10^4 on CPU
# (32: 1.5x, 128: 1.6x, 256: 2.9x slower; jnp.cumsum 3.6x slower).
_BLOCK = 64
# Integer cumulative sums go through float32, exact while every partial sum is below 2^24.
_MAX_EXACT_FLOAT32 = 2**24


def normalize_log_weights(log_weights: Float[Array, " n"]) -> Float[Array, " n"]:
    """Log of the normalised weights, ``log W_i = log w_i - logsumexp(log w)``."""
    return log_weights - jax.scipy.special.logsumexp(log_weights)


def effective_sample_size(log_weights: Float[Array, " n"]) -> Float[Array, ""]:
    """Kish's effective sample size ``(sum w)^2 / sum w^2``, computed in log space."""
    log_w = normalize_log_weights(log_weights)
    return jnp.exp(-jax.scipy.special.logsumexp(2.0 * log_w))


def anneal_to_ess(
    log_weights: Float[Array, " n"],
    target_ess: float,
    *,
    active=None,
    num_steps: int = 30,
) -> tuple[Float[Array, " n"], Float[Array, ""]]:
    """Entropic annealing: ``(b log w, b)`` for the largest ``b`` in ``[0, 1]`` whose weights
    keep an ESS of at least ``target_ess`` times the number of (active) particles.

    Flattening the weights before resampling keeps more distinct particles alive (against
    impoverishment). ESS falls as ``b`` grows (from ``n`` at ``b = 0``), so ``b`` is found by
    bisection, as adaptive tempering finds its next temperature; ``b = 1`` when the weights
    already meet the target. Resample with ``b log w`` and let the survivors carry
    ``(1 - b) log w`` (:func:`ppl.inference.smc.base.resample_groups` does this with
    ``resample_log_weights``) and estimates stay unbiased.
    """
    log_weights = jnp.asarray(log_weights)
    active = jnp.ones(log_weights.shape, bool) if active is None else jnp.asarray(active, bool)
    masked = jnp.where(active, log_weights, -jnp.inf)
    top = jnp.max(masked)
    shift = jnp.where(jnp.isfinite(top), top, 0.0)
    centred = jnp.where(active & jnp.isfinite(masked), masked - shift, -jnp.inf)
    goal = target_ess * jnp.sum(active)

    def ess(b):
        # 0 * -inf is NaN: a zero weight stays zero at every exponent but 0.
        return effective_sample_size(jnp.where(jnp.isfinite(centred), b * centred, -jnp.inf))

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        good = ess(mid) >= goal
        return jnp.where(good, mid, lo), jnp.where(good, hi, mid)

    lo, _ = jax.lax.fori_loop(0, num_steps, body, (jnp.float32(0.0), jnp.float32(1.0)))
    b = jnp.where(ess(jnp.float32(1.0)) >= goal, 1.0, lo).astype(log_weights.dtype)
    annealed = jnp.where(jnp.isfinite(masked), b * log_weights, -jnp.inf)
    return jnp.where(active, annealed, log_weights), b


def cumulative_sum(x: Float[Array, " n"]) -> Float[Array, " n"]:
    """Inclusive cumulative sum of a 1-D array, ``jnp.cumsum(x)`` computed faster on CPU.

    Blocks of ``_BLOCK`` entries are summed by a product with an upper-triangular matrix of
    ones (full float32 precision, also on accelerators), then the block totals are
    accumulated. Integer input must keep every partial sum below ``2**24`` (offspring counts
    of up to 16 million particles); larger or non-float inputs fall back to ``jnp.cumsum``.
    """
    x = jnp.asarray(x)
    num = x.shape[0]
    is_int = jnp.issubdtype(x.dtype, jnp.integer)
    if num <= _BLOCK or (is_int and num >= _MAX_EXACT_FLOAT32) or not (
        is_int or jnp.issubdtype(x.dtype, jnp.floating)
    ):
        return jnp.cumsum(x)
    dtype = jnp.float32 if is_int else x.dtype
    num_blocks = -(-num // _BLOCK)
    blocks = jnp.pad(x.astype(dtype), (0, num_blocks * _BLOCK - num)).reshape(
        num_blocks, _BLOCK
    )
    upper = jnp.triu(jnp.ones((_BLOCK, _BLOCK), dtype))
    within = jnp.matmul(blocks, upper, precision=jax.lax.Precision.HIGHEST)
    totals = within[:, -1]
    offsets = jnp.cumsum(totals) - totals
    out = (within + offsets[:, None]).reshape(-1)[:num]
    return jnp.round(out).astype(x.dtype) if is_int else out


def _cdf(log_weights):
    """Cumulative normalised weights ``C_i``, with ``C_i == C_{i-1}`` exactly when ``w_i = 0``.

    The weights are rounded to integers summing to about ``2^p`` (``p`` the float mantissa
    width: the resolution a float cumulative sum has anyway) and summed exactly, so a
    zero-weight particle owns an empty interval and is never selected, and ``C`` is
    nondecreasing whatever order the sum is computed in.
    """
    log_weights = jnp.asarray(log_weights)
    num = log_weights.shape[0]
    w = jnp.exp(log_weights - jnp.max(log_weights))
    dtype = w.dtype
    exact = 2.0 ** (jnp.finfo(dtype).nmant + 1)
    if num >= exact / 2:  # too many particles for exact integer sums: plain float sums
        cumulative = jnp.cumsum(w)
        return cumulative / cumulative[-1]
    # Rounding adds at most num / 2 to the total: every partial sum stays below 2^p.
    units = jnp.round(w * ((exact - num) / jnp.sum(w)))
    cumulative = cumulative_sum(units)
    total = cumulative[-1]
    # XLA may divide by multiplying with a reciprocal: pin the final plateau at one, so
    # zero-weight particles at the end own nothing.
    return jnp.where(cumulative >= total, 1.0, cumulative / total).astype(dtype)


def counts_to_indices(starts: Int[Array, " m"], num_samples: int) -> Int[Array, " n"]:
    """Indices from each particle's first output slot (``starts`` nondecreasing, in [0, n]).

    Particle ``i`` fills slots ``starts[i] <= j < starts[i + 1]``; so the index at slot ``j``
    is the number of particles that start at or before ``j``, minus one.
    """
    hits = jnp.zeros(num_samples + 1, jnp.int32).at[starts].add(1)
    return cumulative_sum(hits[:num_samples]) - 1


def _from_sorted_uniforms(log_weights, uniforms, num_samples):
    # Index i is chosen by u when cdf[i - 1] <= u < cdf[i]. A binary search per point: on
    # CPU "scan" (a vectorised bisection) is 10x faster than "sort"; accelerators sort well.
    method = "scan" if jax.default_backend() == "cpu" else "sort"
    cdf = _cdf(log_weights)
    # A uniform rounded up to 1 would land past the last positive weight.
    uniforms = jnp.minimum(uniforms, jnp.asarray(np.nextafter(1.0, 0.0, dtype=np.float32)))
    idx = jnp.searchsorted(cdf, uniforms.astype(cdf.dtype), side="right", method=method)
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
    """Stratified resampling: one uniform in each stratum ``[j / n, (j + 1) / n)``.

    The points ``(j + u_j) / n`` increase with ``j``, so the number of them below ``c`` is
    ``k + [u_k < n c - k]`` with ``k = floor(n c)``: particle ``i``'s first slot follows from
    ``C_{i-1}`` without a search (the same indices as a sorted search, in ``O(N)``).
    """
    u = jax.random.uniform(key, (num_samples,))
    cdf = _cdf(log_weights)
    previous = num_samples * jnp.concatenate([jnp.zeros((1,), cdf.dtype), cdf[:-1]])
    whole = jnp.clip(jnp.floor(previous), 0, num_samples).astype(jnp.int32)
    # Slot k = num_samples does not exist: nothing more to count there.
    u_at = jnp.take(u, jnp.minimum(whole, num_samples - 1))
    below = (whole < num_samples) & (u_at < previous - whole)
    starts = whole + below.astype(jnp.int32)
    return counts_to_indices(starts, num_samples)


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
    starts = jnp.clip(jnp.ceil(num_samples * previous - u), 0, num_samples)
    # Every point is below 1; rounding in n - u must not hand a slot to trailing zeros.
    starts = jnp.where(previous >= 1.0, num_samples, starts).astype(jnp.int32)
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
