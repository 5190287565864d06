"""Process reward models for the arithmetic testbed: the oracle, a noisy oracle, a learned one.

A PRM scores a partial trace: the probability that every step so far is correct. The
oracle knows (it runs the exact checker, ``tasks.step_labels``); the learned PRM is a small
Qwen2 body with a one-unit head read at the token that ends each step, trained by
``train_prm.py`` on the testbed language model's own samples labelled by the checker. Its
mistakes are what a real PRM's would be: it must redo the arithmetic to judge it.

Two interfaces:

- on strings, for evaluation scripts: :class:`OraclePRM` and :meth:`LearnedPRM.step_scores`;
- on token ids, incrementally, for the particle filters (``ppl.reward_model``'s protocol,
  :class:`~ppl.reward_model.AbstractRewardModel`): :class:`OracleReward`,
  :class:`NoisyOracleReward` and :meth:`LearnedPRM.reward_model` (a cached
  :class:`~ppl.models.lm.reward.TransformerRewardModel`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, UInt32

from ppl.reward_model import AbstractRewardModel, RewardState

from .. import qwen2
from ..reward import TransformerRewardModel
from . import data, tasks


class OraclePRM:
    """Exact step checker: 1 for a prefix whose steps are all correct, 0 otherwise."""

    def step_scores(self, problem: tasks.Problem, trace: str) -> np.ndarray:
        """Score after each complete line of ``trace`` (text after the prompt)."""
        return np.asarray(tasks.step_labels(problem, trace), np.float32)

    def score(self, problem: tasks.Problem, trace: str) -> float:
        """Score of the prefix up to its last complete line (1 for an empty prefix)."""
        scores = self.step_scores(problem, trace)
        return float(scores[-1]) if len(scores) else 1.0

class OracleContext(NamedTuple):
    """What :meth:`OracleReward.prepare` knows of each prompt: its reference solution.

    Attributes:
        reference_ids: ``(problems, width)`` the correct trace's token ids followed by
            ``<eos>``, right-padded with ``<pad>``.
        reference_lengths: ``(problems,)`` valid length of each row (``<eos>`` included).
    """

    reference_ids: Int[Array, "problems width"]
    reference_lengths: Int[Array, " problems"]


class OracleCache(NamedTuple):
    """Per-row state of the oracle: the reference and how far the trace has followed it.

    Attributes:
        reference_ids: ``(batch, width)`` as in :class:`OracleContext`, one row per particle.
        reference_lengths: ``(batch,)``.
        matching: ``(batch,)`` every trace token read so far equals the reference's.
        num_read: ``(batch,)`` trace tokens read so far.
    """

    reference_ids: Int[Array, "batch width"]
    reference_lengths: Int[Array, " batch"]
    matching: Bool[Array, " batch"]
    num_read: Int[Array, " batch"]


def _check_rank(name: str, x, rank: int) -> None:
    if x.ndim != rank:
        raise ValueError(f"Expected {name} of rank {rank}, got shape {tuple(x.shape)}.")


def _check_step(state: RewardState, tokens, num_valid):
    """Shapes and ranges of ``extend``'s arguments; returns them as int32 arrays."""
    tokens, num_valid = jnp.asarray(tokens), jnp.asarray(num_valid)
    _check_rank("tokens", tokens, 2)
    _check_rank("num_valid", num_valid, 1)
    batch, chunk = tokens.shape
    if num_valid.shape != (batch,):
        raise ValueError(
            f"Expected num_valid of shape ({batch},) (one count per row of tokens), got "
            f"{tuple(num_valid.shape)}."
        )
    if state.score.shape != (batch,):
        raise ValueError(
            f"Expected a state of batch {batch} (the rows of tokens), got scores of shape "
            f"{tuple(state.score.shape)}."
        )
    num_valid = eqx.error_if(
        num_valid.astype(jnp.int32),
        (num_valid < 0) | (num_valid > chunk),
        "Expected num_valid in 0 .. chunk",
    )
    return tokens.astype(jnp.int32), num_valid


def _oracle_context(prompts: Sequence[str]) -> OracleContext:
    references = []
    for prompt in prompts:
        problem = tasks.parse_prompt(prompt)
        references.append(data.encode(problem.solution()) + [data.EOS_ID])
    if not references:
        raise ValueError("Expected at least one prompt, got none.")
    lengths = np.array([len(r) for r in references], np.int32)
    ids = np.full((len(references), lengths.max()), data.PAD_ID, np.int32)
    for row, reference in enumerate(references):
        ids[row, : len(reference)] = reference
    return OracleContext(jnp.asarray(ids), jnp.asarray(lengths))


