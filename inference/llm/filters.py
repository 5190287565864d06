"""Particle filtering of reasoning traces with a process reward model, plain and entropic.

**Particle filter** (Puri et al. 2025): ``N`` particles per problem; at every step the
language model samples each particle to its next step boundary (the proposal ``M_t``), the
PRM scores the prefix and the score gives the log-potential ``log G_t``; resampling keeps
the promising traces. The answer is the one whose final particles hold the most weight
(``select="vote"``, the default: the SMC estimate of the most probable answer under the
target) or the heaviest single trace (``"argmax"``). With a learned PRM the vote is the
robust choice: the heaviest trace is the one the PRM overrates most, and as ``N`` grows it is
more and more often a wrong trace that fools it (on the testbed at 8 operations, argmax fell
from 0.77 at N=16 to 0.48 at N=64 where the vote held 0.88 and 0.75). Two potentials (see
:mod:`~ppl.inference.llm.population`):

- ``potential="increment"``, the principled one and the default: ``log G_t = log r_t -
  log r_{t-1}``, resampling when the ESS falls below ``ess_threshold N``, and a log-evidence
  that is unbiased on the exp scale for the target (``target="proposal"``: the tempered LM
  times the final score; ``"base"``: the untempered LM times the final score, each step
  adding ``log p_base - log p_proposal``). The weights telescope to the final score, so a
  PRM's overconfidence cannot compound over the steps;
- ``potential="logit"``, for parity with its_hub and the paper's code: the log-weight is
  ``logit(r_t) / weight_temperature`` of the latest score, multinomial resampling at every
  step, the language model at temperature 0.8. The odds ``r / (1 - r)`` it weighs by favour
  the traces the PRM is most sure of without bound: with the testbed's learned PRM (48
  problems at 8 operations, weighted vote) it reached 0.875 at N=16 and 0.75 at N=64,
  where the increment potential reached 0.958 and 1.0.

Scores are clipped to ``[score_clip, 1 - score_clip]`` first: how far a verdict of 0 or 1 is
trusted. A verifier that errs at a known rate should say so (``score_clip`` on the reward,
as the testbed's noisy oracle does, or on :func:`~ppl.inference.llm.run`): with exact zeros
one false reject of the correct prefix, which every correct particle shares, ends the only
lineage that could reach the right answer, so the filter gets worse as N grows (at 6
operations with 20% of verdicts flipped, 0.68 at N=16 and 0.47 at N=64 on 96 problems).
Clipped at the error rate, a rejected prefix keeps ``rate / (1 - rate)`` of an accepted one's
weight and is accepted again at its next step, the weights still telescope to the (clipped)
final score, and the filter held 0.92 and 0.94 (0.85 at 8 operations, N=64, against 0.30).

**Entropic particle filter** (ePF): the same filter, with the weights flattened before
each resampling by the largest exponent ``b <= 1`` whose weights keep an ESS of at least
``target_ess N`` (bisection, :func:`~ppl.inference.smc.resampling.anneal_to_ess`), against
the impoverishment that greedy resampling on an overconfident PRM causes; survivors carry
the rest of their weight, so the ``increment`` evidence stays unbiased. With
``lookahead_tokens > 0`` each active particle is also rolled out that far past the step
(to its next boundary at most; the rollout is discarded) and resampled by the PRM's score
of the rolled-out prefix (look-ahead modulation), corrected afterwards like the annealing.

References:
    Puri, I., Sudalairaj, S., Xu, G., Xu, K. and Srivastava, A. (2025). A Probabilistic
    Inference Approach to Inference-Time Scaling of LLMs using Particle-Based Monte Carlo
    Methods. arXiv:2502.01618.
    Chopin, N. and Papaspiliopoulos, O. (2020). An Introduction to Sequential Monte Carlo,
    chapter 10 (auxiliary and tempered resampling weights).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ppl.inference.llm import population as P
from ppl.inference.llm.job import Job, MethodOutput, run_job
from ppl.inference.smc import base
from ppl.inference.smc.resampling import anneal_to_ess

from ppl.reward_model import AbstractRewardModel, aggregate

__all__ = ["entropic_particle_filter", "particle_filter", "resampling_policy"]


def resampling_policy(resampling: str, ess_threshold: float, *, keep_first: bool = False):
    """The filter's ``R_t``: every group resamples its active particles by their weights."""
    base.check_ess_threshold(ess_threshold)

    def policy(keys, population, step):
        groups, n = population.log_weights.shape
        active = ~population.finished.reshape(groups, n)
        return P.resample_jit(
            keys, population.log_weights, active, (resampling, ess_threshold, keep_first)
        )

    return policy


