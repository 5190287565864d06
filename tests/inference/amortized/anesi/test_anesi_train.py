"""End to end at N = 1: A-NeSI learns to read digits from sums alone (clearly above chance on
the test split, with an untrained network as the negative control), ``q`` approximates the
exact weighted model count on the trained beliefs, checkpoints round-trip and refuse another
N or program, ``predict`` and the CLI."""

from __future__ import annotations

import dataclasses
import itertools
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.inference.amortized.anesi import (
    Addition,
    ANeSI,
    ExplanationModel,
    InferenceModel,
    PerceptionNetwork,
    SumOfDigits,
    TrainingSettings,
    evaluate,
    exact_output_distribution,
    explain,
    log_prob,
    predict,
    train,
)
from ppl.inference.amortized.anesi.cli import main
from ppl.inference.amortized.anesi.data import load_split, sample_examples

PROGRAM = Addition(1)


@pytest.fixture(scope="module")
def trained():
    return train(PROGRAM, settings=TrainingSettings(steps=1500, prior_steps=500, seed=0,
                                                    explanation_steps=1000))


def test_learns_from_sums_alone(trained):
    metrics = evaluate(trained, num_examples=1000)
    # chance: the most frequent sum (9) has probability 0.1
    assert metrics["output_accuracy"] > 0.7, metrics
    assert metrics["digit_accuracy"] > 0.85, metrics
    assert set(trained.record) >= {"joint_loss_perception", "wall_time_s"}


def test_untrained_network_is_near_chance():
    untrained = train(PROGRAM, settings=TrainingSettings(steps=0, prior_steps=0, seed=1,
                                                               explanation_steps=0))
    metrics = evaluate(untrained, num_examples=1000)
    assert metrics["output_accuracy"] < 0.2, metrics
    assert metrics["digit_accuracy"] < 0.3, metrics