def _oracle_init(batch: int, context) -> OracleCache:
    if not isinstance(context, OracleContext):
        raise ValueError(
            "Expected context to be prepare(prompts)'s OracleContext (rows repeated to the "
            f"batch), got {type(context).__name__}."
        )
    reference_ids = jnp.asarray(context.reference_ids)
    reference_lengths = jnp.asarray(context.reference_lengths)
    _check_rank("context.reference_ids", reference_ids, 2)
    if reference_ids.shape[0] != batch or reference_lengths.shape != (batch,):
        raise ValueError(
            f"Expected a context of {batch} rows (one per row of prompt_ids), got reference_ids "
            f"of shape {tuple(reference_ids.shape)} and reference_lengths of shape "
            f"{tuple(reference_lengths.shape)}."
        )
    return OracleCache(
        reference_ids.astype(jnp.int32),
        reference_lengths.astype(jnp.int32),
        jnp.ones((batch,), bool),
        jnp.zeros((batch,), jnp.int32),
    )


def _oracle_read(cache: OracleCache, tokens, num_valid) -> OracleCache:
    """The oracle's cache after ``tokens[b, :num_valid[b]]``: still matching the reference?"""
    steps = jnp.arange(tokens.shape[1])
    index = cache.num_read[:, None] + steps  # position of each token in the trace
    width = cache.reference_ids.shape[1]
    expected = jnp.take_along_axis(cache.reference_ids, jnp.clip(index, 0, width - 1), axis=1)
    # Past the reference's end (its <eos>) nothing matches.
    agree = (index < cache.reference_lengths[:, None]) & (tokens == expected)
    valid = steps < num_valid[:, None]
    matching = cache.matching & jnp.all(agree | ~valid, axis=1)
    return cache._replace(matching=matching, num_read=cache.num_read + num_valid)


class OracleReward(AbstractRewardModel):
    """The exact checker on token ids, incrementally: 1 while the trace follows the reference.

    ``prepare`` parses each prompt (``tasks.parse_prompt``) and keeps the reference solution's
    tokens plus ``<eos>``. The score after a step is the running product of agreement: 1 while
    every trace token read so far equals the reference's, 0 from the first mismatch on
    (tokens past the reference's ``<eos>`` mismatch). At the newline that ends a step it equals
    ``tasks.step_labels(problem, trace)[-1]``; at the ``<eos>`` after the answer line it is
    1 exactly for the correct solution.

    Example:
        >>> import jax.numpy as jnp
        >>> oracle = OracleReward()
        >>> context = oracle.prepare(["Q 2 +3\\n"])
        >>> prompt = jnp.array([data.encode("Q 2 +3\\n")])
        >>> state = oracle.init_state(prompt, jnp.array([7]), 32, context)
        >>> state = oracle.extend(state, jnp.array([data.encode("2+3=5\\n")]), jnp.array([6]))
        >>> float(state.score[0])
        1.0
        >>> state = oracle.extend(state, jnp.array([data.encode("A 6\\n")]), jnp.array([4]))
        >>> float(state.score[0])
        0.0
    """

    def prepare(self, prompts: Sequence[str]) -> OracleContext:
        """The reference solution (plus ``<eos>``) of each prompt, padded: one row each."""
        return _oracle_context(prompts)

    def init_state(
        self,
        prompt_ids: Int[Array, "batch prompt"],
        prompt_lengths: Int[Array, " batch"],
        max_length: int,
        context: OracleContext | None = None,
    ) -> RewardState:
        del prompt_lengths, max_length
        prompt_ids = jnp.asarray(prompt_ids)
        _check_rank("prompt_ids", prompt_ids, 2)
        batch = prompt_ids.shape[0]
        return RewardState(_oracle_init(batch, context), jnp.ones((batch,), jnp.float32))

    def extend(
        self,
        state: RewardState,
        tokens: Int[Array, "batch chunk"],
        num_valid: Int[Array, " batch"],
    ) -> RewardState:
        tokens, num_valid = _check_step(state, tokens, num_valid)
        cache = _oracle_read(state.cache, tokens, num_valid)
        return RewardState(cache, cache.matching.astype(jnp.float32))

    def next_scores(self, state: RewardState) -> Float[Array, "batch vocab"]:
        """The score after each possible next token, for every row at once: 1 for the
        reference's next token while the trace still follows it, 0 for every other (what
        ``extend`` with that one token would give; the token-level twisted proposal uses it)."""
        cache = state.cache
        width = cache.reference_ids.shape[1]
        index = jnp.clip(cache.num_read, 0, width - 1)
        expected = jnp.take_along_axis(cache.reference_ids, index[:, None], axis=1)[:, 0]
        ok = cache.matching & (cache.num_read < cache.reference_lengths)
        vocab = jnp.arange(len(data.VOCAB))
        return (ok[:, None] & (vocab[None] == expected[:, None])).astype(jnp.float32)


# 32-bit FNV-1a over token ids, and murmur3's finaliser to turn a hash into uniform bits.
_FNV_OFFSET, _FNV_PRIME = 2166136261, 16777619


