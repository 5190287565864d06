"""Diagnostics (installed as ``ppl.diagnostics``): calibration (TARP, SBC, expected
coverage), distances to reference draws (C2ST, MMD), the coverage driver and its report."""

from ppl.diagnostics.coverage import CoverageRun, coverage
from ppl.diagnostics.coverage_report import write_report as write_coverage_report
from ppl.diagnostics.expected_coverage import (
    ExpectedCoverage,
    expected_coverage,
    plot_expected_coverage,
)
from ppl.diagnostics.sbc import SBCResult, plot_sbc, sbc_ranks, sbc_test, thin_draws
from ppl.diagnostics.tarp import TARPResult, plot_tarp, tarp, tarp_credibility
from ppl.diagnostics.two_sample import C2STResult, MMDResult, c2st, mmd

__all__ = [
    "C2STResult", "CoverageRun", "ExpectedCoverage", "MMDResult", "SBCResult", "TARPResult",
    "c2st", "coverage", "expected_coverage", "mmd", "plot_expected_coverage", "plot_sbc",
    "plot_tarp", "sbc_ranks", "sbc_test", "tarp", "tarp_credibility", "thin_draws",
    "write_coverage_report",
]
