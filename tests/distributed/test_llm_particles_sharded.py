"""``devices=`` for the LLM particle methods: problems split over devices whole.

A subprocess (``_llm_worker.py``, 4 virtual CPU devices) runs step-level methods on the
testbed (6 problems x 4 particles in batches of 4 problems, the last one padded) on one
device and on all 4: the particle filter with the oracle in JAX (the fused step, the row
copies) and with a host reward (the split step). The slow tests add the entropic filter
with look-ahead and particle Gibbs (the reference's forced steps), and the filter as a
2-process ``jax.distributed`` job. Checked: the candidates, weights, log-evidence and
budgets on several devices are those of one device, bit for bit (each device decodes,
scores and copies its own problems' rows with the same arithmetic; only a few per-problem
numbers cross devices), and methods with loops of their own refuse an explicit request for
several devices. On 2 cores: about 35 s, and 60 s and 20 s for the slow ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("_llm_worker.py")
FAST_RUNS = ("pf", "host")
SLOW_RUNS = ("epf", "gibbs")
FIELDS = ("candidates", "weights", "tokens", "reward_calls", "forward_passes")


def _assert_same(result: dict, reference: dict, tag: str, ref_tag: str) -> None:
    for field in FIELDS:
        np.testing.assert_array_equal(result[f"{tag}_{field}"], reference[f"{ref_tag}_{field}"],
                                      err_msg=f"{tag} {field}")
    if f"{ref_tag}_log_evidence" in reference:
        np.testing.assert_array_equal(result[f"{tag}_log_evidence"],
                                      reference[f"{ref_tag}_log_evidence"], err_msg=tag)


def test_row_copies_are_local_to_each_devices_slice():
    from ppl.inference.llm.driver import padded_copies

    # 2 devices x 2 problems x 2 particles: rows 1 <- 0 (device 0) and 6 <- 7 (device 1).
    ancestors = np.array([0, 0, 2, 3, 4, 5, 7, 7])
    destinations, sources = padded_copies(ancestors, 2)
    assert destinations.shape == sources.shape == (8,)  # 4 rows a device, padded to 4
    np.testing.assert_array_equal(destinations.reshape(2, 4), [[1, 4, 4, 4], [2, 4, 4, 4]])
    np.testing.assert_array_equal(sources.reshape(2, 4)[:, 0], [0, 3])
    one_slice = padded_copies(ancestors)
    np.testing.assert_array_equal(one_slice[0][:2], [1, 6])
    assert padded_copies(np.arange(8), 2) is None
    with pytest.raises(AssertionError, match="another device"):
        padded_copies(np.array([0, 0, 2, 3, 0, 5, 6, 7]), 2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, launch) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("llm_particles") / "four_devices.npz"
    return launch.single(out, ["--runs", *FAST_RUNS], num_devices=4, worker=WORKER)


@pytest.mark.parametrize("run", FAST_RUNS)
def test_llm_particles_over_four_devices_equal_one_device(runs, run):
    _check_run(runs, run)


def _check_run(runs, run):
    assert int(runs["device_count"]) == 4
    assert int(runs[f"{run}_1_devices"]) == 1 and int(runs[f"{run}_all_devices"]) == 4
    _assert_same(runs, runs, f"{run}_all", f"{run}_1")
    assert runs[f"{run}_1_candidates"].shape[0] == 6


def test_the_comparison_is_not_vacuous(runs):
    """The particles differ within problems, and the filter weighed them."""
    assert any(len(set(row)) > 1 for row in runs["host_1_candidates"])
    weights = runs["pf_1_weights"]
    assert np.all(np.isfinite(runs["pf_1_log_evidence"]))
    assert not np.allclose(weights, 0.25), "the oracle weighed nothing: nothing was compared"


def test_fewer_problems_than_devices_say_so(runs):
    warning = str(runs["padding_warning"])
    assert "1 problem(s) over 4 devices: 3 device(s) run padding copies" in warning, warning
    assert "devices=1" in warning, warning


def test_methods_with_their_own_loop_refuse_several_devices(runs):
    refusal = str(runs["power_refusal"])
    assert "power_sampling runs on one device" in refusal and "devices=4" in refusal, refusal


@pytest.mark.slow
def test_other_step_level_methods_over_four_devices_equal_one_device(launch, tmp_path):
    runs = launch.single(tmp_path / "four_devices.npz", ["--runs", *SLOW_RUNS], num_devices=4,
                         worker=WORKER)
    for run in SLOW_RUNS:
        _check_run(runs, run)


@pytest.mark.slow
def test_llm_particles_across_two_processes_equal_one_process(launch, runs, tmp_path):
    results = launch.job(tmp_path, ["--runs", "pf"], num_processes=2, devices_per_process=2,
                         worker=WORKER)
    for result in results:
        assert int(result["process_count"]) == 2 and int(result["device_count"]) == 4
        assert int(result["pf_all_devices"]) == 4
        _assert_same(result, runs, "pf_all", "pf_1")
