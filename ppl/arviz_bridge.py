"""Everything ppl asks of ArviZ, behind one module.

ArviZ 0.x (Python 3.11) and 1.x (Python >= 3.12) differ (``from_dict``, the summary
columns, the InferenceData/DataTree container). Keeping every call here makes the move to
the newer set one change.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from ppl.posterior import Posterior, encode_meta

if TYPE_CHECKING:  # pandas is imported where it is used: R-hat in a sampler's warnings
    import pandas as pd  # path should not pay for it

__all__ = ["to_inference_data", "summary", "save", "load", "rhat", "ess"]

_HISTORY_GROUP = "ppl_history"


def _az():
    import arviz as az

    if az.Numba.numba_flag:
        # ArviZ 0.23's numba path calls float() on 1-element arrays, an error under numpy 2.4.
        az.Numba.disable_numba()
    return az


def to_inference_data(post: Posterior):
    az = _az()
    stats = dict(post.stats)
    if post.log_weights is not None:
        stats["log_weight"] = post.log_weights
    attrs = {"ppl_meta": encode_meta(post.meta)}
    if post.log_evidence is not None:
        attrs["log_evidence"] = post.log_evidence
    idata = az.from_dict(
        posterior=post.samples,
        sample_stats=stats or None,
        log_likelihood=post.log_likelihood or None,
    )
    idata.posterior.attrs.update(attrs)
    if post.history:
        import xarray as xr

        data_vars = {}
        for name, value in post.history.items():
            dims = [f"{name}_dim_{i}" for i in range(np.ndim(value))]
            data_vars[name] = (dims, np.asarray(value))
        idata.add_groups({_HISTORY_GROUP: xr.Dataset(data_vars)}, warn_on_custom_groups=False)
    return idata


def _split_rhat(x: np.ndarray) -> np.ndarray:
    # x: (chain, draw, k); chains split in halves (Gelman et al. BDA3, eq. 11.4).
    half = x.shape[1] // 2
    x = np.concatenate([x[:, :half], x[:, x.shape[1] - half:]], axis=0)
    n = x.shape[1]
    within = x.var(axis=1, ddof=1).mean(axis=0)
    between = n * x.mean(axis=1).var(axis=0, ddof=1)
    return np.sqrt(((n - 1) / n * within + between / n) / within)


def _z_scale(x: np.ndarray) -> np.ndarray:
    # Rank-normalisation with average ranks for ties: ndtri((r - 3/8) / (S + 1/4)).
    from scipy.special import ndtri  # already imported by JAX's dependencies

    flat = x.reshape(-1, x.shape[-1])
    size = flat.shape[0]
    ranks = np.empty_like(flat)
    for j in range(flat.shape[1]):
        _, inverse, counts = np.unique(flat[:, j], return_inverse=True, return_counts=True)
        upper = np.cumsum(counts)
        ranks[:, j] = (upper - (counts - 1) / 2.0)[inverse]
    return ndtri((ranks - 0.375) / (size + 0.25)).reshape(x.shape)


def rhat(samples: np.ndarray) -> np.ndarray:
    """Rank-normalised split R-hat of ``(chain, draw, ...)`` draws, per scalar.

    Vehtari, Gelman, Simpson, Carpenter, Buerkner (2021): the larger of the split R-hat of
    the rank-normalised draws (bulk) and of the rank-normalised folded draws
    ``|x - median|`` (tail); equal to ``arviz.rhat(method="rank")``. Written in NumPy
    because importing ArviZ (matplotlib, xarray) costs seconds in the warnings path of
    every NUTS run.
    """
    x = np.asarray(samples, np.float64)
    shape = x.shape[2:]
    x = x.reshape(x.shape[0], x.shape[1], -1)
    bulk = _split_rhat(_z_scale(x))
    folded = np.abs(x - np.median(x.reshape(-1, x.shape[-1]), axis=0))
    tail = _split_rhat(_z_scale(folded))
    return np.maximum(bulk, tail).reshape(shape)


def ess(samples: np.ndarray, method: str = "bulk") -> np.ndarray:
    """Effective sample size of ``(chain, draw, ...)`` draws, per scalar."""
    az = _az()
    ds = az.convert_to_dataset(np.asarray(samples))
    return np.asarray(az.ess(ds, method=method)["x"])


def _weighted_quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    order = np.argsort(x)
    cw = np.cumsum(w[order])
    return float(x[order][min(np.searchsorted(cw, q * cw[-1]), len(x) - 1)])


def summary(post: Posterior, hdi_prob: float = 0.94) -> pd.DataFrame:
    if post.log_weights is None:
        az = _az()
        return az.summary(to_inference_data(post), hdi_prob=hdi_prob)
    # Weighted draws: moments, central interval and Kish ESS.
    w = post.weights.reshape(-1)
    kish = 1.0 / np.sum(w**2)
    lo, hi = (1 - hdi_prob) / 2, 1 - (1 - hdi_prob) / 2
    rows = {}
    for name in post.samples:
        x = post.flat(name).reshape(w.size, -1)
        shape = post.samples[name].shape[2:]
        for j in range(x.shape[1]):
            label = name if not shape else f"{name}[{', '.join(map(str, np.unravel_index(j, shape)))}]"
            m = float(np.sum(w * x[:, j]))
            sd = float(np.sqrt(np.sum(w * (x[:, j] - m) ** 2)))
            rows[label] = {
                "mean": m,
                "sd": sd,
                f"eti_{lo:.0%}": _weighted_quantile(x[:, j], w, lo),
                f"eti_{hi:.0%}": _weighted_quantile(x[:, j], w, hi),
                "mcse_mean": sd / np.sqrt(kish),
                "ess_kish": kish,
            }
    import pandas as pd

    return pd.DataFrame.from_dict(rows, orient="index")


def save(post: Posterior, path) -> None:
    idata = to_inference_data(post)
    idata.to_netcdf(str(path))


def load(path) -> Posterior:
    az = _az()
    idata = az.from_netcdf(str(path))
    posterior = idata.posterior
    samples = {name: np.asarray(posterior[name].values) for name in posterior.data_vars}
    stats, log_weights = {}, None
    if "sample_stats" in idata.groups():
        for name in idata.sample_stats.data_vars:
            value = np.asarray(idata.sample_stats[name].values)
            if name == "log_weight":
                log_weights = value
            else:
                stats[name] = value
    log_likelihood = None
    if "log_likelihood" in idata.groups():
        ll = idata.log_likelihood
        log_likelihood = {name: np.asarray(ll[name].values) for name in ll.data_vars}
    history = {}
    if _HISTORY_GROUP in idata.groups():
        group = getattr(idata, _HISTORY_GROUP)
        history = {name: np.asarray(group[name].values) for name in group.data_vars}
    attrs = dict(posterior.attrs)
    meta = json.loads(attrs.get("ppl_meta", "{}"))
    log_evidence = attrs.get("log_evidence")
    return Posterior(
        samples=samples,
        log_weights=log_weights,
        log_evidence=None if log_evidence is None else float(log_evidence),
        stats=stats,
        history=history,
        meta=meta,
        log_likelihood=log_likelihood,
    )


def mcse(samples: np.ndarray, method: str = "mean") -> np.ndarray:
    """Monte Carlo standard error of ``(chain, draw, ...)`` draws, one per scalar."""
    az = _az()
    x = np.asarray(samples)
    flat = x.reshape(x.shape[:2] + (-1,))
    return np.asarray(az.mcse(az.convert_to_dataset(flat), method=method)["x"]).reshape(x.shape[2:])


def _figure_of(axes):
    fig = np.asarray(axes).ravel()[0].figure
    fig.tight_layout()
    return fig


def plot_trace(post: Posterior, var_names: list[str] | None = None):
    """Trace plot (density and draws per chain); returns the matplotlib figure."""
    return _figure_of(_az().plot_trace(to_inference_data(post), var_names=var_names, compact=True))


def plot_rank(post: Posterior, var_names: list[str] | None = None):
    """Rank plot per chain (uniform when chains agree); returns the matplotlib figure."""
    return _figure_of(_az().plot_rank(to_inference_data(post), var_names=var_names))


def plot_posterior(post: Posterior, var_names: list[str] | None = None, ref_val=None):
    """Marginal posteriors with HDI; returns the matplotlib figure."""
    return _figure_of(
        _az().plot_posterior(to_inference_data(post), var_names=var_names, ref_val=ref_val)
    )
