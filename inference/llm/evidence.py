"""Bidirectional bounds on the evidence of a conditioned language model (Zhao et al. 2024).

Target: the language model conditioned on an outcome, ``sigma(x) = p_LM(x) phi(x) / Z``,
``phi`` a Boolean verdict on the whole trace, so that ``Z = P_LM(phi = 1)``. SMC over the
traces' steps with potentials from a twist ``psi`` (the last one ``phi`` itself, see
:class:`ppl.reward_model.FinalCheck`) estimates ``Z`` without bias, so by Jensen

    E[log Z_SMC] <= log Z <= E[log Z_CSMC],

the upper bound from conditional SMC whose retained trace is an exact draw of ``sigma``
(here from rejection sampling: plain samples until ``phi`` holds). The gap between the
bounds bounds the KL divergence of SMC's approximation from ``sigma`` both ways; it
shrinks as ``N`` grows and as the twist nears ``E[phi | prefix]``. ``method="smc"`` has no
twist (weights only at the end: importance sampling); ``"twisted_smc"`` uses one, with the
language model as the step-level proposal or, with ``proposal="token"``, the twisted
token-level proposal ``p(x_t | x_<t) psi(x_<=t) / normaliser``
(:mod:`~ppl.inference.llm.twisted`).

Each problem's ``log_z_lower`` is the mean of ``num_runs`` runs' ``log Z_SMC``;
``log_z_upper`` the mean over its exact samples of ``log Z_CSMC`` (NaN, and said, when
rejection sampling found none within its budget).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ppl.inference.llm import gibbs, twisted
from ppl.inference.llm import population as P
from ppl.inference.llm.api import run
from ppl.inference.llm.filters import resampling_policy
from ppl.inference.llm.job import Job, run_job
from ppl.inference.llm.prompts import encode_prompts as _encode
from ppl.inference.llm.prompts import round_up as _round_up
from ppl.inference.llm.prompts import stop_ids as _stop_ids

from ppl.reward_model import AbstractRewardModel, FinalCheck

__all__ = ["EVIDENCE_METHODS", "EvidenceResult", "evidence_bounds", "rejection_samples"]

EVIDENCE_METHODS = ("smc", "twisted_smc")


@dataclasses.dataclass
class EvidenceResult:
    """Per problem: the bounds, what they rest on, and the cost.

    Attributes:
        prompts: the prompts.
        log_z_lower: ``(P,)`` mean ``log Z_SMC`` over the runs (a lower bound on ``log Z``
            in expectation).
        log_z_upper: ``(P,)`` mean ``log Z_CSMC`` over the exact samples (NaN without any).
        lower_runs: ``(P, num_runs)``; upper_runs: per problem, one value per exact sample.
        num_exact_samples: ``(P,)`` exact draws of ``sigma`` used for the upper bound.
        rejection_tries: ``(P,)`` plain samples drawn to find them.
        notes: per problem, what could not be done (no exact sample found, ...).
        wall_time: seconds.
        settings: what ran.
    """

    prompts: list[str]
    log_z_lower: np.ndarray
    log_z_upper: np.ndarray
    lower_runs: np.ndarray
    upper_runs: list[np.ndarray]
    num_exact_samples: np.ndarray
    rejection_tries: np.ndarray
    notes: list[str]
    wall_time: float
    settings: dict

    def records(self) -> list[dict]:
        """One JSON-ready dict per problem (what ``ppl lm evidence --out`` writes)."""
        return [
            {"prompt": prompt, "log_z_lower": _float(self.log_z_lower[i]),
             "log_z_upper": _float(self.log_z_upper[i]),
             "num_exact_samples": int(self.num_exact_samples[i]),
             "rejection_tries": int(self.rejection_tries[i]),
             "lower_runs": [_float(v) for v in self.lower_runs[i]],
             "upper_runs": [_float(v) for v in self.upper_runs[i]],
             **({"note": self.notes[i]} if self.notes[i] else {})}
            for i, prompt in enumerate(self.prompts)
        ]


def _float(value):
    value = float(value)
    return None if np.isnan(value) else value


def rejection_samples(model, tokenizer, prompts: Sequence[str],
                      is_exact: Callable[[int, str], bool], *, key, num_samples: int,
                      max_tries: int, batch: int = 64, temperature: float = 1.0,
                      **run_settings):
    """Exact draws of ``sigma``: plain samples of each prompt until ``num_samples`` of them
    pass ``is_exact(index, trace)`` or ``max_tries`` are spent.

    Returns:
        ``(samples, tries)``: per problem a list of passing traces (text), and the number of
        plain samples drawn for it.
    """
    samples = [[] for _ in prompts]
    tries = np.zeros(len(prompts), np.int64)
    rounds = -(-max_tries // batch)
    for round_index in range(rounds):
        pending = [i for i in range(len(prompts))
                   if len(samples[i]) < num_samples and tries[i] < max_tries]
        if not pending:
            break
        result = run("self_consistency", model, tokenizer, [prompts[i] for i in pending],
                     key=jax.random.fold_in(key, round_index), num_particles=batch,
                     temperature=temperature, **run_settings)
        for local, index in enumerate(pending):
            for text in result.candidates[local]:
                if len(samples[index]) < num_samples and is_exact(index, text):
                    samples[index].append(text)
            tries[index] += batch
    return samples, tries


def _steps(tokenizer, text: str, settings: P.Settings) -> list[list[int]]:
    """A finished trace's token ids cut into steps as the filter cuts them: after a stop
    token, an end token, or ``max_step_tokens`` tokens (its end token appended)."""
    ids = list(tokenizer.encode(text)) + [settings.end_ids[0]]
    steps, current = [], []
    for token in ids:
        current.append(token)
        if token in settings.stop_ids or token in settings.end_ids or (
                len(current) == settings.max_step_tokens):
            steps.append(current)
            current = []
    if current:
        steps.append(current)
    return steps


def evidence_bounds(
    method: str,
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    key,
    final: AbstractRewardModel,
    twist: AbstractRewardModel | None = None,
    exact_samples: Sequence[Sequence[str]] | None = None,
    num_particles: int = 16,
    num_runs: int = 4,
    proposal: str = "step",
    ess_threshold: float = 0.5,
    temperature: float = 1.0,
    stop: str = "\n",
    max_step_tokens: int = 64,
    max_steps: int = 64,
    max_new_tokens: int = 192,
    batch_size: int = 256,
) -> EvidenceResult:
    """Lower and upper bounds on ``log Z`` for every prompt (module docstring).

    Args:
        method: ``"smc"`` (no twist) or ``"twisted_smc"``.
        model, tokenizer: the language model (the base distribution ``p_LM`` is the model at
            temperature 1; ``temperature`` is the step-level proposal's, corrected for).
        prompts: the problems.
        key: PRNG key.
        final: the verdict ``phi`` on finished traces: a JAX reward that reads end tokens
            (the testbed's exact oracle does) with score 1 exactly when ``phi`` holds.
        twist: the prefixes' twist (``twisted_smc``).
        exact_samples: per problem, traces (text) drawn exactly from ``sigma`` (e.g. by
            :func:`rejection_samples`); the upper bound needs at least one.
        num_particles: ``N``.
        num_runs: SMC runs per problem for the lower bound.
        proposal: ``"step"`` (the language model proposes each step) or ``"token"`` (the
            twisted token-level proposal; the twist and the final check need
            ``next_scores``).
        ess_threshold: the lower bound's SMC resamples below this ESS fraction (the upper
            bound's conditional SMC resamples at every step).
    """
    if method not in EVIDENCE_METHODS:
        raise ValueError(f"Expected method one of {', '.join(EVIDENCE_METHODS)}, got {method!r}.")
    if method == "twisted_smc" and twist is None:
        raise ValueError("Expected a twist for method 'twisted_smc', got None (use 'smc').")
    if method == "smc":
        twist = None
    if proposal not in ("step", "token"):
        raise ValueError(f"Expected proposal 'step' or 'token', got {proposal!r}.")
    end_ids = tuple(int(i) for i in getattr(model, "end_ids", ()))
    if not end_ids:
        raise ValueError("Expected a language model with end_ids: phi judges finished traces.")
    if isinstance(key, int):
        key = jax.random.key(key)
    prompts = list(prompts)
    reward = FinalCheck(twist, final, end_ids)
    start = time.perf_counter()
    common = dict(num_particles=num_particles, temperature=temperature, stop=stop,
                  max_step_tokens=max_step_tokens, max_steps=max_steps,
                  max_new_tokens=max_new_tokens, batch_size=batch_size, score_clip=0.0,
                  allow_collapse=True)
    copies = [p for p in prompts for _ in range(num_runs)]
    if proposal == "token":
        lower = twisted.token_twisted_smc(model, tokenizer, copies, key=key, reward=reward,
                                          ess_threshold=ess_threshold, **common)
    else:
        result = run("particle_filter", model, tokenizer, copies, key=key, reward=reward,
                     potential="increment", target="base", ess_threshold=ess_threshold,
                     unfinished_score=0.0, **common)
        lower = result.log_evidence
    lower_runs = np.asarray(lower, np.float64).reshape(len(prompts), num_runs)
    exact_samples = [list(s) for s in exact_samples] if exact_samples else [[] for _ in prompts]
    if len(exact_samples) != len(prompts):
        raise ValueError(f"Expected one list of exact samples per prompt ({len(prompts)}), got "
                         f"{len(exact_samples)}.")
    pairs = [(i, text) for i, texts in enumerate(exact_samples) for text in texts]
    values = _conditional(model, tokenizer, prompts, pairs, reward,
                          jax.random.fold_in(key, 10_000), common) if pairs else np.zeros(0)
    upper_runs = [values[[k for k, (i, _) in enumerate(pairs) if i == index]]
                  for index in range(len(prompts))]
    notes = ["" if runs.size else "no exact sample of the target: upper bound not computed"
             for runs in upper_runs]
    with np.errstate(invalid="ignore"):
        upper = np.array([runs.mean() if runs.size else np.nan for runs in upper_runs])
    return EvidenceResult(
        prompts=prompts, log_z_lower=lower_runs.mean(1), log_z_upper=upper,
        lower_runs=lower_runs, upper_runs=upper_runs,
        num_exact_samples=np.array([len(s) for s in exact_samples]),
        rejection_tries=np.zeros(len(prompts), np.int64), notes=notes,
        wall_time=time.perf_counter() - start,
        settings={"method": method, "num_particles": num_particles, "num_runs": num_runs,
                  "proposal": proposal, "temperature": temperature,
                  "ess_threshold": ess_threshold},
    )


def _conditional(model, tokenizer, prompts, pairs, reward, key, common):
    """``log Z_CSMC`` of conditional SMC around each exact sample, one group per
    ``(problem, sample)`` pair, in batches of ``batch_size`` rows."""
    n = common["num_particles"]
    if n < 2:
        raise ValueError(f"Expected num_particles >= 2 for the upper bound, got {n}.")
    encoded = _encode(tokenizer, prompts)
    width = _round_up(max(len(e) for e in encoded), 16)
    max_length = _round_up(max(len(e) for e in encoded) + common["max_new_tokens"], 128)
    settings = P.Settings(
        num_particles=n, temperature=float(common["temperature"]),
        stop_ids=_stop_ids(tokenizer, common["stop"]),
        end_ids=tuple(int(i) for i in model.end_ids), max_step_tokens=common["max_step_tokens"],
        max_steps=common["max_steps"], potential="increment", target="base", score_clip=0.0,
        reward_reads_end=True, unfinished_score=0.0,
    )
    groups = max(1, common["batch_size"] // n)
    values = []
    for first in range(0, len(pairs), groups):
        chunk = pairs[first : first + groups]
        padded = chunk + [chunk[-1]] * (groups - len(chunk))
        ids = np.zeros((groups, width), np.int32)
        for row, (index, _) in enumerate(padded):
            ids[row, : len(encoded[index])] = encoded[index]
        batch_prompts = [prompts[index] for index, _ in padded]
        references = gibbs.reference_from_steps(
            [_steps(tokenizer, text, settings) for _, text in padded], settings)
        job = Job(lm=model, reward=reward, prompts=batch_prompts, prompt_ids=ids,
                  prompt_lengths=np.array([len(encoded[i]) for i, _ in padded], np.int32),
                  context=reward.prepare(batch_prompts), max_length=max_length, step=settings,
                  decode=tokenizer.decode, allow_collapse=True, on_step=None,
                  labels=[repr(p) for p in batch_prompts])
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(first + jnp.arange(groups))
        batch = run_job(keys, job, settings,
                        resampling_policy("multinomial", 1.0, keep_first=True),
                        reference=references)
        values.extend(np.asarray(batch.log_evidence[: len(chunk)], np.float64))
    return np.asarray(values)
