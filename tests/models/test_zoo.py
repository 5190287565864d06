"""The model zoo: every entry builds and simulates; exact answers agree with independent
computations (quadrature of the model's own density, dense Gaussians, a particle filter)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from ppl.models import state_space
from ppl.models.builtin import logistic_regression_data
from scipy import integrate, special, stats

from ppl import models

Z = 4.0  # two-sided normal quantile for the z-tests in this file (p about 6e-5 each)


def observed_shapes(entry) -> dict[str, tuple[int, ...]]:
    trace = handlers.trace(handlers.seed(entry.model_fn, rng_seed=0)).get_trace(**entry.data())
    return {
        name: tuple(np.shape(site["value"]))
        for name, site in trace.items()
        if site["type"] == "sample" and site["is_observed"] and type(site["fn"]).__name__ != "Unit"
    }


@eqx.filter_jit
def _prior_checks(model, key):
    prior_key, sim_key = jax.random.split(key)
    z = model.sample_prior(prior_key, 4)
    value, grad = jax.vmap(jax.value_and_grad(model.log_density))(z)
    simulated = model.simulate(sim_key, z[0])
    refit = model.with_data(simulated).log_density(z[0]) if simulated else value[0]
    return value, grad, simulated, refit


# The posteriordb entries get the same checks at their reference draws (several have
# improper priors) in tests/models/test_posteriordb_models.py.
@pytest.mark.parametrize("name", sorted(set(models.names()) - set(models.names("posteriordb"))))
def test_entry_builds_is_finite_at_prior_draws_and_simulates(name):
    entry = models.get(name)
    model = entry.build()
    assert model.dim == sum(s.size for s in model.sites)
    value, grad, simulated, refit = _prior_checks(model, jax.random.key(0))
    assert np.all(np.isfinite(np.asarray(value))), f"{name}: log-density not finite: {value}"
    assert np.all(np.isfinite(np.asarray(grad))), f"{name}: gradient not finite"
    assert np.isfinite(float(refit)), f"{name}: log-density not finite on simulated data"
    expected = observed_shapes(entry)
    assert {k: tuple(v.shape) for k, v in simulated.items()} == expected
    assert set(model.observed_sites) == set(expected)
    assert entry.tags, f"{name} has no tags"


def test_tags_select_entries():
    assert set(models.names("closed_form")) >= {
        "conjugate_normal", "beta_binomial", "linear_regression", "funnel", "gaussian_mixture",
        "lgssm",
    }
    assert set(models.names("state_space")) == {"lgssm", "stochastic_volatility"}
    assert len(models.names("posteriordb")) == 9


def test_eight_schools_is_the_issue_model():
    model = models.get("eight_schools").build()
    values = model.to_constrained(jnp.zeros(model.dim))
    assert [s.name for s in model.sites] == ["mu", "tau", "z"]
    assert values["theta"].shape == (8,)
    centred = models.get("eight_schools_centered").build()
    assert [s.name for s in centred.sites] == ["mu", "tau", "theta"]


# -- exact answers by quadrature of the model's own density ------------------------------------
@eqx.filter_jit
def _grid_density(model, grid):
    values = jax.vmap(model.log_density)(grid)
    constrained = jax.vmap(model.to_constrained)(grid)
    return values, constrained


def _quadrature(model, grid, cell):
    values, constrained = _grid_density(model, grid)
    values = np.asarray(values, np.float64)
    log_z = special.logsumexp(values) + np.log(cell)
    weights = np.exp(values - special.logsumexp(values))
    return log_z, weights, constrained


@pytest.mark.parametrize(
    "name, site, lower, upper",
    [("conjugate_normal", "mu", -3.0, 6.0), ("beta_binomial", "p", -4.0, 2.0)],
)
def test_one_dimensional_exact_answers_match_quadrature(name, site, lower, upper):
    entry = models.get(name)
    exact = entry.exact()
    grid = jnp.linspace(lower, upper, 6001)[:, None]
    log_z, weights, constrained = _quadrature(entry.build(), grid, float(grid[1, 0] - grid[0, 0]))
    x = np.asarray(constrained[site], np.float64)
    mean = weights @ x
    sd = np.sqrt(weights @ (x - mean) ** 2)
    # Trapezoid-free Riemann sums of a smooth, vanishing integrand converge geometrically;
    # what is left is float32 rounding of the log-density (about 1e-6 relative).
    np.testing.assert_allclose(log_z, exact["log_evidence"], atol=1e-3)
    np.testing.assert_allclose(mean, exact["mean"][site], atol=1e-3 * exact["sd"][site])
    np.testing.assert_allclose(sd, exact["sd"][site], rtol=1e-3)


def test_beta_binomial_evidence_against_scipy_integration():
    data = models.get("beta_binomial").data()
    n, k = data["trials"], data["successes"]

    def joint(p):
        return np.prod(stats.binom.pmf(k, n, p)) * stats.beta.pdf(p, 2.0, 2.0)

    evidence, _ = integrate.quad(joint, 0.0, 1.0, points=[0.3], limit=200, epsabs=0)
    exact = models.get("beta_binomial").exact()
    np.testing.assert_allclose(exact["log_evidence"], np.log(evidence), rtol=1e-8)


def test_gaussian_mixture_exact_mode_weights_match_quadrature():
    entry = models.get("gaussian_mixture")
    exact = entry.exact()
    h = 0.02
    index = np.arange(-350, 351)
    i, j = np.meshgrid(index, index, indexing="ij")
    grid = jnp.asarray(np.stack([i.ravel() * h, j.ravel() * h], -1), jnp.float32)
    log_z, weights, _ = _quadrature(entry.build(), grid, h * h)
    np.testing.assert_allclose(log_z, exact["log_evidence"], atol=1e-3)
    points = np.asarray(grid, np.float64)
    mean = weights @ points
    np.testing.assert_allclose(mean, exact["mean"]["mu"], atol=1e-3)
    np.testing.assert_allclose(
        np.sqrt(weights @ (points - mean) ** 2), exact["sd"]["mu"], rtol=1e-3
    )
    # Cells centred on the line mu_1 + mu_2 = 0 are cut in half by it.
    side = (i + j).ravel()
    half_plane = weights @ ((side > 0) + 0.5 * (side == 0))
    np.testing.assert_allclose(half_plane, exact["half_plane_probability"], atol=1e-3)
    assert 0.1 < exact["mode_weights"].min() < 0.3  # genuinely bimodal, unequal modes


def test_linear_regression_exact_against_dense_normal_and_the_model():
    entry = models.get("linear_regression")
    data, exact = entry.data(), entry.exact()
    x = np.asarray(data["x"], np.float64)
    y = np.asarray(data["y"], np.float64)
    # Evidence: y ~ N(0, s^2 I + s0^2 X X^T), densely.
    dense = stats.multivariate_normal(np.zeros(y.size), 0.25 * np.eye(y.size) + x @ x.T).logpdf(y)
    np.testing.assert_allclose(exact["log_evidence"], dense, rtol=1e-10)
    # Posterior mean: the ridge solution by least squares on the augmented system.
    augmented = np.vstack([x / 0.5, np.eye(x.shape[1])])
    ridge = np.linalg.lstsq(augmented, np.concatenate([y / 0.5, np.zeros(x.shape[1])]), rcond=None)
    np.testing.assert_allclose(exact["mean"]["beta"], ridge[0], rtol=1e-8)
    # The model's density is log p(y) + log N(beta; m, S) at any beta.
    posterior = stats.multivariate_normal(exact["mean"]["beta"], exact["cov"]["beta"])
    betas = posterior.rvs(size=5, random_state=0)
    model = entry.build()
    values = np.asarray(jax.vmap(model.log_density)(jnp.asarray(betas, jnp.float32)))
    np.testing.assert_allclose(values, exact["log_evidence"] + posterior.logpdf(betas), rtol=2e-5)


def test_funnel_exact_marginal_of_v_against_prior_draws():
    model = models.get("funnel").build()
    exact = models.get("funnel").exact()
    v = np.asarray(model.sample_prior(jax.random.key(3), 8000))[:, 0]
    n = v.size
    assert abs(v.mean() - exact["mean"]["v"]) / (exact["sd"]["v"] / np.sqrt(n)) < Z
    var_se = exact["sd"]["v"] ** 2 * np.sqrt(2.0 / (n - 1))
    assert abs(v.var(ddof=1) - exact["sd"]["v"] ** 2) / var_se < Z
    assert model.dim == 10


def test_logistic_regression_sizes_are_overridable():
    entry = models.get("logistic_regression")
    full = entry.data()
    assert full["x"].shape == (10_000, 25)
    small = entry.build(**logistic_regression_data(num_data=200, dim=3))
    assert small.dim == 4
    with pytest.raises(ValueError, match="num_data"):
        logistic_regression_data(num_data=0)


# -- state-space models ---------------------------------------------------------------------------
def _lgssm_params64():
    return state_space.lgssm_default_params(np.float64)


def test_kalman_log_likelihood_equals_the_dense_joint_gaussian():
    params = _lgssm_params64()
    _, y = state_space.simulate_lgssm(params, 10, seed=11)
    _, _, y_mean, y_cov, _, _ = state_space.lgssm_joint_gaussian(params, 10)
    dense = stats.multivariate_normal(y_mean, y_cov).logpdf(y.reshape(-1))
    with jax.enable_x64(True):
        result = state_space.kalman_filter(params, y)
        log_lik = float(result.log_likelihood)
        means = np.asarray(result.filtered_means)
    np.testing.assert_allclose(log_lik, dense, rtol=1e-10)
    # The filtering mean at t is the mean of x_t given y_1:t (dense conditioning).
    for t in (1, 5, 10):
        x_mean, _, y_mean_t, y_cov_t, xy_cov, (d, _) = state_space.lgssm_joint_gaussian(params, t)
        conditional = x_mean + xy_cov @ np.linalg.solve(y_cov_t, y[:t].reshape(-1) - y_mean_t)
        np.testing.assert_allclose(means[t - 1], conditional[-d:], atol=1e-10)


def test_lgssm_model_density_is_the_exact_posterior():
    entry = models.get("lgssm")
    data, exact = entry.data(), entry.exact()
    np.testing.assert_allclose(exact["log_evidence"], exact["log_evidence_dense"], rtol=1e-9)
    params = state_space.LGSSMParams(**{k: np.asarray(data[k], np.float64)
                                        for k in state_space.LGSSMParams._fields})
    num_steps = data["y"].shape[0]
    joint = state_space.lgssm_joint_gaussian(params, num_steps)
    x_mean, x_cov, y_mean, y_cov, xy_cov, (d, _) = joint
    gain = np.linalg.solve(y_cov, xy_cov.T).T
    post_cov = x_cov - gain @ xy_cov.T
    posterior = stats.multivariate_normal(exact["mean"]["x"].reshape(-1), post_cov)
    xs = posterior.rvs(size=3, random_state=1).reshape(3, num_steps, d)
    # Invert the non-centred recursion: eps_1 = L0^-1 (x_1 - m0), eps_t = LQ^-1 (x_t - A x_{t-1}).
    chol_q = np.linalg.cholesky(params.transition_cov)
    chol_0 = np.linalg.cholesky(params.initial_cov)
    eps = np.concatenate([
        np.linalg.solve(chol_0, (xs[:, 0] - params.initial_mean).T).T[:, None],
        np.linalg.solve(chol_q, (xs[:, 1:] - xs[:, :-1] @ params.transition_matrix.T)
                        .reshape(-1, d).T).T.reshape(3, num_steps - 1, d),
    ], axis=1)
    log_det = (num_steps - 1) * np.log(np.linalg.det(chol_q)) + np.log(np.linalg.det(chol_0))
    model = entry.build()
    values = np.asarray(jax.vmap(model.log_density)(jnp.asarray(eps.reshape(3, -1), jnp.float32)))
    expected = exact["log_evidence"] + posterior.logpdf(xs.reshape(3, -1)) + log_det
    np.testing.assert_allclose(values, expected, rtol=5e-5)
    np.testing.assert_allclose(
        np.asarray(model.to_constrained(jnp.asarray(eps[0].reshape(-1), jnp.float32))["x"]),
        xs[0], atol=1e-4,
    )


def _bootstrap_log_likelihood(key, fns: state_space.StateSpace, y, num_particles):
    """A minimal bootstrap particle filter (systematic resampling every step)."""
    key, init_key = jax.random.split(key)
    particles = fns.sample_initial(init_key, num_particles)

    def step(carry, inputs):
        particles, total = carry
        t, y_t, step_key = inputs
        move_key, resample_key = jax.random.split(step_key)
        particles = jax.lax.cond(
            t == 0, lambda p: p, lambda p: fns.sample_transition(move_key, t, p), particles
        )
        log_w = fns.log_observation(t, particles, y_t)
        total = total + jax.nn.logsumexp(log_w) - jnp.log(num_particles)
        cdf = jnp.cumsum(jax.nn.softmax(log_w))
        u = (jax.random.uniform(resample_key) + jnp.arange(num_particles)) / num_particles
        idx = jnp.minimum(jnp.searchsorted(cdf, u), num_particles - 1)
        return (particles[idx], total), None

    steps = jnp.arange(y.shape[0])
    keys = jax.random.split(key, y.shape[0])
    (_, total), _ = jax.lax.scan(step, (particles, jnp.zeros(())), (steps, y, keys))
    return total


@pytest.mark.parametrize("perturb", [False, True])
def test_lgssm_particle_filter_pieces_reproduce_the_kalman_likelihood(perturb):
    params = state_space.lgssm_default_params()
    _, y = state_space.simulate_lgssm(params, 50, seed=12)
    y = jnp.asarray(y, jnp.float32)
    with jax.enable_x64(True):
        y64 = np.asarray(y, np.float64)
        exact = float(state_space.kalman_log_likelihood(_lgssm_params64(), y64))
    if perturb:  # negative control: a filter for the wrong transition must be detected
        params = params._replace(transition_matrix=params.transition_matrix * 0.8)
    fns = state_space.lgssm_state_space(params)
    run = jax.jit(jax.vmap(lambda k: _bootstrap_log_likelihood(k, fns, y, 1000)))
    estimates = np.asarray(run(jax.random.split(jax.random.key(5), 32)), np.float64)
    # exp(estimate) is unbiased; log of its mean has bias ~ -var/2, corrected here.
    corrected = estimates.mean() + 0.5 * estimates.var(ddof=1)
    z = abs(corrected - exact) / (estimates.std(ddof=1) / np.sqrt(estimates.size))
    assert (z > Z) if perturb else (z < Z), (corrected, exact, z)


def test_stochastic_volatility_pieces_match_the_numpyro_model():
    entry = models.get("stochastic_volatility")
    data = entry.data()
    assert data["y"].shape == (1000,)
    params = state_space.SVParams()
    fns = state_space.stochastic_volatility_state_space(params)
    model = entry.build()
    z = model.sample_prior(jax.random.key(0), 1)[0]
    x = model.to_constrained(z)["x"]
    y = jnp.asarray(data["y"])
    by_step = jax.vmap(lambda t, x_t, y_t: fns.log_observation(t, x_t[None], y_t)[0])(
        jnp.arange(1000), x, y
    )
    np.testing.assert_allclose(float(jnp.sum(by_step)), float(model.log_likelihood(z)), rtol=1e-5)

    # Paths from sample_initial/sample_transition have the AR(1)'s stationary moments.
    def path(key):
        init_key, key = jax.random.split(key)

        def step(x, k):
            x = fns.sample_transition(k, 0, x)
            return x, x

        x0 = fns.sample_initial(init_key, 4000)
        _, xs = jax.lax.scan(step, x0, jax.random.split(key, 20))
        return x0, xs[-2], xs[-1]

    x0, x_prev, x_last = (np.asarray(a, np.float64) for a in jax.jit(path)(jax.random.key(1)))
    stationary_var = params.sigma**2 / (1 - params.rho**2)
    n = x0.size
    for sample in (x0, x_last):
        assert abs(sample.mean() - params.mu) / np.sqrt(stationary_var / n) < Z
        assert abs(sample.var(ddof=1) / stationary_var - 1) / np.sqrt(2 / (n - 1)) < Z
    # Lag-1: x_t - mu - rho (x_{t-1} - mu) ~ N(0, sigma^2).
    innovation = x_last - params.mu - params.rho * (x_prev - params.mu)
    assert abs(innovation.mean()) / (params.sigma / np.sqrt(n)) < Z
    assert abs(innovation.var(ddof=1) / params.sigma**2 - 1) / np.sqrt(2 / (n - 1)) < Z


def test_state_space_bad_parameters_are_refused():
    params = state_space.lgssm_default_params()
    with pytest.raises(ValueError, match="transition_cov of shape"):
        state_space.lgssm_state_space(params._replace(transition_cov=np.eye(3)))
    with pytest.raises(ValueError, match="y of shape"):
        state_space.kalman_filter(params, np.zeros((10, 2)))
    with pytest.raises(ValueError, match="rho in"):
        state_space.stochastic_volatility_state_space(state_space.SVParams(rho=1.0))
