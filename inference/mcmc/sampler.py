"""The NUTS/HMC driver behind ``ppl.infer(model, method="nuts" | "hmc")``.

Chains run vectorised (``vmap``), warm-up and sampling share one ``lax.scan`` (so the
kernel is compiled once), and the chain axis is sharded over the devices of ``devices=``
(default: all of them, every process's under ``jax.distributed``; :mod:`ppl.sharding`).
A chain count that does not divide by the device count is padded with copies of the last
chain, which are dropped on the host; chains never interact, so the draws equal an
unsharded run's. The model is an *argument* of the compiled program, so a second data set of
the same shapes, or a second call with other keys, reuses the compiled program.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ppl.inference.checkpoint import RunCheckpoint, describe_model, fingerprint
from ppl.inference.mcmc import kernels
from ppl.inference.mcmc.adaptation import warmup_schedule, window_adaptation

from ppl.infer import as_key
from ppl.model import AbstractModel
from ppl.posterior import Posterior
from ppl.progress import ProgressBar
from ppl.sharding import DevicesLike, Placement, gather_to_host, resolve_devices, shard_batch
from ppl.validation import check_count

__all__ = ["sample", "sample_nuts", "sample_hmc", "find_initial_positions",
           "find_stuck_chains"]

STUCK_CHAIN_ACTIONS = ("restart", "warn", "raise", "ignore")


class _Settings(NamedTuple):
    algorithm: str
    num_chains: int
    num_warmup: int
    num_samples: int
    thinning: int
    target_accept: float
    dense_mass: bool
    max_tree_depth: int
    num_integration_steps: int
    initial_step_size: float
    stuck_chains: str = "restart"


class _ChainState(NamedTuple):
    kernel_state: Any
    adaptation_state: Any


# -- initialisation ---------------------------------------------------------------------------


@eqx.filter_jit
def _evaluate_candidates(model, key, num_candidates: int):
    # One compiled call: drawing the candidates eagerly compiled each op separately.
    candidates = jax.vmap(model.init_position)(jax.random.split(key, num_candidates))
    value, grad = jax.vmap(jax.value_and_grad(model.log_density))(candidates)
    ok = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad), axis=-1)
    return candidates, value, ok


def find_initial_positions(key, model: AbstractModel, num_chains: int, num_tries: int = 100):
    """One starting point per chain where the log-density and its gradient are finite.

    Draws ``num_tries`` candidates per chain from ``model.init_position`` and keeps the
    first valid one; raises a ``ValueError`` naming the problem if a chain has none.
    """
    candidates, value, ok = _evaluate_candidates(model, key, num_chains * num_tries)
    candidates = np.asarray(candidates)
    ok = np.asarray(ok).reshape(num_chains, num_tries)
    if not ok.any():
        bad = np.asarray(value)[:5]
        raise ValueError(
            f"The log-density (or its gradient) is NaN or -inf at all {num_chains * num_tries} "
            f"initial points tried (first values: {bad}). Check the model: priors whose support "
            "does not contain the data, parameters used outside their constraint, or NaN in data."
        )
    first = np.argmax(ok, axis=1)
    missing = np.flatnonzero(~ok.any(axis=1))
    if missing.size:
        # A chain without a valid candidate borrows a valid one from the whole pool.
        pool = np.flatnonzero(ok.reshape(-1))
        flat_idx = np.arange(num_chains) * num_tries + first
        flat_idx[missing] = pool[np.arange(missing.size) % pool.size]
    else:
        flat_idx = np.arange(num_chains) * num_tries + first
    return jnp.asarray(candidates[flat_idx])


# -- the compiled run -------------------------------------------------------------------------


def _build_step(model, settings: _Settings):
    if settings.algorithm == "nuts":

        def kernel(key, state, step_size, imm):
            algo = kernels.nuts(
                model, step_size=step_size, inverse_mass_matrix=imm,
                max_num_doublings=settings.max_tree_depth,
            )
            return algo.step(key, state)

        def init(position):
            return kernels.nuts(model, step_size=1.0, inverse_mass_matrix=None).init(position)
    else:

        def kernel(key, state, step_size, imm):
            # A fixed path length can be near-periodic on Gaussian-like targets and then
            # mixes badly; jittering the step size by +-20% breaks that (Neal 2011, 5.4.2.2).
            jitter_key, key = jax.random.split(key)
            step_size = step_size * jax.random.uniform(jitter_key, minval=0.8, maxval=1.2)
            algo = kernels.hmc(
                model, step_size=step_size, inverse_mass_matrix=imm,
                num_integration_steps=settings.num_integration_steps,
            )
            return algo.step(key, state)

        def init(position):
            return kernels.hmc(model, step_size=1.0, inverse_mass_matrix=None).init(position)

    return init, kernel


def _info_stats(settings: _Settings, info, state, step_size) -> dict[str, jax.Array]:
    stats = {
        "acceptance_rate": info.acceptance_rate,
        "diverging": info.is_divergent,
        "energy": info.energy,
        "step_size": step_size,
        "lp": state.logdensity,
    }
    if settings.algorithm == "nuts":
        stats["tree_depth"] = info.num_trajectory_expansions
        stats["n_steps"] = jnp.asarray(info.num_integration_steps, jnp.int32)
    else:
        stats["n_steps"] = jnp.asarray(settings.num_integration_steps, jnp.int32)
    return stats


def _chain_functions(model, settings: _Settings):
    """``init_chain(position)`` and ``chain_step(key, chain, i, is_slow, is_window_end)``."""
    init, kernel = _build_step(model, settings)
    adapt_init, adapt_update, adapt_final = window_adaptation(
        not settings.dense_mass, settings.target_accept
    )
    num_warmup = settings.num_warmup

    def init_chain(position):
        return _ChainState(
            init(position), adapt_init(position.shape[0], settings.initial_step_size)
        )

    def chain_step(key, chain, i, is_slow, is_window_end):
        adapt = chain.adaptation_state
        state, info = kernel(key, chain.kernel_state, adapt.step_size, adapt.inverse_mass_matrix)
        new_adapt = jax.lax.cond(
            i < num_warmup,
            lambda a: adapt_update(a, is_slow, is_window_end, state.position, info.acceptance_rate),
            lambda a: a,
            adapt,
        )
        # At the end of warm-up, fix the averaged step size for sampling.
        step_size, imm = adapt_final(new_adapt)
        new_adapt = jax.lax.cond(
            i == num_warmup - 1,
            lambda a: a._replace(step_size=step_size, inverse_mass_matrix=imm),
            lambda a: a,
            new_adapt,
        )
        stats = _info_stats(settings, info, state, adapt.step_size)
        return _ChainState(state, new_adapt), (state.position, stats)

    return init_chain, chain_step


@eqx.filter_jit
def _init_chains(model, positions, settings: _Settings):
    init_chain, _ = _chain_functions(model, settings)
    return jax.vmap(init_chain)(positions)


@eqx.filter_jit
def _run_chunk(model, chains, key, xs, settings: _Settings, placement: Placement | None = None):
    """Advance all chains over one chunk of steps (warm-up and sampling alike).

    ``xs = (step, is_slow, is_window_end, active)`` per step; inactive steps (padding of the
    last chunk) leave the chains unchanged and their outputs are dropped by the caller. The
    whole run is one chunk without a progress bar; with one, ~100 chunks driven from Python.
    The compiled program has no host callback, so JAX's persistent cache can store it either
    way.

    With a ``placement`` every device runs the whole chunk on its own slice of the chains
    (``shard_map``), so NUTS's while-loops under ``vmap`` stop when the device's own chains
    are done: a partitioned ``vmap`` would agree on that across all devices (and processes)
    at every iteration. The chunk then needs no communication at all; every device draws
    all the chain keys and keeps its own.
    """
    _, chain_step = _chain_functions(model, settings)
    if placement is None:
        return _scan_chains(chain_step, chains, key, xs, settings, 0, 1)
    spec = jax.sharding.PartitionSpec(placement.axis_name)
    whole = jax.sharding.PartitionSpec()
    out_spec = jax.sharding.PartitionSpec(None, placement.axis_name)  # (step, chain, ...)

    def local(chains, key, xs):
        index = jax.lax.axis_index(placement.axis_name)
        return _scan_chains(chain_step, chains, key, xs, settings, index,
                            placement.num_devices)

    return jax.shard_map(local, mesh=placement.mesh, in_specs=(spec, whole, whole),
                         out_specs=(spec, whole, out_spec), check_vma=False)(chains, key, xs)


def _scan_chains(chain_step, chains, key, xs, settings: _Settings, shard_index, num_shards):
    """The scan of :func:`_run_chunk` over the chains held here: rows ``shard_index *
    rows : (shard_index + 1) * rows`` of ``num_shards * rows`` (padding included)."""
    rows = jax.tree_util.tree_leaves(chains)[0].shape[0]
    num_rows = rows * num_shards
    # Padding chains (copies of the last chain) reuse its keys, so they stay copies.
    take = jnp.minimum(shard_index * rows + jnp.arange(rows), settings.num_chains - 1)

    def scan_step(carry, x):
        chains, key = carry
        i, is_slow, is_window_end, active = x
        next_key, step_key = jax.random.split(key)
        chain_keys = jax.random.split(step_key, settings.num_chains)
        if num_shards > 1 or num_rows != settings.num_chains:
            chain_keys = chain_keys[take]
        # Padding steps do not advance the key: the draws do not depend on the chunking.
        # (Keys folded with the step index instead changed the rounding with the device count.)
        key = jax.random.wrap_key_data(
            jnp.where(active, jax.random.key_data(next_key), jax.random.key_data(key)),
            impl=jax.random.key_impl(key),
        )

        moved, out = jax.vmap(chain_step, in_axes=(0, 0, None, None, None))(
            chain_keys, chains, i, is_slow, is_window_end
        )
        # Padding steps (after the last real one) compute and are discarded: a lax.cond
        # would trace the NUTS step twice, which costs more than <1% extra steps.
        chains = jax.tree_util.tree_map(lambda m, c: jnp.where(active, m, c), moved, chains)
        return (chains, key), out

    (chains, key), out = jax.lax.scan(scan_step, (chains, key), xs)
    return chains, key, out


def _chunk_length(num_warmup: int, num_sampling: int, progress: bool) -> int:
    """Steps per compiled chunk: warm-up ends on a chunk boundary (the stuck-chain check runs
    there) and every chunk has the same length (one compiled program)."""
    total = num_warmup + num_sampling
    if progress:
        return -(-total // 100)
    if num_warmup == 0:
        return total
    common = math.gcd(num_warmup, num_sampling)
    # Few chunks (1000 + 1000: two of 1000); else about 20, warm-up's last one padded.
    return common if common * 20 >= total else -(-total // 20)


def _phase_steps(start: int, length: int, chunk: int):
    """Step indices of a phase, padded to whole chunks, and which of them are real."""
    padded = -(-length // chunk) * chunk
    return start + np.arange(padded), np.arange(padded) < length


def find_stuck_chains(lp: np.ndarray, positions: np.ndarray, *, min_nats: float = 10.0,
                      min_errors: float = 5.0):
    """Chains sitting in a region of negligible posterior mass at the end of warm-up.

    Each chain's share of the posterior is estimated as the log mass of the region it
    explores: its mean log density plus the entropy of a diagonal Gaussian fitted to its
    draws (the ELBO of that Gaussian). A chain whose log mass lies more than ``min_nats``
    (and ``min_errors`` rough standard errors) below the best chain's holds a spurious mode
    or a region it cannot leave; a mode that is merely wider has a lower log density but no
    lower mass, and is left alone. A chain that does not move has no entropy and is stuck.

    Args:
        lp: ``(steps, chains)`` log densities over the last warm-up steps.
        positions: ``(steps, chains, dim)`` the unconstrained positions of those steps.

    Returns:
        ``(stuck, gaps)``: indices of the stuck chains and every chain's log-mass gap below
        the best (nats).
    """
    lp = np.asarray(lp, np.float64)
    positions = np.asarray(positions, np.float64)
    steps, num_chains = lp.shape
    if num_chains < 2 or steps < 4:
        return np.zeros(0, int), np.zeros(num_chains)
    var = positions.var(axis=0)  # (chains, dim)
    with np.errstate(divide="ignore"):
        entropy = 0.5 * np.sum(np.log(2 * np.pi * np.e * var), axis=-1)
    log_mass = np.where(np.all(np.isfinite(lp), axis=0), lp.mean(axis=0) + entropy, -np.inf)
    if not np.isfinite(log_mass).any():
        return np.zeros(0, int), np.zeros(num_chains)
    gaps = np.max(log_mass[np.isfinite(log_mass)]) - log_mass
    # Rough error of a chain's estimate, taking a quarter of the draws as effective.
    dim = positions.shape[-1]
    lp_sd = np.median(lp.std(axis=0))
    error = np.sqrt(4.0 / steps * (lp_sd**2 + dim / 2.0))
    stuck = np.flatnonzero(gaps > max(min_nats, min_errors * error))
    return stuck, gaps


def _restart_stuck(chains, lp, positions, settings: _Settings):
    """The ``stuck_chains`` setting at the end of warm-up: restart each stuck chain from a
    healthy chain's state (position, step size and mass matrix), warn, or refuse."""
    stuck, gaps = find_stuck_chains(lp, positions)
    if not stuck.size:
        return chains, []
    healthy = [int(c) for c in np.argsort(gaps) if c not in set(stuck.tolist())]
    sources = [healthy[i % len(healthy)] for i in range(stuck.size)]
    what = ", ".join(f"chain {c} (posterior mass about e^-{gaps[c]:.0f} of the best chain's)"
                     if np.isfinite(gaps[c]) else f"chain {c} (not moving)" for c in stuck)
    if settings.stuck_chains == "raise":
        raise RuntimeError(
            f"Stuck chain(s) at the end of warm-up: {what}: in a region of negligible "
            "posterior mass (a spurious mode or a region the sampler cannot leave). Use other "
            "initial points, reparameterise, or stuck_chains='restart' to restart them from a "
            "healthy chain."
        )
    if settings.stuck_chains == "warn":
        message = (f"Stuck chain(s) at the end of warm-up: {what}; kept as they are "
                   "(stuck_chains='warn'): the draws are likely wrong.")
    else:
        index = np.arange(jax.tree_util.tree_leaves(chains)[0].shape[0])  # padding included
        index[stuck] = sources
        index[settings.num_chains:] = index[settings.num_chains - 1]  # padding stays a copy
        take = jnp.asarray(index)
        # Kept where the chains live (sharded over the devices).
        chains = jax.tree_util.tree_map(lambda x: jax.device_put(x[take], x.sharding), chains)
        message = (
            f"Stuck chain(s) at the end of warm-up: {what}; restarted from "
            + ", ".join(f"chain {s}" for s in sources)
            + " (its position, step size and mass matrix) for sampling. If the posterior "
            "really has a mode there of comparable mass (a much wider one), run with "
            "stuck_chains='warn' and more chains."
        )
    return chains, [message]


