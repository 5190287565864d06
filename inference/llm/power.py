"""Power sampling: Metropolis-Hastings over blocks of tokens targeting ``p_LM(x)^alpha``.

Low-temperature sampling sharpens each next-token distribution; it does not sample the
sharpened distribution over whole sequences, ``pi(x) ∝ p(x)^alpha`` (Karan and Du 2025,
"Reasoning with Sampling"), which favours sequences whose every continuation is likely. The
chain here targets ``pi`` exactly: a proposal picks a position ``k`` uniformly in the
current sequence and resamples everything after it from the model at temperature
``1 / alpha`` (up to the current length, or an end token), and is accepted with

    min(1, exp(alpha [log p(x'_k:) - log p(x_k:)] + log q(x_k:) - log q(x'_k:)))

(the prefix cancels), with ``p`` the model at temperature 1 and ``q`` the proposal, both
returned by the token adapter for every sampled token. As in the paper, sequences grow in
blocks of ``block_tokens`` tokens, each followed by ``mcmc_steps`` proposals over the
sequence so far; with a single block (``block_tokens`` at least the length limit) the
chain's stationary law is ``pi`` itself (tested exactly on an enumerable model).

No reward model is involved. A proposal starts from the chain's own KV cache: the cache
is cut at ``k`` (its later slots are stale and masked), one forward pass of the token
before ``k`` restores the next-token distribution, and the suffix is sampled from there.
Every sampled token counts in the budget, rejected proposals included.

References:
    Karan, A. and Du, Y. (2025). Reasoning with Sampling: Your Language Model is Secretly a
    Reasoner. arXiv:2510.14901.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int
from ppl.inference.llm import population as P
from ppl.inference.llm.driver import BatchOutput, Budget
from ppl.inference.llm.job import Job, MethodOutput

from ppl.token_adapter import TokenState

__all__ = ["Chains", "power_sampling"]


class Chains(NamedTuple):
    """One sequence per chain and what the acceptance ratio needs about it.

    Attributes:
        lm: the model's state (its cache holds the sequence; ``last_log_probs`` may be stale).
        tokens: ``(B, max_length)`` generated tokens after the prompt.
        length: ``(B,)`` how many.
        base: ``(B, max_length)`` log-probability of each token at temperature 1.
        proposal: ``(B, max_length)`` log-probability of each token at ``1 / alpha``.
        ended: ``(B,)`` the sequence ends with an end token.
        accepted: ``(B,)`` proposals accepted so far.
    """

    lm: TokenState
    tokens: Int[Array, "rows length"]
    length: Int[Array, " rows"]
    base: Float[Array, "rows length"]
    proposal: Float[Array, "rows length"]
    ended: Bool[Array, " rows"]
    accepted: Int[Array, " rows"]


class _Static(NamedTuple):
    temperature: float
    alpha: float
    end_ids: tuple[int, ...]
    max_new_tokens: int


def _write(buffer, values, start, count):
    rows = jnp.arange(buffer.shape[0])[:, None]
    columns = jnp.arange(values.shape[1])
    where = jnp.where(columns < count[:, None], start[:, None] + columns, buffer.shape[1])
    return buffer.at[rows, where].set(values, mode="drop")


@eqx.filter_jit
def _extend_block(keys, lm, chains: Chains, prompt_lengths, prompt_last, static: _Static,
                  block: int):
    """Every chain that has not ended samples ``block`` more tokens at ``1 / alpha``."""
    P.TRACE_COUNTS["power_block"] += 1
    room = static.max_new_tokens - chains.length
    state = _restore(lm, chains, prompt_lengths, prompt_last, chains.length)
    state = state._replace(alive=~chains.ended & (room > 0))
    state, out = lm.sample_step(keys, state, temperature=static.temperature,
                                stop_ids=jnp.zeros((0,), jnp.int32), max_new_tokens=block)
    count = jnp.minimum(out.num_tokens, jnp.maximum(room, 0))
    last = jnp.take_along_axis(out.tokens, jnp.maximum(count - 1, 0)[:, None], axis=1)[:, 0]
    ended = chains.ended | ((count > 0) & jnp.isin(last, jnp.asarray(static.end_ids or (-1,))))
    new = chains._replace(
        lm=state,
        tokens=_write(chains.tokens, out.tokens, chains.length, count),
        base=_write(chains.base, out.base_log_probs, chains.length, count),
        proposal=_write(chains.proposal, out.proposal_log_probs, chains.length, count),
        length=chains.length + count,
        ended=ended,
    )
    return new, out.num_tokens


def _restore(lm, chains, prompt_lengths, prompt_last, position):
    """The model's state after the prompt and the first ``position`` trace tokens."""
    previous = prompt_lengths + position - 1
    token = jnp.where(
        position > 0,
        jnp.take_along_axis(chains.tokens, jnp.maximum(position - 1, 0)[:, None], axis=1)[:, 0],
        prompt_last,
    )
    cut = chains.lm._replace(lengths=previous, alive=jnp.ones_like(chains.lm.alive))
    cut, _ = lm.extend(cut, token[:, None], jnp.ones_like(previous))
    return cut


