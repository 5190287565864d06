"""Sequential Monte Carlo (installed as ``ppl.inference.smc``).

One Feynman-Kac core (:mod:`.base`: resample, move, reweight over particles of any kind)
with resampling schemes that see only weights (:mod:`.resampling`), and its instances:
particle filters for state-space models (:mod:`.particle_filter`), conditional SMC and
particle Gibbs (:mod:`.conditional`), particle marginal Metropolis-Hastings for static
parameters (:mod:`.pmmh`), and adaptive tempered SMC for any Model
(:mod:`.tempered`, ``ppl.infer(model, "smc")``).
"""

from ppl.inference.smc import base, resampling
from ppl.inference.smc.base import SMCInfo, SMCState, gather
from ppl.inference.smc.conditional import conditional_particle_filter, particle_gibbs_step
from ppl.inference.smc.particle_filter import (
    ParticleFilterResult,
    Proposal,
    StateSpaceModel,
    log_likelihood_estimate,
    particle_filter,
    sample_particle_filter,
    trace_ancestors,
)
from ppl.inference.smc.pmmh import PMMHInfo, PMMHResult, PMMHState, pmmh
from ppl.inference.smc.resampling import (
    effective_sample_size,
    multinomial,
    residual,
    stratified,
    systematic,
)

__all__ = [
    "PMMHInfo",
    "PMMHResult",
    "PMMHState",
    "ParticleFilterResult",
    "Proposal",
    "SMCInfo",
    "SMCState",
    "StateSpaceModel",
    "base",
    "conditional_particle_filter",
    "effective_sample_size",
    "gather",
    "log_likelihood_estimate",
    "multinomial",
    "particle_filter",
    "particle_gibbs_step",
    "pmmh",
    "residual",
    "resampling",
    "sample_particle_filter",
    "sample_smc",
    "stratified",
    "systematic",
    "trace_ancestors",
]


def __getattr__(name):
    # The tempered engine imports the MCMC kernels; load it on first use.
    if name == "sample_smc":
        from ppl.inference.smc.tempered import sample_smc

        return sample_smc
    raise AttributeError(name)
