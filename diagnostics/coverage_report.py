"""The calibration report of a coverage run: ``report.html`` and ``summary.json``."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
from ppl.diagnostics.coverage import CoverageRun
from ppl.diagnostics.expected_coverage import plot_expected_coverage
from ppl.diagnostics.html import Section, figure_html, render_page, table_html
from ppl.diagnostics.sbc import plot_sbc
from ppl.diagnostics.tarp import plot_tarp

__all__ = ["report_sections", "write_report"]


def _verdict_html(ok: bool) -> str:
    return '<span class="pass">pass</span>' if ok else '<span class="fail">FAIL</span>'


def _summary_table(run: CoverageRun) -> str:
    v = run.verdicts
    rows = [
        ("TARP", "KS test of uniform credibility f", run.tarp.p_value, 1,
         f"ATC {run.tarp.atc:.3f}", v["tarp"]),
        ("SBC", "ECDF gamma test, min over quantities", float(np.min(run.sbc.p_values)),
         len(run.sbc.names), ", ".join(run.sbc.names), v["sbc"]),
        ("Expected coverage", "binomial tests, central/HPD/joint HPD",
         run.expected.min_p_value, run.expected.num_tests,
         f"{len(run.expected.levels)} levels", v["coverage"]),
    ]
    body = "".join(
        f"<tr><td>{name}</td><td>{html.escape(test)}</td><td>{p:.3g}</td>"
        f"<td>{run.level / k:.2g}</td><td>{html.escape(note)}</td><td>{_verdict_html(ok)}</td></tr>"
        for name, test, p, k, note, ok in rows
    )
    return (
        '<table class="table"><tr><th>check</th><th>test</th><th>p-value</th>'
        "<th>threshold (Bonferroni)</th><th>notes</th><th>verdict</th></tr>"
        f"{body}</table>"
    )


def report_sections(run: CoverageRun, title: str = "") -> list[Section]:
    """The report's sections (usable inside a larger page, e.g. ``ppl demo``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prefix = f"{title}: " if title else ""
    overall = _verdict_html(run.passed)
    intro = (
        f"<p>{run.num_sims} simulated data sets from the prior predictive, engine "
        f"<b>{html.escape(run.method)}</b>, {run.draws.shape[1]} thinned draws per data set, "
        f"significance level {run.level}. Overall: {overall}</p>"
    )
    sections = [Section(prefix + "Summary", intro + _summary_table(run))]

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.2))
    plot_tarp(run.tarp, ax=axes[0])
    axes[1].hist(run.tarp.credibility, bins=20, range=(0, 1), color="C0", alpha=0.7)
    axes[1].axhline(run.num_sims / 20, color="k", ls="--", lw=1)
    axes[1].set_xlabel("credibility f of the truth")
    axes[1].set_title("TARP credibilities (uniform if calibrated)")
    sections.append(Section(prefix + "TARP", figure_html(fig, "TARP expected coverage")))

    sections.append(Section(
        prefix + "SBC",
        "<p>Rank histograms (grey: pointwise 99% binomial band) and ECDF differences "
        f"(grey: simultaneous {run.sbc.band_level:.0%} band).</p>"
        + figure_html(plot_sbc(run.sbc), "SBC ranks"),
    ))

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    plot_expected_coverage(run.expected, ax=ax)
    e = run.expected
    pick = [int(np.argmin(np.abs(e.levels - q))) for q in (0.5, 0.8, 0.95)]
    table = pd.DataFrame(
        {f"central {n}": e.central[pick, d] for d, n in enumerate(e.names[:6])}
        | ({"joint HPD": e.joint_hpd[pick]} if e.joint_hpd is not None else {}),
        index=[f"{e.central_nominal[k]:.3f}" for k in pick],
    )
    table.index.name = "nominal"
    sections.append(Section(prefix + "Expected coverage",
                            figure_html(fig, "expected coverage") + table_html(table)))

    d = run.diagnostics
    eng = run.summary()["engine"]
    diag_table = pd.DataFrame({
        "wall time (s)": d["wall_time"], "gradient evals": d["num_gradient_evals"],
        "divergences": d["num_divergences"], "min ESS": d["min_ess"],
        "max R-hat": d["max_rhat"], "warnings": d["num_warnings"],
    }).describe().loc[["mean", "min", "50%", "max"]]
    note = (
        f"<p>Compilations: {eng['compilations_first_sim']} on the first simulation, "
        f"{eng['compilations_after_first_sim']} on all later ones (new data sets reuse the "
        f"compiled engine). Simulations with divergences: {eng['sims_with_divergences']}; "
        f"with engine warnings: {eng['sims_with_warnings']}.</p>"
    )
    if eng["min_ess"] is not None and eng["min_ess"] < run.draws.shape[1]:
        note += (
            '<div class="warn">Some simulations have an ESS below the number of rank draws: '
            "ranks of autocorrelated draws are not uniform even for a correct sampler. Run "
            "longer chains or lower num_rank_draws.</div>"
        )
    sections.append(Section(prefix + "Engine diagnostics",
                            note + table_html(diag_table, "{:.4g}")))
    return sections


def write_report(run: CoverageRun, out_dir, title: str = "Calibration report") -> dict:
    """Write ``out_dir/report.html`` and ``out_dir/summary.json``; return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = run.summary()
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    page = render_page(f"{title} ({run.method})", report_sections(run))
    (out / "report.html").write_text(page)
    return summary
