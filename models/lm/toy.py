"""A tiny Markov language model behind the token adapter, for exact tests.

The next token's distribution depends only on the current token and its position, through
a table of logits, so every sequence's probability is a product of table entries and small
sequence spaces can be enumerated exactly: what tests of samplers need (a particle-Gibbs
kernel leaves its target invariant, a Metropolis-Hastings chain samples ``p^alpha``, ...).
The state's "cache" is just the current token of every row.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ppl.token_adapter import AbstractTokenModel, StepOutput, TokenState

__all__ = ["CharTokenizer", "MarkovTokenModel", "random_markov_model"]


def _is_key_batch(key) -> bool:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim == 1
    return key.ndim == 2


class MarkovTokenModel(AbstractTokenModel):
    """Next-token logits ``logits[position, current_token]``.

    Attributes:
        logits: ``(max_length, vocab, vocab)``: row ``[p, c]`` gives the logits of the token
            at position ``p + 1`` after token ``c`` at position ``p``.
        end_ids: tokens that end a sequence.
    """

    logits: Float[Array, "length vocab vocab"]
    end_ids: tuple[int, ...] = eqx.field(static=True, default=())

    @property
    def vocab_size(self) -> int:
        return self.logits.shape[-1]

    def _next(self, position, token):
        position = jnp.clip(position, 0, self.logits.shape[0] - 1)
        return jax.nn.log_softmax(self.logits[position, token], axis=-1)

    def init_state(self, prompt_ids, prompt_lengths, max_length) -> TokenState:
        prompt_ids = jnp.asarray(prompt_ids)
        prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
        last = jnp.take_along_axis(prompt_ids, (prompt_lengths - 1)[:, None], axis=1)[:, 0]
        return TokenState(
            cache={"token": last.astype(jnp.int32), "max_length": jnp.full_like(last, max_length)},
            lengths=prompt_lengths,
            last_log_probs=self._next(prompt_lengths - 1, last),
            alive=jnp.ones(prompt_lengths.shape, bool),
        )

    def next_log_probs(self, state):
        return state.last_log_probs

    def _append(self, state, token, valid):
        cache = dict(state.cache, token=jnp.where(valid, token, state.cache["token"]))
        lengths = state.lengths + valid
        last = jnp.where(valid[:, None], self._next(lengths - 1, cache["token"]),
                         state.last_log_probs)
        return state._replace(cache=cache, lengths=lengths, last_log_probs=last)

    def extend(self, state, tokens, num_valid):
        tokens = jnp.asarray(tokens, jnp.int32)
        num_valid = jnp.asarray(num_valid, jnp.int32)

        def body(state, inputs):
            column, token = inputs
            valid = column < num_valid
            score = jnp.take_along_axis(state.last_log_probs, token[:, None], axis=1)[:, 0]
            return self._append(state, token, valid), jnp.where(valid, score, 0.0)

        columns = jnp.arange(tokens.shape[1])
        state, scores = jax.lax.scan(body, state, (columns, tokens.T))
        return state, scores.T

    def force_step(self, state, tokens, num_valid, *, temperature):
        tokens = jnp.asarray(tokens, jnp.int32)
        num_valid = jnp.asarray(num_valid, jnp.int32)
        end_ids = jnp.asarray(self.end_ids or (-1,), jnp.int32)

        def body(state, inputs):
            column, token = inputs
            valid = column < num_valid
            pick = lambda lp: jnp.take_along_axis(lp, token[:, None], axis=1)[:, 0]  # noqa: E731
            base = pick(state.last_log_probs)
            proposal = pick(jax.nn.log_softmax(state.last_log_probs / temperature, axis=-1))
            new = self._append(state, token, valid)
            return new, (jnp.where(valid, base, 0.0), jnp.where(valid, proposal, 0.0))

        columns = jnp.arange(tokens.shape[1])
        new, (base, proposal) = jax.lax.scan(body, state, (columns, tokens.T))
        valid = columns[None] < num_valid[:, None]
        ended = jnp.any(valid & jnp.isin(tokens, end_ids), axis=1)
        full = new.lengths >= state.cache["max_length"]
        alive = state.alive & ~((num_valid > 0) & (ended | full))
        return new._replace(alive=alive), StepOutput(
            jnp.where(valid, tokens, 0), base.T, proposal.T, num_valid
        )

    def sample_step(
        self, key: PRNGKeyArray, state, *, temperature, stop_ids, max_new_tokens
    ) -> tuple[TokenState, StepOutput]:
        stop_ids = jnp.asarray(stop_ids, jnp.int32).reshape(-1)
        end_ids = jnp.asarray(self.end_ids or (-1,), jnp.int32)
        batch = state.lengths.shape[0]
        per_row = _is_key_batch(key)
        keys = key if per_row else jax.random.split(key, batch)
        active = state.alive & (state.lengths < state.cache["max_length"])

        def body(carry, column):
            keys, state, active, num = carry
            pairs = jax.vmap(jax.random.split)(keys)
            keys, subkeys = pairs[:, 0], pairs[:, 1]
            scaled = jax.nn.log_softmax(state.last_log_probs / temperature, axis=-1)
            token = jax.vmap(jax.random.categorical)(subkeys, scaled).astype(jnp.int32)
            pick = lambda lp: jnp.take_along_axis(lp, token[:, None], axis=1)[:, 0]  # noqa: E731
            base, proposal = pick(state.last_log_probs), pick(scaled)
            state = self._append(state, token, active)
            full = state.lengths >= state.cache["max_length"]
            alive = state.alive & ~(active & (jnp.isin(token, end_ids) | full))
            state = state._replace(alive=alive)
            out = (jnp.where(active, token, 0), jnp.where(active, base, 0.0),
                   jnp.where(active, proposal, 0.0))
            num = num + active
            active = active & alive & ~jnp.isin(token, stop_ids)
            return (keys, state, active, num), out

        (_, state, _, num), (tokens, base, proposal) = jax.lax.scan(
            body, (keys, state, active, jnp.zeros((batch,), jnp.int32)),
            jnp.arange(max_new_tokens),
        )
        return state, StepOutput(tokens.T, base.T, proposal.T, num)

    def reorder(self, state, ancestors):
        return jax.tree.map(lambda x: jnp.take(x, ancestors, axis=0), state)

    def log_probs(self, token_ids: Int[Array, "batch length"]):
        token_ids = jnp.asarray(token_ids)
        positions = jnp.arange(token_ids.shape[1])
        return jax.vmap(lambda row: self._next(positions, row))(token_ids)


def random_markov_model(
    key: PRNGKeyArray, *, vocab_size: int, max_length: int, end_ids=(), scale: float = 1.0
) -> MarkovTokenModel:
    """A model with i.i.d. normal logits of standard deviation ``scale``."""
    logits = scale * jax.random.normal(key, (max_length, vocab_size, vocab_size))
    return MarkovTokenModel(logits, tuple(end_ids))


class CharTokenizer:
    """One token per character of ``characters``, then the special ``end`` token.

    Enough of :class:`ppl.models.lm.Tokenizer`'s interface (``encode``, ``decode``,
    ``stop_ids``) for :func:`ppl.inference.llm.run` on toy models.
    """

    def __init__(self, characters: str, end: str = "<eos>"):
        if len(set(characters)) != len(characters):
            raise ValueError(f"Expected distinct characters, got {characters!r}.")
        self.characters = characters
        self.end = end
        self.end_id = len(characters)

    @property
    def vocab_size(self) -> int:
        return len(self.characters) + 1

    def encode(self, text: str) -> list[int]:
        unknown = [c for c in text if c not in self.characters]
        if unknown:
            raise ValueError(f"Expected characters of {self.characters!r}, got {unknown[0]!r}.")
        return [self.characters.index(c) for c in text]

    def decode(self, ids, *, skip_special_tokens: bool = True) -> str:
        return "".join(
            self.characters[int(i)] if int(i) < self.end_id else ("" if skip_special_tokens
                                                                  else self.end)
            for i in ids
        )

    def stop_ids(self, stop_sequences) -> list[int]:
        return [i for i, c in enumerate(self.characters) if any(s in c for s in stop_sequences)]
