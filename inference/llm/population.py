"""Particles as partial reasoning traces: the population and the pieces of one SMC step.

A population holds ``G`` problems times ``N`` particles as one flat batch of ``B = G N``
rows (row ``g N + i`` is particle ``i`` of problem ``g``): the language model's state (its
KV cache), the reward model's state, the generated tokens, each row's score, and the
weights and log-evidence of each problem's group. One SMC step over it is the Feynman-Kac
step of :mod:`ppl.inference.smc.base`, run from a host loop over jitted pieces:

1. **resample** (``R_t``): :func:`ppl.inference.smc.base.resample_groups` decides, group by
   group, on the active (unfinished) particles only; :func:`reorder` gathers the rows (KV
   caches included) only on a step where some group resampled;
2. **move** (``M_t``): :func:`move` samples every active particle to its next step boundary
   with the language model;
3. **reweight** (``G_t``): the reward scores the step (:func:`score_step` in JAX, or a
   :class:`~ppl.reward_model.HostReward` on decoded text), and :func:`reweight` turns the
   scores into log-potentials with :func:`ppl.inference.smc.base.reweight`.

Finished particles (an end token, a full buffer, a step that ran away without a boundary,
the step limit) are absorbing: they keep their slot, tokens and weight, are never moved or
re-weighted again, and are never resampled (neither copied nor dropped).

Two potentials (``Settings.potential``):

- ``"increment"`` (principled): ``log G_t = log r_t - log r_{t-1}`` with ``r_t`` the
  particle's (clipped, aggregated) score, so the weights telescope to the final score and
  ``log_evidence`` estimates ``log E[r_T]`` without bias (on the exp scale) under the target
  chosen by ``Settings.target``: the tempered proposal itself (``"proposal"``) or the base
  LM (``"base"``: each step also adds ``log p_base - log p_proposal`` of its tokens).
- ``"logit"`` (the anchors': its_hub and Puri et al.'s code): a particle's log-weight is
  ``logit(r_t) / weight_temperature`` of its latest score only, set afresh at each step; no
  evidence.

Every function here is pure with static shapes; the jitted wrappers compile once per
(batch, buffer length).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int
from ppl.inference.smc import base

from ppl.reward_model import AbstractRewardModel, RewardState, aggregate
from ppl.sharding import Placement
from ppl.token_adapter import AbstractTokenModel, StepOutput, TokenState

__all__ = [
    "POTENTIALS",
    "TARGETS",
    "TRACE_COUNTS",
    "Population",
    "Reference",
    "Settings",
    "StepInfo",
    "init",
    "move",
    "reorder",
    "reweight",
    "score_step",
]

POTENTIALS = ("increment", "logit")
TARGETS = ("proposal", "base")

# How many times each jitted piece has been traced (a test checks that a piece compiles
# once per batch shape, whatever the difficulty, seed or problems).
TRACE_COUNTS: Counter = Counter()


class Settings(NamedTuple):
    """Static settings of the step (hashable: they are part of the compiled program).

    Attributes:
        num_particles: ``N``, particles per problem.
        temperature: the language model's sampling temperature (the proposal).
        stop_ids: token ids that end a step.
        end_ids: token ids that end a trace (not shown to the reward).
        max_step_tokens: a step that reaches this many tokens without a stop token ran away:
            the particle is ended there.
        max_steps: steps after which a particle is ended.
        potential: ``"increment"`` or ``"logit"`` (module docstring); ``"none"`` keeps the
            weights as they are (independent samples).
        weight_temperature: the ``logit`` potential's divisor (Puri et al.'s lambda).
        target: ``"proposal"`` or ``"base"`` (``increment`` only).
        aggregation: how step scores combine: ``"last"``, ``"min"`` or ``"product"``.
        score_clip: scores are clipped to ``[clip, 1 - clip]`` before logs and logits (the
            anchors use 1e-7; a verifier's error rate, see :mod:`~ppl.inference.llm.filters`);
            0 keeps exact zeros (weights of exactly zero).
        reward_reads_end: show the reward a step's end token too (a final check).
        unfinished_score: when >= 0, the score of a trace that is ended without an end
            token (ran away, hit the step or length limit): a verdict on whole traces gives
            those 0.
        reward_pass_tokens: columns of a step a JAX reward reads per pass
            (:func:`read_tokens`).
        placement: the devices the problems are split over (:func:`on_devices`), or None.
    """

    num_particles: int
    temperature: float
    stop_ids: tuple[int, ...]
    end_ids: tuple[int, ...]
    max_step_tokens: int
    max_steps: int
    potential: str = "increment"
    weight_temperature: float = 1.0
    target: str = "proposal"
    aggregation: str = "last"
    score_clip: float = 1e-7
    reward_reads_end: bool = False
    unfinished_score: float = -1.0
    reward_pass_tokens: int = 16
    placement: Placement | None = None


class Population(NamedTuple):
    """``G`` groups of ``N`` particles as ``B = G N`` rows.

    Attributes:
        lm: the language model's batched state.
        reward: the reward model's state (None on the host path or without a reward).
        tokens: ``(B, max_length)`` tokens generated after the prompt (0 beyond ``length``).
        length: ``(B,)`` how many tokens each row has generated.
        step_lengths: ``(B, max_steps)`` tokens of each step.
        num_steps: ``(B,)`` steps taken.
        num_scored: ``(B,)`` steps the reward scored (all but a step that is an end token).
        score: ``(B,)`` aggregated score of each row's trace so far (1 before any step).
        finished: ``(B,)`` absorbed rows.
        log_weights: ``(G, N)`` unnormalised log-weights.
        log_evidence: ``(G,)`` running ``log Z_t`` (``increment`` potential).
    """

    lm: TokenState
    reward: RewardState | None
    tokens: Int[Array, "rows length"]
    length: Int[Array, " rows"]
    step_lengths: Int[Array, "rows steps"]
    num_steps: Int[Array, " rows"]
    num_scored: Int[Array, " rows"]
    score: Float[Array, " rows"]
    finished: Bool[Array, " rows"]
    log_weights: Float[Array, "groups n"]
    log_evidence: Float[Array, " groups"]


class Reference(NamedTuple):
    """One retained trace per group for conditional SMC (particle Gibbs), in slot 0.

    Attributes:
        tokens: ``(G, max_steps, max_step_tokens)`` the reference's steps.
        step_lengths: ``(G, max_steps)`` tokens of each step (0 after its last).
    """

    tokens: Int[Array, "groups steps step_tokens"]
    step_lengths: Int[Array, "groups steps"]


class StepInfo(NamedTuple):
    """What a move-and-reweight did (small: it goes back to the host every step).

    Attributes:
        tokens: ``(G,)`` tokens sampled by each group's particles this step (every token
            counts, the particles that will be discarded included).
        scored: ``(G,)`` particles whose step the reward scored.
        forward_passes: sequential decoding passes of the language model this step.
        num_active: ``(G,)`` particles still generating after the step.
        bad_score_row: first row whose reward score was NaN or outside [0, 1] (-1: none).
        bad_score: that score.
        collapsed: ``(G,)`` every weight of the group is zero (``increment`` potential).
        log_evidence_increment: ``(G,)``.
    """

    tokens: Int[Array, " groups"]
    scored: Int[Array, " groups"]
    forward_passes: Int[Array, ""]
    num_active: Int[Array, " groups"]
    bad_score_row: Int[Array, ""]
    bad_score: Float[Array, ""]
    collapsed: Bool[Array, " groups"]
    log_evidence_increment: Float[Array, " groups"]


def on_devices(placement: Placement | None, fn, whole: tuple, split: tuple):
    """``fn(*whole, *split)``, each device computing it on its own rows.

    Every array in ``split`` and in the result has its rows (or problems) on axis 0, split
    in equal consecutive slices over ``placement`` (``driver.place_problems``); ``whole``
    (the models) is on every device. The models' own loops
    (decoding to a step boundary, reading a step, copying cache rows) then run per device
    with no communication (``shard_map``), where a partitioned program would agree across
    devices at every iteration. Without a placement this is ``fn(*whole, *split)``.
    """
    if placement is None:
        return fn(*whole, *split)
    arrays, static = eqx.partition((whole, split), eqx.is_array)
    rows = jax.sharding.PartitionSpec(placement.axis_name)

    def local(whole_arrays, split_arrays):
        w, s = eqx.combine((whole_arrays, split_arrays), static)
        return fn(*w, *s)

    return jax.shard_map(local, mesh=placement.mesh,
                         in_specs=(jax.sharding.PartitionSpec(), rows), out_specs=rows,
                         check_vma=False)(*arrays)


def init(
    lm: AbstractTokenModel,
    reward: AbstractRewardModel | None,
    prompt_ids: Int[Array, "groups width"],
    prompt_lengths: Int[Array, " groups"],
    context: Any,
    *,
    max_length: int,
    settings: Settings,
) -> Population:
    """Reads each problem's prompt once and copies its state to its ``N`` particles."""
    TRACE_COUNTS["init"] += 1
    return on_devices(
        settings.placement,
        lambda lm, reward, ids, lengths, context: _init(lm, reward, ids, lengths, context,
                                                        max_length, settings),
        (lm, reward), (prompt_ids, prompt_lengths, context))


