"""Particle filters for state-space models: bootstrap, guided, and ancestor-traced smoothing.

A state-space model has latent states ``x_t`` and observations ``y_t``:

    x_0 ~ p(x_0),   x_t | x_{t-1} ~ f_t(x_{t-1}, ·),   y_t | x_t ~ g_t(· | x_t).

The bootstrap filter is the Feynman-Kac model ``M_t = f_t``, ``G_t = g_t(y_t | x_t)``; the
guided filter moves with a user proposal ``q_t(x_t | x_{t-1}, y_t)`` and weights by
``G_t = f_t(x_t | x_{t-1}) g_t(y_t | x_t) / q_t(x_t | x_{t-1}, y_t)`` (Gordon et al. 1993;
Doucet et al. 2000). ``exp(log_likelihood)`` is an unbiased estimate of ``p(y_{0:T-1})``.

The time loop is one ``lax.scan`` inside an ``eqx.filter_jit``: the model's functions are
static (hashed by identity) and the observations are arguments, so new data of the same
shape, a new key, or a new particle count of an already seen size reuse the compiled
program.

With several devices (``devices=``, :mod:`ppl.sharding`) only the per-particle work is split
over them: each device draws and weights its slice of the particles (``sample_transition``,
``log_observation``, the proposal). The moved particles and their log-weights are then
all-gathered, and the population steps (normalising, ESS, the resampling decision and
draws, the gather of the parents, the filtering moments) run replicated on every device, on
the same arrays in the same order as on one device; so the log-likelihood, the moments and
the genealogy are bit for bit those of the one-device run whatever the device count. The
cost across shards: one all-gather per time step of the moved particles (``N`` times the
state size) and of the ``N`` log-weights; resampling itself then moves nothing between
devices. With one device the program is today's, without any sharding.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from ppl.inference import smc
    >>> ssm = smc.StateSpaceModel(
    ...     sample_initial=lambda key, n: jax.random.normal(key, (n,)),
    ...     sample_transition=lambda key, t, x: 0.9 * x + jax.random.normal(key, x.shape),
    ...     log_observation=lambda t, x, y: jax.scipy.stats.norm.logpdf(y, x, 1.0))
    >>> res = smc.particle_filter(jax.random.key(0), ssm, jnp.zeros(50), num_particles=500)
    >>> res.filtering_mean.shape
    (50,)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray
from ppl.inference.smc import base
from ppl.inference.smc.resampling import get_resampler

from ppl.prng import PRNG_IMPLS, as_fast_key
from ppl.sharding import DevicesLike, Placement, dividing_placement, gather_to_host

__all__ = [
    "StateSpaceModel",
    "Proposal",
    "ParticleFilterResult",
    "particle_filter",
    "trace_ancestors",
    "as_fast_key",
    "log_likelihood_estimate",
    "sample_particle_filter",
]


class StateSpaceModel(eqx.Module):
    """A state-space model given by samplers and log-densities (all vectorised over particles).

    Attributes:
        sample_initial: ``(key, n) -> particles`` (any pytree, leading axis ``n``).
        sample_transition: ``(key, t, previous) -> particles``, a draw of ``x_t`` given
            ``x_{t-1}`` for every particle (``t >= 1``).
        log_observation: ``(t, particles, y_t) -> (n,)`` log-densities ``log g_t(y_t|x_t)``.
        log_initial: optional ``(particles) -> (n,)`` log-density of ``x_0`` (guided filter).
        log_transition: optional ``(t, previous, particles) -> (n,)`` log-density of
            ``f_t`` (guided filter).
    """

    sample_initial: Callable = eqx.field(static=True)
    sample_transition: Callable = eqx.field(static=True)
    log_observation: Callable = eqx.field(static=True)
    log_initial: Callable | None = eqx.field(static=True, default=None)
    log_transition: Callable | None = eqx.field(static=True, default=None)


class Proposal(eqx.Module):
    """A guided filter's proposal ``q_t(x_t | x_{t-1}, y_t)``.

    Attributes:
        sample_initial: ``(key, n, y_0) -> particles``.
        log_initial: ``(particles, y_0) -> (n,)``.
        sample_transition: ``(key, t, previous, y_t) -> particles``.
        log_transition: ``(t, previous, particles, y_t) -> (n,)``.
    """

    sample_initial: Callable = eqx.field(static=True)
    log_initial: Callable = eqx.field(static=True)
    sample_transition: Callable = eqx.field(static=True)
    log_transition: Callable = eqx.field(static=True)


class ParticleFilterResult(NamedTuple):
    """Output of :func:`particle_filter`.

    Attributes:
        log_likelihood: ``log p_hat(y_{0:T-1})``; its exponential is unbiased.
        filtering_mean: weighted mean of ``x_t`` given ``y_{0:t}`` (pytree, leading ``T``;
            None with ``store_moments=False``).
        filtering_variance: weighted variance, same structure.
        ess: ``(T,)`` effective sample size after reweighting at ``t``.
        resampled: ``(T,)`` whether the step into ``t`` resampled (False at ``t = 0``).
        log_likelihood_increments: ``(T,)`` ``log p_hat(y_t | y_{0:t-1})``.
        particles: final particles; log_weights: their ``(N,)`` normalised log-weights.
        ancestors: ``(T, N)`` parent indices (row 0 is ``arange(N)``), when stored.
        history: particles at every ``t`` (leading ``(T, N)``), when stored.
        meta: wall time, settings.
    """

    log_likelihood: Float[Array, ""]
    filtering_mean: Any
    filtering_variance: Any
    ess: Float[Array, " T"]
    resampled: Any
    log_likelihood_increments: Float[Array, " T"]
    particles: Any
    log_weights: Float[Array, " n"]
    ancestors: Int[Array, "T n"] | None
    history: Any
    meta: dict

    def smoothed_trajectories(self, key: PRNGKeyArray, num_samples: int) -> Any:
        """Trajectories ``x_{0:T-1}`` from the genealogy (ancestor tracing; Kitagawa 1996).

        Draws final particles by their weights and follows ``ancestors`` back; each draw is
        from the filter's (biased, degenerate for long T) joint smoothing approximation.
        Needs ``store_history=True``. Returns leaves shaped ``(num_samples, T, ...)``.
        """
        if self.history is None or self.ancestors is None:
            raise ValueError(
                "Expected a result from particle_filter(..., store_history=True); this one "
                "kept no particle history to trace."
            )
        num_samples = base.check_num_particles(num_samples, "num_samples")
        return _smoothed(key, self.log_weights, self.ancestors, self.history, num_samples)


def trace_ancestors(ancestors: Int[Array, "T n"], final_indices: Int[Array, " m"]):
    """Index paths ``(T, m)``: ``path[T-1] = final``, ``path[t] = ancestors[t+1][path[t+1]]``."""

    def back(idx, a_next):
        parent = a_next[idx]
        return parent, idx

    # Walk t = T-1 .. 1 using ancestors[t] to reach t-1 (one index dtype: int64 draws under
    # jax_enable_x64 meet int32 ancestors).
    final_indices = jnp.asarray(final_indices).astype(ancestors.dtype)
    first, paths = jax.lax.scan(back, final_indices, ancestors[1:], reverse=True)
    return jnp.concatenate([first[None], paths], axis=0)


@eqx.filter_jit
def _smoothed(key, log_weights, ancestors, history, num_samples):
    final = jax.random.categorical(key, log_weights, shape=(num_samples,))
    paths = trace_ancestors(ancestors, final)  # (T, m)
    picked = jax.tree_util.tree_map(
        lambda h: jax.vmap(lambda ht, it: ht[it])(h, paths), history
    )
    return jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), picked)


def _moments(particles, weights):
    """Weighted means and variances of every leaf, ``weights`` normalised."""

    def one(x):
        x = x.astype(weights.dtype) if jnp.issubdtype(x.dtype, jnp.integer) else x
        wx = jnp.reshape(weights, (-1,) + (1,) * (x.ndim - 1))
        mean = jnp.sum(wx * x, axis=0)
        var = jnp.sum(wx * (x - mean) ** 2, axis=0)
        return mean, var

    pairs = jax.tree_util.tree_map(one, particles)
    is_pair = lambda p: isinstance(p, tuple)  # noqa: E731
    mean = jax.tree_util.tree_map(lambda p: p[0], pairs, is_leaf=is_pair)
    var = jax.tree_util.tree_map(lambda p: p[1], pairs, is_leaf=is_pair)
    return mean, var


def _summarise(log_weights):
    """Unnormalised log-weights to ``(log W, W, log sum w, ESS)`` with one exponential each."""
    top = jnp.max(log_weights)
    top = jnp.where(jnp.isfinite(top), top, 0.0)  # all -inf: let the sum be 0 (collapse)
    scaled = jnp.exp(log_weights - top)
    total = jnp.sum(scaled)
    w = scaled / total
    log_total = top + jnp.log(total)
    return log_weights - log_total, w, log_total, 1.0 / jnp.sum(w * w)


class _Carry(NamedTuple):
    # Weighted particles at t, their normalised log-weights, log Z_t and ESS_t: the
    # weights are summarised once per step and reused by the next step's decision.
    particles: Any
    log_weights: Float[Array, " n"]
    log_normalizer: Float[Array, ""]
    ess: Float[Array, ""]


class _Settings(NamedTuple):
    num_particles: int
    resampling: Any
    ess_threshold: float
    store_history: bool
    prng_impl: str | None
    store_moments: bool = True
    ancestor_sampling: bool = False


def _on(tree, sharding):
    """``tree`` constrained to ``sharding`` (no-op without a placement)."""
    if sharding is None:
        return tree
    return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def _filter_core(key, ssm, proposal, observations, reference, settings: _Settings,
                 placement: Placement | None = None):
    # With a placement, the per-particle draws and weights run split over its devices and
    # everything else replicated (see the module docstring); without, no constraint at all.
    split = None if placement is None else placement.batch_sharding
    whole = None if placement is None else placement.replicated

    def per_particle(particles, log_g):
        # Computed split over the devices, then all-gathered onto every device.
        particles, log_g = _on((particles, log_g), split)
        return _on((particles, log_g), whole)

    n = settings.num_particles
    resample_fn = get_resampler(settings.resampling)
    threshold = settings.ess_threshold
    num_steps = jax.tree_util.tree_leaves(observations)[0].shape[0]
    y = lambda t: jax.tree_util.tree_map(lambda o: o[t], observations)  # noqa: E731
    key = as_fast_key(key, settings.prng_impl)
    init_key, scan_key = jax.random.split(key)
    conditional = reference is not None
    keep_ancestors = settings.store_history

    def set_reference(particles, t):
        # Conditional SMC: slot 0 holds the reference trajectory.
        if not conditional:
            return particles
        return jax.tree_util.tree_map(
            lambda p, r: p.at[0].set(r[t]), particles, reference
        )

    y0 = y(0)
    if proposal is None:
        particles = ssm.sample_initial(init_key, n)
        particles = set_reference(particles, 0)
        log_g = ssm.log_observation(0, particles, y0)
    else:
        particles = proposal.sample_initial(init_key, n, y0)
        particles = set_reference(particles, 0)
        log_g = (
            ssm.log_initial(particles)
            + ssm.log_observation(0, particles, y0)
            - proposal.log_initial(particles, y0)
        )
    if placement is not None:
        particles, log_g = per_particle(particles, log_g)
    log_w0, w0, log_total0, ess0 = _summarise(log_g)
    carry = _Carry(particles, log_w0, log_total0 - jnp.log(n), ess0)
    num_nan0 = jnp.sum(jnp.isnan(log_g))
    all_zero0 = ~jnp.isfinite(carry.log_normalizer)

    def move(t, key, parents):
        if placement is not None:
            new, log_g = _move(t, key, _on(parents, split))
            return per_particle(new, log_g)
        return _move(t, key, parents)

    def _move(t, key, parents):
        if proposal is None:
            new = ssm.sample_transition(key, t, parents)
            new = set_reference(new, t)
            return new, ssm.log_observation(t, new, y(t))
        yt = y(t)
        new = proposal.sample_transition(key, t, parents, yt)
        new = set_reference(new, t)
        log_g = (
            ssm.log_transition(t, parents, new)
            + ssm.log_observation(t, new, yt)
            - proposal.log_transition(t, parents, new, yt)
        )
        return new, log_g

    def resample(carry, key, t):
        if conditional and settings.ancestor_sampling:
            key, ancestor_key = jax.random.split(key)
        ancestors = resample_fn(key, carry.log_weights, n).astype(jnp.int32)
        if conditional and settings.ancestor_sampling:
            # The reference's parent, redrawn in proportion to w_{t-1}^i f_t(x*_t | x^i_{t-1})
            # (Lindsten, Jordan and Schon 2014): the reference path can change its past.
            here = jax.tree_util.tree_map(
                lambda r, p: jnp.broadcast_to(r[t], p.shape), reference, carry.particles
            )
            log_as = carry.log_weights + ssm.log_transition(t, carry.particles, here)
            ancestors = ancestors.at[0].set(
                jax.random.categorical(ancestor_key, log_as).astype(jnp.int32)
            )
        elif conditional:
            ancestors = ancestors.at[0].set(0)
        parents = base.gather(carry.particles, ancestors)
        uniform = jnp.full((n,), -jnp.log(n), carry.log_weights.dtype)
        return (parents, uniform, ancestors) if keep_ancestors else (parents, uniform)

    def keep(carry, key):
        # Not resampled: no gather, no index array (unless the history needs one).
        out = (carry.particles, carry.log_weights)
        return out + (jnp.arange(n, dtype=jnp.int32),) if keep_ancestors else out

    def scan_step(carry, xs):
        t, key = xs
        resample_key, move_key = jax.random.split(key)
        if threshold <= 0.0:
            resampled = jnp.asarray(False)
            chosen = keep(carry, resample_key)
        else:
            # Only the branch taken runs (XLA conditional), so steps that keep their
            # particles pay nothing for the resampler. Always resampling goes through the
            # conditional too (with a predicate XLA cannot fold): inlined, the gather fuses
            # into the move and makes XLA's CPU loop over the PRNG rounds and the
            # transcendental functions scalar, 5x slower at N = 10^4.
            if threshold >= 1.0:
                resampled = ~jnp.isnan(carry.ess) | jnp.isnan(carry.ess)
            else:
                resampled = carry.ess < threshold * n
            chosen = jax.lax.cond(
                resampled, lambda c, k: resample(c, k, t), keep, carry, resample_key
            )
        parents, log_w_after = chosen[0], chosen[1]
        particles, log_g = move(t, move_key, parents)
        # log_w_after is normalised, so its logsumexp with log G is the increment.
        log_w, w, increment, ess = _summarise(log_w_after + log_g)
        new = _Carry(particles, log_w, carry.log_normalizer + increment, ess)
        out = {
            "ess": ess, "resampled": resampled, "increment": increment,
            "num_nan": jnp.sum(jnp.isnan(log_g)), "all_zero": ~jnp.isfinite(increment),
        }
        if settings.store_moments:
            out["mean"], out["var"] = _moments(particles, w)
        if keep_ancestors:
            out["ancestors"] = chosen[2]
            out["particles"] = particles
        return new, out

    keys = jax.random.split(scan_key, num_steps - 1)
    final, out = jax.lax.scan(scan_step, carry, (jnp.arange(1, num_steps), keys))
    cat = lambda first, rest: jnp.concatenate([jnp.asarray(first)[None], rest])  # noqa: E731
    result = {
        "log_likelihood": final.log_normalizer,
        "ess": cat(ess0, out["ess"]),
        "resampled": cat(jnp.asarray(False), out["resampled"]),
        "increment": cat(carry.log_normalizer, out["increment"]),
        "num_nan": cat(num_nan0, out["num_nan"]),
        "all_zero": cat(all_zero0, out["all_zero"]),
        "particles": final.particles,
        "log_weights": final.log_weights,
    }
    if settings.store_moments:
        mean0, var0 = _moments(particles, w0)
        result["mean"] = jax.tree_util.tree_map(cat, mean0, out["mean"])
        result["var"] = jax.tree_util.tree_map(cat, var0, out["var"])
    if settings.store_history:
        result["ancestors"] = cat(jnp.arange(n, dtype=jnp.int32), out["ancestors"])
        result["history"] = jax.tree_util.tree_map(cat, particles, out["particles"])
    return result


# The model's functions are static (hashed by identity), observations and keys are data.
_run_filter = eqx.filter_jit(_filter_core)


def log_likelihood_estimate(
    key: PRNGKeyArray,
    ssm: StateSpaceModel,
    observations: Any,
    *,
    num_particles: int = 1000,
    resampling: str | Callable = "systematic",
    ess_threshold: float = 0.5,
    prng_impl: str | None = "threefry_fused",
) -> Float[Array, ""]:
    """The bootstrap filter's ``log p_hat(y_{0:T-1})`` as a pure, traceable function.

    For use inside the caller's ``jit``/``scan``/``vmap`` (PMMH, SMC^2), where ``ssm`` may
    close over traced parameters. Unlike :func:`particle_filter` it runs no host-side
    checks of the weights: a collapsed filter returns ``-inf``, a NaN log-potential NaN.
    """
    settings = _checked_settings(num_particles, resampling, ess_threshold, prng_impl,
                                 store_history=False, store_moments=False)
    observations = jax.tree_util.tree_map(jnp.asarray, observations)
    return _filter_core(key, ssm, None, observations, None, settings)["log_likelihood"]


def _checked_settings(num_particles, resampling, ess_threshold, prng_impl, *, store_history,
                      store_moments) -> _Settings:
    """Validated filter settings (clear errors naming the argument)."""
    num_particles = base.check_num_particles(num_particles)
    ess_threshold = base.check_ess_threshold(ess_threshold)
    get_resampler(resampling)
    if prng_impl is not None and prng_impl not in PRNG_IMPLS:
        raise ValueError(f"Expected prng_impl None or one of {PRNG_IMPLS}, got {prng_impl!r}.")
    return _Settings(num_particles, resampling, ess_threshold, bool(store_history), prng_impl,
                     bool(store_moments))


def _check_observations(observations):
    leaves = jax.tree_util.tree_leaves(observations)
    if not leaves:
        raise ValueError("Expected observations with a leading time axis, got no arrays.")
    lengths = {int(np.shape(leaf)[0]) if np.ndim(leaf) else 0 for leaf in leaves}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(
            f"Expected observations with one common leading time axis (T >= 1), got lengths "
            f"{sorted(lengths)}."
        )
    for leaf in leaves:
        arr = np.asarray(leaf)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ValueError(
                f"Expected finite observations, got {int(np.sum(~np.isfinite(arr)))} NaN/inf "
                "value(s); mask missing observations inside log_observation instead."
            )
    return jax.tree_util.tree_map(jnp.asarray, observations)


def particle_filter(
    key: PRNGKeyArray,
    ssm: StateSpaceModel,
    observations: Any,
    *,
    num_particles: int = 1000,
    resampling: str | Callable = "systematic",
    ess_threshold: float = 0.5,
    proposal: Proposal | None = None,
    store_history: bool = False,
    prng_impl: str | None = "threefry_fused",
    store_moments: bool = True,
    devices: DevicesLike = None,
) -> ParticleFilterResult:
    """Run a bootstrap (or, with ``proposal``, guided) particle filter.

    Args:
        key: PRNG key.
        ssm: the :class:`StateSpaceModel`.
        observations: pytree with leading time axis ``T`` (``y_t`` is ``obs[t]``).
        num_particles: ``N``.
        resampling: "systematic", "stratified", "residual", "multinomial" or a callable.
        ess_threshold: resample when ``ESS < ess_threshold * N`` (1: always, 0: never).
        proposal: a :class:`Proposal` for the guided filter (needs ``ssm.log_initial``
            and ``ssm.log_transition``).
        store_history: keep every particle and ancestor (for smoothing by tracing).
        prng_impl: PRNG implementation inside the filter (see :func:`as_fast_key`):
            "threefry_fused" (default: JAX's threefry algorithm, 3x cheaper normals on
            CPU), "rbg", "unsafe_rbg", or None to keep the key's own.
        store_moments: compute the filtering means and variances (False: they are None;
            a caller that needs only the likelihood, such as PMMH, saves a pass per step).
        devices: where the particles are drawn and weighted
            (:func:`ppl.sharding.resolve_devices`; default all devices). ``N`` must divide
            by their count: otherwise an explicit ``devices`` is refused and the default
            uses the most devices that divide ``N``, with a warning. Resampling runs
            replicated after an all-gather of the moved particles and log-weights every
            step, so the result is bit for bit the one-device result (module docstring).

    Returns:
        A :class:`ParticleFilterResult`.

    Raises:
        ValueError: bad settings, or the weights collapse / the potential is NaN at some
            step (the message names the step).
    """
    result = _filter(key, ssm, observations, None, num_particles=num_particles,
                     resampling=resampling, ess_threshold=ess_threshold, proposal=proposal,
                     store_history=store_history, prng_impl=prng_impl,
                     store_moments=store_moments, devices=devices)
    return result


def _replicated(tree, placement: Placement):
    """``tree`` (arrays, PRNG keys) as a full copy on every device of ``placement`` (each
    process places its own copies, so this works across processes too)."""

    def one(leaf):
        if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = one(jax.random.key_data(leaf))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        host = np.asarray(gather_to_host(leaf))
        return jax.make_array_from_callback(host.shape, placement.replicated,
                                            lambda index: host[index])

    return jax.tree_util.tree_map(one, tree)


def _filter(key, ssm, observations, reference, *, num_particles, resampling, ess_threshold,
            proposal, store_history, prng_impl, store_moments=True, ancestor_sampling=False,
            devices: DevicesLike = 1):
    if not isinstance(ssm, StateSpaceModel):
        raise TypeError(f"Expected a smc.StateSpaceModel, got {type(ssm).__name__}.")
    settings = _checked_settings(num_particles, resampling, ess_threshold, prng_impl,
                                 store_history=store_history, store_moments=store_moments)
    settings = settings._replace(ancestor_sampling=bool(ancestor_sampling))
    if proposal is not None and (ssm.log_initial is None or ssm.log_transition is None):
        raise ValueError(
            "Expected a StateSpaceModel with log_initial and log_transition for a guided "
            "filter (the weights need f_t / q_t), got None."
        )
    observations = _check_observations(observations)
    placement = dividing_placement(devices, settings.num_particles, "particle",
                                   "The particle filter", stacklevel=4)
    num_devices = placement.num_devices
    start = time.perf_counter()
    if num_devices == 1:
        out = _run_filter(key, ssm, proposal, observations, reference, settings)
        out = jax.block_until_ready(out)
    else:
        key = key if isinstance(key, jax.Array) else jnp.asarray(key)
        inputs = _replicated((key, observations, reference), placement)
        out = _run_filter(*inputs[:1], ssm, proposal, *inputs[1:], settings, placement)
        # Every process gets the whole result, back on this process's default device.
        out = jax.tree_util.tree_map(jnp.asarray, gather_to_host(out))
    base.raise_on_bad_steps(out["num_nan"], out["all_zero"], what="time step")
    return ParticleFilterResult(
        log_likelihood=out["log_likelihood"],
        filtering_mean=out.get("mean"),
        filtering_variance=out.get("var"),
        ess=out["ess"],
        resampled=out["resampled"],
        log_likelihood_increments=out["increment"],
        particles=out["particles"],
        log_weights=out["log_weights"],
        ancestors=out.get("ancestors"),
        history=out.get("history"),
        meta={
            "wall_time": time.perf_counter() - start,
            "settings": settings._asdict(),
            "guided": proposal is not None,
            "num_devices": num_devices,
        },
    )


def _as_state_space_model(state_space: Any) -> StateSpaceModel:
    if isinstance(state_space, StateSpaceModel):
        return state_space
    fields = ("sample_initial", "sample_transition", "log_observation")
    if state_space is None or not all(callable(getattr(state_space, f, None)) for f in fields):
        raise ValueError(
            "Expected state_space to be a smc.StateSpaceModel or an object with callables "
            "sample_initial, sample_transition and log_observation (a zoo entry's "
            f"state_space_fn() gives one), got {type(state_space).__name__}."
        )
    return StateSpaceModel(*(getattr(state_space, f) for f in fields))


def _default_observations(model: Any) -> Any:
    kwargs = getattr(model, "kwargs", None)
    if isinstance(kwargs, dict) and kwargs.get("y") is not None:
        return kwargs["y"]
    raise ValueError(
        "Expected observations (a pytree with a leading time axis), got None, and the model "
        "has no observed 'y' to take them from."
    )


def sample_particle_filter(
    key: PRNGKeyArray,
    model: Any = None,
    *,
    state_space: Any = None,
    observations: Any = None,
    num_particles: int = 10_000,
    resampling: str | Callable = "systematic",
    ess_threshold: float = 0.5,
    num_trajectories: int = 1000,
    prng_impl: str | None = "threefry_fused",
    devices: DevicesLike = None,
):
    """The particle-filter engine: ``ppl.infer(model, "particle_filter", key=..., ...)``.

    Runs the bootstrap filter of :func:`particle_filter` with its history kept, and returns
    smoothed latent trajectories drawn by ancestor tracing (Kitagawa 1996): final particles
    ``I ~ Categorical(W_{T-1})``, then ``x_{0:T-1}^{(I)}`` followed back through the stored
    ancestors. ``exp(log_evidence)`` is the filter's unbiased estimate of
    ``p(y_{0:T-1})`` (Del Moral 2004).

    The genealogy degenerates for long series: trajectories share their early states
    (path degeneracy), so smoothed marginals of early ``x_t`` are poor for ``T >> N``-scale
    coalescence times; the filtering moments in ``history`` do not suffer from this.

    Args:
        key: a JAX PRNG key.
        model: the ppl Model of the same state-space model (used only to find the
            observations, its ``y``, when ``observations`` is None).
        state_space: a :class:`StateSpaceModel`, or any object with ``sample_initial``,
            ``sample_transition`` and ``log_observation`` (the zoo's ``state_space_fn()``).
        observations: pytree with leading time axis ``T``.
        num_particles: ``N``.
        resampling: scheme name or resampler callable.
        ess_threshold: resample when ``ESS < ess_threshold * N``.
        num_trajectories: number of smoothed trajectories returned.
        prng_impl: PRNG implementation inside the filter (see :func:`as_fast_key`).
        devices: where the particles are drawn and weighted (see :func:`particle_filter`;
            the same draws and evidence whatever the device count).

    Returns:
        A :class:`~ppl.Posterior` with site ``"x"`` shaped ``(1, num_trajectories, T, ...)``
        (one site per leaf, named by its path, when particles are a pytree),
        ``log_evidence``, and ``history`` with ``ess``, ``resampled``,
        ``log_likelihood_increments``, ``filtering_mean`` and ``filtering_variance`` per step.
    """
    from ppl.posterior import Posterior

    ssm = _as_state_space_model(state_space)
    num_trajectories = base.check_num_particles(num_trajectories, "num_trajectories")
    if observations is None:
        observations = _default_observations(model)
    start = time.perf_counter()
    from ppl.infer import as_key

    filter_key, trace_key = jax.random.split(as_key(key))
    result = particle_filter(
        filter_key, ssm, observations, num_particles=num_particles, resampling=resampling,
        ess_threshold=ess_threshold, store_history=True, prng_impl=prng_impl, devices=devices,
    )
    paths = result.smoothed_trajectories(trace_key, num_trajectories)
    leaves = jax.tree_util.tree_leaves_with_path(paths)
    if len(leaves) == 1:
        samples = {"x": np.asarray(leaves[0][1])[None]}
        history_moments = {
            "filtering_mean": np.asarray(jax.tree_util.tree_leaves(result.filtering_mean)[0]),
            "filtering_variance": np.asarray(
                jax.tree_util.tree_leaves(result.filtering_variance)[0]),
        }
    else:
        samples = {
            "x" + jax.tree_util.keystr(path): np.asarray(leaf)[None] for path, leaf in leaves
        }
        history_moments = {}
    history = {
        "ess": np.asarray(result.ess),
        "resampled": np.asarray(result.resampled),
        "log_likelihood_increments": np.asarray(result.log_likelihood_increments),
        **history_moments,
    }
    settings = {
        "num_particles": int(num_particles), "resampling": str(resampling),
        "ess_threshold": float(ess_threshold), "num_trajectories": num_trajectories,
        "prng_impl": prng_impl,
    }
    meta = {
        "engine": "particle_filter",
        "settings": settings,
        "wall_time": time.perf_counter() - start,
        "num_gradient_evals": 0,
        "num_resampling_steps": int(np.sum(history["resampled"])),
        "num_devices": result.meta["num_devices"],
        "warnings": [],
    }
    return Posterior(samples=samples, log_evidence=float(result.log_likelihood),
                     history=history, meta=meta)
