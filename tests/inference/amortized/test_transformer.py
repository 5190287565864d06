"""The distribution transformer's symmetries: equivariant in components, invariant in data
points, blind to padding, the prior back when there is no data."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.inference.amortized import families, transformer
from ppl.inference.amortized.gmm import GaussianMixture
from ppl.inference.amortized.train import ARCHITECTURE_DEFAULTS, build_model, make_config

FAMILY = families.get_family("linear_regression")


def _perturbed_model(head):
    """A small network with every weight perturbed (zero-initialised paths included), so
    that no symmetry holds by accident."""
    config = transformer.TransformerConfig(
        dim=FAMILY.dim, data_dim=FAMILY.data_dim, max_points=FAMILY.max_points,
        theta_loc=(0.1, 0.0, -0.1), theta_scale=(1.5, 1.4, 1.3),
        data_loc=(1.0, 0.0, 0.3, 0.0), data_scale=(1.0, 0.6, 0.3, 1.8),
        width=16, depth=1, num_heads=2, mlp_width=32, head=head)
    model = build_model(config, jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [leaf + 0.1 * jax.random.normal(k, leaf.shape)
              for leaf, k in zip(leaves, keys, strict=True)]
    return eqx.filter_jit(eqx.combine(jax.tree.unflatten(treedef, leaves), static))


@pytest.fixture(scope="module", params=transformer.HEADS)
def setup(request):
    model = _perturbed_model(request.param)
    # A prior with four distinct components and a data set with 10 observed rows.
    sample = FAMILY.hyperprior.sample(jax.random.key(3), FAMILY.dim)
    prior = GaussianMixture(jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4])), sample.means,
                            scale_tril=sample.scale_tril)
    theta, data, _ = FAMILY.simulate(jax.random.key(7), prior)
    mask = jnp.arange(FAMILY.max_points) < 10
    return model, prior, theta, data, mask


def _assert_same(a, b, atol=1e-5):
    np.testing.assert_allclose(a.log_weights, b.log_weights, atol=atol)
    np.testing.assert_allclose(a.means, b.means, atol=atol)
    np.testing.assert_allclose(a.scale_tril, b.scale_tril, atol=atol)


def test_equivariant_in_components(setup):
    model, prior, theta, data, mask = setup
    posterior = model(prior, data, mask)
    order = jnp.array([2, 0, 3, 1])
    permuted = model(jax.tree.map(lambda leaf: leaf[order], prior), data, mask)
    _assert_same(permuted, jax.tree.map(lambda leaf: leaf[order], posterior))
    # The data changed the prior (the check above is not about an identity map).
    assert float(jnp.max(jnp.abs(posterior.means - prior.means))) > 0.01


def test_invariant_in_data_points_and_blind_to_unobserved_rows(setup):
    model, prior, theta, data, mask = setup
    posterior = model(prior, data, mask)
    order = jax.random.permutation(jax.random.key(2), FAMILY.max_points)
    _assert_same(model(prior, data[order], mask[order]), posterior)
    garbage = jnp.where(mask[:, None], data, jnp.nan)
    _assert_same(model(prior, garbage, mask), posterior)


def test_absent_components_change_nothing(setup):
    model, prior, theta, data, mask = setup
    posterior = model(prior, data, mask)
    padded = model(prior.pad(6), data, mask)
    _assert_same(jax.tree.map(lambda leaf: leaf[:4], padded), posterior)
    assert np.all(np.isneginf(np.asarray(padded.log_weights[4:])))
    points = prior.sample(jax.random.key(4), 5)
    np.testing.assert_allclose(padded.log_prob(points), posterior.log_prob(points), atol=1e-5)


def test_no_data_gives_the_prior_back(setup):
    model, prior, theta, data, mask = setup
    _assert_same(model(prior, data, jnp.zeros_like(mask)), prior, atol=1e-6)


def test_default_architecture_is_small_and_config_errors():
    config = make_config(families.get_family("gaussian_mean_2d"))
    assert config.hyperparameters() == ARCHITECTURE_DEFAULTS
    shapes = eqx.filter_eval_shape(transformer.DistributionTransformer, config,
                                   key=jax.random.key(0))
    count = sum(leaf.size for leaf in jax.tree.leaves(shapes)
                if isinstance(leaf, jax.ShapeDtypeStruct))
    assert 50_000 <= count <= 200_000
    fields = {**config.to_json(), "head": "mlp"}
    with pytest.raises(ValueError, match=r"Expected head in \('site', 'direct'\), got 'mlp'"):
        transformer.TransformerConfig.from_json(fields)
    with pytest.raises(ValueError, match=r"width divisible by num_heads \(3\)"):
        transformer.TransformerConfig.from_json({**config.to_json(), "num_heads": 3})
