"""The token-likelihood adapter over any of our transformer architectures.

``TransformerTokenModel`` implements :class:`ppl.token_adapter.AbstractTokenModel` for a
module with the signature ``(token_ids, positions, cache, write_slots) -> (logits, cache)``
(``gpt2.GPT2``, ``qwen2.Qwen2``). The state is a fixed-size KV cache plus per-row lengths, so
every call has static shapes: a buffer of ``max_length`` slots is allocated once by
``init_state`` and rows grow inside it, in blocks of ``block_length`` slots, so that sampling
attends only to the blocks that its rows have reached.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ppl.token_adapter import AbstractTokenModel, StepOutput, TokenState

from . import layers as L


def _check_rank(name, x, rank):
    if x.ndim != rank:
        raise ValueError(f"Expected {name} of rank {rank}, got shape {tuple(x.shape)}.")


def _argmax(x: Float[Array, "batch vocab"]) -> Int[Array, " batch"]:
    """``jnp.argmax(x, axis=-1)`` (first maximum; first NaN if any), as a max and a min.

    XLA's CPU backend runs ``argmax`` as a variadic reduction: 1.06 ms against 0.14 ms for this
    at batch 64 x 2048, a sixth of a decoding step of the benchmark model.
    """
    top = jnp.max(x, axis=-1, keepdims=True)
    hit = (x == top) | jnp.isnan(x)
    return jnp.min(jnp.where(hit, jnp.arange(x.shape[-1]), x.shape[-1]), axis=-1)


def _is_key_batch(key) -> bool:
    """One key per row: a typed key array of rank 1 (or raw uint32 keys of rank 2)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1
    return key.ndim == 2


