"""Gaussian mixtures: normalisation, moments of the draws, validation, batching, KL."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from ppl.inference.amortized.gmm import GaussianMixture, kl_divergence, stack_mixtures

# |estimate - truth| / standard error below this (two-sided p ~ 6e-5 per check).
Z_LIMIT = 4.0


def _mixture_2d():
    tril = jnp.array([[[1.0, 0.0], [0.6, 0.5]], [[0.4, 0.0], [-0.3, 1.2]],
                      [[0.7, 0.0], [0.0, 0.7]]])
    return GaussianMixture.from_weights(jnp.array([0.5, 0.3, 0.2]),
                                        jnp.array([[-1.0, 0.5], [2.0, -1.0], [0.0, 3.0]]),
                                        scale_tril=tril)


def test_log_prob_integrates_to_one_1d():
    mixture = GaussianMixture.from_weights(jnp.array([0.2, 0.5, 0.3]),
                                           jnp.array([[-3.0], [0.5], [4.0]]),
                                           jnp.array([[0.3], [1.0], [2.0]]))
    grid = np.linspace(-20, 25, 45001)
    density = np.exp(np.asarray(mixture.log_prob(grid[:, None]), np.float64))
    assert abs(np.trapezoid(density, grid) - 1.0) < 1e-4


def test_log_prob_integrates_to_one_2d_and_matches_scipy():
    mixture = _mixture_2d()
    axis = np.linspace(-9, 12, 701)
    grid = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    density = np.exp(np.asarray(mixture.log_prob(grid), np.float64)).reshape(701, 701)
    assert abs(np.trapezoid(np.trapezoid(density, axis), axis) - 1.0) < 1e-3
    points = np.array([[0.3, -0.2], [2.5, 1.0], [-4.0, 6.0]])
    covariances = np.asarray(mixture.component_covariances, np.float64)
    expected = np.log(sum(
        w * scipy.stats.multivariate_normal(m, c).pdf(points)
        for w, m, c in zip(np.asarray(mixture.weights), np.asarray(mixture.means), covariances,
                           strict=True)))
    np.testing.assert_allclose(mixture.log_prob(points), expected, rtol=1e-5, atol=1e-5)


def test_sample_moments_match_mean_and_covariance_in_mc_units():
    mixture = _mixture_2d()
    num = 40_000
    draws = np.asarray(mixture.sample(jax.random.key(0), num), np.float64)
    mean, covariance = np.asarray(mixture.mean()), np.asarray(mixture.covariance())
    z_mean = (draws.mean(0) - mean) / (draws.std(0) / np.sqrt(num))
    assert np.all(np.abs(z_mean) < Z_LIMIT), z_mean
    centred = draws - mean
    products = centred[:, :, None] * centred[:, None, :]
    z_cov = (products.mean(0) - covariance) / (products.std(0) / np.sqrt(num))
    assert np.all(np.abs(z_cov) < Z_LIMIT), z_cov


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: GaussianMixture.from_weights([0.3, 0.8], [[0.0], [1.0]], [[1.0], [1.0]]),
         "weights summing to 1, got sum 1.1"),
        (lambda: GaussianMixture.from_weights([-0.2, 1.2], [[0.0], [1.0]], [[1.0], [1.0]]),
         "non-negative weights"),
        (lambda: GaussianMixture.from_weights([0.0, 0.0], [[0.0], [1.0]], [[1.0], [1.0]]),
         "at least one component with positive weight"),
        (lambda: GaussianMixture([jnp.nan, 0.0], [[0.0], [1.0]], [[1.0], [1.0]]),
         "finite log_weights"),
        (lambda: GaussianMixture([0.0], [[0.0, 1.0]], [[1.0, 0.0]]), "positive scales"),
        (lambda: GaussianMixture([0.0], [[0.0, 1.0]], [[1.0, -2.0]]), "positive scales"),
        (lambda: GaussianMixture([0.0], [[jnp.nan, 1.0]], [[1.0, 1.0]]), "finite means"),
        (lambda: GaussianMixture([0.0], [[0.0, 1.0]], [[1.0, jnp.inf]]), "finite scales"),
        (lambda: GaussianMixture([0.0, 0.0], [[0.0, 1.0]], [[1.0, 1.0]]),
         r"Expected means of shape \(2, 'd'\)"),
        (lambda: GaussianMixture([0.0], [[0.0, 1.0]], [[1.0]]),
         r"Expected scales of shape \(1, 2\)"),
        (lambda: GaussianMixture([0.0], [[0.0, 1.0]], scale_tril=[[[1.0, 0.5], [0.0, 1.0]]]),
         "lower-triangular"),
        (lambda: GaussianMixture([0.0], [[0.0, 1.0]], scale_tril=jnp.eye(2)[None] * -1.0),
         "positive scales"),
        (lambda: GaussianMixture([0.0], [[0.0]], [[1.0]], scale_tril=[[[1.0]]]),
         "exactly one of scales and scale_tril"),
        (lambda: GaussianMixture([0.0], [[0.0]], [[1.0]]).log_prob(jnp.zeros(2)),
         r"Expected theta of shape \(..., 1\)"),
        (lambda: GaussianMixture([0.0], [[0.0]], [[1.0]]).pad(0), "num_components >= 1"),
    ],
)
def test_bad_mixtures_are_refused_by_name(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_batching_under_vmap_and_padding():
    one = GaussianMixture.from_weights(jnp.array([1.0]), jnp.array([[0.5, -1.0]]),
                                       jnp.array([[1.0, 2.0]]))
    other = _mixture_2d()
    batch = stack_mixtures([one, other])
    assert batch.batch_shape == (2,) and batch.num_components == 3
    points = jnp.array([[0.0, 0.0], [1.0, 2.0]])
    np.testing.assert_allclose(jax.vmap(lambda m, x: m.log_prob(x))(batch, points),
                               [one.log_prob(points[0]), other.log_prob(points[1])], rtol=1e-6)
    # Padding leaves the distribution unchanged; moments broadcast over batch axes.
    np.testing.assert_allclose(batch.select(0).log_prob(points), one.log_prob(points), rtol=1e-6)
    np.testing.assert_allclose(batch.mean()[1], other.mean(), rtol=1e-6)
    np.testing.assert_allclose(batch.covariance()[0], one.covariance(), rtol=1e-6)

    # Built inside jit and vmap (tracers: values are not checked, shapes are).
    @jax.jit
    @jax.vmap
    def build(shift):
        return GaussianMixture(jnp.log(jnp.array([0.5, 0.5])),
                               jnp.array([[0.0, 0.0], [1.0, 1.0]]) + shift,
                               jnp.ones((2, 2))).mean()

    np.testing.assert_allclose(build(jnp.arange(3.0)), 0.5 + jnp.arange(3.0)[:, None]
                               * jnp.ones((3, 2)), rtol=1e-6)


def test_kl_divergence_against_closed_form():
    p = GaussianMixture([0.0], [[0.0, 1.0]], [[1.0, 2.0]])
    q = GaussianMixture([0.0], [[0.5, 0.0]], [[1.5, 1.0]])
    mp, sp = np.array([0.0, 1.0]), np.array([1.0, 2.0])
    mq, sq = np.array([0.5, 0.0]), np.array([1.5, 1.0])
    exact = np.sum(np.log(sq / sp) + (sp**2 + (mp - mq) ** 2) / (2 * sq**2) - 0.5)
    estimate = kl_divergence(p, q, jax.random.key(1), num_samples=20_000)
    assert abs(float(estimate.value) - exact) < Z_LIMIT * float(estimate.standard_error)
    same = kl_divergence(p, p, jax.random.key(2), num_samples=100)
    assert float(same.value) == 0.0
