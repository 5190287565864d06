"""Training, checkpoints (round trip, resume, refusal of another family or architecture),
input validation of ``Amortizer.posterior`` and the out-of-distribution prior check."""

from __future__ import annotations

import dataclasses
import json
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.inference.amortized import families
from ppl.inference.amortized.gmm import GaussianMixture
from ppl.inference.amortized.train import (
    Amortizer,
    PriorOutsideTrainingWarning,
    TrainingSettings,
    train,
)

FAMILY = families.get_family("gaussian_mean_1d")
TINY = {"width": 16, "depth": 1, "num_heads": 2, "mlp_width": 32}
SETTINGS = {"steps": 20, "batch_size": 16, "chunk_size": 10, "learning_rate": 3e-3,
            "warmup_steps": 5, "architecture": TINY, "progress_bar": False}


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("amortizer")
    amortizer = train(FAMILY, key=0, checkpoint_dir=directory, checkpoint_every=10, **SETTINGS)
    return amortizer, directory


@pytest.fixture(scope="module")
def inputs():
    prior = GaussianMixture.from_weights(jnp.array([0.4, 0.6]), jnp.array([[-1.0], [1.5]]),
                                         jnp.array([[0.5], [1.0]]))
    data = np.asarray(jax.random.normal(jax.random.key(0), (3, 24, 1)))
    mask = np.arange(24)[None, :] < np.array([[5], [12], [24]])
    return prior, data, mask


def test_save_load_round_trip(trained, inputs):
    amortizer, directory = trained
    prior, data, mask = inputs
    stored = json.loads((directory / "amortizer.json").read_text())
    assert stored["family"]["name"] == "gaussian_mean_1d"
    assert stored["family"]["hyperprior"]["max_components"] == 4
    assert stored["architecture"]["width"] == 16
    assert stored["training"]["settings"]["steps"] == 20
    assert stored["training"]["completed_steps"] == 20
    assert not (directory / "train_state.eqx").exists()
    loaded = Amortizer.load(directory, family="gaussian_mean_1d", architecture=TINY)
    assert loaded.family == FAMILY
    expected = amortizer.posterior(data, mask, prior)
    got = loaded.posterior(data, mask, prior)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(a, b)
    # One data set alone gives what it gives in a batch; more rows than max_points are
    # fine when at most max_points are observed.
    single = amortizer.posterior(data[1], mask[1], prior)
    np.testing.assert_allclose(single.means, expected.means[1], rtol=1e-5, atol=1e-6)
    wide = np.concatenate([np.full((24, 1), 99.0), data[1]])
    wide_mask = np.concatenate([np.zeros(24, bool), mask[1]])
    np.testing.assert_allclose(amortizer.posterior(wide, wide_mask, prior).means,
                               expected.means[1], rtol=1e-5, atol=1e-6)


def test_load_refuses_another_family_or_architecture(trained, tmp_path):
    _, directory = trained
    with pytest.raises(ValueError, match="Expected a checkpoint for family 'gaussian_mean_2d', "
                                         "got one for family 'gaussian_mean_1d'"):
        Amortizer.load(directory, family="gaussian_mean_2d")
    changed = dataclasses.replace(FAMILY, noise_sd=2.0)
    with pytest.raises(ValueError, match=r"other settings .*noise_sd: 2.0 vs 1.0"):
        Amortizer.load(directory, family=changed)
    with pytest.raises(ValueError, match=r"architecture .*'width': 32.*got one with .*"
                                         r"'width': 16"):
        Amortizer.load(directory, architecture={**TINY, "width": 32})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "amortizer.json").write_text((directory / "amortizer.json").read_text())
    (broken / "weights.eqx").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="does not match"):
        Amortizer.load(broken)
    with pytest.raises(ValueError, match="Expected an amortizer checkpoint in"):
        Amortizer.load(tmp_path)