def _init(lm, reward, prompt_ids, prompt_lengths, context, max_length, settings) -> Population:
    groups = prompt_ids.shape[0]
    n = settings.num_particles
    rows = jnp.repeat(jnp.arange(groups, dtype=jnp.int32), n)
    lm_state = lm.reorder(lm.init_state(prompt_ids, prompt_lengths, max_length), rows)
    reward_state = None
    if reward is not None:
        reward_state = reward.reorder(
            reward.init_state(prompt_ids, prompt_lengths, max_length, context), rows
        )
    batch = groups * n
    return Population(
        lm=lm_state,
        reward=reward_state,
        tokens=jnp.zeros((batch, max_length), jnp.int32),
        length=jnp.zeros((batch,), jnp.int32),
        step_lengths=jnp.zeros((batch, settings.max_steps), jnp.int32),
        num_steps=jnp.zeros((batch,), jnp.int32),
        num_scored=jnp.zeros((batch,), jnp.int32),
        score=jnp.ones((batch,), jnp.float32),
        finished=jnp.zeros((batch,), bool),
        log_weights=jnp.full((groups, n), -jnp.log(n), jnp.float32),
        log_evidence=jnp.zeros((groups,), jnp.float32),
    )


def reorder(
    lm: AbstractTokenModel,
    reward: AbstractRewardModel | None,
    population: Population,
    ancestors: Int[Array, " rows"],
    log_weights: Float[Array, "groups n"],
) -> Population:
    """Rows ``ancestors`` of everything (LM and reward states included) and new weights."""
    TRACE_COUNTS["reorder"] += 1
    take = lambda x: jnp.take(x, ancestors, axis=0)  # noqa: E731
    return population._replace(
        lm=lm.reorder(population.lm, ancestors),
        reward=None if population.reward is None else reward.reorder(population.reward, ancestors),
        tokens=take(population.tokens),
        length=take(population.length),
        step_lengths=take(population.step_lengths),
        num_steps=take(population.num_steps),
        num_scored=take(population.num_scored),
        score=take(population.score),
        finished=take(population.finished),
        log_weights=log_weights,
    )


