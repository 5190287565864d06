"""Sequential Monte Carlo (installed as ``ppl.inference.smc``)."""