def _filter_settings(job: Job, potential, weight_temperature, target, temperature):
    if potential not in P.POTENTIALS:
        raise ValueError(f"Expected potential one of {', '.join(P.POTENTIALS)}, got {potential!r}.")
    if target not in P.TARGETS:
        raise ValueError(f"Expected target one of {', '.join(P.TARGETS)}, got {target!r}.")
    if potential == "logit" and target == "base":
        raise ValueError(
            "Expected target='proposal' with potential='logit': the anchors' weights are the "
            "latest score only, with no accumulated importance weight to correct; use "
            "potential='increment' to target the base language model."
        )
    if potential == "logit" and not job.step.score_clip > 0:
        raise ValueError(
            "Expected score_clip > 0 with potential='logit': the logit of a score of 0 or 1 "
            "is infinite. Use potential='increment' for exact zero weights."
        )
    if not weight_temperature > 0:
        raise ValueError(f"Expected weight_temperature > 0, got {weight_temperature!r}.")
    step = job.step._replace(
        potential=potential, weight_temperature=float(weight_temperature), target=target
    )
    if temperature is not None:
        step = step._replace(temperature=float(temperature))
    return step


def _defaults(potential, resampling, ess_threshold):
    # The anchors resample multinomially at every step; the principled filter adaptively.
    if resampling is None:
        resampling = "multinomial" if potential == "logit" else "systematic"
    if ess_threshold is None:
        ess_threshold = 1.0 if potential == "logit" else 0.5
    return resampling, ess_threshold


def _output(batch, settings, select) -> MethodOutput:
    evidence = batch.log_evidence if settings.potential == "increment" else None
    return MethodOutput(batch, np.exp(batch.log_weights), select, evidence, {})


def particle_filter(
    keys,
    job: Job,
    *,
    potential: str = "increment",
    weight_temperature: float = 1.0,
    target: str = "proposal",
    resampling: str | None = None,
    ess_threshold: float | None = None,
    select: str = "vote",
    temperature: float | None = None,
) -> MethodOutput:
    """Step-level particle filtering with a PRM (module docstring).

    Args:
        keys: ``(G,)`` one PRNG key per problem.
        job: the batch.
        potential: ``"increment"`` (principled, the default) or ``"logit"`` (the anchors').
        weight_temperature: divides the logits of the ``logit`` potential.
        target: ``"proposal"`` or ``"base"`` (``increment`` only).
        resampling: scheme (default multinomial for ``logit``, systematic otherwise).
        ess_threshold: resample below this ESS fraction (default 1, every step, for
            ``logit``; 0.5 otherwise).
        select: ``"vote"`` (the answer with the most final weight) or ``"argmax"`` (the
            heaviest trace).
        temperature: the LM's sampling temperature (default: the run's).
    """
    settings = _filter_settings(job, potential, weight_temperature, target, temperature)
    resampling, ess_threshold = _defaults(potential, resampling, ess_threshold)
    batch = run_job(keys, job, settings, resampling_policy(resampling, ess_threshold))
    return _output(batch, settings, select)


class _Entropic(eqx.Module):
    """The ePF's resampling rule (a policy object: it also counts its look-ahead's cost)."""

    lm: object
    reward: object
    settings: P.Settings = eqx.field(static=True)
    resampling: str = eqx.field(static=True)
    ess_threshold: float = eqx.field(static=True)
    target_ess: float = eqx.field(static=True)
    lookahead_tokens: int = eqx.field(static=True)


