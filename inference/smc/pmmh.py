"""Particle marginal Metropolis-Hastings for the static parameters of a state-space model.

The marginal likelihood ``p(y | theta)`` of a state-space model is intractable, but a
particle filter returns an unbiased estimate ``p_hat(y | theta)``. Metropolis-Hastings with
the estimate in place of the likelihood, *keeping the current state's estimate until a
proposal is accepted*, is exact: its stationary law has marginal ``p(theta | y)``
(Andrieu, Doucet and Holenstein 2010, pseudo-marginal argument). A random-walk proposal
``theta' = theta + s * eps`` on an unconstrained parametrisation:

    accept with probability  min(1, p_hat(y | theta') p(theta') / (p_hat(y | theta) p(theta)))

Re-estimating the current likelihood at every step ("Monte Carlo within Metropolis") looks
harmless and is not exact; nor is tuning ``s`` from the chain while it runs.

The step is a pure ``(key, state) -> (state, info)`` over a ``log_likelihood_fn(key,
theta)``; :func:`particle_log_likelihood_fn` builds one from ``ssm_fn(theta) ->
StateSpaceModel`` and the observations, and :func:`pmmh` runs the chain under one
``lax.scan``.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from ppl.inference import smc
    >>> def ssm_fn(theta):
    ...     return smc.StateSpaceModel(
    ...         sample_initial=lambda key, n: jax.random.normal(key, (n,)),
    ...         sample_transition=lambda key, t, x: theta * x + jax.random.normal(key, x.shape),
    ...         log_observation=lambda t, x, y: jax.scipy.stats.norm.logpdf(y, x, 1.0))
    >>> res = smc.pmmh(jax.random.key(0), ssm_fn, jnp.zeros(20), jnp.asarray(0.5),
    ...                log_prior_fn=lambda th: jnp.where(jnp.abs(th) < 1, 0.0, -jnp.inf),
    ...                num_samples=50, proposal_scale=0.2, num_particles=64)
    >>> res.samples.shape
    (50,)

References:
    Andrieu, C., Doucet, A. and Holenstein, R. (2010). Particle Markov chain Monte Carlo
    methods. JRSS B 72(3), 269-342.
    Doucet, A., Pitt, M. K., Deligiannidis, G. and Kohn, R. (2015). Efficient implementation
    of Markov chain Monte Carlo when using an unbiased likelihood estimator. Biometrika.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, PRNGKeyArray
from ppl.inference.smc import base
from ppl.inference.smc.particle_filter import StateSpaceModel, log_likelihood_estimate

__all__ = [
    "PMMHState",
    "PMMHInfo",
    "PMMHResult",
    "init",
    "build_step",
    "particle_log_likelihood_fn",
    "pmmh",
]


class PMMHState(NamedTuple):
    """The chain's state.

    Attributes:
        position: the parameters ``theta`` (any pytree of arrays).
        log_likelihood: the particle estimate ``log p_hat(y | theta)`` that came with it
            (kept, not refreshed, while the chain stays: that is what makes PMMH exact).
        log_prior: ``log p(theta)``.
    """

    position: Any
    log_likelihood: Float[Array, ""]
    log_prior: Float[Array, ""]


class PMMHInfo(NamedTuple):
    """What one step did.

    Attributes:
        acceptance_probability: ``min(1, ratio)`` of the proposal.
        is_accepted: whether it was accepted.
        proposed_log_likelihood: the estimate at the proposal (``-inf`` if the filter
            collapsed or returned NaN).
    """

    acceptance_probability: Float[Array, ""]
    is_accepted: Bool[Array, ""]
    proposed_log_likelihood: Float[Array, ""]


class PMMHResult(NamedTuple):
    """Output of :func:`pmmh`.

    Attributes:
        samples: the chain's positions, leaves ``(num_samples, ...)``.
        log_likelihoods: ``(num_samples,)`` the estimates carried by the chain.
        acceptance_rate: fraction of accepted proposals.
        info: per-step :class:`PMMHInfo`.
        meta: wall time and settings.
    """

    samples: Any
    log_likelihoods: Float[Array, " num_samples"]
    acceptance_rate: float
    info: PMMHInfo
    meta: dict


def _finite_or_minus_inf(value):
    # A collapsed filter (-inf) or a NaN estimate must mean "reject", never "accept".
    value = jnp.asarray(value)
    return jnp.where(jnp.isnan(value), -jnp.inf, value)


def init(
    key: PRNGKeyArray,
    position: Any,
    *,
    log_likelihood_fn: Callable[[PRNGKeyArray, Any], Float[Array, ""]],
    log_prior_fn: Callable[[Any], Float[Array, ""]],
) -> PMMHState:
    """The initial state: one likelihood estimate at ``position``."""
    log_likelihood = _finite_or_minus_inf(log_likelihood_fn(key, position))
    return PMMHState(position, log_likelihood, jnp.asarray(log_prior_fn(position)))


def build_step(
    *,
    log_likelihood_fn: Callable[[PRNGKeyArray, Any], Float[Array, ""]],
    log_prior_fn: Callable[[Any], Float[Array, ""]],
    proposal_scale: float | Array,
) -> Callable[[PRNGKeyArray, PMMHState], tuple[PMMHState, PMMHInfo]]:
    """A PMMH step with a Gaussian random-walk proposal.

    Args:
        log_likelihood_fn: ``(key, theta) -> log p_hat(y | theta)``, an unbiased estimate on
            the exp scale (e.g. from :func:`particle_log_likelihood_fn`).
        log_prior_fn: ``theta -> log p(theta)`` (``-inf`` outside the support).
        proposal_scale: the random walk's standard deviation, a scalar or one per
            coordinate of the flattened ``theta``.

    Returns:
        ``step(key, state) -> (state, info)``, pure and not jitted (the caller jits).
    """
    scale = np.asarray(proposal_scale, np.float64) if not isinstance(
        proposal_scale, jax.Array) else proposal_scale
    if isinstance(scale, np.ndarray) and (not np.all(np.isfinite(scale)) or np.any(scale <= 0)):
        raise ValueError(f"Expected a positive, finite proposal_scale, got {proposal_scale!r}.")

    def step(key: PRNGKeyArray, state: PMMHState) -> tuple[PMMHState, PMMHInfo]:
        move_key, filter_key, accept_key = jax.random.split(key, 3)
        flat, unravel = ravel_pytree(state.position)
        noise = jax.random.normal(move_key, flat.shape, flat.dtype)
        proposal = unravel(flat + jnp.asarray(scale, flat.dtype) * noise)
        log_prior = jnp.asarray(log_prior_fn(proposal))
        # Outside the prior's support the filter's answer does not matter; it still runs
        # (no data-dependent branch), and -inf + anything stays a rejection.
        log_likelihood = _finite_or_minus_inf(log_likelihood_fn(filter_key, proposal))
        log_ratio = (log_likelihood + log_prior) - (state.log_likelihood + state.log_prior)
        log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
        accepted = jnp.log(jax.random.uniform(accept_key)) < log_ratio
        new = jax.tree_util.tree_map(
            lambda a, b: jnp.where(accepted, a, b),
            PMMHState(proposal, log_likelihood, log_prior), state,
        )
        info = PMMHInfo(jnp.exp(jnp.minimum(log_ratio, 0.0)), accepted, log_likelihood)
        return new, info

    return step


def particle_log_likelihood_fn(
    ssm_fn: Callable[[Any], StateSpaceModel],
    observations: Any,
    *,
    num_particles: int = 1000,
    resampling: str | Callable = "systematic",
    ess_threshold: float = 0.5,
    prng_impl: str | None = "threefry_fused",
) -> Callable[[PRNGKeyArray, Any], Float[Array, ""]]:
    """``(key, theta) -> log p_hat(y | theta)`` by the bootstrap filter on ``ssm_fn(theta)``.

    ``ssm_fn`` maps parameters to a :class:`StateSpaceModel` (or any object with
    ``sample_initial``, ``sample_transition`` and ``log_observation``, such as the zoo's
    ``lgssm_state_space(params)``); it is called on traced parameters.
    """
    num_particles = base.check_num_particles(num_particles)
    base.check_ess_threshold(ess_threshold)
    observations = jax.tree_util.tree_map(jnp.asarray, observations)

    def log_likelihood_fn(key, theta):
        ssm = ssm_fn(theta)
        if not isinstance(ssm, StateSpaceModel):
            ssm = StateSpaceModel(ssm.sample_initial, ssm.sample_transition, ssm.log_observation)
        return log_likelihood_estimate(
            key, ssm, observations, num_particles=num_particles, resampling=resampling,
            ess_threshold=ess_threshold, prng_impl=prng_impl,
        )

    return log_likelihood_fn


class _Config(NamedTuple):
    num_samples: int
    num_particles: int
    resampling: Any
    ess_threshold: float
    prng_impl: str | None


@eqx.filter_jit
def _run_chain(key, ssm_fn, log_prior_fn, observations, initial_position, proposal_scale,
               config: _Config):
    log_likelihood_fn = particle_log_likelihood_fn(
        ssm_fn, observations, num_particles=config.num_particles,
        resampling=config.resampling, ess_threshold=config.ess_threshold,
        prng_impl=config.prng_impl,
    )
    init_key, chain_key = jax.random.split(key)
    state = init(init_key, initial_position, log_likelihood_fn=log_likelihood_fn,
                 log_prior_fn=log_prior_fn)
    step = build_step(log_likelihood_fn=log_likelihood_fn, log_prior_fn=log_prior_fn,
                      proposal_scale=proposal_scale)

    def body(state, key):
        state, info = step(key, state)
        return state, (state.position, state.log_likelihood, info)

    _, (samples, log_likelihoods, info) = jax.lax.scan(
        body, state, jax.random.split(chain_key, config.num_samples))
    return samples, log_likelihoods, info, state.log_likelihood  # the initial estimate


def pmmh(
    key: PRNGKeyArray,
    ssm_fn: Callable[[Any], StateSpaceModel],
    observations: Any,
    initial_position: Any,
    *,
    log_prior_fn: Callable[[Any], Float[Array, ""]],
    num_samples: int = 1000,
    proposal_scale: float | Array = 0.1,
    num_particles: int = 500,
    resampling: str | Callable = "systematic",
    ess_threshold: float = 0.5,
    prng_impl: str | None = "threefry_fused",
) -> PMMHResult:
    """Run a PMMH chain of ``num_samples`` steps (one compiled ``lax.scan``).

    Args:
        key: PRNG key (or an int seed).
        ssm_fn: ``theta -> StateSpaceModel``, called on traced parameters.
        observations: pytree with leading time axis ``T``.
        initial_position: the starting ``theta`` (a pytree of arrays); must have finite
            prior density and a finite likelihood estimate.
        log_prior_fn: ``theta -> log p(theta)``.
        num_samples: chain length (every step kept; discard burn-in yourself).
        proposal_scale: random-walk standard deviation on the flattened ``theta``. Choose it
            so that about 15-30% of proposals are accepted, and the particle count so that
            the log-likelihood estimate's sd is about 1-1.5 (Doucet et al. 2015).
        num_particles: particles of each filter run.
        resampling, ess_threshold, prng_impl: passed to the filter.

    Returns:
        A :class:`PMMHResult`.

    Raises:
        ValueError: bad settings, or an initial position whose prior density or likelihood
            estimate is zero.
    """
    num_samples = base.check_num_particles(num_samples, "num_samples")
    num_particles = base.check_num_particles(num_particles)
    ess_threshold = base.check_ess_threshold(ess_threshold)
    initial_position = jax.tree_util.tree_map(jnp.asarray, initial_position)
    if not np.isfinite(float(log_prior_fn(initial_position))):
        raise ValueError("Expected initial_position inside the prior's support "
                         "(finite log_prior_fn), got log density -inf or NaN.")
    scale = jnp.asarray(proposal_scale, jnp.result_type(float))
    if not bool(jnp.all(jnp.isfinite(scale) & (scale > 0))):
        raise ValueError(f"Expected a positive, finite proposal_scale, got {proposal_scale!r}.")
    observations = jax.tree_util.tree_map(jnp.asarray, observations)
    config = _Config(num_samples, num_particles, resampling, ess_threshold, prng_impl)
    from ppl.infer import as_key  # as in sample_particle_filter: an int seed is a key too

    start = time.perf_counter()
    samples, log_likelihoods, info, initial_log_likelihood = jax.block_until_ready(_run_chain(
        as_key(key), ssm_fn, log_prior_fn, observations, initial_position, scale, config))
    if not np.isfinite(float(initial_log_likelihood)):
        # From -inf the first finite proposal is always accepted: not a valid PMMH chain.
        raise ValueError(
            "Expected initial_position with a finite particle log-likelihood estimate, got "
            "-inf or NaN: start where the model can explain the data, or use more particles.")
    return PMMHResult(
        samples=samples,
        log_likelihoods=log_likelihoods,
        acceptance_rate=float(np.mean(np.asarray(info.is_accepted))),
        info=info,
        meta={"wall_time": time.perf_counter() - start, "settings": config._asdict()},
    )
