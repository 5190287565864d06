"""State-space models with known likelihoods: a linear-Gaussian model and stochastic volatility.

Each model comes three ways:

* a NumPyro model with the latent states as sites (for NUTS and the static engines), with
  the static parameters as arguments;
* the pieces a particle filter needs, as plain JAX functions bundled in a
  :class:`StateSpace`: ``sample_initial(key, num_particles)``,
  ``sample_transition(key, t, x)`` (``x`` holds the particles at step ``t - 1``; ``t`` is
  0-based and these models are time-homogeneous) and ``log_observation(t, x, y_t)``;
* for the linear-Gaussian model, the exact answer: :func:`kalman_filter` (log-likelihood,
  filtering means and covariances, under ``lax.scan``).

Linear-Gaussian state-space model (LGSSM), states ``x_t`` in R^d, observations in R^p::

    x_1 ~ N(m_0, P_0),   x_t | x_{t-1} ~ N(A x_{t-1}, Q),   y_t | x_t ~ N(C x_t, R).

Stochastic volatility (Kim, Shephard and Chib 1998), scalar log-variance ``x_t``::

    x_1 ~ N(mu, sigma^2 / (1 - rho^2)),  x_t | x_{t-1} ~ N(mu + rho (x_{t-1} - mu), sigma^2),
    y_t | x_t ~ N(0, exp(x_t)).

References:
    Kalman (1960), A new approach to linear filtering and prediction problems.
    Kim, Shephard and Chib (1998), Stochastic volatility: likelihood inference and
    comparison with ARCH models. Chopin and Papaspiliopoulos (2020), An Introduction to
    Sequential Monte Carlo, ch. 2 and 10.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jaxtyping import Array, Float
from ppl.models.zoo import ZooEntry, register

__all__ = [
    "StateSpace",
    "LGSSMParams",
    "KalmanResult",
    "kalman_filter",
    "kalman_log_likelihood",
    "lgssm",
    "lgssm_state_space",
    "lgssm_default_params",
    "simulate_lgssm",
    "SVParams",
    "stochastic_volatility",
    "stochastic_volatility_state_space",
    "simulate_stochastic_volatility",
]


class StateSpace(NamedTuple):
    """What a particle filter needs from a state-space model (plain JAX functions).

    Attributes:
        sample_initial: ``(key, num_particles) -> x`` with a leading particle axis.
        sample_transition: ``(key, t, x) -> x'``, vectorised over the particle axis.
        log_observation: ``(t, x, y_t) -> (num_particles,)`` log-density of ``y_t``.
    """

    sample_initial: Callable
    sample_transition: Callable
    log_observation: Callable


# -- linear-Gaussian -------------------------------------------------------------------------------
class LGSSMParams(NamedTuple):
    """Parameters of the LGSSM (see the module docstring for the equations).

    Attributes:
        transition_matrix: ``A``, ``(d, d)``.
        transition_cov: ``Q``, ``(d, d)``.
        observation_matrix: ``C``, ``(p, d)``.
        observation_cov: ``R``, ``(p, p)``.
        initial_mean: ``m_0``, ``(d,)``.
        initial_cov: ``P_0``, ``(d, d)``.
    """

    transition_matrix: Array
    transition_cov: Array
    observation_matrix: Array
    observation_cov: Array
    initial_mean: Array
    initial_cov: Array


def lgssm_default_params(dtype=np.float32) -> LGSSMParams:
    """A damped rotation in 2-D observed through its first coordinate (d=2, p=1)."""
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return LGSSMParams(
        transition_matrix=(0.95 * rotation).astype(dtype),
        transition_cov=(0.3**2 * np.eye(2)).astype(dtype),
        observation_matrix=np.array([[1.0, 0.0]], dtype),
        observation_cov=np.array([[0.5**2]], dtype),
        initial_mean=np.zeros(2, dtype),
        initial_cov=np.eye(2, dtype=dtype),
    )


def _check_lgssm(params: LGSSMParams, y) -> None:
    d = np.shape(params.transition_matrix)[0]
    p = np.shape(params.observation_matrix)[0]
    expected = {
        "transition_matrix": (d, d), "transition_cov": (d, d), "observation_matrix": (p, d),
        "observation_cov": (p, p), "initial_mean": (d,), "initial_cov": (d, d),
    }
    for name, shape in expected.items():
        got = tuple(np.shape(getattr(params, name)))
        if got != shape:
            raise ValueError(f"Expected params.{name} of shape {shape}, got {got}.")
    if y is not None and (np.ndim(y) != 2 or np.shape(y)[1] != p):
        raise ValueError(f"Expected y of shape (num_steps, {p}), got {np.shape(y)}.")


class KalmanResult(NamedTuple):
    """Output of :func:`kalman_filter`.

    Attributes:
        log_likelihood: ``log p(y_1:T)``.
        filtered_means: ``E[x_t | y_1:t]``, ``(T, d)``.
        filtered_covs: ``Cov[x_t | y_1:t]``, ``(T, d, d)``.
    """

    log_likelihood: Float[Array, ""]
    filtered_means: Float[Array, "T d"]
    filtered_covs: Float[Array, "T d d"]


def kalman_filter(params: LGSSMParams, y: Float[Array, "T p"]) -> KalmanResult:
    """The Kalman filter: exact filtering distributions and log-likelihood of the LGSSM.

    Predict ``m^- = A m, P^- = A P A^T + Q`` (the first step uses ``m_0, P_0``), then update
    with ``S = C P^- C^T + R``, ``K = P^- C^T S^-1``, ``m = m^- + K (y_t - C m^-)``,
    ``P = P^- - K S K^T``; ``log p(y_1:T) = sum_t log N(y_t; C m^-, S)``. Runs under
    ``lax.scan`` in the dtype of its inputs (use float64 for long series).
    """
    _check_lgssm(params, y)
    a, q, c, r, m0, p0 = (jnp.asarray(v) for v in params)
    y = jnp.asarray(y)

    def update(mean, cov, y_t):
        s = c @ cov @ c.T + r
        s = 0.5 * (s + s.T)
        residual = y_t - c @ mean
        gain = jnp.linalg.solve(s, c @ cov).T
        log_lik = jax.scipy.stats.multivariate_normal.logpdf(residual, jnp.zeros_like(residual), s)
        new_cov = cov - gain @ s @ gain.T
        return mean + gain @ residual, 0.5 * (new_cov + new_cov.T), log_lik

    def step(carry, y_t):
        mean, cov = carry
        mean, cov = a @ mean, a @ cov @ a.T + q
        mean, cov, log_lik = update(mean, cov, y_t)
        return (mean, cov), (mean, cov, log_lik)

    mean1, cov1, log_lik1 = update(m0, p0, y[0])
    _, (means, covs, log_liks) = jax.lax.scan(step, (mean1, cov1), y[1:])
    means = jnp.concatenate([mean1[None], means])
    covs = jnp.concatenate([cov1[None], covs])
    return KalmanResult(log_lik1 + jnp.sum(log_liks), means, covs)


def kalman_log_likelihood(params: LGSSMParams, y: Float[Array, "T p"]) -> Float[Array, ""]:
    """``log p(y_1:T)`` of the LGSSM by the Kalman filter (:func:`kalman_filter`)."""
    return kalman_filter(params, y).log_likelihood


def lgssm(y, transition_matrix, transition_cov, observation_matrix, observation_cov,
          initial_mean, initial_cov, num_steps=None):
    """The LGSSM as a NumPyro model with latent states (non-centred).

    Latent ``eps ~ N(0, I)`` of shape ``(T, d)``; the states ``x`` (deterministic, ``(T, d)``)
    are ``x_1 = m_0 + L_0 eps_1``, ``x_t = A x_{t-1} + L_Q eps_t`` (``L`` Cholesky factors),
    computed by ``lax.scan``; ``y_t ~ N(C x_t, R)``. ``y=None`` needs ``num_steps``.
    """
    num_steps = y.shape[0] if y is not None else num_steps
    d = transition_matrix.shape[0]
    eps = numpyro.sample("eps", dist.Normal(0.0, 1.0).expand([num_steps, d]).to_event(2))
    chol_q = jnp.linalg.cholesky(transition_cov)
    x1 = initial_mean + jnp.linalg.cholesky(initial_cov) @ eps[0]

    def step(x, e):
        x = transition_matrix @ x + chol_q @ e
        return x, x

    _, rest = jax.lax.scan(step, x1, eps[1:])
    x = numpyro.deterministic("x", jnp.concatenate([x1[None], rest]))
    numpyro.sample(
        "y", dist.MultivariateNormal(x @ observation_matrix.T, observation_cov).to_event(1), obs=y
    )


def _lgssm_sample_initial(params, key, num_particles):
    d = params.initial_mean.shape[0]
    eps = jax.random.normal(key, (num_particles, d))
    return params.initial_mean + eps @ jnp.linalg.cholesky(params.initial_cov).T


def _lgssm_sample_transition(params, key, t, x):
    eps = jax.random.normal(key, x.shape)
    return x @ params.transition_matrix.T + eps @ jnp.linalg.cholesky(params.transition_cov).T


def _lgssm_log_observation(params, t, x, y_t):
    loc = x @ params.observation_matrix.T
    return jax.scipy.stats.multivariate_normal.logpdf(y_t, loc, params.observation_cov)


def lgssm_state_space(params: LGSSMParams | None = None) -> StateSpace:
    """The LGSSM's particle-filter pieces; particles are ``(num_particles, d)``."""
    params = LGSSMParams(*(jnp.asarray(v) for v in (params or lgssm_default_params())))
    _check_lgssm(params, None)
    return StateSpace(
        partial(_lgssm_sample_initial, params),
        partial(_lgssm_sample_transition, params),
        partial(_lgssm_log_observation, params),
    )


