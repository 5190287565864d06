"""NUTS and HMC as one pure function of ``(key, data)``, to ``vmap`` over many data sets.

``ppl.infer(model, "nuts")`` drives its compiled chunks from Python and returns host
arrays, so it runs one data set at a time. :func:`batched_sampler` builds the same run
(the same BlackJAX kernels, Stan's windowed adaptation, the same initial points and the
same stuck-chain restart as :func:`ppl.inference.mcmc.sample`) as a pure function

    run_fn(key, data) -> BatchedRun(draws: (chain, draw, dim), info: BatchedInfo)

with no host step inside, so that ``jax.jit(jax.vmap(run_fn))(keys, data)`` fits a whole
batch of data sets in one compiled call (the coverage driver's vectorised path). Given the
same key, a data set gets the same initial points and the same random stream as in
:func:`~ppl.inference.mcmc.sample`, and the same draws as far as the two compiled programs
round alike: a larger batch takes other vectorised code paths, and over a long run NUTS can
turn a last-bit difference into another, equally valid, path.

Warm-up and sampling share one ``lax.scan`` (the kernel is traced once); the draws are
written into a buffer carried by the scan, and the last warm-up steps into a small window
for the stuck-chain check, so memory grows with the kept draws only.

Example:
    >>> import jax, jax.numpy as jnp, ppl
    >>> from ppl.inference.mcmc.batched import batched_sampler
    >>> model = ppl.from_logdensity(lambda x, y: -0.5 * jnp.sum((x - y) ** 2), jnp.zeros(2),
    ...                             data=jnp.zeros(2))
    >>> run_fn = batched_sampler(model, num_chains=2, num_warmup=100, num_samples=50)
    >>> keys = jax.random.split(jax.random.key(0), 3)
    >>> run = jax.jit(jax.vmap(run_fn))(keys, jnp.arange(6.0).reshape(3, 2))
    >>> run.draws.shape, run.info.num_divergences.shape
    ((3, 2, 50, 2), (3,))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

# The host driver's own settings, chain step and schedule: one definition of the kernel,
# the adaptation and the stuck-chain rule, so the two paths cannot drift apart.
from ppl.inference.mcmc.adaptation import warmup_schedule
from ppl.inference.mcmc.sampler import (
    STUCK_CHAIN_ACTIONS,
    _chain_functions,
    _check_model,
    _Settings,
)

from ppl.model import AbstractModel
from ppl.validation import check_count

__all__ = ["BatchedInfo", "BatchedRun", "SETTINGS", "batched_sampler", "initial_positions",
           "split_rhat"]

#: Settings :func:`batched_sampler` takes (the host driver's, less ``initial_position``,
#: ``progress_bar``, ``log_likelihood`` and ``warn``, which need the host).
SETTINGS = ("algorithm", "num_chains", "num_warmup", "num_samples", "thinning",
            "target_accept", "dense_mass", "max_tree_depth", "num_integration_steps",
            "initial_step_size", "stuck_chains", "num_init_tries")


class BatchedInfo(NamedTuple):
    """Diagnostics of one run (one data set; a leading batch axis under ``vmap``).

    Attributes:
        num_divergences: divergent transitions among the kept draws (all chains).
        acceptance_rate: mean acceptance rate over the kept draws and chains.
        step_size: ``(chain,)`` the adapted step sizes.
        num_gradient_evals: leapfrog steps over warm-up and sampling, all chains.
        num_stuck_chains: chains found stuck at the end of warm-up (restarted from a
            healthy chain under ``stuck_chains="restart"``, kept otherwise).
        num_invalid_starts: chains with no finite initial candidate of their own (they
            borrow one from another chain; equal to ``num_chains`` when no candidate at all
            had a finite log-density and gradient, and the run is then meaningless).
        rhat: ``(dim,)`` split R-hat of the unconstrained draws (BDA3, 11.4; NaN for one
            chain). The coverage driver reports the rank-normalised R-hat instead.
    """

    num_divergences: Int[Array, ""]
    acceptance_rate: Float[Array, ""]
    step_size: Float[Array, " chain"]
    num_gradient_evals: Int[Array, ""]
    num_stuck_chains: Int[Array, ""]
    num_invalid_starts: Int[Array, ""]
    rhat: Float[Array, " dim"]


class BatchedRun(NamedTuple):
    """What ``run_fn(key, data)`` returns.

    Attributes:
        draws: ``(chain, draw, dim)`` unconstrained draws of the sampling phase, thinned.
        info: a :class:`BatchedInfo`.
    """

    draws: Float[Array, "chain draw dim"]
    info: BatchedInfo


class _Accumulators(NamedTuple):
    draws: Array          # (chain, num_samples, dim)
    window_lp: Array      # (window, chain): the last warm-up steps, for the stuck check
    window_position: Array  # (window, chain, dim)
    num_divergences: Array
    acceptance_sum: Array
    num_gradient_evals: Array
    num_stuck_chains: Array


def initial_positions(key, model: AbstractModel, num_chains: int, num_tries: int = 100):
    """:func:`ppl.inference.mcmc.find_initial_positions` as a pure function.

    The same candidates (``num_tries`` per chain from ``model.init_position``, the first
    with a finite log-density and gradient kept); a chain without one borrows the valid
    candidates of the whole pool in turn. Instead of raising, returns the number of chains
    without a candidate of their own.

    Returns:
        ``(positions (num_chains, dim), num_invalid_starts)``.
    """
    total = num_chains * num_tries
    candidates = jax.vmap(model.init_position)(jax.random.split(key, total))
    value, grad = jax.vmap(jax.value_and_grad(model.log_density))(candidates)
    ok = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad), axis=-1)
    per_chain = ok.reshape(num_chains, num_tries)
    index = jnp.arange(num_chains) * num_tries + jnp.argmax(per_chain, axis=1)
    missing = ~per_chain.any(axis=1)
    pool = jnp.nonzero(ok, size=total, fill_value=0)[0]
    rank = jnp.cumsum(missing) - 1
    borrowed = pool[rank % jnp.maximum(ok.sum(), 1)]
    index = jnp.where(missing, borrowed, index)
    return candidates[index], jnp.sum(missing)


def _stuck_chains(lp, positions, min_nats: float = 10.0, min_errors: float = 5.0):
    """:func:`ppl.inference.mcmc.sampler.find_stuck_chains` in JAX: ``(stuck, gaps)`` with
    ``stuck`` a ``(chain,)`` mask."""
    steps, num_chains = lp.shape
    if num_chains < 2 or steps < 4:
        return jnp.zeros(num_chains, bool), jnp.zeros(num_chains)
    var = positions.var(axis=0)
    entropy = 0.5 * jnp.sum(jnp.log(2 * jnp.pi * jnp.e * var), axis=-1)
    log_mass = jnp.where(jnp.all(jnp.isfinite(lp), axis=0), lp.mean(axis=0) + entropy, -jnp.inf)
    finite = jnp.isfinite(log_mass)
    gaps = jnp.max(jnp.where(finite, log_mass, -jnp.inf)) - log_mass
    dim = positions.shape[-1]
    lp_sd = jnp.median(lp.std(axis=0))
    error = jnp.sqrt(4.0 / steps * (lp_sd**2 + dim / 2.0))
    stuck = (gaps > jnp.maximum(min_nats, min_errors * error)) & finite.any()
    return stuck, gaps


def _restart_from_healthy(chains, stuck, gaps):
    """Each stuck chain takes the state of a healthy one, best first, in turn."""
    num_chains = stuck.shape[0]
    order = jnp.argsort(jnp.where(stuck, jnp.inf, gaps))  # healthy chains first
    rank = jnp.cumsum(stuck) - 1
    source = order[rank % jnp.maximum(jnp.sum(~stuck), 1)]
    take = jnp.where(stuck, source, jnp.arange(num_chains))
    return jax.tree_util.tree_map(lambda x: x[take], chains)


def split_rhat(draws: Float[Array, "chain draw dim"]) -> Float[Array, " dim"]:
    """Split R-hat (Gelman et al., BDA3, 11.4) per coordinate; NaN for one chain."""
    num_chains, num_draws = draws.shape[:2]
    half = num_draws // 2
    if num_chains < 2 or half < 2:
        return jnp.full(draws.shape[2:], jnp.nan)
    x = jnp.concatenate([draws[:, :half], draws[:, num_draws - half:]], axis=0)
    within = jnp.mean(jnp.var(x, axis=1, ddof=1), axis=0)
    between = half * jnp.var(jnp.mean(x, axis=1), axis=0, ddof=1)
    var_plus = (half - 1) / half * within + between / half
    return jnp.sqrt(var_plus / within)


def batched_sampler(
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
    stuck_chains: str = "restart",
    num_init_tries: int = 100,
) -> Callable[..., BatchedRun]:
    """NUTS (or HMC) with windowed adaptation on one data set, as a pure function.

    The run is that of :func:`ppl.inference.mcmc.sample` (see it for the settings): per
    chain, ``num_warmup`` steps of Stan's windowed adaptation (dual averaging of the step
    size towards ``target_accept``, a diagonal or dense inverse mass matrix from Welford
    windows), then ``num_samples * thinning`` steps at the adapted parameters, keeping every
    ``thinning``-th. At the end of warm-up a chain whose region has a posterior mass over 10
    nats below the best chain's is restarted from a healthy chain's state
    (``stuck_chains="restart"``) or only counted (``"warn"``, ``"raise"``: no host step can
    raise here, so the caller reads ``info.num_stuck_chains``; ``"ignore"`` skips the check).

    Args:
        model: a ppl Model with continuous latents; ``run_fn``'s ``data`` goes through
            ``model.with_data``, so its data are the template the batch must match.
        num_init_tries: initial candidates per chain.

    Returns:
        ``run_fn(key, data=None) -> BatchedRun``: ``key`` a typed PRNG key, ``data`` one data
        set for ``model.with_data`` (None: the model's own). Pure and not jitted: call it
        under ``jax.jit(jax.vmap(run_fn))`` with a leading data-set axis on both arguments.
    """
    _check_model(model)
    if algorithm not in ("nuts", "hmc"):
        raise ValueError(f"Expected algorithm 'nuts' or 'hmc', got {algorithm!r}.")
    if not 0.0 < float(target_accept) < 1.0:
        raise ValueError(f"Expected target_accept in (0, 1), got {target_accept!r}.")
    if stuck_chains not in STUCK_CHAIN_ACTIONS:
        raise ValueError(f"Expected stuck_chains one of {', '.join(STUCK_CHAIN_ACTIONS)}, got "
                         f"{stuck_chains!r}.")
    settings = _Settings(
        algorithm=algorithm, num_chains=check_count("num_chains", num_chains),
        num_warmup=check_count("num_warmup", num_warmup, 0),
        num_samples=check_count("num_samples", num_samples),
        thinning=check_count("thinning", thinning), target_accept=float(target_accept),
        dense_mass=bool(dense_mass), max_tree_depth=int(max_tree_depth),
        num_integration_steps=int(num_integration_steps),
        initial_step_size=float(initial_step_size), stuck_chains=stuck_chains,
    )
    num_init_tries = check_count("num_init_tries", num_init_tries)
    num_warmup, num_samples, thinning = (settings.num_warmup, settings.num_samples,
                                         settings.thinning)
    total = num_warmup + num_samples * thinning
    is_slow, is_window_end = (np.zeros(total, np.int32), np.zeros(total, bool))
    with jax.ensure_compile_time_eval():  # a constant even when built under a trace
        schedule = warmup_schedule(num_warmup)
    is_slow[:num_warmup], is_window_end[:num_warmup] = schedule
    # The host driver checks the last max(4, min(100, num_warmup // 5)) warm-up steps.
    window = min(num_warmup, max(4, min(100, num_warmup // 5)))
    check_stuck = num_warmup > 0 and stuck_chains != "ignore"

    def run_fn(key, data: Any = None) -> BatchedRun:
        local = model if data is None else model.with_data(data)
        init_chain, chain_step = _chain_functions(local, settings)
        init_key, run_key = jax.random.split(key)  # as in sample()
        positions, num_invalid = initial_positions(init_key, local, num_chains, num_init_tries)
        chains = jax.vmap(init_chain)(positions)
        dim = positions.shape[-1]
        dtype = positions.dtype
        acc = _Accumulators(
            draws=jnp.zeros((num_chains, num_samples, dim), dtype),
            window_lp=jnp.zeros((window, num_chains), dtype),
            window_position=jnp.zeros((window, num_chains, dim), dtype),
            num_divergences=jnp.zeros((), jnp.int32),
            acceptance_sum=jnp.zeros((), dtype),
            num_gradient_evals=jnp.zeros((), jnp.int32),
            num_stuck_chains=jnp.zeros((), jnp.int32),
        )

        def scan_step(carry, x):
            chains, key, acc = carry
            i, slow, window_end = x
            # The host driver's key stream: one split per step, then one key per chain.
            key, step_key = jax.random.split(key)
            chain_keys = jax.random.split(step_key, num_chains)
            chains, (position, stats) = jax.vmap(chain_step, in_axes=(0, 0, None, None, None))(
                chain_keys, chains, i, slow, window_end)
            # Out-of-range indices are dropped: only the warm-up window and the kept draws
            # are written (negative indices would wrap, hence the explicit sentinel).
            w = i - (num_warmup - window)
            w = jnp.where((w >= 0) & (w < window), w, window)
            d = i - num_warmup
            kept = (d >= 0) & (d % thinning == 0)
            d = jnp.where(kept, d // thinning, num_samples)
            acc = acc._replace(
                draws=acc.draws.at[:, d].set(position, mode="drop"),
                window_lp=acc.window_lp.at[w].set(stats["lp"], mode="drop"),
                window_position=acc.window_position.at[w].set(position, mode="drop"),
                num_divergences=acc.num_divergences
                + jnp.where(kept, jnp.sum(stats["diverging"], dtype=jnp.int32), 0),
                acceptance_sum=acc.acceptance_sum
                + jnp.where(kept, jnp.sum(jnp.nan_to_num(stats["acceptance_rate"])), 0.0),
                num_gradient_evals=acc.num_gradient_evals + jnp.sum(stats["n_steps"]),
            )
            if check_stuck:
                def restart(args):
                    chains, acc = args
                    stuck, gaps = _stuck_chains(acc.window_lp, acc.window_position)
                    if stuck_chains == "restart":
                        chains = _restart_from_healthy(chains, stuck, gaps)
                    return chains, acc._replace(
                        num_stuck_chains=jnp.sum(stuck, dtype=jnp.int32))

                chains, acc = jax.lax.cond(i == num_warmup - 1, restart, lambda a: a,
                                           (chains, acc))
            return (chains, key, acc), None

        xs = (jnp.arange(total), jnp.asarray(is_slow), jnp.asarray(is_window_end))
        (chains, _, acc), _ = jax.lax.scan(scan_step, (chains, run_key, acc), xs)
        info = BatchedInfo(
            num_divergences=acc.num_divergences,
            acceptance_rate=acc.acceptance_sum / (num_chains * num_samples),
            step_size=chains.adaptation_state.step_size,
            num_gradient_evals=acc.num_gradient_evals,
            num_stuck_chains=acc.num_stuck_chains,
            num_invalid_starts=jnp.asarray(num_invalid, jnp.int32),
            rhat=split_rhat(acc.draws),
        )
        return BatchedRun(acc.draws, info)

    return run_fn
