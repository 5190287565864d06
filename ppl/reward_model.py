"""The reward-model protocol: how a process reward model (PRM) scores partial traces for SMC.

A PRM scores a partial reasoning trace (the text a particle has generated after its prompt):
a number in ``[0, 1]``, read as the probability that every step so far is right. The SMC
core (``inference/llm/``) needs these scores batched over particles, at every step, without
re-reading the prefix. Two paths serve it through the same SMC step:

- :class:`AbstractRewardModel`, the JAX path: the PRM is an equinox module with a cached
  state, like the language model's KV cache. ``init_state`` reads the prompts, ``extend``
  reads each step's tokens and returns the new score of every row, ``reorder`` follows the
  particles after resampling. Scored in-graph, on token ids: no host round trip per step.
- :class:`HostReward`, the host path: any Python callable on decoded text (an exact
  checker, a user's function, a PRM behind a server), called once per step with the text of
  every particle that moved.

How step scores combine into a particle's score (its latest, the minimum or the product of
its step scores) is a setting of the algorithms, not of the PRM: see :data:`AGGREGATIONS`.

This module imports nothing from ``models/`` or ``inference/``: ``models/lm/`` implements the
protocol and ``inference/llm/`` consumes it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

__all__ = [
    "AGGREGATIONS",
    "AbstractRewardModel",
    "FinalCheck",
    "HostReward",
    "RewardState",
    "aggregate",
    "check_scores",
]

# How the step scores r_1, r_2, ... of a particle combine into its score after step t.
AGGREGATIONS = ("last", "min", "product")


class RewardState(NamedTuple):
    """Batched state of a reward model.

    Attributes:
        cache: the model's own state (a KV cache, a running check), a pytree whose leaves
            have the batch on axis 0.
        score: ``(batch,)`` score of each row's prefix after the tokens read so far (1 before
            the first step; rows given no tokens keep theirs).
    """

    cache: Any
    score: Float[Array, " batch"]


class AbstractRewardModel(eqx.Module):
    """A process reward model scored in JAX, incrementally, batched over particles.

    Every method but :meth:`prepare` is a pure function with static shapes; the caller jits.
    Rows are the particles: the same prompt repeated once per particle of its problem.
    The SMC core shows a reward each step's tokens without a trailing end token (a PRM
    judges text), unless the reward sets ``reads_end_tokens = True``.
    """

    reads_end_tokens = False
    # How far the weights may trust a score of 0 or 1: potentials clip scores to
    # [score_clip, 1 - score_clip]. None leaves it to the caller (``ppl.inference.llm.run``:
    # 1e-7); a verifier that errs at a known rate declares that rate, so that one false reject
    # cannot end the only correct lineage (NoisyOracleReward does).
    score_clip = None

    def prepare(self, prompts: Sequence[str]) -> Any:
        """Host-side, once per batch of problems: what the PRM needs to know about each
        prompt beyond its tokens (the oracle's reference solution, say).

        Returns a pytree whose leaves have one row per prompt, or None (the default).
        """
        del prompts
        return None

    @abc.abstractmethod
    def init_state(
        self,
        prompt_ids: Int[Array, "batch prompt"],
        prompt_lengths: Int[Array, " batch"],
        max_length: int,
        context: Any = None,
    ) -> RewardState:
        """Reads right-padded prompts into a fresh state (score 1 for every row).

        Args:
            prompt_ids: ``(batch, prompt)`` token ids, row ``b`` valid up to
                ``prompt_lengths[b]``.
            prompt_lengths: ``(batch,)`` prompt lengths.
            max_length: static size of the buffer (prompt plus everything generated later).
            context: :meth:`prepare`'s output with its rows repeated to the batch (row ``b``
                belongs to row ``b`` of the prompts), or None.
        """

    @abc.abstractmethod
    def extend(
        self,
        state: RewardState,
        tokens: Int[Array, "batch chunk"],
        num_valid: Int[Array, " batch"],
    ) -> RewardState:
        """Reads one step's tokens (row ``b`` valid up to ``num_valid[b]``; 0 leaves the row
        as it is) and scores every row's prefix after them (``state.score``)."""

    def reorder(self, state: RewardState, ancestors: Int[Array, " batch"]) -> RewardState:
        """Gathers rows ``ancestors`` of every leaf (batch on axis 0; override otherwise)."""
        return jax.tree.map(lambda x: jnp.take(x, ancestors, axis=0), state)

    def copy_rows(
        self, state: RewardState, destinations: Int[Array, " k"], sources: Int[Array, " k"]
    ) -> RewardState:
        """Row ``destinations[i]`` becomes a copy of row ``sources[i]`` (out-of-range
        destinations ignored; see ``AbstractTokenModel.copy_rows``). The default writes
        every leaf's rows in place (batch on axis 0; override otherwise)."""
        return jax.tree.map(lambda x: x.at[destinations].set(x[sources], mode="drop"), state)


