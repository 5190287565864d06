"""Tempered SMC resumes from its last recorded temperature: a run interrupted after a few
temperatures (the exception raised right after a record, as a kill would leave it) ends,
when called again, with the same particles and log-evidence as an uninterrupted run; the
recorded temperatures are not recomputed; another run's directory is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from ppl.inference import checkpoint

import ppl
from ppl import models

SETTINGS = {"num_particles": 400, "progress_bar": False}


class _Interrupted(Exception):
    pass


def test_an_interrupted_smc_run_resumes_to_the_same_answer(tmp_path, monkeypatch):
    model = models.get("logistic_regression_small").build()
    uninterrupted = ppl.infer(model, "smc", key=2, **SETTINGS)
    num_temperatures = uninterrupted.meta["num_temperatures"]
    assert num_temperatures >= 4
    save = checkpoint.RunCheckpoint.save
    calls = []

    def save_then_stop(self, index, *args, **kwargs):
        save(self, index, *args, **kwargs)
        calls.append(index)
        if index == 2:
            raise _Interrupted

    monkeypatch.setattr(checkpoint.RunCheckpoint, "save", save_then_stop)
    with pytest.raises(_Interrupted):
        ppl.infer(model, "smc", key=2, checkpoint_dir=tmp_path, **SETTINGS)
    resumed = ppl.infer(model, "smc", key=2, checkpoint_dir=tmp_path, **SETTINGS)
    # Temperatures 0-2 were recorded once and read back; the rest were run after the resume.
    assert calls == list(range(num_temperatures))
    assert resumed.log_evidence == uninterrupted.log_evidence
    for name in uninterrupted.samples:
        np.testing.assert_array_equal(resumed.samples[name], uninterrupted.samples[name])
    np.testing.assert_array_equal(resumed.history["temperature"],
                                  uninterrupted.history["temperature"])


def test_another_smc_run_in_the_directory_is_refused(tmp_path):
    model = models.get("conjugate_normal").build()
    ppl.infer(model, "smc", key=0, checkpoint_dir=tmp_path, **SETTINGS)
    with pytest.raises(ValueError, match=r"differs in \['settings'\]"):
        ppl.infer(model, "smc", key=0, checkpoint_dir=tmp_path,
                  **{**SETTINGS, "num_particles": 200})