@eqx.filter_jit
def _entropic_decision(rule: _Entropic, keys, population):
    P.TRACE_COUNTS["entropic"] += 1
    s = rule.settings
    groups, n = population.log_weights.shape
    active = ~population.finished.reshape(groups, n)
    log_w = population.log_weights
    clip = lambda r: jnp.clip(r, s.score_clip, 1 - s.score_clip) if s.score_clip > 0 else r  # noqa: E731
    zeros = jnp.zeros((groups,), jnp.int32)
    tokens, scored, passes = zeros, zeros, jnp.int32(0)
    if rule.lookahead_tokens > 0:
        # Roll every active particle out past the step on copies of the states (discarded).
        look_keys = jax.vmap(lambda k: jax.random.fold_in(k, 7))(keys)
        row_keys = jax.vmap(jax.random.fold_in)(
            jnp.repeat(look_keys, n), jnp.tile(jnp.arange(n, dtype=jnp.uint32), groups)
        )
        state = population.lm._replace(alive=population.lm.alive & ~population.finished)
        state, out = P.on_devices(
            s.placement,
            lambda lm, keys, state: lm.sample_step(
                keys, state, temperature=s.temperature,
                stop_ids=jnp.asarray(s.stop_ids, jnp.int32),
                max_new_tokens=rule.lookahead_tokens),
            (rule.lm,), (row_keys, state))
        last = jnp.take_along_axis(
            out.tokens, jnp.maximum(out.num_tokens - 1, 0)[:, None], axis=1
        )[:, 0]
        ended = (out.num_tokens > 0) & jnp.isin(last, jnp.asarray(s.end_ids or (-1,), jnp.int32))
        looked = P.read_tokens(rule.reward, population.reward, out.tokens,
                               out.num_tokens - ended, s.reward_pass_tokens, s.placement)
        ahead = jnp.where(out.num_tokens - ended > 0,
                          aggregate(s.aggregation, population.score, looked.score),
                          population.score)
        if s.potential == "logit":
            r = clip(ahead)
            modulated = ((jnp.log(r) - jnp.log1p(-r)) / s.weight_temperature).reshape(groups, n)
        else:
            # A one-sample estimate of the twist r_{t+1} / r_t.
            ratio = jnp.log(clip(ahead)) - jnp.log(clip(population.score))
            modulated = log_w + jnp.where(jnp.isfinite(ratio), ratio, 0.0).reshape(groups, n)
        per_group = lambda x: jnp.sum(x.reshape(groups, n), axis=1)  # noqa: E731
        tokens = per_group(out.num_tokens)
        scored = per_group(((out.num_tokens - ended) > 0).astype(jnp.int32))
        passes = jnp.max(out.num_tokens)
    else:
        modulated = log_w
    annealed, exponent = jax.vmap(lambda v, a: anneal_to_ess(v, rule.target_ess, active=a))(
        modulated, active
    )
    decision = base.resample_groups(
        keys,
        log_w,
        active=active,
        resampling=rule.resampling,
        ess_threshold=rule.ess_threshold,
        resample_log_weights=annealed,
    )
    return decision, exponent, (tokens, scored, passes)


def entropic_particle_filter(
    keys,
    job: Job,
    *,
    potential: str = "increment",
    weight_temperature: float = 1.0,
    target: str = "proposal",
    target_ess: float = 0.5,
    lookahead_tokens: int = 0,
    resampling: str | None = None,
    ess_threshold: float | None = None,
    select: str = "vote",
    temperature: float | None = None,
) -> MethodOutput:
    """The particle filter with entropic annealing and optional look-ahead (module docstring).

    Args:
        target_ess: the annealing keeps the resampling weights' ESS at or above this
            fraction of the active particles (in (0, 1]).
        lookahead_tokens: how far each particle is rolled out past the step before it is
            resampled (0: no look-ahead). Needs a JAX reward model. The rollout's tokens and
            scores count in the budget.

    The other arguments are :func:`particle_filter`'s.
    """
    settings = _filter_settings(job, potential, weight_temperature, target, temperature)
    resampling, ess_threshold = _defaults(potential, resampling, ess_threshold)
    base.check_ess_threshold(ess_threshold)
    if not 0 < target_ess <= 1:
        raise ValueError(f"Expected target_ess in (0, 1], got {target_ess!r}.")
    if int(lookahead_tokens) != lookahead_tokens or lookahead_tokens < 0:
        raise ValueError(f"Expected lookahead_tokens a non-negative int, got {lookahead_tokens!r}.")
    if lookahead_tokens and not isinstance(job.reward, AbstractRewardModel):
        raise ValueError(
            "Expected a JAX reward model (ppl.reward_model.AbstractRewardModel) for "
            f"look-ahead, got {job.reward!r}: a rollout is scored in-graph."
        )
    rule = _Entropic(
        job.lm, job.reward if lookahead_tokens else None, settings, resampling,
        float(ess_threshold), float(target_ess), int(lookahead_tokens),
    )
    exponents, costs = [], []

    def policy(step_keys, population, step):
        decision, exponent, cost = _entropic_decision(rule, step_keys, population)
        exponents.append(exponent)
        costs.append(cost)
        return decision

    batch = run_job(keys, job, settings, policy)
    if costs:
        tokens, scored, passes = (np.sum([np.asarray(c[i]) for c in costs], axis=0)
                                  for i in range(3))
        batch = batch._replace(budget=batch.budget._replace(
            tokens=batch.budget.tokens + tokens,
            reward_calls=batch.budget.reward_calls + scored,
            forward_passes=batch.budget.forward_passes + int(passes),
        ))
    output = _output(batch, settings, select)
    output.extra["annealing_exponent"] = np.asarray(exponents)
    return output
