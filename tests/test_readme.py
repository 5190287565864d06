"""The README's Python blocks run as written (those not marked ``<!-- sketch ... -->``, whose
names are the user's), in order, in one namespace: documentation cannot drift from the code."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"(<!-- sketch[^>]*-->\s*\n)?```python\n(.*?)```", re.S)


def readme_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [m.group(2) for m in FENCE.finditer(text) if m.group(1) is None]


def test_readme_has_runnable_blocks():
    assert len(readme_blocks()) >= 3


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*divergent transition")
def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what the blocks write (run.nc) lands here
    (tmp_path / "models").symlink_to(ROOT / "models")  # the blocks' relative checkpoint paths
    namespace: dict = {}
    for index, block in enumerate(readme_blocks()):
        try:
            exec(compile(block, f"README.md python block {index + 1}", "exec"), namespace)
        except Exception as error:  # name the block, then fail
            raise AssertionError(
                f"README python block {index + 1} failed: {error!r}\n{block}") from error
    assert (tmp_path / "run.nc").exists()
