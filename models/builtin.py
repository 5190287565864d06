"""Built-in zoo models with closed-form answers, or known geometry.

Each entry is an ordinary NumPyro model function, a default data set (fixed seeds), and,
where one exists, the exact answer computed independently in NumPy/SciPy (float64):

==========================  ==========================================================
``conjugate_normal``        normal mean, known noise: posterior and log-evidence
``eight_schools``           non-centred hierarchical normal (reference: posteriordb)
``eight_schools_centered``  the same posterior written centred (funnel geometry)
``beta_binomial``           beta prior, binomial counts: posterior and log-evidence
``linear_regression``       Gaussian prior, known noise: posterior and log-evidence
``logistic_regression``     N=10,000, D=25 synthetic (no closed form; ``_small``: 500 x 5)
``funnel``                  Neal's funnel, ``v ~ N(0, 3)``, ``x_i | v ~ N(0, e^{v/2})``
``gaussian_mixture``        2-D mean with a two-component prior: exact mixture posterior
==========================  ==========================================================

The state-space models (``lgssm``, ``stochastic_volatility``) live in
:mod:`ppl.models.state_space` and the posteriordb posteriors in
:mod:`ppl.models.posteriordb`; both register themselves when this module is imported.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from ppl.models.zoo import ZooEntry, register
from scipy import special, stats

__all__ = [
    "conjugate_normal",
    "eight_schools",
    "eight_schools_centered",
    "beta_binomial",
    "linear_regression",
    "logistic_regression",
    "logistic_regression_data",
    "funnel",
    "gaussian_mixture",
]


# -- conjugate normal: unknown mean, known noise ----------------------------------------------
def conjugate_normal(y, prior_loc=0.0, prior_scale=2.0, noise_scale=1.0):
    """``mu ~ N(prior_loc, prior_scale)``, ``y_i | mu ~ N(mu, noise_scale)``."""
    mu = numpyro.sample("mu", dist.Normal(prior_loc, prior_scale))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, noise_scale), obs=y)


def _conjugate_normal_data():
    rng = np.random.default_rng(1)
    return {"y": rng.normal(1.5, 1.0, size=20).astype(np.float32)}


def _conjugate_normal_exact(data):
    y = np.asarray(data["y"], np.float64)
    m0 = float(data.get("prior_loc", 0.0))
    s0 = float(data.get("prior_scale", 2.0))
    s = float(data.get("noise_scale", 1.0))
    n = y.size
    precision = 1 / s0**2 + n / s**2
    mean = (m0 / s0**2 + y.sum() / s**2) / precision
    # Evidence: y ~ N(m0 1, s^2 I + s0^2 1 1^T).
    cov = s**2 * np.eye(n) + s0**2 * np.ones((n, n))
    log_evidence = stats.multivariate_normal(np.full(n, m0), cov).logpdf(y)
    return {
        "mean": {"mu": mean}, "sd": {"mu": precision**-0.5}, "log_evidence": float(log_evidence),
    }


register(ZooEntry(
    "conjugate_normal", conjugate_normal, _conjugate_normal_data,
    "Normal mean with known noise and a normal prior (closed form)",
    exact_fn=_conjugate_normal_exact, tags=("closed_form",),
))


# -- eight schools ------------------------------------------------------------------------------
_SCHOOLS_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], np.float32)
_SCHOOLS_SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], np.float32)


def eight_schools(sigma, y=None):
    """Rubin's eight schools, non-centred (Gelman et al., BDA3 5.5).

    ``mu ~ N(0, 5)``, ``tau ~ HalfCauchy(5)``, ``z_j ~ N(0, 1)``,
    ``theta_j = mu + tau z_j`` (deterministic), ``y_j ~ N(theta_j, sigma_j)``.
    """
    mu = numpyro.sample("mu", dist.Normal(0, 5))
    tau = numpyro.sample("tau", dist.HalfCauchy(5))
    with numpyro.plate("school", len(sigma)):
        z = numpyro.sample("z", dist.Normal(0, 1))
        theta = numpyro.deterministic("theta", mu + tau * z)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def eight_schools_centered(sigma, y=None):
    """Eight schools, centred: ``theta_j ~ N(mu, tau)`` (funnel between tau and theta)."""
    mu = numpyro.sample("mu", dist.Normal(0, 5))
    tau = numpyro.sample("tau", dist.HalfCauchy(5))
    with numpyro.plate("school", len(sigma)):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def _eight_schools_data():
    return {"sigma": _SCHOOLS_SIGMA.copy(), "y": _SCHOOLS_Y.copy()}


def _eight_schools_reference():
    # The same posterior as posteriordb's eight_schools_noncentered (mu, tau, theta).
    from ppl.models.posteriordb import load_reference_draws

    return load_reference_draws("eight_schools-eight_schools_noncentered")


register(ZooEntry(
    "eight_schools", eight_schools, _eight_schools_data,
    "Eight schools, non-centred; deterministic theta (reference draws: posteriordb)",
    reference_fn=_eight_schools_reference, tags=("hierarchical", "reference"),
))
register(ZooEntry(
    "eight_schools_centered", eight_schools_centered, _eight_schools_data,
    "Eight schools, centred: funnel geometry, NUTS diverges (reference draws: posteriordb)",
    reference_fn=_eight_schools_reference, tags=("hierarchical", "reference", "hard"),
))


# -- beta-binomial ------------------------------------------------------------------------------
def beta_binomial(trials, successes=None, prior_a=2.0, prior_b=2.0):
    """``p ~ Beta(a, b)``, ``successes_i | p ~ Binomial(trials_i, p)``."""
    p = numpyro.sample("p", dist.Beta(prior_a, prior_b))
    with numpyro.plate("data", trials.shape[0]):
        numpyro.sample("successes", dist.Binomial(trials, p), obs=successes)


def _beta_binomial_data():
    rng = np.random.default_rng(2)
    trials = rng.integers(5, 30, size=12).astype(np.int32)
    successes = rng.binomial(trials, 0.3).astype(np.int32)
    return {"trials": trials, "successes": successes}


def _beta_binomial_exact(data):
    n = np.asarray(data["trials"], np.float64)
    k = np.asarray(data["successes"], np.float64)
    a = float(data.get("prior_a", 2.0))
    b = float(data.get("prior_b", 2.0))
    a_post, b_post = a + k.sum(), b + (n - k).sum()
    mean = a_post / (a_post + b_post)
    var = a_post * b_post / ((a_post + b_post) ** 2 * (a_post + b_post + 1))
    # p(k) = prod_i C(n_i, k_i) * B(a + sum k, b + sum (n - k)) / B(a, b).
    log_choose = special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)
    log_evidence = log_choose.sum() + special.betaln(a_post, b_post) - special.betaln(a, b)
    return {"mean": {"p": mean}, "sd": {"p": np.sqrt(var)}, "log_evidence": float(log_evidence)}


register(ZooEntry(
    "beta_binomial", beta_binomial, _beta_binomial_data,
    "Binomial counts with a beta prior (closed form incl. log-evidence)",
    exact_fn=_beta_binomial_exact, tags=("closed_form",),
))


# -- Bayesian linear regression with known noise ------------------------------------------------
def linear_regression(x, y=None, prior_scale=1.0, noise_scale=0.5):
    """``beta ~ N(0, prior_scale^2 I_D)``, ``y | beta ~ N(x beta, noise_scale^2 I_N)``."""
    beta = numpyro.sample("beta", dist.Normal(0.0, prior_scale).expand([x.shape[1]]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Normal(x @ beta, noise_scale), obs=y)


def _linear_regression_data():
    rng = np.random.default_rng(3)
    num_data, dim = 50, 5
    x = rng.normal(size=(num_data, dim))
    beta = rng.normal(size=dim)
    y = x @ beta + 0.5 * rng.normal(size=num_data)
    return {"x": x.astype(np.float32), "y": y.astype(np.float32)}


def _linear_regression_exact(data):
    """Posterior N(m, S), S = (I/s0^2 + X^T X/s^2)^-1, m = S X^T y / s^2.

    Evidence: y ~ N(0, s^2 I + s0^2 X X^T).
    """
    x = np.asarray(data["x"], np.float64)
    y = np.asarray(data["y"], np.float64)
    s0 = float(data.get("prior_scale", 1.0))
    s = float(data.get("noise_scale", 0.5))
    precision = np.eye(x.shape[1]) / s0**2 + x.T @ x / s**2
    cov = np.linalg.inv(precision)
    mean = cov @ x.T @ y / s**2
    # Evidence by the matrix determinant lemma (the dense N x N normal is the test's check).
    resid = y - x @ mean
    n = y.size
    log_evidence = (
        -0.5 * n * np.log(2 * np.pi * s**2)
        - 0.5 * resid @ resid / s**2
        - 0.5 * mean @ mean / s0**2
        - 0.5 * np.linalg.slogdet(precision)[1]
        - x.shape[1] * np.log(s0)
    )
    return {
        "mean": {"beta": mean}, "sd": {"beta": np.sqrt(np.diag(cov))},
        "cov": {"beta": cov}, "log_evidence": float(log_evidence),
    }


register(ZooEntry(
    "linear_regression", linear_regression, _linear_regression_data,
    "Bayesian linear regression, N=50, D=5, known noise (closed form incl. log-evidence)",
    exact_fn=_linear_regression_exact, tags=("closed_form",),
))


# -- logistic regression ------------------------------------------------------------------------
def logistic_regression(x, y=None):
    """``alpha ~ N(0, 1)``, ``beta ~ N(0, I_D)``, ``y_i ~ Bernoulli(sigmoid(alpha + x_i beta))``."""
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 1.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=alpha + x @ beta), obs=y)


def logistic_regression_data(num_data: int = 10_000, dim: int = 25, seed: int = 0) -> dict:
    """Synthetic design ``x ~ N(0, 1/dim)`` per entry and labels from a fixed true beta.

    Pass the result to ``models.get("logistic_regression").build(**...)`` for any size.
    """
    if int(num_data) < 1 or int(dim) < 1:
        raise ValueError(f"Expected num_data >= 1 and dim >= 1, got {num_data} and {dim}.")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_data, dim)) / np.sqrt(dim)
    beta = rng.normal(size=dim) * 2.0
    logits = 0.3 + x @ beta
    y = (rng.uniform(size=num_data) < special.expit(logits)).astype(np.int32)
    return {"x": x.astype(np.float32), "y": y}


register(ZooEntry(
    "logistic_regression", logistic_regression, logistic_regression_data,
    "Logistic regression, N=10,000, D=25, synthetic (fixed seed); no closed form",
    tags=("regression", "large"),
))
register(ZooEntry(
    "logistic_regression_small", logistic_regression,
    lambda: logistic_regression_data(num_data=500, dim=5, seed=1),
    "Logistic regression, N=500, D=5, synthetic (fixed seed); no closed form",
    tags=("regression", "small"),
))


# -- Neal's funnel ------------------------------------------------------------------------------
def funnel(dim: int = 10):
    """Neal's funnel (Neal 2003, Slice sampling): ``v ~ N(0, 3)``, ``x_i | v ~ N(0, e^{v/2})``.

    ``x`` has ``dim - 1`` coordinates. Exact: ``v`` has mean 0 and sd 3; each ``x_i`` has mean
    0 and sd ``exp(9/4)`` (``E[x_i^2] = E[e^v] = e^{9/2}``). No data.
    """
    v = numpyro.sample("v", dist.Normal(0.0, 3.0))
    numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)).expand([dim - 1]).to_event(1))


def _funnel_exact(data):
    dim = int(data.get("dim", 10))
    return {
        "mean": {"v": 0.0, "x": np.zeros(dim - 1)},
        "sd": {"v": 3.0, "x": np.full(dim - 1, np.exp(9 / 4))},
    }


register(ZooEntry(
    "funnel", funnel, lambda: {"dim": 10},
    "Neal's funnel, 10-D: v ~ N(0, 3) (exact marginal moments); hard for NUTS",
    exact_fn=_funnel_exact, tags=("closed_form", "hard"),
))


# -- Gaussian mixture posterior with known mode weights ----------------------------------------
def gaussian_mixture(y, prior_locs, prior_weights, prior_scale=1.0, noise_scale=2.0):
    """A 2-D mean with a two-component Gaussian-mixture prior; Gaussian observations.

    ``mu ~ sum_k w_k N(m_k, s0^2 I)``, ``y_i | mu ~ N(mu, s^2 I)``. The posterior is exactly
    the mixture ``sum_k pi_k N(m'_k, s'^2 I)`` with ``s'^2 = (1/s0^2 + n/s^2)^-1``,
    ``m'_k = s'^2 (m_k/s0^2 + sum_i y_i/s^2)`` and ``pi_k`` proportional to ``w_k`` times
    the marginal likelihood of component ``k``: mode weights, moments, the probability of
    the half-plane ``mu_1 + mu_2 > 0`` and the log-evidence are all exact.
    """
    component = dist.Normal(prior_locs, prior_scale).to_event(1)
    prior = dist.MixtureSameFamily(dist.Categorical(probs=prior_weights), component)
    mu = numpyro.sample("mu", prior)
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, noise_scale).to_event(1), obs=y)


def _gaussian_mixture_data():
    rng = np.random.default_rng(4)
    y = rng.normal(0.5, 2.0, size=(4, 2))
    return {
        "y": y.astype(np.float32),
        "prior_locs": np.array([[-2.0, -2.0], [2.0, 2.0]], np.float32),
        "prior_weights": np.array([0.5, 0.5], np.float32),
    }


def _gaussian_mixture_exact(data):
    y = np.asarray(data["y"], np.float64)
    locs = np.asarray(data["prior_locs"], np.float64)
    w = np.asarray(data["prior_weights"], np.float64)
    s0 = float(data.get("prior_scale", 1.0))
    s = float(data.get("noise_scale", 2.0))
    n = y.shape[0]
    post_var = 1.0 / (1.0 / s0**2 + n / s**2)
    post_locs = post_var * (locs / s0**2 + y.sum(0) / s**2)
    # Per coordinate, y_{.j} | k ~ N(m_kj 1, s^2 I + s0^2 1 1^T): independent over coordinates.
    cov = s**2 * np.eye(n) + s0**2 * np.ones((n, n))
    log_marginal = np.array([
        sum(stats.multivariate_normal(np.full(n, m[j]), cov).logpdf(y[:, j]) for j in range(2))
        for m in locs
    ])
    log_joint = np.log(w) + log_marginal
    log_evidence = special.logsumexp(log_joint)
    pi = np.exp(log_joint - log_evidence)
    mean = pi @ post_locs
    second = pi @ (post_locs**2 + post_var)
    half_plane = pi @ stats.norm.cdf(post_locs.sum(1) / np.sqrt(2 * post_var))
    return {
        "mean": {"mu": mean}, "sd": {"mu": np.sqrt(second - mean**2)},
        "log_evidence": float(log_evidence), "mode_weights": pi, "mode_locs": post_locs,
        "mode_sd": float(np.sqrt(post_var)), "half_plane_probability": float(half_plane),
    }


register(ZooEntry(
    "gaussian_mixture", gaussian_mixture, _gaussian_mixture_data,
    "2-D mean under a two-component mixture prior: bimodal posterior with exact mode weights",
    exact_fn=_gaussian_mixture_exact, tags=("closed_form", "multimodal", "hard"),
))


# The other modules register their entries on import (the zoo imports this module only).
from ppl.models import posteriordb as _posteriordb  # noqa: E402,F401
from ppl.models import state_space as _state_space  # noqa: E402,F401