def test_inference_model_approximates_the_exact_count(trained):
    examples = sample_examples(jax.random.key(5), load_split("test"), PROGRAM, 200)
    beliefs = trained.beliefs(np.asarray(examples.images))
    _, exact = exact_output_distribution(PROGRAM, jnp.log(beliefs))
    sums = jnp.arange(19)
    digits = jnp.stack([sums // 10, sums % 10], axis=1)
    q = jax.vmap(lambda p: jnp.exp(log_prob(trained.inference_model, PROGRAM,
                                            jnp.broadcast_to(p, (19, 2, 10)), digits)))(beliefs)
    total_variation = np.mean(0.5 * np.abs(np.asarray(q) - np.asarray(exact)).sum(axis=1))
    # negative control: an untrained inference model on the same beliefs
    fresh = InferenceModel(jax.random.key(9), program=PROGRAM)
    q_fresh = jax.vmap(lambda p: jnp.exp(log_prob(fresh, PROGRAM,
                                                  jnp.broadcast_to(p, (19, 2, 10)), digits)))(
        beliefs)
    control = np.mean(0.5 * np.abs(np.asarray(q_fresh) - np.asarray(exact)).sum(axis=1))
    assert total_variation < 0.15 and control > 0.5, (total_variation, control)


def test_checkpoint_round_trip_and_refusal(trained, tmp_path):
    trained.save(tmp_path)
    config = json.loads((tmp_path / "anesi.json").read_text())
    assert config["program"] == {"name": "addition", "num_digits": 1}
    assert config["num_digits"] == 1 and config["training"]["steps"] == 1500
    loaded = ANeSI.load(tmp_path, num_digits=1)
    images = np.asarray(sample_examples(jax.random.key(0), load_split("test"), PROGRAM,
                                        16).images)
    a, b = trained.predict_outputs(images), loaded.predict_outputs(images)
    np.testing.assert_array_equal(a.digits, b.digits)
    np.testing.assert_allclose(a.probability, b.probability, rtol=1e-6)
    assert config["explanation_model"] == {"width": 128, "depth": 2}
    np.testing.assert_array_equal(a.explanation, b.explanation)
    with pytest.raises(ValueError, match=r"trained for addition\(num_digits=1\), not "
                                         r"addition\(num_digits=2\)"):
        ANeSI.load(tmp_path, num_digits=2)
    with pytest.raises(ValueError, match=r"not sum_of_digits\(num_inputs=2\)"):
        ANeSI.load(tmp_path, program=SumOfDigits(2))
    with pytest.raises(ValueError, match="give program or num_digits, not both"):
        ANeSI.load(tmp_path, program=SumOfDigits(2), num_digits=1)
    (tmp_path / "anesi.json").write_text(json.dumps({**config, "format": "other/1"}))
    with pytest.raises(ValueError, match="format 'other/1'"):
        ANeSI.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not an A-NeSI checkpoint"):
        ANeSI.load(tmp_path / "missing")


def test_predict(trained):
    test = load_split("test")
    examples = sample_examples(jax.random.key(2), test, PROGRAM, 300)
    images = np.asarray(examples.images).reshape(300, 2, 8, 8)
    result = predict(trained, images[:, :1], images[:, 1:])
    truth = np.asarray(examples.symbols).sum(axis=1)
    assert result.sums.shape == (300,) and result.beliefs.shape == (300, 2, 10)
    np.testing.assert_array_equal(result.sums, result.digits @ np.array([10, 1]))
    # the explanation always adds up to the predicted sum
    np.testing.assert_array_equal(result.explanation_a[:, 0] + result.explanation_b[:, 0],
                                  result.sums)
    assert np.mean(np.concatenate([result.explanation_a, result.explanation_b], axis=1)
                   == np.asarray(examples.symbols)) > 0.85
    np.testing.assert_array_equal(result.alternatives[:, 0], result.sums)
    beam = predict(trained, images[:, :1], images[:, 1:], beam_width=3)
    assert beam.alternatives.shape == (300, 3)
    assert np.all(np.diff(beam.alternative_probabilities, axis=1) <= 1e-6)
    assert np.all(beam.alternative_probabilities.sum(axis=1) <= 1 + 1e-5)
    assert all(len(set(row)) == 3 for row in beam.alternatives)
    assert np.mean(result.sums == truth) > 0.7
    assert np.all((result.probability > 0) & (result.probability <= 1))
    with pytest.raises(ValueError, match=r"images_a: pixels look like raw load_digits"):
        predict(trained, images[:, :1] * 16, images[:, 1:])
    with pytest.raises(ValueError, match=r"images_b: expected leading shape \(300, 1\)"):
        predict(trained, images[:, :1], images[:10, 1:])
    with pytest.raises(ValueError, match=r"images_a: expected leading shape \('n', 1\)"):
        predict(trained, images, images)
    other = dataclasses.replace(
        trained, program=SumOfDigits(3), explanation=None,
        inference_model=InferenceModel(jax.random.key(0), program=SumOfDigits(3), width=8))
    with pytest.raises(ValueError, match=r"predict needs an addition model, got one for "
                                         r"sum_of_digits\(num_inputs=3\)"):
        predict(other, images[:, :1], images[:, 1:])


def test_model_refuses_a_mismatched_program(trained):
    with pytest.raises(ValueError, match=r"program addition\(num_digits=2\) does not match"):
        ANeSI(Addition(2), trained.perception, trained.inference_model)
    assert isinstance(trained.perception, PerceptionNetwork)


def test_cli(trained, tmp_path, capsys):
    trained.save(tmp_path / "n1")
    assert main(["eval", str(tmp_path / "n1"), "--num-examples", "200"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["program"] == "addition(num_digits=1)" and out["output_accuracy"] > 0.7
    assert main(["train", "--digits", "1", "--out", str(tmp_path / "tiny"), "--steps", "20",
                 "--prior-steps", "10", "--explanation-steps", "10", "--num-examples", "50"]) == 0
    record = json.loads((tmp_path / "tiny" / "anesi.json").read_text())["record"]
    assert record["test"]["num_examples"] == 50
    assert main(["train", "--digits", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "num_digits must be an integer >= 1" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing")]) == 2


def test_explanation_model_finds_the_most_likely_digits(trained):
    explanation = trained.explanation
    examples = sample_examples(jax.random.key(1), load_split("test"), PROGRAM, 500)
    p = trained.beliefs(np.asarray(examples.images))
    found, _ = eqx.filter_jit(explain)(explanation, PROGRAM, p, examples.outputs)
    np.testing.assert_array_equal(PROGRAM(found), examples.outputs)
    # the exact most likely explanation: enumerate the 100 assignments
    every = jnp.array(list(itertools.product(range(10), repeat=2)))
    scores = jnp.sum(jnp.log(p)[:, jnp.arange(2), every], axis=-1)
    consistent = jnp.all(PROGRAM(every)[None] == examples.outputs[:, None], axis=-1)
    best = every[jnp.argmax(jnp.where(consistent, scores, -jnp.inf), axis=1)]
    agreement = np.mean(np.all(np.asarray(found) == np.asarray(best), axis=1))
    assert agreement > 0.9, agreement
    # the negative control: the untrained model agrees far less often
    untrained = ExplanationModel(jax.random.key(1), program=PROGRAM)
    guessed, _ = eqx.filter_jit(explain)(untrained, PROGRAM, p, examples.outputs)
    assert np.mean(np.all(np.asarray(guessed) == np.asarray(best), axis=1)) < 0.5
