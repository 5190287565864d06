"""Expected coverage of central and highest-posterior-density (HPD) credible regions.

For a credible level ``q`` and simulations ``(theta_i, y_i)`` from the prior predictive, a
calibrated posterior's level-``q`` region contains ``theta_i`` with probability ``q``
(Hermans et al. 2022). From ``L`` posterior draws:

- central intervals, per coordinate: with ``r_i`` the rank of the truth among the draws
  (uniform on ``0..L`` under calibration), the level-``q`` interval covers the middle
  ``n = floor(q (L + 1))`` ranks, so its coverage is exactly ``n / (L + 1)``;
- HPD regions, per coordinate: the marginal density is a Gaussian kernel estimate; the
  truth and the ``L`` draws are ranked by their leave-one-out density (each point's
  estimate from the other ``L`` points, bandwidth by Silverman's rule on all ``L + 1``), a
  symmetric construction, so under calibration the number of draws denser than the truth
  is uniform on ``0..L`` and the level-``q`` region (the ``n`` densest of ``L + 1`` points)
  has coverage exactly ``n / (L + 1)``. (The shortest window of ``ceil(q L)`` sorted draws
  under-covers by selection and is not used.)
- the joint HPD region, when the posterior log-density at the draws and at the truth is
  given: the truth is inside the level-``q`` region when fewer than ``n`` draws have a
  higher density (exact, like an SBC rank of the log-density).

Each coverage is compared with its nominal level by an exact two-sided binomial test;
the verdict is Bonferroni-corrected over levels and coordinates.

References:
    Hermans, Delaunoy, Rozet, Wehenkel, Begy, Louppe (2022). A Trust Crisis in
    Simulation-Based Inference? Your Posterior Approximations can be Unfaithful. TMLR.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import scipy.stats

__all__ = ["ExpectedCoverage", "expected_coverage", "plot_expected_coverage"]

DEFAULT_LEVELS = np.round(np.linspace(0.05, 0.95, 19), 2)


class ExpectedCoverage(NamedTuple):
    """The result of :func:`expected_coverage`.

    Attributes:
        levels: ``(K,)`` requested credible levels.
        names: coordinate names.
        central: ``(K, dim)`` empirical coverage of central intervals.
        central_nominal: ``(K,)`` their exact nominal level ``floor(q (L+1)) / (L+1)``.
        hpd: ``(K, dim)`` empirical coverage of marginal HPD intervals.
        hpd_nominal: ``(K,)`` their exact nominal level (see the module docstring).
        joint_hpd: ``(K,)`` coverage of the joint HPD region, or None.
        p_values: dict of ``(K, dim)`` / ``(K,)`` two-sided binomial p-values by kind.
        num_sims: number of simulations.
    """

    levels: np.ndarray
    names: tuple[str, ...]
    central: np.ndarray
    central_nominal: np.ndarray
    hpd: np.ndarray
    hpd_nominal: np.ndarray
    joint_hpd: np.ndarray | None
    p_values: dict[str, np.ndarray]
    num_sims: int

    @property
    def num_tests(self) -> int:
        return int(sum(np.size(p) for p in self.p_values.values()))

    @property
    def min_p_value(self) -> float:
        return float(min(np.min(p) for p in self.p_values.values()))

    def passed(self, level: float = 0.01) -> bool:
        """No coverage differs from nominal at ``level`` (Bonferroni over all tests)."""
        return bool(self.min_p_value >= level / self.num_tests)


def _binom_p(covered: np.ndarray, num_sims: int, nominal: np.ndarray) -> np.ndarray:
    """Exact two-sided binomial p-values, elementwise (``nominal`` broadcasts)."""
    covered = np.asarray(covered)
    nominal = np.broadcast_to(nominal, covered.shape)
    out = np.empty(covered.shape)
    for idx in np.ndindex(covered.shape):
        out[idx] = scipy.stats.binomtest(int(covered[idx]), num_sims, float(nominal[idx])).pvalue
    return out


def _loo_kde_higher(draws: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """Per coordinate, the number of draws whose leave-one-out KDE density beats the truth's."""
    points = np.concatenate([truths[:, None], draws], axis=1)  # (num_sims, L + 1, dim)
    num_points = points.shape[1]
    sd = points.std(axis=1, keepdims=True)
    bandwidth = 1.06 * np.where(sd > 0, sd, 1.0) * num_points ** (-0.2)
    out = np.empty(truths.shape, dtype=np.int64)
    for d in range(points.shape[2]):  # O(L^2) memory per coordinate only
        x = points[:, :, d] / bandwidth[:, :, d]
        kernel = np.exp(-0.5 * np.square(x[:, :, None] - x[:, None, :]))
        density = kernel.sum(axis=2) - 1.0  # leave one out: drop the self term exp(0)
        out[:, d] = np.sum(density[:, 1:] > density[:, :1], axis=1)
    return out


