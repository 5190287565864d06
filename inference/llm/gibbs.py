"""Particle Gibbs over reasoning traces: iterated conditional SMC with a retained trace.

Iteration 1 is the particle filter. Each later iteration is conditional SMC (Andrieu,
Doucet and Holenstein 2010; :mod:`ppl.inference.smc.conditional` for state-space models):
slot 0 of every problem replays the retained trace step by step (teacher-forced through
``force_step``, scored by the reward like any particle), it keeps ancestor 0 at every
resampling while the other slots draw i.i.d. ancestors (conditional multinomial
resampling), and the next retained trace is drawn from the final weights. With the
``increment`` potential this is a Markov chain on traces that leaves the filter's target
invariant (the LM at its target temperature times the final score), for any number of
particles: a trace found early is kept, and later iterations look for better ones around
it. As the anchors (Puri et al.), the budget ``num_particles`` is split over the
iterations: ``max(2, N // num_iterations)`` particles each.

Ancestor sampling (Lindsten et al. 2014) would need the target of the retained trace's
suffix after every other particle's prefix, that is re-scoring the whole suffix under the
language model and the PRM from each particle at every step; it is not done here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ppl.inference.llm import population as P
from ppl.inference.llm.filters import _filter_settings, resampling_policy
from ppl.inference.llm.job import Job, MethodOutput, run_job

__all__ = [
    "conditional_sweep", "particle_gibbs", "reference_from", "reference_from_steps", "steps_of",
]


def reference_from_steps(steps: list[list[list[int]]], settings: P.Settings) -> P.Reference:
    """Retained references from token ids, one trace per group, each a list of steps."""
    tokens = np.zeros((len(steps), settings.max_steps, settings.max_step_tokens), np.int32)
    step_lengths = np.zeros((len(steps), settings.max_steps), np.int32)
    for g, trace in enumerate(steps):
        if len(trace) > settings.max_steps:
            raise ValueError(f"Expected at most {settings.max_steps} steps, got {len(trace)}.")
        for t, step in enumerate(trace):
            if len(step) > settings.max_step_tokens:
                raise ValueError(
                    f"Expected steps of at most {settings.max_step_tokens} tokens, got {len(step)}."
                )
            tokens[g, t, : len(step)] = step
            step_lengths[g, t] = len(step)
    return P.Reference(jnp.asarray(tokens), jnp.asarray(step_lengths))


def steps_of(batch, row: int) -> list[list[int]]:
    """The token ids of row ``row``'s trace, step by step."""
    steps, offset = [], 0
    for count in batch.step_lengths[row, : batch.num_steps[row]]:
        steps.append([int(t) for t in batch.tokens[row, offset : offset + count]])
        offset += int(count)
    return steps


def reference_from(batch, rows: np.ndarray, settings: P.Settings) -> P.Reference:
    """The traces of ``rows`` (one per group, flat row indices) as retained references."""
    return reference_from_steps([steps_of(batch, int(r)) for r in rows], settings)


def conditional_sweep(keys, job: Job, settings: P.Settings, reference: P.Reference | None):
    """One sweep: the filter (``reference=None``) or conditional SMC around ``reference``;
    returns the batch and each group's next retained row (a draw from its final weights)."""
    policy = resampling_policy("multinomial", 1.0, keep_first=reference is not None)
    batch = run_job(keys, job, settings, policy, reference=reference)
    choose_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)
    local = np.asarray(
        jax.vmap(jax.random.categorical)(choose_keys, jnp.asarray(batch.log_weights))
    )
    return batch, np.arange(len(local)) * settings.num_particles + local


def particle_gibbs(
    keys,
    job: Job,
    *,
    num_iterations: int = 4,
    potential: str = "increment",
    weight_temperature: float = 1.0,
    target: str = "proposal",
    select: str = "argmax",
    temperature: float | None = None,
) -> MethodOutput:
    """Particle Gibbs (module docstring).

    Args:
        num_iterations: conditional SMC sweeps (fewer when ``N < 2 * num_iterations``).
        potential, weight_temperature, target, temperature: as :func:`particle_filter`.
        select: how the last sweep's particles choose the answer.

    Returns:
        The last sweep's particles; ``extra["references"]`` holds the retained trace's row
        of every sweep and ``extra["reference_traces"]`` their token ids, per problem.
    """
    if int(num_iterations) != num_iterations or num_iterations < 1:
        raise ValueError(f"Expected num_iterations a positive int, got {num_iterations!r}.")
    total = job.step.num_particles
    iterations = max(1, min(int(num_iterations), total // 2))
    per_sweep = max(1, total // iterations) if iterations == 1 else max(2, total // iterations)
    settings = _filter_settings(job, potential, weight_temperature, target, temperature)
    settings = settings._replace(num_particles=per_sweep)
    groups = len(job.prompts)
    budget_tokens = np.zeros(groups, np.int64)
    budget_calls = np.zeros(groups, np.int64)
    passes = 0
    reference, references, reference_tokens = None, [], []
    first_evidence = None
    for sweep in range(iterations):
        sweep_keys = jax.vmap(lambda k, s=sweep: jax.random.fold_in(k, 1000 + s))(keys)
        # Conditional SMC resamples at every step, multinomially (slot 0 keeps its reference).
        batch, rows = conditional_sweep(sweep_keys, job, settings, reference)
        if sweep == 0:
            first_evidence = batch.log_evidence.copy()
        budget_tokens += batch.budget.tokens
        budget_calls += batch.budget.reward_calls
        passes += batch.budget.forward_passes
        references.append(rows)
        reference_tokens.append([batch.tokens[r, : batch.length[r]].copy() for r in rows])
        reference = reference_from(batch, rows, settings)
    batch = batch._replace(
        budget=batch.budget._replace(
            tokens=budget_tokens, reward_calls=budget_calls, forward_passes=passes
        )
    )
    # Conditional sweeps' evidence estimates are biased upwards (the retained trace is
    # always there); the first sweep is a plain filter, whose estimate is unbiased.
    evidence = first_evidence if potential == "increment" else None
    return MethodOutput(
        batch, np.exp(batch.log_weights), select, evidence,
        {"references": np.asarray(references).T, "reference_traces": reference_tokens,
         "num_iterations": iterations, "particles_per_iteration": per_sweep},
    )
