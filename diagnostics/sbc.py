"""Simulation-based calibration (SBC): ranks, uniformity tests, ECDF bands and plots.

For simulations ``i = 1..N`` with ``theta_i ~ p(theta)``, ``y_i ~ p(y | theta_i)`` and
``L`` (near-independent) posterior draws ``x_i1..x_iL``, the rank of a test quantity
``g``

    r_i = #{ j : g(x_ij) < g(theta_i) }   in {0, ..., L}

is uniform when the draws come from the exact posterior (Talts et al. 2018). Test
quantities are the parameter coordinates and, following Modrak et al. (2023), the
log-likelihood ``log p(y_i | theta)``, which is sensitive to miscalibration that no
single coordinate shows. Ties (discrete quantities) are broken at random.

Uniformity is tested with the ECDF "gamma" statistic of Sailynoja, Buerkner and Vehtari
(2022): ``gamma = 2 min_k min(B(N F_k; N, z_k), 1 - B(N F_k - 1; N, z_k))`` over the
evaluation points ``z_k = k / (L + 1)``, with ``F_k`` the fraction of ranks below ``k`` and
``B`` the binomial CDF; its null distribution is simulated from exactly uniform discrete
ranks, which gives both a p-value and the simultaneous band of the ECDF-difference plot.
A chi-square test of the rank histogram is reported beside it.

References:
    Talts, Betancourt, Simpson, Vehtari, Gelman (2018). Validating Bayesian inference
    algorithms with simulation-based calibration. arXiv:1804.06788.
    Modrak, Moon, Kim, Buerkner, Huurre, Faltejskova, Gelman, Vehtari (2023).
    Simulation-based calibration checking for Bayesian computation: the choice of test
    quantities shapes sensitivity. Bayesian Analysis.
    Sailynoja, Buerkner, Vehtari (2022). Graphical test for discrete uniformity and its
    applications in goodness-of-fit evaluation and multiple sample comparison. Statistics
    and Computing 32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

__all__ = ["SBCResult", "sbc_ranks", "sbc_test", "thin_draws", "plot_sbc"]


class SBCResult(NamedTuple):
    """The result of :func:`sbc_test`.

    Attributes:
        ranks: ``(num_sims, num_quantities)`` ranks in ``0..num_draws``.
        num_draws: ``L``, the number of draws each rank is taken among.
        names: one name per test quantity.
        p_values: ``(num_quantities,)`` ECDF (gamma statistic) uniformity p-values.
        chi2_p_values: ``(num_quantities,)`` chi-square p-values of the rank histograms.
        z: ``(K,)`` ECDF evaluation points.
        ecdf: ``(K, num_quantities)`` ECDF of the scaled ranks at ``z``.
        band_lower, band_upper: ``(K,)`` simultaneous band for the ECDF at ``z``.
        band_level: the band's simultaneous coverage.
    """

    ranks: np.ndarray
    num_draws: int
    names: tuple[str, ...]
    p_values: np.ndarray
    chi2_p_values: np.ndarray
    z: np.ndarray
    ecdf: np.ndarray
    band_lower: np.ndarray
    band_upper: np.ndarray
    band_level: float

    def passed(self, level: float = 0.01) -> bool:
        """No quantity rejects uniformity at ``level`` (Bonferroni over quantities)."""
        return bool(np.min(self.p_values) >= level / len(self.names))


def thin_draws(draws: Any, num_keep: int) -> np.ndarray:
    """Evenly spaced draws from every chain, ``(chain, draw, ...) -> (num_keep, ...)``.

    MCMC draws are autocorrelated; SBC ranks assume (near-)independent draws, so keep
    about as many draws as the effective sample size, spread evenly along each chain.
    """
    draws = np.asarray(draws)
    if draws.ndim < 2:
        raise ValueError(f"Expected draws shaped (chain, draw, ...), got {draws.shape}.")
    num_chains, num_draws = draws.shape[:2]
    if not 1 <= num_keep <= num_chains * num_draws:
        raise ValueError(
            f"Expected num_keep in [1, {num_chains * num_draws}], got {num_keep!r}."
        )
    per_chain = -(-num_keep // num_chains)
    idx = np.unique(np.linspace(0, num_draws - 1, min(per_chain, num_draws)).round().astype(int))
    kept = draws[:, idx].reshape((-1,) + draws.shape[2:])
    if kept.shape[0] < num_keep:  # fewer distinct positions than asked: take all
        kept = draws.reshape((-1,) + draws.shape[2:])
    step = kept.shape[0] / num_keep
    return kept[(np.arange(num_keep) * step).astype(int)]


def sbc_ranks(draws: Any, truths: Any, *, key: jax.Array) -> np.ndarray:
    """Ranks of the truths among the draws, ties broken at random.

    Args:
        draws: ``(num_sims, num_draws, num_quantities)`` test quantities at the draws.
        truths: ``(num_sims, num_quantities)`` the same quantities at the true parameters.
        key: PRNG key for breaking ties.

    Returns:
        ``(num_sims, num_quantities)`` integer ranks in ``0..num_draws``.
    """
    draws = jnp.asarray(draws)
    truths = jnp.asarray(truths)
    if draws.ndim != 3 or truths.shape != (draws.shape[0], draws.shape[2]):
        raise ValueError(
            "Expected draws (num_sims, num_draws, q) and truths (num_sims, q), got "
            f"{tuple(draws.shape)} and {tuple(truths.shape)}."
        )
    if not bool(jnp.all(jnp.isfinite(truths))):
        raise ValueError("Expected finite truths, got NaN or inf.")
    below = jnp.sum(draws < truths[:, None, :], axis=1)
    ties = jnp.sum(draws == truths[:, None, :], axis=1)
    u = jax.random.uniform(key, below.shape)
    return np.asarray(below + jnp.floor(u * (ties + 1)).astype(below.dtype))


def _gamma(counts_below: np.ndarray, num_sims: int, z: np.ndarray) -> np.ndarray:
    """Sailynoja's gamma statistic for ECDF counts ``(..., K)`` at points ``z``."""
    lower_tail = scipy.stats.binom.cdf(counts_below, num_sims, z)
    upper_tail = scipy.stats.binom.sf(counts_below - 1, num_sims, z)
    return 2 * np.min(np.minimum(lower_tail, upper_tail), axis=-1)


