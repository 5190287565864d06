"""Helpers shared by the benchmarks: fresh worker processes, alternation, timing.

A benchmark script calls itself as a *worker* in a fresh Python process (so every
measurement pays the imports and compilations a user pays), with the JAX persistent
compilation cache pointed at a directory the driver chooses. The driver alternates the
contenders (A B C A B C ...) so that drifting machine load spreads over all of them, and
summarises repetitions by their median.

Inside a worker, :class:`CompileMonitor` sums JAX's own compile-event durations
(``jax.monitoring``), which, unlike ``jax_log_compiles``, does not slow compilation.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "CompileMonitor",
    "cache_env",
    "emit",
    "machine_info",
    "median_of",
    "new_cache_dir",
    "run_worker",
    "alternate",
]

_RESULT_PREFIX = "@@BENCH@@"


# -- driver side ------------------------------------------------------------------------------


def new_cache_dir(prefix: str = "bench-jaxcache-") -> str:
    """A fresh, empty directory for a cold persistent compilation cache."""
    return tempfile.mkdtemp(prefix=prefix)


def cache_env(cache_dir: str, min_compile_time_secs: float | None = None) -> dict[str, str]:
    """Environment that points every library's JAX persistent cache at ``cache_dir``.

    ``JAX_COMPILATION_CACHE_DIR`` turns the cache on for any JAX program (NumPyro and
    BlackJAX included); ``PPL_CACHE_DIR`` is ppl's own knob. The minimum compile time
    an executable needs to be written to the cache is set for all alike when given.
    """
    env = {"JAX_COMPILATION_CACHE_DIR": cache_dir, "PPL_CACHE_DIR": cache_dir}
    if min_compile_time_secs is not None:
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(min_compile_time_secs)
    return env


def run_worker(
    argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 1800.0
) -> dict[str, Any]:
    """Run ``python argv...`` in a fresh process; return the JSON it emitted with :func:`emit`.

    The child's wall time from spawn to exit is added as ``process_wall``.
    """
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *argv], env=full_env, capture_output=True, text=True, timeout=timeout
    )
    wall = time.perf_counter() - start
    results = [
        json.loads(line[len(_RESULT_PREFIX):])
        for line in proc.stdout.splitlines()
        if line.startswith(_RESULT_PREFIX)
    ]
    if proc.returncode != 0 or not results:
        raise RuntimeError(
            f"worker {' '.join(argv)} failed (rc={proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    result = results[-1]
    result["process_wall"] = wall
    return result


def alternate(contenders: Sequence[Any], num_repeats: int) -> Iterable[tuple[int, Any]]:
    """``(repeat, contender)`` in the order A B C A B C ... (a rotation per repeat)."""
    for r in range(num_repeats):
        for c in contenders:
            yield r, c


def median_of(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not None (None when there are none)."""
    vals = [float(v) for v in values if v is not None]
    return statistics.median(vals) if vals else None


def machine_info() -> dict[str, Any]:
    """CPU count and model, Python and library versions (for the results file)."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


# -- worker side ------------------------------------------------------------------------------


def emit(result: dict[str, Any]) -> None:
    """Print a worker's result as one JSON line the driver picks out of stdout."""
    print(_RESULT_PREFIX + json.dumps(result, default=_jsonable), flush=True)


def _jsonable(x):
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:
        pass
    return str(x)


class CompileMonitor:
    """Sums JAX's duration events (tracing, lowering, backend compile, cache reads).

    Use one per process; ``snapshot()`` then ``since(snapshot)`` gives the events of a
    section. Event names of interest:
    ``/jax/core/compile/backend_compile_duration`` (XLA compile, or cache retrieval),
    ``/jax/core/compile/jaxpr_trace_duration``,
    ``/jax/core/compile/jaxpr_to_mlir_module_duration``,
    ``/jax/compilation_cache/cache_retrieval_time_sec``,
    ``/jax/compilation_cache/compile_time_saved_sec``.
    Counts of ``/jax/compilation_cache/cache_hits`` and ``cache_misses`` are kept too.
    """

    def __init__(self):
        import jax

        self.totals: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        jax.monitoring.register_event_listener(self._on_event)

    def _on_duration(self, event: str, duration: float, **kwargs) -> None:
        self.totals[event] += duration
        self.counts[event] += 1

    def _on_event(self, event: str, **kwargs) -> None:
        self.counts[event] += 1

    def snapshot(self) -> tuple[dict[str, float], dict[str, int]]:
        return dict(self.totals), dict(self.counts)

    def since(self, snap) -> dict[str, Any]:
        totals, counts = snap
        short = lambda k: k.rsplit("/", 1)[-1]  # noqa: E731
        out = {
            short(k): round(v - totals.get(k, 0.0), 4)
            for k, v in self.totals.items()
            if v - totals.get(k, 0.0) > 0
        }
        out.update({
            "n_" + short(k): v - counts.get(k, 0)
            for k, v in self.counts.items()
            if v - counts.get(k, 0) > 0 and ("cache" in k or "backend_compile" in k)
        })
        return out
