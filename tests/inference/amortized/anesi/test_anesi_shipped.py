"""The shipped checkpoints (``models/amortized/anesi/n<N>``) against the issue's targets on
fresh test examples: sum accuracy within 2 points of ``p^(2N)`` for N = 1, 2, 4 and above
``0.8 p^(2N)`` at N = 15, where ``p`` is the single-digit test accuracy of the same perception
network trained with digit labels; every predicted sum a possible output; the explanation
adds up to the sum. Tolerances are 3 binomial standard errors of the measured accuracy."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from ppl.inference.amortized.anesi import Addition, load_pretrained, predict
from ppl.inference.amortized.anesi.cli import main
from ppl.inference.amortized.anesi.data import load_split, sample_examples
from ppl.inference.amortized.anesi.perception import train_supervised
from ppl.inference.amortized.anesi.train import checkpoint_path

SHIPPED = (1, 2, 4, 15)
NUM_EXAMPLES = 2000


@pytest.fixture(scope="module")
def p():
    return train_supervised(jax.random.key(0))[1]


@pytest.mark.parametrize("n", SHIPPED)
def test_shipped_checkpoint_meets_its_target(n, p):
    model = load_pretrained(n)
    assert model.program == Addition(n)
    examples = sample_examples(jax.random.key(11), load_split("test"), model.program,
                               NUM_EXAMPLES)
    images = np.asarray(examples.images)
    result = predict(model, images[:, :n], images[:, n:])
    truth = [int("".join(map(str, row))) for row in np.asarray(examples.outputs)]
    right = np.array([int(s) == t for s, t in zip(result.sums, truth, strict=True)])
    accuracy = right.mean()
    se = np.sqrt(max(accuracy * (1 - accuracy), 1e-3) / NUM_EXAMPLES)
    ceiling = p ** (2 * n)
    target = ceiling - 0.02 if n <= 4 else 0.8 * ceiling
    assert accuracy > target - 3 * se, (n, accuracy, ceiling)
    # pruning: every predicted sum is one the program can produce (Python integers)
    assert all(0 <= int(s) <= 2 * (10 ** n - 1) for s in result.sums)
    if result.explanation_a is not None:
        as_int = [int("".join(map(str, row))) for row in np.concatenate(
            [result.explanation_a, result.explanation_b], axis=0)]
        a, b = as_int[:NUM_EXAMPLES], as_int[NUM_EXAMPLES:]
        assert all(x + y == int(s) for x, y, s in zip(a, b, result.sums, strict=True))


def test_load_pretrained_refuses_an_unshipped_n():
    with pytest.raises(ValueError, match=r"no shipped A-NeSI checkpoint for num_digits=3 "
                                         r"\(shipped: \[1, 2, 4, 15\]\)"):
        load_pretrained(3)
    assert checkpoint_path(2).name == "n2"


def test_cli_eval_of_a_shipped_checkpoint(capsys):
    assert main(["eval", "--digits", "1", "--num-examples", "300"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["program"] == "addition(num_digits=1)" and out["output_accuracy"] > 0.75
    assert main(["eval"]) == 2
    assert "give a checkpoint folder or --digits N" in capsys.readouterr().err
