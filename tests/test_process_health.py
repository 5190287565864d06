"""The test process itself: runs last (file order), after every other module.

XLA on CPU keeps about three memory mappings per compiled program. A process past Linux's
``vm.max_map_count`` (65,530 by default) fails inside LLVM ("Cannot allocate memory") and
crashes or hangs; the full suite compiles enough programs to get there unless
tests/conftest.py releases them after each module. Reproduced by filling the map table to
64,000 entries before one gp_pois_regr evaluation: LLVM errors, then a segmentation fault.
"""

import sys

import jax
import jax.numpy as jnp
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="/proc/self/maps is Linux-only")

# A full run without the per-module release ended near 60,000; with it, a few thousand.
MAX_MAPPINGS = 30_000


def _num_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_compiled_programs_do_not_pile_up():
    assert _num_mappings() < MAX_MAPPINGS


def test_clearing_jax_caches_releases_mappings():
    # The mechanism the conftest relies on. Negative control: without clearing, 200 new
    # programs add mappings.
    import gc

    jax.clear_caches()
    gc.collect()
    before = _num_mappings()
    programs = [jax.jit(lambda x, i=i: jnp.sin(x) * i) for i in range(200)]
    for i, f in enumerate(programs):
        f(jnp.ones(i + 1)).block_until_ready()
    grown = _num_mappings()
    assert grown > before + 200
    jax.clear_caches()
    gc.collect()
    assert _num_mappings() < before + 0.25 * (grown - before)  # most of them released
