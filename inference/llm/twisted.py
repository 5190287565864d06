"""Twisted SMC over traces (Zhao et al. 2024): the language model conditioned on a verdict.

Target ``sigma(x) ∝ p_LM(x) phi(x)`` (``p_LM`` at temperature 1, ``phi`` a verdict on the
finished trace), intermediate targets ``p_LM(x_1..t) psi_t(x_1..t)`` with a twist ``psi``
(an estimate of ``E[phi | x_1..t]``; 1 without one), the last ``psi`` being ``phi`` itself
(:class:`ppl.reward_model.FinalCheck`), so that the evidence estimates ``Z = P(phi = 1)``
without bias.

- ``proposal="step"``: the language model proposes each step (at ``temperature``, corrected
  to the base model), the potential is ``psi_t / psi_{t-1}``: the particle filter with the
  ``increment`` potential.
- ``proposal="token"``: each token from the twisted proposal ``q(v) ∝ p(v | x_<t) psi(x_<t,
  v)``, with weight ``sum_v p(v | x_<t) psi(x_<t, v) / psi(x_<t)`` (the locally optimal
  proposal for the twisted targets). The twist and the final check give the score of every
  candidate token at once (``next_scores``); a trace can then only end where ``phi`` holds.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ppl.inference.llm import filters
from ppl.inference.llm import population as P
from ppl.inference.llm.driver import BatchOutput, Budget, padded_copies
from ppl.inference.llm.job import Job, MethodOutput
from ppl.inference.llm.prompts import encode_prompts as _encode
from ppl.inference.llm.prompts import round_up as _round_up
from ppl.inference.smc import base

from ppl.reward_model import FinalCheck

__all__ = ["token_twisted_smc", "twisted_smc"]


class _Particles(NamedTuple):
    lm: object
    reward: object
    tokens: jnp.ndarray
    length: jnp.ndarray
    finished: jnp.ndarray
    log_weights: jnp.ndarray
    log_evidence: jnp.ndarray


@eqx.filter_jit(donate="all-except-first")
def _token_step(inputs, particles: _Particles):
    """One token for every active particle from the twisted proposal, and its weight."""
    P.TRACE_COUNTS["twisted_token"] += 1
    keys, lm, reward, end_ids = inputs
    groups, n = particles.log_weights.shape
    active = ~particles.finished
    log_p = particles.lm.last_log_probs  # the base model, temperature 1
    psi = reward.next_scores(particles.reward)
    log_m = log_p + jnp.log(psi)
    log_norm = jax.scipy.special.logsumexp(log_m, axis=1)
    noise = jax.vmap(lambda k: jax.random.gumbel(k, log_m.shape[1:]))(keys)
    token = jnp.argmax(log_m + noise, axis=1).astype(jnp.int32)
    dead = ~jnp.isfinite(log_norm)  # no continuation has positive twist: weight zero
    token = jnp.where(dead, 0, token)
    moving = active & ~dead
    lm_state, _ = lm.force_step(particles.lm, token[:, None], moving.astype(jnp.int32),
                                temperature=1.0)
    log_before = jnp.log(particles.reward.score)
    reward_state = reward.extend(particles.reward, token[:, None], moving.astype(jnp.int32))
    log_g = jnp.where(active, jnp.where(dead, -jnp.inf, log_norm - log_before), 0.0)
    ended = moving & jnp.isin(token, end_ids)
    columns = jnp.arange(particles.tokens.shape[1])
    write = moving[:, None] & (columns[None] == particles.length[:, None])
    tokens = jnp.where(write, token[:, None], particles.tokens)
    total = jax.scipy.special.logsumexp(particles.log_weights, axis=1, keepdims=True)
    log_after = jnp.where(jnp.isfinite(total), particles.log_weights - total,
                          particles.log_weights)
    log_w, increment, _, _ = jax.vmap(base.reweight)(log_after, log_g.reshape(groups, n))
    return particles._replace(
        lm=lm_state, reward=reward_state, tokens=tokens, length=particles.length + moving,
        finished=particles.finished | ended | dead, log_weights=log_w,
        log_evidence=particles.log_evidence + increment,
    ), jnp.sum(moving.reshape(groups, n), axis=1)


@eqx.filter_jit
def _init(lm, reward, prompt_ids, prompt_lengths, context, max_length, n):
    groups = prompt_ids.shape[0]
    rows = jnp.repeat(jnp.arange(groups, dtype=jnp.int32), n)
    lm_state = lm.reorder(lm.init_state(prompt_ids, prompt_lengths, max_length), rows)
    reward_state = reward.reorder(
        reward.init_state(prompt_ids, prompt_lengths, max_length, context), rows)
    batch = groups * n
    return _Particles(lm_state, reward_state, jnp.zeros((batch, max_length), jnp.int32),
                      jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool),
                      jnp.full((groups, n), -jnp.log(n)), jnp.zeros((groups,)))


@eqx.filter_jit(donate="all-except-first")
def _copy(inputs, particles):
    lm, reward, destinations, sources, log_weights = inputs
    write = lambda x: x.at[destinations].set(x[sources], mode="drop")  # noqa: E731
    return particles._replace(
        lm=lm.copy_rows(particles.lm, destinations, sources),
        reward=reward.copy_rows(particles.reward, destinations, sources),
        tokens=write(particles.tokens), length=write(particles.length),
        finished=write(particles.finished), log_weights=log_weights)


def _run_tokens(keys, job: Job, reward: FinalCheck, *, ess_threshold: float,
                resampling: str) -> BatchOutput:
    """The token-level loop over one batch of problems."""
    lm, n = job.lm, job.step.num_particles
    groups = len(job.prompts)
    limit = min(job.step.max_steps * job.step.max_step_tokens,
                job.max_length - job.prompt_ids.shape[1])
    particles = _init(lm, reward, jnp.asarray(job.prompt_ids), jnp.asarray(job.prompt_lengths),
                      reward.prepare(job.prompts), job.max_length, n)
    end_ids = jnp.asarray(job.step.end_ids, jnp.int32)
    particle = jnp.tile(jnp.arange(n, dtype=jnp.uint32), groups)
    tokens = np.zeros(groups, np.int64)
    for step in range(limit):
        step_keys = jax.vmap(lambda k, s=step: jax.random.fold_in(k, s))(keys)
        if step > 0:
            decision = jax.device_get(base.resample_groups(
                step_keys, particles.log_weights,
                active=~particles.finished.reshape(groups, n), resampling=resampling,
                ess_threshold=ess_threshold))
            if decision.resampled.any():
                ancestors = (decision.ancestors + n * np.arange(groups)[:, None]).reshape(-1)
                copies = padded_copies(ancestors)
                if copies is not None:
                    particles = _copy((lm, reward, *map(jnp.asarray, copies),
                                       jnp.asarray(decision.log_weights)), particles)
        row_keys = jax.vmap(jax.random.fold_in)(jnp.repeat(step_keys, n), particle)
        particles, moved = _token_step((row_keys, lm, reward, end_ids), particles)
        tokens += np.asarray(moved)
        if bool(jnp.all(particles.finished)):
            break
    host = jax.device_get(particles._replace(lm=None, reward=None))
    # A trace still going at the length limit never met phi: its weight is zero.
    unfinished = ~host.finished.reshape(groups, n)
    log_w = np.where(unfinished, -np.inf, np.asarray(host.log_weights, np.float64))
    total = np.logaddexp.reduce(host.log_weights, axis=1)
    kept = np.logaddexp.reduce(log_w, axis=1)
    log_evidence = np.asarray(host.log_evidence, np.float64) + np.where(
        np.isfinite(total), kept - total, -np.inf)
    with np.errstate(invalid="ignore"):
        normalised = log_w - np.logaddexp.reduce(log_w, axis=1, keepdims=True)
    batch = groups * n
    return BatchOutput(
        tokens=np.asarray(host.tokens), length=np.asarray(host.length),
        step_lengths=np.asarray(host.length)[:, None], num_steps=np.ones(batch, np.int32),
        num_scored=np.asarray(host.length), score=np.ones(batch, np.float32),
        finished=np.asarray(host.finished), log_weights=np.nan_to_num(normalised, nan=-np.inf),
        log_evidence=log_evidence, collapsed=~np.isfinite(log_evidence),
        budget=Budget(tokens, tokens, 0), history={})


def twisted_smc(keys, job: Job, *, final, proposal: str = "step",
                ess_threshold: float = 0.5, resampling: str = "systematic",
                select: str = "argmax") -> MethodOutput:
    """Twisted SMC (module docstring); the run's ``reward`` is the twist (None: plain SMC).

    Args:
        final: the verdict on finished traces (a JAX reward that reads end tokens).
        proposal: ``"step"`` or ``"token"``.
    """
    if proposal not in ("step", "token"):
        raise ValueError(f"Expected proposal 'step' or 'token', got {proposal!r}.")
    reward = FinalCheck(job.reward, final, job.step.end_ids)
    step = job.step._replace(potential="increment", target="base", score_clip=0.0,
                             reward_reads_end=True, unfinished_score=0.0)
    job = job._replace(reward=reward, context=reward.prepare(job.prompts), step=step,
                       allow_collapse=True)
    if proposal == "token":
        for name, part in (("twist", job.reward.twist), ("final", final)):
            if part is not None and not hasattr(part, "next_scores"):
                raise ValueError(
                    f"Expected a {name} with next_scores (the score after every possible next "
                    f"token at once) for proposal='token'; {type(part).__name__} has none: "
                    "use proposal='step'.")
        batch = _run_tokens(keys, job, reward, ess_threshold=ess_threshold,
                            resampling=resampling)
    else:
        out = filters.particle_filter(keys, job, potential="increment", target="base",
                                      resampling=resampling, ess_threshold=ess_threshold,
                                      select=select)
        batch = out.batch
    return MethodOutput(batch, np.exp(batch.log_weights), select, batch.log_evidence, {})


def token_twisted_smc(model, tokenizer, prompts, *, key, reward: FinalCheck, num_particles,
                      max_new_tokens=192, batch_size=256, ess_threshold=0.5,
                      resampling="systematic", **unused) -> np.ndarray:
    """``log Z`` estimates of the token-level twisted SMC, one run per prompt."""
    encoded = _encode(tokenizer, prompts)
    longest = max(len(e) for e in encoded)
    max_length = _round_up(longest + max_new_tokens, 128)
    width = _round_up(longest, 16)
    groups = max(1, batch_size // num_particles)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(
        jnp.arange(_round_up(len(prompts), groups)))
    step = P.Settings(num_particles=num_particles, temperature=1.0, stop_ids=(),
                      end_ids=tuple(int(i) for i in model.end_ids), max_step_tokens=1,
                      max_steps=max_new_tokens)
    out = []
    for first in range(0, len(prompts), groups):
        chunk = list(range(first, min(first + groups, len(prompts))))
        padded = chunk + [chunk[-1]] * (groups - len(chunk))
        ids = np.zeros((groups, width), np.int32)
        for row, i in enumerate(padded):
            ids[row, : len(encoded[i])] = encoded[i]
        job = Job(lm=model, reward=reward, prompts=[prompts[i] for i in padded], prompt_ids=ids,
                  prompt_lengths=np.array([len(encoded[i]) for i in padded], np.int32),
                  context=None, max_length=max_length, step=step, decode=tokenizer.decode,
                  allow_collapse=True, on_step=None, labels=[str(i) for i in padded])
        batch = _run_tokens(keys[first : first + groups], job, reward,
                            ess_threshold=ess_threshold, resampling=resampling)
        out.extend(batch.log_evidence[: len(chunk)])
    return np.asarray(out)
