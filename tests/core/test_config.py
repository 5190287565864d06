"""Process-wide settings applied by ``import ppl`` (each case in a fresh interpreter)."""

import json
import os
import subprocess
import sys

PROBE = """
import json, jax, ppl
print(json.dumps({"cache_dir": jax.config.jax_compilation_cache_dir}))
"""


def probe(tmp_path, **env):
    full = {k: v for k, v in os.environ.items()
            if k not in ("PPL_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    full.update(PPL_CACHE_DIR=str(tmp_path / "cache"), **env)
    out = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cache_is_on_by_default_in_the_user_directory(tmp_path):
    assert probe(tmp_path)["cache_dir"] == str(tmp_path / "cache" / "jax")


def test_cache_can_be_turned_off(tmp_path):
    assert probe(tmp_path, PPL_COMPILATION_CACHE="0")["cache_dir"] is None


def test_one_off_jit_compiles_with_its_options_and_same_values(monkeypatch):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ppl import config

    def f(key, x):
        return jnp.exp(x) * jax.random.normal(key, x.shape)

    key, x = jax.random.key(0), jnp.linspace(-2.0, 2.0, 64)
    # Without LLVM's optimisations the last bits may differ (no fused multiply-adds).
    np.testing.assert_allclose(config.one_off_jit(f)(key, x), jax.jit(f)(key, x), rtol=1e-5)
    # The options reach the compiler: an unknown one is refused.
    monkeypatch.setattr(config, "ONE_OFF_COMPILER_OPTIONS", {"xla_no_such_option": 1})
    try:
        config.one_off_jit(f)(key, x + 1.0)
    except Exception as error:  # JAX raises a plain RuntimeError / XlaRuntimeError
        assert "xla_no_such_option" in str(error)
    else:
        raise AssertionError("an unknown compiler option was accepted")
