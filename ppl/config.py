"""Process-wide settings ppl applies on import: a CPU thread-pool flag and JAX's
persistent compilation cache.

**The CPU thread pool.** jaxlib 0.10.2 on CPU can wedge while materialising the result of a
large vmapped program: every thread sits idle in ``BlockUntilReady`` and the process never
returns. ppl saw it twice on a vmapped gradient of the posteriordb gp_pois_regr model (10,000
draws, a Cholesky factorisation inside), once with the persistent cache on and once with it
off, and could not reproduce it in 13 isolated runs. The same symptom is reported for vmap
graphs elsewhere, cache on or off, and it went away with XLA's multi-threaded Eigen pool
turned off (PyAutoLabs/PyAutoFit#1528: 0 hangs in 12 runs against 14 in 16). So ``import
ppl`` appends ``--xla_cpu_multi_thread_eigen=false`` to ``XLA_FLAGS`` -- only when JAX has not
started its backends yet (the flag is read then), when ``XLA_FLAGS`` does not already set
it, and unless ``PPL_XLA_CPU_EIGEN_THREADS=1``. It affects the CPU only (XLA's own
parallelism over fusions and over vmapped chains stays), and costs nothing measurable on
ppl's benchmarks on 2 cores.

**The compilation cache.** Compilation is what users wait for on a CPU, and JAX's persistent
cache removes most of it from a second process (bench/results/nuts_cpu_final.md). It is on
by default in a user cache directory; ``PPL_COMPILATION_CACHE=0`` turns it off,
``PPL_CACHE_DIR`` moves it, and an explicit ``JAX_COMPILATION_CACHE_DIR`` (read by JAX
itself) always wins.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["enable_compilation_cache", "cache_dir", "avoid_cpu_thread_pool_hang",
           "CPU_THREAD_POOL_FLAG"]

CPU_THREAD_POOL_FLAG = "--xla_cpu_multi_thread_eigen=false"


def _backends_started() -> bool:
    from jax._src import xla_bridge

    return bool(getattr(xla_bridge, "_backends", None))


def avoid_cpu_thread_pool_hang() -> bool:
    """Append :data:`CPU_THREAD_POOL_FLAG` to ``XLA_FLAGS`` (see the module docstring).

    Returns whether the flag was added: not when ``PPL_XLA_CPU_EIGEN_THREADS=1``, when
    ``XLA_FLAGS`` already mentions ``xla_cpu_multi_thread_eigen``, or when JAX's backends
    are already running (too late for the flag to be read).
    """
    if os.environ.get("PPL_XLA_CPU_EIGEN_THREADS", "0") == "1":
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" in flags or _backends_started():
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {CPU_THREAD_POOL_FLAG}".strip()
    return True


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
