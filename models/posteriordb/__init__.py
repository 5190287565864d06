"""The posteriordb development posteriors as zoo entries, ``posteriordb/<posterior-name>``.

The NumPyro programs are in :mod:`ppl.models.posteriordb.programs`; data and reference
draws are read at ``build()``/``reference()`` time from the shared reference data
(``ppl.data_paths.reference_data_dir("posteriordb")``), never copied into the repository.
Reference draws come back by site name, Stan's flat names (``beta[1]``, ``theta[2]``)
folded into arrays shaped ``(num_draws, *site_shape)`` (10 chains x 1000 draws, flattened).

Example:
    >>> from ppl import models
    >>> entry = models.get("posteriordb/kidiq-kidscore_momiq")
    >>> model = entry.build()               # data from data.json
    >>> entry.reference()["beta"].shape
    (10000, 2)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache, partial

import equinox as eqx
import numpy as np
from ppl.models.posteriordb import programs
from ppl.models.zoo import ZooEntry, register

from ppl.data_paths import reference_data_dir

__all__ = [
    "POSTERIORS",
    "load_data",
    "load_reference_draws",
    "load_reference_flat",
    "reference_summary",
    "stan_flat_values",
    "split_flat_name",
    "latent_from_reference",
    "unconstrain",
]

_INDEX = re.compile(r"^(?P<base>[^\[]+)(\[(?P<index>[0-9, ]+)\])?$")


def split_flat_name(flat_name: str) -> tuple[str, tuple[int, ...]]:
    """``"beta[2]" -> ("beta", (1,))`` (0-based); ``"sigma" -> ("sigma", ())``."""
    match = _INDEX.match(flat_name)
    if match is None:
        raise ValueError(f"Expected a Stan flat name such as 'beta[1]', got {flat_name!r}.")
    index = match.group("index")
    idx = tuple(int(i) - 1 for i in index.split(",")) if index else ()
    return match.group("base"), idx


def _posterior_dir(name: str):
    path = reference_data_dir("posteriordb") / name
    if not path.is_dir():
        raise ValueError(f"Expected a posteriordb posterior name, got {name!r} (no {path}).")
    return path


@cache
def _raw_data(name: str) -> dict:
    with open(_posterior_dir(name) / "data.json") as f:
        return json.load(f)


def load_reference_flat(name: str) -> tuple[list[str], np.ndarray]:
    """Stan flat parameter names and the reference draws ``(chain, draw, K)`` (float64)."""
    with np.load(_posterior_dir(name) / "reference_draws.npz") as z:
        return [str(n) for n in z["param_names"]], np.asarray(z["draws"], np.float64)


def load_reference_draws(name: str) -> dict[str, np.ndarray]:
    """Reference draws by site, Stan flat names folded back: ``{site: (num_draws, *shape)}``."""
    flat_names, draws = load_reference_flat(name)
    flat = draws.reshape(-1, draws.shape[-1])
    groups: dict[str, list[tuple[tuple[int, ...], int]]] = {}
    for column, flat_name in enumerate(flat_names):
        base, idx = split_flat_name(flat_name)
        groups.setdefault(base, []).append((idx, column))
    out = {}
    for base, items in groups.items():
        if items[0][0] == ():
            out[base] = flat[:, items[0][1]]
            continue
        shape = tuple(max(idx[d] for idx, _ in items) + 1 for d in range(len(items[0][0])))
        value = np.full((flat.shape[0], *shape), np.nan)
        for idx, column in items:
            value[(slice(None), *idx)] = flat[:, column]
        out[base] = value
    return out


def reference_summary(name: str) -> dict[str, dict[str, float]]:
    """``{flat_name: {"mean": ..., "sd": ...}}`` from the reference draws."""
    flat_names, draws = load_reference_flat(name)
    flat = draws.reshape(-1, draws.shape[-1])
    return {
        n: {"mean": float(flat[:, i].mean()), "sd": float(flat[:, i].std(ddof=1))}
        for i, n in enumerate(flat_names)
    }


def stan_flat_values(samples: dict, flat_names: list[str]) -> dict[str, np.ndarray]:
    """Pick Stan flat names out of draws by site: ``samples[base][..., idx]``.

    ``samples`` maps site names to arrays with any number of leading (chain, draw) axes
    followed by the site shape; the number of leading axes is inferred per site.
    """
    out = {}
    for flat_name in flat_names:
        base, idx = split_flat_name(flat_name)
        if base not in samples:
            raise ValueError(
                f"Expected a site {base!r} (for {flat_name!r}) in the draws, got sites "
                f"{sorted(samples)}."
            )
        value = np.asarray(samples[base])
        lead = value.ndim - len(idx)
        out[flat_name] = value[(slice(None),) * lead + idx]
    return out


def latent_from_reference(name: str, values: dict, data: dict | None = None) -> dict:
    """The program's latent sites from reference values (which may be transformed parameters).

    The reference draws hold ``theta`` (not ``theta_trans``) for the non-centred eight
    schools and ``f`` (not ``f_tilde``) for gp_pois_regr; this inverts those maps with the
    program's own formulas. ``values`` holds arrays with a leading draw axis.
    """
    import jax
    import jax.numpy as jnp

    values = {k: jnp.asarray(v) for k, v in values.items()}
    if name == "eight_schools-eight_schools_noncentered":
        mu, tau = values["mu"], values["tau"]
        theta_trans = (values["theta"] - mu[:, None]) / tau[:, None]
        return {"theta_trans": theta_trans, "mu": mu, "tau": tau}
    if name == "gp_pois_regr-gp_pois_regr":
        data = load_data(name) if data is None else data
        x = jnp.asarray(data["x"])
        rho, alpha = values["rho"], values["alpha"]
        diff = x[:, None] - x[None, :]
        cov = alpha[:, None, None] ** 2 * jnp.exp(-0.5 * (diff / rho[:, None, None]) ** 2)
        dtype = jnp.result_type(cov)
        jitter = 1e-10 if dtype == jnp.float64 else 1e-6 * alpha[:, None, None] ** 2
        chol = jnp.linalg.cholesky(cov + jitter * jnp.eye(x.shape[0], dtype=dtype))
        f = values["f"][..., None]
        f_tilde = jax.scipy.linalg.solve_triangular(chol, f, lower=True)[..., 0]
        return {"rho": rho, "alpha": alpha, "f_tilde": f_tilde}
    return dict(values)


@eqx.filter_jit
def unconstrain(model, values: dict):
    """Flat unconstrained positions ``(num_draws, dim)`` of a NumPyro-built model at latent
    values given by site (constrained, leading draw axis), using each site's own support
    (so bounds that depend on other parameters, such as garch's ``beta1 < 1 - alpha1``,
    are honoured). Compiled with the model as an argument (no recompilation on new data)."""
    import jax
    from numpyro import handlers
    from numpyro.distributions.transforms import biject_to

    def one(point):
        fn = handlers.substitute(handlers.seed(model.model_fn, rng_seed=0), data=point)
        trace = handlers.trace(fn).get_trace(*model.args, **model.kwargs)
        unconstrained = {
            s.name: biject_to(trace[s.name]["fn"].support).inv(trace[s.name]["value"])
            for s in model.sites
        }
        return model.flatten(unconstrained)

    return jax.vmap(one)(values)


# -- data converters: data.json -> the program's keyword arguments ------------------------------
def _f32(values) -> np.ndarray:
    return np.asarray(values, np.float32)


def _data_ark(raw):
    return {"K": int(raw["K"]), "T": int(raw["T"]), "y": _f32(raw["y"])}


def _data_diamonds(raw):
    return {"N": int(raw["N"]), "K": int(raw["K"]), "X": _f32(raw["X"]), "Y": _f32(raw["Y"]),
            "prior_only": int(raw["prior_only"])}


def _data_schools(raw):
    return {"J": int(raw["J"]), "sigma": _f32(raw["sigma"]), "y": _f32(raw["y"])}


def _data_garch(raw):
    return {"T": int(raw["T"]), "y": _f32(raw["y"]), "sigma1": _f32(raw["sigma1"])}


def _data_gp(raw):
    return {"N": int(raw["N"]), "x": _f32(raw["x"]), "k": np.asarray(raw["k"], np.int32)}


def _data_hmm(raw):
    return {"N": int(raw["N"]), "K": int(raw["K"]), "y": _f32(raw["y"])}


def _data_kidiq(raw):
    return {"N": int(raw["N"]), "mom_iq": _f32(raw["mom_iq"]),
            "kid_score": _f32(raw["kid_score"])}


def _data_gauss_mix(raw):
    return {"N": int(raw["N"]), "y": _f32(raw["y"])}


#: posterior name -> (program, data converter, description, extra tags)
POSTERIORS: dict[str, tuple[Callable, Callable, str, tuple[str, ...]]] = {
    "arK-arK": (programs.ark, _data_ark, "AR(5) time series, T=200", ()),
    "diamonds-diamonds": (
        programs.diamonds, _data_diamonds,
        "Log-log regression with 24 highly correlated predictors, N=5000", ("hard",),
    ),
    "eight_schools-eight_schools_centered": (
        programs.eight_schools_centered, _data_schools,
        "Eight schools, centred (funnel; NUTS diverges)", ("hard", "hierarchical"),
    ),
    "eight_schools-eight_schools_noncentered": (
        programs.eight_schools_noncentered, _data_schools,
        "Eight schools, non-centred; theta deterministic", ("hierarchical",),
    ),
    "garch-garch11": (programs.garch11, _data_garch, "GARCH(1,1), T=200, flat priors", ()),
    "gp_pois_regr-gp_pois_regr": (
        programs.gp_pois_regr, _data_gp, "Latent GP Poisson regression, N=11; f deterministic", (),
    ),
    "hmm_example-hmm_example": (
        programs.hmm_example, _data_hmm, "2-state Gaussian HMM, N=100, forward algorithm", (),
    ),
    "kidiq-kidscore_momiq": (
        programs.kidscore_momiq, _data_kidiq, "Linear regression kid_score ~ mom_iq, N=434", (),
    ),
    "low_dim_gauss_mix-low_dim_gauss_mix": (
        programs.low_dim_gauss_mix, _data_gauss_mix,
        "Two-component 1-D normal mixture, N=1000, ordered means", (),
    ),
}


def load_data(name: str) -> dict:
    """The keyword arguments of the posterior's NumPyro program, from its ``data.json``."""
    if name not in POSTERIORS:
        raise ValueError(f"Expected one of {sorted(POSTERIORS)}, got {name!r}.")
    return POSTERIORS[name][1](_raw_data(name))


for _name, (_program, _convert, _description, _tags) in POSTERIORS.items():
    register(ZooEntry(
        f"posteriordb/{_name}", _program, partial(load_data, _name),
        f"posteriordb {_name}: {_description}",
        reference_fn=partial(load_reference_draws, _name),
        tags=("posteriordb", "reference", *_tags),
    ))
