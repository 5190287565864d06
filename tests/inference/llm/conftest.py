"""Shared fixtures: the reasoning testbed's model and tokenizer, and an exact host checker."""

from pathlib import Path

import pytest

CHECKPOINT = Path(__file__).resolve().parents[3] / "models" / "lm" / "checkpoints" / "arith"


@pytest.fixture(scope="session")
def testbed():
    """``(model, tokenizer)`` of the shipped testbed language model."""
    from ppl.models import lm

    return lm.load(CHECKPOINT), lm.load_tokenizer(CHECKPOINT)


@pytest.fixture(scope="session")
def host_oracle():
    """``host_oracle(problems)``: a HostReward scoring a trace 1 while every complete line
    equals the reference solution's (``tasks.step_labels``), else 0."""
    from ppl.models.lm.testbed import tasks

    from ppl.reward_model import HostReward

    def make(problems):
        by_prompt = {p.prompt: p for p in problems}

        def score(prompts, traces):
            out = []
            for prompt, trace in zip(prompts, traces, strict=True):
                labels = tasks.step_labels(by_prompt[prompt], trace)
                out.append(float(labels[-1]) if labels else 1.0)
            return out

        return HostReward(score, name="oracle")

    return make