def sbc_test(
    ranks: Any,
    num_draws: int,
    names: Sequence[str] | None = None,
    *,
    seed: int = 0,
    num_null: int = 2000,
    band_level: float = 0.95,
    max_points: int = 100,
) -> SBCResult:
    """Uniformity tests and the simultaneous ECDF band for SBC ranks.

    Args:
        ranks: ``(num_sims, num_quantities)`` ranks in ``0..num_draws``.
        num_draws: ``L``.
        names: names of the quantities (default ``q0, q1, ...``).
        seed: seed of the null simulation (band and p-values).
        num_null: simulated rank sets under uniformity.
        band_level: simultaneous coverage of the ECDF band.
        max_points: at most this many ECDF evaluation points.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
    if ranks.ndim != 2:
        raise ValueError(f"Expected ranks shaped (num_sims, num_quantities), got {ranks.shape}.")
    if ranks.min() < 0 or ranks.max() > num_draws:
        raise ValueError(
            f"Expected ranks in [0, num_draws={num_draws}], got [{ranks.min()}, {ranks.max()}]."
        )
    num_sims, num_q = ranks.shape
    names = tuple(names) if names is not None else tuple(f"q{i}" for i in range(num_q))
    if len(names) != num_q:
        raise ValueError(f"Expected {num_q} names, got {len(names)}.")
    # Evaluation points k / (L + 1): F_k = #{r < k} / N has mean z_k under uniformity.
    ks = np.unique(np.linspace(1, num_draws, min(num_draws, max_points)).round().astype(int))
    z = ks / (num_draws + 1)
    counts = np.stack([np.sum(ranks[:, q][:, None] < ks[None, :], axis=0) for q in range(num_q)])
    gamma_obs = _gamma(counts, num_sims, z)
    rng = np.random.default_rng(seed)
    null = rng.integers(0, num_draws + 1, size=(num_null, num_sims))
    null += (num_draws + 1) * np.arange(num_null)[:, None]
    hist = np.bincount(null.ravel(), minlength=num_null * (num_draws + 1))
    null_counts = np.cumsum(hist.reshape(num_null, num_draws + 1), axis=1)[:, ks - 1]
    gamma_null = _gamma(null_counts, num_sims, z)
    p_values = (1 + np.sum(gamma_null[None, :] <= gamma_obs[:, None], axis=1)) / (1 + num_null)
    gamma_crit = np.quantile(gamma_null, 1 - band_level)
    band_lower = scipy.stats.binom.ppf(gamma_crit / 2, num_sims, z) / num_sims
    band_upper = scipy.stats.binom.ppf(1 - gamma_crit / 2, num_sims, z) / num_sims
    bin_edges, expected = _rank_bins(num_draws, num_sims)
    chi2 = []
    for q in range(num_q):
        observed = np.histogram(ranks[:, q], bins=bin_edges)[0]
        chi2.append(scipy.stats.chisquare(observed, expected * num_sims).pvalue)
    return SBCResult(
        ranks, int(num_draws), names, p_values, np.asarray(chi2), z, counts.T / num_sims,
        band_lower, band_upper, float(band_level),
    )


def _rank_bins(num_draws: int, num_sims: int) -> tuple[np.ndarray, np.ndarray]:
    """Histogram edges over ``0..L`` with about 5+ expected ranks per bin, and bin probs."""
    num_bins = int(max(2, min(20, num_draws + 1, num_sims // 5)))
    edges = np.unique(np.linspace(0, num_draws + 1, num_bins + 1).round())
    widths = np.diff(edges)
    return edges - 0.5, widths / (num_draws + 1)


def plot_sbc(result: SBCResult, max_quantities: int = 8):
    """Rank histograms (pointwise 99% binomial band) over ECDF differences (simultaneous band)."""
    import matplotlib.pyplot as plt

    num_q = min(len(result.names), max_quantities)
    fig, axes = plt.subplots(2, num_q, figsize=(2.6 * num_q + 0.6, 5.0), squeeze=False)
    num_sims = result.ranks.shape[0]
    edges, probs = _rank_bins(result.num_draws, num_sims)
    lo = scipy.stats.binom.ppf(0.005, num_sims, probs)
    hi = scipy.stats.binom.ppf(0.995, num_sims, probs)
    for q in range(num_q):
        ax = axes[0, q]
        ax.bar(edges[:-1], hi - lo, bottom=lo, width=np.diff(edges), align="edge",
               color="0.85", label="99% band")
        ax.hist(result.ranks[:, q], bins=edges, histtype="step", color="C0", lw=1.5)
        ax.set_title(f"{result.names[q]}\np={result.p_values[q]:.3g}", fontsize=9)
        ax.set_xlabel("rank")
        ax = axes[1, q]
        ax.fill_between(result.z, result.band_lower - result.z, result.band_upper - result.z,
                        color="0.85", step="mid")
        ax.plot(result.z, result.ecdf[:, q] - result.z, color="C0", drawstyle="steps-mid")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("fractional rank")
    axes[0, 0].set_ylabel("count")
    axes[1, 0].set_ylabel(f"ECDF - uniform ({result.band_level:.0%} band)")
    fig.tight_layout()
    return fig
