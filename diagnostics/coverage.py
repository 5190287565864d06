"""The coverage driver: run an engine on many simulated data sets and check calibration.

``coverage(model, method, num_sims=N, key=key)`` draws ``theta_i`` from the prior
(``model.sample_prior``), simulates ``y_i ~ p(y | theta_i)`` (``model.simulate``), runs the
engine on every ``model.with_data(y_i)`` through :func:`ppl.infer`, and then computes

- TARP expected coverage with a bootstrap band (:mod:`ppl.diagnostics.tarp`),
- SBC ranks of every coordinate and of the log-likelihood (:mod:`ppl.diagnostics.sbc`),
- expected coverage of central, marginal-HPD and joint-HPD regions
  (:mod:`ppl.diagnostics.expected_coverage`),

each with a p-value and a verdict, plus the engine's own diagnostics per simulation.

The simulations run in a host loop: engines reached through ``ppl.infer`` return a
Posterior (host arrays), so they cannot be ``vmap``-ed over data sets. Because a model's
data are pytree leaves and engines take the model as an argument of their compiled
programs, the loop compiles once, on the first simulation; the driver counts backend
compilations per simulation (``CoverageRun.num_compilations``) so that this is checked,
not assumed. Finished simulations are written to ``out_dir/sims/`` one file each, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ppl.diagnostics.expected_coverage import ExpectedCoverage, expected_coverage
from ppl.diagnostics.sbc import SBCResult, sbc_ranks, sbc_test, thin_draws
from ppl.diagnostics.tarp import TARPResult, tarp

from ppl.infer import as_key, infer
from ppl.model import AbstractModel
from ppl.progress import ProgressBar

__all__ = ["CoverageRun", "coverage"]

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_COMPILES = [0]
_LISTENING = [False]


def _count_compiles(event: str, duration: float, **kwargs) -> None:
    if event == _COMPILE_EVENT:
        _COMPILES[0] += 1


def _listen_to_compiles() -> None:
    if not _LISTENING[0]:
        jax.monitoring.register_event_duration_secs_listener(_count_compiles)
        _LISTENING[0] = True


@dataclasses.dataclass(frozen=True, eq=False)
class CoverageRun:
    """What :func:`coverage` found.

    Attributes:
        method: the engine's name.
        names: coordinate names of the flattened constrained latent sites.
        truths: ``(num_sims, dim)`` the parameters the data were simulated from.
        draws: ``(num_sims, num_rank_draws, dim)`` thinned posterior draws.
        log_likelihood_draws, log_likelihood_truths: ``(num_sims, L)`` and ``(num_sims,)``,
            or None when the engine gave no unconstrained draws and the model cannot map
            constrained draws back.
        log_density_draws, log_density_truths: the same for the log posterior density.
        diagnostics: per-simulation engine diagnostics (wall time, gradient evaluations,
            divergences, minimum ESS, maximum R-hat, number of warnings), arrays by name.
        num_compilations: ``(num_sims,)`` backend compilations during each simulation
            (-1 for simulations loaded from a checkpoint).
        tarp, sbc, expected: the three calibration checks.
        settings: the engine settings used.
        level: significance level of the verdicts.
    """

    method: str
    names: tuple[str, ...]
    truths: np.ndarray
    draws: np.ndarray
    log_likelihood_draws: np.ndarray | None
    log_likelihood_truths: np.ndarray | None
    log_density_draws: np.ndarray | None
    log_density_truths: np.ndarray | None
    diagnostics: dict[str, np.ndarray]
    num_compilations: np.ndarray
    tarp: TARPResult
    sbc: SBCResult
    expected: ExpectedCoverage
    settings: dict[str, Any]
    level: float = 0.01

    @property
    def num_sims(self) -> int:
        return int(self.truths.shape[0])

    @property
    def verdicts(self) -> dict[str, bool]:
        """Pass (True) or fail per check at ``level`` (Bonferroni inside each check)."""
        return {
            "tarp": self.tarp.passed(self.level),
            "sbc": self.sbc.passed(self.level),
            "coverage": self.expected.passed(self.level),
        }

    @property
    def passed(self) -> bool:
        return all(self.verdicts.values())

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary with sections ``tarp``, ``sbc``, ``coverage``, ``engine``."""
        verdict = lambda ok: "pass" if ok else "fail"  # noqa: E731
        v = self.verdicts
        e = self.expected
        diag = self.diagnostics
        return {
            "method": self.method,
            "num_sims": self.num_sims,
            "num_rank_draws": int(self.draws.shape[1]),
            "parameters": list(self.names),
            "level": self.level,
            "verdict": verdict(self.passed),
            "tarp": {
                "verdict": verdict(v["tarp"]),
                "p_value": self.tarp.p_value,
                "atc": self.tarp.atc,
                "alpha": self.tarp.alpha.tolist(),
                "ecp": self.tarp.ecp.tolist(),
                "ecp_lower": self.tarp.ecp_lower.tolist(),
                "ecp_upper": self.tarp.ecp_upper.tolist(),
            },
            "sbc": {
                "verdict": verdict(v["sbc"]),
                "quantities": list(self.sbc.names),
                "p_values": dict(zip(self.sbc.names, self.sbc.p_values.tolist(), strict=True)),
                "chi2_p_values": dict(
                    zip(self.sbc.names, self.sbc.chi2_p_values.tolist(), strict=True)),
                "num_draws": self.sbc.num_draws,
            },
            "coverage": {
                "verdict": verdict(v["coverage"]),
                "min_p_value": e.min_p_value,
                "num_tests": e.num_tests,
                "levels": e.levels.tolist(),
                "central": {n: e.central[:, d].tolist() for d, n in enumerate(e.names)},
                "central_nominal": e.central_nominal.tolist(),
                "hpd": {n: e.hpd[:, d].tolist() for d, n in enumerate(e.names)},
                "hpd_nominal": e.hpd_nominal.tolist(),
                "joint_hpd": None if e.joint_hpd is None else e.joint_hpd.tolist(),
            },
            "engine": {
                "settings": _jsonable(self.settings),
                "total_wall_time": float(np.sum(diag["wall_time"])),
                "mean_wall_time": float(np.mean(diag["wall_time"])),
                "total_gradient_evals": int(np.sum(diag["num_gradient_evals"])),
                "sims_with_divergences": int(np.sum(diag["num_divergences"] > 0)),
                "total_divergences": int(np.sum(diag["num_divergences"])),
                "min_ess": _nan_reduce(np.nanmin, diag["min_ess"]),
                "max_rhat": _nan_reduce(np.nanmax, diag["max_rhat"]),
                "sims_with_warnings": int(np.sum(diag["num_warnings"] > 0)),
                "compilations_first_sim": int(self.num_compilations[0]),
                "compilations_after_first_sim": int(
                    np.sum(np.maximum(self.num_compilations[1:], 0))
                ),
            },
        }


