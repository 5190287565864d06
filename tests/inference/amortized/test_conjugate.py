"""Exact posteriors of mixture priors against brute force: grids, closed forms, importance
sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from ppl.inference.amortized.gmm import (
    GaussianMixture,
    gaussian_mean_posterior,
    linear_gaussian_posterior,
    linear_regression_posterior,
)

Z_LIMIT = 4.0


def _grid_posterior(log_prior, log_likelihood, axes):
    """Normalised posterior density on a grid (float64), its mean, covariance, log Z."""
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
    log_joint = log_prior(mesh.reshape(-1, len(axes))) + log_likelihood(mesh.reshape(-1,
                                                                                   len(axes)))
    joint = np.exp(log_joint).reshape(mesh.shape[:-1])
    cell = np.prod([axis[1] - axis[0] for axis in axes])
    evidence = joint.sum() * cell
    density = joint / evidence
    points = mesh.reshape(-1, len(axes))
    weights = density.reshape(-1) * cell
    mean = weights @ points
    covariance = (points - mean).T @ ((points - mean) * weights[:, None])
    return density, mean, covariance, np.log(evidence)


def _log_prior_fn(mixture):
    weights = np.asarray(mixture.weights, np.float64)
    means = np.asarray(mixture.means, np.float64)
    covariances = np.asarray(mixture.component_covariances, np.float64)

    def log_prior(points):
        terms = [np.log(w) + scipy.stats.multivariate_normal(m, c).logpdf(points)
                 for w, m, c in zip(weights, means, covariances, strict=True) if w > 0]
        return np.logaddexp.reduce(np.stack(terms), axis=0)

    return log_prior


def test_gaussian_mean_posterior_1d_matches_grid():
    prior = GaussianMixture.from_weights(jnp.array([0.5, 0.3, 0.2]),
                                         jnp.array([[-2.0], [1.0], [3.5]]),
                                         jnp.array([[0.7], [1.5], [0.4]]))
    x = np.array([[0.8], [1.9], [0.2], [1.1], [np.nan], [7.0]])
    mask = np.array([True, True, True, True, False, False])
    noise_sd = 1.3
    observed = x[mask, 0]

    def log_likelihood(points):
        return scipy.stats.norm(points[:, :1], noise_sd).logpdf(observed).sum(-1)

    axis = np.linspace(-8, 10, 18001)
    density, mean, covariance, log_evidence = _grid_posterior(_log_prior_fn(prior),
                                                              log_likelihood, [axis])
    eye = jnp.ones((x.shape[0], 1, 1))
    posterior, log_z = linear_gaussian_posterior(prior, eye, x, mask, noise_sd)
    np.testing.assert_allclose(np.exp(posterior.log_prob(axis[:, None])), density,
                               atol=1e-4 * density.max())
    np.testing.assert_allclose(posterior.mean(), mean, atol=1e-4)
    np.testing.assert_allclose(posterior.covariance(), covariance, rtol=1e-4)
    np.testing.assert_allclose(log_z, log_evidence, atol=1e-4)
    # The named wrapper returns the same mixture.
    np.testing.assert_allclose(gaussian_mean_posterior(prior, x, mask, noise_sd).means,
                               posterior.means, rtol=1e-6)


def test_gaussian_mean_posterior_2d_full_covariance_prior_matches_grid():
    prior = GaussianMixture.from_weights(
        jnp.array([0.6, 0.4]), jnp.array([[-1.0, 1.0], [2.0, 0.0]]),
        scale_tril=jnp.array([[[1.0, 0.0], [0.8, 0.6]], [[0.5, 0.0], [-0.2, 0.9]]]))
    x = np.array([[0.3, 0.9], [1.2, 0.1], [0.4, 1.4]])
    noise_sd = 1.0

    def log_likelihood(points):
        return sum(scipy.stats.multivariate_normal(point, noise_sd**2).logpdf(points)
                   for point in x)

    axis = np.linspace(-5, 6, 551)
    _, mean, covariance, log_evidence = _grid_posterior(_log_prior_fn(prior), log_likelihood,
                                                        [axis, axis])
    eye = jnp.broadcast_to(jnp.eye(2), (3, 2, 2))
    posterior, log_z = linear_gaussian_posterior(prior, eye, x, None, noise_sd)
    np.testing.assert_allclose(posterior.mean(), mean, atol=1e-3)
    np.testing.assert_allclose(posterior.covariance(), covariance, atol=1e-3)
    np.testing.assert_allclose(log_z, log_evidence, atol=1e-3)


def test_linear_regression_single_gaussian_closed_form():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 3))  # noqa: N806
    beta = np.array([0.5, -1.0, 2.0])
    noise_sd = 0.7
    y = X @ beta + noise_sd * rng.normal(size=12)
    prior_mean = np.array([0.0, 0.5, -0.5])
    prior_tril = np.array([[1.0, 0.0, 0.0], [0.3, 0.8, 0.0], [-0.2, 0.1, 1.5]])
    prior_cov = prior_tril @ prior_tril.T
    prior = GaussianMixture([0.0], prior_mean[None], scale_tril=prior_tril[None])
    precision = np.linalg.inv(prior_cov) + X.T @ X / noise_sd**2
    covariance = np.linalg.inv(precision)
    mean = covariance @ (np.linalg.solve(prior_cov, prior_mean) + X.T @ y / noise_sd**2)
    evidence = scipy.stats.multivariate_normal(X @ prior_mean, X @ prior_cov @ X.T
                                               + noise_sd**2 * np.eye(12)).logpdf(y)
    result = linear_gaussian_posterior(prior, X[:, None, :], y[:, None], None, noise_sd)
    np.testing.assert_allclose(result.posterior.means[0], mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.posterior.component_covariances[0], covariance,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.log_evidence, evidence, rtol=1e-5)


def _regression_problem():
    prior = GaussianMixture.from_weights(
        jnp.array([0.5, 0.3, 0.2]), jnp.array([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.5]]),
        scale_tril=jnp.array([[[0.8, 0.0], [0.2, 0.5]], [[0.6, 0.0], [0.0, 0.6]],
                              [[1.0, 0.0], [-0.5, 0.7]]]))
    X = np.array([[1.0, 0.5], [1.0, -0.3], [1.0, 1.2], [1.0, 9.0]])  # noqa: N806
    y = np.array([0.4, 0.9, -0.2, 100.0])
    mask = np.array([True, True, True, False])
    return prior, X, y, mask, 0.8


def test_linear_regression_mixture_weights_closed_form_and_mask():
    prior, X, y, mask, noise_sd = _regression_problem()  # noqa: N806
    posterior = linear_regression_posterior(prior, X, y, mask, noise_sd)
    Xo, yo = X[mask], y[mask]  # noqa: N806
    log_terms = [np.log(w) + scipy.stats.multivariate_normal(
        Xo @ m, Xo @ c @ Xo.T + noise_sd**2 * np.eye(len(yo))).logpdf(yo)
        for w, m, c in zip(np.asarray(prior.weights, np.float64),
                           np.asarray(prior.means, np.float64),
                           np.asarray(prior.component_covariances, np.float64), strict=True)]
    expected = np.exp(np.array(log_terms) - np.logaddexp.reduce(log_terms))
    np.testing.assert_allclose(posterior.weights, expected, rtol=1e-4)
    subset = linear_regression_posterior(prior, Xo, yo, None, noise_sd)
    np.testing.assert_allclose(posterior.means, subset.means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(posterior.scale_tril, subset.scale_tril, rtol=1e-5, atol=1e-6)


def test_linear_regression_mixture_mean_matches_importance_sampling():
    prior, X, y, mask, noise_sd = _regression_problem()  # noqa: N806
    posterior = linear_regression_posterior(prior, X, y, mask, noise_sd)
    draws = np.asarray(prior.sample(jax.random.key(0), 400_000), np.float64)
    residuals = y[mask][None, :] - draws @ X[mask].T
    log_w = -0.5 * np.sum(residuals**2, -1) / noise_sd**2
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    estimate = w @ draws
    # Delta-method standard error of the self-normalised estimate.
    standard_error = np.sqrt(np.sum(w[:, None] ** 2 * (draws - estimate) ** 2, 0))
    z = (np.asarray(posterior.mean(), np.float64) - estimate) / standard_error
    assert np.all(np.abs(z) < Z_LIMIT), z
    spread = np.sqrt(np.diag(np.asarray(posterior.covariance())))
    assert np.all(standard_error < 0.02 * spread)  # the check has power
