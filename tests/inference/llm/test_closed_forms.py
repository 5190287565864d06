"""The filter and best-of-N against closed forms, with the exact oracle on the testbed.

Let ``q_t`` be the language model's probability (at the sampling temperature) of the
reference step ``t`` after the reference prefix, by teacher forcing. With the oracle
(weight 1 while every line is right, 0 after) and resampling at every step, all survivors
share the reference prefix, so the filter succeeds with probability
``prod_t [1 - (1 - q_t)^N]``, its evidence estimate is ``prod_t k_t / N`` with expectation
``prod_t q_t``, and best-of-N with the exact checker succeeds with probability
``1 - (1 - prod_t q_t)^N``. Rates are compared in units of their binomial standard error,
at fixed seeds; the filter without resampling is the negative control.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.inference import llm
from ppl.models.lm.testbed import data, tasks
from ppl.models.lm.testbed.evaluate import reference_step_probabilities

TEMPERATURE = 1.0
NUM_COPIES = 150
Z_LIMIT = 4.0


def _z(successes, total, p):
    return (successes - total * p) / np.sqrt(total * p * (1 - p))


@pytest.fixture(scope="module")
def problems_and_q(testbed):
    model, _ = testbed
    rng = np.random.default_rng(7)
    problems = [tasks.generate(rng, 6) for _ in range(2)]
    return problems, [reference_step_probabilities(model, p, TEMPERATURE) for p in problems]


def _run(testbed, host_oracle, method, problem, num_particles, seed, **settings):
    model, tokenizer = testbed
    return llm.run(
        method, model, tokenizer, [problem.prompt] * NUM_COPIES, key=jax.random.key(seed),
        reward=host_oracle([problem]), num_particles=num_particles, temperature=TEMPERATURE,
        answer_fn=tasks.parse_answer, score_clip=0.0, allow_collapse=True, **settings,
    )


def test_step_probabilities_multiply_to_the_trace_probability(testbed, problems_and_q):
    model, _ = testbed
    problem, q = problems_and_q[0][0], problems_and_q[1][0]
    ids = data.encode(problem.prompt + problem.solution()) + [data.EOS_ID]
    log_probs = np.asarray(model.log_probs(jnp.asarray([ids])))[0]
    start = len(data.encode(problem.prompt))
    total = sum(log_probs[i - 1, ids[i]] for i in range(start, len(ids)))
    assert np.isclose(np.sum(np.log(q)), total, atol=1e-3)
    assert 0.02 < np.prod(q) < 0.9  # informative: neither certain nor hopeless


@pytest.mark.slow
def test_particle_filter_success_and_evidence_match_closed_forms(
    testbed, host_oracle, problems_and_q
):
    num_particles = 4
    for index, (problem, q) in enumerate(zip(*problems_and_q, strict=True)):
        result = _run(testbed, host_oracle, "particle_filter", problem, num_particles, index,
                      potential="increment", ess_threshold=1.0)
        successes = sum(a == problem.answer for a in result.answers)
        p = np.prod(1 - (1 - q) ** num_particles)
        assert abs(_z(successes, NUM_COPIES, p)) < Z_LIMIT, (successes, p)
        # Evidence: E[prod_t k_t / N] = prod_t q_t.
        z_hat = np.exp(result.log_evidence)
        se = z_hat.std(ddof=1) / np.sqrt(NUM_COPIES)
        assert abs(z_hat.mean() - np.prod(q)) < Z_LIMIT * se, (z_hat.mean(), np.prod(q), se)
        # A chosen trace with the right answer is the reference solution itself.
        chosen = zip(result.traces, result.answers, strict=True)
        assert all(tasks.is_correct(problem, t) for t, a in chosen if a == problem.answer)
        # Negative control: without resampling the same formula is rejected.
        independent = _run(testbed, host_oracle, "particle_filter", problem, num_particles,
                           index, potential="increment", ess_threshold=0.0)
        control = sum(a == problem.answer for a in independent.answers)
        assert abs(_z(control, NUM_COPIES, p)) > Z_LIMIT, (control, p)


@pytest.mark.slow
def test_best_of_n_with_the_exact_checker_matches_its_closed_form(
    testbed, host_oracle, problems_and_q
):
    num_particles = 4
    for index, (problem, q) in enumerate(zip(*problems_and_q, strict=True)):
        result = _run(testbed, host_oracle, "best_of_n", problem, num_particles, 10 + index)
        successes = sum(a == problem.answer for a in result.answers)
        p = 1 - (1 - np.prod(q)) ** num_particles
        assert abs(_z(successes, NUM_COPIES, p)) < Z_LIMIT, (successes, p)


@pytest.mark.slow
def test_entropic_annealing_keeps_the_evidence_unbiased(testbed, host_oracle, problems_and_q):
    """Resampling by flattened weights (target ESS 0.9) with the w / v correction keeps
    E[Z_hat] = Z. With scores clipped to [c, 1 - c] the oracle's final score is 1 - c on the
    reference solution and c elsewhere, so Z = (prod q + c (1 - prod q)) / (1 - c) (the
    initial score, 1, is clipped too)."""
    problem, q = problems_and_q[0][0], problems_and_q[1][0]
    clip = 0.05
    model, tokenizer = testbed
    result = llm.run(
        "entropic_particle_filter", model, tokenizer, [problem.prompt] * NUM_COPIES,
        key=jax.random.key(3), reward=host_oracle([problem]), num_particles=4,
        temperature=TEMPERATURE, answer_fn=tasks.parse_answer, score_clip=clip,
        potential="increment", ess_threshold=1.0, target_ess=0.9,
    )
    truth = (np.prod(q) * (1 - clip) + clip * (1 - np.prod(q))) / (1 - clip)
    z_hat = np.exp(result.log_evidence)
    se = z_hat.std(ddof=1) / np.sqrt(NUM_COPIES)
    assert abs(z_hat.mean() - truth) < Z_LIMIT * se, (z_hat.mean(), truth, se)
    exponents = np.concatenate([np.ravel(e["annealing_exponent"]) for e in result.extra])
    assert np.all((exponents > 0) & (exponents <= 1)) and np.any(exponents < 1)
