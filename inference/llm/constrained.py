"""Exact constrained generation: token-level SMC with adaptive weighted rejection sampling.

A Boolean constraint on the text so far (``constraint(prompt, text) -> bool``; a regular
language, a parser's prefix check) defines the target ``pi(x) ∝ p_LM(x) prod_t
c(x_1..t)``: the language model conditioned on never breaking the constraint. Masking the
vocabulary needs the constraint on every token at every step; adaptive weighted rejection
sampling (Loula et al. 2025, "Fast Controlled Generation from Language Models with Adaptive
Weighted Rejection Sampling") needs a few:

1. order the vocabulary by ``log p(v) + Gumbel`` (a draw of sampling without replacement
   from ``p``) and check tokens in that order; the first allowed one, ``x``, is an exact
   draw of ``p`` restricted to the allowed set ``A``;
2. check one more token ``y``, the next in the order (a draw of ``p`` restricted to the
   tokens not yet seen, mass ``m``); the weight ``w = p(x) + m 1[y in A]`` then has
   ``E[w | x] = p(x) + p(A \\ {x}) = p(A)``, so ``(x, w)`` is properly weighted for the
   restricted, unnormalised ``p 1_A`` (whose mass is the probability of keeping the
   constraint at this step).

The weights ``w`` are the SMC core's potentials (``log G_t = log w_t``): particles are
resampled when their ESS drops, and ``log_evidence`` estimates ``log P_LM(the constraint
holds throughout)`` without bias on the exp scale. A token that ends the sequence is checked
with ``constraint(prompt, text, ended=True)`` when the constraint accepts that keyword.

The constraint runs in Python on decoded text (host side, once per checked token), the
language model in JAX; one forward pass per token (``force_step``) appends the chosen
tokens to every particle's KV cache.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ppl.inference.llm import population as P
from ppl.inference.llm.driver import BatchOutput, Budget, padded_copies
from ppl.inference.llm.job import Job, MethodOutput
from ppl.inference.smc import base

__all__ = ["constrained_smc", "rejection_step"]


# Candidates brought to the host per row and token; the rest of the order only when needed.
HEAD = 64


@eqx.filter_jit
def _candidates(keys, last_log_probs, temperature, num):
    """Each row's vocabulary in a Gumbel order of ``log p / temperature``: the first ``num``
    token ids and their (tempered, normalised) log-probabilities (a row's order depends on
    its key only, so the head is a prefix of the whole order)."""
    P.TRACE_COUNTS["constrained_order"] += 1
    log_p = jax.nn.log_softmax(last_log_probs / temperature, axis=-1)
    noise = jax.vmap(lambda k: jax.random.gumbel(k, log_p.shape[1:]))(keys)
    _, order = jax.lax.top_k(log_p + noise, num)
    return order, jnp.take_along_axis(log_p, order, axis=1)


def _whole_order(key, last_log_probs, temperature, vocab):
    """One row's whole vocabulary in its Gumbel order (the same key as its head)."""
    order, log_probs = jax.device_get(_candidates(key, last_log_probs, temperature, vocab))
    return order[0], log_probs[0]


def rejection_step(order, log_probs, allowed: Callable[[int], bool], more=None):
    """Adaptive weighted rejection for one row (module docstring, steps 1-2).

    Args:
        order: token ids in the row's Gumbel order (the head of it, or all of it).
        log_probs: their normalised log-probabilities.
        allowed: the constraint on a candidate token.
        more: ``() -> (order, log_probs)`` of the whole vocabulary in the same order, called
            when the head runs out (None: ``order`` is the whole vocabulary).

    Returns:
        ``(token, log_weight, checks)``: the first allowed token (-1 when none is), the log
        of its properly weighted ``w`` (-inf when none is), and the constraint calls made.
    """
    order, probs = list(order), list(np.exp(np.asarray(log_probs, np.float64)))
    seen, checks, index, token = 0.0, 0, 0, -1
    while True:
        if index == len(order):
            if more is None:
                return -1, -np.inf, checks
            order, log_probs = more()
            order, probs, more = list(order), list(np.exp(np.asarray(log_probs, np.float64))), None
            continue
        checks += 1
        if allowed(int(order[index])):
            token, x_prob = int(order[index]), probs[index]
            break
        seen += probs[index]
        index += 1
    rest = max(0.0, 1.0 - seen - x_prob)
    if index + 1 == len(order) and more is not None:
        order, log_probs = more()
        order, probs = list(order), list(np.exp(np.asarray(log_probs, np.float64)))
    extra = 0.0
    if index + 1 < len(order) and rest > 0:
        checks += 1
        extra = rest if allowed(int(order[index + 1])) else 0.0
    return token, float(np.log(x_prob + extra)), checks


