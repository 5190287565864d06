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
