"""Amortized engines (installed as ``ppl.inference.amortized``)."""