def _run(model, key, positions, schedule, settings: _Settings, progress: bool,
         checkpoint: RunCheckpoint | None = None, devices: DevicesLike = None):
    """Run warm-up and sampling; returns host arrays (draws, stats, gradient count), the
    final adaptation state and the stuck-chain messages. With a ``checkpoint``, every chunk
    is recorded and a recorded run continues where it stopped.

    ``positions`` may hold padding rows after the ``settings.num_chains`` real ones (see
    :func:`ppl.sharding.shard_batch`); every host array returned holds the real ones only.
    """
    num_chains = settings.num_chains
    placement = resolve_devices(devices, "chain")
    placement = placement if placement.num_devices > 1 else None

    def real_rows(tree):
        # Checkpoints hold the real chains only, so a run resumes on another device count.
        return jax.tree_util.tree_map(lambda x: gather_to_host(x)[:num_chains], tree)

    num_sampling = settings.num_samples * settings.thinning
    total = settings.num_warmup + num_sampling
    # Checkpointed runs use ~100 chunks whether or not a bar is shown (the chunking does not
    # change the draws, but a resumed run must cut the run where the first one did).
    chunk = _chunk_length(settings.num_warmup, num_sampling, progress or checkpoint is not None)
    warm_steps, warm_real = _phase_steps(0, settings.num_warmup, chunk)
    sample_steps, sample_real = _phase_steps(settings.num_warmup, num_sampling, chunk)
    steps = np.concatenate([warm_steps, sample_steps])
    active = np.concatenate([warm_real, sample_real])
    is_slow = np.zeros(len(steps), np.int32)
    is_end = np.zeros(len(steps), bool)
    is_slow[: len(schedule[0])] = schedule[0]
    is_end[: len(schedule[1])] = schedule[1]
    num_chunks = len(steps) // chunk
    warm_chunks = len(warm_steps) // chunk
    chains = _init_chains(model, positions, settings)
    positions_out, stats_out, messages = [], [], []
    first = 0
    if checkpoint is not None:
        restored = checkpoint.load((real_rows(chains), key))
        if restored is not None:
            template = chains
            first, outputs, (chains, key), messages = restored
            chains = shard_batch(chains, "chain", devices).array
            positions_out = [block["positions"] for block in outputs]
            stats_out = [{name[len("stat_"):]: value for name, value in block.items()
                          if name.startswith("stat_")} for block in outputs]
            # The restored arrays go where the fresh ones live (chains sharded over devices).
            chains = jax.tree_util.tree_map(lambda new, old: jax.device_put(new, old.sharding),
                                            chains, template)
    done = int(active[: first * chunk].sum())
    with ProgressBar(total if progress else 0,
                     desc=f"{settings.algorithm.upper()} (compiling)") as bar:
        bar.update_to(done)
        for c in range(first, num_chunks):
            if c == warm_chunks and settings.num_warmup and settings.stuck_chains != "ignore":
                lp = np.concatenate([s["lp"] for s in stats_out])[warm_real]
                where = np.concatenate(positions_out)[warm_real]
                # The end of warm-up: the chains near their stationary regime.
                window = max(4, min(100, settings.num_warmup // 5))
                chains, messages = _restart_stuck(chains, lp[-window:], where[-window:],
                                                  settings)
            part = slice(c * chunk, (c + 1) * chunk)
            xs = tuple(jnp.asarray(a[part]) for a in (steps, is_slow, is_end, active))
            chains, key, (pos, stats) = _run_chunk(model, chains, key, xs, settings,
                                                   placement)
            # (step, chain, ...): gathered from every device (and process), padding dropped.
            positions_out.append(gather_to_host(pos)[:, :num_chains])
            stats_out.append({k: gather_to_host(v)[:, :num_chains] for k, v in stats.items()})
            if checkpoint is not None:
                checkpoint.save(c, {"positions": positions_out[-1],
                                    **{f"stat_{k}": v for k, v in stats_out[-1].items()}},
                                (real_rows(chains), key), messages)
            done += int(active[part].sum())
            bar.update_to(done, desc=settings.algorithm.upper())
    real = np.flatnonzero(active)
    positions_all = np.concatenate(positions_out)[real]
    stats_all = {k: np.concatenate([s[k] for s in stats_out])[real] for k in stats_out[0]}
    # (step, chain, ...) -> (chain, step, ...), sampling phase only, thinned.
    keep = slice(settings.num_warmup, total, settings.thinning)
    draws = np.swapaxes(positions_all[keep], 0, 1)
    sample_stats = {k: np.swapaxes(v[keep], 0, 1) for k, v in stats_all.items()}
    num_gradient_evals = int(np.sum(stats_all["n_steps"], dtype=np.int64))
    return draws, sample_stats, num_gradient_evals, real_rows(chains.adaptation_state), messages


@eqx.filter_jit
def _constrain(model, z):
    values = jax.vmap(jax.vmap(model.to_constrained))(z)
    return values


@eqx.filter_jit
def _pointwise(model, z):
    return jax.vmap(jax.vmap(model.pointwise_log_likelihood))(z)


def _shard_chains(x, devices: DevicesLike = None):
    """Place the leading (chain) axis across ``devices``, padded to a multiple of their
    count (:func:`ppl.sharding.shard_batch`)."""
    return shard_batch(x, "chain", devices).array


def _check_model(model) -> None:
    if not isinstance(model, AbstractModel):
        raise TypeError(
            f"Expected a ppl Model (from ppl.from_numpyro or ppl.from_logdensity), "
            f"got {type(model).__name__}."
        )
    if model.discrete_sites:
        raise ValueError(
            f"NUTS/HMC need continuous latents; discrete site(s) {list(model.discrete_sites)}: "
            "marginalise them out in the model, or, for a state-space model, use "
            "method='particle_filter'."
        )



def _warn_on_problems(
    post_samples: dict, stats: dict, meta: dict, z_draws: np.ndarray
) -> list[str]:
    """Warn about divergences and R-hat > 1.01, naming the parameters involved."""
    from ppl import arviz_bridge

    messages = []
    diverging = np.asarray(stats["diverging"]).astype(bool)
    num_div = int(diverging.sum())
    if num_div:
        # The parameters whose divergent draws sit furthest from the rest (in sds).
        scores = []
        for name, x in post_samples.items():
            flat = x.reshape(x.shape[0] * x.shape[1], -1)
            d = diverging.reshape(-1)
            sd = flat.std(axis=0) + 1e-12
            shift = np.abs(flat[d].mean(axis=0) - flat.mean(axis=0)) / sd
            scores.append((float(shift.max()), name))
        involved = [n for _, n in sorted(scores, reverse=True)[:3]]
        messages.append(
            f"{num_div} divergent transition(s) after warm-up ({num_div / diverging.size:.1%}); "
            f"most involved: {', '.join(involved)}. The posterior may be biased: try "
            "target_accept=0.95 or a non-centred parameterisation."
        )
    if diverging.shape[0] > 1:
        bad = []
        for name, x in post_samples.items():
            r = np.atleast_1d(arviz_bridge.rhat(x.reshape(x.shape[:2] + (-1,))))
            if np.any(r > 1.01):
                bad.append(f"{name} ({np.nanmax(r):.3f})")
        if bad:
            messages.append(
                f"R-hat > 1.01 for {', '.join(bad)}: the chains have not mixed; run longer or "
                "reparameterise."
            )
    for message in messages:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return messages


def sample(
    key,
    model: AbstractModel,
    *,
    algorithm: str = "nuts",
    num_chains: int = 4,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    thinning: int = 1,
    target_accept: float = 0.8,
    dense_mass: bool = False,
    max_tree_depth: int = 10,
    num_integration_steps: int = 16,
    initial_step_size: float = 1.0,
    initial_position: Any = None,
    progress_bar: bool | None = None,
    log_likelihood: bool | None = None,
    warn: bool = True,
    stuck_chains: str = "restart",
    checkpoint_dir: str | None = None,
    devices: DevicesLike = None,
) -> Posterior:
    """Run NUTS (or HMC) with Stan's windowed adaptation on ``num_chains`` chains.

    Args:
        key: a JAX PRNG key (or an int seed).
        model: a ppl Model.
        algorithm: "nuts" or "hmc".
        num_chains, num_warmup, num_samples, thinning: run length (per chain).
        target_accept: dual-averaging target acceptance rate.
        dense_mass: adapt a dense (True) or diagonal (False) inverse mass matrix.
        max_tree_depth: NUTS's maximum number of doublings.
        num_integration_steps: HMC's leapfrog steps per transition (the step size is jittered
            by +-20% per transition so that fixed-length trajectories are not periodic).
        initial_step_size: where dual averaging starts.
        initial_position: optional ``(num_chains, dim)`` or ``(dim,)`` unconstrained start.
        progress_bar: show a progress bar (default: when stderr is a terminal).
        log_likelihood: store pointwise log-likelihood (default: when it is small).
        warn: emit warnings on divergences and R-hat > 1.01.
        stuck_chains: what to do at the end of warm-up with a chain whose log density sits
            in a region of negligible posterior mass that it cannot leave (a spurious mode, a
            non-invertible region: :func:`find_stuck_chains` over the last 100 warm-up
            steps, a log mass over 10 nats below the best chain's). ``"restart"``
            (default): restart it for sampling from a healthy chain's state, and warn;
            ``"warn"``: keep it, and warn; ``"raise"``: refuse the run; ``"ignore"``.
        checkpoint_dir: a directory where the run records itself after every chunk of about
            1% of the steps (:mod:`ppl.inference.checkpoint`); calling again with the
            same arguments after an interruption (Ctrl-C, a killed process) resumes from the
            last recorded chunk, and the draws equal an uninterrupted run's. A directory
            holding another run (other settings, key, model, data or initial points) is
            refused, naming what differs. With the chains on several processes
            (``jax.distributed``), process 0 writes the directory and every process reads it
            on resume: it must be on a filesystem shared by all of them, and a process that
            reads other content there than process 0 is refused, naming the directory.
        devices: where the chains run (:func:`ppl.sharding.resolve_devices`): default all
            devices of all processes; a count, a list of devices, ``"local"`` or
            ``"all-processes"``. A chain count that does not divide by the device count is
            padded (copies of the last chain, dropped); the draws do not depend on it. Under
            ``jax.distributed`` call this on every process: each gets all the draws.

    Returns:
        A :class:`~ppl.Posterior` with draws shaped ``(chain, draw, ...)`` and per-draw
        stats ``acceptance_rate, diverging, energy, step_size, lp, tree_depth, n_steps``.
    """
    _check_model(model)
    if algorithm not in ("nuts", "hmc"):
        raise ValueError(f"Expected algorithm 'nuts' or 'hmc', got {algorithm!r}.")
    num_chains = check_count("num_chains", num_chains)
    num_warmup = check_count("num_warmup", num_warmup, 0)
    num_samples = check_count("num_samples", num_samples)
    thinning = check_count("thinning", thinning)
    if not 0.0 < float(target_accept) < 1.0:
        raise ValueError(f"Expected target_accept in (0, 1), got {target_accept!r}.")
    if stuck_chains not in STUCK_CHAIN_ACTIONS:
        raise ValueError(f"Expected stuck_chains one of {', '.join(STUCK_CHAIN_ACTIONS)}, got "
                         f"{stuck_chains!r}.")
    progress = ProgressBar.wanted(progress_bar)
    placement = resolve_devices(devices, "chain")
    settings = _Settings(
        algorithm, num_chains, num_warmup, num_samples, thinning, float(target_accept),
        bool(dense_mass), int(max_tree_depth), int(num_integration_steps),
        float(initial_step_size), stuck_chains,
    )
    start = time.perf_counter()
    init_key, run_key = jax.random.split(as_key(key))
    if initial_position is None:
        positions = find_initial_positions(init_key, model, num_chains)
    else:
        positions = jnp.asarray(initial_position, dtype=jnp.result_type(float))
        if positions.shape == (model.dim,):
            positions = jnp.broadcast_to(positions, (num_chains, model.dim))
        if positions.shape != (num_chains, model.dim):
            raise ValueError(
                f"Expected initial_position of shape ({num_chains}, {model.dim}) or "
                f"({model.dim},), got {positions.shape}."
            )
    schedule = warmup_schedule(num_warmup)
    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = RunCheckpoint(checkpoint_dir, _manifest(model, key, settings, positions),
                                   multi_process=placement.multi_process)
    positions = _shard_chains(positions, devices)
    draws, stats, num_grads, adaptation, stuck = _run(model, run_key, positions, schedule,
                                                      settings, progress, checkpoint, devices)
    for message in stuck if warn else []:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    z = jnp.asarray(draws)
    values = _constrain(model, z)
    samples = {k: np.asarray(v) for k, v in values.items()}
    pointwise = None
    obs_size = model.num_observations * num_chains * num_samples
    if log_likelihood or (log_likelihood is None and 0 < obs_size <= 5_000_000):
        pw = _pointwise(model, z)
        pointwise = {k: np.asarray(v) for k, v in pw.items()} if pw else None
    wall = time.perf_counter() - start
    meta = {
        "engine": algorithm,
        "settings": settings._asdict(),
        "wall_time": wall,
        "num_gradient_evals": int(num_grads),
        "step_size": np.asarray(adaptation.step_size).tolist(),
        "num_devices": placement.num_devices,
        "num_processes": len({d.process_index for d in placement.devices}),
    }
    meta["warnings"] = stuck + (_warn_on_problems(samples, stats, meta, np.asarray(z))
                                if warn else [])
    return Posterior(
        samples=samples,
        stats=stats,
        meta=meta,
        log_likelihood=pointwise,
        unconstrained=np.asarray(z),
    )


def _manifest(model, key, settings: _Settings, positions) -> dict[str, Any]:
    """What a checkpointed run is: settings, key, the model and the initial positions."""
    return {"settings": settings._asdict(),
            "key": np.asarray(jax.random.key_data(as_key(key))).tolist(),
            **describe_model(model),
            "initial_positions": fingerprint(np.asarray(positions, np.float64))}


def sample_nuts(key, model, **settings) -> Posterior:
    """``ppl.infer(..., method="nuts")``: see :func:`sample`."""
    return sample(key, model, algorithm="nuts", **settings)


def sample_hmc(key, model, **settings) -> Posterior:
    """``ppl.infer(..., method="hmc")``: see :func:`sample`."""
    return sample(key, model, algorithm="hmc", **settings)


# Where the engines' ``**settings`` go (``ppl.infer`` checks setting names against them).
sample_nuts.settings_from = sample_hmc.settings_from = (sample,)
sample_nuts.settings_fixed = sample_hmc.settings_fixed = ("algorithm",)
