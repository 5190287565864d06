"""NUTS/HMC against closed-form posteriors, in units of Monte Carlo standard error."""

import jax
import numpy as np
import pytest

import ppl
from ppl import arviz_bridge, models

# Two-sided normal quantile shared by every z-test in this file: with ~12 z-tests the
# chance of a false alarm per run is about 12 * 5e-4 = 0.6% (fixed seeds make it repeatable).
Z = 3.5


def z_scores(post, site, mean, sd):
    """|mean - truth| / MCSE(mean) and |sd - truth| / MCSE(sd) for every scalar of a site."""
    x = post.samples[site].reshape(post.shape + (-1,))
    mcse_mean = arviz_bridge.mcse(x, "mean")
    mcse_sd = arviz_bridge.mcse(x, "sd")
    z_mean = np.abs(x.mean(axis=(0, 1)) - np.ravel(mean)) / mcse_mean
    z_sd = np.abs(x.std(axis=(0, 1)) - np.ravel(sd)) / mcse_sd
    return z_mean, z_sd


CASES = ["conjugate_normal", "beta_binomial", "linear_regression"]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("method", ["nuts", "hmc"])
def test_matches_closed_form(name, method):
    entry = models.get(name)
    exact = entry.exact()
    post = ppl.infer(entry.build(), method, key=jax.random.key(11), num_chains=4,
                     num_warmup=500, num_samples=1000, progress_bar=False)
    for site in exact["mean"]:
        z_mean, z_sd = z_scores(post, site, exact["mean"][site], exact["sd"][site])
        assert np.all(z_mean < Z), (site, z_mean)
        assert np.all(z_sd < Z), (site, z_sd)


def test_biased_sampler_is_caught_by_the_same_test():
    """Negative control: the z-test must flag draws shifted by a quarter of a posterior sd."""
    entry = models.get("conjugate_normal")
    exact = entry.exact()
    post = ppl.infer(entry.build(), "nuts", key=jax.random.key(11), num_chains=4,
                     num_warmup=500, num_samples=1000, progress_bar=False)
    shifted = ppl.Posterior(samples={"mu": post.samples["mu"] + 0.25 * exact["sd"]["mu"]})
    z_mean, _ = z_scores(shifted, "mu", exact["mean"]["mu"], exact["sd"]["mu"])
    assert np.all(z_mean > Z)


def test_dense_mass_matrix_on_a_correlated_gaussian():
    import jax.numpy as jnp

    cov = np.array([[4.0, 0.19], [0.19, 0.01]])
    precision = jnp.asarray(np.linalg.inv(cov))
    model = ppl.from_logdensity(lambda x: -0.5 * x @ precision @ x, jnp.zeros(2))
    post = ppl.infer(model, "nuts", key=jax.random.key(3), num_chains=4, num_warmup=500,
                     num_samples=1000, dense_mass=True, progress_bar=False)
    z_mean, z_sd = z_scores(post, "x", np.zeros(2), np.sqrt(np.diag(cov)))
    assert np.all(z_mean < Z) and np.all(z_sd < Z)
    # A dense metric makes this target easy: short trajectories.
    assert np.median(post.stats["tree_depth"]) <= 3
