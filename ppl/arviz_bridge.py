"""Everything ppl asks of ArviZ, behind one module that speaks both ArviZ worlds.

- ArviZ 0.x (``arviz`` 0.23, Python 3.11's pinned set): ``InferenceData``, ``az.summary``,
  ``az.ess``, ``az.psislw``, ``az.plot_*``.
- ArviZ 1.x (``arviz`` >= 1 with ``arviz-base``, ``arviz-stats``, ``arviz-plots``; Python
  >= 3.12): ``xarray.DataTree``, ``arviz_stats`` on arrays, ``arviz_plots`` plot
  collections.

The installed ``arviz`` decides (:data:`ARVIZ_MAJOR`). What ppl hands out is the same on
both: the summary has ArviZ 0.x's columns and values (tail ESS from the 5% and 95% quantiles,
Vehtari et al. 2021, where ArviZ 1.x's default takes its quantiles from the credible-interval
probability), ``save`` writes a netCDF file that either world loads, plots come back as a
matplotlib figure. :meth:`Posterior.to_arviz` returns the installed ArviZ's own container
(``InferenceData`` or ``DataTree``): that is what the user's ArviZ functions accept;
:func:`group_names` lists its groups on both.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import metadata
from typing import TYPE_CHECKING

import numpy as np

from ppl.posterior import Posterior, encode_meta

if TYPE_CHECKING:  # pandas is imported where it is used: R-hat in a sampler's warnings
    import pandas as pd  # path should not pay for it

__all__ = ["ARVIZ_MAJOR", "to_inference_data", "group_names", "summary", "save", "load",
           "rhat", "ess", "mcse", "psislw", "plot_trace", "plot_rank", "plot_posterior"]

_HISTORY_GROUP = "ppl_history"
# Tail ESS: the smaller of the ESS of the 5% and 95% quantiles (ArviZ 0.x's definition).
_TAIL_PROB = (0.05, 0.95)


def _arviz_major() -> int:
    try:
        return int(metadata.version("arviz").split(".")[0])
    except metadata.PackageNotFoundError:  # pragma: no cover - arviz is a dependency
        return 0


ARVIZ_MAJOR: int = _arviz_major()
"""The installed ArviZ's major version (0 or 1), read from its metadata (no import)."""


@cache
def _az():
    import arviz as az

    if ARVIZ_MAJOR == 0 and az.Numba.numba_flag:
        # ArviZ 0.23's numba path calls float() on 1-element arrays, an error under numpy 2.4.
        az.Numba.disable_numba()
    return az


@cache
def _array_stats():
    """ArviZ 1.x's array-level statistics (no xarray wrapping)."""
    from arviz_stats.base import array_stats

    return array_stats


# -- the container ---------------------------------------------------------------------------
def _groups(post: Posterior) -> dict[str, dict[str, np.ndarray]]:
    stats = dict(post.stats)
    if post.log_weights is not None:
        stats["log_weight"] = post.log_weights
    groups = {"posterior": dict(post.samples)}
    if stats:
        groups["sample_stats"] = stats
    if post.log_likelihood:
        groups["log_likelihood"] = dict(post.log_likelihood)
    return groups


def _attrs(post: Posterior) -> dict:
    attrs = {"ppl_meta": encode_meta(post.meta)}
    if post.log_evidence is not None:
        attrs["log_evidence"] = post.log_evidence
    return attrs


def _history_dataset(post: Posterior):
    import xarray as xr

    data_vars = {}
    for name, value in post.history.items():
        dims = [f"{name}_dim_{i}" for i in range(np.ndim(value))]
        data_vars[name] = (dims, np.asarray(value))
    return xr.Dataset(data_vars)


