"""Diagnostics: convergence, calibration, coverage, reports (``ppl.diagnostics``)."""
