"""ppl's inference engines (installed as ``ppl.inference``)."""

# Engine packages load on first use (``ppl.inference.llm.run`` after ``import ppl``).
_SUBPACKAGES = ("amortized", "llm", "mcmc", "smc", "vi")


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"ppl.inference.{name}")
    raise AttributeError(f"module 'ppl.inference' has no attribute {name!r}")
