"""Bad input gets a clear error that names the problem."""

import jax
import numpy as np
import pytest
from ppl.inference import llm
from ppl.models.lm.testbed import tasks

from ppl.reward_model import HostReward


@pytest.fixture(scope="module")
def problems():
    rng = np.random.default_rng(0)
    return [tasks.generate(rng, 3) for _ in range(2)]


def _run(testbed, prompts, method="particle_filter", **kwargs):
    model, tokenizer = testbed
    kwargs.setdefault("reward", HostReward(lambda p, t: [0.5] * len(t)))
    return llm.run(method, model, tokenizer, prompts, key=jax.random.key(0), num_particles=2,
                   **kwargs)


def test_settings_are_checked_before_any_work(testbed, problems):
    prompts = [p.prompt for p in problems]
    with pytest.raises(ValueError, match="method one of best_of_n, .*particle_gibbs"):
        _run(testbed, prompts, method="particle_smoother")
    with pytest.raises(ValueError, match="num_particles to be an integer >= 1"):
        llm.run("particle_filter", *testbed, prompts, key=0, num_particles=0,
                reward=lambda p, t: [1.0] * len(t))
    with pytest.raises(ValueError, match="Expected a reward for method 'particle_filter'.*"
                                         "self_consistency"):
        _run(testbed, prompts, reward=None)
    with pytest.raises(ValueError, match="score_clip > 0 with potential='logit'"):
        _run(testbed, prompts, score_clip=0.0, potential="logit")
    with pytest.raises(ValueError, match="target='proposal' with potential='logit'"):
        _run(testbed, prompts, target="base", potential="logit")
    with pytest.raises(ValueError, match="aggregation one of last, min, product"):
        _run(testbed, prompts, aggregation="mean")
    with pytest.raises(TypeError, match="Expected reward"):
        _run(testbed, prompts, reward=3)


def test_prompts_the_tokenizer_or_the_buffer_cannot_hold(testbed, problems):
    with pytest.raises(ValueError, match="character 'x' at position 2"):
        _run(testbed, ["Q x +1\n"])
    with pytest.raises(ValueError, match="shorter than max_length=16 tokens.*19 tokens"):
        _run(testbed, ["Q 10 +1 +2 +3 +4 5\n"], max_length=16)
    with pytest.raises(ValueError, match="non-empty string"):
        _run(testbed, [""])


def test_a_bad_reward_names_the_particle_the_problem_and_the_step(testbed, problems):
    prompts = [p.prompt for p in problems]

    def nan_at_second_step(prompts, traces):
        return [float("nan") if t.count("\n") == 2 else 0.5 for t in traces]

    with pytest.raises(ValueError, match=r"returned nan for particle \d of problem 0 .* at "
                                         r"step 1: expected a score in \[0, 1\]"):
        _run(testbed, prompts, reward=HostReward(nan_at_second_step, name="flaky"))
    with pytest.raises(ValueError, match=r"returned 1.5 .* at step 0"):
        _run(testbed, prompts, reward=lambda p, t: [1.5] * len(t))


def test_every_weight_zero_names_the_step_and_the_problem(testbed, problems):
    prompts = [p.prompt for p in problems]
    zero = HostReward(lambda p, t: [0.0] * len(t), name="zero")
    with pytest.raises(ValueError, match=r"weight is zero at step 0 for problem 0 \('Q .*"
                                         r"score_clip"):
        _run(testbed, prompts, reward=zero, potential="increment", score_clip=0.0)
    # allow_collapse records it instead: no answer, log-evidence -inf.
    result = _run(testbed, prompts, reward=zero, potential="increment", score_clip=0.0,
                  allow_collapse=True)
    assert result.answers == [None, None] and np.all(result.collapsed)
    assert np.all(result.log_evidence == -np.inf)


def test_a_malformed_problems_file_names_its_line(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text('{"prompt": "Q 1 +1\\n"}\n{"prompt": 3}\n')
    with pytest.raises(ValueError, match=r"problems.jsonl:2: expected an object with a "
                                         r"\"prompt\" string"):
        llm.read_problems(path)
    path.write_text('{"prompt": "Q 1 +1\\n"}\n\nnot json\n')
    with pytest.raises(ValueError, match=r"problems.jsonl:3: expected a JSON object"):
        llm.read_problems(path)
    with pytest.raises(ValueError, match="no such file"):
        llm.read_problems(tmp_path / "missing.jsonl")
