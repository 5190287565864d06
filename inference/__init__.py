"""ppl's inference engines (installed as ``ppl.inference``)."""