def expected_coverage(
    draws: Any,
    truths: Any,
    *,
    levels: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
    log_density_draws: Any = None,
    log_density_truths: Any = None,
    max_hpd_draws: int = 200,
) -> ExpectedCoverage:
    """Coverage of central and HPD credible regions across levels.

    Args:
        draws: ``(num_sims, num_draws, dim)`` posterior draws (near-independent).
        truths: ``(num_sims, dim)`` true parameters.
        levels: credible levels in (0, 1) (default 0.05, 0.10, ..., 0.95).
        names: coordinate names.
        log_density_draws: optional ``(num_sims, num_draws)`` posterior log-density (up to
            a per-simulation constant) at the draws, for the joint HPD region.
        log_density_truths: optional ``(num_sims,)`` the same at the truths.
        max_hpd_draws: marginal HPD regions use at most this many (evenly spaced) draws
            (the leave-one-out density costs ``O(L^2)`` per coordinate).

    Returns:
        An :class:`ExpectedCoverage`.
    """
    draws = np.asarray(draws, dtype=np.float64)
    truths = np.asarray(truths, dtype=np.float64)
    if draws.ndim != 3 or truths.shape != (draws.shape[0], draws.shape[2]):
        raise ValueError(
            "Expected draws (num_sims, num_draws, dim) and truths (num_sims, dim), got "
            f"{draws.shape} and {truths.shape}."
        )
    if not np.all(np.isfinite(truths)) or not np.all(np.isfinite(draws)):
        raise ValueError("Expected finite draws and truths, got NaN or inf.")
    num_sims, num_draws, dim = draws.shape
    levels = np.asarray(DEFAULT_LEVELS if levels is None else levels, dtype=np.float64)
    if levels.ndim != 1 or np.any((levels <= 0) | (levels >= 1)):
        raise ValueError(f"Expected levels in (0, 1), got {levels}.")
    names = tuple(names) if names is not None else tuple(f"theta[{i}]" for i in range(dim))
    if len(names) != dim:
        raise ValueError(f"Expected {dim} names, got {len(names)}.")

    # Central: ranks (ties split at the middle) against the middle n of L + 1 ranks.
    ranks = np.sum(draws < truths[:, None], axis=1) + 0.5 * np.sum(draws == truths[:, None], axis=1)
    n_central = np.floor(levels * (num_draws + 1)).astype(int)
    lo = (num_draws + 1 - n_central) // 2
    hi = lo + n_central - 1
    central_hits = (ranks[None] >= lo[:, None, None]) & (ranks[None] <= hi[:, None, None])
    central = central_hits.mean(axis=1)
    central_nominal = n_central / (num_draws + 1)

    # Marginal HPD: rank of the truth's leave-one-out KDE density among the draws'.
    n_hpd = min(num_draws, max_hpd_draws)
    keep = np.linspace(0, num_draws - 1, n_hpd).round().astype(int)
    higher = _loo_kde_higher(draws[:, keep], truths)  # (num_sims, dim)
    n_level = np.floor(levels * (n_hpd + 1)).astype(int)
    hpd = np.mean(higher[None] < n_level[:, None, None], axis=1)
    hpd_nominal = n_level / (n_hpd + 1)

    p_values = {
        "central": _binom_p(np.round(central * num_sims), num_sims, central_nominal[:, None]),
        "hpd": _binom_p(np.round(hpd * num_sims), num_sims, hpd_nominal[:, None]),
    }
    joint = None
    if log_density_draws is not None or log_density_truths is not None:
        ld = np.asarray(log_density_draws, dtype=np.float64)
        lt = np.asarray(log_density_truths, dtype=np.float64)
        if ld.shape != (num_sims, num_draws) or lt.shape != (num_sims,):
            raise ValueError(
                f"Expected log_density_draws ({num_sims}, {num_draws}) and log_density_truths "
                f"({num_sims},), got {ld.shape} and {lt.shape}."
            )
        higher = np.sum(ld > lt[:, None], axis=1)
        joint = np.mean(higher[None] < n_central[:, None], axis=1)
        p_values["joint_hpd"] = _binom_p(np.round(joint * num_sims), num_sims, central_nominal)
    return ExpectedCoverage(
        levels, names, central, central_nominal, hpd, hpd_nominal, joint, p_values, num_sims
    )


def plot_expected_coverage(result: ExpectedCoverage, ax=None):
    """Empirical against nominal coverage, one line per coordinate and region kind."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4.6, 4.2))
    band = 1.96 * np.sqrt(result.central_nominal * (1 - result.central_nominal) / result.num_sims)
    ax.fill_between(result.central_nominal, result.central_nominal - band,
                    result.central_nominal + band, color="0.85", label="95% binomial band")
    for d, name in enumerate(result.names[:8]):
        ax.plot(result.central_nominal, result.central[:, d], "-o", ms=2.5, color=f"C{d}",
                label=f"central {name}")
        ax.plot(result.hpd_nominal, result.hpd[:, d], ":", color=f"C{d}", label=f"HPD {name}")
    if result.joint_hpd is not None:
        ax.plot(result.central_nominal, result.joint_hpd, "k-s", ms=3, label="joint HPD")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("nominal level")
    ax.set_ylabel("empirical coverage")
    ax.set_title("Expected coverage")
    ax.legend(fontsize=7, loc="upper left")
    return ax
