"""The batched-LAPACK deadlock work-around (ppl/cpu_linalg.py).

The reproduction runs in a subprocess pinned to two cores (XLA sizes its CPU thread pool from
the process's CPU affinity), so that it deadlocks the same way on any machine: sixteen
independent batched Cholesky factorisations in one program. With the work-around it finishes;
without it (``PPL_LAPACK_CHUNKING=0``) it hangs, which is the negative control.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppl import cpu_linalg

pytestmark = pytest.mark.skipif(not cpu_linalg.affected(),
                                reason="this jaxlib has no parallel LAPACK batch path")

REPRODUCTION = textwrap.dedent("""
    import os
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])
    import jax, jax.numpy as jnp
    import ppl  # installs the work-around unless PPL_LAPACK_CHUNKING=0
    x = jnp.broadcast_to(jnp.eye(11) + 0.1, (4096, 11, 11))
    f = jax.jit(lambda x, s: [jnp.linalg.cholesky(x * (s + i)) for i in range(16)])
    for i in range(100):
        jax.block_until_ready(f(x, 1.0 + i))
    print("finished")
""")


def _run_reproduction(chunking: str, timeout: float):
    env = {**os.environ, "PPL_LAPACK_CHUNKING": chunking, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-c", REPRODUCTION], env=env, timeout=timeout,
                          capture_output=True, text=True)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_concurrent_batched_factorisations_finish():
    done = _run_reproduction("1", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "finished" in done.stdout


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_negative_control_without_the_work_around_hangs():
    # 100 calls take about 2 s when nothing hangs; unpatched, a hang came within 10 calls
    # in every try on 2 cores.
    with pytest.raises(subprocess.TimeoutExpired):
        _run_reproduction("0", timeout=30)


@pytest.mark.parametrize("name, fn", [
    ("cholesky", jnp.linalg.cholesky),
    ("solve_triangular", lambda a: jax.scipy.linalg.solve_triangular(
        jnp.linalg.cholesky(a), a, lower=True)),
    ("qr", lambda a: jnp.linalg.qr(a)[1]),
    ("svd", lambda a: jnp.linalg.svd(a, compute_uv=False)),
    ("eigh", lambda a: jnp.linalg.eigh(a)[0]),
    ("lu", lambda a: jax.scipy.linalg.lu_factor(a)[0]),
    ("grad", jax.grad(lambda a: jnp.sum(jnp.log(jnp.diagonal(
        jnp.linalg.cholesky(a), axis1=-2, axis2=-1))))),
])
def test_chunked_batch_is_bit_identical_to_one_matrix_at_a_time(name, fn):
    assert cpu_linalg.apply(), "the work-around should be installed by import ppl"
    rng = np.random.default_rng(0)
    # 2 x 501 problems of 11 x 11: above the chunk limit, and not a multiple of the chunk
    # (the padded tail is exercised).
    a = rng.normal(size=(2, 501, 11, 11)).astype(np.float32)
    spd = a @ np.swapaxes(a, -1, -2) + 11.0 * np.eye(11, dtype=np.float32)
    assert cpu_linalg._chunk_size(jax.core.ShapedArray(spd.shape, spd.dtype), 2) is not None
    batched = np.asarray(jax.jit(fn)(spd))
    single = jax.jit(fn)
    one_by_one = np.stack([np.stack([np.asarray(single(m)) for m in row]) for row in spd])
    np.testing.assert_array_equal(batched, one_by_one)


def test_chunk_size():
    shaped = jax.core.ShapedArray
    assert cpu_linalg._chunk_size(shaped((4, 11, 11), np.float32), 2) is None
    assert cpu_linalg._chunk_size(shaped((10000, 11, 11), np.float32), 2) == 8192 // 121
    assert cpu_linalg._chunk_size(shaped((10000, 11, 11), np.float64), 2) == 8192 // 242
    assert cpu_linalg._chunk_size(shaped((3, 200, 200), np.float32), 2) == 1
    assert cpu_linalg._chunk_size(shaped((1, 500, 500), np.float32), 2) is None