def to_inference_data(post: Posterior):
    """The installed ArviZ's container: ``InferenceData`` (0.x) or ``xarray.DataTree``
    (1.x), with groups posterior, sample_stats (log weights as ``log_weight``),
    log_likelihood, and ``ppl_history`` (per-iteration statistics); ppl's metadata and
    the log-evidence are attributes of the posterior group."""
    groups = _groups(post)
    if ARVIZ_MAJOR >= 1:
        import arviz_base as azb
        import xarray as xr

        tree = azb.from_dict(groups)
        tree["posterior"].attrs.update(_attrs(post))
        if post.history:
            tree[_HISTORY_GROUP] = xr.DataTree(_history_dataset(post))
        return tree
    idata = _az().from_dict(**groups)
    idata.posterior.attrs.update(_attrs(post))
    if post.history:
        idata.add_groups({_HISTORY_GROUP: _history_dataset(post)}, warn_on_custom_groups=False)
    return idata


def group_names(data) -> list[str]:
    """Names of the groups of an ``InferenceData`` or a ``DataTree`` (``"posterior"``, ...)."""
    if hasattr(data, "children"):  # DataTree
        return list(data.children)
    return list(data.groups())


# -- diagnostics on arrays -----------------------------------------------------------------
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
    ``|x - median|`` (tail); equal to ``arviz.rhat(method="rank")`` in both ArviZ worlds.
    Written in NumPy because importing ArviZ (matplotlib, xarray) costs seconds in the
    warnings path of every NUTS run.
    """
    x = np.asarray(samples, np.float64)
    shape = x.shape[2:]
    x = x.reshape(x.shape[0], x.shape[1], -1)
    bulk = _split_rhat(_z_scale(x))
    folded = np.abs(x - np.median(x.reshape(-1, x.shape[-1]), axis=0))
    tail = _split_rhat(_z_scale(folded))
    return np.maximum(bulk, tail).reshape(shape)


def _per_scalar(samples) -> tuple[np.ndarray, tuple[int, ...]]:
    x = np.asarray(samples)
    if x.ndim < 2:
        raise ValueError(f"Expected draws shaped (chain, draw, ...), got shape {x.shape}.")
    return x.reshape(x.shape[:2] + (-1,)), x.shape[2:]


def ess(samples: np.ndarray, method: str = "bulk") -> np.ndarray:
    """Effective sample size of ``(chain, draw, ...)`` draws, one per scalar
    (``method``: ``"bulk"``, ``"tail"``, ``"mean"``, ``"sd"``, ...)."""
    x, shape = _per_scalar(samples)
    if ARVIZ_MAJOR >= 1:
        prob = _TAIL_PROB if method == "tail" else None
        out = _array_stats().ess(x, method=method, prob=prob, chain_axis=0, draw_axis=1)
    else:
        az = _az()
        out = az.ess(az.convert_to_dataset(x), method=method)["x"].values
    return np.asarray(out, np.float64).reshape(shape)


def mcse(samples: np.ndarray, method: str = "mean") -> np.ndarray:
    """Monte Carlo standard error of ``(chain, draw, ...)`` draws, one per scalar."""
    x, shape = _per_scalar(samples)
    if ARVIZ_MAJOR >= 1:
        out = _array_stats().mcse(x, method=method, chain_axis=0, draw_axis=1)
    else:
        az = _az()
        out = az.mcse(az.convert_to_dataset(x), method=method)["x"].values
    return np.asarray(out, np.float64).reshape(shape)


def psislw(log_ratios: np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed log importance weights of a 1-D array of log ratios
    ``log p - log q`` (Vehtari et al. 2024), with ``r_eff = 1``; returns
    ``(smoothed log weights, k-hat)``. ArviZ 1.x's ``psislw`` takes the negated ratios (its
    LOO convention: log-likelihoods); this takes the ratios on both."""
    lr = np.asarray(log_ratios, np.float64).reshape(-1)
    if ARVIZ_MAJOR >= 1:
        smoothed, khat = _array_stats().psislw(-lr, r_eff=1.0)
    else:
        smoothed, khat = _az().psislw(lr, reff=1.0)
    return np.asarray(smoothed, np.float64), float(np.asarray(khat))