def _nan_reduce(fn, x) -> float | None:
    x = np.asarray(x, dtype=float)
    return None if np.all(np.isnan(x)) else float(fn(x))


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                 else repr(o)))


# -- helpers on one simulation -----------------------------------------------------------------


def _latent_names(model: AbstractModel, values: dict) -> tuple[str, ...]:
    names = []
    for site in model.sites:
        shape = np.shape(values[site.name])
        if shape == ():
            names.append(site.name)
        else:
            names.extend(f"{site.name}[{','.join(map(str, i))}]" for i in np.ndindex(shape))
    return tuple(names)


def _flat_constrained(model: AbstractModel, values: dict, batch_ndim: int) -> np.ndarray:
    parts = []
    for site in model.sites:
        v = np.asarray(values[site.name])
        parts.append(v.reshape(v.shape[:batch_ndim] + (-1,)))
    return np.concatenate(parts, axis=-1)


@eqx.filter_jit
def _prior_and_data(model, prior_key, sim_key, num_sims: int):
    z = model.sample_prior(prior_key, num_sims)
    data = jax.vmap(model.simulate)(jax.random.split(sim_key, num_sims), z)
    values = jax.vmap(model.to_constrained)(z)
    return z, data, values


@eqx.filter_jit
def _densities(model, z_draws, z_truth):
    ll = jax.vmap(model.log_likelihood)(z_draws)
    ld = jax.vmap(model.log_density)(z_draws)
    return ll, ld, model.log_likelihood(z_truth), model.log_density(z_truth)


@eqx.filter_jit
def _unconstrain_batch(model, values):
    return jax.vmap(jax.vmap(model.unconstrain))(values)


def _unconstrain_fn(model: AbstractModel):
    """``dict of constrained (chain, draw, *shape) -> (chain, draw, dim)`` through
    ``Model.unconstrain``."""

    def fn(values, batch):
        assert batch == 2, "draws come as (chain, draw, ...)"
        return np.asarray(_unconstrain_batch(model, {k: jnp.asarray(v) for k, v in values.items()}))

    return fn


def _engine_diagnostics(post, names) -> dict[str, float]:
    from ppl import arviz_bridge

    stats = post.stats
    out = {
        "wall_time": float(post.meta.get("wall_time", np.nan)),
        "num_gradient_evals": float(post.meta.get("num_gradient_evals", 0) or 0),
        "num_divergences": float(np.sum(stats["diverging"])) if "diverging" in stats else 0.0,
        "num_warnings": float(len(post.meta.get("warnings", []) or [])),
        "min_ess": np.nan,
        "max_rhat": np.nan,
    }
    if post.log_weights is None:
        try:
            x = np.concatenate(
                [v.reshape(v.shape[:2] + (-1,)) for k, v in post.samples.items()], axis=-1
            )
            ess = arviz_bridge.ess(x)
            out["min_ess"] = float(np.nanmin(ess))
            if x.shape[0] > 1:
                out["max_rhat"] = float(np.nanmax(arviz_bridge.rhat(x)))
        except Exception:  # diagnostics are best effort
            pass
    return out


