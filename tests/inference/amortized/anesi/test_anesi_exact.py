"""The exact baseline against brute force, its refusal of large N, and exact training."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.inference.amortized.anesi.data import load_split, sample_examples
from ppl.inference.amortized.anesi.exact import (
    assignment_table,
    exact_log_prob,
    exact_log_prob_streamed,
    exact_output_distribution,
    train_exact,
)
from ppl.inference.amortized.anesi.perception import log_beliefs
from ppl.inference.amortized.anesi.programs import Addition, SumOfDigits


def test_exact_matches_brute_force_for_one_digit():
    program = Addition(1)
    beliefs = np.asarray(jax.random.dirichlet(jax.random.key(0), jnp.ones(10), (5, 2)),
                         np.float64)
    brute = np.zeros((5, 19))
    for a, b in itertools.product(range(10), repeat=2):
        brute[:, a + b] += beliefs[:, 0, a] * beliefs[:, 1, b]
    log_p = jnp.log(jnp.asarray(beliefs, jnp.float32))
    values, probabilities = exact_output_distribution(program, log_p)
    np.testing.assert_array_equal(values, np.arange(19))
    np.testing.assert_allclose(probabilities, brute, rtol=1e-5, atol=1e-7)
    sums = np.array([3, 0, 18, 9, 11])
    digits = jnp.array([[s // 10, s % 10] for s in sums])
    np.testing.assert_allclose(np.exp(exact_log_prob(program, log_p, digits)),
                               brute[np.arange(5), sums], rtol=1e-5)
    impossible = exact_log_prob(program, log_p, jnp.array([[1, 9]] * 5))
    assert np.all(np.isneginf(np.asarray(impossible)))


def test_table_sizes_and_refusal():
    table = assignment_table(Addition(2))
    assert table.assignments.shape == (10_000, 4) and len(table.values) == 199
    assert len(assignment_table(SumOfDigits(3)).values) == 28
    with pytest.raises(ValueError, match=r"addition\(num_digits=3\) needs 10\^6 = 1000000 "
                                         r"assignments, more than MAX_ASSIGNMENTS"):
        assignment_table(Addition(3))


def test_exact_training_beats_chance():
    program = Addition(1)
    result = train_exact(jax.random.key(0), program, steps=800)
    examples = sample_examples(jax.random.key(1), load_split("test"), program, 500)
    values, probabilities = exact_output_distribution(
        program, log_beliefs(result.perception, examples.images))
    predicted = values[np.argmax(np.asarray(probabilities), axis=1)]
    truth = np.asarray(examples.outputs) @ np.array([10, 1])
    assert np.mean(predicted == truth) > 0.7


@pytest.mark.parametrize("num_digits", [1, 2])
def test_streamed_enumeration_equals_the_table(num_digits):
    program = Addition(num_digits)
    key_p, key_w = jax.random.split(jax.random.key(num_digits))
    log_p = jax.nn.log_softmax(2.0 * jax.random.normal(key_p, (6, program.num_inputs, 10)))
    outputs = program(jax.random.randint(key_w, (6, program.num_inputs), 0, 10))
    # an odd chunk size, so that the last chunk is padded
    streamed = exact_log_prob_streamed(program, log_p, outputs, chunk_size=37)
    np.testing.assert_allclose(streamed, exact_log_prob(program, log_p, outputs), rtol=1e-5)
    grad = jax.grad(lambda x: exact_log_prob_streamed(program, x, outputs, chunk_size=37).sum())
    grad_table = jax.grad(lambda x: exact_log_prob(program, x, outputs).sum())
    np.testing.assert_allclose(grad(log_p), grad_table(log_p), atol=1e-5)
    with pytest.raises(ValueError, match=r"10\^10 = 10000000000 assignments, more than "
                                         r"MAX_STREAMED_ASSIGNMENTS"):
        exact_log_prob_streamed(Addition(5), jnp.zeros((1, 10, 10)), jnp.zeros((1, 6), int))
