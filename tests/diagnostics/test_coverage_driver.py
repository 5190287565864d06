"""The coverage driver, its checkpoint/resume, the report and the CLI.

NUTS on the zoo's conjugate normal passes; an engine returning an over-confident closed
form fails (negative control); the exact closed form passes (positive control)."""

from __future__ import annotations

import argparse
import json
import sys
import types

import numpy as np
import pytest
from ppl.diagnostics import coverage_cli
from ppl.diagnostics.coverage import coverage
from ppl.diagnostics.coverage_report import write_report

import ppl
from ppl import models
from ppl.cli import resolve_model

ENTRY = models.get("conjugate_normal")
CALLS = {"n": 0, "fail_at": None}


def _closed_form_engine(key, model, *, sd_factor=1.0, num_draws=400):
    """Draws from N(mean, (sd_factor * sd)^2), the exact posterior when sd_factor = 1."""
    CALLS["n"] += 1
    if CALLS["fail_at"] is not None and CALLS["n"] == CALLS["fail_at"]:
        raise KeyboardInterrupt  # an interrupted run
    exact = ENTRY.exact(y=np.asarray(model.observed["y"]))
    mean, sd = exact["mean"]["mu"], exact["sd"]["mu"] * sd_factor
    import jax

    mu = mean + sd * np.asarray(jax.random.normal(key, (1, num_draws)))
    return ppl.Posterior(samples={"mu": mu}, unconstrained=mu[..., None],
                         meta={"engine": "closed_form", "wall_time": 0.0})


@pytest.fixture(scope="module", autouse=True)
def closed_form_engine():
    module = types.ModuleType("ppl_test_calibration_engines")
    module.closed_form = _closed_form_engine
    sys.modules[module.__name__] = module
    ppl.register_engine("test_closed_form", f"{module.__name__}:closed_form",
                        "closed-form conjugate normal posterior (tests only)")
    yield
    # Leave the registry as found: the contract test checks every registered engine.
    from ppl import registry

    registry._ENGINES.pop("test_closed_form", None)
    sys.modules.pop(module.__name__, None)


def test_nuts_on_conjugate_normal_passes_and_compiles_once(tmp_path):
    run = coverage(ENTRY.build(), "nuts", num_sims=25, key=0, num_rank_draws=50,
                   out_dir=tmp_path, num_chains=2, num_warmup=150, num_samples=150)
    assert run.verdicts == {"tarp": True, "sbc": True, "coverage": True}, run.summary()
    assert run.sbc.names == ("mu", "log_likelihood")
    # New data sets reuse the compiled engine: no backend compilation after the first.
    assert run.num_compilations[0] > 0 and np.all(run.num_compilations[1:] == 0)
    summary = write_report(run, tmp_path)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["verdict"] == summary["verdict"] == "pass"
    for section in ("tarp", "sbc", "coverage"):
        assert on_disk[section]["verdict"] == "pass"
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64") >= 3 and "Engine diagnostics" in page


@pytest.mark.parametrize("sd_factor, ok", [(1.0, True), (0.5, False), (2.0, False)])
def test_closed_form_controls(sd_factor, ok):
    run = coverage(ENTRY.build(), "test_closed_form", num_sims=150, key=1,
                   num_rank_draws=100, sd_factor=sd_factor)
    if ok:
        assert run.passed, run.summary()
    else:  # each of the three checks flags the miscalibrated engine
        assert not any(run.verdicts.values()), run.verdicts


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    model = ENTRY.build()
    CALLS.update(n=0, fail_at=7)
    with pytest.raises(KeyboardInterrupt):
        coverage(model, "test_closed_form", num_sims=12, key=2, out_dir=tmp_path)
    assert len(list((tmp_path / "sims").glob("sim_*.npz"))) == 6
    CALLS.update(n=0, fail_at=None)
    resumed = coverage(model, "test_closed_form", num_sims=12, key=2, out_dir=tmp_path)
    assert CALLS["n"] == 6  # only the unfinished simulations ran
    assert np.all(resumed.num_compilations[:6] == -1)  # loaded from checkpoints
    fresh = coverage(model, "test_closed_form", num_sims=12, key=2)
    np.testing.assert_allclose(resumed.draws, fresh.draws)
    np.testing.assert_allclose(resumed.truths, fresh.truths)
    with pytest.raises(ValueError, match="num_sims"):  # other settings: refuse to mix
        coverage(model, "test_closed_form", num_sims=13, key=2, out_dir=tmp_path)


def test_cli_writes_report_and_summary(tmp_path):
    parser = argparse.ArgumentParser()
    coverage_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["coverage", "conjugate_normal", "--method", "test_closed_form",
                              "--num-sims", "30", "--out", str(tmp_path),
                              "--set", "sd_factor=1.0"])
    assert args.run(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"tarp", "sbc", "coverage"} <= set(summary)
    assert (tmp_path / "report.html").exists()


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_sims"):
        coverage(ENTRY.build(), "nuts", num_sims=1, key=0)
    with pytest.raises(ValueError, match="num_rank_draws"):
        coverage(ENTRY.build(), "test_closed_form", num_sims=3, key=0, num_rank_draws=1000)
    with pytest.raises(ValueError, match="MODEL"):
        resolve_model("no_such_module_xyz:fn")
