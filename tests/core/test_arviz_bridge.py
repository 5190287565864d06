"""ppl.arviz_bridge gives the same answers whichever ArviZ is installed (0.x on Python 3.11's
pinned set, 1.x on the current releases): the summary's columns and values, ESS/MCSE/R-hat on
arrays, PSIS k-hat, plots as matplotlib figures, and netCDF files that load back."""

import matplotlib
import numpy as np
import pytest
from scipy.special import logsumexp

import ppl
from ppl import arviz_bridge

matplotlib.use("Agg")

COLUMNS = ["mean", "sd", "hdi_3%", "hdi_97%", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail",
           "r_hat"]


def _draws():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 500, 3))
    x[..., 1] = np.cumsum(x[..., 1], axis=1) * 0.05 + x[..., 1]  # a slowly mixing one
    return x


def test_major_version_matches_the_installed_arviz():
    import arviz

    assert arviz_bridge.ARVIZ_MAJOR == int(arviz.__version__.split(".")[0])


def test_summary_has_the_same_columns_and_values_on_both_worlds():
    x = _draws()
    post = ppl.Posterior(samples={"a": x[..., 0], "b": x[..., 1:]})
    table = post.summary()
    assert list(table.columns) == COLUMNS
    assert list(table.index) == ["a", "b[0]", "b[1]"]
    flat = x.reshape(-1, 3)
    np.testing.assert_allclose(table["mean"], flat.mean(0), atol=5e-4)
    np.testing.assert_allclose(table["sd"], flat.std(0, ddof=1), atol=5e-4)
    # The summary's ESS, MCSE and R-hat are the bridge's own (same rounding as ArviZ 0.x).
    np.testing.assert_allclose(table["ess_bulk"], np.round(arviz_bridge.ess(x)))
    np.testing.assert_allclose(table["ess_tail"], np.round(arviz_bridge.ess(x, "tail")))
    np.testing.assert_allclose(table["mcse_mean"], np.round(arviz_bridge.mcse(x), 3))
    np.testing.assert_allclose(table["r_hat"], np.round(arviz_bridge.rhat(x), 2))
    # Values computed once with ArviZ 0.23.4 on these draws; ArviZ 1.3 gives the same.
    np.testing.assert_allclose(table["ess_bulk"], [1993, 74, 1951])
    np.testing.assert_allclose(table["ess_tail"], [2012, 118, 1805])
    np.testing.assert_allclose(table["r_hat"], [1.00, 1.04, 1.00])
    np.testing.assert_allclose(table["hdi_3%"], [-1.972, -1.939, -1.750])


def test_array_diagnostics_keep_the_site_shape():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 300, 2, 3))
    for values in (arviz_bridge.ess(x), arviz_bridge.ess(x, "tail"), arviz_bridge.mcse(x),
                   arviz_bridge.mcse(x, "sd"), arviz_bridge.rhat(x)):
        assert values.shape == (2, 3)
    # Independent draws: ESS near the number of draws, MCSE near sd / sqrt(n).
    assert np.all(np.abs(arviz_bridge.ess(x) / 1200 - 1) < 0.25)
    assert np.all(np.abs(arviz_bridge.mcse(x) * np.sqrt(1200) - 1) < 0.15)
    with pytest.raises(ValueError, match="chain, draw"):
        arviz_bridge.ess(np.zeros(10))


@pytest.mark.parametrize("shape", [0.2, 0.5, 0.9])
def test_psis_khat_finds_a_known_pareto_tail(shape):
    # Weights w = U^-k have a Pareto tail of shape k.
    rng = np.random.default_rng(3)
    log_ratios = -shape * np.log(rng.uniform(size=4000))
    smoothed, khat = arviz_bridge.psislw(log_ratios - log_ratios.max())
    assert abs(khat - shape) < 0.15
    assert smoothed.shape == log_ratios.shape
    assert abs(logsumexp(smoothed)) < 1e-6  # normalised


def test_plots_are_matplotlib_figures():
    from matplotlib.figure import Figure

    rng = np.random.default_rng(2)
    post = ppl.Posterior(samples={"mu": rng.normal(size=(2, 200)),
                                  "tau": rng.gamma(2.0, size=(2, 200))})
    for plot in (arviz_bridge.plot_trace, arviz_bridge.plot_rank, arviz_bridge.plot_posterior):
        figure = plot(post, ["mu", "tau"])
        assert isinstance(figure, Figure) and figure.axes
        matplotlib.pyplot.close(figure)
    figure = arviz_bridge.plot_posterior(post, ["mu"], ref_val=0.0)
    assert isinstance(figure, Figure)
    matplotlib.pyplot.close(figure)


def test_saved_file_has_every_group_and_loads_back(tmp_path):
    rng = np.random.default_rng(4)
    post = ppl.Posterior(
        samples={"mu": rng.normal(size=(2, 30)), "theta": rng.normal(size=(2, 30, 3))},
        log_weights=rng.normal(size=(2, 30)), log_evidence=-1.5,
        stats={"diverging": np.zeros((2, 30), bool)},
        history={"ess": np.linspace(1, 2, 5), "grid": np.ones((2, 3))},
        log_likelihood={"y": rng.normal(size=(2, 30, 4))},
        meta={"engine": "smc", "settings": {"num_particles": 30}},
    )
    assert set(arviz_bridge.group_names(post.to_arviz())) == {
        "posterior", "sample_stats", "log_likelihood", "ppl_history"}
    path = tmp_path / "run.nc"
    post.save(path)
    # Read back without ArviZ: plain netCDF-4 groups, as both ArviZ worlds write them.
    import xarray as xr

    with xr.open_datatree(path, engine="h5netcdf") as tree:
        assert set(tree.children) == {"posterior", "sample_stats", "log_likelihood",
                                      "ppl_history"}
    loaded = ppl.load(path)
    np.testing.assert_array_equal(loaded.samples["theta"], post.samples["theta"])
    np.testing.assert_array_equal(loaded.log_weights, post.log_weights)
    np.testing.assert_array_equal(loaded.log_likelihood["y"], post.log_likelihood["y"])
    np.testing.assert_array_equal(loaded.history["grid"], post.history["grid"])
    assert loaded.stats["diverging"].dtype == bool
    assert loaded.meta == post.meta and loaded.log_evidence == -1.5


def test_load_refuses_a_file_without_a_posterior(tmp_path):
    import xarray as xr

    path = tmp_path / "other.nc"
    xr.DataTree.from_dict({"/other": xr.Dataset({"x": ("d", np.arange(3.0))})}).to_netcdf(
        path, engine="h5netcdf")
    with pytest.raises(ValueError, match="posterior"):
        ppl.load(path)
