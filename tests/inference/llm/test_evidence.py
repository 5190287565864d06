"""Bidirectional evidence bounds with the exact checker on the testbed.

log Z = log P_LM(the reference solution) is known by teacher forcing (test_closed_forms);
plain SMC's estimate is unbiased on the exp scale, E log Z_SMC <= log Z <= E log Z_CSMC, and
a twist (here the exact prefix check) narrows the gap.
"""

import jax
import numpy as np
import pytest
from ppl.inference.llm import evidence
from ppl.models.lm.testbed import prm, tasks
from ppl.models.lm.testbed.evaluate import reference_step_probabilities

RUNS = 24


@pytest.fixture(scope="module")
def setting(testbed):
    model, tokenizer = testbed
    rng = np.random.default_rng(8)
    problems = [tasks.generate(rng, 5) for _ in range(2)]
    prompts = [p.prompt for p in problems]
    log_z = np.array([np.log(np.prod(reference_step_probabilities(model, p, 1.0)))
                      for p in problems])
    samples, tries = evidence.rejection_samples(
        model, tokenizer, prompts, lambda i, text: text == problems[i].solution(),
        key=jax.random.key(1), num_samples=6, max_tries=256)
    return problems, prompts, log_z, samples


def _bounds(testbed, setting, method, twist, n):
    model, tokenizer = testbed
    _, prompts, _, samples = setting
    return evidence.evidence_bounds(method, model, tokenizer, prompts, key=jax.random.key(2),
                                    final=prm.OracleReward(), twist=twist, exact_samples=samples,
                                    num_particles=n, num_runs=RUNS, ess_threshold=1.0)


@pytest.mark.slow
def test_bounds_sandwich_log_z_and_the_twist_narrows_them(testbed, setting):
    problems, _, log_z, samples = setting
    assert all(len(s) == 6 for s in samples)
    gaps, gap_se = {}, {}
    for method, twist in (("smc", None), ("twisted_smc", prm.OracleReward())):
        result = _bounds(testbed, setting, method, twist, 8)
        # Unbiased on the exp scale: the mean of Z_SMC is Z.
        z_hat = np.exp(result.lower_runs)
        se = z_hat.std(1, ddof=1) / np.sqrt(RUNS)
        assert np.all(np.abs(z_hat.mean(1) - np.exp(log_z)) < 4 * se + 1e-9), (z_hat.mean(1),)
        finite = np.isfinite(result.lower_runs).all(1)
        lower_se = np.array([runs.std(ddof=1) / np.sqrt(RUNS) if ok else np.inf
                             for runs, ok in zip(result.lower_runs, finite, strict=True)])
        upper_se = np.array([u.std(ddof=1) / np.sqrt(u.size) for u in result.upper_runs])
        assert np.all(result.log_z_lower <= log_z + 2 * lower_se)
        assert np.all(result.log_z_upper >= log_z - 2 * upper_se - 1e-6)
        # A run that found no correct trace makes the lower bound, and the gap, infinite.
        gaps[method] = result.log_z_upper - result.log_z_lower
        gap_se[method] = np.hypot(lower_se, upper_se)
    # The twist narrows the gap: never wider beyond Monte Carlo error, narrower on average.
    slack = 2 * np.hypot(gap_se["smc"], gap_se["twisted_smc"])
    assert np.all(gaps["twisted_smc"] <= gaps["smc"] + slack), gaps
    assert np.mean(gaps["twisted_smc"]) < np.mean(gaps["smc"]), gaps