class FinalCheck(AbstractRewardModel):
    """A twist for the prefixes and an exact check of the finished trace.

    Twisted SMC (Zhao et al. 2024) targets ``p_LM(x) phi(x) / Z`` with ``phi`` a verdict on
    the whole trace. Its intermediate potentials are a twist ``psi_t(x_1..t)``, an estimate of
    ``E[phi | x_1..t]``; for the evidence to be unbiased the last one must be ``phi`` itself.
    This combinator scores a prefix by ``twist`` (1 everywhere when ``twist`` is None: plain
    SMC, weights only at the end) and a step that ends the trace (one holding an end token)
    by ``final``, which reads the end token too (``reads_end_tokens``).

    Attributes:
        twist: the prefixes' scores (or None).
        final: the verdict on a finished trace, e.g. an exact checker that reads end tokens.
        end_ids: the token ids that end a trace (the language model's ``end_ids``).
    """

    twist: AbstractRewardModel | None
    final: AbstractRewardModel
    end_ids: tuple[int, ...] = eqx.field(static=True)

    # The driver shows this reward every token of a step, the end token included.
    reads_end_tokens = True

    def prepare(self, prompts: Sequence[str]) -> Any:
        twist = None if self.twist is None else self.twist.prepare(prompts)
        return (twist, self.final.prepare(prompts))

    def init_state(self, prompt_ids, prompt_lengths, max_length, context=None) -> RewardState:
        twist_context, final_context = context if context is not None else (None, None)
        final = self.final.init_state(prompt_ids, prompt_lengths, max_length, final_context)
        twist = None if self.twist is None else self.twist.init_state(
            prompt_ids, prompt_lengths, max_length, twist_context)
        score = jnp.ones_like(final.score) if twist is None else twist.score
        return RewardState((twist, final), score)

    def extend(self, state, tokens, num_valid) -> RewardState:
        twist, final = state.cache
        tokens = jnp.asarray(tokens)
        valid = jnp.arange(tokens.shape[1])[None] < jnp.asarray(num_valid)[:, None]
        ends = valid & jnp.isin(tokens, jnp.asarray(self.end_ids or (-1,), jnp.int32))
        ended = jnp.any(ends, axis=1)
        # The twist reads the step up to its end token; the final check reads all of it.
        before_end = jnp.where(ended, jnp.argmax(ends, axis=1), num_valid)
        final = self.final.extend(final, tokens, num_valid)
        if twist is not None:
            twist = self.twist.extend(twist, tokens, before_end.astype(jnp.int32))
            prefix_score = twist.score
        else:
            prefix_score = state.score
        score = jnp.where(ended, final.score, jnp.where(num_valid > 0, prefix_score,
                                                        state.score))
        return RewardState((twist, final), score)

    def next_scores(self, state) -> jnp.ndarray:
        """``(batch, vocab)``: the score after each possible next token (the final check's
        for end tokens, the twist's, or 1 without one, for the others). Needs ``next_scores``
        on ``final`` and on ``twist``."""
        twist, final = state.cache
        for name, part in (("final", self.final), ("twist", self.twist)):
            if part is not None and not hasattr(part, "next_scores"):
                raise ValueError(
                    f"Expected a {name} with next_scores (the score after every possible next "
                    f"token at once) for the token-level proposal; {type(part).__name__} has "
                    "none: use the step-level proposal.")
        final_scores = self.final.next_scores(final)
        vocab = jnp.arange(final_scores.shape[1])
        is_end = jnp.isin(vocab, jnp.asarray(self.end_ids or (-1,), jnp.int32))
        prefix = (jnp.ones_like(final_scores) if twist is None
                  else self.twist.next_scores(twist))
        return jnp.where(is_end[None], final_scores, prefix)

    def reorder(self, state, ancestors) -> RewardState:
        twist, final = state.cache
        twist = None if twist is None else self.twist.reorder(twist, ancestors)
        return RewardState((twist, self.final.reorder(final, ancestors)),
                           state.score[ancestors])

    def copy_rows(self, state, destinations, sources) -> RewardState:
        twist, final = state.cache
        twist = None if twist is None else self.twist.copy_rows(twist, destinations, sources)
        final = self.final.copy_rows(final, destinations, sources)
        score = state.score.at[destinations].set(state.score[sources], mode="drop")
        return RewardState((twist, final), score)


