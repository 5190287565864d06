"""Observed data whose shape its distribution would broadcast is refused, naming the site.

Data of shape (30, 1) in a plate of 30 makes 900 likelihood terms, one value under
``with_data`` is reused for 30, and 29 values fail deep inside jax.numpy: all three must
fail at build (or in ``with_data``) with the site and both shapes. Correct shapes keep working.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.diagnostics import effective_sample_size

import ppl

N = 30
X = np.linspace(-1.0, 1.0, N)
Y = 0.5 + 2.0 * X + 0.3 * np.random.default_rng(0).normal(size=N)
PRIOR_SD, NOISE_SD = 2.0, 0.3


def regression(x, y=None):
    a = numpyro.sample("a", dist.Normal(0.0, PRIOR_SD))
    b = numpyro.sample("b", dist.Normal(0.0, PRIOR_SD))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("y", dist.Normal(a + b * x, NOISE_SD), obs=y)


def test_trailing_axis_of_size_one_is_refused_naming_site_and_shapes():
    with pytest.raises(ValueError) as error:
        ppl.from_numpyro(regression, X, Y[:, None])
    message = str(error.value)
    assert "'y'" in message and "(30,)" in message and "(30, 1)" in message
    assert "900 likelihood terms" in message and "squeeze(-1)" in message


def test_one_value_broadcast_over_the_plate_is_refused_in_with_data():
    model = ppl.from_numpyro(regression, X, Y)
    with pytest.raises(ValueError, match=r"'y'.*\(30,\).*\(1,\)"):
        model.with_data({"y": Y[:1]})
    with pytest.raises(ValueError, match=r"'y'.*\(30,\).*\(1,\)"):
        ppl.from_numpyro(regression, X, Y[:1])


def test_wrong_length_is_refused_naming_the_site():
    with pytest.raises(ValueError, match=r"Observed site 'y'.*\(30,\).*\(29,\).*do not broadcast"):
        ppl.from_numpyro(regression, X, Y[:29])
    model = ppl.from_numpyro(regression, X, Y)
    with pytest.raises(ValueError, match=r"'y'.*\(29,\)"):
        model.with_data({"y": Y[:29]})


def test_correct_regression_is_accepted_and_its_posterior_is_right():
    model = ppl.from_numpyro(regression, X, Y)
    assert model.num_observations == N
    model = model.with_data({"y": Y})  # same shape: accepted
    # Conjugate Gaussian posterior of (a, b).
    design = np.stack([np.ones(N), X], axis=1)
    precision = np.eye(2) / PRIOR_SD**2 + design.T @ design / NOISE_SD**2
    cov = np.linalg.inv(precision)
    mean = cov @ design.T @ Y / NOISE_SD**2
    post = ppl.infer(model, "nuts", key=jax.random.key(0), num_chains=2, num_warmup=300,
                     num_samples=500, progress_bar=False)
    for i, name in enumerate(["a", "b"]):
        draws = np.asarray(post.samples[name])
        ess = float(effective_sample_size(draws))
        mc_error = np.sqrt(cov[i, i] / ess)
        assert abs(draws.mean() - mean[i]) < 4 * mc_error, (name, draws.mean(), mean[i], mc_error)
        assert abs(draws.std() / np.sqrt(cov[i, i]) - 1) < 4 / np.sqrt(ess) + 0.02, name


def test_event_shaped_observation_is_accepted():
    d = 3

    def model(y):
        loc = numpyro.sample("loc", dist.Normal(jnp.zeros(d), 1.0).to_event(1))
        with numpyro.plate("n", y.shape[0]):
            numpyro.sample("y", dist.MultivariateNormal(loc, jnp.eye(d)), obs=y)

    y = np.random.default_rng(1).normal(size=(5, d))
    m = ppl.from_numpyro(model, y)
    assert m.num_observations == 5
    assert np.isfinite(float(m.log_density(jnp.zeros(d))))
    m.with_data({"y": y + 1.0})
    with pytest.raises(ValueError, match=r"'y'.*\(5, 3\).*\(3,\)"):
        m.with_data({"y": y[0]})  # one vector reused for five
    with pytest.raises(ValueError, match=r"'y'.*\(5, 3\).*\(5, 1\)"):
        m.with_data({"y": y[:, :1]})  # one coordinate reused for three


def test_scalar_observation_and_distribution_broadcast_over_data_are_accepted():
    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    assert ppl.from_numpyro(model, 0.5).num_observations == 1
    assert ppl.from_numpyro(model, np.float32(0.5)).with_data({"y": 1.0}).num_observations == 1
    # A scalar distribution over a vector of data: one likelihood term per value.
    assert ppl.from_numpyro(model, np.array([0.5, 1.0])).num_observations == 2


def test_obs_none_masked_and_obs_mask_sites_are_accepted():
    mask = np.arange(N) % 3 != 0

    def model(x, y=None):
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        with numpyro.plate("n", x.shape[0]):
            with handlers.mask(mask=mask):
                numpyro.sample("y", dist.Normal(a * x, 1.0), obs=y)
            numpyro.sample("z", dist.Normal(a * x, 1.0), obs=y, obs_mask=mask)
        numpyro.sample("w", dist.Normal(a, 1.0), obs=None)  # latent

    m = ppl.from_numpyro(model, X, Y)
    assert set(m.observed_sites) == {"y", "z_observed"}
    assert np.isfinite(float(m.log_density(jnp.zeros(m.dim))))
    with pytest.raises(ValueError, match=r"'z_observed'.*\(30, 1\)"):
        m.with_data({"z_observed": Y[:, None]})
