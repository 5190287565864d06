"""The JAX and the host paths through the same step, and the testbed's rewards in the filter."""

import jax
import numpy as np
from ppl.inference import llm
from ppl.models.lm.testbed import prm, tasks


def _problems(seed, difficulty, count):
    rng = np.random.default_rng(seed)
    return [tasks.generate(rng, difficulty) for _ in range(count)]


def test_jax_and_host_oracles_give_the_same_filter(testbed, host_oracle):
    """The oracle scored in-graph on token ids and the checker on decoded text weigh every
    particle alike, so the same keys give the same particles, weights and evidence."""
    model, tokenizer = testbed
    problems = _problems(11, 5, 3)
    prompts = [p.prompt for p in problems]
    runs = [
        llm.run("particle_filter", model, tokenizer, prompts, key=jax.random.key(2),
                reward=reward, num_particles=6, potential="increment",
                answer_fn=tasks.parse_answer)
        for reward in (prm.OracleReward(), host_oracle(problems))
    ]
    assert runs[0].candidates == runs[1].candidates
    np.testing.assert_allclose(runs[0].weights, runs[1].weights, atol=1e-6)
    np.testing.assert_allclose(runs[0].log_evidence, runs[1].log_evidence, atol=1e-5)
    np.testing.assert_array_equal(runs[0].reward_calls, runs[1].reward_calls)


def test_look_ahead_rollouts_count_in_the_budget(testbed):
    model, tokenizer = testbed
    problems = _problems(12, 4, 2)
    prompts = [p.prompt for p in problems]
    common = dict(key=jax.random.key(0), reward=prm.OracleReward(), num_particles=4,
                  answer_fn=tasks.parse_answer)
    plain = llm.run("entropic_particle_filter", model, tokenizer, prompts, **common)
    ahead = llm.run("entropic_particle_filter", model, tokenizer, prompts,
                    lookahead_tokens=8, **common)
    final_tokens = ahead.candidate_tokens.sum(1)
    # The rollouts' tokens are counted beyond what the final traces hold.
    assert np.all(ahead.tokens > final_tokens) and np.all(ahead.tokens > plain.tokens)
    assert np.all(ahead.reward_calls > plain.reward_calls)
    assert all(a == p.answer for a, p in zip(ahead.answers, problems, strict=True))


def test_a_noisier_oracle_makes_the_filter_worse(testbed):
    """Against PRM quality: the exact checker, then its verdicts flipped 30% of the time."""
    model, tokenizer = testbed
    problems = _problems(13, 7, 24)
    prompts = [p.prompt for p in problems]
    accuracy = {}
    for name, reward in (("exact", prm.OracleReward()),
                         ("noisy", prm.NoisyOracleReward(false_accept_rate=0.3,
                                                         false_reject_rate=0.3, seed=1))):
        result = llm.run("particle_filter", model, tokenizer, prompts, key=jax.random.key(4),
                         reward=reward, num_particles=8, answer_fn=tasks.parse_answer)
        accuracy[name] = np.mean([a == p.answer for a, p in zip(result.answers, problems,
                                                                strict=True)])
    assert accuracy["exact"] >= 0.9 and accuracy["noisy"] < accuracy["exact"] - 0.15, accuracy


def test_a_verifier_with_a_known_error_rate_clips_the_scores_at_it(testbed, host_oracle):
    """A false reject must not end a lineage: the noisy oracle declares its rate as the clip,
    so every final weight of a problem stays within (c / (1 - c))**2 of the heaviest (the
    increment since the last resampling telescopes to a ratio of two clipped scores)."""
    model, tokenizer = testbed
    problems = _problems(14, 6, 4)
    prompts = [p.prompt for p in problems]
    noisy = prm.NoisyOracleReward(false_accept_rate=0.1, false_reject_rate=0.2, seed=3)
    assert noisy.score_clip == 0.2
    common = dict(key=jax.random.key(5), num_particles=8, answer_fn=tasks.parse_answer)
    clipped = llm.run("particle_filter", model, tokenizer, prompts, reward=noisy, **common)
    assert clipped.settings["score_clip"] == 0.2
    ratio = clipped.weights.min(1) / clipped.weights.max(1)
    assert np.all(ratio >= (0.2 / 0.8) ** 2 - 1e-6), ratio
    # Told otherwise, the filter keeps exact zeros; without a declared rate, the anchors' 1e-7.
    exact = llm.run("particle_filter", model, tokenizer, prompts, reward=noisy,
                    score_clip=0.0, allow_collapse=True, **common)
    assert exact.settings["score_clip"] == 0.0 and np.any(exact.weights == 0)
    oracle = llm.run("particle_filter", model, tokenizer, prompts, reward=prm.OracleReward(),
                     **common)
    assert oracle.settings["score_clip"] == 1e-7
    host = llm.run("particle_filter", model, tokenizer, prompts,
                   reward=_with_clip(host_oracle(problems), 0.05), **common)
    assert host.settings["score_clip"] == 0.05


def _with_clip(reward, clip):
    from ppl.reward_model import HostReward

    return HostReward(reward.score_fn, name=reward.name, score_clip=clip)


def test_profiled_split_step_and_narrow_reward_passes_equal_the_fused_step(testbed):
    """``profile=True`` runs each step as three programs (move, score, reweight) that hand
    the reward's cache on in place, and ``reward_pass_tokens=5`` reads each step in several
    passes: both give what the one fused program reading a step at once gives, and the
    profile's pieces add up to the wall time."""
    from pathlib import Path

    model, tokenizer = testbed
    learned = prm.load(Path(tasks.__file__).parents[1] / "checkpoints" / "arith_prm")
    prompts = [p.prompt for p in _problems(5, 4, 3)]
    runs = [
        llm.run("particle_filter", model, tokenizer, prompts, key=jax.random.key(3),
                reward=learned.reward_model(block_length=32), num_particles=4,
                answer_fn=tasks.parse_answer, profile=profile, reward_pass_tokens=width)
        for profile, width in ((False, 16), (True, 16), (False, 5))
    ]
    for other in runs[1:]:
        assert other.candidates == runs[0].candidates
        np.testing.assert_allclose(other.weights, runs[0].weights, atol=1e-5)
        np.testing.assert_allclose(other.log_evidence, runs[0].log_evidence, atol=1e-4)
    timings = runs[1].timings
    assert timings["lm"] > 0 and timings["reward"] > 0
    assert abs(timings["lm"] + timings["reward"] + timings["smc"] - timings["wall"]) < 1e-6
