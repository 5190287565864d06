"""Stein variational gradient descent with Adagrad: the tuned baseline of coin sampling.

``ppl.infer(model, method="svgd", key=..., step_size=...)``.

Maths (Liu & Wang 2016): particles follow the Stein direction
``phi(x_i) = 1/N sum_j [k(x_j, x_i) grad log p(x_j) + grad_{x_j} k(x_j, x_i)]``
(RBF kernel, median-heuristic bandwidth), with Adagrad step sizes
``x <- x + step_size * phi / sqrt(sum of phi^2)`` (optax ``adagrad``). Its accuracy depends
on ``step_size``; coin sampling (:mod:`ppl.inference.vi.coin`) removes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from ppl.inference.vi._particles import ParticleAlgorithm, ParticleInfo, run_particle_engine
from ppl.inference.vi.coin import svgd_direction

__all__ = ["SVGDState", "svgd", "sample_svgd"]


class SVGDState(NamedTuple):
    """Particles ``(num_particles, dim)`` and the Adagrad state."""

    position: jax.Array
    opt_state: Any


def svgd(logdensity_fn: Callable, step_size: float) -> ParticleAlgorithm:
    """SVGD with Adagrad: ``init(positions)``, ``step(key, state) -> (state, info)``."""
    optimizer = optax.adagrad(step_size)

    def init(position):
        return SVGDState(position, optimizer.init(position))

    def step(key, state: SVGDState):
        del key
        direction, h = svgd_direction(logdensity_fn, state.position)
        updates, opt_state = optimizer.update(-direction, state.opt_state, state.position)
        position = optax.apply_updates(state.position, updates)
        return SVGDState(position, opt_state), ParticleInfo(jnp.mean(jnp.abs(direction)), h)

    return ParticleAlgorithm(init, step)


def sample_svgd(key, model, *, step_size: float = 0.1, **settings):
    """``ppl.infer(model, method="svgd", key=..., step_size=...)``.

    Settings as :func:`ppl.inference.vi.coin.sample_coin_svgd`, plus ``step_size``
    (Adagrad learning rate, on the whitened scale when ``whiten=True``).
    """
    if not (isinstance(step_size, (int, float)) and step_size > 0 and step_size < float("inf")):
        raise ValueError(f"Expected step_size > 0, got {step_size!r}.")
    return run_particle_engine(
        key, model, "svgd", svgd,
        algorithm_settings={"step_size": float(step_size)}, **settings,
    )


# Where the engine's ``**settings`` go (``ppl.infer`` checks setting names against them).
sample_svgd.settings_from = (run_particle_engine,)
sample_svgd.settings_fixed = ("algorithm_settings",)
