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
