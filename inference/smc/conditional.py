"""Conditional SMC with a fixed reference trajectory, and particle Gibbs.

Conditional SMC (Andrieu, Doucet & Holenstein 2010) runs the particle filter with slot 0
pinned to a reference trajectory ``x*_{0:T-1}``: at each ``t``, ``X_t^0 = x*_t`` and
``A_t^0 = 0``; the other ``N - 1`` particles are resampled (multinomially, every step) and
moved as usual. Drawing one trajectory from the final weights by ancestor tracing defines a
Markov kernel on trajectories that leaves the smoothing distribution ``p(x_{0:T-1} | y)``
invariant, for any ``N >= 2``: iterating it is particle Gibbs.

References:
    Andrieu, C., Doucet, A. and Holenstein, R. (2010). Particle Markov chain Monte Carlo
    methods. JRSS B 72(3), 269-342.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray
from ppl.inference.smc import base
from ppl.inference.smc.particle_filter import ParticleFilterResult, StateSpaceModel, _filter

__all__ = ["conditional_particle_filter", "particle_gibbs_step"]


def conditional_particle_filter(
    key: PRNGKeyArray,
    ssm: StateSpaceModel,
    observations: Any,
    reference: Any,
    *,
    num_particles: int = 100,
    prng_impl: str | None = "threefry_fused",
) -> ParticleFilterResult:
    """Conditional bootstrap filter with ``reference`` (leaves ``(T, ...)``) in slot 0.

    Resampling is multinomial at every step (the conditional multinomial scheme: the
    reference keeps ancestor 0, the others are i.i.d.). The result keeps its history.
    """
    num_particles = base.check_num_particles(num_particles)
    if num_particles < 2:
        raise ValueError(f"Expected num_particles >= 2 for conditional SMC, got {num_particles}.")
    reference = jax.tree_util.tree_map(jnp.asarray, reference)
    return _filter(key, ssm, observations, reference, num_particles=num_particles,
                   resampling="multinomial", ess_threshold=1.0, proposal=None,
                   store_history=True, prng_impl=prng_impl)


def particle_gibbs_step(
    key: PRNGKeyArray,
    ssm: StateSpaceModel,
    observations: Any,
    reference: Any,
    *,
    num_particles: int = 100,
) -> Any:
    """One particle-Gibbs update of the trajectory: conditional SMC, then trace one path.

    Returns the new trajectory (leaves ``(T, ...)``), a draw from a kernel that leaves
    ``p(x_{0:T-1} | y_{0:T-1})`` invariant.
    """
    filter_key, trace_key = jax.random.split(key)
    result = conditional_particle_filter(
        filter_key, ssm, observations, reference, num_particles=num_particles
    )
    path = result.smoothed_trajectories(trace_key, 1)
    return jax.tree_util.tree_map(lambda x: x[0], path)
