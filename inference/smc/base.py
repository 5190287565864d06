"""The Feynman-Kac core: one generic SMC step over particles of any kind.

A Feynman-Kac model is an initial distribution ``M_0``, Markov transitions ``M_t`` and
log-potentials ``log G_t``. SMC approximates the sequence of distributions

    Q_t(dx_{0:t}) ∝ M_0(dx_0) G_0(x_0) prod_{s=1}^t M_s(x_{s-1}, dx_s) G_s(x_{s-1}, x_s)

with ``N`` weighted particles. One step, from weighted particles at ``t - 1``:

1. **resample** (``R_t``) when ``ESS / N < ess_threshold``: ancestors ``A ~ R(W)``,
   particles gathered, weights reset to uniform (threshold 1: always; 0: never);
2. **move** (``M_t``): ``X_t^i ~ M_t(X_{t-1}^{A_i}, ·)``;
3. **reweight** (``G_t``): ``log w_t^i = log W_{t-1}^{A_i} + log G_t(X_{t-1}^{A_i}, X_t^i)``,
   and ``log Z_t = log Z_{t-1} + log sum_i W_{t-1}^{A_i} G_t^i`` (unbiased on the
   exp scale; Del Moral 2004).

Particles are any pytree with a leading particle axis, moved by :func:`gather`; the
resamplers of :mod:`~ppl.inference.smc.resampling` map log-weights to indices and never see
particles. So the same pieces run inside ``lax.scan`` (:func:`step`, all-JAX) or from a plain
Python loop over host objects (:func:`resample_decision` + :func:`gather` with
``host=True`` + :func:`reweight`), e.g. lists of token sequences scored outside JAX.

References:
    Del Moral, P. (2004). Feynman-Kac Formulae. Springer.
    Chopin, N. and Papaspiliopoulos, O. (2020). An Introduction to Sequential Monte Carlo.
    Springer (chapters 5, 10).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray
from ppl.inference.smc.resampling import (
    counts_to_indices,
    effective_sample_size,
    get_resampler,
    normalize_log_weights,
)

from ppl.validation import check_count

__all__ = [
    "SMCState",
    "SMCInfo",
    "init",
    "step",
    "gather",
    "reweight",
    "resample_decision",
    "resample_groups",
    "GroupResampling",
    "gather_if",
    "in_place",
    "check_ess_threshold",
    "check_num_particles",
    "raise_on_bad_steps",
]


class SMCState(NamedTuple):
    """Weighted particles.

    Attributes:
        particles: any pytree whose leaves have a leading particle axis ``N``
            (or, on the host path, any sequence of length ``N``).
        log_weights: ``(N,)`` unnormalised log-weights.
        log_normalizer: running estimate of ``log Z_t``.
    """

    particles: Any
    log_weights: Float[Array, " n"]
    log_normalizer: Float[Array, ""]


class SMCInfo(NamedTuple):
    """What one step did.

    Attributes:
        ancestors: ``(N,)`` indices of the parents (``arange(N)`` when not resampled).
        ess: effective sample size of the weights *before* resampling.
        resampled: whether this step resampled.
        log_normalizer_increment: ``log sum_i W_{t-1}^{A_i} G_t^i``.
        num_nan: how many log-potentials were NaN (an error in the model).
        all_zero: every new weight is zero (or NaN): the filter has collapsed.
    """

    ancestors: Int[Array, " n"]
    ess: Float[Array, ""]
    resampled: Bool[Array, ""]
    log_normalizer_increment: Float[Array, ""]
    num_nan: Int[Array, ""]
    all_zero: Bool[Array, ""]


def check_ess_threshold(ess_threshold: float) -> float:
    """Refuse a threshold outside [0, 1] (0: never resample, 1: always)."""
    value = float(ess_threshold)
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            "Expected ess_threshold in [0, 1] (a fraction of the number of particles; 0 never "
            f"resamples, 1 always does), got {ess_threshold!r}."
        )
    return value


def check_num_particles(num_particles: int, name: str = "num_particles") -> int:
    """Refuse zero or negative particle counts and non-integers (as every engine does)."""
    return check_count(name, num_particles)


def gather(particles: Any, indices: Int[Array, " n"], *, host: bool = False) -> Any:
    """Select particles by index: every leaf of a pytree along its leading axis.

    With ``host=True``, ``particles`` is a plain sequence of host objects (token lists,
    strings, caches) and the result is the list ``[particles[i] for i in indices]``.
    """
    if host:
        return [particles[int(i)] for i in np.asarray(indices)]
    return jax.tree_util.tree_map(lambda leaf: jnp.take(leaf, indices, axis=0), particles)


def gather_if(resampled: Bool[Array, ""] | bool, particles: Any, indices: Int[Array, " n"]) -> Any:
    """:func:`gather` on the steps that resampled; the particles untouched on the others.

    Under ``jit`` with a traced flag this is an XLA conditional, so a step that keeps its
    particles copies nothing (a KV cache of hundreds of megabytes, say); with a Python or
    concrete flag the decision is made on the host.
    """
    if isinstance(resampled, jax.core.Tracer):
        return jax.lax.cond(
            resampled, lambda p: gather(p, indices), lambda p: p, particles
        )
    return gather(particles, indices) if bool(resampled) else particles


def init(particles: Any, log_potentials: Float[Array, " n"]) -> SMCState:
    """Weighted particles at ``t = 0``: ``X_0 ~ M_0``, ``log w_0 = log G_0(X_0)``."""
    log_potentials = jnp.asarray(log_potentials)
    num = log_potentials.shape[0]
    log_normalizer = jax.scipy.special.logsumexp(log_potentials) - jnp.log(num)
    return SMCState(particles, log_potentials, log_normalizer)


def resample_decision(
    key: PRNGKeyArray,
    log_weights: Float[Array, " n"],
    *,
    resampling: str | Callable = "systematic",
    ess_threshold: float = 0.5,
    num_samples: int | None = None,
) -> tuple[Int[Array, " n"], Float[Array, " n"], Bool[Array, ""], Float[Array, ""]]:
    """Resample when ``ESS < ess_threshold * N`` (always when the threshold is 1).

    Returns:
        ``(ancestors, log_weights_after, resampled, ess)``: ``log_weights_after`` are the
        *normalised* log-weights carried by the selected particles (uniform after
        resampling).
    """
    resample_fn = get_resampler(resampling)
    log_weights = jnp.asarray(log_weights)
    num = log_weights.shape[0]
    num_samples = num if num_samples is None else num_samples
    ess = effective_sample_size(log_weights)
    log_w = normalize_log_weights(log_weights)
    if ess_threshold >= 1.0:
        resampled = jnp.asarray(True)
    else:
        resampled = ess < ess_threshold * num
    uniform = jnp.full((num_samples,), -jnp.log(num_samples), log_w.dtype)

    def yes(_):
        return resample_fn(key, log_w, num_samples).astype(jnp.int32), uniform

    def no(_):
        return jnp.arange(num_samples, dtype=jnp.int32), log_w

    if ess_threshold >= 1.0:
        ancestors, log_w_after = yes(None)
    elif ess_threshold <= 0.0 and num_samples == num:
        ancestors, log_w_after = no(None)
    elif isinstance(resampled, jax.core.Tracer):
        ancestors, log_w_after = jax.lax.cond(resampled, yes, no, None)
    else:  # host loop: decide in Python
        ancestors, log_w_after = yes(None) if bool(resampled) else no(None)
    return ancestors, log_w_after, resampled, ess


def in_place(ancestors: Int[Array, " n"]) -> Int[Array, " n"]:
    """The same offspring, arranged so that every surviving particle keeps its own slot.

    Particles are exchangeable, so any arrangement of the offspring is the same resampling;
    this one moves the fewest rows: slot ``i`` keeps particle ``i`` when ``i`` has
    offspring, and the extra copies fill the slots of the particles that died, in index
    order. Gathering then only has to copy into those slots (a KV cache is large).
    """
    num = ancestors.shape[0]
    counts = jnp.zeros(num, jnp.int32).at[ancestors].add(1)
    kept = counts > 0
    extra = jnp.maximum(counts - 1, 0)
    # Extra copy k belongs to the particle whose run of extra copies holds position k.
    extras = counts_to_indices(jnp.cumsum(extra) - extra, num)
    free_rank = jnp.cumsum(~kept) - 1
    return jnp.where(kept, jnp.arange(num, dtype=ancestors.dtype),
                     extras[jnp.clip(free_rank, 0, num - 1)]).astype(ancestors.dtype)


class GroupResampling(NamedTuple):
    """What :func:`resample_groups` decided, group by group.

    Attributes:
        ancestors: ``(groups, n)`` parent of each slot, an index within its group
            (``arange(n)`` for a group that did not resample).
        log_weights: ``(groups, n)`` log-weights carried by the selected particles,
            normalised within each group.
        resampled: ``(groups,)`` whether each group resampled.
        ess: ``(groups,)`` effective sample size of each group's active particles.
    """

    ancestors: Int[Array, "groups n"]
    log_weights: Float[Array, "groups n"]
    resampled: Bool[Array, " groups"]
    ess: Float[Array, " groups"]

    def flat_ancestors(self) -> Int[Array, " rows"]:
        """Ancestors as rows of the flat batch (group ``g`` holds rows ``g n .. g n + n - 1``)."""
        groups, n = self.ancestors.shape
        offsets = (jnp.arange(groups, dtype=self.ancestors.dtype) * n)[:, None]
        return (self.ancestors + offsets).reshape(-1)


def resample_groups(
    key: PRNGKeyArray,
    log_weights: Float[Array, "groups n"],
    *,
    active: Bool[Array, "groups n"] | None = None,
    resampling: str | Callable = "systematic",
    ess_threshold: float = 0.5,
    resample_log_weights: Float[Array, "groups n"] | None = None,
    keep_first: bool = False,
) -> GroupResampling:
    """Adaptive resampling of independent groups of particles, each among its active ones.

    Many independent problems run as one flat batch: ``groups`` groups of ``n`` particles,
    each group with its own weights, ESS and resampling decision (made as in
    :func:`resample_decision`, on the active particles' ESS against ``ess_threshold`` times
    their number).

    Particles outside ``active`` are absorbed (a finished trace, say): they keep their slot
    and their weight, and are never copied or dropped. The active slots are refilled from
    the active particles by ``resampling`` and share the active particles' mass equally
    (partial resampling), so that ``sum_i W_i f(X_i)`` stays unbiased. When only some of a
    group's particles are active, its ``n`` draws are shuffled before the active slots take
    theirs (a uniform subset of unbiased draws is unbiased; the first draws of a sorted
    scheme would not be). Offspring are arranged :func:`in_place`: a surviving particle keeps
    its own slot, so only the slots of the particles that died need copying into.

    Args:
        key: PRNG key, or ``(groups,)`` keys, one per group (a group's draws then depend on
            its own key only, whatever else is batched with it).
        log_weights: ``(groups, n)`` unnormalised log-weights.
        active: ``(groups, n)`` particles that may be resampled (default: all).
        resampling: a scheme name or a resampler ``(key, log_weights, n) -> indices``.
        ess_threshold: resample a group when its ESS falls below this fraction of its active
            particles; 1 always resamples (while any is active), 0 never.
        resample_log_weights: optional ``(groups, n)`` log-weights ``log v`` to draw the
            ancestors from instead of the particles' own (annealed or look-ahead weights);
            a selected particle then carries ``w / v`` (times the mean of ``v``), which keeps
            estimates unbiased.
        keep_first: conditional SMC: slot 0 of every group (the reference) keeps ancestor 0,
            and the other active slots take i.i.d. draws (use multinomial resampling).

    Returns:
        :class:`GroupResampling`.
    """
    log_weights = jnp.asarray(log_weights)
    if log_weights.ndim != 2:
        raise ValueError(
            f"Expected log_weights of shape (groups, n), got {tuple(log_weights.shape)}."
        )
    resample_fn = get_resampler(resampling)
    threshold = check_ess_threshold(ess_threshold)
    groups, num = log_weights.shape
    active = jnp.ones((groups, num), bool) if active is None else jnp.asarray(active, bool)
    draw_weights = log_weights if resample_log_weights is None else jnp.asarray(
        resample_log_weights, log_weights.dtype
    )

    def one(key, log_w, active, log_v):
        total = jax.scipy.special.logsumexp(log_w)
        alive = jnp.isfinite(total)  # a collapsed group (every weight zero) stays as it is
        log_w = jnp.where(alive, log_w - total, log_w)
        masked = jnp.where(active, log_w, -jnp.inf)
        num_active = jnp.sum(active)
        mass = jax.scipy.special.logsumexp(masked)
        ess = jnp.where(num_active > 0, effective_sample_size(masked), 0.0)
        if threshold >= 1.0:
            resampled = (num_active > 0) & alive & jnp.isfinite(mass)
        elif threshold <= 0.0:
            resampled = jnp.asarray(False)
        else:
            resampled = (num_active > 0) & alive & jnp.isfinite(mass) & (
                ess < threshold * num_active
            )
        draw_key, shuffle_key = jax.random.split(key)
        log_v = jnp.where(active, log_v, -jnp.inf)
        log_v_total = jax.scipy.special.logsumexp(log_v)
        safe_v = jnp.where(jnp.isfinite(log_v_total), log_v - log_v_total, jnp.zeros_like(log_v))
        draws = resample_fn(draw_key, safe_v, num).astype(jnp.int32)
        shuffled = jax.random.permutation(shuffle_key, draws)
        chosen = shuffled if keep_first else jnp.where(num_active == num, draws, shuffled)
        own = jnp.arange(num, dtype=jnp.int32)
        ancestors = jnp.where(active, chosen, own)
        if keep_first:
            ancestors = ancestors.at[0].set(0)
        ancestors = in_place(ancestors)
        share = jnp.log(jnp.maximum(num_active, 1)).astype(log_w.dtype)
        if resample_log_weights is None:
            after = jnp.where(active, mass - share, log_w)
        else:
            ratio = (log_w - log_v)[ancestors] + log_v_total - share
            after = jnp.where(active, ratio, log_w)
        return (
            jnp.where(resampled, ancestors, own),
            jnp.where(resampled, after, log_w),
            resampled,
            ess,
        )

    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    per_group = (
        key.ndim == 1 if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key.ndim == 2
    )
    keys = key if per_group else jax.random.split(key, groups)
    ancestors, after, resampled, ess = jax.vmap(one)(keys, log_weights, active, draw_weights)
    return GroupResampling(ancestors, after, resampled, ess)


def reweight(
    log_weights_after: Float[Array, " n"], log_potentials: Float[Array, " n"]
) -> tuple[Float[Array, " n"], Float[Array, ""], Int[Array, ""], Bool[Array, ""]]:
    """New log-weights and the log-normaliser increment from normalised weights and ``log G``.

    Returns:
        ``(log_weights, log_normalizer_increment, num_nan, all_zero)``.
    """
    log_potentials = jnp.asarray(log_potentials)
    num_nan = jnp.sum(jnp.isnan(log_potentials))
    log_weights = log_weights_after + log_potentials
    increment = jax.scipy.special.logsumexp(log_weights)
    all_zero = ~jnp.isfinite(increment) | (increment == -jnp.inf)
    return log_weights, increment, num_nan, all_zero


def step(
    key: PRNGKeyArray,
    state: SMCState,
    *,
    move_fn: Callable[[PRNGKeyArray, Any], Any],
    log_potential_fn: Callable[[Any, Any], Float[Array, " n"]],
    resampling: str | Callable = "systematic",
    ess_threshold: float = 0.5,
) -> tuple[SMCState, SMCInfo]:
    """One Feynman-Kac step: resample (adaptively), move, reweight.

    Args:
        key: PRNG key.
        state: weighted particles at ``t - 1``.
        move_fn: ``(key, parents) -> particles``, a draw from ``M_t`` for every particle.
        log_potential_fn: ``(parents, particles) -> (N,)`` log-potentials ``log G_t``.
        resampling: a scheme name or a resampler ``(key, log_weights, n) -> indices``.
        ess_threshold: resample when ``ESS < ess_threshold * N``; in [0, 1].

    Returns:
        ``(state, info)`` at ``t``.
    """
    resample_key, move_key = jax.random.split(key)
    ancestors, log_w_after, resampled, ess = resample_decision(
        resample_key, state.log_weights, resampling=resampling, ess_threshold=ess_threshold
    )
    parents = gather_if(resampled, state.particles, ancestors)
    particles = move_fn(move_key, parents)
    log_potentials = log_potential_fn(parents, particles)
    log_weights, increment, num_nan, all_zero = reweight(log_w_after, log_potentials)
    new_state = SMCState(particles, log_weights, state.log_normalizer + increment)
    return new_state, SMCInfo(ancestors, ess, resampled, increment, num_nan, all_zero)


def raise_on_bad_steps(
    num_nan: Sequence[int] | Array,
    all_zero: Sequence[bool] | Array,
    *,
    what: str = "step",
    hint: str = "",
) -> None:
    """Host-side check of per-step flags; raises a ``ValueError`` naming the first bad step.

    Compiled loops record ``num_nan`` and ``all_zero`` per step (cheaper and clearer than an
    error inside the loop); drivers call this once the loop is back on the host.
    """
    num_nan = np.atleast_1d(np.asarray(num_nan))
    all_zero = np.atleast_1d(np.asarray(all_zero))
    if np.any(num_nan > 0):
        t = int(np.argmax(num_nan > 0))
        raise ValueError(
            f"The log-potential returned NaN for {int(num_nan[t])} particle(s) at {what} {t} "
            f"(of {num_nan.size}). NaN is never a valid log-weight (use -inf for a zero "
            f"weight); check the model's log-density for 0 * inf, log of a negative number, or "
            f"NaN in the data. {hint}".rstrip()
        )
    if np.any(all_zero):
        t = int(np.argmax(all_zero))
        raise ValueError(
            f"All particle weights are zero (or NaN) at {what} {t} (of {all_zero.size}): the "
            "particle system collapsed. Likely causes: an observation far outside what the "
            "model can produce (an outlier, wrong units), an observation density that is -inf "
            "for every particle (a support error), or too few particles. "
            f"{hint}".rstrip()
        )