@eqx.filter_jit(donate="all-except-first")
def _append(inputs, state):
    lm, tokens, active, temperature = inputs
    return lm.force_step(state, tokens[:, None], active.astype(jnp.int32),
                         temperature=temperature)


def _call_constraint(constraint, wants_ended):
    if wants_ended:
        return lambda prompt, text, ended: bool(constraint(prompt, text, ended=ended))
    return lambda prompt, text, ended: bool(constraint(prompt, text))


def constrained_smc(
    keys,
    job: Job,
    *,
    constraint: Callable,
    ess_threshold: float = 0.5,
    resampling: str = "systematic",
    select: str = "argmax",
    temperature: float = 1.0,
) -> MethodOutput:
    """Token-level SMC of the language model under a Boolean constraint (module docstring).

    Args:
        keys: ``(G,)`` one PRNG key per problem.
        job: the batch; ``max_steps * max_step_tokens`` bounds the tokens per trace.
        constraint: ``(prompt, text) -> bool`` on the text generated so far (optionally with
            an ``ended`` keyword, True when the candidate is an end token).
        ess_threshold, resampling: the SMC core's resampling rule.
        select: how the final particles choose the answer.
        temperature: sample from ``p^(1/temperature)`` restricted (1: the model itself).

    Returns:
        The final particles; ``extra["checks_per_token"]`` is the mean number of constraint
        calls per sampled token (the whole vocabulary would be ``vocab_size``).
    """
    if not callable(constraint):
        raise ValueError(
            f"Expected constraint callable (prompt, text) -> bool, got {constraint!r}."
        )
    base.check_ess_threshold(ess_threshold)
    wants_ended = "ended" in inspect.signature(constraint).parameters
    check = _call_constraint(constraint, wants_ended)
    lm, decode = job.lm, job.decode
    n = job.step.num_particles
    groups = len(job.prompts)
    batch = groups * n
    end_ids = set(job.step.end_ids)
    limit = min(job.step.max_steps * job.step.max_step_tokens,
                job.max_length - job.prompt_ids.shape[1])
    state = _init(lm, jnp.asarray(job.prompt_ids), jnp.asarray(job.prompt_lengths),
                  job.max_length, jnp.repeat(jnp.arange(groups, dtype=jnp.int32), n))
    vocab = int(state.last_log_probs.shape[1])
    texts, ids = [""] * batch, [[] for _ in range(batch)]
    finished = np.zeros(batch, bool)
    log_weights = np.full((groups, n), -np.log(n))
    log_evidence = np.zeros(groups)
    tokens_sampled = np.zeros(groups, np.int64)
    checks = 0
    particle = jnp.tile(jnp.arange(n, dtype=jnp.uint32), groups)
    row_prompts = [p for p in job.prompts for _ in range(n)]
    for step in range(limit):
        step_keys = jax.vmap(lambda k, s=step: jax.random.fold_in(k, s))(keys)
        if step > 0:
            decision = jax.device_get(base.resample_groups(
                step_keys, jnp.asarray(log_weights), active=jnp.asarray(~finished.reshape(
                    groups, n)), resampling=resampling, ess_threshold=ess_threshold))
            if decision.resampled.any():
                ancestors = (decision.ancestors + n * np.arange(groups)[:, None]).reshape(-1)
                state = _copy_rows(lm, state, ancestors)
                texts = [texts[i] for i in ancestors]
                ids = [list(ids[i]) for i in ancestors]
                finished = finished[ancestors]
            log_weights = np.asarray(decision.log_weights, np.float64)
        row_keys = jax.vmap(jax.random.fold_in)(jnp.repeat(step_keys, n), particle)
        head = min(HEAD, vocab)
        order, order_log_probs = jax.device_get(
            _candidates(row_keys, state.last_log_probs, temperature, head))
        chosen = np.zeros(batch, np.int32)
        increments = np.zeros(batch)
        active = np.zeros(batch, bool)
        for row in np.flatnonzero(~finished):
            prompt, text = row_prompts[row], texts[row]

            def allowed(token, prompt=prompt, text=text):
                if token in end_ids:
                    return check(prompt, text, True)
                return check(prompt, text + decode([token]), False)

            more = None if head == vocab else functools.partial(
                _whole_order, row_keys[row : row + 1], state.last_log_probs[row : row + 1],
                temperature, vocab)
            token, log_w, made = rejection_step(order[row], order_log_probs[row], allowed, more)
            checks += made
            tokens_sampled[row // n] += 1
            if token < 0:
                increments[row] = -np.inf
                finished[row] = True
                continue
            chosen[row] = token
            increments[row] = log_w
            active[row] = True
            ids[row].append(token)
            if token in end_ids:
                finished[row] = True
            else:
                texts[row] += decode([token])
        state, _ = _append((lm, jnp.asarray(chosen), jnp.asarray(active), temperature), state)
        log_w = log_weights + increments.reshape(groups, n)
        for g in range(groups):
            before = np.logaddexp.reduce(log_weights[g])
            after = np.logaddexp.reduce(log_w[g])
            if not np.isfinite(after) and not job.allow_collapse:
                row = g * n
                raise ValueError(
                    f"The constraint rejects every token for every particle of problem "
                    f"{job.labels[g]} at token {step}: no continuation of {texts[row]!r} (nor "
                    "of the other particles' prefixes) is allowed."
                )
            log_evidence[g] += after - before if np.isfinite(after) else -np.inf
        log_weights = log_w
        if np.all(finished) or step + 1 >= limit:
            break
        finished |= np.array([len(t) >= limit for t in ids])
    checks_per_token = checks / max(1, int(tokens_sampled.sum()))
    lengths = np.array([len(t) for t in ids], np.int32)
    tokens = np.zeros((batch, job.max_length), np.int32)
    for row, row_ids in enumerate(ids):
        tokens[row, : len(row_ids)] = row_ids
    normalised = log_weights - np.logaddexp.reduce(log_weights, axis=1, keepdims=True)
    output = BatchOutput(
        tokens=tokens, length=lengths, step_lengths=lengths[:, None],
        num_steps=np.ones(batch, np.int32), num_scored=np.zeros(batch, np.int32),
        score=np.ones(batch, np.float32), finished=finished,
        log_weights=np.nan_to_num(normalised, nan=-np.inf),
        log_evidence=log_evidence, collapsed=~np.isfinite(log_evidence),
        budget=Budget(tokens_sampled, np.zeros(groups, np.int64), 0), history={},
    )
    return MethodOutput(output, np.exp(output.log_weights), select, log_evidence,
                        {"checks_per_token": checks_per_token, "vocab_size": vocab})


@eqx.filter_jit
def _init(lm, prompt_ids, prompt_lengths, max_length, rows):
    return lm.reorder(lm.init_state(prompt_ids, prompt_lengths, max_length), rows)


def _copy_rows(lm, state, ancestors):
    """Rows of the dead particles written from their new parents (see the driver)."""
    copies = padded_copies(ancestors)
    if copies is None:
        return state
    return _copy_jit((lm, *map(jnp.asarray, copies)), state)


@eqx.filter_jit(donate="all-except-first")
def _copy_jit(inputs, state):
    lm, destinations, sources = inputs
    return lm.copy_rows(state, destinations, sources)
