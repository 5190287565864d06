"""Resumable LLM runs (``llm.run(checkpoint_dir=)``): an interrupted run, called again,
skips the recorded batches and ends with the uninterrupted run's result; another run's
directory is refused, naming what differs."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from ppl.inference import llm
from ppl.inference.llm import api, resume
from ppl.models.lm.testbed import prm, tasks


def _prompts(count):
    rng = np.random.default_rng(21)
    return [tasks.generate(rng, 3).prompt for _ in range(count)]


KWARGS = dict(key=jax.random.key(3), num_particles=4, batch_size=8, num_iterations=2,
              answer_fn=tasks.parse_answer)


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(testbed, tmp_path, monkeypatch):
    model, tokenizer = testbed
    prompts = _prompts(6)  # 3 batches of 2 problems
    reward = prm.OracleReward()
    plain = llm.run("particle_gibbs", model, tokenizer, prompts, reward=reward, **KWARGS)

    spec = api.METHODS["particle_gibbs"]
    calls = []

    def interrupted(keys, job, **settings):
        calls.append(len(calls))
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a Ctrl-C in the second batch
        return spec.fn(keys, job, **settings)

    monkeypatch.setitem(api.METHODS, "particle_gibbs", spec._replace(fn=interrupted))
    with pytest.raises(KeyboardInterrupt):
        llm.run("particle_gibbs", model, tokenizer, prompts, reward=reward,
                checkpoint_dir=tmp_path / "run", **KWARGS)
    assert sorted(p.name for p in (tmp_path / "run").glob("block_*")) == ["block_00000.npz"]

    calls.clear()
    monkeypatch.setitem(api.METHODS, "particle_gibbs",
                        spec._replace(fn=lambda *a, **k: (calls.append(0), spec.fn(*a, **k))[1]))
    resumed = llm.run("particle_gibbs", model, tokenizer, prompts, reward=reward,
                      checkpoint_dir=tmp_path / "run", **KWARGS)
    assert len(calls) == 2 and resumed.settings["resumed_batches"] == 1
    assert resumed.candidates == plain.candidates
    assert resumed.answers == plain.answers
    np.testing.assert_array_equal(resumed.weights, plain.weights)
    np.testing.assert_array_equal(resumed.tokens, plain.tokens)
    np.testing.assert_array_equal(resumed.reward_calls, plain.reward_calls)
    assert resumed.forward_passes == plain.forward_passes
    assert json.dumps(resume._encode(resumed.extra)) == json.dumps(resume._encode(plain.extra))
    assert isinstance(resumed.extra[0]["references"], np.ndarray)

    # Everything recorded: a third call computes nothing.
    calls.clear()
    again = llm.run("particle_gibbs", model, tokenizer, prompts, reward=reward,
                    checkpoint_dir=tmp_path / "run", **KWARGS)
    assert not calls and again.candidates == plain.candidates


def test_another_runs_directory_is_refused_naming_what_differs(testbed, tmp_path):
    model, tokenizer = testbed
    prompts = _prompts(2)
    kwargs = dict(KWARGS, num_iterations=1)
    llm.run("particle_filter", model, tokenizer, prompts, reward=prm.OracleReward(),
            checkpoint_dir=tmp_path, **{k: v for k, v in kwargs.items()
                                        if k != "num_iterations"})
    with pytest.raises(ValueError, match=r"differs in \['settings'\]"):
        llm.run("particle_filter", model, tokenizer, prompts, reward=prm.OracleReward(),
                checkpoint_dir=tmp_path, temperature=0.5,
                **{k: v for k, v in kwargs.items() if k != "num_iterations"})
    with pytest.raises(ValueError, match=r"differs in \['prompts'\]"):
        llm.run("particle_filter", model, tokenizer, prompts[::-1], reward=prm.OracleReward(),
                checkpoint_dir=tmp_path,
                **{k: v for k, v in kwargs.items() if k != "num_iterations"})


def test_records_round_trip_method_extras():
    extra = {"references": np.arange(6).reshape(2, 3), "traces": [[np.array([1, 2])], []],
             "num": 2, "exponent": np.float32(0.5)}
    back = resume._decode(json.loads(json.dumps(resume._encode(extra))))
    np.testing.assert_array_equal(back["references"], extra["references"])
    assert back["references"].dtype == extra["references"].dtype
    np.testing.assert_array_equal(back["traces"][0][0], [1, 2])
    assert back["num"] == 2 and back["exponent"].dtype == np.float32
    with pytest.raises(TypeError, match="Cannot record"):
        resume._encode({"f": object()})
