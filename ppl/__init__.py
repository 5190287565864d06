"""ppl: probabilistic programming and approximate inference in JAX.

Write a model once (NumPyro's language or a plain JAX log-density), run any engine on it
through :func:`ppl.infer`, and check the answer with :mod:`ppl.diagnostics`.
"""

from ppl import config as _config

_config.avoid_cpu_thread_pool_hang()  # before anything starts JAX's backends

from ppl.infer import infer  # noqa: E402
from ppl.model import AbstractModel, LogDensityModel, from_logdensity  # noqa: E402
from ppl.numpyro_model import NumPyroModel, from_numpyro  # noqa: E402
from ppl.posterior import Posterior, load  # noqa: E402
from ppl.registry import available_engines, register_engine  # noqa: E402

Model = AbstractModel

_config.enable_compilation_cache(unless_disabled=True)

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
