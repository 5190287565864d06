"""HMC and NUTS as init/step pairs over a Model, built on BlackJAX kernels.

These are the building blocks for users who write their own loops (and for the SMC
engine's move steps). Nothing here is jitted: the caller jits.

Example:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from ppl.inference import mcmc
    >>> model = ppl.from_logdensity(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(2))
    >>> algo = mcmc.nuts(model, step_size=0.5, inverse_mass_matrix=jnp.ones(2))
    >>> state = algo.init(jnp.zeros(2))
    >>> state, info = jax.jit(algo.step)(jax.random.key(0), state)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import blackjax
from blackjax.base import SamplingAlgorithm
from blackjax.mcmc.hmc import HMCInfo, HMCState
from blackjax.mcmc.nuts import NUTSInfo

from ppl.model import AbstractModel

__all__ = ["HMCInfo", "HMCState", "NUTSInfo", "SamplingAlgorithm", "hmc", "nuts", "logdensity_of"]


def logdensity_of(model: AbstractModel | Callable) -> Callable:
    """The positive log-density ``z -> scalar`` of a Model (or a callable, unchanged)."""
    if isinstance(model, AbstractModel):
        return model.log_density
    if callable(model):
        return model
    raise TypeError(f"Expected a ppl Model or a log-density callable, got {type(model).__name__}.")


def nuts(
    model: AbstractModel | Callable,
    *,
    step_size: Any,
    inverse_mass_matrix: Any,
    max_num_doublings: int = 10,
    divergence_threshold: float = 1000.0,
) -> SamplingAlgorithm:
    """The No-U-Turn sampler (multinomial, iterative; Hoffman & Gelman 2014, Betancourt 2017).

    Args:
        model: a ppl Model or a log-density over flat vectors.
        step_size: leapfrog step size.
        inverse_mass_matrix: ``(dim,)`` diagonal or ``(dim, dim)`` dense.
        max_num_doublings: maximum tree depth.
        divergence_threshold: energy error above which a transition is divergent.

    Returns:
        ``SamplingAlgorithm(init, step)`` with ``init(position) -> HMCState`` and
        ``step(key, state) -> (HMCState, NUTSInfo)``.
    """
    logdensity_fn = logdensity_of(model)
    kernel = blackjax.nuts.build_kernel(divergence_threshold=divergence_threshold)

    def init(position):
        return blackjax.nuts.init(position, logdensity_fn)

    def step(key, state):
        return kernel(
            key, state, logdensity_fn, step_size, inverse_mass_matrix, max_num_doublings
        )

    return SamplingAlgorithm(init, step)


def hmc(
    model: AbstractModel | Callable,
    *,
    step_size: Any,
    inverse_mass_matrix: Any,
    num_integration_steps: int = 16,
    divergence_threshold: float = 1000.0,
) -> SamplingAlgorithm:
    """Hamiltonian Monte Carlo with a fixed number of leapfrog steps (Neal 2011).

    Returns:
        ``SamplingAlgorithm(init, step)`` with ``step(key, state) -> (HMCState, HMCInfo)``.
    """
    logdensity_fn = logdensity_of(model)
    kernel = blackjax.hmc.build_kernel(divergence_threshold=divergence_threshold)

    def init(position):
        return blackjax.hmc.init(position, logdensity_fn)

    def step(key, state):
        return kernel(
            key, state, logdensity_fn, step_size, inverse_mass_matrix, num_integration_steps
        )

    return SamplingAlgorithm(init, step)
