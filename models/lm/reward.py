"""A transformer process reward model behind :class:`ppl.reward_model.AbstractRewardModel`.

``TransformerRewardModel`` scores partial traces with a transformer body and a logistic head:
the score of a row after a step is ``sigmoid(head_weight . h + head_bias)``, ``h`` the body's
final hidden state at the step's last token. Like the language model behind the token adapter
(``adapter.TransformerTokenModel``) it keeps a fixed-size KV cache, so that each step reads
only its own tokens, in one pass, with static shapes: rows are left-aligned (row ``b`` holds
its tokens in slots ``0 .. lengths[b] - 1`` and the token in slot ``j`` has position ``j``),
and the cache is allocated once, in blocks, by ``init_state``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ppl.reward_model import AbstractRewardModel, RewardState

from . import layers as L

__all__ = ["TransformerRewardCache", "TransformerRewardModel"]


class TransformerRewardCache(NamedTuple):
    """The cached part of a :class:`TransformerRewardModel`'s state.

    Attributes:
        kv: keys and values of every layer (batch on axis 0 of every leaf).
        lengths: ``(batch,)`` tokens held by each row (prompt included); the next token of
            row ``b`` goes to slot ``lengths[b]``.
    """

    kv: L.KVCache
    lengths: Int[Array, " batch"]


def _check_rank(name: str, x, rank: int) -> None:
    if x.ndim != rank:
        raise ValueError(f"Expected {name} of rank {rank}, got shape {tuple(x.shape)}.")


class TransformerRewardModel(AbstractRewardModel):
    """A cached transformer PRM: a body, a one-unit logistic head read at each step's end.

    Attributes:
        body: a module with ``hidden(token_ids, positions, cache, write_slots) ->
            (hidden, cache)`` and the cache's sizes (``num_layers``, ``num_kv_heads``,
            ``head_dim``, ``dtype``), as ``qwen2.Qwen2`` has.
        head_weight: ``(hidden,)``.
        head_bias: scalar.
        block_length: slots per block of the KV cache (as in the adapter). ``extend`` attends
            only to the blocks that its rows have reached: in a 256-slot buffer, one of two
            blocks of 128 while the rows are shorter than 128 tokens.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from ppl.models.lm import qwen2
        >>> config = qwen2.Qwen2Config(vocab_size=8, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8)
        >>> reward = TransformerRewardModel(qwen2.init(jax.random.key(0), config),
        ...                                 jnp.zeros(16), jnp.zeros(()))
        >>> state = reward.init_state(jnp.array([[3, 4]]), jnp.array([2]), 8)
        >>> state = reward.extend(state, jnp.array([[5, 6, 0]]), jnp.array([2]))
        >>> state.score  # sigmoid(0) with a zero head
        Array([0.5], dtype=float32)
    """

    body: eqx.Module
    head_weight: Float[Array, " hidden"]
    head_bias: Float[Array, ""]
    block_length: int = eqx.field(static=True, default=128)

    def __check_init__(self):
        if not isinstance(self.block_length, int) or self.block_length < 1:
            raise ValueError(f"Expected block_length a positive int, got {self.block_length!r}.")

    def init_state(
        self,
        prompt_ids: Int[Array, "batch prompt"],
        prompt_lengths: Int[Array, " batch"],
        max_length: int,
        context: Any = None,
    ) -> RewardState:
        """Reads the prompts into the cache; every row starts with score 1.

        ``context`` is unused (this PRM reads everything it needs from the tokens).
        """
        del context
        prompt_ids = jnp.asarray(prompt_ids)
        prompt_lengths = jnp.asarray(prompt_lengths)
        _check_rank("prompt_ids", prompt_ids, 2)
        batch, prompt = prompt_ids.shape
        if prompt_lengths.shape != (batch,):
            raise ValueError(
                f"Expected prompt_lengths of shape ({batch},), got {tuple(prompt_lengths.shape)}."
            )
        if not isinstance(max_length, int) or max_length < prompt:
            raise ValueError(f"Expected max_length an int >= {prompt}, got {max_length!r}.")
        prompt_lengths = eqx.error_if(
            prompt_lengths,
            (prompt_lengths < 1) | (prompt_lengths > prompt),
            "Expected prompt_lengths in 1 .. prompt width",
        )
        body = self.body
        kv = L.empty_cache(
            num_layers=body.num_layers,
            batch=batch,
            cache_length=max_length,
            block_length=self.block_length,
            num_kv_heads=body.num_kv_heads,
            head_dim=body.head_dim,
            dtype=body.dtype,
        )
        positions = jnp.broadcast_to(jnp.arange(prompt), (batch, prompt))
        slots = jnp.where(positions < prompt_lengths[:, None], positions, max_length)
        _, kv = body.hidden(prompt_ids, positions, kv, slots)
        cache = TransformerRewardCache(kv, prompt_lengths.astype(jnp.int32))
        return RewardState(cache, jnp.ones((batch,), jnp.float32))

    def extend(
        self,
        state: RewardState,
        tokens: Int[Array, "batch chunk"],
        num_valid: Int[Array, " batch"],
    ) -> RewardState:
        """Appends ``tokens[b, :num_valid[b]]`` to row ``b`` in one pass and scores the row at
        its last new token (rows with ``num_valid`` 0 keep their cache and score)."""
        tokens = jnp.asarray(tokens)
        num_valid = jnp.asarray(num_valid)
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
        cache = state.cache
        max_length = cache.kv.num_slots
        num_valid = num_valid.astype(jnp.int32)
        overflow = cache.lengths + num_valid > max_length
        num_valid = eqx.error_if(
            num_valid,
            (num_valid < 0) | (num_valid > chunk) | ((num_valid > 0) & overflow),
            "Expected num_valid in 0 .. chunk and within the buffer's max_length",
        )
        steps = jnp.arange(chunk)
        positions = cache.lengths[:, None] + steps
        valid = steps < num_valid[:, None]
        slots = jnp.where(valid, positions, max_length)
        read_at = jnp.maximum(num_valid - 1, 0)
        hidden, kv = self._hidden(tokens, positions, cache.kv, slots, cache.lengths, num_valid,
                                  read_at)
        if hidden.shape[1] != 1:  # a body that returns every column
            hidden = jnp.take_along_axis(hidden, read_at[:, None, None], axis=1)
        logits = (hidden[:, 0] @ self.head_weight + self.head_bias).astype(jnp.float32)
        score = jnp.where(num_valid > 0, jax.nn.sigmoid(logits), state.score)
        return RewardState(TransformerRewardCache(kv, cache.lengths + num_valid), score)

    def _hidden(self, tokens, positions, kv: L.KVCache, slots, lengths, num_valid, read_at):
        """``body.hidden`` with the cache, attending only to the blocks the rows have reached
        (as the adapter's ``sample_step`` does), chosen by the longest row that reads tokens.
        Rows that read none may be longer; what they compute is discarded. A body whose
        ``hidden`` takes ``read_at`` (as ``qwen2.Qwen2``) computes its last layer for the
        column read only.

        One ``while_loop`` per number of blocks, of which exactly one runs its body once: a
        loop carries only its prefix of blocks, updated in place, where a ``lax.switch``
        over all blocks copied the blocks it did not touch (13 ms of a 50 ms step at batch
        256, 3 layers).
        """
        ends = kv.block_ends
        if "read_at" in inspect.signature(self.body.hidden).parameters:
            hidden_fn = functools.partial(self.body.hidden, read_at=read_at)
            columns = 1
        else:
            hidden_fn, columns = self.body.hidden, tokens.shape[1]
        if len(ends) == 1:
            return hidden_fn(tokens, positions, kv, slots)
        reach = jnp.max(jnp.where(num_valid > 0, lengths + num_valid, 0))
        batch, chunk = tokens.shape
        hidden_size = self.head_weight.shape[0]
        done = jnp.zeros((), bool)
        hidden = jnp.zeros((batch, columns, hidden_size), self.body.dtype)
        for num_blocks, end in enumerate(ends, 1):
            last = num_blocks == len(ends)

            def cond(carry, end=end, last=last):
                return ~carry[0] if last else ~carry[0] & (reach <= end)

            def run(carry):
                hidden, prefix = hidden_fn(tokens, positions, carry[2], slots)
                return jnp.ones((), bool), hidden.astype(carry[1].dtype), prefix

            done, hidden, prefix = jax.lax.while_loop(
                cond, run, (done, hidden, kv.prefix(num_blocks))
            )
            kv = kv.with_prefix(prefix)
        return hidden, kv

    def copy_rows(self, state: RewardState, destinations, sources) -> RewardState:
        """As the language model's: only the cache blocks a copied row has reached."""
        destinations = jnp.asarray(destinations, jnp.int32)
        sources = jnp.asarray(sources, jnp.int32)
        _check_rank("destinations", destinations, 1)
        cache = state.cache
        batch = cache.lengths.shape[0]
        valid = destinations < batch
        longest = jnp.max(jnp.where(valid, cache.lengths[jnp.clip(sources, 0, batch - 1)], 0))
        write = lambda x: x.at[destinations].set(x[sources], mode="drop")  # noqa: E731
        kv = cache.kv.copy_rows(destinations, sources, longest)
        return RewardState(TransformerRewardCache(kv, write(cache.lengths)), write(state.score))

    def reorder(self, state: RewardState, ancestors: Int[Array, " batch"]) -> RewardState:
        ancestors = jnp.asarray(ancestors)
        _check_rank("ancestors", ancestors, 1)
        return jax.tree.map(lambda x: jnp.take(x, ancestors, axis=0), state)
