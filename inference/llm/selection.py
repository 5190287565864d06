"""Choosing one answer per problem from its final particles (host-side, on text).

- ``argmax``: the trace with the largest weight (best-of-N: the largest final score);
- ``vote``: the answer whose traces hold the most weight (weighted best-of-N sums final
  rewards per distinct answer; self-consistency gives every trace weight 1).

Traces whose answer cannot be read (``answer_fn`` returns None) are passed over while any
trace of the problem has an answer, as the anchors' self-consistency drops unparsable
answers; ties are broken at random (with the caller's generator), never by position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["SELECTIONS", "choose", "last_line"]

SELECTIONS = ("argmax", "vote")


def last_line(trace: str) -> str | None:
    """The default answer of a trace: its last non-empty line, stripped (None if empty)."""
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    return lines[-1] if lines else None


def choose(
    traces: Sequence[str],
    weights: np.ndarray,
    *,
    how: str,
    answer_fn: Callable[[str], Any],
    rng: np.random.Generator,
) -> tuple[int, Any, list[Any]]:
    """One problem: ``(index of the chosen trace, its answer, every trace's answer)``.

    Args:
        traces: the problem's final traces.
        weights: ``(N,)`` non-negative weights (scores, normalised weights or ones).
        how: ``"argmax"`` or ``"vote"``.
        answer_fn: trace text to a hashable answer, or None when it has none.
        rng: breaks ties.
    """
    if how not in SELECTIONS:
        raise ValueError(f"Expected selection one of {', '.join(SELECTIONS)}, got {how!r}.")
    answers = [answer_fn(trace) for trace in traces]
    weights = np.nan_to_num(np.asarray(weights, np.float64), nan=0.0)
    has_answer = np.array([a is not None for a in answers])
    eligible = has_answer if has_answer.any() else np.ones(len(traces), bool)
    if how == "argmax":
        masked = np.where(eligible, weights, -np.inf)
        best = np.flatnonzero(masked == masked.max())
        index = int(rng.choice(best))
        return index, answers[index], answers
    totals: dict[Any, float] = {}
    for answer, weight, ok in zip(answers, weights, eligible, strict=True):
        if ok:
            totals[answer] = totals.get(answer, 0.0) + float(weight)
    top = max(totals.values())
    winners = [a for a, total in totals.items() if total == top]
    winner = winners[int(rng.integers(len(winners)))]
    # Among the winner's traces, the heaviest (ties at random).
    candidates = [i for i, a in enumerate(answers) if a == winner and eligible[i]]
    heaviest = max(weights[i] for i in candidates)
    index = int(rng.choice([i for i in candidates if weights[i] == heaviest]))
    return index, winner, answers
