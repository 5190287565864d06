"""The learned twist: rollout labels, the checkpoint tied to its language model, and a value
estimate that beats the PRM's score used as a twist on held-out rollouts."""

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from ppl.models.lm.testbed import data, prm, tasks, train_prm, twist

CHECKPOINTS = Path(__file__).resolve().parents[3] / "models" / "lm" / "checkpoints"


def test_rollout_labels_are_the_trace_outcome_at_every_trace_token():
    problem = tasks.Problem(2, (("+", 3), ("*", 2)))
    right = train_prm.reference_ids(problem)
    wrong = data.encode("2+3=5\n5*2=11\nA 11\n") + [data.EOS_ID]
    prompt = len(data.encode(problem.prompt))
    for trace, outcome in ((right, 1), (wrong, 0), (right[:-1], 0)):  # no <eos>: unfinished
        ids, labels, targets = twist.rollout_example(problem, trace)
        assert ids == data.encode(problem.prompt) + trace
        assert labels == [-1] * prompt + [outcome] * len(trace)
        assert targets == [-1] * len(ids)


def test_the_checkpoint_is_tied_to_its_language_model(tmp_path):
    shipped = twist.load(CHECKPOINTS / "arith_twist", lm_directory=CHECKPOINTS / "arith")
    assert shipped.language_model == "arith"
    assert shipped.lm_fingerprint == twist.fingerprint(CHECKPOINTS / "arith")
    # Another language model (other weights) is refused, naming both.
    other = tmp_path / "other_lm"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"not the same weights")
    with pytest.raises(ValueError, match=r"trained for the language model 'arith'.*other_lm"):
        twist.load(CHECKPOINTS / "arith_twist", lm_directory=other)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        twist.load(CHECKPOINTS / "arith_twist", lm_directory=tmp_path)
    # A PRM checkpoint is not a twist.
    with pytest.raises(ValueError, match="holds no twist"):
        twist.load(CHECKPOINTS / "arith_prm")
    # Save and load keep the model and the tie.
    twist.save(shipped, tmp_path / "copy")
    again = twist.load(tmp_path / "copy", lm_directory=CHECKPOINTS / "arith")
    ids = np.asarray([data.encode("Q 2 +3\n2+3=5\n")])
    np.testing.assert_allclose(again.model.logits(ids), shipped.model.logits(ids), atol=1e-3)
    shutil.rmtree(tmp_path / "copy")


@pytest.mark.slow
def test_the_twist_estimates_the_value_better_than_the_prm():
    """Held-out rollouts at temperature 1: the outcome's log loss at each newline under the
    twist is below the PRM's (which scores whether the prefix is right, not whether the rest
    will be) and below the best constant per (difficulty, depth) fitted on the same rollouts."""
    from ppl.models.lm import loading
    from ppl.models.lm.adapter import TransformerTokenModel

    token_model = TransformerTokenModel(loading.load_transformer(CHECKPOINTS / "arith"),
                                        end_ids=(data.EOS_ID,))
    learned = twist.load(CHECKPOINTS / "arith_twist").model
    problems, traces = twist._rollouts(token_model, 70_000, 32, jax.random.key(5))
    quality = twist.evaluate(learned, prm.load(CHECKPOINTS / "arith_prm"), problems, traces)
    assert quality["num_step_ends"] > 800
    assert quality["log_loss_twist"] < 0.8 * quality["log_loss_prm_as_twist"], quality
    assert quality["log_loss_twist"] < quality["log_loss_constant_per_depth"], quality
