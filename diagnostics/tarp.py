"""TARP: Tests of Accuracy with Random Points (Lemos et al. 2023).

For simulation ``i`` with true parameter ``theta_i``, posterior draws ``x_{i,1..L}`` and a
reference point ``r_i``, the credibility of the truth is

    f_i = (1 / L) * #{ j : d(x_ij, r_i) < d(theta_i, r_i) },

the posterior mass of the ball around ``r_i`` that just reaches ``theta_i``. The posterior
is calibrated for every choice of references exactly when, for references that depend on
the observation only, ``f`` is uniform on [0, 1] (the paper's sufficiency result needs
data-dependent references; random references independent of the data give a necessary
condition). The expected coverage probability is the ECDF of ``f``

    ECP(alpha_k) = (1 / N) * #{ i : f_i <= alpha_k },   alpha_k = k / K, k = 0..K,

on a *fixed* grid over [0, 1]. Tie side: ``f`` takes the values ``c / L`` and the grid
points ``k / K`` coincide with some of them, so a simulation with ``f_i = alpha_k`` exactly
is counted as covered at ``alpha_k`` (the right-continuous ECDF). The comparison is done
in integers (``c K <= k L``), so no rounding decides a tie.

Distances are computed once, in chunks of simulations (the draws are never copied as a
whole); bootstrap bands resample the simulations (their ``f``) with replacement, in one
vectorised computation, and never touch the caller's arrays.

References:
    Lemos, Coogan, Hezaveh, Perreault-Levasseur (2023). Sampling-Based Accuracy Testing of
    Posterior Estimators for General Inference. ICML. arXiv:2302.03026.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from jaxtyping import Array, Float, Int

from ppl.validation import check_count

__all__ = ["TARPResult", "tarp", "tarp_credibility"]


class TARPResult(NamedTuple):
    """The result of :func:`tarp`.

    Attributes:
        alpha: ``(K + 1,)`` credibility levels ``k / K``.
        ecp: ``(K + 1,)`` expected coverage probability at each level.
        ecp_lower, ecp_upper: bootstrap band (``band_level`` central percentiles).
        atc: area between the ECP curve and the diagonal, ``int_0^1 |ECP - alpha|``
            (trapezoid rule on the grid); 0 for a perfectly calibrated estimator.
        credibility: ``(num_sims,)`` the values ``f_i``.
        p_value: Kolmogorov-Smirnov p-value of uniformity of ``f`` (ties between the
            ``L + 1`` attainable ranks broken at random, so it is exact under calibration
            with exchangeable draws).
        references: ``(num_sims, dim)`` the reference points, in normalised coordinates
            when ``normalize=True``.
    """

    alpha: np.ndarray
    ecp: np.ndarray
    ecp_lower: np.ndarray
    ecp_upper: np.ndarray
    atc: float
    credibility: np.ndarray
    p_value: float
    references: np.ndarray

    def passed(self, level: float = 0.01) -> bool:
        """Whether uniformity of ``f`` is not rejected at ``level``."""
        return bool(self.p_value >= level)


# -- the compiled pieces -----------------------------------------------------------------------


@eqx.filter_jit
def _count_closer(
    draws: Float[Array, "n draw dim"],
    truths: Float[Array, "n dim"],
    references: Float[Array, "n dim"],
    inv_scale: Float[Array, " dim"],
    distance: str,
) -> Int[Array, " n"]:
    """``#{j : d(x_j, r) < d(theta, r)}`` per simulation, distances in scaled units."""
    if distance == "l2":
        def dist(a, r):
            return jnp.sum(jnp.square((a - r) * inv_scale), axis=-1)  # squared: same order
    else:
        def dist(a, r):
            return jnp.sum(jnp.abs((a - r) * inv_scale), axis=-1)
    d_draws = dist(draws, references[:, None, :])
    d_truth = dist(truths, references)
    return jnp.sum(d_draws < d_truth[:, None], axis=1, dtype=jnp.int32)


@eqx.filter_jit
def _ecp_with_bootstrap(key, counts, num_draws: int, num_bins: int, num_bootstrap: int):
    """ECP on the grid ``k / num_bins`` and its bootstrap replicates (rows)."""
    n = counts.shape[0]
    # Smallest k with c / L <= k / K, in integers: k = ceil(c K / L).
    bins = (counts.astype(jnp.int64 if jax.config.jax_enable_x64 else jnp.int32) * num_bins
            + num_draws - 1) // num_draws
    hist = jnp.zeros(num_bins + 1, jnp.int32).at[bins].add(1)
    ecp = jnp.cumsum(hist) / n
    idx = jax.random.randint(key, (num_bootstrap, n), 0, n)
    rows = jnp.broadcast_to(jnp.arange(num_bootstrap)[:, None], idx.shape)
    boot = jnp.zeros((num_bootstrap, num_bins + 1), jnp.int32).at[rows, bins[idx]].add(1)
    return ecp, jnp.cumsum(boot, axis=1) / n