def _hash_tokens(hash_: UInt32[Array, " batch"], tokens, num_valid) -> UInt32[Array, " batch"]:
    """Folds ``tokens[b, :num_valid[b]]`` into each row's running hash, token by token (so
    that the hash of a prefix does not depend on how it was cut into steps)."""
    prime = jnp.uint32(_FNV_PRIME)

    def fold(hash_, column):
        token, valid = column
        mixed = (hash_ ^ token.astype(jnp.uint32)) * prime
        return jnp.where(valid, mixed, hash_), None

    valid = jnp.arange(tokens.shape[1]) < num_valid[:, None]
    hash_, _ = jax.lax.scan(fold, hash_, (tokens.T, valid.T))
    return hash_


def _uniform(hash_: UInt32[Array, " batch"], seed: int) -> Float[Array, " batch"]:
    """A uniform draw in [0, 1) per row, a fixed function of ``(seed, hash)``."""
    x = hash_ ^ jnp.uint32((seed * 0x9E3779B9) & 0xFFFFFFFF)
    x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
    x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
    x = x ^ (x >> 16)
    return (x >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


class NoisyOracleCache(NamedTuple):
    """The oracle's cache and a running hash of the row's tokens (prompt, then trace).

    Attributes:
        oracle: the exact check (:class:`OracleCache`).
        hash: ``(batch,)`` uint32 FNV-1a hash of every token read so far.
    """

    oracle: OracleCache
    hash: UInt32[Array, " batch"]


class NoisyOracleReward(AbstractRewardModel):
    """The oracle's verdict at the end of each step, flipped at given rates.

    After each ``extend`` call (a step) a row's score is the oracle's verdict on its prefix
    (:class:`OracleReward`), flipped independently per step: a correct prefix is rejected
    (score 0) with probability ``false_reject_rate``, a wrong one accepted (score 1) with
    probability ``false_accept_rate``. The coin is a fixed function of ``seed`` and the
    prefix's tokens (prompt and trace, through a running 32-bit hash kept in the state), so
    the same prefix always gets the same verdict, whatever its row, the batch around it or
    the reorderings before; distinct prefixes get independent coins (up to hash collisions,
    about one in 2**32 pairs).

    Attributes:
        false_accept_rate: chance that a wrong prefix scores 1.
        false_reject_rate: chance that a correct prefix scores 0.
        seed: the coins' seed.
    """

    false_accept_rate: float = eqx.field(static=True)
    false_reject_rate: float = eqx.field(static=True)
    seed: int = eqx.field(static=True, default=0)

    def __check_init__(self):
        for name in ("false_accept_rate", "false_reject_rate"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0 <= value <= 1:
                raise ValueError(f"Expected {name} in [0, 1], got {value!r}.")
        if not isinstance(self.seed, int):
            raise ValueError(f"Expected seed an int, got {self.seed!r}.")

    @property
    def score_clip(self) -> float:
        """The weights trust a verdict as far as the coin does: scores are clipped to
        ``[rate, 1 - rate]`` (the larger rate, below 1/2), so that a false reject leaves a
        correct prefix ``rate / (1 - rate)`` of an accepted one's weight instead of none: it
        can be accepted again at the next step, where an exact zero would end its lineage for
        good (at 6 operations, 20% flips, the filter fell from 0.68 at N=16 to 0.47 at N=64
        with zeros kept; see the README)."""
        return min(max(self.false_accept_rate, self.false_reject_rate), 0.49)

    def prepare(self, prompts: Sequence[str]) -> OracleContext:
        """As :meth:`OracleReward.prepare`."""
        return _oracle_context(prompts)

    def init_state(
        self,
        prompt_ids: Int[Array, "batch prompt"],
        prompt_lengths: Int[Array, " batch"],
        max_length: int,
        context: OracleContext | None = None,
    ) -> RewardState:
        del max_length
        prompt_ids, prompt_lengths = jnp.asarray(prompt_ids), jnp.asarray(prompt_lengths)
        _check_rank("prompt_ids", prompt_ids, 2)
        batch, prompt = prompt_ids.shape
        if prompt_lengths.shape != (batch,):
            raise ValueError(
                f"Expected prompt_lengths of shape ({batch},), got {tuple(prompt_lengths.shape)}."
            )
        prompt_lengths = eqx.error_if(
            prompt_lengths.astype(jnp.int32),
            (prompt_lengths < 1) | (prompt_lengths > prompt),
            "Expected prompt_lengths in 1 .. prompt width",
        )
        start = jnp.full((batch,), _FNV_OFFSET, jnp.uint32)
        hash_ = _hash_tokens(start, prompt_ids.astype(jnp.int32), prompt_lengths)
        cache = NoisyOracleCache(_oracle_init(batch, context), hash_)
        return RewardState(cache, jnp.ones((batch,), jnp.float32))

    def extend(
        self,
        state: RewardState,
        tokens: Int[Array, "batch chunk"],
        num_valid: Int[Array, " batch"],
    ) -> RewardState:
        tokens, num_valid = _check_step(state, tokens, num_valid)
        oracle = _oracle_read(state.cache.oracle, tokens, num_valid)
        hash_ = _hash_tokens(state.cache.hash, tokens, num_valid)
        coin = _uniform(hash_, self.seed)
        verdict = jnp.where(
            oracle.matching, coin >= self.false_reject_rate, coin < self.false_accept_rate
        )
        score = jnp.where(num_valid > 0, verdict.astype(jnp.float32), state.score)
        return RewardState(NoisyOracleCache(oracle, hash_), score)


class LearnedPRM(eqx.Module):
    """A Qwen2 body and a logistic head read at each position.

    Attributes:
        body: the transformer (its output head is unused).
        head_weight: ``(hidden,)``.
        head_bias: scalar.
    """

    body: qwen2.Qwen2
    head_weight: Float[Array, " hidden"]
    head_bias: Float[Array, ""]

    def logits(
        self, token_ids: Int[Array, "batch length"], *, unroll: bool = False
    ) -> Float[Array, "batch length"]:
        """Correctness logit of the prefix ending at each position (read it at newlines).

        ``unroll`` unrolls the loop over layers (as in ``Qwen2.hidden``; used in training).
        """
        batch, length = token_ids.shape
        positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
        hidden, _ = self.body.hidden(token_ids, positions, None, None, unroll=unroll)
        return (hidden @ self.head_weight + self.head_bias).astype(jnp.float32)

    def step_scores(self, problem: tasks.Problem, trace: str) -> np.ndarray:
        """Probability of a correct prefix after each complete line of ``trace``."""
        return self.step_scores_batch([problem], [trace])[0]

    def step_scores_batch(self, problems, traces) -> list[np.ndarray]:
        """``step_scores`` for many traces in one jitted call (padded to a multiple of 64)."""
        encoded = [data.encode(p.prompt + t) for p, t in zip(problems, traces, strict=True)]
        width = 64 * -(-max(len(ids) for ids in encoded) // 64)
        ids = np.full((len(encoded), width), data.PAD_ID, np.int32)
        for row, row_ids in enumerate(encoded):
            ids[row, : len(row_ids)] = row_ids
        probs = np.asarray(jax.nn.sigmoid(_logits(self, jnp.asarray(ids))))
        scores = []
        for row, row_ids in enumerate(encoded):
            ends = [i for i, token in enumerate(row_ids) if token == data.NEWLINE_ID][1:]
            scores.append(probs[row, ends])
        return scores

    def score(self, problem: tasks.Problem, trace: str) -> float:
        scores = self.step_scores(problem, trace)
        return float(scores[-1]) if len(scores) else 1.0

    def reward_model(self, *, block_length: int = 128) -> TransformerRewardModel:
        """The same PRM behind the reward protocol, cached and incremental: after each step,
        ``sigmoid`` of the head at the step's last token (what :meth:`logits` gives there)."""
        return TransformerRewardModel(
            self.body, self.head_weight, self.head_bias, block_length=block_length
        )


@eqx.filter_jit
def _logits(prm: LearnedPRM, ids):
    return prm.logits(ids)


def init(key, config: qwen2.Qwen2Config) -> LearnedPRM:
    return LearnedPRM(qwen2.init(key, config), jnp.zeros((config.hidden_size,)), jnp.zeros(()))


def save(prm: LearnedPRM, directory: str | Path, *, storage_dtype=None) -> None:
    """Hugging Face layout, as ``Qwen2ForTokenClassification`` with one label.

    ``storage_dtype`` (e.g. ``np.float16``) rounds the weights for storage; ``load`` casts
    them back to float32.
    """
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config, tensors = qwen2.to_hf(prm.body)
    tensors.pop("lm_head.weight", None)
    config.update(architectures=["Qwen2ForTokenClassification"], num_labels=1)
    tensors["score.weight"] = np.asarray(prm.head_weight, np.float32)[None]
    tensors["score.bias"] = np.asarray(prm.head_bias, np.float32)[None]
    if storage_dtype is not None:
        tensors = {name: t.astype(storage_dtype) for name, t in tensors.items()}
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def load(directory: str | Path) -> LearnedPRM:
    from safetensors.numpy import load_file

    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    tensors = load_file(directory / "model.safetensors")
    body = qwen2.from_hf({**config, "tie_word_embeddings": True}, tensors, dtype=jnp.float32)
    return LearnedPRM(
        body,
        jnp.asarray(tensors["score.weight"][0], jnp.float32),
        jnp.asarray(tensors["score.bias"][0], jnp.float32),
    )
