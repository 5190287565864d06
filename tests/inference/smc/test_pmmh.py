"""PMMH on the zoo's LGSSM: the damping rho of its transition (A = rho R(0.3)), T = 25.

The exact posterior of rho under a Uniform(0, 1) prior comes from the Kalman likelihood on a
grid. The chain's mean and second central moment are compared with it in units of their
batch-means Monte Carlo standard error (20 batches: Student-t with 19 dof, two checks at
ALPHA). Negative control: "Monte Carlo within Metropolis", which re-estimates the current
state's likelihood at every step (the classic mistake), is flagged with the same test.
"""

import importlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.inference import smc
from ppl.models.state_space import (
    kalman_log_likelihood,
    lgssm_default_params,
    lgssm_state_space,
    simulate_lgssm,
)
from scipy import stats

pmmh_module = importlib.import_module("ppl.inference.smc.pmmh")
ALPHA = 0.001
T_CRIT = stats.t.ppf(1 - ALPHA / 4, df=19)  # two-sided, two checks
NUM_SAMPLES, BURN_IN = 4000, 500
BASE = lgssm_default_params()
ROTATION = np.asarray(BASE.transition_matrix) / 0.95
_, Y = simulate_lgssm(BASE, 25, seed=5)
Y = Y.astype(np.float32)


def _params(rho):
    return BASE._replace(transition_matrix=rho * jnp.asarray(ROTATION, jnp.float32))


def ssm_fn(rho):
    return lgssm_state_space(_params(rho))


def log_prior_fn(rho):
    return jnp.where((rho > 0) & (rho < 1), 0.0, -jnp.inf)


def _exact_posterior():
    grid = np.linspace(5e-4, 1 - 5e-4, 2000)
    log_lik = jax.jit(jax.vmap(lambda r: kalman_log_likelihood(_params(r), jnp.asarray(Y))))(
        jnp.asarray(grid, jnp.float32))
    density = np.exp(np.asarray(log_lik, np.float64) - float(np.max(log_lik)))
    density /= np.trapezoid(density, grid)
    mean = np.trapezoid(density * grid, grid)
    return mean, np.trapezoid(density * (grid - mean) ** 2, grid)


MEAN, VAR = _exact_posterior()  # 0.920, sd 0.053


def _z_scores(draws):
    draws = np.asarray(draws, np.float64)[BURN_IN:]
    z = []
    for values, truth in ((draws, MEAN), ((draws - MEAN) ** 2, VAR)):
        batches = values.reshape(20, -1).mean(1)
        z.append(abs(values.mean() - truth) / (batches.std(ddof=1) / np.sqrt(20)))
    return z


def test_pmmh_matches_exact_posterior():
    res = smc.pmmh(jax.random.key(3), ssm_fn, Y, jnp.float32(0.8), log_prior_fn=log_prior_fn,
                   num_samples=NUM_SAMPLES, proposal_scale=0.1, num_particles=50)
    assert res.samples.shape == (NUM_SAMPLES,)
    assert 0.15 < res.acceptance_rate < 0.7
    assert max(_z_scores(res.samples)) < T_CRIT
    # Every step keeps the estimate it came with: stays repeat it.
    stay = ~np.asarray(res.info.is_accepted)[1:]
    lls = np.asarray(res.log_likelihoods)
    assert np.array_equal(lls[1:][stay], lls[:-1][stay])


def test_negative_control_monte_carlo_within_metropolis_is_flagged():
    llf = pmmh_module.particle_log_likelihood_fn(ssm_fn, Y, num_particles=10)
    step = pmmh_module.build_step(log_likelihood_fn=llf, log_prior_fn=log_prior_fn,
                                  proposal_scale=0.1)

    @partial(jax.jit, static_argnums=1)
    def chain(key, refresh):
        init_key, chain_key = jax.random.split(key)
        state = pmmh_module.init(init_key, jnp.float32(0.8), log_likelihood_fn=llf,
                                 log_prior_fn=log_prior_fn)

        def body(state, key):
            refresh_key, step_key = jax.random.split(key)
            if refresh:  # the bug: a fresh estimate for the current state
                state = state._replace(log_likelihood=llf(refresh_key, state.position))
            state, _ = step(step_key, state)
            return state, state.position

        return jax.lax.scan(body, state, jax.random.split(chain_key, NUM_SAMPLES))[1]

    # With only 10 particles the exact chain is still right; the refreshed one is not.
    assert max(_z_scores(chain(jax.random.key(0), False))) < T_CRIT
    assert max(_z_scores(chain(jax.random.key(0), True))) > T_CRIT


def test_bad_inputs_and_no_recompilation():
    kwargs = dict(log_prior_fn=log_prior_fn, num_samples=20, num_particles=16)
    with pytest.raises(ValueError, match="proposal_scale"):
        smc.pmmh(jax.random.key(0), ssm_fn, Y, jnp.float32(0.8), proposal_scale=0.0, **kwargs)
    with pytest.raises(ValueError, match="initial_position"):
        smc.pmmh(jax.random.key(0), ssm_fn, Y, jnp.float32(1.5), proposal_scale=0.1, **kwargs)
    with pytest.raises(ValueError, match="num_samples"):
        smc.pmmh(jax.random.key(0), ssm_fn, Y, jnp.float32(0.8), proposal_scale=0.1,
                 log_prior_fn=log_prior_fn, num_samples=0)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, *a, **k: compiles.append(event) if "backend_compile" in event else None
    )
    smc.pmmh(jax.random.key(0), ssm_fn, Y, jnp.float32(0.8), proposal_scale=0.1, **kwargs)
    before = len(compiles)
    smc.pmmh(jax.random.key(1), ssm_fn, Y + 0.5, jnp.float32(0.7), proposal_scale=0.2, **kwargs)
    assert len(compiles) == before
