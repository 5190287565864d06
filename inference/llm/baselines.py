"""The baselines of inference-time scaling, on the same step as the particle filter.

- ``best_of_n``: ``N`` independent traces, the one with the best final reward;
- ``weighted_best_of_n``: the answer whose traces' final rewards sum highest;
- ``self_consistency``: the majority answer (Wang et al. 2023; no reward needed);
- ``beam_search``: step-level beams: at each step the PRM keeps the best ``N / M`` active
  traces and each is expanded ``M`` ways (as the anchors, ``M = 4`` by default).

The independent baselines are the particle filter with no resampling: the same move, the
same reward calls, the same counters, so budgets compare like for like. Beam search
replaces resampling by a deterministic selection, gathered with the same ``reorder``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ppl.inference.llm import population as P
from ppl.inference.llm.job import Job, MethodOutput, run_job
from ppl.inference.smc.base import GroupResampling

__all__ = ["beam_search", "best_of_n", "self_consistency", "weighted_best_of_n"]


def _independent(keys, job: Job, temperature) -> tuple:
    settings = job.step._replace(potential="none")
    if temperature is not None:
        settings = settings._replace(temperature=float(temperature))
    return run_job(keys, job, settings, policy=None), settings


def _needs_reward(job: Job, method: str) -> None:
    if job.reward is None:
        raise ValueError(
            f"Expected a reward for {method} (it ranks traces by their final score), got "
            "None; self_consistency needs none."
        )


def best_of_n(keys, job: Job, *, temperature: float | None = None) -> MethodOutput:
    """``N`` independent traces; the answer of the one with the highest final score."""
    _needs_reward(job, "best_of_n")
    batch, _ = _independent(keys, job, temperature)
    groups, n = batch.log_weights.shape
    return MethodOutput(batch, batch.score.reshape(groups, n), "argmax", None, {})


def weighted_best_of_n(keys, job: Job, *, temperature: float | None = None) -> MethodOutput:
    """``N`` independent traces; the answer whose traces' final scores sum highest."""
    _needs_reward(job, "weighted_best_of_n")
    batch, _ = _independent(keys, job, temperature)
    groups, n = batch.log_weights.shape
    return MethodOutput(batch, batch.score.reshape(groups, n), "vote", None, {})


def self_consistency(keys, job: Job, *, temperature: float | None = None) -> MethodOutput:
    """``N`` independent traces; the majority answer (unparsable answers dropped)."""
    batch, _ = _independent(keys, job._replace(reward=None), temperature)
    groups, n = batch.log_weights.shape
    return MethodOutput(batch, np.ones((groups, n)), "vote", None, {})


@eqx.filter_jit
def _select_beams(keys, population, expansions):
    """Per group: the best ``max(1, A // M)`` of its ``A`` active particles by score, each
    copied to ``M`` of the active slots (in slot order); finished beams stay where they are."""
    P.TRACE_COUNTS["beams"] += 1
    groups, n = population.log_weights.shape
    active = ~population.finished.reshape(groups, n)
    score = population.score.reshape(groups, n)

    def one(key, score, active):
        # Descending score among the active particles; ties broken at random.
        order = jnp.lexsort((jax.random.uniform(key, (n,)), jnp.where(active, -score, jnp.inf)))
        num_active = jnp.sum(active)
        keep = jnp.maximum(num_active // expansions, 1)
        rank = jnp.cumsum(active) - 1
        pick = order[jnp.minimum(rank // expansions, keep - 1)].astype(jnp.int32)
        return jnp.where(active, pick, jnp.arange(n, dtype=jnp.int32)), num_active

    ancestors, num_active = jax.vmap(one)(keys, score, active)
    log_w = population.log_weights - jax.scipy.special.logsumexp(
        population.log_weights, axis=1, keepdims=True
    )
    return GroupResampling(ancestors, log_w, num_active > 0, num_active.astype(jnp.float32))


def beam_search(
    keys, job: Job, *, expansions: int = 4, temperature: float | None = None
) -> MethodOutput:
    """Step-level beam search: keep the best ``N / expansions`` traces, expand each
    ``expansions`` ways. The answer is the best-scoring final trace.

    Args:
        expansions: ``M``, samples drawn from each kept beam (the beam width is ``N / M``;
            with ``N <= M`` one beam is kept).
    """
    _needs_reward(job, "beam_search")
    if int(expansions) != expansions or expansions < 1:
        raise ValueError(f"Expected expansions a positive int, got {expansions!r}.")
    settings = job.step._replace(potential="none")
    if temperature is not None:
        settings = settings._replace(temperature=float(temperature))

    def policy(step_keys, population, step):
        return _select_beams(step_keys, population, int(expansions))

    batch = run_job(keys, job, settings, policy)
    groups, n = batch.log_weights.shape
    return MethodOutput(batch, batch.score.reshape(groups, n), "argmax", None, {})