# -- the summary -----------------------------------------------------------------------------
def _hdi_labels(hdi_prob: float) -> tuple[str, str]:
    alpha = 1 - hdi_prob
    return f"hdi_{100 * alpha / 2:g}%", f"hdi_{100 * (1 - alpha / 2):g}%"


# ArviZ 0.x's column order and default rounding (decimals per column).
_COLUMNS = ("mean", "sd", "hdi_lower", "hdi_upper", "mcse_mean", "mcse_sd", "ess_bulk",
            "ess_tail", "r_hat")


def _summary_arviz1(post: Posterior, hdi_prob: float):
    import arviz_stats as azs
    import pandas as pd

    table = azs.summary(to_inference_data(post), ci_kind="hdi", ci_prob=hdi_prob,
                        round_to="none")
    table = pd.DataFrame(table).astype(np.float64)
    lower, upper = _hdi_labels(hdi_prob)
    bounds = [c for c in table.columns if c.startswith("hdi") and c.endswith(("_lb", "_ub"))]
    table = table.rename(columns={bounds[0]: lower, bounds[1]: upper})
    # The tail ESS with 0.x's quantiles, row by row in the summary's own order.
    tail = {}
    for name, value in post.samples.items():
        x, shape = _per_scalar(value)
        values = ess(x, "tail").reshape(-1)
        for j in range(values.size):
            index = np.unravel_index(j, shape)
            tail[name if not shape else f"{name}[{', '.join(map(str, index))}]"] = values[j]
    table["ess_tail"] = [tail.get(label, np.nan) for label in table.index]
    columns = [lower if c == "hdi_lower" else upper if c == "hdi_upper" else c for c in _COLUMNS]
    table = table[columns]
    decimals = {c: 0 if c.startswith("ess") else 2 if c == "r_hat" else 3 for c in columns}
    return table.round(decimals)


def summary(post: Posterior, hdi_prob: float = 0.94) -> pd.DataFrame:
    """One row per scalar: mean, sd, HDI bounds, MCSE of mean and sd, bulk/tail ESS, R-hat
    (ArviZ 0.x's columns and rounding on both worlds); weighted draws get weighted moments,
    an equal-tailed interval and Kish's ESS instead."""
    if post.log_weights is None:
        if ARVIZ_MAJOR >= 1:
            return _summary_arviz1(post, hdi_prob)
        return _az().summary(to_inference_data(post), hdi_prob=hdi_prob)
    # Weighted draws: moments, central interval and Kish ESS.
    w = post.weights.reshape(-1)
    kish = 1.0 / np.sum(w**2)
    lo, hi = (1 - hdi_prob) / 2, 1 - (1 - hdi_prob) / 2
    rows = {}
    for name in post.samples:
        x = post.flat(name).reshape(w.size, -1)
        shape = post.samples[name].shape[2:]
        for j in range(x.shape[1]):
            index = ", ".join(map(str, np.unravel_index(j, shape)))
            label = f"{name}[{index}]" if shape else name
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


def _weighted_quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    order = np.argsort(x)
    cw = np.cumsum(w[order])
    return float(x[order][min(np.searchsorted(cw, q * cw[-1]), len(x) - 1)])


# -- saving and loading ----------------------------------------------------------------------
def save(post: Posterior, path) -> None:
    """netCDF-4 with one group per ArviZ group (h5netcdf); either ArviZ world reads it."""
    to_inference_data(post).to_netcdf(str(path), engine="h5netcdf")