class TransformerTokenModel(AbstractTokenModel):
    """A transformer behind the adapter.

    Attributes:
        transformer: the architecture (``GPT2`` or ``Qwen2``).
        end_ids: token ids that end a sequence (a row that samples one dies).
        block_length: slots per block of the KV cache. ``sample_step`` attends only to the
            blocks that hold its rows so far (0.63 of the slots on average when 512 tokens
            fill a 528-slot cache in blocks of 128) and compiles its decoding loop once for
            each block; smaller blocks attend less but dispatch more (64 was slower than 128
            at batch 1 and 64 on CPU).
    """

    transformer: eqx.Module
    end_ids: tuple[int, ...] = eqx.field(static=True, default=())
    block_length: int = eqx.field(static=True, default=128)

    @property
    def vocab_size(self) -> int:
        return self.transformer.vocab_size

    def _empty_cache(self, batch: int, max_length: int) -> L.KVCache:
        t = self.transformer
        return L.empty_cache(
            num_layers=t.num_layers,
            batch=batch,
            cache_length=max_length,
            block_length=self.block_length,
            num_kv_heads=t.num_kv_heads,
            head_dim=t.head_dim,
            dtype=t.dtype,
        )

    def init_state(
        self,
        prompt_ids: Int[Array, "batch prompt"],
        prompt_lengths: Int[Array, " batch"],
        max_length: int,
    ) -> TokenState:
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
        positions = jnp.broadcast_to(jnp.arange(prompt), (batch, prompt))
        slots = jnp.where(positions < prompt_lengths[:, None], positions, max_length)
        logits, cache = self.transformer(
            prompt_ids, positions, self._empty_cache(batch, max_length), slots
        )
        last = jnp.take_along_axis(logits, (prompt_lengths - 1)[:, None, None], axis=1)[:, 0]
        return TokenState(
            cache=cache,
            lengths=prompt_lengths.astype(jnp.int32),
            last_log_probs=jax.nn.log_softmax(last, axis=-1),
            alive=jnp.ones((batch,), bool),
        )

    def next_log_probs(self, state: TokenState) -> Float[Array, "batch vocab"]:
        return state.last_log_probs

    def extend(
        self,
        state: TokenState,
        tokens: Int[Array, "batch chunk"],
        num_valid: Int[Array, " batch"],
    ) -> tuple[TokenState, Float[Array, "batch chunk"]]:
        new_state, before, valid = self._extend(state, tokens, num_valid)
        tokens = jnp.asarray(tokens)
        scores = jnp.take_along_axis(before, tokens[..., None], axis=-1)[..., 0]
        return new_state, jnp.where(valid, scores, 0.0)

    def _extend(self, state, tokens, num_valid):
        """``extend``'s pass: the new state, the ``(batch, chunk, vocab)`` log-probs that
        predicted each token, and the ``(batch, chunk)`` validity mask."""
        tokens = jnp.asarray(tokens)
        _check_rank("tokens", tokens, 2)
        batch, chunk = tokens.shape
        num_valid = jnp.broadcast_to(jnp.asarray(num_valid, jnp.int32), (batch,))
        max_length = state.cache.num_slots
        # A row with nothing to add may lie past the cache: sample_step passes the first
        # blocks of the cache only, with finished rows that are longer.
        overflow = (num_valid > 0) & (state.lengths + num_valid > max_length)
        num_valid = eqx.error_if(
            num_valid,
            (num_valid < 0) | (num_valid > chunk) | overflow,
            "Expected num_valid in 0 .. chunk and within the buffer's max_length",
        )
        steps = jnp.arange(chunk)
        positions = state.lengths[:, None] + steps
        valid = steps < num_valid[:, None]
        slots = jnp.where(valid, positions, max_length)
        logits, cache = self.transformer(tokens, positions, state.cache, slots)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        # Token t is predicted by the logits after token t-1; token 0 by the state's last ones.
        before = jnp.concatenate([state.last_log_probs[:, None], log_probs[:, :-1]], axis=1)
        last = jnp.take_along_axis(log_probs, jnp.maximum(num_valid - 1, 0)[:, None, None], axis=1)[
            :, 0
        ]
        new_state = TokenState(
            cache=cache,
            lengths=state.lengths + num_valid,
            last_log_probs=jnp.where((num_valid > 0)[:, None], last, state.last_log_probs),
            alive=state.alive,
        )
        return new_state, before, valid

    def force_step(
        self,
        state: TokenState,
        tokens: Int[Array, "batch chunk"],
        num_valid: Int[Array, " batch"],
        *,
        temperature: float,
    ) -> tuple[TokenState, StepOutput]:
        if isinstance(temperature, int | float) and temperature < 0:
            raise ValueError(f"Expected temperature >= 0, got {temperature}.")
        tokens = jnp.asarray(tokens).astype(jnp.int32)
        new_state, before, valid = self._extend(state, tokens, num_valid)
        pick = lambda lp: jnp.where(  # noqa: E731
            valid, jnp.take_along_axis(lp, tokens[..., None], axis=-1)[..., 0], 0.0
        )
        if isinstance(temperature, int | float) and temperature == 0:
            greedy = tokens == _argmax(before.reshape(-1, before.shape[-1])).reshape(tokens.shape)
            proposal = jnp.where(valid, jnp.where(greedy, 0.0, -jnp.inf), 0.0)
        else:
            proposal = pick(jax.nn.log_softmax(before / temperature, axis=-1))
        num_valid = jnp.sum(valid, axis=1).astype(jnp.int32)
        end_ids = jnp.asarray(self.end_ids or (-1,), jnp.int32)
        ended = jnp.any(valid & jnp.isin(tokens, end_ids), axis=1)
        full = new_state.lengths >= state.cache.num_slots
        alive = state.alive & ~((num_valid > 0) & (ended | full))
        return new_state._replace(alive=alive), StepOutput(
            jnp.where(valid, tokens, 0), pick(before), proposal, num_valid
        )

    def sample_step(
        self,
        key: PRNGKeyArray,
        state: TokenState,
        *,
        temperature: float,
        stop_ids: Int[Array, " num_stop"],
        max_new_tokens: int,
    ) -> tuple[TokenState, StepOutput]:
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"Expected max_new_tokens a positive int, got {max_new_tokens!r}.")
        if isinstance(temperature, int | float) and temperature < 0:
            raise ValueError(f"Expected temperature >= 0, got {temperature}.")
        greedy = isinstance(temperature, int | float) and temperature == 0
        stop_ids = jnp.asarray(stop_ids, jnp.int32).reshape(-1)
        end_ids = jnp.asarray(self.end_ids or (-1,), jnp.int32)
        batch = state.lengths.shape[0]
        max_length = state.cache.num_slots
        per_row = _is_key_batch(key)
        if per_row and key.shape[0] != batch:
            raise ValueError(
                f"Expected one key or {batch} keys (one per row), got {key.shape[0]} keys."
            )
        zeros = jnp.zeros((batch, max_new_tokens))
        init = (
            jnp.int32(0),
            key,
            state,
            state.alive & (state.lengths < max_length),
            jnp.zeros((batch, max_new_tokens), jnp.int32),
            zeros,
            zeros,
            jnp.zeros((batch,), jnp.int32),
        )

        def body(carry):
            i, key, state, active, tokens, base, proposal, num_tokens = carry
            if per_row:
                pairs = jax.vmap(jax.random.split)(key)
                key, subkey = pairs[:, 0], pairs[:, 1]
            else:
                key, subkey = jax.random.split(key)
            log_probs = state.last_log_probs
            if greedy:
                token = _argmax(log_probs)
                scaled = jnp.zeros_like(log_probs)
            else:
                scaled = jax.nn.log_softmax(log_probs / temperature, axis=-1)
                # jax.random.categorical, with a faster argmax: the same draws.
                if per_row:
                    noise = jax.vmap(
                        lambda k: jax.random.gumbel(k, scaled.shape[1:], scaled.dtype)
                    )(subkey)
                else:
                    noise = jax.random.gumbel(subkey, scaled.shape, scaled.dtype)
                token = _argmax(noise + scaled)
            token = token.astype(jnp.int32)
            pick = lambda lp: jnp.where(
                active, jnp.take_along_axis(lp, token[:, None], -1)[:, 0], 0.0
            )
            tokens = tokens.at[:, i].set(jnp.where(active, token, 0))
            base = base.at[:, i].set(pick(log_probs))
            proposal = proposal.at[:, i].set(pick(scaled))
            state, _ = self.extend(state, token[:, None], active.astype(jnp.int32))
            is_end = jnp.isin(token, end_ids)
            full = state.lengths >= max_length
            alive = state.alive & ~(active & (is_end | full))
            state = state._replace(alive=alive)
            num_tokens = num_tokens + active
            active = active & alive & ~jnp.isin(token, stop_ids)
            return i + 1, key, state, active, tokens, base, proposal, num_tokens

        # One loop per block: while every active row fits in the first blocks, attend to those
        # only. The key is split once per token throughout, so the blocks change no draw.
        carry = init
        for num_blocks, end in enumerate(state.cache.block_ends, 1):

            def cond(carry, end=end):
                i, _, state, active, *_ = carry
                fits = jnp.all(~active | (state.lengths < end))
                return (i < max_new_tokens) & jnp.any(active) & fits

            i, key, state, *rest = carry
            cache = state.cache
            state = state._replace(cache=cache.prefix(num_blocks))
            i, key, state, *rest = jax.lax.while_loop(cond, body, (i, key, state, *rest))
            carry = (i, key, state._replace(cache=cache.with_prefix(state.cache)), *rest)
        _, _, state, _, tokens, base, proposal, num_tokens = carry
        return state, StepOutput(tokens, base, proposal, num_tokens)

    def reorder(self, state: TokenState, ancestors: Int[Array, " batch"]) -> TokenState:
        ancestors = jnp.asarray(ancestors)
        _check_rank("ancestors", ancestors, 1)
        cache = jax.tree.map(lambda x: jnp.take(x, ancestors, axis=0), state.cache)
        return TokenState(
            cache=cache,
            lengths=state.lengths[ancestors],
            last_log_probs=state.last_log_probs[ancestors],
            alive=state.alive[ancestors],
        )

    def copy_rows(
        self,
        state: TokenState,
        destinations: Int[Array, " k"],
        sources: Int[Array, " k"],
    ) -> TokenState:
        destinations = jnp.asarray(destinations, jnp.int32)
        sources = jnp.asarray(sources, jnp.int32)
        _check_rank("destinations", destinations, 1)
        batch = state.lengths.shape[0]
        valid = destinations < batch
        longest = jnp.max(jnp.where(valid, state.lengths[jnp.clip(sources, 0, batch - 1)], 0))
        write = lambda x: x.at[destinations].set(x[sources], mode="drop")  # noqa: E731
        cache = state.cache.copy_rows(destinations, sources, longest)
        return TokenState(cache, write(state.lengths), write(state.last_log_probs),
                          write(state.alive))

    def log_probs(
        self, token_ids: Int[Array, "batch length"]
    ) -> Float[Array, "batch length vocab"]:
        token_ids = jnp.asarray(token_ids)
        _check_rank("token_ids", token_ids, 2)
        batch, length = token_ids.shape
        positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
        logits, _ = self.transformer(token_ids, positions, None, None)
        return jax.nn.log_softmax(logits, axis=-1)
