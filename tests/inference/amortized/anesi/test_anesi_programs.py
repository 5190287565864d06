"""Background knowledge: the programs agree with integer arithmetic and their pruning is exact
(every digit some input can still produce is allowed, every other one is excluded)."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from ppl.inference.amortized.anesi.programs import (
    Addition,
    SumOfDigits,
    digits_to_int,
    int_to_digits,
    output_masks,
    program_from_json,
)


def _number(digits) -> int:
    return int("".join(map(str, digits)))


@pytest.mark.parametrize("num_digits", [1, 2, 4, 15])
def test_addition_agrees_with_integers(num_digits):
    rng = np.random.default_rng(num_digits)
    symbols = rng.integers(0, 10, size=(200, 2 * num_digits))
    symbols[0] = 9  # the largest sum, every column carries
    outputs = np.asarray(Addition(num_digits)(jnp.asarray(symbols)))
    assert outputs.shape == (200, num_digits + 1)
    for row, out in zip(symbols, outputs, strict=True):
        want = _number(row[:num_digits]) + _number(row[num_digits:])
        assert digits_to_int(out) == want


@pytest.mark.parametrize("num_inputs", [1, 3, 12])
def test_sum_of_digits_agrees_with_integers(num_inputs):
    rng = np.random.default_rng(num_inputs)
    symbols = rng.integers(0, 10, size=(200, num_inputs))
    program = SumOfDigits(num_inputs)
    outputs = np.asarray(program(jnp.asarray(symbols)))
    assert outputs.shape == (200, len(str(9 * num_inputs)))
    np.testing.assert_array_equal([digits_to_int(o) for o in outputs], symbols.sum(axis=1))


def _reachable(program):
    """Every output of ``program``, by enumerating its inputs (small programs only)."""
    inputs = np.array(list(itertools.product(range(10), repeat=program.num_inputs)))
    return np.unique(np.asarray(program(jnp.asarray(inputs))), axis=0)


@pytest.mark.parametrize("program", [Addition(1), Addition(2), Addition(3), SumOfDigits(1),
                                     SumOfDigits(2), SumOfDigits(3), SumOfDigits(4)],
                         ids=lambda p: p.describe())
def test_pruning_is_exact(program):
    reachable = _reachable(program)
    masks = np.asarray(output_masks(program, jnp.asarray(reachable)))
    order = program.decode_order
    assert sorted(order) == list(range(program.num_outputs))
    for rank, i in enumerate(order):
        before = list(order[:rank])  # the positions decoded before i
        continuations = {}
        for row in reachable:
            continuations.setdefault(tuple(row[before]), set()).add(int(row[i]))
        for row, mask in zip(reachable, masks[:, i], strict=True):
            allowed = set(np.flatnonzero(mask).tolist())
            assert allowed == continuations[tuple(row[before])], (program.describe(), row, i)
        # the sizes bound the first digit's support
        assert masks[:, i].sum(axis=-1).max() <= program.output_sizes[i]


@pytest.mark.parametrize("program", [Addition(15), SumOfDigits(30)], ids=lambda p: p.describe())
def test_pruning_never_excludes_the_true_output(program):
    symbols = np.random.default_rng(0).integers(0, 10, size=(500, program.num_inputs))
    symbols[0] = 9
    outputs = program(jnp.asarray(symbols))
    masks = output_masks(program, outputs)
    assert bool(jnp.all(jnp.take_along_axis(masks, outputs[..., None], -1)))


def test_addition_pruning_in_closed_form():
    # least significant first: every sum digit is free, the carry (decoded last) is 0 or 1
    assert Addition(3).decode_order == (3, 2, 1, 0)
    masks = np.asarray(output_masks(Addition(3), jnp.array([0, 9, 9, 8])))
    assert masks[1:].all()
    assert masks[0].tolist() == [True, True] + [False] * 8
    # after three nines the carry cannot be 1: 1999 > 999 + 999
    nines = np.asarray(output_masks(Addition(3), jnp.array([0, 9, 9, 9])))
    assert nines[0].tolist() == [True] + [False] * 9


def test_bad_settings_and_json_round_trip():
    with pytest.raises(ValueError, match="num_digits must be an integer >= 1"):
        Addition(0)
    with pytest.raises(ValueError, match="num_inputs must be an integer >= 1"):
        SumOfDigits(0)
    for program in (Addition(4), SumOfDigits(7)):
        assert program_from_json(program.to_json()) == program
    with pytest.raises(ValueError, match="unknown program 'multiplication'"):
        program_from_json({"name": "multiplication", "num_digits": 1})
    assert int_to_digits(7, 3) == [0, 0, 7]
    with pytest.raises(ValueError, match="does not have 2 decimal digits"):
        int_to_digits(123, 2)