def simulate_lgssm(params: LGSSMParams, num_steps: int, seed: int = 0):
    """States ``(T, d)`` and observations ``(T, p)`` simulated in NumPy (float64)."""
    _check_lgssm(params, None)
    rng = np.random.default_rng(seed)
    a, q, c, r, m0, p0 = (np.asarray(v, np.float64) for v in params)
    x = np.zeros((num_steps, a.shape[0]))
    x[0] = rng.multivariate_normal(m0, p0)
    for t in range(1, num_steps):
        x[t] = a @ x[t - 1] + rng.multivariate_normal(np.zeros(a.shape[0]), q)
    y = x @ c.T + rng.multivariate_normal(np.zeros(c.shape[0]), r, size=num_steps)
    return x, y


def _lgssm_data(num_steps: int = 100):
    params = lgssm_default_params()
    _, y = simulate_lgssm(params, num_steps, seed=5)
    return {"y": y.astype(np.float32), **params._asdict()}


def lgssm_joint_gaussian(params: LGSSMParams, num_steps: int):
    """Dense mean and covariance of ``(x_1:T, y_1:T)`` (NumPy float64; for checks, small T)."""
    a, q, c, r, m0, p0 = (np.asarray(v, np.float64) for v in params)
    d, p = a.shape[0], c.shape[0]
    means, covs = [m0], [p0]
    for _ in range(1, num_steps):
        means.append(a @ means[-1])
        covs.append(a @ covs[-1] @ a.T + q)
    x_cov = np.zeros((num_steps * d, num_steps * d))
    for t in range(num_steps):
        block = covs[t]  # Cov(x_s, x_t) = A^{s-t} P_t for s >= t
        for s in range(t, num_steps):
            x_cov[s * d:(s + 1) * d, t * d:(t + 1) * d] = block
            x_cov[t * d:(t + 1) * d, s * d:(s + 1) * d] = block.T
            block = a @ block
    big_c = np.kron(np.eye(num_steps), c)
    x_mean = np.concatenate(means)
    y_mean = big_c @ x_mean
    y_cov = big_c @ x_cov @ big_c.T + np.kron(np.eye(num_steps), r)
    xy_cov = x_cov @ big_c.T
    return x_mean, x_cov, y_mean, y_cov, xy_cov, (d, p)


