"""The notebooks run (the quickstart with small settings), and the command line works end
to end."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from ppl import cli

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_notebook_executes(monkeypatch):
    monkeypatch.setenv("PPL_NOTEBOOK_SMALL", "1")
    nb = nbformat.read(ROOT / "notebooks" / "01_quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]


def test_sequential_amortized_notebook_executes():
    """The distribution-transformer walkthrough (shipped checkpoints, one NUTS run)."""
    nb = nbformat.read(ROOT / "notebooks" / "05_sequential_amortized.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "updates that warned" in text and "NUTS mean (sd)" in text


def test_cli_run_prints_a_summary_and_saves(tmp_path, capsys):
    code = cli.main(["run", "conjugate_normal", "--method", "nuts", "--out", str(tmp_path),
                     "--set", "num_chains=2", "num_warmup=100", "num_samples=100",
                     "progress_bar=false", "warn=false"])
    out = capsys.readouterr().out
    assert code == 0
    assert "mu" in out and "r_hat" in out
    assert (tmp_path / "posterior.nc").exists()
    # A second run refuses to overwrite what the user saved (before sampling).
    assert cli.main(["run", "conjugate_normal", "--out", str(tmp_path),
                     "--set", "num_chains=1", "num_warmup=10", "num_samples=10"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err


def test_cli_lists_engines_and_models(capsys):
    assert cli.main(["engines"]) == 0
    assert "nuts" in capsys.readouterr().out
    assert cli.main(["models", "--tag", "closed_form"]) == 0
    assert "conjugate_normal" in capsys.readouterr().out


def test_cli_rejects_bad_settings(capsys):
    with pytest.raises(SystemExit, match="key=value"):
        cli.main(["run", "conjugate_normal", "--set", "num_samples"])
    assert cli.main(["run", "no_such_model"]) == 2
    assert "ppl: error: Unknown model" in capsys.readouterr().err


def test_cli_runs_the_particle_filter_on_a_state_space_zoo_model(capsys):
    code = cli.main(["run", "lgssm", "--method", "particle_filter",
                     "--set", "num_particles=500", "num_trajectories=50"])
    assert code == 0
    out = capsys.readouterr().out
    assert "log evidence" in out
    from ppl import models

    exact = models.get("lgssm").exact()["log_evidence"]
    reported = float(out.split("log evidence:")[1].split()[0])
    # Wiring check only (unbiasedness is tested in tests/inference/smc): with 500 particles
    # and T=100 the estimate's sd is a few tenths, so 3 is far outside chance.
    assert abs(reported - exact) < 3.0
    with pytest.raises(SystemExit, match="state-space"):
        cli.main(["run", "conjugate_normal", "--method", "particle_filter"])
