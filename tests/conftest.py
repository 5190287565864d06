"""Shared test fixtures.

Reference data (posteriordb, sbibm) is read from ../shared/data or $PPL_REFERENCE_DATA.
Tests that need it skip with a reason when it is absent, except under CI=true, where a
missing data set is a failure.
"""

from __future__ import annotations

import os

import pytest

from ppl.data_paths import ReferenceDataMissing, reference_data_dir


def _require(subdir: str):
    try:
        return reference_data_dir(subdir)
    except ReferenceDataMissing as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but reference data is missing: {error}")
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def posteriordb_dir():
    """Path to ../shared/data/posteriordb (skip, or fail under CI, when absent)."""
    return _require("posteriordb")


@pytest.fixture(scope="session")
def sbibm_dir():
    """Path to ../shared/data/sbibm (skip, or fail under CI, when absent)."""
    return _require("sbibm")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    Every XLA CPU executable keeps about three memory mappings of JIT-compiled code, and the
    suite compiles thousands of programs: by three quarters of a full run one process held
    about 45,000 mappings, near Linux's default ``vm.max_map_count`` of 65,530. Past it,
    XLA fails inside a compilation (SIGABRT in a fresh-clone CI run).
    ``jax.clear_caches()`` releases them; recompiling is served by the persistent cache.
    """
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()