def _run_one(model, method, key, z_truth, settings, num_rank_draws, unconstrain):
    """One simulation: engine, thinned draws, densities, diagnostics (host arrays)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = infer(model, method, key=key, **settings)
    post = post.resample(seed=0) if post.log_weights is not None else post
    names_in_order = [s.name for s in model.sites]
    missing = [n for n in names_in_order if n not in post.samples]
    if missing:
        raise ValueError(f"Expected the engine's Posterior to hold sites {missing}, got "
                         f"{sorted(post.samples)}.")
    constrained = _flat_constrained(model, post.samples, 2)  # (chain, draw, D)
    if post.unconstrained is not None:
        unconstrained = np.asarray(post.unconstrained)
    elif unconstrain is not None:
        unconstrained = unconstrain({n: post.samples[n] for n in names_in_order}, 2)
    else:
        unconstrained = None
    total = constrained.shape[0] * constrained.shape[1]
    if total < num_rank_draws:
        raise ValueError(
            f"Expected the engine to return at least num_rank_draws={num_rank_draws} draws, "
            f"got {total}; lower num_rank_draws or ask the engine for more draws."
        )
    width = constrained.shape[-1]
    both = constrained if unconstrained is None else np.concatenate(
        [constrained, unconstrained], axis=-1)
    kept = thin_draws(both, num_rank_draws)
    record = {"draws": kept[:, :width]}
    if unconstrained is not None:
        ll, ld, ll_t, ld_t = _densities(model, jnp.asarray(kept[:, width:]), z_truth)
        record.update(
            log_likelihood_draws=np.asarray(ll), log_likelihood_truth=np.asarray(ll_t),
            log_density_draws=np.asarray(ld), log_density_truth=np.asarray(ld_t),
        )
    diag = _engine_diagnostics(post, names_in_order)
    diag["num_warnings"] = max(diag["num_warnings"], float(len(caught)))
    record.update({f"diag_{k}": np.asarray(v) for k, v in diag.items()})
    return record


def _save_atomic(path: Path, record: dict) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **record)
    os.replace(tmp, path)


def _manifest(model, method, num_sims, key, settings, num_rank_draws) -> dict:
    return _jsonable({
        "method": method,
        "num_sims": int(num_sims),
        "key": np.asarray(jax.random.key_data(key)).tolist(),
        "settings": settings,
        "num_rank_draws": int(num_rank_draws),
        "model": type(model).__name__,
        "model_fn": getattr(getattr(model, "model_fn", None), "__qualname__", None),
        "sites": [[s.name, list(s.shape)] for s in model.sites],
    })


def coverage(
    model: AbstractModel,
    method: str = "nuts",
    *,
    num_sims: int = 100,
    key: Any,
    out_dir: str | os.PathLike | None = None,
    resume: bool = True,
    num_rank_draws: int = 100,
    level: float = 0.01,
    num_bootstrap: int = 100,
    progress_bar: bool | None = None,
    **settings: Any,
) -> CoverageRun:
    """Calibration of an engine on data simulated from the model's prior predictive.

    Args:
        model: a ppl Model with a prior sampler and a simulator (``ppl.from_numpyro``
            models have both).
        method: an engine name for :func:`ppl.infer`.
        num_sims: number of simulated data sets.
        key: PRNG key (or int seed); the whole run is a deterministic function of it.
        out_dir: where finished simulations are checkpointed (``out_dir/sims``); None to
            keep everything in memory.
        resume: reuse checkpoints in ``out_dir`` written by a run with the same settings.
        num_rank_draws: ``L``, draws kept per simulation (evenly thinned along chains, so
            MCMC draws are near-independent when ``L`` is at most the ESS).
        level: significance level of the verdicts.
        num_bootstrap: TARP bootstrap rounds.
        progress_bar: a bar over simulations (default: when stderr is a terminal).
        **settings: passed to the engine (for NUTS/HMC, ``progress_bar=False`` and
            ``log_likelihood=False`` by default).

    Returns:
        A :class:`CoverageRun`; ``run.verdicts`` and ``run.summary()``.

    Example:
        >>> from ppl import models
        >>> run = coverage(models.get("conjugate_normal").build(), "nuts", num_sims=20,
        ...                key=0, num_chains=2, num_warmup=200, num_samples=200)  # doctest: +SKIP
    """
    if not isinstance(model, AbstractModel):
        raise TypeError(f"Expected a ppl Model, got {type(model).__name__}.")
    if isinstance(num_sims, bool) or not isinstance(num_sims, (int, np.integer)) or num_sims < 2:
        raise ValueError(f"Expected num_sims to be an integer >= 2, got {num_sims!r}.")
    if isinstance(num_rank_draws, bool) or not isinstance(num_rank_draws, (int, np.integer)) \
            or num_rank_draws < 1:
        raise ValueError(f"Expected num_rank_draws to be an integer >= 1, got {num_rank_draws!r}.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"Expected level in (0, 1), got {level!r}.")
    if method in ("nuts", "hmc"):
        settings.setdefault("progress_bar", False)
        settings.setdefault("log_likelihood", False)
    key = as_key(key)
    _listen_to_compiles()
    prior_key, sim_key, run_key, check_key = jax.random.split(key, 4)
    z_true, data, values = _prior_and_data(model, prior_key, sim_key, int(num_sims))
    names = _latent_names(model, jax.tree_util.tree_map(lambda v: v[0], values))
    truths = _flat_constrained(model, values, 1)
    run_keys = jax.random.split(run_key, num_sims)

    sims_dir = None
    if out_dir is not None:
        out = Path(out_dir)
        sims_dir = out / "sims"
        sims_dir.mkdir(parents=True, exist_ok=True)
        manifest = _manifest(model, method, num_sims, key, settings, num_rank_draws)
        manifest_path = out / "manifest.json"
        if manifest_path.exists() and resume:
            previous = json.loads(manifest_path.read_text())
            if previous != manifest:
                changed = sorted(k for k in manifest if previous.get(k) != manifest[k])
                raise ValueError(
                    f"Expected out_dir={str(out)!r} to hold a run with the same settings to "
                    f"resume, got one that differs in {changed}; use another out_dir or "
                    "resume=False."
                )
        elif not resume:
            for stale in sims_dir.glob("sim_*.npz"):
                stale.unlink()
        manifest_path.write_text(json.dumps(manifest, indent=1))

    unconstrain = _unconstrain_fn(model)
    records, compiles = [], np.full(num_sims, -1)
    with ProgressBar(num_sims if ProgressBar.wanted(progress_bar) else 0,
                     desc=f"coverage ({method})") as bar:
        for i in range(num_sims):
            path = None if sims_dir is None else sims_dir / f"sim_{i:05d}.npz"
            if path is not None and path.exists():
                with np.load(path) as f:
                    records.append({k: f[k] for k in f.files})
            else:
                before = _COMPILES[0]
                data_i = jax.tree_util.tree_map(lambda v, i=i: v[i], data)
                record = _run_one(model.with_data(data_i), method, run_keys[i], z_true[i],
                                  settings, int(num_rank_draws), unconstrain)
                compiles[i] = _COMPILES[0] - before
                if path is not None:
                    _save_atomic(path, record)
                records.append(record)
            bar.update_to(i + 1)
    return _assemble(method, names, truths, records, compiles, settings, check_key,
                     level, num_bootstrap)


def _assemble(method, names, truths, records, compiles, settings, key, level, num_bootstrap):
    stack = lambda k: np.stack([r[k] for r in records])  # noqa: E731
    draws = stack("draws")
    has_density = all("log_likelihood_draws" in r for r in records)
    ll_d = stack("log_likelihood_draws") if has_density else None
    ll_t = stack("log_likelihood_truth") if has_density else None
    ld_d = stack("log_density_draws") if has_density else None
    ld_t = stack("log_density_truth") if has_density else None
    diagnostics = {k[5:]: stack(k) for k in records[0] if k.startswith("diag_")}
    tarp_key, rank_key = jax.random.split(key)
    tarp_result = tarp(draws, truths, key=tarp_key, num_bootstrap=num_bootstrap)
    quantities, quantity_truths, q_names = draws, truths, list(names)
    if has_density:
        quantities = np.concatenate([draws, ll_d[..., None]], axis=-1)
        quantity_truths = np.concatenate([truths, ll_t[:, None]], axis=-1)
        q_names.append("log_likelihood")
    ranks = sbc_ranks(quantities, quantity_truths, key=rank_key)
    sbc_result = sbc_test(ranks, draws.shape[1], q_names)
    expected = expected_coverage(draws, truths, names=names, log_density_draws=ld_d,
                                 log_density_truths=ld_t)
    return CoverageRun(
        method=method, names=tuple(names), truths=truths, draws=draws,
        log_likelihood_draws=ll_d, log_likelihood_truths=ll_t,
        log_density_draws=ld_d, log_density_truths=ld_t, diagnostics=diagnostics,
        num_compilations=compiles, tarp=tarp_result, sbc=sbc_result, expected=expected,
        settings=dict(settings), level=float(level),
    )
