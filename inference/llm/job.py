"""What every method receives (a batch of encoded problems and the models) and returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from ppl.inference.llm import population as P
from ppl.inference.llm.driver import BatchOutput, run_batch

__all__ = ["Job", "MethodOutput", "run_job"]


class Job(NamedTuple):
    """One batch of problems, ready to run.

    Attributes:
        lm: the token model.
        reward: a JAX reward model, a host reward, or None.
        prompts: ``G`` prompts.
        prompt_ids, prompt_lengths: ``(G, width)`` right-padded tokens and ``(G,)`` lengths.
        context: the JAX reward's ``prepare(prompts)`` output, or None.
        max_length: buffer length.
        step: the step's settings shared by every method (particles, temperature, stop and
            end ids, step limits, aggregation, clipping); methods replace what they own.
        decode: token ids to text.
        allow_collapse: record collapsed problems instead of raising.
        on_step: progress callback ``(step, info)``.
        labels: how errors name the problems.
        timings: a dict the driver adds its profile to, or None (no profiling).
    """

    lm: Any
    reward: Any
    prompts: Sequence[str]
    prompt_ids: np.ndarray
    prompt_lengths: np.ndarray
    context: Any
    max_length: int
    step: P.Settings
    decode: Callable
    allow_collapse: bool
    on_step: Callable | None
    labels: Sequence[str]
    timings: dict | None = None


class MethodOutput(NamedTuple):
    """A method's final particles for one batch.

    Attributes:
        batch: the final population (its budget covers everything the method sampled).
        selection_weights: ``(G, N)`` the weights that choose the answer.
        select: ``"argmax"`` or ``"vote"``.
        log_evidence: ``(G,)`` or None when the method estimates none.
        extra: method-specific records (iterations, annealing exponents, ...).
    """

    batch: BatchOutput
    selection_weights: np.ndarray
    select: str
    log_evidence: np.ndarray | None
    extra: dict


def run_job(problem_keys, job: Job, settings: P.Settings, policy, reference=None) -> BatchOutput:
    """:func:`~ppl.inference.llm.driver.run_batch` on a job with the method's settings."""
    return run_batch(
        problem_keys,
        lm=job.lm,
        reward=job.reward,
        prompts=job.prompts,
        prompt_ids=job.prompt_ids,
        prompt_lengths=job.prompt_lengths,
        context=job.context,
        max_length=job.max_length,
        settings=settings,
        policy=policy,
        decode=job.decode,
        reference=reference,
        allow_collapse=job.allow_collapse,
        on_step=job.on_step,
        group_labels=job.labels,
        timings=job.timings,
    )