@eqx.filter_jit
def _mh_step(keys, lm, chains: Chains, prompt_lengths, prompt_last, block_end,
             static: _Static):
    """One Metropolis-Hastings proposal per chain (module docstring).

    The chain lives on sequences of at most ``block_end`` tokens (fewer only when they end
    with an end token). The position ``k`` is uniform in ``0 .. block_end - 1`` whatever the
    chain's length, so that it is chosen with the same probability in both directions (a
    ``k`` past an ended sequence's end proposes nothing); the suffix is resampled up to
    ``block_end``.
    """
    P.TRACE_COUNTS["power_mh"] += 1
    batch, width = chains.tokens.shape
    split = jax.vmap(lambda k: jax.random.split(k, 3))(keys)
    position_keys, sample_keys, accept_keys = split[:, 0], split[:, 1], split[:, 2]
    length = chains.length
    u = jax.vmap(lambda k: jax.random.uniform(k))(position_keys)
    start = jnp.minimum(jnp.floor(u * block_end).astype(jnp.int32), block_end - 1)
    valid = start < length
    start = jnp.where(valid, start, jnp.maximum(length - 1, 0))
    span = jnp.where(valid, block_end - start, 0)  # the proposal samples this many at most
    state = _restore(lm, chains, prompt_lengths, prompt_last, start)
    state = state._replace(alive=span > 0)
    state, out = lm.sample_step(sample_keys, state, temperature=static.temperature,
                                stop_ids=jnp.zeros((0,), jnp.int32), max_new_tokens=width)
    count = jnp.minimum(out.num_tokens, span)
    columns = jnp.arange(width)
    new_part = columns[None] < count[:, None]
    old_part = (valid[:, None] & (columns[None] >= start[:, None])
                & (columns[None] < length[:, None]))
    log_p_new = jnp.sum(jnp.where(new_part, out.base_log_probs, 0.0), axis=1)
    log_q_new = jnp.sum(jnp.where(new_part, out.proposal_log_probs, 0.0), axis=1)
    log_p_old = jnp.sum(jnp.where(old_part, chains.base, 0.0), axis=1)
    log_q_old = jnp.sum(jnp.where(old_part, chains.proposal, 0.0), axis=1)
    log_ratio = static.alpha * (log_p_new - log_p_old) + log_q_old - log_q_new
    uniform = jax.vmap(lambda k: jax.random.uniform(k))(accept_keys)
    accept = (span > 0) & (jnp.log(uniform) < log_ratio)
    last = jnp.take_along_axis(out.tokens, jnp.maximum(count - 1, 0)[:, None], axis=1)[:, 0]
    ended_new = (count > 0) & jnp.isin(last, jnp.asarray(static.end_ids or (-1,)))
    proposed = chains._replace(
        lm=state,
        tokens=_write(chains.tokens, out.tokens, start, count),
        base=_write(chains.base, out.base_log_probs, start, count),
        proposal=_write(chains.proposal, out.proposal_log_probs, start, count),
        length=start + count,
        ended=ended_new,
    )
    # A rejected proposal keeps the old sequence; the cache rows are taken whole.
    pick = lambda new, old: jnp.where(  # noqa: E731
        accept.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
    kept = jax.tree.map(pick, proposed._replace(accepted=chains.accepted), chains)
    return kept._replace(accepted=chains.accepted + accept), out.num_tokens


def power_sampling(
    keys,
    job: Job,
    *,
    alpha: float = 4.0,
    block_tokens: int = 16,
    mcmc_steps: int = 10,
    select: str = "vote",
) -> MethodOutput:
    """Power sampling (module docstring): ``N`` independent chains per problem.

    Args:
        keys: ``(G,)`` one PRNG key per problem.
        job: the batch (its ``max_steps * max_step_tokens``, capped by the buffer, bounds a
            sequence's length).
        alpha: the power (``> 0``; 1 is plain sampling; the paper uses 4).
        block_tokens: tokens added per block (the paper: 1/16 of the length limit).
        mcmc_steps: proposals after each block (the paper: 10).
        select: ``"vote"`` (majority over the chains) or ``"argmax"`` (the chain with the
            highest base log-probability).
    """
    if not isinstance(alpha, int | float) or not alpha > 0:
        raise ValueError(f"Expected alpha > 0 (the power of p_LM targeted), got {alpha!r}.")
    for name, value in (("block_tokens", block_tokens), ("mcmc_steps", mcmc_steps + 1)):
        if int(value) != value or value < 1:
            raise ValueError(f"Expected {name} a positive int, got {value!r}.")
    n = job.step.num_particles
    groups = len(job.prompts)
    prompt_width = job.prompt_ids.shape[1]
    limit = min(job.step.max_steps * job.step.max_step_tokens, job.max_length - prompt_width)
    static = _Static(1.0 / float(alpha), float(alpha), job.step.end_ids, int(limit))
    rows = jnp.repeat(jnp.arange(groups, dtype=jnp.int32), n)
    lm = job.lm
    state = _init(lm, jnp.asarray(job.prompt_ids), jnp.asarray(job.prompt_lengths),
                  job.max_length, rows)
    prompt_lengths = jnp.repeat(jnp.asarray(job.prompt_lengths, jnp.int32), n)
    prompt_last = jnp.take_along_axis(jnp.asarray(job.prompt_ids, jnp.int32),
                                      (jnp.asarray(job.prompt_lengths) - 1)[:, None], axis=1)
    prompt_last = jnp.repeat(prompt_last[:, 0], n)
    batch = groups * n
    width = job.max_length
    chains = Chains(state, jnp.zeros((batch, width), jnp.int32), jnp.zeros((batch,), jnp.int32),
                    jnp.zeros((batch, width)), jnp.zeros((batch, width)),
                    jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.int32))
    particle = jnp.tile(jnp.arange(n, dtype=jnp.uint32), groups)
    tokens_sampled = np.zeros(groups, np.int64)
    per_group = lambda count: np.asarray(count).reshape(groups, n).sum(1)  # noqa: E731
    num_blocks = -(-limit // block_tokens)
    for b in range(num_blocks):
        row_keys = _row_keys(keys, 2 * b, particle, n)
        chains, count = _extend_block(row_keys, lm, chains, prompt_lengths, prompt_last,
                                      static, int(block_tokens))
        tokens_sampled += per_group(count)
        block_end = jnp.int32(min(limit, (b + 1) * block_tokens))
        for s in range(mcmc_steps):
            row_keys = _row_keys(keys, 2 * b + 1 + 2 * num_blocks * (s + 1), particle, n)
            chains, count = _mh_step(row_keys, lm, chains, prompt_lengths, prompt_last,
                                     block_end, static)
            tokens_sampled += per_group(count)
        if bool(jnp.all(chains.ended | (chains.length >= limit))):
            break
    host = jax.device_get(chains._replace(lm=None))
    log_p = np.where(np.arange(width)[None] < host.length[:, None], host.base, 0.0).sum(1)
    output = BatchOutput(
        tokens=np.asarray(host.tokens), length=np.asarray(host.length),
        step_lengths=np.zeros((batch, 1), np.int32), num_steps=np.zeros(batch, np.int32),
        num_scored=np.zeros(batch, np.int32), score=np.ones(batch, np.float32),
        finished=np.ones(batch, bool), log_weights=np.full((groups, n), -np.log(n)),
        log_evidence=np.zeros(groups), collapsed=np.zeros(groups, bool),
        budget=Budget(tokens_sampled, np.zeros(groups, np.int64), 0),
        history={},
    )
    weights = np.ones((groups, n)) if select == "vote" else np.exp(
        (log_p - log_p.max()).reshape(groups, n))
    return MethodOutput(output, weights, select, None,
                        {"acceptance_rate": float(host.accepted.sum() / max(
                            1, batch * mcmc_steps * num_blocks))})


def _row_keys(keys, salt, particle, n):
    salted = jax.vmap(lambda k: jax.random.fold_in(k, salt))(keys)
    return jax.vmap(jax.random.fold_in)(jnp.repeat(salted, n), particle)


@eqx.filter_jit
def _init(lm, prompt_ids, prompt_lengths, max_length, rows):
    return lm.reorder(lm.init_state(prompt_ids, prompt_lengths, max_length), rows)
