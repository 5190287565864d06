"""The placement rules of ``ppl.sharding``: padding, warnings, and the errors that name
their remedy. The multi-device cases run in a subprocess over 4 virtual CPU devices."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppl
from ppl.sharding import gather_to_host, resolve_devices, shard_batch


def test_multi_host_requests_without_jax_distributed_name_the_remedy():
    assert not jax.distributed.is_initialized()
    with pytest.raises(ValueError, match=r"jax\.distributed\.initialize\(\)"):
        resolve_devices("all-processes")
    with pytest.raises(ValueError, match=r"more devices than this process has.*"
                                         r"jax\.distributed\.initialize\(\)"):
        resolve_devices(jax.device_count() + 1)
    model = ppl.from_logdensity(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(2))
    for method in ("nuts", "smc"):
        with pytest.raises(ValueError, match=r"jax\.distributed\.initialize\(\)"):
            ppl.infer(model, method, key=0, devices="all-processes", progress_bar=False)


@pytest.mark.parametrize("bad", [0, -1, True, "gpus", [], 2.5])
def test_bad_devices_are_refused(bad):
    with pytest.raises(ValueError, match="devices"):
        resolve_devices(bad)


def test_one_device_leaves_the_batch_alone():
    x = jnp.arange(6.0).reshape(3, 2)
    batch = shard_batch(x, "chain")
    assert batch.array is x and batch.size == 3 and batch.mask.tolist() == [True] * 3
    assert resolve_devices().num_devices == jax.device_count()
    tree = {"a": x, "b": jnp.ones(3)}
    host = gather_to_host(tree)
    assert isinstance(host["a"], np.ndarray)
    np.testing.assert_array_equal(host["a"], np.asarray(x))
    with pytest.raises(ValueError, match="one leading batch size"):
        shard_batch({"a": x, "b": jnp.ones(4)})


SCRIPT = textwrap.dedent("""
    import warnings
    import jax, jax.numpy as jnp, numpy as np
    from ppl.sharding import resolve_devices, shard_batch, shard_leading_axis
    assert jax.device_count() == 4
    x = jnp.arange(12.0).reshape(6, 2)
    batch = shard_batch({"x": x, "k": jax.random.split(jax.random.key(0), 6)}, "chain")
    padded = np.asarray(batch.array["x"])
    assert batch.size == 6 and padded.shape == (8, 2), padded.shape
    np.testing.assert_array_equal(padded[:6], np.asarray(x))        # no row dropped
    np.testing.assert_array_equal(padded[6:], np.asarray(x)[[5, 5]])  # copies of the last
    assert batch.mask.tolist() == [True] * 6 + [False] * 2
    assert len(batch.array["x"].sharding.device_set) == 4
    keys = jax.random.key_data(batch.array["k"])
    assert keys.shape[0] == 8 and np.array_equal(keys[6], keys[5])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = shard_batch(jnp.ones((3, 2)), "chain")
    assert small.size == 3 and small.array.shape == (4, 2)
    message = " ".join(str(w.message) for w in caught)
    assert "batch of 3" in message and "4 devices" in message and "devices=3" in message
    assert shard_batch(x, "chain", devices=2).array.shape == (6, 2)  # 2 divides 6: no pad
    assert resolve_devices(2).num_devices == 2
    # The old helper: shards what divides, leaves the rest untouched.
    assert len(shard_leading_axis(jnp.ones((8, 2))).sharding.device_set) == 4
    odd = jnp.ones((6, 2))
    assert shard_leading_axis(odd) is odd
    try:
        resolve_devices(8)
    except ValueError as error:
        assert "jax.distributed.initialize()" in str(error) and "(4 cpu" in str(error)
    else:
        raise AssertionError("8 of 4 devices accepted")
    import ppl
    model = ppl.from_logdensity(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(2))
    try:  # padding would change an SMC population: refused, naming the numbers
        ppl.infer(model, "smc", key=0, num_particles=6, devices=4, progress_bar=False)
    except ValueError as error:
        assert "6 particles" in str(error) and "4 devices" in str(error), error
    else:
        raise AssertionError("6 particles over 4 devices accepted")
    print("ok")
""")


def test_padding_on_four_devices(tmp_path):
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_smc_on_an_explicit_single_device_runs_unsplit():
    model = ppl.from_logdensity(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(2),
                                log_prior_fn=lambda x: -0.5 * jnp.sum(x**2) / 4,
                                sample_prior_fn=lambda k, n: 2 * jax.random.normal(k, (n, 2)))
    post = ppl.infer(model, "smc", key=0, num_particles=7, kernel="rw", devices=1,
                     progress_bar=False, max_mcmc_steps=2)
    assert post.samples["x"].shape == (1, 7, 2) and post.meta["num_devices"] == 1
