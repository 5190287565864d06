"""Process-wide settings applied by ``import ppl`` (each case in a fresh interpreter)."""

import json
import os
import subprocess
import sys

import pytest

FLAG = "--xla_cpu_multi_thread_eigen=false"

PROBE = """
import json, os, sys
if sys.argv[1] == "start-jax-first":
    import jax.numpy as jnp
    jnp.zeros(1).block_until_ready()
import jax, ppl
print(json.dumps({"xla_flags": os.environ.get("XLA_FLAGS"),
                  "cache_dir": jax.config.jax_compilation_cache_dir}))
"""


def probe(tmp_path, mode="plain", **env):
    full = {k: v for k, v in os.environ.items()
            if k not in ("XLA_FLAGS", "PPL_XLA_CPU_EIGEN_THREADS", "PPL_COMPILATION_CACHE",
                         "JAX_COMPILATION_CACHE_DIR")}
    full.update(PPL_CACHE_DIR=str(tmp_path / "cache"), **env)
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=full, capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_defaults_add_the_thread_pool_flag_and_turn_the_cache_on(tmp_path):
    got = probe(tmp_path)
    assert got["xla_flags"] == FLAG
    assert got["cache_dir"] == str(tmp_path / "cache" / "jax")


@pytest.mark.parametrize("env, expected", [
    ({"PPL_XLA_CPU_EIGEN_THREADS": "1"}, None),  # opted out
    ({"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true"}, "--xla_cpu_multi_thread_eigen=true"),
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
     f"--xla_force_host_platform_device_count=2 {FLAG}"),  # other flags are kept
])
def test_flag_respects_the_user(tmp_path, env, expected):
    assert probe(tmp_path, **env)["xla_flags"] == expected


def test_flag_is_not_added_once_jax_has_started(tmp_path):
    # Too late to take effect: ppl must not pretend it did.
    assert probe(tmp_path, "start-jax-first")["xla_flags"] is None


def test_cache_can_be_turned_off(tmp_path):
    assert probe(tmp_path, PPL_COMPILATION_CACHE="0")["cache_dir"] is None