def _lgssm_exact(data):
    from scipy import stats

    params = LGSSMParams(**{k: np.asarray(data[k], np.float64) for k in LGSSMParams._fields})
    y = np.asarray(data["y"], np.float64)
    num_steps = y.shape[0]
    x_mean, x_cov, y_mean, y_cov, xy_cov, (d, _) = lgssm_joint_gaussian(params, num_steps)
    gain = np.linalg.solve(y_cov, xy_cov.T).T
    post_mean = x_mean + gain @ (y.reshape(-1) - y_mean)
    post_cov = x_cov - gain @ xy_cov.T
    with jax.enable_x64(True):
        log_lik = float(kalman_log_likelihood(params, y))
    dense = float(stats.multivariate_normal(y_mean, y_cov).logpdf(y.reshape(-1)))
    return {
        "mean": {"x": post_mean.reshape(num_steps, d)},
        "sd": {"x": np.sqrt(np.diag(post_cov)).reshape(num_steps, d)},
        "log_evidence": log_lik,
        "log_evidence_dense": dense,
    }


register(ZooEntry(
    "lgssm", lgssm, _lgssm_data,
    "Linear-Gaussian state-space model, d=2, p=1, T=100 (Kalman log-likelihood, exact smoother)",
    exact_fn=_lgssm_exact, tags=("closed_form", "state_space"),
    state_space_fn=lgssm_state_space,
))


