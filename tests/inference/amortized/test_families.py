"""Model families: registry, plain descriptions, hyper-distribution support, simulators
coherent with their exact posteriors."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest
from ppl.inference.amortized import families
from ppl.inference.amortized.families import (
    GaussianMeanFamily,
    LinearRegressionFamily,
    MixtureHyperprior,
)
from ppl.inference.amortized.gmm import GaussianMixture

Z_LIMIT = 4.0
SHIPPED = ("gaussian_mean_2d", "linear_regression")


def test_registry_and_plain_descriptions():
    names = families.family_names()
    for name in ("gaussian_mean_1d", "gaussian_mean_2d", "gaussian_mean_3d",
                 "linear_regression", "linear_regression_4"):
        assert name in names
        family = families.get_family(name)
        text = json.dumps(families.family_to_json(family))
        again = families.family_from_json(json.loads(text))
        assert again == family and hash(again) == hash(family)
    regression = families.get_family("linear_regression")
    assert (regression.dim, regression.data_dim) == (3, 4)
    assert dataclasses.replace(regression, noise_sd=0.6) != regression
    with pytest.raises(ValueError, match="Unknown family 'poisson'. Available families: "):
        families.get_family("poisson")
    with pytest.raises(ValueError, match="Expected a family kind"):
        families.family_from_json({"kind": "poisson"})


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: GaussianMeanFamily("g", dim=0), "dim to be an integer >= 1"),
        (lambda: GaussianMeanFamily("g", dim=1, noise_sd=0.0), "noise_sd > 0"),
        (lambda: GaussianMeanFamily("g", dim=1, min_points=5, max_points=3),
         r"min_points <= max_points \(3\)"),
        (lambda: LinearRegressionFamily("r", design="fourier"), "design in"),
        (lambda: MixtureHyperprior(mean_low=1.0, mean_high=1.0), "mean_low < mean_high"),
        (lambda: MixtureHyperprior(scale_low=0.5, scale_high=0.2), "scale_high > scale_low"),
        (lambda: MixtureHyperprior(min_components=3, max_components=2),
         r"min_components <= max_components \(2\)"),
    ],
)
def test_bad_family_settings_are_refused(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("name", SHIPPED)
def test_priors_lie_in_the_hyperprior_support(name):
    family = families.get_family(name)
    priors = jax.jit(jax.vmap(family.sample_prior))(jax.random.split(jax.random.key(0), 256))
    priors.validate()
    hyper = family.hyperprior
    assert hyper.problems(priors) == []
    assert not hyper.outside(priors).any()
    counts = np.asarray(priors.component_mask.sum(-1))
    assert counts.min() == hyper.min_components and counts.max() == hyper.max_components
    # The correlation factor's entries fill their range (the check is not vacuous).
    assert np.abs(np.asarray(priors.scale_tril)[:, :, 1, 0]).max() > 0.1


def test_problems_name_what_is_outside():
    hyper = families.get_family("gaussian_mean_2d").hyperprior
    far = GaussianMixture([0.0], [[9.0, 0.0]], [[1.0, 1.0]])
    assert hyper.problems(far) == ["component 0 has mean[0] = 9, outside [-4, 4]"]
    narrow = GaussianMixture([0.0], [[0.0, 0.0]], [[0.01, 1.0]])
    assert "sd[0] = 0.01, outside [0.1, 3]" in hyper.problems(narrow)[0]
    many = GaussianMixture.from_weights(np.full(6, 1 / 6), np.zeros((6, 2)), np.ones((6, 2)))
    assert hyper.problems(many) == ["6 components, more than the 4 of the training priors"]
    tilted = GaussianMixture([0.0], [[0.0, 0.0]], scale_tril=[[[1.0, 0.0], [2.0, 1.0]]])
    assert "correlation-factor entry [1, 0] = 2" in hyper.problems(tilted)[0]


@pytest.mark.parametrize("name", SHIPPED)
def test_simulator_and_exact_posterior_are_coherent(name):
    """For exact posteriors, z = (theta - E[theta | x]) / sd(theta | x) over simulations
    from the joint has mean 0 and mean square 1 (tower property)."""
    family = families.get_family(name)

    @jax.jit
    def z_scores(key):
        prior, theta, data, mask = family.sample_example(key)
        posterior = family.exact_posterior(prior, data, mask).posterior
        return (theta - posterior.mean()) / posterior.marginal_sd(), mask.sum()

    z, counts = jax.vmap(z_scores)(jax.random.split(jax.random.key(1), 4000))
    z, counts = np.asarray(z, np.float64), np.asarray(counts)
    assert counts.min() == family.min_points and counts.max() == family.max_points
    num = z.shape[0]
    assert np.all(np.abs(z.mean(0)) < Z_LIMIT * z.std(0) / np.sqrt(num)), z.mean(0)
    squares = z**2
    assert np.all(np.abs(squares.mean(0) - 1) < Z_LIMIT * squares.std(0) / np.sqrt(num))
