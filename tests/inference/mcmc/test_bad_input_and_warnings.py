"""Bad input gets a clear error; sampling problems get a warning that names parameters."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl

FAST = dict(num_chains=2, num_warmup=30, num_samples=20, progress_bar=False)


def gaussian():
    return ppl.from_logdensity(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(2))


def test_discrete_latent_given_to_nuts_names_the_site_and_suggests_alternatives():
    def mixture(y):
        k = numpyro.sample("component", dist.Categorical(jnp.array([0.5, 0.5])))
        numpyro.sample("y", dist.Normal(jnp.array([-1.0, 1.0])[k], 1.0), obs=y)

    with pytest.raises(ValueError, match="'component' is discrete.*[Mm]arginalise.*particle"):
        ppl.infer(ppl.from_numpyro(mixture, 0.3), "nuts", key=0)


def test_density_never_finite_fails_after_retries():
    model = ppl.from_logdensity(lambda x: jnp.where(x[0] > 100.0, 0.0, -jnp.inf), jnp.zeros(2))
    with pytest.raises(ValueError, match="NaN or -inf at all 200 initial points"):
        ppl.infer(model, "nuts", key=0, **FAST)


def test_density_nan_everywhere_fails_after_retries():
    model = ppl.from_logdensity(lambda x: jnp.sum(x) * jnp.nan, jnp.zeros(2))
    with pytest.raises(ValueError, match="NaN or -inf"):
        ppl.infer(model, "nuts", key=0, **FAST)


def test_partly_infinite_density_finds_a_valid_start():
    # Only x[0] > 1 is allowed; starts jitter around 1.05 by +-0.2, so most are rejected.
    model = ppl.from_logdensity(
        lambda x: jnp.where(x[0] > 1.0, -0.5 * jnp.sum(x**2), -jnp.inf), jnp.array([1.05, 0.0])
    )
    post = ppl.infer(model, "nuts", key=0, warn=False, **FAST)
    assert np.all(post.samples["x"][..., 0] > 1.0)


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"num_chains": 0}, "num_chains"),
        ({"num_samples": -5}, "num_samples"),
        ({"num_warmup": 1.5}, "num_warmup"),
        ({"target_accept": 1.5}, "target_accept"),
        ({"initial_position": jnp.zeros(5)}, "initial_position of shape"),
    ],
)
def test_bad_settings_are_named(setting, message):
    settings = {**FAST, **setting}
    with pytest.raises(ValueError, match=message):
        ppl.infer(gaussian(), "nuts", key=0, **settings)


def test_unknown_setting_is_a_type_error():
    with pytest.raises(TypeError, match="num_sampels"):
        ppl.infer(gaussian(), "nuts", key=0, num_sampels=10)


def centered_eight_schools(sigma, y):
    mu = numpyro.sample("mu", dist.Normal(0, 5))
    tau = numpyro.sample("tau", dist.HalfCauchy(5))
    with numpyro.plate("school", len(sigma)):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


@pytest.mark.filterwarnings("ignore:R-hat")
def test_divergences_warn_and_name_the_funnel_parameter():
    y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    model = ppl.from_numpyro(centered_eight_schools, sigma, y)
    with pytest.warns(RuntimeWarning, match="divergent transition.*most involved: .*tau"):
        post = ppl.infer(model, "nuts", key=jax.random.key(1), num_chains=2, num_warmup=300,
                         num_samples=300, progress_bar=False)
    assert post.stats["diverging"].sum() > 0
    assert any("divergent" in w for w in post.meta["warnings"])


def test_chains_are_sharded_over_devices_with_identical_results():
    """With two (virtual) devices the chain axis is split over them; draws are unchanged."""
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np, ppl
        jax.config.update("jax_enable_x64", True)  # so that reduction order cannot matter
        model = ppl.from_logdensity(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(3))
        post = ppl.infer(model, "nuts", key=jax.random.key(0), num_chains=4, num_warmup=50,
                         num_samples=20, progress_bar=False, warn=False)
        print(jax.device_count(), post.meta["num_devices"])
        np.save("draws.npy", post.samples["x"])
        """
    )
    results = {}
    for count in (1, 2):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}")
        workdir = os.path.join(os.environ.get("PYTEST_TMP", "/tmp"),
                               f"ppl_shard_{count}_{os.getpid()}")
        os.makedirs(workdir, exist_ok=True)
        out = subprocess.run([sys.executable, "-c", script], env=env, cwd=workdir,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split()[:2] == [str(count), str(count)]
        results[count] = np.load(os.path.join(workdir, "draws.npy"))
    np.testing.assert_allclose(results[1], results[2], rtol=1e-9, atol=1e-9)
