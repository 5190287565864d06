"""The host loop that runs one batch of problems through the SMC step until every trace ends.

Each iteration is one Feynman-Kac step (resample, move, reweight) over the whole batch:
the resampling decision comes back to the host as a few flags per group, the rows are
gathered only when some group resampled, and the step's counters and checks come back as
a :class:`~ppl.inference.llm.population.StepInfo`. The language model's state never leaves
the device. With a :class:`~ppl.reward_model.HostReward` the step is split in two: the move
is compiled, the traces of the rows that moved are decoded and scored in Python, and the
reweighting is compiled again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ppl.inference.llm import population as P
from ppl.inference.smc.base import GroupResampling

from ppl.reward_model import AbstractRewardModel, HostReward
from ppl.sharding import Placement, gather_to_host, shard_batch

__all__ = ["BatchOutput", "Budget", "ResamplePolicy", "run_batch"]

# (keys, population, step) -> a decision, or None to keep every particle this step; keys
# holds one PRNG key per group.
ResamplePolicy = Callable[[Any, P.Population, int], GroupResampling | None]


class Budget(NamedTuple):
    """What a batch cost, per problem (group) except the forward passes.

    Attributes:
        tokens: ``(G,)`` sampled tokens, every one counted once (discarded particles too).
        reward_calls: ``(G,)`` particle steps scored by the reward.
        forward_passes: sequential decoding passes of the language model over the batch.
    """

    tokens: np.ndarray
    reward_calls: np.ndarray
    forward_passes: int


class BatchOutput(NamedTuple):
    """The final population of a batch, on the host.

    Attributes:
        tokens: ``(B, max_length)`` generated tokens; ``length`` ``(B,)`` how many.
        step_lengths: ``(B, max_steps)``; ``num_steps``, ``num_scored``: ``(B,)``.
        score: ``(B,)`` final aggregated reward scores.
        finished: ``(B,)``.
        log_weights: ``(G, N)`` normalised final log-weights.
        log_evidence: ``(G,)`` (``increment`` potential; 0 otherwise).
        collapsed: ``(G,)`` groups whose weights all became zero (with ``allow_collapse``).
        budget: :class:`Budget`.
        history: per step, ``ess`` and ``resampled`` ``(G,)`` and ``num_active`` ``(G,)``.
    """

    tokens: np.ndarray
    length: np.ndarray
    step_lengths: np.ndarray
    num_steps: np.ndarray
    num_scored: np.ndarray
    score: np.ndarray
    finished: np.ndarray
    log_weights: np.ndarray
    log_evidence: np.ndarray
    collapsed: np.ndarray
    budget: Budget
    history: dict


@jax.jit
def _step_keys(problem_keys, step, row_particles):
    """Per-step keys that depend only on each problem's key: ``(G,)`` for resampling and
    ``(B,)`` (one per particle) for sampling, so batching never changes a problem's draws."""
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(problem_keys)
    resample_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(step_keys)
    move_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(step_keys)
    rows = jnp.repeat(move_keys, row_particles.shape[0] // problem_keys.shape[0], axis=0)
    return resample_keys, jax.vmap(jax.random.fold_in)(rows, row_particles)


def run_batch(
    problem_keys,
    *,
    lm,
    reward: AbstractRewardModel | HostReward | None,
    prompts: Sequence[str],
    prompt_ids: np.ndarray,
    prompt_lengths: np.ndarray,
    context: Any,
    max_length: int,
    settings: P.Settings,
    policy: ResamplePolicy | None,
    decode: Callable[[Sequence[int]], str],
    reference: P.Reference | None = None,
    allow_collapse: bool = False,
    on_step: Callable[[int, P.StepInfo], None] | None = None,
    group_labels: Sequence[str] | None = None,
    timings: dict | None = None,
) -> BatchOutput:
    """Runs ``len(prompts)`` problems of ``settings.num_particles`` particles to the end.

    Args:
        problem_keys: ``(G,)`` PRNG keys, one per problem: a problem's draws depend on its
            key only, not on the other problems of the batch.
        lm: the token model.
        reward: a JAX reward model, a host reward, or None (every score 1).
        prompts: one per group (for host rewards and error messages).
        prompt_ids, prompt_lengths: ``(G, width)`` and ``(G,)`` right-padded prompt tokens.
        context: the JAX reward's ``prepare(prompts)`` output (or None).
        max_length: the buffer length (prompt plus trace).
        settings: the step's static settings.
        policy: the resampling rule, or None (never resample: independent samples).
        decode: token ids to text (host rewards and messages).
        reference: conditional SMC's retained traces (slot 0 of every group), or None.
        allow_collapse: record a group whose weights all vanish instead of raising.
        on_step: called after every step with its info (progress bars).
        group_labels: how errors name the groups (default: the prompts).
        timings: when a dict, each step runs in separately timed pieces and the seconds
            spent in the language model (``"lm"``) and the reward (``"reward"``) are added
            to it (profiling; the split adds a little dispatch of its own).

    With ``settings.placement`` the problems are split over its devices
    (:func:`place_problems`).
    """
    n = settings.num_particles
    groups = len(prompts)
    placement = settings.placement
    if placement is not None:
        problem_keys, prompt_ids, prompt_lengths, context, reference = place_problems(
            placement, problem_keys, prompt_ids, prompt_lengths, context, reference)
    labels = list(group_labels) if group_labels is not None else [repr(p) for p in prompts]
    jax_reward = reward if isinstance(reward, AbstractRewardModel) else None
    host_reward = reward if isinstance(reward, HostReward) else None
    clock = time.perf_counter()
    population = _on(placement, P.init_jit(
        lm, jax_reward, jnp.asarray(prompt_ids), jnp.asarray(prompt_lengths), context,
        max_length, settings,
    ))
    # Reading the prompts is the models' forward pass (most of it the language model's).
    _lap(timings, "lm", clock, population)
    row_prompts = [p for p in prompts for _ in range(n)]
    texts = [""] * (groups * n)
    tokens = np.zeros(groups, np.int64)
    reward_calls = np.zeros(groups, np.int64)
    forward_passes = 0
    collapsed = np.zeros(groups, bool)
    history = {"ess": [], "resampled": [], "num_active": []}
    row_particles = np.tile(np.arange(n, dtype=np.uint32), groups)
    for step in range(settings.max_steps):
        resample_keys, move_keys = _step_keys(problem_keys, step, row_particles)
        if policy is not None and step > 0:
            clock = time.perf_counter()
            decision = policy(resample_keys, population, step)
            if decision is not None:
                resampled, ess, local = gather_to_host(
                    (decision.resampled, decision.ess, decision.ancestors))
                history["ess"].append(ess)
                history["resampled"].append(resampled)
                clock = _lap(timings, "resample", clock, None)
                if resampled.any():
                    ancestors = (local + n * np.arange(groups)[:, None]).reshape(-1)
                    population = _copy_offspring(lm, jax_reward, population, ancestors,
                                                 decision.log_weights, placement)
                    _lap(timings, "copy", clock, population)
                    if host_reward is not None:
                        texts = [texts[i] for i in ancestors]
        step_index = jnp.int32(step)
        if host_reward is None and timings is None:
            population, info = P.advance_jit(
                (move_keys, lm, jax_reward, reference, step_index), population, settings
            )
            population = _on(placement, population)
        else:
            clock = time.perf_counter()
            moved = P.move_jit((move_keys, lm, reference, step_index), population, settings)
            clock = _lap(timings, "lm", clock, moved)
            # The reward's state travels apart from ``moved`` so that each piece can take
            # (donate) it and update its cache in place, as the fused step does.
            reward_state = moved.population.reward
            moved = moved._replace(population=moved.population._replace(reward=None))
            if host_reward is not None:
                scores, texts = _score_on_host(host_reward, moved, row_prompts, texts, decode)
                scores = jnp.asarray(scores)
            elif jax_reward is not None:
                reward_state, scores = P.score_jit((jax_reward, moved), reward_state,
                                                   settings.reward_pass_tokens, placement)
            else:
                scores = None
            clock = _lap(timings, "reward", clock, scores)
            population, info = P.reweight_jit(scores, (moved, reward_state), settings)
            population = _on(placement, population)
        info = gather_to_host(info)
        _check_step(info, step, labels, n, reward, settings, allow_collapse)
        collapsed |= np.asarray(info.collapsed)
        tokens += np.asarray(info.tokens)
        reward_calls += np.asarray(info.scored) if reward is not None else 0
        forward_passes += int(info.forward_passes)
        history["num_active"].append(np.asarray(info.num_active))
        if on_step is not None:
            on_step(step, info)
        if not np.any(info.num_active):
            break
    # Everything but the models' states (the KV cache stays on the device).
    final = gather_to_host(population._replace(lm=None, reward=None))
    return BatchOutput(
        tokens=np.asarray(final.tokens),
        length=np.asarray(final.length),
        step_lengths=np.asarray(final.step_lengths),
        num_steps=np.asarray(final.num_steps),
        num_scored=np.asarray(final.num_scored),
        score=np.asarray(final.score),
        finished=np.asarray(final.finished),
        log_weights=np.asarray(P.final_log_weights(final)),
        log_evidence=np.asarray(final.log_evidence),
        collapsed=collapsed,
        budget=Budget(tokens, reward_calls, forward_passes),
        history={k: np.asarray(v) for k, v in history.items()},
    )


def place_problems(placement: Placement, problem_keys, prompt_ids, prompt_lengths, context,
                   reference):
    """The batch's problems split over ``placement``'s devices, whole: problem ``g`` and its
    ``N`` particle rows (``g N .. g N + N - 1``) land on the same device, since every array
    of a population has its rows or its problems on axis 0 and both split in equal
    consecutive slices. Resampling, which copies rows within a problem, then never crosses
    devices. The problem count must divide by the device count (``run`` pads it)."""
    groups, num = len(prompt_lengths), placement.num_devices
    if groups % num:
        raise ValueError(f"Expected a number of problems per batch divisible by the {num} "
                         f"devices, got {groups}.")
    # Host values (the same on every process) placed slice by slice.
    split = lambda x: None if x is None else shard_batch(  # noqa: E731
        gather_to_host(x), placement.axis_name, placement).array
    # problem_keys may be a typed key array: shard_batch places its key data.
    return (shard_batch(problem_keys, placement.axis_name, placement).array,
            split(prompt_ids), split(prompt_lengths), split(context), split(reference))


def _on(placement: Placement | None, population: P.Population) -> P.Population:
    """``population`` with every array split by rows (or problems) over ``placement``: a
    no-op where a compiled piece kept the split, a re-split where XLA chose another."""
    if placement is None:
        return population
    target = placement.batch_sharding

    def one(x):
        if not isinstance(x, jax.Array) or x.ndim == 0 or x.sharding.is_equivalent_to(
                target, x.ndim):
            return x
        return jax.device_put(x, target)

    return jax.tree_util.tree_map(one, population)


def _lap(timings, name, clock, outputs):
    """Adds the time since ``clock`` to ``timings[name]`` once ``outputs`` are computed."""
    if timings is None:
        return clock
    jax.block_until_ready(outputs)
    now = time.perf_counter()
    timings[name] = timings.get(name, 0.0) + now - clock
    return now


def padded_copies(ancestors: np.ndarray, num_slices: int = 1
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """``(destinations, sources)`` of the rows that change (offspring in place: see
    :func:`ppl.inference.smc.base.in_place`), padded with out-of-range destinations to a
    power of two, so that a copy compiles a few times only and costs what moved; None when
    nothing moved.

    With ``num_slices > 1`` the rows are split in that many equal consecutive slices (one a
    device) and the result is their lists one after the other, each padded to the same
    size and holding indices local to its slice (a row is only ever copied within its
    problem, so within its slice)."""
    rows = np.flatnonzero(ancestors != np.arange(len(ancestors)))
    if rows.size == 0:
        return None
    per_slice = len(ancestors) // num_slices
    slices = rows // per_slice
    if np.any(ancestors[rows] // per_slice != slices):
        raise AssertionError("a resampled row's parent lies on another device")
    most = int(np.bincount(slices, minlength=num_slices).max())
    size = min(per_slice, max(8, 1 << int(np.ceil(np.log2(most)))))
    destinations = np.full((num_slices, size), per_slice, np.int32)
    sources = np.zeros((num_slices, size), np.int32)
    for index in range(num_slices):
        mine = rows[slices == index]
        destinations[index, : mine.size] = mine - index * per_slice
        sources[index, : mine.size] = ancestors[mine] - index * per_slice
    return destinations.reshape(-1), sources.reshape(-1)


def _copy_offspring(lm, reward, population, ancestors: np.ndarray, log_weights,
                    placement: Placement | None = None):
    """Writes each dead particle's row from its new parent (:func:`padded_copies`), each
    device its own rows under a ``placement``."""
    slices = 1 if placement is None else placement.num_devices
    copies = padded_copies(ancestors, slices)
    if copies is None:
        return population._replace(log_weights=log_weights)
    if placement is None:
        destinations, sources = map(jnp.asarray, copies)
    else:
        destinations, sources = shard_batch(copies, placement.axis_name, placement).array
    return _on(placement, P.copy_rows_jit(
        (lm, reward, destinations, sources, log_weights, placement), population))


def _score_on_host(host_reward, moved, row_prompts, texts, decode):
    """Decodes the traces of the rows that moved and scores them with the host reward."""
    pop, is_moved, reward_tokens = gather_to_host(
        (moved.population._replace(lm=None, reward=None), moved.moved, moved.reward_tokens))
    scores = np.ones(len(texts), np.float32)
    rows = np.flatnonzero(is_moved & (reward_tokens > 0))
    texts = list(texts)
    for row in np.flatnonzero(is_moved):
        texts[row] = decode(pop.tokens[row, : pop.length[row]])
    if rows.size:
        scores[rows] = host_reward([row_prompts[r] for r in rows], [texts[r] for r in rows])
    return scores, texts


def _check_step(info, step, labels, n, reward, settings, allow_collapse):
    """Host-side checks after a step: bad reward scores and collapsed groups."""
    row = int(info.bad_score_row)
    if row >= 0:
        name = repr(reward) if reward is not None else "reward"
        raise ValueError(
            f"The reward {name} returned {float(info.bad_score)!r} for particle {row % n} of "
            f"problem {labels[row // n]} at step {step}: expected a score in [0, 1]."
        )
    collapsed = np.asarray(info.collapsed)
    if collapsed.any() and not allow_collapse:
        group = int(np.argmax(collapsed))
        raise ValueError(
            f"Every particle's weight is zero at step {step} for problem {labels[group]}: the "
            f"reward gave every particle a score of 0. Clip the scores (score_clip > 0, the "
            f"default 1e-7 keeps every weight positive) or pass allow_collapse=True to record "
            f"such problems (log-evidence -inf, no answer) and go on."
        )