def copy_rows(
    lm: AbstractTokenModel,
    reward: AbstractRewardModel | None,
    population: Population,
    destinations: Int[Array, " k"],
    sources: Int[Array, " k"],
    log_weights: Float[Array, "groups n"],
    placement: Placement | None = None,
) -> Population:
    """:func:`reorder` for offspring arranged in place: only the dead particles' rows are
    written (``destinations[i]`` from ``sources[i]``; out-of-range destinations ignored).
    With a ``placement`` each device copies its own rows: ``destinations`` and ``sources``
    hold, slice by slice, indices local to each device's rows (a problem's particles share
    a device, so no row crosses one)."""
    TRACE_COUNTS["copy_rows"] += 1
    return on_devices(placement, _copy_rows, (lm, reward),
                      (population, destinations, sources, log_weights))


def _copy_rows(lm, reward, population, destinations, sources, log_weights) -> Population:
    write = lambda x: x.at[destinations].set(x[sources], mode="drop")  # noqa: E731
    pop = population
    return pop._replace(
        lm=lm.copy_rows(pop.lm, destinations, sources),
        reward=None if pop.reward is None else reward.copy_rows(pop.reward, destinations,
                                                                sources),
        tokens=write(pop.tokens),
        length=write(pop.length),
        step_lengths=write(pop.step_lengths),
        num_steps=write(pop.num_steps),
        num_scored=write(pop.num_scored),
        score=write(pop.score),
        finished=write(pop.finished),
        log_weights=log_weights,
    )


