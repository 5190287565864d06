"""The non-conjugate family (logistic regression) and its reference posteriors: the
likelihood is NumPyro's, the Laplace mixture is exact where it must be (a Gaussian
likelihood), the importance-sampled reference matches quadrature on a grid within its Monte
Carlo error (and a wrong reference does not), and bad data is refused by name."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from ppl.inference.amortized import GaussianMixture, families, family_model
from ppl.inference.amortized.families import LogisticRegressionFamily, MixtureHyperprior
from ppl.inference.amortized.reference import importance_reference, laplace_mixture

Z_LIMIT = 4.0
GRID = np.linspace(-8.0, 8.0, 641)


def _two_coefficient_family():
    return LogisticRegressionFamily(
        name="logistic_2", num_coefficients=2, max_points=32,
        hyperprior=MixtureHyperprior(max_components=3, mean_low=-2.0, mean_high=2.0,
                                     scale_low=0.3, scale_high=2.0, max_shape=0.5))


def test_logistic_family_description_simulator_and_likelihood():
    family = families.get_family("logistic_regression")
    assert not family.conjugate and (family.dim, family.data_dim) == (3, 4)
    assert family.data_labels == ("intercept", "z_1", "z_2", "y")
    again = families.family_from_json(json.loads(json.dumps(families.family_to_json(family))))
    assert again == family
    prior, theta, data, mask = family.sample_example(jax.random.key(0))
    data = np.asarray(data)
    assert np.all(data[:, 0] == 1) and set(np.unique(data[:, 3])) <= {0.0, 1.0}
    expected = dist.Bernoulli(logits=data[:, :3] @ np.asarray(theta)).log_prob(data[:, 3])
    np.testing.assert_allclose(family.log_likelihood(theta, data, mask),
                               np.sum(np.where(mask, expected, 0.0)), rtol=1e-5)
    with pytest.raises(ValueError, match="is not conjugate"):
        family.exact_posterior(prior, data, mask)
    with pytest.raises(ValueError, match="num_coefficients to be an integer >= 2"):
        LogisticRegressionFamily("l", num_coefficients=1)


def test_laplace_mixture_is_exact_for_a_gaussian_likelihood():
    family = families.get_family("linear_regression")
    prior, _, data, mask = family.sample_example(jax.random.key(3))
    exact = family.exact_posterior(prior, data, mask)
    laplace = laplace_mixture(family, prior, data, mask)
    np.testing.assert_allclose(laplace.log_evidence, exact.log_evidence, atol=2e-3)
    points = exact.posterior.sample(jax.random.key(4), 5)
    np.testing.assert_allclose(jax.vmap(laplace.posterior.log_prob)(points),
                               jax.vmap(exact.posterior.log_prob)(points), atol=2e-3)


def _grid_posterior(family, prior, data, mask):
    points = np.stack(np.meshgrid(GRID, GRID, indexing="ij"), -1).reshape(-1, 2)
    log_joint = np.asarray(jax.vmap(prior.log_prob)(points)
                           + jax.vmap(lambda t: family.log_likelihood(t, data, mask))(points),
                           np.float64)
    weights = np.exp(log_joint - log_joint.max())
    log_evidence = np.log(weights.sum()) + log_joint.max() + 2 * np.log(GRID[1] - GRID[0])
    weights /= weights.sum()
    mean = weights @ points
    return mean, np.sqrt(weights @ (points - mean) ** 2), log_evidence


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_importance_reference_matches_quadrature(seed):
    family = _two_coefficient_family()
    prior, _, data, mask = family.sample_example(jax.random.key(seed))
    mean, sd, log_evidence = _grid_posterior(family, prior, data, mask)
    reference = importance_reference(family, prior, data, mask, jax.random.key(50 + seed))
    ess = float(reference.ess)
    assert ess > 1000  # the defensive Laplace proposal is close to the posterior
    tolerance = Z_LIMIT * sd / np.sqrt(ess)
    assert np.all(np.abs(np.asarray(reference.mean) - mean) < tolerance)
    assert np.all(np.abs(np.asarray(reference.sd) / sd - 1) < Z_LIMIT / np.sqrt(ess / 2))
    assert abs(float(reference.log_evidence) - log_evidence) < Z_LIMIT / np.sqrt(ess)
    # Negative control: the prior is no reference (the check has power).
    assert np.any(np.abs(np.asarray(prior.mean()) - mean) > tolerance)


def test_bad_logistic_data_is_refused_by_name():
    family = families.get_family("logistic_regression")
    prior = GaussianMixture.from_weights(jnp.array([1.0]), jnp.zeros((1, 3)), jnp.ones((1, 3)))
    _, _, data, _ = family.sample_example(jax.random.key(0))
    data = np.asarray(data)[:10]
    half = data.copy()
    half[4, 3] = 0.5
    with pytest.raises(ValueError, match="outcomes y of 0 or 1 .* got 0.5 at point 4"):
        family_model(family, prior, half)
    no_intercept = data.copy()
    no_intercept[2, 0] = 0.0
    with pytest.raises(ValueError, match="intercept column .* to be 1 .* at point 2"):
        family_model(family, prior, no_intercept)
    # Unobserved rows are not checked.
    assert family.data_problems(half, np.arange(10) != 4) is None


def test_the_shipped_amortizer_refuses_bad_logistic_data():
    from ppl.inference.amortized import load_pretrained

    amortizer = load_pretrained("logistic_regression")
    family = amortizer.family
    prior = GaussianMixture.from_weights(jnp.array([1.0]), jnp.zeros((1, 3)), jnp.ones((1, 3)))
    _, _, data, _ = family.sample_example(jax.random.key(0))
    batch = np.stack([np.asarray(data)] * 3)
    batch[2, 7, 3] = 2.0
    with pytest.raises(ValueError, match="got 2 at point 7 of data set 2"):
        amortizer.posterior(batch, None, prior)
    with pytest.raises(ValueError, match="got 2 at point 7.$"):
        amortizer.posterior(batch[2], None, prior)