def _read_groups(path) -> dict:
    """Every group of a netCDF file written by ArviZ 0.x or 1.x, loaded into memory, by name."""
    import xarray as xr

    try:
        tree = xr.open_datatree(str(path), engine="h5netcdf")
    except (FileNotFoundError, PermissionError):
        raise
    except (OSError, ValueError) as error:
        # h5py's own words ("file signature not found", "truncated file") name no file.
        raise ValueError(
            f"Could not read {path}: not a netCDF-4 file, or truncated or corrupted ({error}). "
            "ppl.load reads the files Posterior.save writes."
        ) from error
    try:
        return {name: node.to_dataset().load() for name, node in tree.children.items()}
    finally:
        tree.close()


def load(path) -> Posterior:
    """A Posterior from a file written by :func:`save` (by either ArviZ world)."""
    groups = _read_groups(path)
    if "posterior" not in groups:
        raise ValueError(
            f"{path} was not written by ppl (Posterior.save): it has no 'posterior' group "
            f"(groups: {sorted(groups)})."
        )
    try:
        return _from_groups(groups)
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        # Another tool's file (or a hand-edited one) fails somewhere in the parsing: say which.
        raise ValueError(f"{path} was not written by ppl (Posterior.save), or was changed "
                         f"since: {error}") from error


def _from_groups(groups: dict) -> Posterior:
    posterior = groups["posterior"]
    samples = {name: np.asarray(posterior[name].values) for name in posterior.data_vars}
    stats, log_weights = {}, None
    for name, value in groups.get("sample_stats", {}).items():
        if name == "log_weight":
            log_weights = np.asarray(value.values)
        else:
            stats[name] = np.asarray(value.values)
    log_likelihood = None
    if "log_likelihood" in groups:
        ll = groups["log_likelihood"]
        log_likelihood = {name: np.asarray(ll[name].values) for name in ll.data_vars}
    history = {}
    if _HISTORY_GROUP in groups:
        group = groups[_HISTORY_GROUP]
        history = {name: np.asarray(group[name].values) for name in group.data_vars}
    attrs = dict(posterior.attrs)
    meta = json.loads(attrs.get("ppl_meta", "{}"))
    if not isinstance(meta, dict):
        raise ValueError(f"its ppl_meta attribute is not a JSON object: {meta!r:.80}")
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


# -- plots -----------------------------------------------------------------------------------
def _figure_of(axes):
    fig = np.asarray(axes).ravel()[0].figure
    fig.tight_layout()
    return fig


def _figure_of_collection(plot_collection):
    return plot_collection.viz["figure"].item()


def plot_trace(post: Posterior, var_names: list[str] | None = None):
    """Trace plot (density and draws per chain); returns the matplotlib figure."""
    data = to_inference_data(post)
    if ARVIZ_MAJOR >= 1:
        import arviz_plots as azp

        return _figure_of_collection(
            azp.plot_trace_dist(data, var_names=var_names, backend="matplotlib"))
    return _figure_of(_az().plot_trace(data, var_names=var_names, compact=True))


def plot_rank(post: Posterior, var_names: list[str] | None = None):
    """Rank plot per chain (uniform when chains agree); returns the matplotlib figure."""
    data = to_inference_data(post)
    if ARVIZ_MAJOR >= 1:
        import arviz_plots as azp

        return _figure_of_collection(
            azp.plot_rank(data, var_names=var_names, backend="matplotlib"))
    return _figure_of(_az().plot_rank(data, var_names=var_names))


def plot_posterior(post: Posterior, var_names: list[str] | None = None, ref_val=None,
                   hdi_prob: float = 0.94):
    """Marginal posteriors with HDI (and reference values, a number or ``{site: value}``);
    returns the matplotlib figure."""
    data = to_inference_data(post)
    if ARVIZ_MAJOR >= 1:
        import arviz_plots as azp

        collection = azp.plot_dist(data, var_names=var_names, ci_kind="hdi", ci_prob=hdi_prob,
                                   backend="matplotlib")
        if ref_val is not None:
            azp.add_lines(collection, ref_val)
        return _figure_of_collection(collection)
    return _figure_of(_az().plot_posterior(data, var_names=var_names, ref_val=ref_val,
                                           hdi_prob=hdi_prob))
