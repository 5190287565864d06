"""Flow VI defaults where the mode search fails: Neal's funnel (zoo, 10-D) has no proper
mode (L-BFGS runs off towards v -> -inf and the curvature there is clipped), so the default
``whiten="auto"`` must notice and fall back to prior-scale whitening chosen by a pilot ELBO.

Tolerances. The flow is checked through its PSIS-weighted moments of ``v`` (exactly
N(0, 3^2)), which are consistent whatever ``q`` is, against the truth in units of their own
Monte Carlo standard error (self-normalised importance sampling, delta method for the sd):
|estimate - truth| / MCSE < 3.29 (two-sided normal 0.999 quantile). That is meaningful only
with k-hat < 0.7, which is asserted first. Negative control: the same statistic must reject
a wrong truth (sd 2.5, or mean 0.5).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.inference.vi import flow as flow_vi
from ppl.inference.vi import flows

import ppl
from ppl import models

Z_999 = 3.29


def weighted_moment_z(x, log_w, mean, sd):
    """z-scores of the self-normalised IS mean and sd of ``x`` against ``mean``/``sd``."""
    w = np.exp(log_w - np.max(log_w))
    w = w / w.sum()
    m = np.sum(w * x)
    mcse_mean = np.sqrt(np.sum(w**2 * (x - m) ** 2))
    var = np.sum(w * (x - m) ** 2)
    mcse_var = np.sqrt(np.sum(w**2 * ((x - m) ** 2 - var) ** 2))
    s = np.sqrt(var)
    return abs(m - mean) / mcse_mean, abs(s - sd) / (mcse_var / (2 * s))


@pytest.fixture(scope="module")
def funnel_fit():
    model = models.get("funnel").build()
    result = flow_vi.fit(jax.random.key(0), model, progress_bar=False)
    post = result.posterior(jax.random.key(1), model, num_draws=4000, warn=False,
                            importance_resample=False)
    return model, result, post


def test_funnel_defaults_fall_back_from_a_failed_laplace(funnel_fit):
    _, result, post = funnel_fit
    assert not result.laplace.is_trustworthy()
    assert set(result.pilot_elbos) == {"laplace", "prior"}
    assert result.whitening == "prior" == post.meta["whitening"]
    assert result.pilot_elbos["prior"] > result.pilot_elbos["laplace"]


def test_funnel_defaults_khat_and_v_marginal(funnel_fit):
    _, _, post = funnel_fit
    exact = models.get("funnel").exact()
    assert post.meta["khat"] < 0.7
    assert post.meta["elbo"] <= 0.0 + 0.05  # log Z = 0
    v = post.flat("v")
    log_w = post.stats["psis_log_weight"][0]
    z_mean, z_sd = weighted_moment_z(v, log_w, exact["mean"]["v"], exact["sd"]["v"])
    assert z_mean < Z_999 and z_sd < Z_999, (z_mean, z_sd)
    # Negative controls: the same statistic rejects a wrong truth.
    assert weighted_moment_z(v, log_w, 0.0, 2.0)[1] > Z_999
    assert weighted_moment_z(v, log_w, 0.75, 3.0)[0] > Z_999


def test_prior_whitening_is_robust_and_refuses_without_a_prior():
    model = models.get("funnel").build()
    n = 4000
    loc, scale = flows.prior_whitening(jax.random.key(0), model, num_draws=n)
    # v ~ N(0, 3^2): median 0 and IQR / 1.349 = 3 within their asymptotic standard errors
    # (1.2533 sd / sqrt(n) for the median, 1.166 sd / sqrt(n) for the IQR-based sd).
    assert abs(float(loc[0])) < Z_999 * 1.2533 * 3.0 / np.sqrt(n)
    assert abs(float(scale[0, 0]) - 3.0) < Z_999 * 1.166 * 3.0 / np.sqrt(n)
    assert np.all(np.diag(np.asarray(scale)) > 0)
    no_prior = ppl.from_logdensity(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(2))
    assert flows.prior_whitening(jax.random.key(0), no_prior) is None
    with pytest.raises(ValueError, match="whiten='prior'"):
        flow_vi.fit(jax.random.key(0), no_prior, whiten="prior", num_steps=10)
    with pytest.raises(ValueError, match="Expected whiten"):
        flow_vi.fit(jax.random.key(0), no_prior, whiten="pca", num_steps=10)
