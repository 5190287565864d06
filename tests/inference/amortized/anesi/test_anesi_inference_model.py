"""The inference model q(y | P): normalised over the whole output space, zero on outputs the
program cannot produce, decoders that agree with log_prob, refusal of another program."""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.inference.amortized.anesi.inference_model import (
    InferenceModel,
    beam_search,
    check_program,
    greedy,
    log_prob,
    sample,
)
from ppl.inference.amortized.anesi.programs import Addition, SumOfDigits, digits_to_int


def _beliefs(key, program, batch, alpha=0.5):
    return jax.random.dirichlet(key, jnp.full(10, alpha), (batch, program.num_inputs))


def _all_outputs(program):
    return jnp.array(list(itertools.product(*[range(s) for s in program.output_sizes])))


@pytest.mark.parametrize("program", [Addition(1), Addition(2), SumOfDigits(3)],
                         ids=lambda p: p.describe())
def test_normalised_and_zero_on_impossible_outputs(program):
    model = InferenceModel(jax.random.key(0), program=program, width=32)
    outputs = _all_outputs(program)  # the whole output space, sizes included
    beliefs = _beliefs(jax.random.key(1), program, 4)

    def q_all(p):
        return jnp.exp(log_prob(model, program, jnp.broadcast_to(p, (len(outputs), *p.shape)),
                                outputs))

    q = np.asarray(jax.jit(jax.vmap(q_all))(beliefs))
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-5)
    largest = {"addition": 2 * 10 ** getattr(program, "num_digits", 0) - 2,
               "sum_of_digits": 9 * program.num_inputs}[program.name]
    impossible = np.array([digits_to_int(o) > largest for o in np.asarray(outputs)])
    assert impossible.any()
    assert np.all(q[:, impossible] == 0.0)
    assert np.all(q[:, ~impossible] > 0.0)


def test_decoders_stay_in_the_output_space_and_agree_with_log_prob():
    program = Addition(2)
    model = InferenceModel(jax.random.key(0), program=program, width=32)
    beliefs = _beliefs(jax.random.key(1), program, 256, alpha=0.05)
    decoded = (eqx.filter_jit(greedy)(model, program, beliefs),
               eqx.filter_jit(sample)(jax.random.key(2), model, program, beliefs))
    for outputs, log_q in decoded:
        assert max(digits_to_int(o) for o in np.asarray(outputs)) <= 198
        np.testing.assert_allclose(log_q, log_prob(model, program, beliefs, outputs),
                                   rtol=1e-5, atol=1e-5)


def test_full_beam_finds_the_most_likely_output():
    program = Addition(1)
    model = InferenceModel(jax.random.key(0), program=program, width=32)
    beliefs = _beliefs(jax.random.key(1), program, 8)
    outputs = _all_outputs(program)
    scores = jax.jit(jax.vmap(lambda p: log_prob(
        model, program, jnp.broadcast_to(p, (20, 2, 10)), outputs)))(beliefs)
    best = outputs[jnp.argmax(scores, axis=1)]
    found, scores = eqx.filter_jit(beam_search)(model, program, beliefs, beam_width=20)
    np.testing.assert_array_equal(found[:, 0], best)
    assert np.all(np.diff(np.asarray(scores), axis=1) <= 0)  # best first
    assert np.all(np.isneginf(np.asarray(scores)[:, 19]))  # only 19 sums exist


def test_refuses_another_program_and_bad_beliefs():
    model = InferenceModel(jax.random.key(0), program=Addition(1), width=8)
    check_program(model, Addition(1))
    with pytest.raises(ValueError, match=r"program addition\(num_digits=2\) does not match "
                                         r"the inference model built for addition\(num_digits=1\)"):
        check_program(model, Addition(2))
    with pytest.raises(ValueError, match=r"sum_of_digits\(num_inputs=3\) does not match"):
        greedy(model, SumOfDigits(3), jnp.full((1, 3, 10), 0.1))
    with pytest.raises(ValueError, match=r"beliefs: expected shape \(batch, 2, 10\)"):
        greedy(model, Addition(1), jnp.full((1, 3, 10), 0.1))
    with pytest.raises(ValueError, match=r"outputs: expected shape \(1, 2\)"):
        log_prob(model, Addition(1), jnp.full((1, 2, 10), 0.1), jnp.zeros((1, 3), int))