# -- stochastic volatility ----------------------------------------------------------------------
class SVParams(NamedTuple):
    """Stochastic-volatility parameters: mean ``mu``, persistence ``rho``, volatility ``sigma``."""

    mu: float = -1.02
    rho: float = 0.9702
    sigma: float = 0.178


def _check_sv(params: SVParams) -> None:
    rho, sigma = float(params.rho), float(params.sigma)
    if not -1.0 < rho < 1.0:
        raise ValueError(f"Expected rho in (-1, 1) (a stationary AR(1)), got {rho}.")
    if not sigma > 0.0:
        raise ValueError(f"Expected sigma > 0, got {sigma}.")


def stochastic_volatility(y, mu=-1.02, rho=0.9702, sigma=0.178, num_steps=None):
    """Stochastic volatility with static parameters as a NumPyro model (non-centred).

    Latent ``eps ~ N(0, I_T)``; the log-variances ``x`` (deterministic) are
    ``x_1 = mu + sigma / sqrt(1 - rho^2) eps_1``, ``x_t = mu + rho (x_{t-1} - mu) + sigma eps_t``
    (``lax.scan``); ``y_t ~ N(0, exp(x_t / 2))`` (the scale is the standard deviation).
    """
    num_steps = y.shape[0] if y is not None else num_steps
    eps = numpyro.sample("eps", dist.Normal(0.0, 1.0).expand([num_steps]).to_event(1))
    x1 = mu + sigma / jnp.sqrt(1.0 - rho**2) * eps[0]

    def step(x, e):
        x = mu + rho * (x - mu) + sigma * e
        return x, x

    _, rest = jax.lax.scan(step, x1, eps[1:])
    x = numpyro.deterministic("x", jnp.concatenate([x1[None], rest]))
    numpyro.sample("y", dist.Normal(0.0, jnp.exp(x / 2)).to_event(1), obs=y)


def _sv_sample_initial(params, key, num_particles):
    scale = params.sigma / jnp.sqrt(1.0 - params.rho**2)
    return params.mu + scale * jax.random.normal(key, (num_particles,))


def _sv_sample_transition(params, key, t, x):
    return params.mu + params.rho * (x - params.mu) + params.sigma * jax.random.normal(key, x.shape)


def _sv_log_observation(params, t, x, y_t):
    return jax.scipy.stats.norm.logpdf(y_t, 0.0, jnp.exp(x / 2))


def stochastic_volatility_state_space(params: SVParams | None = None) -> StateSpace:
    """Stochastic volatility's particle-filter pieces; particles are ``(num_particles,)``."""
    params = params or SVParams()
    _check_sv(params)
    return StateSpace(
        partial(_sv_sample_initial, params),
        partial(_sv_sample_transition, params),
        partial(_sv_log_observation, params),
    )


def simulate_stochastic_volatility(params: SVParams, num_steps: int, seed: int = 0):
    """Log-variances ``(T,)`` and returns ``(T,)`` simulated in NumPy (float64)."""
    _check_sv(params)
    rng = np.random.default_rng(seed)
    mu, rho, sigma = (float(v) for v in params)
    x = np.zeros(num_steps)
    x[0] = mu + sigma / np.sqrt(1 - rho**2) * rng.normal()
    for t in range(1, num_steps):
        x[t] = mu + rho * (x[t - 1] - mu) + sigma * rng.normal()
    return x, np.exp(x / 2) * rng.normal(size=num_steps)


def _sv_data():
    params = SVParams()
    _, y = simulate_stochastic_volatility(params, 1000, seed=6)
    return {"y": y.astype(np.float32), **params._asdict()}


register(ZooEntry(
    "stochastic_volatility", stochastic_volatility, _sv_data,
    "Stochastic volatility, T=1000, static mu=-1.02, rho=0.9702, sigma=0.178 (no closed form)",
    tags=("state_space", "hard"),
    state_space_fn=stochastic_volatility_state_space,
))
