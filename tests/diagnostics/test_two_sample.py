"""C2ST and MMD on the sbibm reference posteriors: a held-out half of the same reference
draws passes (accuracy close to 0.5, within binomial error), shifted draws fail."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.stats
from ppl.diagnostics.two_sample import c2st, mmd

TASKS = ["two_moons", "slcp", "sir", "gaussian_linear"]


def _reference(sbibm_dir, task):
    with np.load(sbibm_dir / task / "reference_posterior_samples.npz") as f:
        return f["reference_posterior_samples"][0].astype(np.float64)


@pytest.mark.parametrize("task", TASKS)
def test_c2st_reference_halves_pass_and_shifted_fail(sbibm_dir, task):
    ref = _reference(sbibm_dir, task)
    first, second = ref[:5000], ref[5000:]
    same = c2st(first, second, max_samples=1000)
    # Accuracy within 3.3 binomial standard errors of 0.5 (held-out predictions are
    # exactly Binomial(n, 1/2) under equality).
    z = (same.accuracy - 0.5) / (0.5 / np.sqrt(same.num_samples))
    assert abs(z) < scipy.stats.norm.ppf(0.9995), (task, same)
    assert same.passed()
    shifted = c2st(first + 0.5 * ref.std(axis=0), second, max_samples=1000)
    assert not shifted.passed() and shifted.accuracy > 0.6, (task, shifted)


def test_mmd_reference_halves_pass_and_shifted_fail(sbibm_dir):
    ref = _reference(sbibm_dir, "two_moons")
    key = jax.random.key(0)
    assert mmd(ref[:5000], ref[5000:], key=key, max_samples=500).passed()
    shifted = mmd(ref[:5000] + 0.3 * ref.std(axis=0), ref[5000:], key=key, max_samples=500)
    assert not shifted.passed() and shifted.mmd2 > 0


def test_two_sample_rejects_mismatched_dims():
    with pytest.raises(ValueError, match="same dim"):
        c2st(np.zeros((10, 2)), np.zeros((10, 3)))
    with pytest.raises(ValueError, match="finite x"):
        mmd(np.full((10, 2), np.nan), np.zeros((10, 2)), key=jax.random.key(0))
