"""The Posterior type: shapes, weighted moments, summary, ArviZ view, save and load."""

import numpy as np
import pytest

import ppl
from ppl import arviz_bridge


def make_posterior(log_weights=None, **extra):
    rng = np.random.default_rng(0)
    return ppl.Posterior(
        samples={"a": rng.normal(size=(2, 50)), "b": rng.normal(size=(2, 50, 3))},
        log_weights=log_weights,
        stats={"acceptance_rate": rng.uniform(size=(2, 50)), "diverging": np.zeros((2, 50), bool)},
        history={"elbo": np.linspace(-10, -1, 7)},
        meta={"engine": "test", "settings": {"x": 1}},
        **extra,
    )


def test_shapes_and_views():
    post = make_posterior()
    assert post.shape == (2, 50) and post.num_chains == 2 and post.num_draws == 50
    assert post.flat("b").shape == (100, 3)
    idata = post.to_arviz()  # InferenceData on ArviZ 0.x, DataTree on 1.x
    assert set(arviz_bridge.group_names(idata)) >= {"posterior", "sample_stats", "ppl_history"}
    table = post.summary()
    assert list(table.index[:2]) == ["a", "b[0]"]
    assert {"mean", "sd", "ess_bulk", "ess_tail", "r_hat", "mcse_mean"} <= set(table.columns)


def test_weighted_moments_use_the_weights():
    samples = {"x": np.array([[0.0, 1.0, 2.0, 3.0]])}
    w = np.array([[0.1, 0.2, 0.3, 0.4]])
    post = ppl.Posterior(samples=samples, log_weights=np.log(w))
    np.testing.assert_allclose(post.mean("x"), 2.0)
    np.testing.assert_allclose(post.std("x"), 1.0)
    table = post.summary()
    np.testing.assert_allclose(table.loc["x", "mean"], 2.0)
    np.testing.assert_allclose(table.loc["x", "ess_kish"], 1 / np.sum(w**2))
    resampled = post.resample(seed=0, num_draws=20_000)
    assert resampled.log_weights is None
    assert abs(resampled.mean("x") - 2.0) < 4 * 1.0 / np.sqrt(20_000)


def test_save_and_load_round_trip(tmp_path):
    post = make_posterior(log_weights=np.zeros((2, 50)), log_evidence=-3.25)
    path = tmp_path / "run.nc"
    post.save(path)
    loaded = ppl.load(path)
    for name in post.samples:
        np.testing.assert_array_equal(loaded.samples[name], post.samples[name])
    np.testing.assert_array_equal(loaded.stats["acceptance_rate"], post.stats["acceptance_rate"])
    np.testing.assert_array_equal(loaded.log_weights, post.log_weights)
    np.testing.assert_array_equal(loaded.history["elbo"], post.history["elbo"])
    assert loaded.log_evidence == -3.25
    assert loaded.meta == post.meta


def test_save_never_overwrites_silently(tmp_path):
    post = make_posterior()
    path = tmp_path / "run.nc"
    post.save(path)
    with pytest.raises(FileExistsError):
        post.save(path)
    post.save(path, overwrite=True)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="chain, draw"):
        ppl.Posterior(samples={"a": np.zeros((2, 5)), "b": np.zeros((3, 5))})
    with pytest.raises(ValueError, match="log_weights"):
        ppl.Posterior(samples={"a": np.zeros((2, 5))}, log_weights=np.zeros(10))
    with pytest.raises(ValueError, match="at least one"):
        ppl.Posterior(samples={})