# -- checks ------------------------------------------------------------------------------------


def _check_inputs(draws, truths) -> tuple[int, int, int]:
    if np.ndim(draws) != 3:
        raise ValueError(
            "Expected draws shaped (num_sims, num_draws, dim), got shape "
            f"{tuple(np.shape(draws))}."
        )
    num_sims, num_draws, dim = np.shape(draws)
    if np.shape(truths) != (num_sims, dim):
        raise ValueError(
            f"Expected truths shaped (num_sims, dim) = ({num_sims}, {dim}), got "
            f"{tuple(np.shape(truths))}."
        )
    if num_sims < 2 or num_draws < 1 or dim < 1:
        raise ValueError(
            f"Expected at least 2 simulations, 1 draw and 1 dimension, got draws shaped "
            f"{tuple(np.shape(draws))}."
        )
    if not np.all(np.isfinite(np.asarray(truths))):
        raise ValueError("Expected finite truths, got NaN or inf.")
    return num_sims, num_draws, dim


def _reference_points(key, references, observations, num_sims, dim, low, scale):
    """References in *original* units, and in the coordinates the user sees."""
    if references is None:
        # Uniform over the box spanned by the truths: uniform on [0, 1]^dim once normalised.
        unit = np.asarray(jax.random.uniform(key, (num_sims, dim)), np.float64)
        return low + unit * scale
    if callable(references):
        if observations is None:
            raise ValueError(
                "Expected observations (a pytree with a leading num_sims axis) when "
                "references is a function of the observation, got None."
            )
        keys = jax.random.split(key, num_sims)
        points = jax.vmap(references)(keys, observations)
    else:
        points = references
    points = jnp.asarray(points, dtype=jnp.result_type(float))
    if points.shape != (num_sims, dim):
        raise ValueError(
            f"Expected references shaped (num_sims, dim) = ({num_sims}, {dim}), got "
            f"{tuple(points.shape)}."
        )
    if not bool(jnp.all(jnp.isfinite(points))):
        raise ValueError("Expected finite references, got NaN or inf.")
    return points


