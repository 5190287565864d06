"""The particle-filter engine on the zoo's LGSSM: log-evidence and smoothed trajectories.

``sample_particle_filter`` returns a Posterior whose draws are traced trajectories; it is
checked against the exact answer of the zoo entry (Kalman log-likelihood, exact smoothing
means from the joint Gaussian) in units of Monte Carlo error across independent runs. The
same run on perturbed observations is the negative control.
"""

import jax
import numpy as np
import pytest
from ppl.inference.smc import sample_particle_filter
from ppl.models.state_space import lgssm_state_space
from scipy import stats

from ppl import models

ALPHA = 0.001
Z_CRIT = stats.norm.ppf(1 - ALPHA / 2)
NUM_RUNS = 20
NUM_PARTICLES = 1000
NUM_TRAJECTORIES = 200
# One state-space object for the module: its functions key the compiled filter.
STATE_SPACE = lgssm_state_space()


def _entry_data():
    entry = models.get("lgssm")
    data = entry.data()
    return entry, data["y"], entry.exact()


def _runs(y, **settings):
    return [sample_particle_filter(jax.random.key(i), None, state_space=STATE_SPACE,
                                   observations=y, **settings) for i in range(NUM_RUNS)]


def _ratio_z(log_z_hat, log_z):
    ratio = np.exp(np.asarray(log_z_hat, np.float64) - log_z)
    return abs(ratio.mean() - 1.0) / (ratio.std(ddof=1) / np.sqrt(ratio.size))


def test_engine_evidence_trajectories_and_history():
    _, y, exact = _entry_data()
    runs = _runs(y, num_particles=NUM_PARTICLES, num_trajectories=NUM_TRAJECTORIES)
    post = runs[0]
    num_steps = y.shape[0]
    assert post.samples["x"].shape == (1, NUM_TRAJECTORIES, num_steps, 2)
    assert post.meta["engine"] == "particle_filter" and post.log_weights is None
    assert post.history["ess"].shape == (num_steps,)
    assert 0 < post.meta["num_resampling_steps"] < num_steps
    assert _ratio_z([p.log_evidence for p in runs], exact["log_evidence"]) < Z_CRIT
    # Smoothed means over the last 10 steps (where the genealogy has not coalesced),
    # Bonferroni over 2 x 10 coordinates.
    means = np.stack([p.mean("x")[-10:] for p in runs])
    err = np.abs(means.mean(0) - exact["mean"]["x"][-10:]) / (
        means.std(0, ddof=1) / np.sqrt(NUM_RUNS))
    assert err.max() < stats.norm.ppf(1 - ALPHA / 40)
    # Filtering means in history at the last step equal the smoothing mean there.
    last = np.stack([p.history["filtering_mean"][-1] for p in runs])
    err = np.abs(last.mean(0) - exact["mean"]["x"][-1]) / (last.std(0, ddof=1) / np.sqrt(NUM_RUNS))
    assert err.max() < stats.norm.ppf(1 - ALPHA / 4)


def test_engine_negative_control_wrong_data():
    _, y, exact = _entry_data()
    runs = _runs(1.5 * y, num_particles=NUM_PARTICLES, num_trajectories=NUM_TRAJECTORIES)
    assert _ratio_z([p.log_evidence for p in runs], exact["log_evidence"]) > Z_CRIT


def test_engine_takes_observations_from_the_model_and_refuses_bad_input():
    entry = models.get("lgssm")
    model = entry.build()
    # Same shapes as above: the compiled filter is reused.
    post = sample_particle_filter(0, model, state_space=STATE_SPACE,
                                  num_particles=NUM_PARTICLES, num_trajectories=NUM_TRAJECTORIES)
    assert post.samples["x"].shape == (1, NUM_TRAJECTORIES, entry.data()["y"].shape[0], 2)
    with pytest.raises(ValueError, match="state_space"):
        sample_particle_filter(0, model, state_space=None)
    with pytest.raises(ValueError, match="num_trajectories"):
        sample_particle_filter(0, model, state_space=STATE_SPACE, num_trajectories=0)
    with pytest.raises(ValueError, match="observations"):
        sample_particle_filter(0, None, state_space=STATE_SPACE)
    with pytest.raises(ValueError, match="ess_threshold"):
        sample_particle_filter(0, model, state_space=STATE_SPACE, ess_threshold=2.0)
