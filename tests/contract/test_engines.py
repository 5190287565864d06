"""One contract over every registered engine (the Optax alias_test pattern).

Each engine, run through ``ppl.infer`` with small settings, must: return draws shaped
``(chain, draw, *site_shape)`` for dict and array positions, give identical draws for
the same key and different ones for another key, produce finite statistics, and not
recompile when called again on new data of the same shapes.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl

# Small settings per engine: enough to run, not to be accurate (accuracy is tested elsewhere).
ENGINES = {
    "nuts": dict(num_chains=2, num_warmup=50, num_samples=30, progress_bar=False, warn=False),
    "hmc": dict(num_chains=2, num_warmup=50, num_samples=30, progress_bar=False, warn=False),
    "smc": dict(num_particles=64, kernel="rw", max_mcmc_steps=5, progress_bar=False),
    "flow_vi": dict(num_steps=50, num_draws=40, progress_bar=False, warn=False),
    "coin_svgd": dict(num_particles=16, num_iterations=20, progress_bar=False),
    "coin_ksdd": dict(num_particles=16, num_iterations=20, progress_bar=False),
    "svgd": dict(num_particles=16, num_iterations=20, step_size=0.1, progress_bar=False),
}


# Engines that need more than a Model, with where their contract is tested instead.
EXEMPT = {
    "particle_filter": "needs a state-space form; tests/inference/smc/test_particle_filter.py",
    "distribution_transformer": "needs a family model and a trained network; "
                                "tests/inference/amortized/test_engine.py",
}


def test_every_registered_engine_is_under_contract():
    assert set(ppl.available_engines()) == set(ENGINES) | set(EXEMPT)


def gaussian_dict_model():
    def logdensity(p):
        return -0.5 * jnp.sum(p["a"] ** 2) - 0.5 * jnp.sum((p["b"] - 1.0) ** 2)

    def sample_prior(key, n):
        ka, kb = jax.random.split(key)
        return {"a": 3 * jax.random.normal(ka, (n, 2)), "b": 3 * jax.random.normal(kb, (n,))}

    def log_prior(p):
        return -0.5 * (jnp.sum(p["a"] ** 2) + p["b"] ** 2) / 9

    return ppl.from_logdensity(
        logdensity, {"a": jnp.zeros(2), "b": jnp.zeros(())},
        log_prior_fn=log_prior, sample_prior_fn=sample_prior,
    )


def numpyro_regression(x, y=None):
    w = numpyro.sample("w", dist.Normal(0, 1).expand([2]).to_event(1))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    numpyro.sample("y", dist.Normal(x @ w, s), obs=y)


X = np.random.default_rng(0).normal(size=(30, 2)).astype(np.float32)
Y = (X @ np.array([0.5, -1.0]) + 0.3 * np.random.default_rng(1).normal(size=30)).astype(np.float32)


@pytest.fixture(params=sorted(ENGINES))
def engine(request):
    return request.param


def test_shapes_for_dict_positions(engine):
    post = ppl.infer(gaussian_dict_model(), engine, key=jax.random.key(0), **ENGINES[engine])
    chains, draws = post.shape
    assert post.samples["a"].shape == (chains, draws, 2)
    assert post.samples["b"].shape == (chains, draws)
    assert post.meta["engine"] == engine


def test_shapes_for_numpyro_models_and_finite_stats(engine):
    model = ppl.from_numpyro(numpyro_regression, X, Y)
    post = ppl.infer(model, engine, key=jax.random.key(0), **ENGINES[engine])
    chains, draws = post.shape
    assert post.samples["w"].shape == (chains, draws, 2)
    assert post.samples["s"].shape == (chains, draws)
    assert np.all(post.samples["s"] > 0)
    # Every number an engine returns is finite (stats are empty for some engines: the draws,
    # weights, evidence and history are checked for all).
    for name, value in post.samples.items():
        assert np.all(np.isfinite(value)), f"samples[{name!r}]"
    for name, value in post.stats.items():
        assert np.all(np.isfinite(np.asarray(value, float))), f"stats[{name!r}]"
    for name, value in post.history.items():
        value = np.asarray(value)
        if value.dtype.kind in "fc":
            assert not np.any(np.isnan(value)), f"history[{name!r}]"
    if post.log_weights is not None:
        assert not np.any(np.isnan(post.log_weights)) and np.any(np.isfinite(post.log_weights))
    if post.log_evidence is not None:
        assert np.isfinite(post.log_evidence)
    assert post.meta["wall_time"] > 0


def test_same_key_same_draws(engine):
    model = ppl.from_numpyro(numpyro_regression, X, Y)
    a = ppl.infer(model, engine, key=jax.random.key(7), **ENGINES[engine])
    b = ppl.infer(model, engine, key=jax.random.key(7), **ENGINES[engine])
    c = ppl.infer(model, engine, key=jax.random.key(8), **ENGINES[engine])
    np.testing.assert_array_equal(a.samples["w"], b.samples["w"])
    assert not np.array_equal(a.samples["w"], c.samples["w"])


def test_new_data_does_not_retrace(engine):
    traces = []

    def model_fn(x, y=None):
        traces.append(1)  # Python side effect: counts traces of the model
        numpyro_regression(x, y)

    model = ppl.from_numpyro(model_fn, X, Y)
    ppl.infer(model, engine, key=jax.random.key(0), **ENGINES[engine])
    first = len(traces)
    ppl.infer(ppl.from_numpyro(model_fn, X + 1, Y), engine, key=jax.random.key(1),
              **ENGINES[engine])
    ppl.infer(model, engine, key=jax.random.key(2), **ENGINES[engine])
    # Building a model traces it once (to find its sites); the engine must not trace again.
    assert len(traces) - first <= 1


def test_unknown_method_lists_the_available_ones():
    model = gaussian_dict_model()
    with pytest.raises(ValueError, match="Unknown method 'nuts2'.*Available methods: .*nuts"):
        ppl.infer(model, "nuts2", key=jax.random.key(0))


def test_bad_key_and_model_are_refused():
    with pytest.raises(ValueError, match="PRNG key"):
        ppl.infer(gaussian_dict_model(), "nuts", key="zero")
    with pytest.raises(TypeError, match="ppl Model"):
        ppl.infer(lambda x: x, "nuts", key=0)


@pytest.mark.parametrize("algorithm", ["nuts", "hmc"])
def test_kernel_step_is_traced_at_most_twice(algorithm):
    from ppl.inference import mcmc

    traces = []

    def logdensity(x):
        traces.append(1)
        return -0.5 * jnp.sum(x**2)

    build = getattr(mcmc, algorithm)
    algo = build(logdensity, step_size=0.5, inverse_mass_matrix=jnp.ones(3))
    step = jax.jit(algo.step)
    state = algo.init(jnp.zeros(3))
    traces.clear()
    for i in range(5):
        state, _ = step(jax.random.key(i), state)
    # NUTS traces the log-density a fixed number of times per trace of the step.
    per_trace = len(traces)
    for i in range(5, 10):
        state, _ = step(jax.random.key(i), state)
    assert len(traces) == per_trace and per_trace > 0
    assert eqx.is_array(state.position)
