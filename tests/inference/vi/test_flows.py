"""Flow log-determinants against jax.jacobian, and flow construction errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import paramax
import pytest
from ppl.inference.vi import flows


@eqx.filter_jit
def _logdets(bijection, x):
    def one(v):
        y, log_det = bijection.transform_and_log_det(v)
        jac = jax.jacobian(lambda w: bijection.transform_and_log_det(w)[0])(v)
        return y, log_det, jnp.linalg.slogdet(jac)[1]

    return jax.vmap(one)(x)


def _check_logdet(bijection, x):
    y, log_det, expected = _logdets(bijection, x)
    np.testing.assert_allclose(log_det, expected, rtol=1e-4, atol=1e-4)
    return y


@pytest.mark.parametrize("kind", ["planar", "maf"])
def test_flow_logdet_matches_jacobian(kind):
    flow = flows.make_flow(jax.random.key(0), 3, kind=kind, num_layers=3, width=8)
    # Perturb the parameters away from their near-identity initialisation.
    params, static = flows.eqx_partition(flow)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [leaf + 0.5 * jax.random.normal(k, leaf.shape)
              for leaf, k in zip(leaves, keys, strict=True)]
    flow = flows.eqx_combine(jax.tree.unflatten(treedef, leaves), static)
    bijection = paramax.unwrap(flow.bijection)
    _check_logdet(bijection, jax.random.normal(jax.random.key(2), (5, 3)))


def test_whiten_logdet_and_inverse():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(4, 4)) + 3 * np.eye(4)
    whiten = flows.Whiten(rng.normal(size=4), matrix)
    x = jnp.asarray(rng.normal(size=4), dtype=jnp.float32)
    y = _check_logdet(whiten, x[None])[0]
    x_back, inv_log_det = whiten.inverse_and_log_det(y)
    np.testing.assert_allclose(x_back, x, atol=1e-4)
    np.testing.assert_allclose(inv_log_det, -whiten.log_det, rtol=1e-6)


def test_bad_flow_settings():
    with pytest.raises(ValueError, match="Expected flow kind"):
        flows.make_flow(jax.random.key(0), 2, kind="realnvp")
    with pytest.raises(ValueError, match="Expected matrix of shape"):
        flows.Whiten(jnp.zeros(3), jnp.eye(2))
