"""``devices=`` for the particle filter on 4 virtual CPU devices, and the vectorised coverage
driver across two ``jax.distributed`` processes.

One subprocess (``_worker.py --particle-filter``, 4 devices) runs ``ppl.infer(...,
"particle_filter")`` on the zoo's LGSSM (64 particles, 32 traced trajectories) on
``devices=1`` (the unsharded program) and on all 4, and the tests check:

- the 4-device run equals the 1-device run bit for bit: the log-evidence, the traced
  trajectories and every history entry (ESS, resampling flags, log-likelihood increments,
  filtering means and variances). Only the draws and weights of the particles are split;
  normalising, resampling and the moments run replicated on the all-gathered particles, in
  the one-device order, so no partitioned sum changes the rounding.
- 6 particles on ``devices=4`` are refused, naming both numbers and the remedy.

The slow test runs the vectorised coverage driver (conjugate normal, NUTS 2 chains x 50
draws, 4 simulations) as a 2-process job (one CPU device each, gloo) and in one process:
every process gets the same per-simulation draws, truths and log-likelihood draws as the
one-process run (bit for bit). On 2 cores the 4-device subprocess takes 3-8 s and the slow
test about 30 s (the 2-process job and its one-process reference).
"""

from __future__ import annotations

import numpy as np
import pytest

HISTORY = ("ess", "resampled", "log_likelihood_increments", "filtering_mean",
           "filtering_variance")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, launch) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("particle_filter") / "four_devices.npz"
    return launch.single(out, ["--particle-filter"], num_devices=4)


def test_particle_filter_over_four_devices_equals_one_device(runs):
    assert int(runs["device_count"]) == 4
    assert int(runs["pf_1_devices"]) == 1 and int(runs["pf_4_devices"]) == 4
    assert np.isfinite(float(runs["pf_1_log_evidence"]))
    assert float(runs["pf_4_log_evidence"]) == float(runs["pf_1_log_evidence"])
    one, four = runs["pf_1_x"], runs["pf_4_x"]
    assert one.shape == four.shape == (1, 32, 100, 2)
    np.testing.assert_array_equal(four, one)
    for name in HISTORY:
        np.testing.assert_array_equal(runs[f"pf_4_history_{name}"],
                                      runs[f"pf_1_history_{name}"], err_msg=name)
    # The runs resampled at some steps and not at others: both branches were compared.
    resampled = runs["pf_1_history_resampled"]
    assert 0 < resampled.sum() < resampled.size


def test_particle_filter_refuses_particles_that_do_not_divide(runs):
    refusal = str(runs["pf_refusal"])
    assert "6 particles" in refusal and "4 devices" in refusal, refusal
    assert "devices= a count that divides 6" in refusal, refusal


@pytest.mark.slow
def test_coverage_across_two_processes_equals_one_process(launch, tmp_path):
    reference = launch.single(tmp_path / "one_process.npz", ["--coverage-small"])
    job = tmp_path / "job"
    job.mkdir()
    results = launch.job(job, ["--coverage-small"], num_processes=2)
    assert reference["coverage_draws"].shape == (4, 50, 1)
    for result in results:
        assert int(result["process_count"]) == 2 and int(result["device_count"]) == 2
        for name in ("coverage_draws", "coverage_truths", "coverage_log_likelihood_draws"):
            np.testing.assert_array_equal(result[name], reference[name], err_msg=name)
