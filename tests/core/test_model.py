"""The Model view: densities, transforms, prior, simulation, data swapping, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.stats as st

import ppl


def normal_model(y, scale=1.0):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.deterministic("mu_doubled", 2 * mu)
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma * scale), obs=y)


Y = np.array([0.3, -0.2, 1.1, 0.4], dtype=np.float32)


def test_log_density_splits_into_prior_and_likelihood_with_jacobian():
    model = ppl.from_numpyro(normal_model, Y)
    z = jnp.array([0.7, -0.3])  # mu, log(sigma)
    mu, sigma = 0.7, float(np.exp(-0.3))
    expected_prior = st.norm(0, 2).logpdf(mu) + st.halfnorm(scale=1).logpdf(sigma) + np.log(sigma)
    expected_lik = st.norm(mu, sigma).logpdf(Y).sum()
    np.testing.assert_allclose(model.log_prior(z), expected_prior, rtol=1e-5)
    np.testing.assert_allclose(model.log_likelihood(z), expected_lik, rtol=1e-5)
    np.testing.assert_allclose(model.log_density(z), expected_prior + expected_lik, rtol=1e-5)


def test_to_constrained_includes_deterministic_sites():
    model = ppl.from_numpyro(normal_model, Y)
    values = model.to_constrained(jnp.array([0.5, 0.0]))
    assert set(values) == {"mu", "sigma", "mu_doubled"}
    np.testing.assert_allclose(values["sigma"], 1.0)
    np.testing.assert_allclose(values["mu_doubled"], 1.0)


def test_simplex_site_has_unconstrained_shape():
    def model():
        numpyro.sample("p", dist.Dirichlet(jnp.ones(4)))

    m = ppl.from_numpyro(model)
    assert m.dim == 3
    assert m.sites[0].shape == (4,) and m.sites[0].unconstrained_shape == (3,)
    p = m.to_constrained(jnp.zeros(3))["p"]
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)


def test_prior_draws_match_the_prior():
    model = ppl.from_numpyro(normal_model, Y)
    z = model.sample_prior(jax.random.key(0), 4000)
    assert z.shape == (4000, 2)
    mu = np.asarray(z[:, 0])
    sigma = np.exp(np.asarray(z[:, 1]))
    # Means within 4 Monte Carlo standard errors of the truth.
    assert abs(mu.mean()) < 4 * 2.0 / np.sqrt(4000)
    half_normal_mean = np.sqrt(2 / np.pi)
    assert abs(sigma.mean() - half_normal_mean) < 4 * sigma.std() / np.sqrt(4000)


def test_simulate_and_with_data_round_trip():
    model = ppl.from_numpyro(normal_model, Y)
    z = jnp.array([0.2, -1.0])
    data = model.simulate(jax.random.key(3), z)
    assert set(data) == {"y"} and data["y"].shape == Y.shape
    assert not np.allclose(data["y"], Y)
    other = model.with_data(data)
    expected = st.norm(0.2, np.exp(-1.0)).logpdf(np.asarray(data["y"])).sum()
    np.testing.assert_allclose(other.log_likelihood(z), expected, rtol=1e-5)
    # The original model is unchanged.
    np.testing.assert_allclose(
        model.log_likelihood(z), st.norm(0.2, np.exp(-1.0)).logpdf(Y).sum(), rtol=1e-5
    )


def test_simulated_data_follow_the_likelihood():
    model = ppl.from_numpyro(normal_model, np.zeros(2000, np.float32))
    y = np.asarray(model.simulate(jax.random.key(0), jnp.array([1.0, np.log(2.0)]))["y"])
    assert abs(y.mean() - 1.0) < 4 * 2.0 / np.sqrt(2000)
    assert abs(y.std() - 2.0) < 4 * 2.0 / np.sqrt(2 * 2000)


def test_with_data_does_not_recompile():
    model = ppl.from_numpyro(normal_model, Y)
    traces = []

    @eqx.filter_jit
    def density(m, z):
        traces.append(1)  # runs only while tracing
        return m.log_density(z)

    density(model, jnp.zeros(2))
    density(model.with_data({"y": Y + 1}), jnp.zeros(2))
    density(ppl.from_numpyro(normal_model, Y * 3), jnp.zeros(2))
    assert len(traces) <= 2  # once for the model, at most once more for the observed override


def test_discrete_latent_site_is_refused_with_its_name():
    def model():
        numpyro.sample("k", dist.Poisson(3.0))

    with pytest.raises(ValueError, match="'k' is discrete.*particle filter"):
        ppl.from_numpyro(model)


def test_nan_in_observed_data_names_the_site():
    y = Y.copy()
    y[2] = np.nan
    with pytest.raises(ValueError, match="site 'y'.*non-finite"):
        ppl.from_numpyro(normal_model, y)
    model = ppl.from_numpyro(normal_model, Y)
    with pytest.raises(ValueError, match="site 'y'"):
        model.with_data({"y": y})
    with pytest.raises(ValueError, match="unknown"):
        model.with_data({"x": Y})


def test_from_logdensity_over_a_dict():
    def logdensity(p):
        return -0.5 * jnp.sum(p["a"] ** 2) - 0.5 * p["b"] ** 2 / 4

    model = ppl.from_logdensity(logdensity, {"a": jnp.zeros(3), "b": jnp.zeros(())})
    assert model.dim == 4
    values = model.to_constrained(jnp.arange(4.0))
    np.testing.assert_allclose(values["a"], [0, 1, 2])
    np.testing.assert_allclose(values["b"], 3.0)
    np.testing.assert_allclose(model.log_density(jnp.arange(4.0)), -0.5 * 5 - 0.5 * 9 / 4)


def test_from_logdensity_rejects_bad_input():
    with pytest.raises(TypeError, match="callable"):
        ppl.from_logdensity(3.0, jnp.zeros(2))
    with pytest.raises(ValueError, match="scalar"):
        ppl.from_logdensity(lambda x: x, jnp.zeros(2))


def test_unconstrain_inverts_to_constrained_with_a_dependent_support():
    def model():
        a = numpyro.sample("a", dist.Uniform(0.0, 1.0))
        numpyro.sample("b", dist.Uniform(0.0, 1.0 - a))
        numpyro.sample("p", dist.Dirichlet(jnp.ones(3)))

    m = ppl.from_numpyro(model)
    z = jnp.array([0.3, -1.2, 0.5, -0.4])
    values = m.to_constrained(z)
    assert 0 < values["b"] < 1 - values["a"]
    np.testing.assert_allclose(m.unconstrain(values), z, rtol=1e-5, atol=1e-5)


def test_improper_flat_prior_builds_and_samples_but_has_no_prior_draws():
    def regression(x, y):
        beta = numpyro.sample("beta", dist.ImproperUniform(dist.constraints.real, (), (2,)))
        sigma = numpyro.sample("sigma", dist.ImproperUniform(dist.constraints.positive, (), ()))
        numpyro.sample("y", dist.Normal(beta[0] + beta[1] * x, sigma), obs=y)

    x = np.linspace(-1, 1, 20).astype(np.float32)
    y = (1.0 + 2.0 * x + 0.1 * np.random.default_rng(0).normal(size=20)).astype(np.float32)
    model = ppl.from_numpyro(regression, x, y)
    assert model.dim == 3
    # Flat prior: log_prior is only the log-Jacobian of sigma = exp(u).
    np.testing.assert_allclose(model.log_prior(jnp.array([0.0, 0.0, 0.7])), 0.7, rtol=1e-6)
    with pytest.raises(ValueError, match="'beta'.*improper"):
        model.sample_prior(jax.random.key(0), 3)
