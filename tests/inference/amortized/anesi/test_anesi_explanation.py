"""The explanation model q(w | y, P): exact pruning (every explanation satisfies c(w) = y),
normalised over the consistent assignments, refusal of other programs; its agreement with the
exact most likely explanation after training is in test_anesi_train.py."""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.inference.amortized.anesi.explanation import (
    ExplanationModel,
    explain,
    explanation_log_prob,
    explanation_masks,
)
from ppl.inference.amortized.anesi.programs import Addition, SumOfDigits


@pytest.mark.parametrize("num_digits", [1, 2])
def test_pruning_is_exact(num_digits):
    program = Addition(num_digits)
    symbols = np.array(list(itertools.product(range(10), repeat=2 * num_digits)))
    outputs = np.asarray(program(jnp.asarray(symbols)))
    for j in range(2 * num_digits):
        masks = np.asarray(explanation_masks(program, jnp.asarray(outputs),
                                             jnp.asarray(symbols), j))
        continuations = {}
        for y, w in zip(map(tuple, outputs), map(tuple, symbols), strict=True):
            continuations.setdefault((y, w[:j]), set()).add(w[j])
        for y, w, mask in zip(map(tuple, outputs), map(tuple, symbols), masks, strict=True):
            assert set(np.flatnonzero(mask).tolist()) == continuations[(y, w[:j])], (y, w, j)


def test_explanations_satisfy_the_sum_and_are_normalised():
    program = Addition(4)
    model = ExplanationModel(jax.random.key(0), program=program, width=16)
    rng = np.random.default_rng(0)
    symbols = jnp.asarray(rng.integers(0, 10, size=(64, 8)))
    outputs = program(symbols)
    p = jax.random.dirichlet(jax.random.key(1), jnp.full(10, 0.3), (64, 8))
    found, log_q = eqx.filter_jit(explain)(model, program, p, outputs)
    np.testing.assert_array_equal(program(found), outputs)
    log_prob_fn = eqx.filter_jit(explanation_log_prob)
    np.testing.assert_allclose(log_q, log_prob_fn(model, program, p, outputs, found),
                               rtol=1e-5, atol=1e-5)

    one = Addition(1)
    small = ExplanationModel(jax.random.key(2), program=one, width=16)
    every = jnp.array(list(itertools.product(range(10), repeat=2)))
    p1 = jnp.broadcast_to(jax.random.dirichlet(jax.random.key(3), jnp.ones(10), (2,)),
                          (100, 2, 10))
    for total in (0, 9, 17):
        y = jnp.broadcast_to(jnp.array([total // 10, total % 10]), (100, 2))
        q = np.exp(np.asarray(log_prob_fn(small, one, p1, y, every)))
        consistent = np.asarray(every.sum(axis=1) == total)
        np.testing.assert_allclose(q.sum(), 1.0, rtol=1e-5)
        assert np.all(q[~consistent] == 0.0) and np.all(q[consistent] > 0.0)


def test_refuses_other_programs():
    with pytest.raises(ValueError, match=r"implemented for addition only, got "
                                         r"sum_of_digits\(num_inputs=3\)"):
        ExplanationModel(jax.random.key(0), program=SumOfDigits(3))
    model = ExplanationModel(jax.random.key(0), program=Addition(1), width=8)
    with pytest.raises(ValueError, match=r"addition\(num_digits=2\) does not match the "
                                         r"explanation model built for addition\(num_digits=1\)"):
        explain(model, Addition(2), jnp.full((1, 4, 10), 0.1), jnp.zeros((1, 3), int))
