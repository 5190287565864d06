"""One distribution, one import name: the sibling folders install under ``ppl``."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_siblings_import_under_ppl_only(tmp_path):
    script = (
        "import importlib.util as u, ppl.inference.mcmc, ppl.models, ppl.diagnostics;"
        "print(u.find_spec('inference'), u.find_spec('models'), u.find_spec('diagnostics'))"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", "None", "None"]


def test_wheel_maps_the_folders_into_the_ppl_package(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("ppl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ["ppl/__init__.py", "ppl/inference/mcmc/sampler.py", "ppl/models/zoo.py",
                     "ppl/diagnostics/html.py"]:
        assert expected in names
    assert not [n for n in names if n.split("/")[0] in {"inference", "models", "diagnostics"}]
    # Every Python package folder in the repository is listed in pyproject, so none is dropped.
    shipped = {n.rsplit("/", 1)[0] for n in names if n.endswith("__init__.py")}
    for init in (list(ROOT.glob("inference/**/__init__.py"))
                 + list(ROOT.glob("models/**/__init__.py"))
                 + list(ROOT.glob("diagnostics/**/__init__.py"))):
        folder = init.parent.relative_to(ROOT).as_posix()
        assert "ppl/" + folder in shipped, f"{folder} is not listed in pyproject.toml packages"
