"""Flow VI against closed forms, PSIS negative control, save/load, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from ppl.inference.vi import flow as flow_vi
from ppl.inference.vi.psis import importance_diagnostics

import ppl


# -- a conjugate linear regression (known noise): exact posterior and evidence --------------
def linear_regression(x, y, prior_scale=2.0, noise_scale=0.5):
    beta = numpyro.sample("beta", dist.Normal(0.0, prior_scale).expand([x.shape[1]]).to_event(1))
    numpyro.sample("y", dist.Normal(x @ beta, noise_scale), obs=y)


def _regression_data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 3)).astype(np.float32)
    x[:, 2] = 0.8 * x[:, 1] + 0.3 * x[:, 2]  # correlated posterior
    y = (x @ np.array([1.0, -0.5, 2.0]) + 0.5 * rng.normal(size=30)).astype(np.float32)
    return x, y


def _regression_exact(x, y, prior_scale=2.0, noise_scale=0.5):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    precision = np.eye(x.shape[1]) / prior_scale**2 + x.T @ x / noise_scale**2
    cov = np.linalg.inv(precision)
    mean = cov @ x.T @ y / noise_scale**2
    marginal = noise_scale**2 * np.eye(len(y)) + prior_scale**2 * x @ x.T
    _, logdet = np.linalg.slogdet(marginal)
    log_z = -0.5 * (y @ np.linalg.solve(marginal, y) + logdet + len(y) * np.log(2 * np.pi))
    return mean, cov, log_z


@pytest.fixture(scope="module")
def regression_fit():
    x, y = _regression_data()
    model = ppl.from_numpyro(linear_regression, x=x, y=y)
    result = flow_vi.fit(jax.random.key(0), model, num_steps=600, num_layers=2, width=16)
    # Plain draws from q (no resampling): this file tests the flow itself.
    post = result.posterior(jax.random.key(1), model, num_draws=4000, importance_resample=False)
    return model, result, post, _regression_exact(x, y)


def test_linear_regression_moments_and_evidence(regression_fit):
    _, result, post, (mean, cov, log_z) = regression_fit
    sd = np.sqrt(np.diag(cov))
    draws = post.flat("beta")
    # A near-exact q: moments from 4000 iid draws within 4 Monte Carlo standard errors.
    mcse_mean = sd / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(0) - mean) / mcse_mean < 4.0)
    mcse_sd = sd / np.sqrt(2 * len(draws))
    assert np.all(np.abs(draws.std(0) - sd) / mcse_sd < 4.0)
    assert np.abs(np.corrcoef(draws.T) - cov / np.outer(sd, sd)).max() < 0.05
    # ELBO <= log Z, and close; the IS estimate is closer.
    assert log_z - 0.05 < post.meta["elbo"] <= log_z + 0.02
    assert abs(post.log_evidence - log_z) < 0.02
    assert post.meta["khat"] < 0.5
    # The posterior is Gaussian: the Laplace approximation is exact and trusted, no pilot.
    assert result.laplace.is_trustworthy() and result.whitening == "laplace"
    assert result.pilot_elbos == {}
    scale = np.asarray(result.laplace.scale, np.float64)
    np.testing.assert_allclose(scale @ scale.T, cov, rtol=1e-2, atol=1e-3 * cov.max())
    assert post.history["elbo"].shape == (result.elbo_trace.size,)
    assert np.mean(result.elbo_trace[-50:]) > np.mean(result.elbo_trace[:50])


def test_conjugate_normal_through_infer_and_new_data():
    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = np.random.default_rng(1).normal(1.5, 1.0, size=20).astype(np.float32)
    m = ppl.from_numpyro(model, y=y)
    for data in (y, y + 1.0):  # a new data set reuses the compiled program
        post = ppl.infer(m.with_data({"y": data}), "flow_vi", key=0, num_steps=400,
                         num_layers=2, width=8, num_draws=4000)
        precision = 1 / 4 + 20
        mean, sd = data.sum() / precision, precision**-0.5
        n = len(data)
        cov = np.eye(n) + 4 * np.ones((n, n))
        log_z = -0.5 * (data @ np.linalg.solve(cov, data) + np.linalg.slogdet(cov)[1]
                        + n * np.log(2 * np.pi))
        assert abs(post.mean("mu") - mean) / (sd / np.sqrt(4000)) < 4.0
        assert abs(post.std("mu") - sd) / (sd / np.sqrt(2 * 4000)) < 4.0
        assert abs(post.log_evidence - log_z) < 0.02
        assert post.meta["engine"] == "flow_vi"


def test_importance_resampling_corrects_an_under_dispersed_q():
    # q = N(0, 0.8^2 I) against the target N(0, I) in 3-D: the weights' tail index gives
    # k = 0.36, so PSIS can be trusted. Plain draws have sd 0.8; resampled draws must have
    # sd 1 within 4 Monte Carlo standard errors (sd / sqrt(2 ESS), ESS from the pool); the
    # same statistic rejects the plain draws (negative control).
    from flowjax.distributions import Normal

    m = ppl.from_logdensity(lambda z: -0.5 * jnp.sum(z**2), jnp.zeros(3))
    q = Normal(jnp.zeros(3), 0.8 * jnp.ones(3))
    result = flow_vi.FlowVIResult(flow=q, elbo_trace=np.zeros(1), laplace=None,
                                  flow_settings={}, settings={}, converged=True,
                                  wall_time=0.0, num_gradient_evals=0)
    resampled = result.posterior(jax.random.key(0), m, num_draws=4000)
    plain = result.posterior(jax.random.key(0), m, num_draws=4000, importance_resample=False)
    assert resampled.meta["settings"]["num_proposals"] == 16000
    assert resampled.meta["khat"] < 0.5 and "psis_log_weight" not in resampled.stats
    mcse = 1.0 / np.sqrt(2 * resampled.meta["is_ess"])
    z_resampled = np.abs(resampled.unconstrained[0].std(0) - 1.0) / mcse
    z_plain = np.abs(plain.unconstrained[0].std(0) - 1.0) / mcse
    assert np.all(z_resampled < 4.0), z_resampled
    assert np.all(z_plain > 4.0), z_plain
    np.testing.assert_allclose(plain.unconstrained[0].std(0), 0.8, rtol=0.05)
    # Shuffled: duplicates (there are some) do not sit side by side, as systematic
    # resampling leaves them; an ESS computed along the draws is not fooled.
    z = resampled.unconstrained[0]
    num_duplicates = len(z) - len(np.unique(z[:, 0]))
    num_adjacent = int(np.sum(z[1:, 0] == z[:-1, 0]))
    assert num_duplicates > 20 and num_adjacent <= 5, (num_duplicates, num_adjacent)
    with pytest.raises(ValueError, match="num_proposals"):
        result.posterior(jax.random.key(0), m, num_draws=4000, num_proposals=100)


def test_save_load_roundtrip(regression_fit, tmp_path):
    _, result, _, _ = regression_fit
    path = tmp_path / "flow.eqx"
    result.save(path)
    loaded = flow_vi.load_flow(path)
    z = result.sample(jax.random.key(5), 8)
    np.testing.assert_allclose(loaded.log_prob(z), result.flow.log_prob(z), rtol=1e-5)
    np.testing.assert_allclose(loaded.sample(jax.random.key(5), (8,)), z, rtol=1e-5)


def test_khat_flags_too_narrow_approximation():
    # Target N(0, 1) in 4-D; q = N(0, s^2): s = 1 exact (k-hat low), s = 0.5 too narrow.
    rng = np.random.default_rng(0)
    d, n = 4, 4000

    def log_w(s):
        z = s * rng.normal(size=(n, d))
        log_p = -0.5 * np.sum(z**2, 1)
        log_q = -0.5 * np.sum((z / s) ** 2, 1) - d * np.log(s)
        return log_p - log_q

    assert importance_diagnostics(log_w(1.0)).khat < 0.5
    assert importance_diagnostics(log_w(1.1)).khat < 0.5
    narrow = importance_diagnostics(log_w(0.5))
    assert narrow.khat > 0.7  # the negative control must be flagged
    assert narrow.ess < 0.1 * n


# One model structure (1-D, data-driven traps) and one flow architecture for the underfit,
# NaN-gradient and non-finite-ELBO tests: one compilation serves all three.
def _trap_logdensity(x, data):
    value = -0.5 * jnp.sum(((x - data["loc"]) / data["scale"]) ** 2)
    # Finite value but NaN gradient above nan_above (the jnp.where NaN trap) ...
    value = value + jnp.where(x[0] > data["nan_above"], 0.0,
                              0.0 * jnp.sqrt(data["nan_above"] - x[0]))
    # ... and a log-density of -inf above inf_above.
    return jnp.where(x[0] > data["inf_above"], -jnp.inf, value)


def _trap_model(loc=0.0, scale=1.0, nan_above=1e30, inf_above=1e30):
    data = {k: jnp.asarray(v, jnp.float32) for k, v in
            dict(loc=loc, scale=scale, nan_above=nan_above, inf_above=inf_above).items()}
    return ppl.from_logdensity(_trap_logdensity, jnp.zeros(1), data=data)


# A Gaussian base: the rates of draws beyond the trap's edge below are the normal's.
TRAP_SETTINGS = dict(num_steps=400, num_layers=1, width=4, base="normal", progress_bar=False)


def test_khat_warning_on_underfit_flow():
    # A flow that cannot reach the target (unwhitened, a narrow target 30 units away, Adam
    # moving about learning_rate per step) must be flagged.
    m = _trap_model(loc=30.0, scale=0.2)
    with pytest.warns(RuntimeWarning, match="k-hat"):
        post = ppl.infer(m, "flow_vi", key=0, whiten=False, num_draws=500, **TRAP_SETTINGS)
    assert post.meta["khat"] > 0.7


# -- bad input --------------------------------------------------------------------------------
def test_discrete_latent_is_refused():
    def model():
        numpyro.sample("k", dist.Poisson(3.0))

    with pytest.raises(ValueError, match="discrete"):
        ppl.from_numpyro(model)


def test_nan_gradient_stops_with_step_and_last_good_state():
    m = _trap_model(nan_above=2.0)
    with pytest.raises(flow_vi.NonFiniteError, match="gradient became non-finite at step") as info:
        flow_vi.fit(jax.random.key(0), m, **TRAP_SETTINGS)
    assert isinstance(info.value, ValueError)
    assert 0 <= info.value.step < 400
    # Every non-finite step was skipped, so the state counts only the applied ones.
    assert int(info.value.state.step) == info.value.step - (flow_vi.MAX_NON_FINITE_STEPS - 1)
    assert np.all(np.isfinite(info.value.flow.sample(jax.random.key(1), (4,))))


def test_isolated_non_finite_steps_are_skipped():
    # -inf beyond 3.3 sd: about 1 step in 130 draws a point there (16 draws a step). Those
    # steps are skipped, not fatal, and show as NaN in the trace.
    m = _trap_model(inf_above=3.3)
    result = flow_vi.fit(jax.random.key(0), m, **TRAP_SETTINGS)
    assert 0 < result.num_skipped_steps < flow_vi.MAX_NON_FINITE_STEPS
    assert np.isnan(result.elbo_trace).sum() == result.num_skipped_steps
    assert np.all(np.isfinite(result.flow.sample(jax.random.key(1), (4,))))


def test_non_finite_elbo_stops():
    m = _trap_model(inf_above=1.5)
    with pytest.raises(flow_vi.NonFiniteError, match="The ELBO became non-finite at step"):
        flow_vi.fit(jax.random.key(0), m, **TRAP_SETTINGS)


def test_bad_settings():
    m = ppl.from_logdensity(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(2))
    with pytest.raises(ValueError, match="Expected num_steps"):
        ppl.infer(m, "flow_vi", key=0, num_steps=0)
    with pytest.raises(ValueError, match="Expected learning_rate"):
        ppl.infer(m, "flow_vi", key=0, learning_rate=float("nan"))
    bad = ppl.from_logdensity(lambda x: -jnp.inf * jnp.sum(x**2) - jnp.inf, jnp.zeros(2))
    with pytest.raises(ValueError, match="NaN or -inf"):
        ppl.infer(bad, "flow_vi", key=0)
