"""Adaptive tempered SMC for any Model: ``ppl.infer(model, "smc", key=..., num_particles=2000)``.

The Feynman-Kac model anneals from the prior to the posterior through

    pi_b(z) ∝ p(z) L(z)^b,     0 = b_0 < b_1 < ... < b_K = 1,

with potentials ``G_k(z) = L(z)^(b_k - b_{k-1})`` and moves ``M_k`` that leave ``pi_{b_k}``
invariant. At each temperature:

1. **next temperature** by bisection so that the conditional ESS
   ``(sum_i W_i G_i)^2 / sum_i W_i G_i^2`` equals ``target_ess`` (Zhou, Johansen & Aston 2016);
2. **reweight**, ``log Z += log sum_i W_i G_i`` (the log-evidence estimate, unbiased on the
   exp scale);
3. **resample** (systematic) and **tune** the kernel from the particle population: the
   (dense or diagonal) weighted covariance of the particles is the inverse mass matrix of
   HMC/NUTS (or the random walk's proposal covariance), cross-fitted: a particle descended
   from one half of the population moves with the other half's covariance, so that no
   kernel is tuned on the particle it moves (without this, log Z was biased by +10 on a
   25-D Gaussian with 500 particles); the step size follows the previous
   acceptance rate (a Robbins-Monro step on ``log step_size`` towards ``target_accept``);
4. **move** with the MCMC kernels of :mod:`ppl.inference.mcmc` (HMC, NUTS) or a random walk,
   repeated until a particle has moved at least once with probability 0.99 given the
   measured acceptance rate (``log 0.01 / log(1 - acc)`` steps, within
   ``[min_mcmc_steps, max_mcmc_steps]``), or, **waste-free** (Dau & Chopin 2022), resample
   only ``M = N / P`` particles, run each for ``P - 1`` steps and keep every state.
   HMC integrates for a fixed time in whitened units (``trajectory_length``, default 1.5,
   about a quarter period of a Gaussian target), so the number of leapfrog steps follows
   the step size.

The log-likelihood and its gradient are carried with the particles and recovered from the
kernel's final states (``log L = (log pi_b - log p) / b``), so a temperature costs the
moves' gradients plus prior terms only, no separate likelihood evaluation.

The loop over temperatures is a host loop over one jitted per-temperature step (the model
is an argument of ``eqx.filter_jit``; shapes never change, so it compiles once per model
structure and settings, and never again for new data or keys). The number of temperatures
is unknown in advance; a host loop keeps the history exact-sized, lets the progress bar
and errors name the temperature reached, and costs one small device-host sync per
temperature (tens of microseconds against milliseconds of MCMC moves).

With several devices (``devices=``, :mod:`ppl.sharding`) only the moves are split over
them: the population steps (temperature search, reweighting, resampling, the cross-fitted
covariance) run replicated on every device, on the same arrays and in the same order as on
one device, so that no partitioned reduction changes their rounding (the result does not
depend on the device count). The cost: an all-gather of the acceptance rates every MCMC
step, and of the moved particles (positions, log-likelihoods, gradients) every temperature.

References:
    Del Moral, P., Doucet, A. and Jasra, A. (2006). Sequential Monte Carlo samplers. JRSS B.
    Zhou, Y., Johansen, A. M. and Aston, J. A. D. (2016). Toward automatic model comparison:
    an adaptive sequential Monte Carlo approach. JCGS.
    Buchholz, A., Chopin, N. and Jacob, P. E. (2021). Adaptive tuning of Hamiltonian Monte
    Carlo within sequential Monte Carlo. Bayesian Analysis.
    Dau, H.-D. and Chopin, N. (2022). Waste-free sequential Monte Carlo. JRSS B.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.mcmc.random_walk import RWState, build_additive_step
from blackjax.mcmc.random_walk import init as rw_init
from ppl.inference.checkpoint import RunCheckpoint, describe_model
from ppl.inference.mcmc import kernels
from ppl.inference.smc import base
from ppl.inference.smc.resampling import get_resampler, normalize_log_weights

from ppl.infer import as_key
from ppl.model import AbstractModel
from ppl.posterior import Posterior
from ppl.progress import ProgressBar
from ppl.sharding import DevicesLike, Placement, gather_to_host, resolve_devices

__all__ = ["TemperedState", "TemperedInfo", "init", "step", "sample_smc", "random_walk"]

_KERNELS = ("hmc", "nuts", "rw")
_MAX_INTEGRATION_STEPS = 64


class TemperedState(NamedTuple):
    """Particles at one temperature.

    Attributes:
        particles: ``(N, dim)`` unconstrained positions.
        log_likelihood: ``(N,)`` ``log L`` at the particles.
        log_likelihood_grad: ``(N, dim)`` its gradient (HMC/NUTS; zeros for the random walk),
            carried so that a temperature step never re-evaluates the likelihood outside
            its moves.
        log_weights: ``(N,)`` unnormalised log-weights.
        temperature: current ``b``.
        log_evidence: running ``log Z_b`` estimate.
        step_size: current kernel step size (in units of the population's scale).
    """

    particles: jax.Array
    log_likelihood: jax.Array
    log_likelihood_grad: jax.Array
    log_weights: jax.Array
    temperature: jax.Array
    log_evidence: jax.Array
    step_size: jax.Array


class TemperedInfo(NamedTuple):
    """What one temperature step did (all scalars)."""

    temperature: jax.Array
    ess: jax.Array
    acceptance_rate: jax.Array
    num_mcmc_steps: jax.Array
    num_integration_steps: jax.Array
    step_size: jax.Array
    log_evidence_increment: jax.Array
    num_gradient_evals: jax.Array
    all_zero: jax.Array


class _Settings(NamedTuple):
    num_particles: int
    kernel: str
    target_ess: float
    target_accept: float
    min_mcmc_steps: int
    max_mcmc_steps: int
    num_integration_steps: int
    max_tree_depth: int
    dense_mass: bool
    waste_free: bool
    chain_length: int
    num_bisection_steps: int
    trajectory_length: float


def random_walk(logdensity_fn, *, step_size, scale_matrix):
    """Gaussian random-walk Metropolis with proposal ``z + step_size * scale_matrix @ e``.

    ``scale_matrix`` is ``(dim,)`` (diagonal) or ``(dim, dim)`` (a Cholesky factor).
    Returns ``SamplingAlgorithm(init, step)`` over BlackJAX's additive-step RMH kernel.
    """
    kernel = build_additive_step()

    def random_step(key, position):
        noise = jax.random.normal(key, position.shape, position.dtype)
        if jnp.ndim(scale_matrix) == 2:
            return step_size * (scale_matrix @ noise)
        return step_size * scale_matrix * noise

    def init(position):
        return rw_init(position, logdensity_fn)

    def step(key, state):
        return kernel(key, state, logdensity_fn, random_step)

    return kernels.SamplingAlgorithm(init, step)


def _log_potential(log_likelihood, delta):
    # 0 * (-inf) would be NaN: a zero likelihood stays a zero weight.
    return jnp.where(log_likelihood == -jnp.inf, -jnp.inf, delta * log_likelihood)


def _cess_fraction(log_w, log_likelihood, delta):
    log_g = _log_potential(log_likelihood, delta)
    num = 2.0 * jax.scipy.special.logsumexp(log_w + log_g)
    den = jax.scipy.special.logsumexp(log_w + 2.0 * log_g)
    return jnp.exp(num - den)


def next_temperature(log_weights, log_likelihood, temperature, target_ess, num_steps=60):
    """Largest ``b' <= 1`` with conditional ESS fraction ``>= target_ess`` (bisection)."""
    log_w = normalize_log_weights(log_weights)
    room = 1.0 - temperature
    ok_all = _cess_fraction(log_w, log_likelihood, room) >= target_ess

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        good = _cess_fraction(log_w, log_likelihood, mid) >= target_ess
        return jnp.where(good, mid, lo), jnp.where(good, hi, mid)

    lo, hi = jax.lax.fori_loop(0, num_steps, body, (jnp.zeros_like(room), room))
    # Always make progress: at least the smallest step bisection could resolve.
    delta = jnp.where(ok_all, room, jnp.maximum(lo, hi * 2.0**-num_steps))
    return jnp.minimum(temperature + delta, 1.0), delta


def _population_scale(particles, log_weights, dense: bool):
    """Inverse mass matrix (weighted population covariance) and its square root.

    Estimated from all ``N`` weighted particles at the new temperature (not from the
    ``N / P`` resampled starts of the waste-free variant: 50 points cannot estimate a
    25-D covariance).
    """
    w = jnp.exp(normalize_log_weights(log_weights))
    mean = w @ particles
    centred = particles - mean
    if dense:
        cov = (centred * w[:, None]).T @ centred
        cov = 0.5 * (cov + cov.T)
        cov = cov + 1e-8 * jnp.eye(cov.shape[0]) * (1e-8 + jnp.trace(cov) / cov.shape[0])
        return cov, jnp.linalg.cholesky(cov)
    var = w @ centred**2 + 1e-12
    return var, jnp.sqrt(var)


def _cross_fitted_scale(particles, log_weights, ancestors, dense: bool):
    """Per-particle mass matrices estimated from the *other* half of the population.

    A kernel tuned on the very particles it moves is not invariant for them: with a dense
    ``D x D`` covariance from a few hundred particles, that feedback biased log Z upwards by
    about +10 at D = 25 (the kernel alone, with the same noisy matrices held fixed, is
    invariant). Cross-fitting breaks the feedback: the population is split in two halves by
    index, and a particle whose ancestor lies in one half is moved with the covariance of
    the other. When either half holds under 5% of the weight, both use the full population.

    Returns:
        ``(imm, scale)`` with a leading axis over the resampled particles.
    """
    num = particles.shape[0]
    in_first = jnp.arange(num) < num // 2
    log_w = normalize_log_weights(log_weights)
    weight_first = jnp.sum(jnp.where(in_first, jnp.exp(log_w), 0.0))
    balanced = (weight_first > 0.05) & (weight_first < 0.95)
    full = _population_scale(particles, log_w, dense)
    first = _population_scale(particles, jnp.where(in_first, log_w, -jnp.inf), dense)
    second = _population_scale(particles, jnp.where(in_first, -jnp.inf, log_w), dense)
    pick = lambda a, b: jnp.where(balanced, a, b)  # noqa: E731
    first = jax.tree_util.tree_map(pick, first, full)
    second = jax.tree_util.tree_map(pick, second, full)
    use_second = ancestors < num // 2  # ancestor in the first half: the second half's matrix
    return jax.tree_util.tree_map(
        lambda a, b: jnp.where(
            jnp.reshape(use_second, (-1,) + (1,) * a.ndim), b[None], a[None]),
        first, second)


def _make_kernel(model, temperature, step_size, inverse_mass_matrix, scale, settings,
                 num_integration_steps=None):
    def logdensity_fn(z):
        # temperature > 0 here (every step makes progress), so no 0 * (-inf) guard: the
        # guard's per-particle select made XLA's CPU gradient transpose the (N, data)
        # cotangent, 2.3x the cost of the plain product on the benchmark's regression.
        return model.log_prior(z) + temperature * model.log_likelihood(z)

    if settings.kernel == "hmc":
        algo = kernels.hmc(logdensity_fn, step_size=step_size,
                           inverse_mass_matrix=inverse_mass_matrix,
                           num_integration_steps=num_integration_steps)
    elif settings.kernel == "nuts":
        algo = kernels.nuts(logdensity_fn, step_size=step_size,
                            inverse_mass_matrix=inverse_mass_matrix,
                            max_num_doublings=settings.max_tree_depth)
    else:
        algo = random_walk(logdensity_fn, step_size=step_size, scale_matrix=scale)
    return algo


def _num_grads(info, settings, num_integration_steps):
    if settings.kernel == "hmc":
        return jnp.asarray(num_integration_steps, jnp.float32)
    if settings.kernel == "nuts":
        return jnp.asarray(info.num_integration_steps, jnp.float32)
    return jnp.zeros((), jnp.float32)


def init(key, model: AbstractModel, num_particles: int, initial_step_size: float,
         with_grad: bool = True) -> TemperedState:
    """Particles from the prior at temperature 0 (pure; the caller jits)."""
    particles = model.sample_prior(key, num_particles)
    particles = jnp.asarray(particles, jnp.result_type(float))
    if with_grad:
        log_likelihood, grad = jax.vmap(jax.value_and_grad(model.log_likelihood))(particles)
    else:
        log_likelihood = jax.vmap(model.log_likelihood)(particles)
        grad = jnp.zeros_like(particles)
    zero = jnp.zeros((), particles.dtype)
    return TemperedState(
        particles, log_likelihood, grad, jnp.zeros(num_particles, particles.dtype), zero,
        zero, jnp.asarray(initial_step_size, particles.dtype),
    )


def _kernel_state(model, positions, log_likelihood, log_likelihood_grad, temperature, kernel):
    """The MCMC state at ``temperature`` from carried likelihood values (prior terms only)."""
    if kernel == "rw":
        log_prior = jax.vmap(model.log_prior)(positions)
        return RWState(positions, log_prior + _log_potential(log_likelihood, temperature))
    log_prior, prior_grad = jax.vmap(jax.value_and_grad(model.log_prior))(positions)
    return kernels.HMCState(
        positions, log_prior + _log_potential(log_likelihood, temperature),
        prior_grad + temperature * log_likelihood_grad)


def _likelihood_from_state(model, states, temperature, kernel):
    """``(log L, grad log L)`` recovered from the tempered density ``log p + b log L``.

    ``b > 0`` after every step. The division costs float32 rounding of order
    ``eps |log p + b log L| / b`` in ``log L``, which enters the next increment multiplied by
    the next temperature step (about ``b``): of order ``eps`` in log Z, far below its
    Monte Carlo error, and it saves one likelihood evaluation per particle per temperature.
    """
    positions = states.position
    if kernel == "rw":
        log_prior = jax.vmap(model.log_prior)(positions)
        ll = (states.logdensity - log_prior) / temperature
        return ll, jnp.zeros_like(positions)
    log_prior, prior_grad = jax.vmap(jax.value_and_grad(model.log_prior))(positions)
    ll = (states.logdensity - log_prior) / temperature
    grad = (states.logdensity_grad - prior_grad) / temperature
    return ll, grad


def _on(tree, sharding):
    """``tree`` constrained to ``sharding`` (no-op without a placement)."""
    if sharding is None:
        return tree
    return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def step(key, state: TemperedState, model: AbstractModel, settings: _Settings,
         placement: Placement | None = None):
    """One temperature: choose ``b'``, reweight, resample, tune, move (pure; the caller jits).

    With a ``placement`` the moves run split over its devices and everything else
    replicated (see the module docstring)."""
    split = None if placement is None else jax.sharding.PartitionSpec(placement.axis_name)
    whole = None if placement is None else placement.replicated
    state = _on(state, whole)
    n = settings.num_particles
    temp_key, resample_key, move_key = jax.random.split(key, 3)
    del temp_key
    temperature, delta = next_temperature(
        state.log_weights, state.log_likelihood, state.temperature, settings.target_ess,
        settings.num_bisection_steps,
    )
    log_w = normalize_log_weights(state.log_weights)
    ess = jnp.exp(-jax.scipy.special.logsumexp(2 * log_w))
    log_g = _log_potential(state.log_likelihood, delta)
    log_weights, increment, _, all_zero = base.reweight(log_w, log_g)

    num_start = n // settings.chain_length if settings.waste_free else n
    resample_fn = get_resampler("systematic")
    ancestors = resample_fn(resample_key, log_weights, num_start)
    starts = base.gather(state.particles, ancestors)
    imm, scale = _cross_fitted_scale(state.particles, log_weights, ancestors,
                                     settings.dense_mass)
    step_size = state.step_size
    if settings.num_integration_steps > 0:
        num_leapfrog = jnp.asarray(settings.num_integration_steps, jnp.int32)
    else:
        # A fixed trajectory length in whitened units (the mass matrix is the population
        # covariance): about a quarter period of a Gaussian target, where the end point
        # is least correlated with the start, whatever step size the acceptance asks for.
        num_leapfrog = jnp.clip(jnp.round(settings.trajectory_length / step_size), 1,
                                _MAX_INTEGRATION_STEPS).astype(jnp.int32)
    mcmc_states = _kernel_state(
        model, starts, base.gather(state.log_likelihood, ancestors),
        base.gather(state.log_likelihood_grad, ancestors), temperature, settings.kernel)

    def vstep(keys, states):
        def one(key, mcmc_state, imm_i, scale_i):
            kernel = _make_kernel(model, temperature, step_size, imm_i, scale_i, settings,
                                  num_leapfrog)
            return kernel.step(key, mcmc_state)

        if placement is None:
            return jax.vmap(one)(keys, states, imm, scale)
        # Each device moves its own slice (shard_map: NUTS's while-loops stop per device,
        # with no agreement across devices per iteration); the moved states stay split,
        # the acceptance rates are averaged on full copies.
        new_states, info = jax.shard_map(
            jax.vmap(one), mesh=placement.mesh, in_specs=split, out_specs=split,
            check_vma=False)(keys, states, imm, scale)
        return new_states, _on(info, whole)

    if settings.waste_free:
        def chain_step(carry, key):
            states = carry
            states, info = vstep(jax.random.split(key, num_start), states)
            acc = jnp.nan_to_num(info.acceptance_rate, nan=0.0)
            return states, (states, acc, _num_grads(info, settings, num_leapfrog))

        keys = jax.random.split(move_key, settings.chain_length - 1)
        _, (chain, acc, grads) = jax.lax.scan(chain_step, mcmc_states, keys)
        chain = _on(chain, whole)
        states = jax.tree_util.tree_map(
            lambda a, b: jnp.concatenate([a[None], b], axis=0).reshape((n,) + a.shape[1:]),
            mcmc_states, chain)
        particles = states.position
        acceptance = jnp.mean(acc)
        num_steps = jnp.asarray(settings.chain_length - 1, jnp.int32)
        num_grads = jnp.sum(grads) * num_start
    else:
        def one_step(carry):
            i, states, key, acc_sum, grads = carry
            key, sub = jax.random.split(key)
            states, info = vstep(jax.random.split(sub, n), states)
            acc = jnp.mean(jnp.nan_to_num(info.acceptance_rate, nan=0.0))
            grads = grads + jnp.sum(_num_grads(info, settings, num_leapfrog) * jnp.ones(n))
            return i + 1, states, key, acc_sum + acc, grads

        zero = jnp.zeros((), jnp.float32)
        first = one_step((jnp.zeros((), jnp.int32), mcmc_states, move_key, zero, zero))
        acc1 = jnp.clip(first[3], 1e-3, 0.999)
        wanted = jnp.ceil(jnp.log(0.01) / jnp.log1p(-acc1)).astype(jnp.int32)
        num_steps = jnp.clip(wanted, settings.min_mcmc_steps, settings.max_mcmc_steps)
        last = jax.lax.while_loop(lambda c: c[0] < num_steps, one_step, first)
        _, states, _, acc_sum, num_grads = last
        states = _on(states, whole)
        particles = states.position
        acceptance = acc_sum / num_steps.astype(acc_sum.dtype)

    log_likelihood, log_likelihood_grad = _likelihood_from_state(
        model, states, temperature, settings.kernel)
    new_step_size = step_size * jnp.exp(
        jnp.clip(acceptance - settings.target_accept, -0.5, 0.5)
    )
    new_state = TemperedState(
        particles, log_likelihood, log_likelihood_grad, jnp.zeros(n, particles.dtype),
        temperature,
        state.log_evidence + increment, new_step_size.astype(step_size.dtype),
    )
    # Leapfrog steps per move: HMC only (NUTS chooses its own, the random walk has none).
    leapfrog_info = num_leapfrog if settings.kernel == "hmc" else jnp.zeros((), jnp.int32)
    info = TemperedInfo(temperature, ess, acceptance, num_steps, leapfrog_info, step_size,
                        increment, num_grads, all_zero)
    return _on(new_state, whole), _on(info, whole)


_init_jit = eqx.filter_jit(init)
_step_jit = eqx.filter_jit(step)


@eqx.filter_jit
def _prior_checks(model, particles):
    lp = jax.vmap(model.log_prior)(particles)
    return lp


@eqx.filter_jit
def _constrain(model, z):
    return jax.vmap(model.to_constrained)(z)


def _check_inputs(model, num_particles, kernel, target_ess, waste_free, chain_length):
    if not isinstance(model, AbstractModel):
        raise TypeError(
            "Expected a ppl Model (ppl.from_numpyro or ppl.from_logdensity), got "
            f"{type(model).__name__}."
        )
    if model.discrete_sites:
        # The moves (HMC, NUTS, random walk) act on the flat continuous vector.
        raise ValueError(
            f"Tempered SMC needs continuous latents; discrete site(s) "
            f"{list(model.discrete_sites)}: marginalise them out in the model, or, for a "
            "state-space model, use method='particle_filter'."
        )
    base.check_num_particles(num_particles)
    if num_particles < 2:
        # One particle has ESS 1 at every temperature: resampling is a no-op, the adaptive
        # temperature search and the population covariance are undefined.
        raise ValueError(
            f"Expected num_particles >= 2 for tempered SMC (resampling and the ESS need at "
            f"least 2 particles), got {num_particles!r}; use thousands for a log-evidence."
        )
    if kernel not in _KERNELS:
        raise ValueError(f"Expected kernel in {_KERNELS}, got {kernel!r}.")
    if not 0.0 < float(target_ess) < 1.0:
        raise ValueError(f"Expected target_ess in (0, 1), got {target_ess!r}.")
    if waste_free:
        if chain_length < 2 or num_particles % chain_length != 0:
            raise ValueError(
                "Expected chain_length >= 2 dividing num_particles for waste-free SMC, got "
                f"chain_length={chain_length}, num_particles={num_particles}."
            )


def _placement(devices: DevicesLike, settings: _Settings) -> Placement | None:
    """The devices the moves run on, or None for one device (the unsharded program)."""
    placement = resolve_devices(devices, "particle")
    batch = (settings.num_particles // settings.chain_length if settings.waste_free
             else settings.num_particles)
    num = placement.num_devices
    if batch % num:
        what = ("N / chain_length = " if settings.waste_free else "num_particles = ") + str(batch)
        if devices is not None or placement.multi_process:
            raise ValueError(
                f"Tempered SMC moves {what} particles, which do not split evenly over {num} "
                f"devices (padding would change the population): choose a multiple of {num}, "
                "or devices= a count that divides it."
            )
        num = max(k for k in range(1, num + 1) if batch % k == 0)
        warnings.warn(
            f"Tempered SMC: {what} particles do not split evenly over {placement.num_devices}"
            f" devices; the moves run on {num}. Choose a multiple of {placement.num_devices} "
            "to use them all.", UserWarning, stacklevel=3,
        )
        placement = resolve_devices(placement.devices[:num], "particle")
    return placement if num > 1 else None


def sample_smc(
    key,
    model: AbstractModel,
    *,
    num_particles: int = 2000,
    kernel: str = "hmc",
    target_ess: float = 0.5,
    target_accept: float | None = None,
    min_mcmc_steps: int = 2,
    max_mcmc_steps: int = 50,
    num_integration_steps: int | None = None,
    trajectory_length: float = 1.5,
    max_tree_depth: int = 6,
    dense_mass: bool | None = None,
    waste_free: bool = False,
    chain_length: int = 10,
    initial_step_size: float | None = None,
    max_num_temperatures: int = 1000,
    progress_bar: bool | None = None,
    checkpoint_dir: str | None = None,
    devices: DevicesLike = None,
) -> Posterior:
    """Adaptive tempered SMC from the prior to the posterior, with the log-evidence.

    Args:
        key: a JAX PRNG key (or an int seed).
        model: a ppl Model with a prior sampler (``sample_prior``).
        num_particles: ``N``.
        kernel: MCMC move, "hmc", "nuts" (:mod:`ppl.inference.mcmc`) or "rw" (random walk).
        target_ess: conditional-ESS fraction that fixes the next temperature, in (0, 1).
        target_accept: acceptance rate the step size is steered to (default 0.75 for HMC,
            0.8 for NUTS, 0.3 for the random walk).
        min_mcmc_steps, max_mcmc_steps: bounds on the adaptive number of moves.
        num_integration_steps: HMC leapfrog steps per move; default: adapted at each
            temperature to ``round(trajectory_length / step_size)`` (at most 64).
        trajectory_length: HMC integration time per move in whitened units (the mass matrix
            is the population covariance), when ``num_integration_steps`` is None. The default
            1.5, about a quarter period of a Gaussian target, moves a particle to a point
            nearly uncorrelated with its start; 4 steps of 0.9 (3.6, half a period) sent it
            back near its mirror image and gave a 5x larger log Z sd on a logistic regression.
        max_tree_depth: NUTS's maximum number of doublings.
        dense_mass: dense population covariance (default: when ``dim <= 100``), cross-fitted
            between two halves of the population (see ``_cross_fitted_scale``).
        waste_free: waste-free moves: ``N / chain_length`` chains of ``chain_length`` states.
        chain_length: ``P`` for the waste-free variant (must divide ``num_particles``).
        initial_step_size: starting step size in whitened units (default: HMC/NUTS
            ``dim^-1/4``, random walk ``2.38 / sqrt(dim)``).
        max_num_temperatures: stop with an error beyond this many temperatures.
        progress_bar: show a progress bar over the temperature (default: on a terminal).
        checkpoint_dir: a directory where the run records itself after every temperature
            (:mod:`ppl.inference.checkpoint`); calling again with the same arguments after an
            interruption resumes from the last recorded temperature, with the same result as
            an uninterrupted run. A directory holding another run is refused, naming what
            differs. With the particles on several processes (``jax.distributed``), process 0
            writes the directory and every process reads it on resume: it must be on a
            filesystem shared by all of them, and a process that reads other content there
            than process 0 is refused, naming the directory.
        devices: where the moves run (:func:`ppl.sharding.resolve_devices`): default all
            devices of all processes. The moved batch (``N``, or ``N / chain_length``
            waste-free) must divide by their count: otherwise an explicit ``devices`` is
            refused and the default uses the most devices that divide it, with a warning
            (padding would change the population). The result does not depend on it. Under
            ``jax.distributed`` call this on every process: each gets all the particles.

    Returns:
        A :class:`~ppl.Posterior` with one chain of ``N`` equally weighted draws (``log_weights``
        zero), ``log_evidence``, and per-temperature ``history`` (temperature, ess,
        acceptance_rate, num_mcmc_steps, num_integration_steps (HMC), step_size,
        log_evidence_increment, num_gradient_evals).

    Raises:
        ValueError: bad settings, NaN log-likelihood at prior draws, or all weights zero at
            some temperature (the message names it).
    """
    _check_inputs(model, num_particles, kernel, target_ess, waste_free, chain_length)
    dim = model.dim
    if target_accept is None:
        target_accept = {"hmc": 0.75, "nuts": 0.8, "rw": 0.3}[kernel]
    if not 0.0 < float(target_accept) < 1.0:
        raise ValueError(f"Expected target_accept in (0, 1), got {target_accept!r}.")
    if not float(trajectory_length) > 0.0:
        raise ValueError(f"Expected trajectory_length > 0, got {trajectory_length!r}.")
    if num_integration_steps is not None and int(num_integration_steps) < 1:
        raise ValueError(
            f"Expected num_integration_steps >= 1 (or None), got {num_integration_steps!r}.")
    if dense_mass is None:
        dense_mass = dim <= 100
    if initial_step_size is None:
        initial_step_size = 2.38 / math.sqrt(dim) if kernel == "rw" else dim**-0.25
    settings = _Settings(
        int(num_particles), kernel, float(target_ess), float(target_accept),
        int(min_mcmc_steps), int(max_mcmc_steps),
        0 if num_integration_steps is None else int(num_integration_steps),
        int(max_tree_depth), bool(dense_mass), bool(waste_free), int(chain_length), 60,
        float(trajectory_length),
    )
    placement = _placement(devices, settings)
    start = time.perf_counter()
    init_key, loop_key = jax.random.split(as_key(key))
    try:
        state = _init_jit(init_key, model, settings.num_particles, float(initial_step_size),
                          kernel != "rw")
    except NotImplementedError as error:
        raise ValueError(f"Tempered SMC starts from the prior: {error}") from error
    ll0 = gather_to_host(state.log_likelihood)
    if np.any(np.isnan(ll0)):
        raise ValueError(
            f"The log-likelihood is NaN at {int(np.isnan(ll0).sum())} of {ll0.size} prior "
            "draws (temperature step 0). NaN is never a valid log-density: check the model "
            "for 0 * inf, log of a negative number, or NaN in the data."
        )
    if not np.any(np.isfinite(ll0)):
        raise ValueError(
            f"The log-likelihood is -inf (or inf) at all {ll0.size} prior draws (temperature "
            "step 0): the prior puts no mass where the data are possible. Check the prior's "
            "support and the data's units."
        )
    infos = []
    k = 0
    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = RunCheckpoint(checkpoint_dir, {
            "engine": "smc", "settings": settings._asdict(),
            "initial_step_size": float(initial_step_size),
            "max_num_temperatures": int(max_num_temperatures),
            "key": np.asarray(jax.random.key_data(as_key(key))).tolist(),
            **describe_model(model)},
            multi_process=placement is not None and placement.multi_process)
        restored = checkpoint.load(state)
        if restored is not None:
            k, outputs, state, _ = restored
            infos = [TemperedInfo(**block) for block in outputs]
    show = ProgressBar.wanted(progress_bar)
    with ProgressBar(1000 if show else 0, desc="SMC temperature x1000") as bar:
        while float(state.temperature) < 1.0:
            if k >= max_num_temperatures:
                raise ValueError(
                    f"Tempered SMC reached max_num_temperatures={max_num_temperatures} at "
                    f"temperature {float(state.temperature):.3g}; raise it, lower target_ess, "
                    "or check the likelihood (it may be -inf on most of the prior)."
                )
            state, info = _step_jit(jax.random.fold_in(loop_key, k), state, model, settings,
                                    placement)
            info = gather_to_host(info)
            infos.append(info)
            if bool(info.all_zero) or not np.isfinite(info.log_evidence_increment):
                raise ValueError(
                    f"All particle weights are zero or NaN at temperature step {k + 1} "
                    f"(temperature {float(info.temperature):.3g}). Likely cause: the "
                    "log-likelihood is -inf or NaN at every particle (a support error or NaN "
                    "in the data), or the moves produced invalid positions."
                )
            if checkpoint is not None:
                checkpoint.save(k, info._asdict(), gather_to_host(state))
            bar.update_to(int(1000 * float(state.temperature)))
            k += 1
    # Host copies (every process gets all of them), constrained on this process alone.
    particles = gather_to_host(state.particles)
    values = _constrain(model, jnp.asarray(particles))
    samples = {name: np.asarray(v)[None] for name, v in values.items()}
    history = {
        field: np.array([getattr(i, field) for i in infos])
        for field in TemperedInfo._fields if field != "all_zero"
    }
    wall = time.perf_counter() - start
    num_grads = int(np.sum(history["num_gradient_evals"]))
    warn_list = []
    low_acc = history["acceptance_rate"] < 0.05
    if np.any(low_acc):
        message = (
            f"Tempered SMC: acceptance below 0.05 at {int(low_acc.sum())} of {low_acc.size} "
            "temperatures; the particles may not have moved (try kernel='rw' or 'nuts', or "
            "more particles)."
        )
        warn_list.append(message)
        warnings.warn(message, stacklevel=2)
    meta = {
        "engine": "smc",
        "settings": {**settings._asdict(), "initial_step_size": float(initial_step_size)},
        "wall_time": wall,
        "num_gradient_evals": num_grads,
        "num_temperatures": len(infos),
        "num_devices": 1 if placement is None else placement.num_devices,
        "warnings": warn_list,
    }
    return Posterior(
        samples=samples,
        log_weights=gather_to_host(state.log_weights)[None],
        log_evidence=float(gather_to_host(state.log_evidence)),
        history=history,
        meta=meta,
        unconstrained=np.asarray(particles)[None],
    )