class Moved(NamedTuple):
    """A population after the language model's move, before the reward.

    Attributes:
        population: tokens appended, finished rows marked (weights not yet updated).
        output: the language model's :class:`~ppl.token_adapter.StepOutput`.
        moved: ``(B,)`` rows that generated this step.
        reward_tokens: ``(B,)`` how many of the step's tokens the reward reads (the step
            without a trailing end token, unless the reward reads end tokens).
        forward_passes: sequential decoding passes this step.
        ended: ``(B,)`` rows whose step closed with an end token.
    """

    population: Population
    output: StepOutput
    moved: Bool[Array, " rows"]
    reward_tokens: Int[Array, " rows"]
    forward_passes: Int[Array, ""]
    ended: Bool[Array, " rows"]


def move(
    key,
    lm: AbstractTokenModel,
    population: Population,
    settings: Settings,
    reference: Reference | None = None,
    step_index: Int[Array, ""] | None = None,
) -> Moved:
    """``M_t``: every active row samples its next step (slot 0 of each group replays the
    reference's step instead, in conditional SMC)."""
    s = settings
    pop = population
    active = ~pop.finished
    state = pop.lm._replace(alive=pop.lm.alive & active)
    if reference is not None:
        n = s.num_particles
        is_reference = (jnp.arange(active.shape[0]) % n) == 0
        state = state._replace(alive=state.alive & ~is_reference)
    state, out = on_devices(
        s.placement,
        lambda lm, key, state: lm.sample_step(
            key, state, temperature=s.temperature, stop_ids=jnp.asarray(s.stop_ids, jnp.int32),
            max_new_tokens=s.max_step_tokens),
        (lm,), (key, state))
    forward_passes = jnp.max(out.num_tokens)
    if reference is not None:
        forced = jnp.repeat(reference.tokens[:, step_index], n, axis=0)
        forced_lengths = jnp.repeat(reference.step_lengths[:, step_index], n, axis=0)
        forced_lengths = jnp.where(is_reference & active, forced_lengths, 0)
        # force_step leaves rows given no tokens as they are (the sampled rows' deaths too).
        state = state._replace(
            alive=jnp.where(is_reference, pop.lm.alive & active, state.alive)
        )
        state, forced_out = on_devices(
            s.placement,
            lambda lm, *rows: lm.force_step(*rows, temperature=s.temperature),
            (lm,), (state, forced, forced_lengths))
        # Sampled rows keep what they sampled; reference rows take the forced step.
        pick = lambda a, b: jnp.where(  # noqa: E731
            is_reference.reshape((-1,) + (1,) * (a.ndim - 1)), b, a
        )
        out = jax.tree.map(pick, out, forced_out)
        forward_passes = forward_passes + 1
    num = out.num_tokens
    moved = num > 0
    last = jnp.take_along_axis(out.tokens, jnp.maximum(num - 1, 0)[:, None], axis=1)[:, 0]
    ended = moved & jnp.isin(last, jnp.asarray(s.end_ids or (-1,), jnp.int32))
    hit_stop = moved & jnp.isin(last, jnp.asarray(s.stop_ids, jnp.int32))
    died = moved & ~state.alive
    runaway = moved & ~hit_stop & ~died  # the step limit came before a boundary
    num_steps = pop.num_steps + moved
    finished = pop.finished | (active & ~moved) | died | runaway | (num_steps >= s.max_steps)
    tokens, step_lengths = on_devices(
        s.placement, _append, (s.max_steps,),
        (pop.tokens, pop.length, pop.step_lengths, pop.num_steps, out.tokens, num, moved))
    new = pop._replace(
        lm=state._replace(alive=state.alive & ~finished),
        tokens=tokens,
        length=pop.length + num,
        step_lengths=step_lengths,
        num_steps=num_steps,
        finished=finished,
    )
    shown = num if s.reward_reads_end else num - ended.astype(num.dtype)
    return Moved(new, out, moved, shown, forward_passes, ended)


