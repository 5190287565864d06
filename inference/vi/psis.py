"""Importance-sampling diagnostics for variational approximations.

Given draws ``z_s ~ q`` and log weights ``log w_s = log p(z_s) - log q(z_s)`` (``p``
unnormalised), Pareto-smoothed importance sampling (PSIS) fits a generalised Pareto
distribution to the largest weights; its shape ``k`` says how far ``q`` may be trusted
(Yao, Vehtari, Simpson & Gelman 2018, "Yes, but did it work?: Evaluating variational
inference"): ``k < 0.5`` good, ``0.5 <= k < 0.7`` usable, ``k >= 0.7`` not to be trusted.
The smoothing itself is ArviZ's ``psislw`` (through :mod:`ppl.arviz_bridge`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import logsumexp

__all__ = ["ImportanceDiagnostics", "importance_diagnostics", "KHAT_THRESHOLD"]

KHAT_THRESHOLD = 0.7


class ImportanceDiagnostics(NamedTuple):
    """What the importance weights of ``q`` against the target say.

    Attributes:
        khat: PSIS Pareto shape estimate (lower is better; above 0.7 do not trust ``q``).
        ess: importance-sampling effective sample size of the smoothed weights,
            ``1 / sum(w_s^2)`` with normalised ``w``.
        log_evidence: ``log mean_s exp(log w_s)`` (raw weights): an estimate of
            ``log Z`` (a lower bound in expectation).
        elbo: ``mean_s log w_s``, the evidence lower bound.
        smoothed_log_weights: normalised PSIS-smoothed log weights, shaped like the input.
    """

    khat: float
    ess: float
    log_evidence: float
    elbo: float
    smoothed_log_weights: np.ndarray


def importance_diagnostics(log_weights) -> ImportanceDiagnostics:
    """PSIS diagnostics of one set of log importance weights.

    Args:
        log_weights: ``(num_draws,)`` values of ``log p(z) - log q(z)`` at draws from ``q``.

    Returns:
        :class:`ImportanceDiagnostics`.

    Raises:
        ValueError: fewer than 10 draws, or no finite weight.
    """
    from ppl import arviz_bridge

    lw = np.asarray(log_weights, dtype=np.float64).reshape(-1)
    if lw.size < 10:
        raise ValueError(f"Expected at least 10 log weights for PSIS, got {lw.size}.")
    finite = np.isfinite(lw)
    if not finite.any():
        raise ValueError("Expected finite log weights, got none (the approximation has no "
                         "mass where the target is finite).")
    # A draw where the target is -inf (outside the support) gets weight zero.
    lw = np.where(finite, lw, -np.inf)
    log_evidence = float(logsumexp(lw) - np.log(lw.size))
    elbo = float(np.mean(lw[finite])) if finite.all() else -np.inf
    shifted = np.where(finite, lw - np.max(lw[finite]),
                       np.min(lw[finite]) - np.max(lw[finite]) - 50.0)
    if np.ptp(shifted) < 1e-6:  # q equals the target up to a constant: nothing to smooth
        smoothed, khat = np.full(lw.shape, -np.log(lw.size)), -np.inf
    else:
        smoothed, khat = arviz_bridge.psislw(shifted)
    smoothed = np.asarray(smoothed, dtype=np.float64)
    smoothed = np.where(finite, smoothed, -np.inf)
    smoothed = smoothed - logsumexp(smoothed)
    ess = float(1.0 / np.sum(np.exp(2 * smoothed)))
    return ImportanceDiagnostics(float(khat), ess, log_evidence, elbo, smoothed)
