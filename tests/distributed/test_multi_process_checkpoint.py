"""``checkpoint_dir=`` with the chains (particles) spread over the processes of a
``jax.distributed`` job: process 0 writes the directory, every process reads it.

A 2-process job stopped right after a record (on every process, as a kill just after a
record would leave it: NUTS in warm-up, so that the resumed run's stuck-chain check reads
recorded blocks; tempered SMC after the first of its two temperatures) and launched again
ends with the draws of an uninterrupted run, bit for bit, and with those of one process to
the tolerance of test_single_host.py (NUTS; tempered SMC bit for bit). The recorded blocks
are read, not redone, and only process 0 writes. Processes that do not see the same
directory (no shared filesystem) are refused, on every process, naming it, and so is
another run in the directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

STOP = {"nuts_4": 30, "smc": 1}  # records before the interruption (NUTS: 100 chunks)
RUNS = ["--chains", "4", "--smc", "--x64"]


def _completed(directory: Path) -> int:
    with np.load(directory / "state.npz") as state:
        return int(state["completed"])


def _expected_files(num_blocks: int) -> list[str]:
    return [f"block_{i:05d}.npz" for i in range(num_blocks)] + ["manifest.json", "state.npz"]


def _job(launch, where: Path, args: list[str]):
    where.mkdir()
    return launch.job(where, args, num_processes=2)


@pytest.mark.slow
def test_an_interrupted_two_process_run_resumes_to_the_uninterrupted_draws(launch, reference,
                                                                          tmp_path):
    store = tmp_path / "checkpoints"
    runs = {"nuts_4": store / "nuts_4", "smc": store / "smc"}
    first = _job(launch, tmp_path / "interrupted",
                 [*RUNS, "--checkpoint", str(store), "--stop-after", str(STOP["nuts_4"]),
                  str(STOP["smc"])])
    for result in first:
        assert result["nuts_4_interrupted"] and result["smc_interrupted"]
    # One writer: a block and the state per record, for each of the two runs.
    assert [int(r["checkpoint_writes"]) for r in first] == [2 * sum(STOP.values()), 0]
    stamps = {}
    for name, directory in runs.items():
        assert sorted(os.listdir(directory)) == _expected_files(STOP[name]), name
        assert _completed(directory) == STOP[name]
        stamps[name] = (directory / "block_00000.npz").stat().st_mtime_ns

    second = _job(launch, tmp_path / "resumed", [*RUNS, "--checkpoint", str(store)])
    recorded = {name: _completed(directory) for name, directory in runs.items()}
    assert recorded["nuts_4"] == 100  # 200 steps in chunks of 2
    assert recorded["smc"] > STOP["smc"]
    for name, directory in runs.items():
        assert sorted(os.listdir(directory)) == _expected_files(recorded[name]), name
        assert (directory / "block_00000.npz").stat().st_mtime_ns == stamps[name]
    assert [int(r["checkpoint_writes"]) for r in second] == [
        2 * sum(recorded[name] - STOP[name] for name in runs), 0]
    for result in second:
        assert int(result["nuts_4_devices"]) == 2 and int(result["smc_devices"]) == 2
        # The resumed run against the same job's uninterrupted one, and against one process.
        np.testing.assert_array_equal(result["nuts_4"], result["plain_nuts_4"])
        np.testing.assert_allclose(result["nuts_4"], reference["nuts_4"], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(result["smc"], result["plain_smc"])
        np.testing.assert_array_equal(result["smc"], reference["smc"])
        assert float(result["smc_log_evidence"]) == float(reference["smc_log_evidence"])
    for key in ("nuts_4", "smc", "smc_log_evidence"):
        np.testing.assert_array_equal(second[1][key], second[0][key])


def test_processes_that_read_different_directories_are_refused(launch, tmp_path):
    # Each process gets its own directory, as processes without a shared filesystem would
    # see one path: process 0 writes its manifest, process 1 finds none.
    store = tmp_path / "not_shared"
    results = _job(launch, tmp_path / "job", ["--refuse-dir", str(store)])
    for index, result in enumerate(results):
        message = str(result["refusal"])
        assert f"checkpoint_dir={str(store / f'process_{index}')!r}" in message, message
        assert "process 0 reads this run's manifest.json and no state.npz" in message
        assert "process 1 reads no manifest.json and no state.npz" in message
        assert "shared by all the processes" in message
    assert sorted(os.listdir(store / "process_0")) == ["manifest.json"]
    assert not (store / "process_1").exists()  # process 1 wrote nothing, not even the folder
    # Another run where process 0 finds this one: process 0 says what differs, and the
    # others stop with it instead of waiting for it.
    assert "differs in ['settings']" in str(results[0]["refusal_other_run"])
    assert str(results[1]["refusal_other_run"]).startswith(
        f"checkpoint_dir={str(store / 'process_1')!r} was refused on process 0")