def _append(max_steps: int, tokens, length, step_lengths, num_steps, step_tokens, num, moved):
    """The step appended to each row's token buffer (positions past a row's step are
    dropped) and its length to the row's step lengths (row by row: run per device)."""
    rows = jnp.arange(num.shape[0])
    columns = jnp.arange(step_tokens.shape[1])
    where = jnp.where(columns < num[:, None], length[:, None] + columns, tokens.shape[1])
    tokens = tokens.at[rows[:, None], where].set(step_tokens, mode="drop")
    step_column = jnp.where(moved, num_steps, max_steps)
    return tokens, step_lengths.at[rows, step_column].set(num, mode="drop")


def read_tokens(reward: AbstractRewardModel, state: RewardState, tokens, counts,
                pass_tokens: int = 16, placement: Placement | None = None) -> RewardState:
    """``reward.extend`` over ``tokens[b, :counts[b]]`` in passes of ``pass_tokens``
    columns, as many as the longest row needs (the same scores as one call: extending is
    incremental).

    Steps are far shorter than the room left for them (``max_step_tokens``), so one pass
    over the whole width would mostly read padding; a pass costs about what its width does
    (attention over the cache dominates), so the best width is about the longest usual step:
    on the testbed (lines of at most 11 tokens) 12 reads a step for about 0.65 of what 16 costs.
    With a ``placement`` each device reads its own rows (:func:`on_devices`).
    """
    return on_devices(placement, lambda reward, *rows: _read_tokens(reward, *rows, pass_tokens),
                      (reward,), (state, tokens, counts))


