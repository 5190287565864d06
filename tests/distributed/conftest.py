"""Helpers of the distributed tests: run ``_worker.py`` as one process or as a
``jax.distributed`` job of several local processes, each with a hard timeout."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

WORKER = Path(__file__).with_name("_worker.py")
TIMEOUT_S = 120


def _env(num_devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    return env


def free_port() -> int:
    """A port nobody listens on now (the OS picks it for a socket bound to port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_single(out: Path, args: list[str], num_devices: int = 1,
               worker: Path = WORKER) -> dict[str, np.ndarray]:
    """The worker as one process over ``num_devices`` virtual CPU devices."""
    done = subprocess.run([sys.executable, str(worker), str(out), *args], cwd=out.parent,
                          env=_env(num_devices), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def run_job(tmp: Path, args: list[str], num_processes: int, devices_per_process: int = 1,
            timeout_s: float = TIMEOUT_S, worker: Path = WORKER) -> list[dict[str, np.ndarray]]:
    """The worker as a ``jax.distributed`` job of ``num_processes`` local processes; every
    process is killed when one fails or the job outlives the timeout (a hang fails)."""
    address = f"127.0.0.1:{free_port()}"
    procs, logs = [], []
    for i in range(num_processes):
        log = open(tmp / f"process_{i}.log", "w+")  # noqa: SIM115 (closed below)
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, str(worker), str(tmp / f"process_{i}.npz"), *args,
             "--coordinator", address, "--num-processes", str(num_processes),
             "--process-id", str(i)],
            cwd=tmp, env=_env(devices_per_process), stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout_s
    try:
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    tails = []
    for i, log in enumerate(logs):
        log.seek(0)
        tails.append(f"--- process {i} (exit {procs[i].returncode}):\n{log.read()[-2000:]}")
        log.close()
    assert all(p.returncode == 0 for p in procs), (
        f"the {num_processes}-process job failed or hung past {timeout_s} s:\n"
        + "\n".join(tails))
    results = []
    for i in range(num_processes):
        with np.load(tmp / f"process_{i}.npz") as f:
            results.append({k: f[k] for k in f.files})
    return results


#: What every comparison runs: NUTS on 4 chains (divides 1, 2 and 4 devices) and 6 chains
#: (padded to 8 over 4 devices), and tempered SMC; in float64 (see test_single_host.py).
RUNS = ["--chains", "4", "6", "--smc", "--x64"]


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> dict[str, np.ndarray]:
    """The same runs in one process on one device."""
    return run_single(tmp_path_factory.mktemp("reference") / "one_device.npz", RUNS)


@pytest.fixture(scope="session")
def launch():
    """The launchers, for the test modules (conftest is not importable under importlib)."""
    return SimpleNamespace(single=run_single, job=run_job, runs=RUNS)
