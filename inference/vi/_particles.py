"""The shared driver of the particle engines (coin SVGD, coin KSDD, SVGD).

Particles live in whitened coordinates ``u`` (``z = m + W u`` from a Laplace
approximation, or from robust prior moments when the mode search fails, as on a funnel)
unless ``whiten=False``; the model is an argument of the compiled chunk, so
new data of the same shapes reuse it; iterations run in chunks of a ``lax.scan`` with the
progress bar and a finiteness check between chunks; the particle axis is sharded over
the devices of ``devices=`` (:mod:`ppl.sharding`; default all of them) and XLA's SPMD
partitioner inserts the all-gather that the all-pairs kernel sums need, so the particles
are the unsharded run's (up to the order of floating-point sums). Padding would add
particles to the interacting population, so the device count must divide
``num_particles``: an explicit ``devices=`` that does not is refused, and the default uses
the most devices that do (with a warning).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ppl.infer import as_key
from ppl.model import AbstractModel
from ppl.posterior import Posterior
from ppl.progress import ProgressBar
from ppl.sharding import (
    DevicesLike,
    dividing_placement,
    gather_to_host,
    shard_batch,
    shard_leading_axis,
)
from ppl.validation import check_count

__all__ = ["ParticleAlgorithm", "ParticleInfo", "run_particle_engine", "shard_particles"]


class ParticleAlgorithm(NamedTuple):
    """``init(positions) -> state``; ``step(key, state) -> (state, info)``."""

    init: Callable
    step: Callable


class ParticleInfo(NamedTuple):
    """Per-iteration information.

    Attributes:
        mean_abs_direction: mean over particles and coordinates of ``|c_t|``.
        bandwidth: the kernel bandwidth used.
    """

    mean_abs_direction: jax.Array
    bandwidth: jax.Array


def shard_particles(x):
    """Place the leading (particle) axis across devices when there are several."""
    return shard_leading_axis(x, "particle")


def _whitened_logdensity(model, loc, scale):
    def logdensity_fn(u):
        return model.log_density(loc + scale @ u)

    return logdensity_fn


@eqx.filter_jit
def _init(model, loc, scale, u0, make_algorithm, algorithm_settings):
    algo = make_algorithm(_whitened_logdensity(model, loc, scale), **algorithm_settings)
    return algo.init(u0)


@eqx.filter_jit
def _run_chunk(model, loc, scale, state, key, make_algorithm, algorithm_settings,
               num_steps: int):
    algo = make_algorithm(_whitened_logdensity(model, loc, scale), **algorithm_settings)
    state, info = jax.lax.scan(lambda s, k: algo.step(k, s), state,
                               jax.random.split(key, num_steps))
    return state, info


@eqx.filter_jit
def _constrain(model, loc, scale, u):
    z = loc + u @ scale.T
    return z, jax.vmap(model.to_constrained)(z)




def run_particle_engine(
    key,
    model: AbstractModel,
    engine: str,
    make_algorithm: Callable,
    *,
    num_particles: int = 100,
    num_iterations: int = 1000,
    whiten: bool = True,
    init: str = "laplace",
    initial_positions=None,
    chunk_size: int = 250,
    progress_bar: bool | None = None,
    algorithm_settings: dict | None = None,
    devices: DevicesLike = None,
) -> Posterior:
    """Run a particle algorithm on ``model`` and return the particles as a Posterior.

    ``make_algorithm(logdensity_fn, **algorithm_settings) -> ParticleAlgorithm`` must be a
    module-level function (it is a static argument of the compiled chunk); settings are
    passed as arrays so that new values do not recompile.

    ``devices``: where the particles run (:func:`ppl.sharding.resolve_devices`; default all
    devices of all processes). Their count must divide ``num_particles``: otherwise an
    explicit ``devices`` is refused (``ValueError``) and the default uses the most devices
    that divide it, with a ``UserWarning``.
    """
    from ppl.inference.vi.flow import NonFiniteError
    from ppl.inference.vi.flows import laplace_approximation, prior_whitening, sample_prior

    if not isinstance(model, AbstractModel):
        raise TypeError(f"Expected a ppl Model, got {type(model).__name__}.")
    if model.discrete_sites:
        raise ValueError(f"{engine} needs continuous latents; got discrete site(s) "
                         f"{list(model.discrete_sites)}: marginalise them out in the model.")
    num_particles = check_count("num_particles", num_particles, 2)
    num_iterations = check_count("num_iterations", num_iterations)
    chunk_size = min(check_count("chunk_size", chunk_size), num_iterations)
    if init not in ("laplace", "prior"):
        raise ValueError(f"Expected init 'laplace' or 'prior', got {init!r}.")
    placement = dividing_placement(devices, num_particles, "particle",
                                   f"{engine} (num_particles={num_particles})")
    start_time = time.perf_counter()
    lap_key, init_key, run_key = jax.random.split(as_key(key), 3)
    dim = model.dim
    whitening = "none"
    if whiten:
        laplace = laplace_approximation(lap_key, model)
        loc, scale, whitening = laplace.mode, laplace.scale, "laplace"
        if not laplace.is_trustworthy():  # no proper mode (a funnel): prior scale instead
            prior = prior_whitening(jax.random.fold_in(lap_key, 1), model)
            if prior is not None:
                (loc, scale), whitening = prior, "prior"
    else:
        loc, scale = jnp.zeros(dim), jnp.eye(dim)
    inverse = jnp.linalg.inv(scale)
    if initial_positions is not None:
        z0 = jnp.asarray(initial_positions, dtype=jnp.result_type(float))
        if z0.shape != (num_particles, dim):
            raise ValueError(f"Expected initial_positions of shape ({num_particles}, {dim}), "
                             f"got {z0.shape}.")
        u0 = (z0 - loc) @ inverse.T
    elif init == "prior":
        u0 = (sample_prior(model, init_key, num_particles) - loc) @ inverse.T
    elif whiten:
        u0 = jax.random.normal(init_key, (num_particles, dim))
    else:
        u0 = jax.vmap(model.init_position)(jax.random.split(init_key, num_particles))
    if not np.all(np.isfinite(np.asarray(u0))):
        raise ValueError("Expected finite initial particles, got NaN/inf.")
    if placement.num_devices > 1 or devices is not None:  # no padding: it divides
        u0 = shard_batch(u0, "particle", placement).array
    algorithm_settings = {k: jnp.asarray(v) for k, v in (algorithm_settings or {}).items()}
    state = _init(model, loc, scale, u0, make_algorithm, algorithm_settings)
    infos = []
    num_chunks = -(-num_iterations // chunk_size)
    show = ProgressBar.wanted(progress_bar)
    done = 0
    with ProgressBar(num_iterations if show else 0, desc=engine) as bar:
        for chunk in range(num_chunks):
            steps = min(chunk_size, num_iterations - done)
            new_state, info = _run_chunk(model, loc, scale, state,
                                         jax.random.fold_in(run_key, chunk),
                                         make_algorithm, algorithm_settings, steps)
            if not np.all(np.isfinite(gather_to_host(new_state.position))):
                raise NonFiniteError(
                    f"{engine}: particles became non-finite between iterations {done} and "
                    f"{done + steps}; the last good state (iteration {done}) is on this "
                    "error's .state. Check the log-density (and, for SVGD, lower step_size).",
                    step=done, state=state,
                )
            state = new_state
            infos.append(info)
            done += steps
            bar.update_to(done)
    z, values = gather_to_host(_constrain(model, loc, scale, state.position))
    history = {
        "mean_abs_direction": np.concatenate([np.asarray(i.mean_abs_direction) for i in infos]),
        "bandwidth": np.concatenate([np.asarray(i.bandwidth) for i in infos]),
    }
    meta = {
        "engine": engine,
        "settings": {"num_particles": num_particles, "num_iterations": num_iterations,
                     "whiten": whiten, "whitening": whitening, "init": init,
                     **{k: np.asarray(v).tolist() for k, v in algorithm_settings.items()}},
        "wall_time": time.perf_counter() - start_time,
        "num_gradient_evals": num_particles * num_iterations,
        "num_devices": placement.num_devices,
        "warnings": [],
    }
    return Posterior(
        samples={k: np.asarray(v)[None] for k, v in values.items()},
        history=history,
        meta=meta,
        unconstrained=np.asarray(z)[None],
    )