def _read_tokens(reward, state, tokens, counts, pass_tokens) -> RewardState:
    batch, width = tokens.shape
    if width <= pass_tokens:
        return reward.extend(state, tokens, counts)
    padded = -(-width // pass_tokens) * pass_tokens
    tokens = jnp.pad(tokens, ((0, 0), (0, padded - width)))

    def cond(carry):
        index, _ = carry
        return (index * pass_tokens < padded) & jnp.any(counts > index * pass_tokens)

    def body(carry):
        index, state = carry
        start = index * pass_tokens
        piece = jax.lax.dynamic_slice_in_dim(tokens, start, pass_tokens, axis=1)
        return index + 1, reward.extend(state, piece, jnp.clip(counts - start, 0, pass_tokens))

    _, state = jax.lax.while_loop(cond, body, (jnp.int32(0), state))
    return state


def score_step(reward: AbstractRewardModel, moved: Moved, pass_tokens: int = 16,
               placement: Placement | None = None) -> tuple[RewardState, Array]:
    """The JAX path of ``G_t``: the reward reads each moved row's step (in-graph)."""
    state = read_tokens(reward, moved.population.reward, moved.output.tokens,
                        moved.reward_tokens, pass_tokens, placement)
    return state, state.score


def _clip(score, clip):
    return jnp.clip(score, clip, 1.0 - clip) if clip > 0 else score


def reweight(
    moved: Moved,
    step_scores: Float[Array, " rows"] | None,
    reward_state: RewardState | None,
    settings: Settings,
    *,
    keep_forward_passes: bool = True,
) -> tuple[Population, StepInfo]:
    """``G_t``: scores to log-potentials, weights and evidence (the SMC core's ``reweight``).

    Args:
        moved: :func:`move`'s output.
        step_scores: ``(B,)`` the reward's score of each row after this step (rows that did
            not move are ignored), or None without a reward (every score 1).
        reward_state: the reward's new state (JAX path) or None.
    """
    s = settings
    pop = moved.population
    groups, n = pop.log_weights.shape
    scored = moved.moved & (moved.reward_tokens > 0)
    if step_scores is None:
        step_scores = jnp.ones_like(pop.score)
    step_scores = jnp.asarray(step_scores, jnp.float32)
    bad = scored & ~((step_scores >= 0) & (step_scores <= 1))
    bad_row = jnp.where(jnp.any(bad), jnp.argmax(bad), -1)
    bad_score = step_scores[jnp.maximum(bad_row, 0)]
    new_score = jnp.where(scored, aggregate(s.aggregation, pop.score, step_scores), pop.score)
    if s.unfinished_score >= 0:
        cut_short = moved.moved & pop.finished & ~moved.ended
        new_score = jnp.where(cut_short, jnp.float32(s.unfinished_score), new_score)
    if s.potential == "none":  # independent samples: scores recorded, weights untouched
        log_weights = pop.log_weights
        increment = jnp.zeros((groups,), jnp.float32)
        collapsed = jnp.zeros((groups,), bool)
    elif s.potential == "logit":
        r = _clip(new_score, s.score_clip)
        log_weights = (jnp.log(r) - jnp.log1p(-r)) / s.weight_temperature
        log_weights = log_weights.reshape(groups, n)
        increment = jnp.zeros((groups,), jnp.float32)
        collapsed = ~jnp.isfinite(jax.scipy.special.logsumexp(log_weights, axis=1))
    else:
        log_r = jnp.log(_clip(new_score, s.score_clip))
        log_r_before = jnp.log(_clip(pop.score, s.score_clip))
        # A zero score stays a zero weight (and -inf - -inf must not become NaN).
        log_g = jnp.where(log_r_before == -jnp.inf, 0.0, log_r - log_r_before)
        if s.target == "base":
            out = moved.output
            log_g = log_g + jnp.sum(out.base_log_probs - out.proposal_log_probs, axis=1)
        log_g = jnp.where(moved.moved, log_g, 0.0).reshape(groups, n)
        total = jax.scipy.special.logsumexp(pop.log_weights, axis=1, keepdims=True)
        log_after = jnp.where(jnp.isfinite(total), pop.log_weights - total, pop.log_weights)
        log_weights, increment, _, collapsed = jax.vmap(base.reweight)(log_after, log_g)
    per_group = lambda x: jnp.sum(x.reshape(groups, n), axis=1)  # noqa: E731
    info = StepInfo(
        tokens=per_group(moved.output.num_tokens),
        scored=per_group(scored.astype(jnp.int32)),
        forward_passes=moved.forward_passes if keep_forward_passes else jnp.int32(0),
        num_active=per_group((~pop.finished).astype(jnp.int32)),
        bad_score_row=bad_row.astype(jnp.int32),
        bad_score=bad_score,
        collapsed=collapsed,
        log_evidence_increment=increment,
    )
    new = pop._replace(
        reward=reward_state if reward_state is not None else pop.reward,
        num_scored=pop.num_scored + scored,
        score=new_score,
        log_weights=log_weights,
        log_evidence=pop.log_evidence + increment,
    )
    return new, info


def final_log_weights(population: Population) -> Float[Array, "groups n"]:
    """Normalised log-weights of each group's particles."""
    log_w = population.log_weights
    return log_w - jax.scipy.special.logsumexp(log_w, axis=1, keepdims=True)


# Jitted pieces. The models are pytrees of arrays (arguments, not constants); the settings
# are static; the population is donated, so that the KV cache is updated in place.
@eqx.filter_jit
def init_jit(lm, reward, prompt_ids, prompt_lengths, context, max_length, settings):
    return init(
        lm, reward, prompt_ids, prompt_lengths, context, max_length=max_length, settings=settings
    )


@eqx.filter_jit(donate="all-except-first")
def reorder_jit(inputs, population):
    """``reorder`` with ``inputs = (lm, reward, ancestors, log_weights)``."""
    lm, reward, ancestors, log_weights = inputs
    return reorder(lm, reward, population, ancestors, log_weights)


@eqx.filter_jit(donate="all-except-first")
def copy_rows_jit(inputs, population):
    """``copy_rows`` with ``inputs = (lm, reward, destinations, sources, log_weights)`` and
    optionally a placement last."""
    lm, reward, destinations, sources, log_weights, *placement = inputs
    return copy_rows(lm, reward, population, destinations, sources, log_weights, *placement)


@eqx.filter_jit(donate="all-except-first")
def advance_jit(inputs, population, settings):
    """Move, score in JAX and reweight: one compiled program per step (the JAX path)."""
    TRACE_COUNTS["advance"] += 1
    key, lm, reward, reference, step_index = inputs
    moved = move(key, lm, population, settings, reference, step_index)
    if reward is None:
        return reweight(moved, None, None, settings)
    reward_state, scores = score_step(reward, moved, settings.reward_pass_tokens,
                                      settings.placement)
    return reweight(moved, scores, reward_state, settings)


@eqx.filter_jit(donate="all-except-first")
def move_jit(inputs, population, settings):
    """The host path's first half: the language model's move."""
    TRACE_COUNTS["move"] += 1
    key, lm, reference, step_index = inputs
    return move(key, lm, population, settings, reference, step_index)


@eqx.filter_jit(donate="all-except-first")
def reweight_jit(scores, moved_and_state, settings):
    """The second half of a split step: the host's scores (and no reward state) or the JAX
    reward's (``moved_and_state = (moved, reward_state)``, both donated: the reward's cache
    is carried over in place, as in ``advance_jit``) to weights."""
    TRACE_COUNTS["reweight"] += 1
    moved, reward_state = moved_and_state
    return reweight(moved, scores, reward_state, settings)


@eqx.filter_jit(donate="all-except-first")
def score_jit(inputs, reward_state, pass_tokens, placement=None):
    """The JAX reward alone (the split step that profiling times piece by piece), with
    ``inputs = (reward, moved)``: ``moved`` without its reward state, which is passed apart
    and donated, so that the step is read into the cache in place (as in ``advance_jit``)
    rather than into a copy of it."""
    TRACE_COUNTS["score"] += 1
    reward, moved = inputs
    state = read_tokens(reward, reward_state, moved.output.tokens, moved.reward_tokens,
                        pass_tokens, placement)
    return state, state.score


@eqx.filter_jit
def resample_jit(key, log_weights, active, settings_key):
    """``R_t`` for every group at once (weights only: nothing is gathered here)."""
    TRACE_COUNTS["resample"] += 1
    resampling, ess_threshold, keep_first = settings_key
    return base.resample_groups(
        key,
        log_weights,
        active=active,
        resampling=resampling,
        ess_threshold=ess_threshold,
        keep_first=keep_first,
    )
