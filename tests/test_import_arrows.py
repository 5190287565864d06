"""The intended import arrows, read from the source (every import, at module level or inside
a function):

- the core (``ppl/``) imports no engine, model or diagnostic, except the entry points that
  exist to dispatch to them (the command lines);
- engines (``inference/``) import no diagnostics, no command line and no plotting: demos and
  report-writing code live in ``diagnostics/``;
- models import no engine's report and no command line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"ppl": "ppl", "inference": "ppl.inference", "models": "ppl.models",
            "diagnostics": "ppl.diagnostics"}
# Core modules whose job is to reach every part: the command lines.
ENTRY_POINTS = {"ppl/cli.py", "ppl/lm_cli.py"}
RULES = {
    "ppl": ("ppl.inference", "ppl.models", "ppl.diagnostics"),
    "inference": ("ppl.diagnostics", "ppl.cli", "ppl.lm_cli", "matplotlib"),
    "models": ("ppl.diagnostics", "ppl.cli", "ppl.lm_cli"),
}


def _module_name(path: Path, root: Path) -> str:
    relative = path.relative_to(root).with_suffix("")
    return ".".join([PACKAGES[relative.parts[0]], *relative.parts[1:]])


def imports(path: Path, root: Path = ROOT) -> list[tuple[str, int]]:
    """Every imported module of ``path`` (relative imports resolved) with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = _module_name(path, root).split(".")
                if path.name != "__init__.py":
                    parts = parts[:-1]
                base = parts[: len(parts) - node.level + 1]
                found.append((".".join(base + ([node.module] if node.module else [])),
                              node.lineno))
            elif node.module:
                found.append((node.module, node.lineno))
    return found


def _violations(package: str, root: Path = ROOT) -> list[str]:
    forbidden = RULES[package]
    bad = []
    for path in sorted((root / package).rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative in ENTRY_POINTS:
            continue
        for name, line in imports(path, root):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{relative}:{line} imports {name}")
    return bad


@pytest.mark.parametrize("package", sorted(RULES))
def test_import_arrows(package):
    assert _violations(package) == []


def test_the_check_sees_function_level_and_relative_imports(tmp_path):
    """Negative control: a planted function-level import of a diagnostic in an engine, and a
    relative import, are both found."""
    engine = tmp_path / "inference" / "smc"
    engine.mkdir(parents=True)
    (engine / "planted.py").write_text(
        "def f():\n    from ppl.diagnostics import tarp\n    import matplotlib.pyplot\n")
    (engine / "relative.py").write_text("from ...diagnostics import sbc\n")
    found = _violations("inference", tmp_path)
    assert "inference/smc/planted.py:2 imports ppl.diagnostics" in found
    assert "inference/smc/planted.py:3 imports matplotlib.pyplot" in found
    assert "inference/smc/relative.py:1 imports ppl.diagnostics" in found


def test_every_demo_section_resolves():
    """The demo finds its sections by name (``module:function``): each one imports."""
    import importlib

    from ppl.diagnostics.demo import ENGINE_SECTIONS

    for spec in ENGINE_SECTIONS:
        module, function = spec.split(":")
        assert callable(getattr(importlib.import_module(module), function)), spec
