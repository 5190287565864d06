"""The posteriordb programs against their reference draws (no sampling).

Two checks per posterior, on the 10,000 reference draws mapped to the unconstrained scale:

* the log-density is finite at every draw, and higher on average than at the same draws
  shifted by 3 reference sds per coordinate;
* the score identity: under the posterior, ``E[grad log p(z | y)] = 0`` on the
  unconstrained scale. The mean gradient over the (nearly independent) reference draws is
  compared with zero in units of its Monte Carlo standard error. A program whose density
  differs from the Stan program's (a wrong prior scale, a missing Jacobian, a shifted
  likelihood) fails this; the negative controls below show that it does.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from ppl.models.posteriordb import POSTERIORS, latent_from_reference, unconstrain

from ppl import arviz_bridge, models

# 9 posteriors x <= 26 coordinates: a two-sided normal quantile at 1e-5 keeps the suite's
# false-alarm probability below about 2e-3.
Z_THRESHOLD = 4.42


@eqx.filter_jit
def _densities(model, z, shift):
    log_density = jax.vmap(model.log_density)
    value, grad = jax.vmap(jax.value_and_grad(model.log_density))(z)
    simulated = model.simulate(jax.random.key(0), z[0])
    return value, grad, log_density(z + shift), simulated


def _observed_shapes(entry) -> dict[str, tuple[int, ...]]:
    trace = handlers.trace(handlers.seed(entry.model_fn, rng_seed=0)).get_trace(**entry.data())
    return {
        name: tuple(np.shape(site["value"]))
        for name, site in trace.items()
        if site["type"] == "sample" and site["is_observed"] and type(site["fn"]).__name__ != "Unit"
    }


def _score_z(grad: np.ndarray) -> np.ndarray:
    """|mean gradient| / MCSE per coordinate; draws laid out as (chain=10, draw=1000)."""
    mcse = arviz_bridge.mcse(grad.reshape(10, -1, grad.shape[-1]))
    return np.abs(grad.mean(0)) / mcse


def _evaluate(name: str, model):
    entry = models.get(f"posteriordb/{name}")
    latent = latent_from_reference(name, entry.reference())
    z = unconstrain(model, latent)
    shift = 3.0 * jnp.std(z, axis=0)
    value, grad, shifted, simulated = _densities(model, z, shift)
    simulated_shapes = {k: tuple(v.shape) for k, v in simulated.items()}
    assert simulated_shapes == _observed_shapes(entry), (name, simulated_shapes)
    return np.asarray(value), np.asarray(grad), np.asarray(shifted)


# The centred eight schools has no usable score identity: near tau = 0 the score in theta is
# (theta - mu) / tau^2, whose posterior mean involves E[1/tau] = infinity (p(tau | y) stays
# positive at 0). It is checked against the non-centred program by change of variables.
CENTERED = "eight_schools-eight_schools_centered"


# gp_pois_regr's 10,000-draw vmapped gradient holds two independent batched Cholesky
# factorisations: the program shape that deadlocks jaxlib 0.10's CPU thread pool unless
# ppl/cpu_linalg.py splits the batch (tests/core/test_cpu_linalg.py has the reproduction).
@pytest.mark.parametrize("name", sorted(POSTERIORS))
def test_reference_draws_fit_the_program(name, posteriordb_dir):
    model = models.get(f"posteriordb/{name}").build()
    value, grad, shifted = _evaluate(name, model)
    assert np.all(np.isfinite(value)), f"{name}: non-finite log-density at reference draws"
    assert np.all(np.isfinite(grad)), f"{name}: non-finite gradient at reference draws"
    assert value.mean() > np.nanmean(np.where(np.isfinite(shifted), shifted, -np.inf)), name
    if name == CENTERED:
        return
    z_scores = _score_z(grad)
    names = [s.name for s in model.sites for _ in range(s.size)]
    worst = int(np.argmax(z_scores))
    assert z_scores.max() < Z_THRESHOLD, (
        f"{name}: mean score {grad.mean(0)[worst]:.3g} at coordinate {worst} ({names[worst]}) is "
        f"{z_scores.max():.1f} MCSE from zero: the program's density differs from the reference"
    )


@pytest.mark.parametrize(
    "name, overrides",
    [
        # The data shifted by one posterior sd of the intercept: the likelihood moves.
        ("kidiq-kidscore_momiq", lambda d: {"kid_score": d["kid_score"] + 6.0}),
        # Every school effect shifted by -8 (about one posterior sd of mu).
        ("eight_schools-eight_schools_noncentered", lambda d: {"y": d["y"] - 8.0}),
    ],
)
def test_score_identity_flags_a_wrong_density(name, overrides, posteriordb_dir):
    entry = models.get(f"posteriordb/{name}")
    data = entry.data()
    model = entry.build(**overrides(data))
    value, grad, _ = _evaluate(name, model)
    assert np.all(np.isfinite(value))
    assert _score_z(grad).max() > Z_THRESHOLD, f"{name}: the negative control was not flagged"


def test_centered_schools_is_the_noncentred_density_after_change_of_variables(posteriordb_dir):
    # theta = mu + tau * theta_trans, so p_c(theta, mu, log tau) tau^J = p_nc(theta_trans, mu,
    # log tau): the difference of log-densities plus J log tau is the same at every draw.
    centred = models.get(f"posteriordb/{CENTERED}").build()
    noncentred_name = "eight_schools-eight_schools_noncentered"
    noncentred = models.get(f"posteriordb/{noncentred_name}").build()
    value_c, _, _ = _evaluate(CENTERED, centred)
    value_nc, _, _ = _evaluate(noncentred_name, noncentred)
    tau = models.get(f"posteriordb/{CENTERED}").reference()["tau"]
    difference = value_c + 8 * np.log(tau) - value_nc
    # float32 log-densities of size ~50: agreement to about 1e-4 is rounding.
    np.testing.assert_allclose(difference, np.median(difference), atol=2e-3)
    np.testing.assert_allclose(np.median(difference), 0.0, atol=2e-3)


def test_reference_draws_fold_stan_names(posteriordb_dir):
    ref = models.get("posteriordb/hmm_example-hmm_example").reference()
    assert ref["theta1"].shape == (10_000, 2) and ref["mu"].shape == (10_000, 2)
    np.testing.assert_allclose(ref["theta1"].sum(-1), 1.0, atol=1e-6)  # simplex rows
    assert np.all(np.diff(ref["mu"], axis=-1) > 0)  # positive_ordered
    schools = models.get("posteriordb/eight_schools-eight_schools_noncentered")
    ref = schools.reference()
    assert ref["theta"].shape == (10_000, 8) and ref["tau"].shape == (10_000,)
    model = schools.build()
    assert model.to_constrained(jnp.zeros(model.dim))["theta"].shape == (8,)