def test_resumed_run_ends_with_the_same_weights(trained, tmp_path):
    amortizer, _ = trained

    def stop_after_first_chunk(line):
        if line.startswith("step 10/"):
            raise _Stop

    with pytest.raises(_Stop):
        train(FAMILY, key=0, checkpoint_dir=tmp_path, checkpoint_every=10,
              log_fn=stop_after_first_chunk, **SETTINGS)
    assert (tmp_path / "train_state.eqx").exists()
    assert json.loads((tmp_path / "amortizer.json").read_text())["training"][
        "completed_steps"] == 10
    resumed = train(FAMILY, key=0, checkpoint_dir=tmp_path, checkpoint_every=10, **SETTINGS)
    for a, b in zip(jax.tree.leaves(eqx.filter(amortizer.model, eqx.is_array)),
                    jax.tree.leaves(eqx.filter(resumed.model, eqx.is_array)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed.training["loss_trace"] == amortizer.training["loss_trace"]
    with pytest.raises(ValueError, match=r"continue this run.*key"):
        train(FAMILY, key=1, checkpoint_dir=tmp_path, **SETTINGS)
    with pytest.raises(ValueError, match=r"another settings \(this run vs checkpoint: "
                                         r"batch_size: 8 vs 16\)"):
        train(FAMILY, key=0, checkpoint_dir=tmp_path, **{**SETTINGS, "batch_size": 8})


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="Expected steps to be an integer >= 1, got 0"):
        TrainingSettings(steps=0)
    with pytest.raises(ValueError, match="Expected learning_rate > 0"):
        TrainingSettings(steps=10, learning_rate=-1.0)
    with pytest.raises(ValueError, match="Expected architecture settings among"):
        train(FAMILY, key=0, steps=1, architecture={"layers": 3})


def _invalid_prior():
    return GaussianMixture(jnp.log(jnp.array([0.5, 0.9])), jnp.zeros((2, 1)), jnp.ones((2, 1)),
                           validate=False)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda a, p, d, m: a.posterior(d[..., [0, 0]], m, p),
         r"Expected 1 numbers per data point for family 'gaussian_mean_1d' \(x_0\), got 2"),
        (lambda a, p, d, m: a.posterior(np.ones((3, 30, 1)), None, p),
         r"at most 24 observed points per data set \(the max_points of family "
         r"'gaussian_mean_1d'\), got 30 in data set 0"),
        (lambda a, p, d, m: a.posterior(np.where(np.arange(24)[:, None] == 3, np.nan, d[0]),
                                        None, p),
         "Expected finite data, got NaN or inf at point 3"),
        (lambda a, p, d, m: a.posterior(d, m[:, :10], p),
         r"Expected mask of shape \(3, 24\)"),
        (lambda a, p, d, m: a.posterior(d[0, :, 0], None, p), r"Expected data of shape"),
        (lambda a, p, d, m: a.posterior(d, m, None), "Expected prior to be a GaussianMixture"),
        (lambda a, p, d, m: a.posterior(d, m, GaussianMixture([0.0], [[0.0, 0.0]],
                                                              [[1.0, 1.0]])),
         r"Expected a prior over 1 parameters \(family 'gaussian_mean_1d'\), got one over 2"),
        (lambda a, p, d, m: a.posterior(d, m, jax.tree.map(lambda x: jnp.stack([x, x]), p)),
         r"Expected one prior or a batch of 3 \(one per data set\), got batch shape \(2,\)"),
        (lambda a, p, d, m: a.posterior(d, m, _invalid_prior()),
         "Expected mixture weights summing to 1, got sum 1.4"),
    ],
)
def test_bad_posterior_inputs_are_refused_by_name(trained, inputs, call, match):
    amortizer, _ = trained
    prior, data, mask = inputs
    with pytest.raises(ValueError, match=match):
        call(amortizer, prior, data, mask)


def test_prior_outside_the_hyper_distribution_is_detected(trained, inputs):
    amortizer, _ = trained
    _, data, mask = inputs
    inside = GaussianMixture.from_weights(jnp.array([0.5, 0.5]), jnp.array([[-3.5], [3.9]]),
                                          jnp.array([[0.2], [2.5]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert amortizer.check_prior(inside) == []
        amortizer.posterior(data, mask, inside)
    shifted = GaussianMixture.from_weights(jnp.array([0.5, 0.5]), jnp.array([[-3.5], [9.0]]),
                                           jnp.array([[0.2], [2.5]]))
    with pytest.warns(PriorOutsideTrainingWarning,
                      match=r"family 'gaussian_mean_1d'.*component 1 has mean\[0\] = 9, "
                            r"outside \[-4, 4\]"):
        amortizer.posterior(data, mask, shifted)
    many = GaussianMixture.from_weights(jnp.full(6, 1 / 6), jnp.linspace(-3, 3, 6)[:, None],
                                        jnp.ones((6, 1)))
    with pytest.warns(PriorOutsideTrainingWarning, match="6 components, more than the 4"):
        amortizer.posterior(data, mask, many)
    assert amortizer.check_prior(many, warn=False) == [
        "6 components, more than the 4 of the training priors"]
