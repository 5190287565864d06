"""The coverage driver: run an engine on many simulated data sets and check calibration.

``coverage(model, method, num_sims=N, key=key)`` draws ``theta_i`` from the prior
(``model.sample_prior``), simulates ``y_i ~ p(y | theta_i)`` (``model.simulate``), runs the
engine on every ``model.with_data(y_i)`` through :func:`ppl.infer`, and then computes

- TARP expected coverage with a bootstrap band (:mod:`ppl.diagnostics.tarp`),
- SBC ranks of every coordinate and of the log-likelihood (:mod:`ppl.diagnostics.sbc`),
- expected coverage of central, marginal-HPD and joint-HPD regions
  (:mod:`ppl.diagnostics.expected_coverage`),

each with a p-value and a verdict, plus the engine's own diagnostics per simulation.

Two ways to run the simulations, with the same result type and checks:

- **Vectorised** (NUTS and HMC, the default where available): the simulations run in chunks
  of ``chunk_size`` data sets, each chunk one compiled call of
  :func:`ppl.inference.mcmc.batched.batched_sampler` under ``vmap`` (``with_data`` swaps
  pytree leaves, so every chunk reuses the first chunk's program). With several devices the
  chunk axis is sharded over them (``devices=``, default all; ``shard_map``: each device
  runs its own slice); the last
  chunk, and a chunk not divisible by the device count, are padded with copies of a real
  simulation whose results are dropped. Finished chunks are written to ``out_dir/chunks/``,
  and a chunk's host work (diagnostics, checkpoint) overlaps the next chunk's computation.
- **Host loop** (every other engine): engines reached through ``ppl.infer`` return a
  Posterior (host arrays), so they cannot be ``vmap``-ed over data sets. Because a model's
  data are pytree leaves and engines take the model as an argument of their compiled
  programs, the loop compiles once, on the first simulation. Finished simulations are
  written to ``out_dir/sims/``, one file each.

Either way an interrupted run resumes where it stopped, and the driver counts backend
compilations per simulation (``CoverageRun.num_compilations``; in the vectorised path a
chunk's count goes to its first simulation) so that compiling once is checked, not assumed.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import time
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
from ppl.sharding import DevicesLike, Placement, gather_to_host, resolve_devices, shard_batch
from ppl.validation import check_count

__all__ = ["BATCHED_METHODS", "DEFAULT_CHUNK_SIZE", "CoverageRun", "coverage"]

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


def _manifest(model, method, num_sims, key, settings, num_rank_draws, chunk_size=None) -> dict:
    # Host-loop manifests keep their old fields, so that their checkpoints still resume;
    # a vectorised run adds its own, so that the two never mix.
    extra = {} if chunk_size is None else {"vectorized": True, "chunk_size": int(chunk_size)}
    return _jsonable({
        **extra,
        "method": method,
        "num_sims": int(num_sims),
        "key": np.asarray(jax.random.key_data(key)).tolist(),
        "settings": settings,
        "num_rank_draws": int(num_rank_draws),
        "model": type(model).__name__,
        "model_fn": getattr(getattr(model, "model_fn", None), "__qualname__", None),
        "sites": [[s.name, list(s.shape)] for s in model.sites],
    })


# -- the vectorised path -----------------------------------------------------------------------

#: Engines with a batched runner (:mod:`ppl.inference.mcmc.batched`), by method name.
BATCHED_METHODS = ("nuts", "hmc")
#: Data sets per compiled call of the vectorised path (and per checkpoint file).
DEFAULT_CHUNK_SIZE = 100
# Settings of ppl.infer's NUTS/HMC that only shape its host-side output: nothing to run.
_HOST_ONLY_SETTINGS = ("progress_bar", "log_likelihood", "warn")


def _vectorized_unsupported(method: str, settings: dict) -> str | None:
    """Why ``method`` with ``settings`` cannot run vectorised, or None when it can."""
    from ppl.inference.mcmc.batched import SETTINGS

    if method not in BATCHED_METHODS:
        return f"method {method!r} (batched runners: {', '.join(BATCHED_METHODS)})"
    unknown = sorted(set(settings) - set(SETTINGS) - set(_HOST_ONLY_SETTINGS) - {"algorithm"})
    if unknown:
        return f"setting(s) {unknown}, which the batched runner does not take"
    return None


def _resolve_vectorized(vectorized: Any, method: str, settings: dict) -> bool:
    if isinstance(vectorized, np.bool_):
        vectorized = bool(vectorized)
    if not (isinstance(vectorized, bool) or vectorized == "auto"):
        raise ValueError(f"Expected vectorized to be True, False or 'auto', got {vectorized!r}.")
    reason = _vectorized_unsupported(method, settings)
    if vectorized is True and reason is not None:
        raise ValueError(
            f"Expected an engine and settings with a batched runner for vectorized=True, got "
            f"{reason}; use vectorized='auto' or False (the host loop)."
        )
    return bool(vectorized) if vectorized != "auto" else reason is None


def _sampler_settings(method: str, settings: dict) -> dict:
    """The batched runner's keyword arguments, its defaults filled in (they fix shapes)."""
    from ppl.inference.mcmc.batched import batched_sampler

    defaults = {name: p.default for name, p in inspect.signature(batched_sampler).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    chosen = {k: v for k, v in settings.items() if k not in _HOST_ONLY_SETTINGS}
    if chosen.setdefault("algorithm", method) != method:
        raise ValueError(f"Expected no algorithm setting other than the method {method!r}, "
                         f"got algorithm={chosen['algorithm']!r}.")
    return {**defaults, **chosen}


@eqx.filter_jit
def _vectorized_chunk(model, key_data, data, z_truth, kept_index, sampler_settings, key_impl,
                      placement: Placement | None = None):
    """One chunk of simulations in one compiled call: per data set, the batched sampler,
    the constrained draws, the thinned draws and their densities.

    With several devices each runs the vmapped sampler on its own slice (``shard_map``):
    the NUTS while-loops under ``vmap`` then stop when the device's own data sets are done,
    where a partitioned ``vmap`` would agree on it across devices at every loop iteration.
    """
    from ppl.inference.mcmc.batched import batched_sampler

    def one(key_data_i, data_i, z_truth_i):
        local = model.with_data(data_i)
        run = batched_sampler(local, **sampler_settings)(
            jax.random.wrap_key_data(key_data_i, impl=key_impl))
        num_chains, num_draws = run.draws.shape[:2]
        values = jax.vmap(jax.vmap(local.to_constrained))(run.draws)
        flat = lambda v: jnp.reshape(v, (num_chains, num_draws, -1))  # noqa: E731
        # Every constrained value (deterministic sites too) for ESS and R-hat, as the host
        # loop computes them on the Posterior's samples; the latent sites for the checks.
        every = jnp.concatenate([flat(v) for v in values.values()], axis=-1)
        latent = jnp.concatenate([flat(values[s.name]) for s in local.sites], axis=-1)
        z_kept = run.draws.reshape(num_chains * num_draws, -1)[kept_index]
        record = {
            "draws": latent.reshape(num_chains * num_draws, -1)[kept_index],
            "log_likelihood_draws": jax.vmap(local.log_likelihood)(z_kept),
            "log_likelihood_truth": local.log_likelihood(z_truth_i),
            "log_density_draws": jax.vmap(local.log_density)(z_kept),
            "log_density_truth": local.log_density(z_truth_i),
        }
        return record, every, run.info

    if placement is None:
        return jax.vmap(one)(key_data, data, z_truth)
    spec = jax.sharding.PartitionSpec(placement.axis_name)
    return jax.shard_map(jax.vmap(one), mesh=placement.mesh, in_specs=(spec, spec, spec),
                         out_specs=spec, check_vma=False)(key_data, data, z_truth)


def _per_sim_nan_reduce(fn, x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # an all-NaN row is NaN, as in the host loop
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(x, axis=-1).astype(np.float64)


def _chunk_diagnostics(every: np.ndarray, info, num_chains: int,
                       warn: bool) -> dict[str, np.ndarray]:
    """The host loop's ``diag_*`` entries for a chunk but the wall time, one value per
    simulation.

    ESS and rank-normalised R-hat come from :mod:`ppl.arviz_bridge` in one call per chunk
    (the simulations side by side as extra coordinates)."""
    from ppl import arviz_bridge

    num, _, num_draws, width = every.shape
    side_by_side = np.moveaxis(every, 0, 2).reshape(num_chains, num_draws, num * width)
    min_ess = max_rhat = np.full(num, np.nan)
    try:
        min_ess = _per_sim_nan_reduce(np.nanmin, arviz_bridge.ess(side_by_side).reshape(num, width))
        if num_chains > 1:
            max_rhat = _per_sim_nan_reduce(
                np.nanmax, arviz_bridge.rhat(side_by_side).reshape(num, width))
    except Exception:  # diagnostics are best effort, as in the host loop
        pass
    divergences = np.asarray(info.num_divergences, np.float64)
    # The messages the host driver would have emitted: stuck chains, divergences, R-hat.
    num_warnings = (np.asarray(info.num_stuck_chains) > 0).astype(np.float64)
    if warn:
        num_warnings += divergences > 0
        num_warnings += np.nan_to_num(max_rhat) > 1.01
    return {
        "diag_num_gradient_evals": np.asarray(info.num_gradient_evals, np.float64),
        "diag_num_divergences": divergences,
        "diag_num_warnings": num_warnings,
        "diag_min_ess": min_ess,
        "diag_max_rhat": max_rhat,
    }


def _check_chunk_info(info, sims: np.ndarray, sampler_settings: dict) -> None:
    num_chains = sampler_settings["num_chains"]
    no_start = sims[np.asarray(info.num_invalid_starts) >= num_chains]
    if no_start.size:
        raise ValueError(
            f"The log-density (or its gradient) is NaN or -inf at every initial point tried "
            f"for simulation(s) {no_start.tolist()}. Check the model: priors whose support "
            "does not contain the data, parameters used outside their constraint."
        )
    stuck = sims[np.asarray(info.num_stuck_chains) > 0]
    if stuck.size and sampler_settings["stuck_chains"] == "raise":
        raise RuntimeError(
            f"Stuck chain(s) at the end of warm-up in simulation(s) {stuck.tolist()} "
            "(stuck_chains='raise'); use stuck_chains='restart' to restart them from a "
            "healthy chain."
        )


def _run_vectorized(model, method, settings, sims_data, z_true, run_keys, num_rank_draws,
                    chunk_size, chunks_dir, progress_bar, devices: DevicesLike = None):
    """The chunked, vmapped simulations: ``(records, compiles)`` as the host loop gives."""
    sampler_settings = _sampler_settings(method, settings)
    num_chains, num_draws = sampler_settings["num_chains"], sampler_settings["num_samples"]
    if num_chains * num_draws < num_rank_draws:
        raise ValueError(
            f"Expected the engine to return at least num_rank_draws={num_rank_draws} draws, "
            f"got {num_chains * num_draws}; lower num_rank_draws or ask the engine for more "
            "draws."
        )
    # The same draws as thin_draws keeps on the host, as flat (chain * draw) indices.
    kept_index = thin_draws(np.arange(num_chains * num_draws).reshape(num_chains, num_draws),
                            num_rank_draws)
    num_sims = int(z_true.shape[0])
    placement = resolve_devices(devices, "sims")
    num_devices = placement.num_devices
    # Every call has the same padded batch (one compiled program), a multiple of the device
    # count so that it splits without more padding.
    batch = -(-min(chunk_size, num_sims) // num_devices) * num_devices
    key_impl = jax.random.key_impl(run_keys)
    key_data = np.asarray(jax.random.key_data(run_keys))
    data_np = jax.tree_util.tree_map(np.asarray, sims_data)
    z_np = np.asarray(z_true)
    warn = bool(settings.get("warn", True))
    compiles = np.full(num_sims, -1)
    by_chunk: dict[int, dict] = {}
    clock = [time.perf_counter()]

    def finish(c, sims, path, outputs):
        """Bring a dispatched chunk to the host, check it, add diagnostics, checkpoint it."""
        record, every, info = gather_to_host(outputs)
        real = slice(0, sims.size)  # the mask: the real simulations come first
        info = jax.tree_util.tree_map(lambda x: np.asarray(x)[real], info)
        _check_chunk_info(info, sims, sampler_settings)
        stacked = {k: np.asarray(v)[real] for k, v in record.items()}
        stacked.update(_chunk_diagnostics(np.asarray(every)[real], info, num_chains, warn))
        # Chunks overlap (see below): a chunk's wall time is the clock's advance since the
        # previous chunk finished, so that the times add up to the run's.
        now = time.perf_counter()
        stacked["diag_wall_time"] = np.full(sims.size, (now - clock[0]) / sims.size)
        clock[0] = now
        if path is not None:
            _save_atomic(path, {**stacked, "sims": sims})
        by_chunk[c] = stacked

    num_chunks = -(-num_sims // chunk_size)
    pending = None
    with ProgressBar(num_sims if ProgressBar.wanted(progress_bar) else 0,
                     desc=f"coverage ({method}, vectorised)") as bar:
        for c in range(num_chunks):
            sims = np.arange(c * chunk_size, min((c + 1) * chunk_size, num_sims))
            path = None if chunks_dir is None else chunks_dir / f"chunk_{c:05d}.npz"
            if path is not None and path.exists():
                with np.load(path) as f:
                    stacked = {k: f[k] for k in f.files}
                if not np.array_equal(stacked.pop("sims"), sims):
                    raise ValueError(f"Expected {path} to hold simulations {sims[0]}-{sims[-1]}, "
                                     "got others; use another out_dir or resume=False.")
                by_chunk[c] = stacked
                clock[0] = time.perf_counter()
            else:
                before = _COMPILES[0]
                # Padding repeats the chunk's last simulation; its results are dropped.
                take = np.minimum(np.arange(batch), sims.size - 1) + sims[0]
                inputs = jax.tree_util.tree_map(lambda x, take=take: x[take],
                                                (key_data, data_np, z_np))
                if num_devices > 1 or devices is not None:
                    inputs = shard_batch(inputs, "sims", placement).array
                # Dispatch is asynchronous: the previous chunk's host work (diagnostics,
                # checkpoint) runs while this one computes.
                outputs = _vectorized_chunk(
                    model, *inputs, kept_index, sampler_settings, key_impl,
                    placement if num_devices > 1 else None)
                compiles[sims] = 0
                compiles[sims[0]] = _COMPILES[0] - before
                if pending is not None:
                    finish(*pending)
                pending = (c, sims, path, outputs)
            bar.update_to(sum(len(v["draws"]) for v in by_chunk.values()))
        if pending is not None:
            finish(*pending)
            bar.update_to(num_sims)
    records = [{k: v[j] for k, v in by_chunk[c].items()} for c in range(num_chunks)
               for j in range(len(by_chunk[c]["draws"]))]
    return records, compiles


def _changed_fields(previous: dict, manifest: dict) -> list[str]:
    """Fields that differ between two manifests; inside ``settings``, the setting names."""
    changed = []
    for k in sorted(manifest.keys() | previous.keys()):
        old, new = previous.get(k), manifest.get(k)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed.extend(f"{k}.{sub}" for sub in sorted(old.keys() | new.keys())
                           if old.get(sub) != new.get(sub))
        else:
            changed.append(k)
    return changed


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
    vectorized: bool | str = "auto",
    chunk_size: int | None = None,
    devices: DevicesLike = None,
    **settings: Any,
) -> CoverageRun:
    """Calibration of an engine on data simulated from the model's prior predictive.

    Args:
        model: a ppl Model with a prior sampler and a simulator (``ppl.from_numpyro``
            models have both).
        method: an engine name for :func:`ppl.infer`.
        num_sims: number of simulated data sets.
        key: PRNG key (or int seed); the whole run is a deterministic function of it.
        out_dir: where finished simulations are checkpointed (``out_dir/sims``, or
            ``out_dir/chunks`` when vectorised); None to keep everything in memory.
        resume: reuse checkpoints in ``out_dir`` written by a run with the same settings.
        num_rank_draws: ``L``, draws kept per simulation (evenly thinned along chains, so
            MCMC draws are near-independent when ``L`` is at most the ESS).
        level: significance level of the verdicts.
        num_bootstrap: TARP bootstrap rounds.
        progress_bar: a bar over simulations (default: when stderr is a terminal).
        vectorized: ``True``: run the simulations in vmapped chunks through the engine's
            batched runner (NUTS and HMC; :mod:`ppl.inference.mcmc.batched`), refusing
            engines and settings it does not cover; ``False``: one at a time through
            :func:`ppl.infer`; ``"auto"`` (default): vectorised where it can be.
        chunk_size: data sets per compiled call and per checkpoint when vectorised (default
            :data:`DEFAULT_CHUNK_SIZE`); a resumed run must use the same.
        devices: where the simulations run (:func:`ppl.sharding.resolve_devices`; default
            all devices). Vectorised, each chunk's data sets are split over them (padded to
            a multiple of their count with copies of a real one, whose results are dropped;
            the results do not depend on the device count); in the host loop ``devices`` is
            passed on to the engine. Not part of the checkpoint manifest: a run may resume
            on other devices.
        **settings: passed to the engine (for NUTS/HMC, ``progress_bar=False`` and
            ``log_likelihood=False`` by default; vectorised, ``progress_bar`` and
            ``log_likelihood`` are ignored and ``warn`` only decides what counts as a
            warning).

    Returns:
        A :class:`CoverageRun`; ``run.verdicts`` and ``run.summary()``.

    Example:
        >>> from ppl import models
        >>> run = coverage(models.get("conjugate_normal").build(), "nuts", num_sims=20,
        ...                key=0, num_chains=2, num_warmup=200, num_samples=200)  # doctest: +SKIP
    """
    if not isinstance(model, AbstractModel):
        raise TypeError(f"Expected a ppl Model, got {type(model).__name__}.")
    check_count("num_sims", num_sims, 2)
    check_count("num_rank_draws", num_rank_draws)
    if not 0.0 < level < 1.0:
        raise ValueError(f"Expected level in (0, 1), got {level!r}.")
    if method in ("nuts", "hmc"):
        settings.setdefault("progress_bar", False)
        settings.setdefault("log_likelihood", False)
    use_vectorized = _resolve_vectorized(vectorized, method, settings)
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK_SIZE
    else:
        check_count("chunk_size", chunk_size)
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
        sims_dir = out / ("chunks" if use_vectorized else "sims")
        sims_dir.mkdir(parents=True, exist_ok=True)
        manifest = _manifest(model, method, num_sims, key, settings, num_rank_draws,
                             int(chunk_size) if use_vectorized else None)
        manifest_path = out / "manifest.json"
        if manifest_path.exists() and resume:
            previous = json.loads(manifest_path.read_text())
            if previous != manifest:
                changed = _changed_fields(previous, manifest)
                raise ValueError(
                    f"Expected out_dir={str(out)!r} to hold a run with the same settings to "
                    f"resume, got one that differs in {changed}; use another out_dir or "
                    "resume=False."
                )
        elif not resume:
            for pattern in ("sims/sim_*.npz", "chunks/chunk_*.npz"):
                for stale in out.glob(pattern):
                    stale.unlink()
        manifest_path.write_text(json.dumps(manifest, indent=1))

    if use_vectorized:
        records, compiles = _run_vectorized(
            model, method, settings, data, z_true, run_keys, int(num_rank_draws),
            int(chunk_size), sims_dir, progress_bar, devices)
        return _assemble(method, names, truths, records, compiles, settings, check_key,
                         level, num_bootstrap)
    unconstrain = _unconstrain_fn(model)
    engine_settings = settings if devices is None else {**settings, "devices": devices}
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
                                  engine_settings, int(num_rank_draws), unconstrain)
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
