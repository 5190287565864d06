"""Coin sampling: learning-rate-free particle variational inference.

``ppl.infer(model, method="coin_svgd" | "coin_ksdd", key=..., num_particles=...)``.

Maths (Sharrock & Nemeth 2023, Algorithm 1 with the adaptive betting of Orabona &
Tommasi 2017). Each particle ``i`` and coordinate bets on a coin whose outcome at step
``t`` is the particle's direction ``c_t`` (the Stein direction for Coin SVGD, minus the
gradient of the squared KSD for Coin KSDD). With running quantities

    L_t = max(L_{t-1}, |c_t|)                      (gradient scale)
    G_t = G_{t-1} + |c_t|                          (sum of magnitudes)
    theta_t = theta_{t-1} + c_t                    (sum of outcomes)
    R_t = max(R_{t-1} + c_t (x_t - x_0), 0)        (accumulated reward)

the next position is the initial point plus the betting fraction times the wealth:

    x_{t+1} = x_0 + theta_t / (L_t (G_t + L_t)) * (L_t + R_t).

There is no learning rate: the first move is ``+-1/2`` per coordinate, so the particles
live in coordinates whitened by a Laplace approximation (``z = m + W u``), or by robust
prior moments where the mode search fails (a funnel; see ``flows.prior_whitening``).

References:
    Sharrock & Nemeth (2023), Coin Sampling: Gradient-Based Bayesian Inference without
    Learning Rates, ICML.
    Orabona & Tommasi (2017), Training Deep Networks without Learning Rates Through Coin
    Betting, NeurIPS.
    Liu & Wang (2016), Stein Variational Gradient Descent, NeurIPS.
    Korba et al. (2021), Kernel Stein Discrepancy Descent, ICML.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from ppl.inference.vi import kernels
from ppl.inference.vi._particles import ParticleAlgorithm, ParticleInfo, run_particle_engine

__all__ = ["CoinState", "coin_init", "coin_update", "coin_svgd", "coin_ksdd",
           "sample_coin_svgd", "sample_coin_ksdd", "svgd_direction", "ksdd_direction"]

_EPS = 1e-12


class CoinState(NamedTuple):
    """Per-particle, per-coordinate betting state (all ``(num_particles, dim)``).

    Attributes:
        position: current particles ``x_t``.
        initial: starting particles ``x_0``.
        max_scale: ``L_t``, the running maximum of ``|c|``.
        sum_abs: ``G_t``, the sum of ``|c|``.
        sum_direction: ``theta_t``, the sum of ``c``.
        reward: ``R_t``, the accumulated (non-negative) reward.
    """

    position: jax.Array
    initial: jax.Array
    max_scale: jax.Array
    sum_abs: jax.Array
    sum_direction: jax.Array
    reward: jax.Array


def coin_init(position) -> CoinState:
    """Betting state at ``x_0 = position`` (zero wealth gained, no scale seen)."""
    zeros = jnp.zeros_like(position)
    return CoinState(position, position, zeros + _EPS, zeros, zeros, zeros)


def coin_update(state: CoinState, direction) -> CoinState:
    """One coin-betting update given the outcomes ``c_t = direction`` at ``x_t``."""
    max_scale = jnp.maximum(state.max_scale, jnp.abs(direction))
    sum_abs = state.sum_abs + jnp.abs(direction)
    sum_direction = state.sum_direction + direction
    reward = jnp.maximum(state.reward + direction * (state.position - state.initial), 0.0)
    fraction = sum_direction / (max_scale * (sum_abs + max_scale))
    position = state.initial + fraction * (max_scale + reward)
    return CoinState(position, state.initial, max_scale, sum_abs, sum_direction, reward)


def _scores(logdensity_fn, x):
    return jax.vmap(jax.grad(logdensity_fn))(x)


def svgd_direction(logdensity_fn: Callable, x):
    """The Stein (SVGD) direction at particles ``x`` with the median-heuristic RBF kernel."""
    h = kernels.median_bandwidth(x)
    return kernels.stein_direction(x, _scores(logdensity_fn, x), h), h


def ksdd_direction(logdensity_fn: Callable, x):
    """Minus the gradient of the squared KSD (times ``N``) at particles ``x``."""
    h = kernels.median_bandwidth(x)

    def ksd2(y):
        return kernels.kernel_stein_discrepancy(y, _scores(logdensity_fn, y), h)

    return -x.shape[0] * jax.grad(ksd2)(x), h


def _coin_algorithm(direction_fn) -> ParticleAlgorithm:
    def init(position):
        return coin_init(position)

    def step(key, state: CoinState):
        del key
        direction, h = direction_fn(state.position)
        new = coin_update(state, direction)
        return new, ParticleInfo(jnp.mean(jnp.abs(direction)), h)

    return ParticleAlgorithm(init, step)


def coin_svgd(logdensity_fn: Callable) -> ParticleAlgorithm:
    """Coin SVGD: ``init(positions) -> CoinState``, ``step(key, state) -> (state, info)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> algo = coin_svgd(lambda x: -0.5 * jnp.sum(x**2))
        >>> state = algo.init(jax.random.normal(jax.random.key(0), (20, 2)))
        >>> state, info = algo.step(jax.random.key(1), state)
    """
    return _coin_algorithm(lambda x: svgd_direction(logdensity_fn, x))


def coin_ksdd(logdensity_fn: Callable) -> ParticleAlgorithm:
    """Coin KSDD (coin betting on the kernel Stein discrepancy); same interface."""
    return _coin_algorithm(lambda x: ksdd_direction(logdensity_fn, x))


def sample_coin_svgd(key, model, **settings):
    """``ppl.infer(model, method="coin_svgd", key=..., num_particles=...)``.

    Settings: ``num_particles`` (100), ``num_iterations`` (1000), ``whiten`` (True: run in
    Laplace-whitened coordinates), ``init`` ("laplace": ``u ~ N(0, I)`` around the mode, or
    "prior": prior draws), ``progress_bar``, ``devices`` (where the particles run, see
    :func:`ppl.sharding.resolve_devices`; their count must divide ``num_particles``).
    There is no learning rate.

    Returns:
        A :class:`~ppl.Posterior` with the particles as one chain; ``history`` holds the
        mean ``|c|`` and the kernel bandwidth per iteration.
    """
    return run_particle_engine(key, model, "coin_svgd", coin_svgd, **settings)


def sample_coin_ksdd(key, model, **settings):
    """``ppl.infer(model, method="coin_ksdd", ...)``: settings as :func:`sample_coin_svgd`."""
    return run_particle_engine(key, model, "coin_ksdd", coin_ksdd, **settings)


# Where the engines' ``**settings`` go (``ppl.infer`` checks setting names against them).
sample_coin_svgd.settings_from = sample_coin_ksdd.settings_from = (run_particle_engine,)
sample_coin_svgd.settings_fixed = sample_coin_ksdd.settings_fixed = ("algorithm_settings",)
