"""The scaling methods' mechanics: selection, beams, alignment, batching, compilation, budgets."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.inference import llm
from ppl.inference.llm import baselines, selection
from ppl.inference.llm import population as P
from ppl.models.lm.testbed import data, tasks


def test_argmax_vote_and_unparsable_answers_on_hand_made_traces():
    rng = np.random.default_rng(0)
    traces = ["x\nA 5\n", "y\nA 7\n", "z\nA 7\n", "no answer\n"]
    weights = np.array([0.5, 0.3, 0.3, 0.9])
    # argmax passes over the unparsable trace while any trace has an answer.
    index, answer, answers = selection.choose(traces, weights, how="argmax",
                                              answer_fn=tasks.parse_answer, rng=rng)
    assert (index, answer, answers) == (0, 5, [5, 7, 7, None])
    # vote: 7 holds 0.6 against 5's 0.5 (weighted best-of-N sums rewards per answer).
    index, answer, _ = selection.choose(traces, weights, how="vote",
                                        answer_fn=tasks.parse_answer, rng=rng)
    assert answer == 7 and index in (1, 2)
    # Majority vote with equal weights; a tie is broken at random, not by position.
    picks = {selection.choose(["A 1\n", "A 2\n"], np.ones(2), how="vote",
                              answer_fn=tasks.parse_answer, rng=rng)[1] for _ in range(40)}
    assert picks == {1, 2}
    # Nothing parsable: the heaviest trace, with no answer.
    assert selection.choose(["a", "b"], np.array([0.1, 0.2]), how="argmax",
                            answer_fn=tasks.parse_answer, rng=rng)[:2] == (1, None)
    assert selection.last_line("1+1=2\nA 2\n\n") == "A 2"
    with pytest.raises(ValueError, match="selection"):
        selection.choose(traces, weights, how="best", answer_fn=tasks.parse_answer, rng=rng)


def _population(scores, finished):
    scores = np.asarray(scores, np.float32)
    groups, n = scores.shape
    batch = groups * n
    return P.Population(
        lm=None, reward=None, tokens=jnp.zeros((batch, 4), jnp.int32),
        length=jnp.zeros(batch, jnp.int32), step_lengths=jnp.zeros((batch, 2), jnp.int32),
        num_steps=jnp.zeros(batch, jnp.int32), num_scored=jnp.zeros(batch, jnp.int32),
        score=jnp.asarray(scores.reshape(-1)),
        finished=jnp.asarray(np.asarray(finished).reshape(-1)),
        log_weights=jnp.zeros((groups, n)), log_evidence=jnp.zeros(groups),
    )


def test_beam_selection_keeps_the_best_and_expands_each():
    keys = jax.random.split(jax.random.key(0), 2)
    pop = _population([[0.1, 0.9, 0.5, 0.7, 0.2, 0.3, 0.8, 0.4],
                       [0.9, 0.1, 0.2, 0.3, 0.95, 0.4, 0.5, 0.6]],
                      [[False] * 8, [True, False, False, False, False, False, True, False]])
    decision = baselines._select_beams(keys, pop, 4)
    anc = np.asarray(decision.ancestors)
    # Group 0: 8 active, keep the best 2 (slots 1 and 6), 4 copies each.
    assert sorted(anc[0].tolist()) == [1, 1, 1, 1, 6, 6, 6, 6]
    # Group 1: slots 0 and 6 finished stay; 6 active keep the best 1 (slot 4, 0.95).
    assert anc[1, 0] == 0 and anc[1, 6] == 6
    assert set(anc[1, [1, 2, 3, 4, 5, 7]].tolist()) == {4}


def _testbed_prompts(seed, difficulty, count):
    rng = np.random.default_rng(seed)
    problems = [tasks.generate(rng, difficulty) for _ in range(count)]
    return problems, [p.prompt for p in problems]


def test_reorder_then_step_equals_step_then_reorder(testbed, host_oracle):
    """Resampling keeps the KV cache, the reward state and the text aligned (greedy steps,
    so that the draws do not depend on the slot)."""
    model, _ = testbed
    from ppl.models import lm
    from ppl.models.lm.testbed import prm

    # The learned PRM: a reward with a KV cache of its own to keep aligned.
    checkpoints = Path(lm.__file__).parent / "checkpoints"
    reward = prm.load(checkpoints / "arith_prm").reward_model()
    problems, prompts = _testbed_prompts(1, 4, 2)
    settings = P.Settings(num_particles=3, temperature=0.0, stop_ids=(data.NEWLINE_ID,),
                          end_ids=(data.EOS_ID,), max_step_tokens=16, max_steps=12)
    ids = np.zeros((2, 32), np.int32)
    for g, prompt in enumerate(prompts):
        ids[g, : len(prompt)] = data.encode(prompt)
    lengths = np.array([len(p) for p in prompts], np.int32)
    context = reward.prepare(prompts)
    start = P.init_jit(model, reward, jnp.asarray(ids), jnp.asarray(lengths), context, 128,
                       settings)
    keys = jax.random.split(jax.random.key(0), 6)
    pop = start
    for step in range(2):
        pop, _ = P.advance_jit((keys, model, reward, None, jnp.int32(step)), pop, settings)
    ancestors = jnp.array([2, 2, 0, 4, 3, 3], jnp.int32)
    log_w = jnp.zeros((2, 3))
    copy = jax.tree.map(jnp.copy, pop)
    first, _ = P.advance_jit((keys, model, reward, None, jnp.int32(2)),
                             P.reorder_jit((model, reward, ancestors, log_w), copy), settings)
    second, _ = P.advance_jit((keys, model, reward, None, jnp.int32(2)), pop, settings)
    second = P.reorder_jit((model, reward, ancestors, log_w), second)
    for name in ("tokens", "length", "num_steps", "score", "finished", "step_lengths"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name), err_msg=name)
    np.testing.assert_array_equal(first.lm.lengths, second.lm.lengths)
    np.testing.assert_allclose(first.lm.last_log_probs, second.lm.last_log_probs, atol=1e-5)
    np.testing.assert_allclose(first.reward.score, second.reward.score, atol=1e-6)


def test_grouped_batch_equals_one_problem_at_a_time(testbed, host_oracle):
    model, tokenizer = testbed
    problems, prompts = _testbed_prompts(2, 5, 3)
    kwargs = dict(key=jax.random.key(5), reward=host_oracle(problems), num_particles=4,
                  answer_fn=tasks.parse_answer, potential="increment")
    together = llm.run("particle_filter", model, tokenizer, prompts, batch_size=12, **kwargs)
    alone = llm.run("particle_filter", model, tokenizer, prompts, batch_size=4, **kwargs)
    assert together.candidates == alone.candidates
    np.testing.assert_allclose(together.weights, alone.weights, atol=1e-6)
    np.testing.assert_allclose(together.log_evidence, alone.log_evidence, atol=1e-5)
    np.testing.assert_array_equal(together.tokens, alone.tokens)


def test_the_filter_step_compiles_once_across_difficulties_seeds_and_batches(testbed):
    model, tokenizer = testbed
    before = dict(P.TRACE_COUNTS)
    for seed, difficulty in ((0, 3), (1, 6), (2, 8)):
        problems, prompts = _testbed_prompts(seed, difficulty, 5)
        llm.run("self_consistency", model, tokenizer, prompts, key=jax.random.key(seed),
                num_particles=4, batch_size=8, answer_fn=tasks.parse_answer)
    traced = {k: v - before.get(k, 0) for k, v in P.TRACE_COUNTS.items()}
    assert traced.get("advance", 0) <= 1, traced


def test_budgets_count_every_sampled_token(testbed, host_oracle):
    model, tokenizer = testbed
    problems, prompts = _testbed_prompts(3, 4, 4)
    reward = host_oracle(problems)
    independent = llm.run("best_of_n", model, tokenizer, prompts, key=jax.random.key(0),
                          reward=reward, num_particles=4, answer_fn=tasks.parse_answer)
    for g in range(4):
        # Each trace's text plus its end token (every trace here ends with one).
        assert independent.tokens[g] == sum(len(t) + 1 for t in independent.candidates[g])
        assert independent.reward_calls[g] == sum(t.count("\n") for t in
                                                  independent.candidates[g])
        assert independent.reward_calls[g] == independent.candidate_reward_calls[g].sum()
        assert independent.tokens[g] == independent.candidate_tokens[g].sum()
    filtered = llm.run("particle_filter", model, tokenizer, prompts, key=jax.random.key(0),
                       reward=reward, num_particles=4, answer_fn=tasks.parse_answer)
    for g in range(4):
        assert filtered.tokens[g] >= sum(len(t) + 1 for t in filtered.candidates[g])


def test_finished_particles_are_absorbing(testbed):
    """A finished trace keeps its slot, its tokens, its score and its weight relative to the
    group's other finished traces: never moved, re-weighted, copied or dropped."""
    model, _ = testbed
    _, prompts = _testbed_prompts(4, 3, 2)
    settings = P.Settings(num_particles=8, temperature=1.5, stop_ids=(data.NEWLINE_ID,),
                          end_ids=(data.EOS_ID,), max_step_tokens=6, max_steps=12,
                          potential="increment")
    ids = np.zeros((2, 32), np.int32)
    for g, prompt in enumerate(prompts):
        ids[g, : len(prompt)] = data.encode(prompt)
    lengths = np.array([len(p) for p in prompts], np.int32)
    pop = P.init_jit(model, None, jnp.asarray(ids), jnp.asarray(lengths), None, 128, settings)
    frozen = {}
    for step in range(12):
        keys = jax.random.split(jax.random.key(step), 16)
        if step:
            # Weights from lengths, so that resampling happens and prefers some rows.
            log_w = -0.3 * pop.length.reshape(2, 8).astype(jnp.float32)
            decision = jax.tree.map(np.asarray, P.resample_jit(
                keys[:2], log_w, ~pop.finished.reshape(2, 8), ("systematic", 1.0, False)))
            ancestors = jnp.asarray(decision.ancestors.reshape(-1) + np.repeat([0, 8], 8))
            pop = P.reorder_jit((model, None, ancestors, jnp.asarray(decision.log_weights)), pop)
        pop, _ = P.advance_jit((keys, model, None, None, jnp.int32(step)), pop, settings)
        host = jax.device_get(pop)
        for row in np.flatnonzero(host.finished):
            record = (host.tokens[row].tolist(), int(host.length[row]), float(host.score[row]))
            frozen.setdefault(row, record)
            assert frozen[row] == record, (step, row)
    assert len(frozen) > 4  # rows did finish along the way (runaways at 6 tokens included)
