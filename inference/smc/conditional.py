"""Conditional SMC with a fixed reference trajectory, and particle Gibbs.

Conditional SMC (Andrieu, Doucet & Holenstein 2010) runs the particle filter with slot 0
pinned to a reference trajectory ``x*_{0:T-1}``: at each ``t``, ``X_t^0 = x*_t`` and
``A_t^0 = 0``; the other ``N - 1`` particles are resampled (multinomially, every step) and
moved as usual. Drawing one trajectory from the final weights by ancestor tracing defines a
Markov kernel on trajectories that leaves the smoothing distribution ``p(x_{0:T-1} | y)``
invariant, for any ``N >= 2``: iterating it is particle Gibbs.

With ``ancestor_sampling=True`` (Lindsten, Jordan and Schon 2014) the reference's parent at
each step is redrawn in proportion to ``w_{t-1}^i f_t(x*_t | x^i_{t-1})`` instead of being
kept: the same invariant distribution, but the retained path can change its early states,
which plain particle Gibbs with few particles rarely does (path degeneracy). It needs the
transition density (``StateSpaceModel.log_transition``).

References:
    Andrieu, C., Doucet, A. and Holenstein, R. (2010). Particle Markov chain Monte Carlo
    methods. JRSS B 72(3), 269-342.
    Lindsten, F., Jordan, M. I. and Schon, T. B. (2014). Particle Gibbs with ancestor
    sampling. JMLR 15, 2145-2184.
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
    ancestor_sampling: bool = False,
) -> ParticleFilterResult:
    """Conditional bootstrap filter with ``reference`` (leaves ``(T, ...)``) in slot 0.

    Resampling is multinomial at every step (the conditional multinomial scheme: the
    reference keeps ancestor 0, or with ``ancestor_sampling`` draws it, the others are
    i.i.d.). The result keeps its history.
    """
    num_particles = base.check_num_particles(num_particles)
    if num_particles < 2:
        raise ValueError(f"Expected num_particles >= 2 for conditional SMC, got {num_particles}.")
    if ancestor_sampling and ssm.log_transition is None:
        raise ValueError(
            "Expected a StateSpaceModel with log_transition for ancestor sampling (the "
            "reference's parent is drawn by the transition density), got none."
        )
    reference = jax.tree_util.tree_map(jnp.asarray, reference)
    return _filter(key, ssm, observations, reference, num_particles=num_particles,
                   resampling="multinomial", ess_threshold=1.0, proposal=None,
                   store_history=True, prng_impl=prng_impl,
                   ancestor_sampling=bool(ancestor_sampling))


def particle_gibbs_step(
    key: PRNGKeyArray,
    ssm: StateSpaceModel,
    observations: Any,
    reference: Any,
    *,
    num_particles: int = 100,
    ancestor_sampling: bool = False,
) -> Any:
    """One particle-Gibbs update of the trajectory: conditional SMC, then trace one path.

    Returns the new trajectory (leaves ``(T, ...)``), a draw from a kernel that leaves
    ``p(x_{0:T-1} | y_{0:T-1})`` invariant (``ancestor_sampling``: see the module docstring).
    """
    filter_key, trace_key = jax.random.split(key)
    result = conditional_particle_filter(
        filter_key, ssm, observations, reference, num_particles=num_particles,
        ancestor_sampling=ancestor_sampling,
    )
    path = result.smoothed_trajectories(trace_key, 1)
    return jax.tree_util.tree_map(lambda x: x[0], path)
