"""``ppl.infer`` under ``jax.distributed``: local processes with gloo CPU collectives stand
for hosts. Every process gets all the draws, equal to a one-process run (to the tolerance
explained in test_single_host.py for NUTS; bit-for-bit for tempered SMC)."""

from __future__ import annotations

import numpy as np
import pytest


def _check(results, reference, chain_counts, num_processes):
    for result in results:
        assert int(result["process_count"]) == num_processes
        assert int(result["device_count"]) == num_processes
        for chains in chain_counts:
            assert int(result[f"nuts_{chains}_devices"]) == num_processes
            assert result[f"nuts_{chains}"].shape == (chains, 100, 2)
            np.testing.assert_allclose(result[f"nuts_{chains}"], reference[f"nuts_{chains}"],
                                       rtol=0, atol=1e-5)
        assert int(result["smc_devices"]) == num_processes
        np.testing.assert_array_equal(result["smc"], reference["smc"])
        assert float(result["smc_log_evidence"]) == float(reference["smc_log_evidence"])
    # Every process holds the same, whole result.
    for result in results[1:]:
        for key in results[0]:
            np.testing.assert_array_equal(result[key], results[0][key])


def test_two_processes_each_get_all_draws(launch, reference, tmp_path):
    results = launch.job(tmp_path, ["--chains", "4", "--smc", "--x64"], num_processes=2)
    _check(results, reference, (4,), 2)


@pytest.mark.slow
def test_four_processes_each_get_all_draws(launch, reference, tmp_path):
    # 6 chains over 4 processes: padded to 8, the padding on the last process.
    # Four processes on a loaded 2-core machine took 100 s: more room than the 2-process job.
    results = launch.job(tmp_path, launch.runs, num_processes=4, timeout_s=300)
    _check(results, reference, (4, 6), 4)
