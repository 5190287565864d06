"""Checkpointed NUTS runs: a run killed mid-way (SIGKILL, in a subprocess) resumes from its
last recorded chunk and ends with the same draws as an uninterrupted run, bit for bit; the
finished chunks are not recomputed; a directory holding another run is refused by name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import ppl
from ppl import models

SETTINGS = {"num_chains": 2, "num_warmup": 300, "num_samples": 20_000, "progress_bar": False,
            "warn": False}
SCRIPT = textwrap.dedent("""
    import sys
    import ppl
    from ppl import models
    settings = dict(num_chains=2, num_warmup=300, num_samples=20_000, progress_bar=False,
                    warn=False)
    ppl.infer(models.get("eight_schools").build(), "nuts", key=5, checkpoint_dir=sys.argv[1],
              **settings)
""")


def _completed(directory: Path) -> int:
    path = directory / "state.npz"
    if not path.exists():
        return 0
    try:
        with np.load(path) as state:
            return int(state["completed"])
    except (OSError, ValueError, KeyError):  # being replaced at this instant
        return 0


@pytest.mark.slow
def test_a_killed_run_resumes_and_equals_an_uninterrupted_one(tmp_path):
    directory = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(directory)],
                               env={**os.environ, "JAX_PLATFORMS": "cpu"})
    deadline = time.monotonic() + 240
    while _completed(directory) < 15 and time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail("the run finished before it could be interrupted; make it longer")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    completed = _completed(directory)
    assert 15 <= completed < 100, completed
    first_chunk = directory / "block_00000.npz"
    stamp = first_chunk.stat().st_mtime_ns

    model = models.get("eight_schools").build()
    resumed = ppl.infer(model, "nuts", key=5, checkpoint_dir=directory, **SETTINGS)
    assert first_chunk.stat().st_mtime_ns == stamp  # finished chunks are read, not redone
    assert _completed(directory) > completed
    uninterrupted = ppl.infer(model, "nuts", key=5, **SETTINGS)
    for name in uninterrupted.samples:
        np.testing.assert_array_equal(resumed.samples[name], uninterrupted.samples[name])
    np.testing.assert_array_equal(resumed.stats["diverging"], uninterrupted.stats["diverging"])


def test_another_run_in_the_directory_is_refused_by_name(tmp_path):
    model = models.get("conjugate_normal").build()
    short = {"num_chains": 2, "num_warmup": 50, "num_samples": 50, "progress_bar": False,
             "warn": False}
    first = ppl.infer(model, "nuts", key=0, checkpoint_dir=tmp_path, **short)
    again = ppl.infer(model, "nuts", key=0, checkpoint_dir=tmp_path, **short)
    np.testing.assert_array_equal(first.samples["mu"], again.samples["mu"])
    with pytest.raises(ValueError, match=r"differs in \['settings'\]"):
        ppl.infer(model, "nuts", key=0, checkpoint_dir=tmp_path, **{**short, "num_samples": 60})
    other_data = model.with_data(model.simulate(jax.random.key(1), jax.numpy.zeros(model.dim)))
    with pytest.raises(ValueError, match=r"differs in \['model_arrays'\]"):
        ppl.infer(other_data, "nuts", key=0, checkpoint_dir=tmp_path, **short)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="Expected checkpoint_dir to be a directory"):
        ppl.infer(model, "nuts", key=0, checkpoint_dir=blocker, **short)


def test_cli_run_records_and_resumes(tmp_path, capsys):
    from ppl import cli

    command = ["run", "conjugate_normal", "--checkpoint", str(tmp_path / "ck"), "--set",
               "num_chains=2", "num_warmup=100", "num_samples=100", "progress_bar=false",
               "warn=false"]
    assert cli.main(command) == 0
    first = capsys.readouterr().out
    assert (tmp_path / "ck" / "state.npz").exists()
    assert cli.main(command) == 0
    assert capsys.readouterr().out == first
    with pytest.raises(SystemExit, match="--checkpoint works with --method nuts, hmc or smc"):
        cli.main(command[:2] + ["--method", "flow_vi"] + command[2:])