def test_missing_exact_samples_and_bad_settings_are_said(testbed, setting):
    model, tokenizer = testbed
    _, prompts, _, _ = setting
    result = evidence.evidence_bounds("smc", model, tokenizer, prompts[:1], key=0,
                                      final=prm.OracleReward(), exact_samples=[[]],
                                      num_particles=2, num_runs=2)
    assert np.isnan(result.log_z_upper[0]) and "no exact sample" in result.notes[0]
    assert result.records()[0]["log_z_upper"] is None
    with pytest.raises(ValueError, match="twist for method 'twisted_smc'"):
        evidence.evidence_bounds("twisted_smc", model, tokenizer, prompts, key=0,
                                 final=prm.OracleReward())
    with pytest.raises(ValueError, match="method one of smc, twisted_smc"):
        evidence.evidence_bounds("is", model, tokenizer, prompts, key=0, final=prm.OracleReward())
    with pytest.raises(ValueError, match="num_particles >= 2 for the upper bound"):
        evidence.evidence_bounds("smc", model, tokenizer, prompts[:1], key=0,
                                 final=prm.OracleReward(), exact_samples=[["x"]],
                                 num_particles=1, num_runs=1)


def test_token_level_proposal_with_the_exact_twist_gives_the_exact_evidence(testbed, setting):
    """With the prefix check as the twist, the twisted proposal puts all its mass on the
    reference's next token and the weight is that token's probability: every run's log Z
    is the teacher-forced log P_LM(reference), without Monte Carlo error, at any N."""
    from ppl.inference.llm.twisted import token_twisted_smc

    from ppl.reward_model import FinalCheck

    model, tokenizer = testbed
    _, prompts, log_z, _ = setting
    reward = FinalCheck(prm.OracleReward(), prm.OracleReward(), tuple(model.end_ids))
    for n in (1, 3):
        estimates = token_twisted_smc(model, tokenizer, prompts, key=jax.random.key(n),
                                      reward=reward, num_particles=n)
        np.testing.assert_allclose(estimates, log_z, atol=2e-3)
    # Without a twist the same proposal only removes the final check's zeros: an estimate
    # with error, not the exact value (negative control).
    plain = FinalCheck(None, prm.OracleReward(), tuple(model.end_ids))
    estimates = token_twisted_smc(model, tokenizer, prompts, key=jax.random.key(3), reward=plain,
                                  num_particles=3)
    assert not np.allclose(estimates, log_z, atol=2e-3)


def test_oracle_next_scores_agree_with_extend(testbed):
    from ppl.models.lm.testbed import data

    oracle = prm.OracleReward()
    prompt = "Q 2 +3\n"
    context = oracle.prepare([prompt, prompt])
    ids = jax.numpy.asarray([data.encode(prompt)] * 2)
    state = oracle.init_state(ids, jax.numpy.asarray([7, 7]), 32, context)
    state = oracle.extend(state, jax.numpy.asarray([data.encode("2+"), data.encode("2-")]),
                          jax.numpy.asarray([2, 2]))
    scores = np.asarray(oracle.next_scores(state))
    for v in range(len(data.VOCAB)):
        after = oracle.extend(state, jax.numpy.full((2, 1), v), jax.numpy.asarray([1, 1]))
        np.testing.assert_array_equal(scores[:, v], np.asarray(after.score))
    assert scores[0].sum() == 1 and scores[1].sum() == 0


def test_token_proposal_needs_next_scores(testbed):
    from ppl.inference import llm
    from ppl.models.lm import qwen2
    from ppl.models.lm.reward import TransformerRewardModel

    model, tokenizer = testbed
    config = qwen2.Qwen2Config(vocab_size=20, hidden_size=16, intermediate_size=32,
                               num_hidden_layers=1, num_attention_heads=2,
                               num_key_value_heads=1, head_dim=8)
    learned = TransformerRewardModel(qwen2.init(jax.random.key(0), config),
                                     jax.numpy.zeros(16), jax.numpy.zeros(()))
    with pytest.raises(ValueError, match="twist with next_scores.*TransformerRewardModel"):
        llm.run("twisted_smc", model, tokenizer, ["Q 2 +3\n"], key=0, reward=learned,
                final=prm.OracleReward(), proposal="token", num_particles=2)
