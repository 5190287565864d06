"""The particle filter's default PRNG: Threefry-2x32-20 lowered as fused elementwise ops.

It must be the same function as JAX's threefry (bit for bit on the same counters), its
normals must be standard normal (Kolmogorov-Smirnov at ALPHA), keys must split, fold in and
vmap, and a filter run must be reproducible from its key.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32
from ppl.inference import smc
from scipy import stats

from ppl import prng

ALPHA = 0.001


def test_same_function_as_jax_threefry():
    key_words = jax.random.key_data(jax.random.key(11))
    counter = jnp.arange(1000, dtype=jnp.uint32)
    ours = jnp.concatenate(prng._threefry2x32(key_words, counter, jnp.zeros_like(counter)))
    theirs = threefry_2x32(key_words, jnp.concatenate([counter, jnp.zeros_like(counter)]))
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_normals_splits_and_fold_in():
    key = prng.as_fast_key(jax.random.key(0), "threefry_fused")
    draws = np.asarray(jax.random.normal(key, (100_000,)), np.float64)
    assert stats.kstest(draws, "norm").pvalue > ALPHA
    # Split and folded keys give distinct streams; vmap over keys works.
    a, b = jax.random.split(key)
    streams = [jax.random.bits(k, (64,)) for k in (a, b, jax.random.fold_in(key, 1), key)]
    assert len({np.asarray(s).tobytes() for s in streams}) == 4
    batch = jax.vmap(lambda k: jax.random.normal(k, (3,)))(jax.random.split(key, 5))
    assert batch.shape == (5, 3) and len(np.unique(np.asarray(batch))) == 15
    assert jax.random.bits(key, (5,), jnp.uint8).dtype == jnp.uint8


def test_filter_reproducible_and_options():
    ssm = smc.StateSpaceModel(
        sample_initial=lambda key, n: jax.random.normal(key, (n,)),
        sample_transition=lambda key, t, x: 0.9 * x + jax.random.normal(key, x.shape),
        log_observation=lambda t, x, y: jax.scipy.stats.norm.logpdf(y, x, 1.0),
    )
    y = jnp.sin(jnp.arange(20.0))
    first = smc.particle_filter(jax.random.key(4), ssm, y, num_particles=300)
    again = smc.particle_filter(jax.random.key(4), ssm, y, num_particles=300)
    other = smc.particle_filter(jax.random.key(5), ssm, y, num_particles=300)
    assert float(first.log_likelihood) == float(again.log_likelihood)
    assert float(first.log_likelihood) != float(other.log_likelihood)
    # Without moments: the same random numbers, so the same likelihood; moments are None.
    bare = smc.particle_filter(jax.random.key(4), ssm, y, num_particles=300,
                               store_moments=False)
    assert bare.filtering_mean is None and bare.filtering_variance is None
    assert np.isclose(float(bare.log_likelihood), float(first.log_likelihood), atol=1e-4)
    # The key's own implementation (threefry) still works.
    res = smc.particle_filter(jax.random.key(4), ssm, y, num_particles=300, prng_impl=None)
    assert np.isfinite(float(res.log_likelihood))
    with pytest.raises(ValueError, match="prng_impl"):
        smc.particle_filter(jax.random.key(4), ssm, y, num_particles=300, prng_impl="mt19937")


def test_same_streams_variant_gives_jax_numbers():
    key = jax.random.key(7)
    fused = prng.same_streams_fused(key)
    assert str(jax.random.key_impl(fused)) != str(jax.random.key_impl(key))
    draws = [
        lambda k: jax.random.bits(k, (5, 3)),
        lambda k: jax.random.bits(k, (4,), jnp.uint8),
        lambda k: jax.random.normal(k, (1001,)),
        lambda k: jax.random.uniform(k, (3, 2)),
        lambda k: jax.random.key_data(jax.random.split(k, (2, 3))),
        lambda k: jax.random.key_data(jax.random.fold_in(k, 12345)),
        lambda k: jax.random.normal(jax.random.split(jax.random.fold_in(k, 3), 4)[2], (9,)),
        lambda k: jax.random.permutation(k, 10),
    ]
    for draw in draws:
        assert np.array_equal(np.asarray(draw(key)), np.asarray(draw(fused)))
    # A legacy raw key maps to the same numbers; another generator is left alone.
    raw = jax.random.PRNGKey(7)
    assert np.array_equal(np.asarray(jax.random.normal(raw, (6,))),
                          np.asarray(jax.random.normal(prng.same_streams_fused(raw), (6,))))
    rbg = jax.random.key(7, impl="rbg")
    assert prng.same_streams_fused(rbg) is rbg
    # Negative control: the fast re-keyed generator gives other numbers.
    other = prng.as_fast_key(key, "threefry_fused")
    assert not np.array_equal(np.asarray(jax.random.normal(key, (8,))),
                              np.asarray(jax.random.normal(other, (8,))))


def test_flow_initialisation_unchanged_by_fused_keys():
    import equinox as eqx
    from ppl.inference.vi import flows

    key = jax.random.key(1)
    fast = flows.make_flow(key, 3, num_layers=2, width=8)
    plain = flows._make_flow(key, 3, "maf", 2, 8, 1, 8, 4.0)
    leaves = lambda f: jax.tree_util.tree_leaves(eqx.filter(f, eqx.is_inexact_array))  # noqa: E731
    # The same random bits (test above); the float transforms of those bits (uniform draws
    # scaled to [-bound, bound]) are compiled in other programs, and jaxlib >= 0.11 rounds
    # some of them differently: 13 of 48 weights of one layer 3e-8 apart with jaxlib 0.12,
    # one rounding step at the scale of the bound (bit-identical with 0.10.2).
    for a, b in zip(leaves(fast), leaves(plain), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=0, atol=np.spacing(np.abs(b).max()))
    other = flows._make_flow(jax.random.key(2), 3, "maf", 2, 8, 1, 8, 4.0)
    assert not all(np.allclose(np.asarray(a), np.asarray(b))  # negative control: another key
                   for a, b in zip(leaves(fast), leaves(other), strict=True))