def tarp_credibility(
    draws: Any,
    truths: Any,
    references: Any,
    *,
    distance: str = "l2",
    normalize: bool = True,
    chunk_bytes: int = 256 * 2**20,
) -> np.ndarray:
    """Counts ``c_i = L f_i`` for given reference points (original units).

    Args:
        draws: ``(num_sims, num_draws, dim)`` posterior draws (numpy or JAX).
        truths: ``(num_sims, dim)`` true parameters.
        references: ``(num_sims, dim)`` reference points in the same units as ``truths``.
        distance: ``"l2"`` or ``"l1"``.
        normalize: scale each dimension by the truths' range before measuring distances.
        chunk_bytes: simulations are processed in chunks of about this many bytes.

    Returns:
        ``(num_sims,)`` integer counts of draws closer to the reference than the truth.
    """
    num_sims, num_draws, dim = _check_inputs(draws, truths)
    if distance not in ("l2", "l1"):
        raise ValueError(f"Expected distance 'l2' or 'l1', got {distance!r}.")
    truths_np = np.asarray(truths, dtype=np.result_type(np.asarray(truths).dtype, np.float32))
    if normalize:
        span = truths_np.max(axis=0) - truths_np.min(axis=0)
        inv_scale = np.where(span > 0, 1.0 / np.where(span > 0, span, 1.0), 1.0)
    else:
        inv_scale = np.ones(dim)
    references = np.asarray(references)
    itemsize = np.dtype(getattr(draws, "dtype", np.float32)).itemsize
    chunk = int(max(1, min(num_sims, chunk_bytes // max(1, num_draws * dim * itemsize))))
    dtype = jax.dtypes.canonicalize_dtype(
        np.result_type(getattr(draws, "dtype", np.float32), np.float32)
    )
    inv_scale = jnp.asarray(inv_scale, dtype)
    out = []
    for start in range(0, num_sims, chunk):
        stop = min(start + chunk, num_sims)
        pad = chunk - (stop - start)  # pad the last chunk: one compiled shape only
        d, t, r = draws[start:stop], truths_np[start:stop], references[start:stop]
        if pad:
            d = np.concatenate([np.asarray(d), np.repeat(np.asarray(d)[-1:], pad, 0)])
            t = np.concatenate([t, np.repeat(t[-1:], pad, 0)])
            r = np.concatenate([r, np.repeat(r[-1:], pad, 0)])
        counts = _count_closer(
            jnp.asarray(d, dtype), jnp.asarray(t, dtype), jnp.asarray(r, dtype),
            inv_scale, distance,
        )
        out.append(np.asarray(counts)[: stop - start])
    return np.concatenate(out)


def tarp(
    draws: Float[Array, "num_sims num_draws dim"],
    truths: Float[Array, "num_sims dim"],
    *,
    key: jax.Array,
    references: Any = None,
    observations: Any = None,
    distance: str = "l2",
    normalize: bool = True,
    num_bootstrap: int = 100,
    num_alpha: int = 101,
    band_level: float = 0.95,
) -> TARPResult:
    """TARP expected coverage with a bootstrap band.

    Args:
        draws: ``(num_sims, num_draws, dim)`` posterior draws, one set per simulated data set.
        truths: ``(num_sims, dim)`` the parameters that generated each data set.
        key: a JAX PRNG key (references and bootstrap).
        references: None (uniform over the box spanned by the truths, i.e. uniform on
            [0, 1]^dim after normalisation), an array ``(num_sims, dim)`` in the units of
            ``truths``, or a function ``(key, observation) -> (dim,)`` of the observation
            (data-dependent references; pass ``observations``).
        observations: pytree with a leading ``num_sims`` axis, for callable references.
        distance: ``"l2"`` (Euclidean) or ``"l1"`` (Manhattan).
        normalize: measure distances after mapping each dimension by the truths' range,
            ``(x - min) / (max - min)``; applied to draws, truths and references alike.
        num_bootstrap: bootstrap rounds (simulations resampled with replacement); 0 for none.
        num_alpha: number of grid points ``alpha_k = k / (num_alpha - 1)`` over [0, 1].
        band_level: central probability of the bootstrap band.

    Returns:
        A :class:`TARPResult`.

    Example:
        >>> import jax, numpy as np
        >>> rng = np.random.default_rng(0)
        >>> theta = rng.normal(size=(200, 2))
        >>> draws = rng.normal(size=(200, 300, 2))   # the prior: calibrated when y says nothing
        >>> res = tarp(draws, theta, key=jax.random.key(0))
        >>> res.passed()
        True
    """
    num_sims, num_draws, dim = _check_inputs(draws, truths)
    check_count("num_bootstrap", num_bootstrap, 0)
    check_count("num_alpha", num_alpha, 2)
    if not 0.0 < band_level < 1.0:
        raise ValueError(f"Expected band_level in (0, 1), got {band_level!r}.")
    ref_key, boot_key, tie_key = jax.random.split(key, 3)
    truths_np = np.asarray(truths, dtype=np.float64)
    low = truths_np.min(axis=0)
    span = truths_np.max(axis=0) - low
    scale = np.where(span > 0, span, 1.0)
    points = np.asarray(
        _reference_points(ref_key, references, observations, num_sims, dim, low, scale)
    )
    counts = tarp_credibility(draws, truths, points, distance=distance, normalize=normalize)
    num_bins = int(num_alpha) - 1
    ecp, boot = _ecp_with_bootstrap(
        boot_key, jnp.asarray(counts), int(num_draws), num_bins, max(int(num_bootstrap), 1)
    )
    ecp, boot = np.asarray(ecp), np.asarray(boot)
    alpha = np.arange(num_bins + 1) / num_bins
    if num_bootstrap:
        tail = 100 * (1 - band_level) / 2
        lower, upper = np.percentile(boot, [tail, 100 - tail], axis=0)
    else:
        lower, upper = ecp.copy(), ecp.copy()
    gap = np.abs(ecp - alpha)
    atc = float(np.sum((gap[1:] + gap[:-1]) / 2) / num_bins)
    # Randomised PIT of the rank of the truth among L + 1 points: exactly U(0, 1).
    u = (counts + np.asarray(jax.random.uniform(tie_key, (num_sims,)))) / (num_draws + 1)
    p_value = float(scipy.stats.kstest(u, "uniform").pvalue)
    shown = (points - low) / scale if normalize else points
    return TARPResult(alpha, ecp, lower, upper, atc, counts / num_draws, p_value, shown)


def plot_tarp(result: TARPResult, ax=None, label: str = "ECP"):
    """The TARP curve with its bootstrap band against the diagonal."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.fill_between(result.alpha, result.ecp_lower, result.ecp_upper, alpha=0.3,
                    color="C0", label="bootstrap band")
    ax.plot(result.alpha, result.ecp, color="C0", label=label)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    ax.set_xlabel("credibility level alpha")
    ax.set_ylabel("expected coverage")
    ax.set_title(f"TARP (ATC {result.atc:.3f}, p {result.p_value:.3g})")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    return ax