class HostReward:
    """A reward computed in Python on decoded text: the host path.

    Args:
        score_fn: ``(prompts, traces) -> scores``: two lists of strings of equal length (a
            prompt and the text generated after it so far, one pair per particle that moved
            this step) to a sequence of floats in ``[0, 1]``, one per pair.
        name: shown in results and errors.
        score_clip: how far a score of 0 or 1 is to be trusted (as
            :attr:`AbstractRewardModel.score_clip`): a checker known to err at rate ``e``
            passes ``e``; None leaves it to the caller.

    Example:
        >>> reward = HostReward(lambda prompts, traces: [float("7" in t) for t in traces])
        >>> reward(["Q 1 +6\\n"], ["1+6=7\\n"])
        array([1.], dtype=float32)
    """

    def __init__(self, score_fn: Callable[[list[str], list[str]], Sequence[float]], *,
                 name: str | None = None, score_clip: float | None = None):
        if not callable(score_fn):
            raise TypeError(f"Expected score_fn to be callable, got {type(score_fn).__name__}.")
        if score_clip is not None and not 0 <= score_clip < 0.5:
            raise ValueError(f"Expected score_clip in [0, 0.5) or None, got {score_clip!r}.")
        self.score_fn = score_fn
        self.score_clip = score_clip
        self.name = name or getattr(score_fn, "__name__", type(score_fn).__name__)

    def __call__(self, prompts: Sequence[str], traces: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(traces):
            raise ValueError(
                f"Expected as many prompts as traces, got {len(prompts)} and {len(traces)}."
            )
        if not traces:
            return np.zeros((0,), np.float32)
        scores = np.asarray(self.score_fn(list(prompts), list(traces)), np.float32)
        if scores.shape != (len(traces),):
            raise ValueError(
                f"Expected the reward {self.name!r} to return {len(traces)} scores (one per "
                f"trace), got an array of shape {scores.shape}."
            )
        return scores

    def __repr__(self) -> str:
        return f"HostReward({self.name})"


def aggregate(
    how: str, previous: Float[Array, " batch"], step_score: Float[Array, " batch"]
) -> Float[Array, " batch"]:
    """A particle's score after a step from its score before and the step's score.

    ``last``: the latest step score (a PRM that judges the whole prefix); ``min``: the worst
    step so far; ``product``: the product of the step scores (each read as the chance that
    step is right given the ones before). Scores start at 1.
    """
    if how == "last":
        return step_score
    if how == "min":
        return jnp.minimum(previous, step_score)
    if how == "product":
        return previous * step_score
    raise ValueError(f"Expected aggregation to be one of {', '.join(AGGREGATIONS)}, got {how!r}.")


def check_scores(scores, *, who: str, step: int, rows=None) -> None:
    """Host-side: raise naming the particle and step when a score is NaN or outside [0, 1].

    Args:
        scores: ``(batch,)`` scores just returned by a reward.
        who: the reward's name, for the message.
        step: the SMC step (0-based) that produced them.
        rows: optional labels of the rows (e.g. ``(problem, particle)`` pairs) for the message.
    """
    scores = np.asarray(scores)
    bad = ~((scores >= 0) & (scores <= 1))  # NaN compares false both ways
    if bad.any():
        index = int(np.argmax(bad))
        where = f"particle {index}" if rows is None else f"particle {rows[index]}"
        raise ValueError(
            f"The reward {who} returned {scores[index]!r} for {where} at step {step}: "
            f"expected a score in [0, 1] ({int(bad.sum())} of {scores.size} scores are not)."
        )
