"""The engine registry: every engine is reached by name through ``ppl.infer``.

Entries name the engine's module and function as strings, so the core imports no engine
at module load (dependencies point inward) and an engine can be registered from outside.
An engine is a function ``engine(key, model, **settings) -> Posterior``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["EngineSpec", "register_engine", "available_engines", "get_engine"]


class EngineSpec(NamedTuple):
    """One registered engine.

    Attributes:
        name: what users pass as ``method``.
        target: ``"module.path:function"``.
        description: one line for listings and errors.
        needs_gradients: whether the engine differentiates the log-density.
    """

    name: str
    target: str
    description: str
    needs_gradients: bool = True


_ENGINES: dict[str, EngineSpec] = {}


def register_engine(
    name: str, target: str, description: str, *, needs_gradients: bool = True
) -> None:
    """Register (or replace) an engine under ``name``."""
    if ":" not in target:
        raise ValueError(f"Expected target as 'module:function', got {target!r}.")
    _ENGINES[name] = EngineSpec(name, target, description, needs_gradients)


def available_engines() -> dict[str, EngineSpec]:
    """The registered engines, by name."""
    return dict(_ENGINES)


def get_engine(name: str) -> Callable:
    """The engine function registered under ``name`` (imported on first use)."""
    if name not in _ENGINES:
        listing = ", ".join(sorted(_ENGINES))
        raise ValueError(f"Unknown method {name!r}. Available methods: {listing}.")
    module_name, function_name = _ENGINES[name].target.split(":")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, function_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"Method {name!r} is registered as {_ENGINES[name].target!r} but could not be "
            f"loaded: {error}"
        ) from error


# The built-in engines.
register_engine(
    "nuts", "ppl.inference.mcmc.sampler:sample_nuts",
    "No-U-Turn sampler with Stan's windowed adaptation (BlackJAX kernels)",
)
register_engine(
    "hmc", "ppl.inference.mcmc.sampler:sample_hmc",
    "Hamiltonian Monte Carlo, fixed path length, windowed adaptation",
)
register_engine(
    "smc", "ppl.inference.smc.tempered:sample_smc",
    "Adaptive tempered SMC with MCMC moves; log-evidence",
)
register_engine(
    "particle_filter", "ppl.inference.smc.particle_filter:sample_particle_filter",
    "Bootstrap particle filter for state-space models: smoothed trajectories, log-likelihood",
    needs_gradients=False,
)
register_engine(
    "flow_vi", "ppl.inference.vi.flow:fit_flow_vi",
    "Normalizing-flow variational inference (flowjax) with PSIS diagnostics",
)
register_engine(
    "coin_svgd", "ppl.inference.vi.coin:sample_coin_svgd",
    "Coin sampling (learning-rate-free SVGD, Sharrock & Nemeth 2023)",
)
register_engine(
    "coin_ksdd", "ppl.inference.vi.coin:sample_coin_ksdd",
    "Coin sampling on the kernel Stein discrepancy (learning-rate free)",
)
register_engine(
    "svgd", "ppl.inference.vi.svgd:sample_svgd",
    "Stein variational gradient descent with Adagrad and a step size (baseline)",
)
register_engine(
    "distribution_transformer",
    "ppl.inference.amortized.engine:infer_distribution_transformer",
    "Amortized posterior of a model family (Gaussian-mixture prior in, posterior out)",
    needs_gradients=False,
)
