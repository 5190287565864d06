"""ppl: probabilistic programming and approximate inference in JAX.

Write a model once (NumPyro's language or a plain JAX log-density), run any engine on it
through :func:`ppl.infer`, and check the answer with :mod:`ppl.diagnostics`.
"""

from ppl import config as _config
from ppl import cpu_linalg as _cpu_linalg
from ppl.infer import infer
from ppl.model import AbstractModel, LogDensityModel, from_logdensity
from ppl.numpyro_model import NumPyroModel, from_numpyro
from ppl.posterior import Posterior, load
from ppl.registry import available_engines, register_engine

Model = AbstractModel

_config.enable_compilation_cache(unless_disabled=True)
# jaxlib 0.10's batched LAPACK kernels can deadlock XLA's CPU thread pool (ppl/cpu_linalg.py).
_cpu_linalg.apply()

# Subpackages load on first use (``ppl.diagnostics.coverage(...)`` after ``import ppl``), so
# that ``import ppl`` stays light.
_SUBPACKAGES = ("diagnostics", "inference", "models")


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"ppl.{name}")
    raise AttributeError(f"module 'ppl' has no attribute {name!r}")

__all__ = [
    "AbstractModel",
    "LogDensityModel",
    "Model",
    "NumPyroModel",
    "Posterior",
    "available_engines",
    "from_logdensity",
    "from_numpyro",
    "infer",
    "load",
    "register_engine",
]
__version__ = "0.1.0"
