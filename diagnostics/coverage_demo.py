"""The ``ppl demo`` section: a small coverage run of NUTS on the zoo's conjugate normal."""

from __future__ import annotations

import pathlib

from ppl.diagnostics.html import Section

__all__ = ["demo_section"]


def demo_section(out_dir: pathlib.Path, *, quick: bool) -> list[Section]:
    """Calibration of NUTS on ``conjugate_normal`` (checkpoints under ``out_dir``)."""
    from ppl.diagnostics.coverage import coverage
    from ppl.diagnostics.coverage_report import report_sections

    from ppl import models

    model = models.get("conjugate_normal").build()
    num_sims = 10 if quick else 60
    run = coverage(
        model, "nuts", num_sims=num_sims, key=0,
        out_dir=pathlib.Path(out_dir) / "coverage_conjugate_normal",
        num_rank_draws=50, num_chains=2, num_warmup=150, num_samples=150,
    )
    return report_sections(run, title="Coverage of NUTS on conjugate_normal")
