"""Compilation settings: JAX's persistent compilation cache (applied on import), and quick
compilation for one-off programs (:func:`one_off_jit`).

Compilation is what users wait for on a CPU, and JAX's persistent cache removes most of it
from a second process (bench/results/nuts_cpu_final.md). It is on by default in a user cache
directory; ``PPL_COMPILATION_CACHE=0`` turns it off, ``PPL_CACHE_DIR`` moves it, and an
explicit ``JAX_COMPILATION_CACHE_DIR`` (read by JAX itself) always wins.

A process that compiles tens of thousands of programs runs out of memory mappings (Linux's
``vm.max_map_count``, 65,530 by default; about three per compiled XLA CPU program) and XLA
then fails inside a compilation: call ``jax.clear_caches()`` now and then (the test suite
does after every module). (The vmapped gp_pois_regr gradient that hung in long test runs
was something else: a deadlock of batched LAPACK calls, cured in ``ppl/cpu_linalg.py``.)
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["enable_compilation_cache", "cache_dir", "one_off_jit", "ONE_OFF_COMPILER_OPTIONS"]

# For programs that run once or a few times on small inputs (prior draws for starting
# points, a Hessian at a mode): without LLVM's optimisation passes XLA compiles them 3-10x
# faster on CPU (a batch of normals: 1.5 s -> 0.16 s), and their run time does not matter.
ONE_OFF_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def cache_dir() -> Path:
    base = os.environ.get("PPL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ppl"
    )
    return Path(base) / "jax"


def enable_compilation_cache(
    path: str | os.PathLike | None = None, *, unless_disabled: bool = False
) -> Path | None:
    """Turn on JAX's persistent compilation cache (returns the directory, or None if off).

    ``import ppl`` calls it with ``unless_disabled=True``: then ``PPL_COMPILATION_CACHE=0``
    leaves the cache off. Calling it yourself turns the cache on.
    """
    if unless_disabled and os.environ.get("PPL_COMPILATION_CACHE", "1") == "0":
        return None
    if not os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        # Cache every program: the many small ones (a fraction of a second each) add up
        # to seconds per process, and entries are a few kB (bench/results/nuts.md).
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    directory = Path(path) if path is not None else cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache
    jax.config.update("jax_compilation_cache_dir", str(directory))
    return directory


def one_off_jit(fun):
    """``equinox.filter_jit`` with :data:`ONE_OFF_COMPILER_OPTIONS` (quick to compile, slower to
    run): for a program called once per fit on small inputs. ``PPL_ONE_OFF_JIT=0`` compiles
    it as usual."""
    import equinox as eqx

    if os.environ.get("PPL_ONE_OFF_JIT", "1") == "0":
        return eqx.filter_jit(fun)
    return eqx.filter_jit(fun, compiler_options=dict(ONE_OFF_COMPILER_OPTIONS))
