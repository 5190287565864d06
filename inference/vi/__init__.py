"""Variational engines (installed as ``ppl.inference.vi``)."""
