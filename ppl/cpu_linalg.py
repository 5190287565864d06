"""A work-around for a deadlock of batched LAPACK calls on the CPU in jaxlib 0.10.

The problem. jaxlib 0.10's LAPACK kernels (Cholesky, triangular solve, QR, SVD, ...) split a
large enough batch of matrices into tasks on XLA's intra-op thread pool and block until those
tasks are done, while running on a worker of that same pool. When a program holds several
independent batched factorisations (two log-densities of a vmapped GP, a model with several
multivariate normals), XLA's executor runs them concurrently; once every worker of the pool
(as many as there are cores: two on a 2-core machine) sits in such a wait, nobody is left to
run the tasks and the process hangs for ever, every thread idle. jaxlib 0.11 and later build
without that parallel path. Minimal reproduction, on 2 cores:

    f = jax.jit(lambda x: [jnp.linalg.cholesky(x * (1.0 + i)) for i in range(4)])
    f(jnp.broadcast_to(jnp.eye(11) + 0.1, (10000, 11, 11)))  # hangs within a few calls

The split happens once a call holds about 65,000 matrix elements (11 x 11 matrices: between
512 and 1,023 of them; 32 x 32: between 32 and 64; measured with jaxlib 0.10.2).

The cure. On jaxlib < 0.11, the CPU lowering of every batched linear-algebra primitive that
reaches such a kernel is wrapped: a batch above ``MAX_ELEMENTS_PER_CALL`` matrix elements is
lowered as a loop (``lax.map``) over chunks below it, each an ordinary LAPACK call that never
enters the pool. Each matrix still goes through the same LAPACK routine, so results are
unchanged bit for bit; what is lost is the pool's parallelism inside one large batched call.
``PPL_LAPACK_CHUNKING=0`` turns it off.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp

__all__ = ["MAX_ELEMENTS_PER_CALL", "apply", "affected"]

# A quarter of the smallest batch seen to take the parallel path, in elements of float32;
# halved again for 8-byte and 16-byte types, in case the kernels count bytes.
MAX_ELEMENTS_PER_CALL = 8192

# Primitive name -> rank of one problem in the first operand (2: a matrix; 1: the
# sub-diagonal vector of a tridiagonal solve). Every operand and result carries the same
# leading batch dimensions.
_CORE_RANK = {
    "cholesky": 2, "triangular_solve": 2, "lu": 2, "geqrf": 2, "geqp3": 2,
    "householder_product": 2, "eigh": 2, "eig": 2, "svd": 2, "schur": 2, "hessenberg": 2,
    "tridiagonal": 2, "tridiagonal_solve": 1,
}

_applied = False


def affected() -> bool:
    """Whether this jaxlib has the deadlocking parallel path (jaxlib < 0.11)."""
    import jaxlib

    try:
        major, minor = (int(part) for part in jaxlib.__version__.split(".")[:2])
    except (AttributeError, ValueError):  # an unusual version string: leave JAX alone
        return False
    return (major, minor) < (0, 11)


def apply() -> bool:
    """Install the chunked CPU lowerings (once); return whether they are installed."""
    global _applied
    if _applied:
        return True
    if os.environ.get("PPL_LAPACK_CHUNKING", "1") == "0" or not affected():
        return False
    try:
        from jax._src.interpreters import mlir
        from jax._src.lax import linalg
    except ImportError:  # a JAX whose internals moved: nothing to patch against
        return False
    cpu_rules = mlir._platform_specific_lowerings["cpu"]
    for name, core_rank in _CORE_RANK.items():
        primitive = getattr(linalg, f"{name}_p", None)
        entry = cpu_rules.get(primitive) if primitive is not None else None
        if entry is None:
            continue
        mlir.register_lowering(primitive, _chunked(primitive, entry.rule, core_rank),
                               platform="cpu")
    _applied = True
    return True


def _chunk_size(aval, core_rank: int) -> int | None:
    """Problems per call, or None when the batch is small enough for one call."""
    batch_shape = aval.shape[: aval.ndim - core_rank]
    batch = math.prod(batch_shape)
    per_problem = max(1, math.prod(aval.shape[aval.ndim - core_rank:]))
    per_problem *= max(1, jnp.dtype(aval.dtype).itemsize // 4)
    if batch <= 1 or batch * per_problem <= MAX_ELEMENTS_PER_CALL:
        return None
    return max(1, MAX_ELEMENTS_PER_CALL // per_problem)


def _chunked(primitive, rule, core_rank: int):
    from jax._src.interpreters import mlir

    def lowering(ctx, *operands, **params):
        first = ctx.avals_in[0]
        chunk = _chunk_size(first, core_rank)
        if chunk is None:
            return rule(ctx, *operands, **params)
        num_batch_dims = first.ndim - core_rank
        batch_shape = first.shape[:num_batch_dims]
        batch = math.prod(batch_shape)
        num_chunks = -(-batch // chunk)

        def by_chunks(*args):
            def split(x):
                flat = x.reshape((batch, *x.shape[num_batch_dims:]))
                pad = num_chunks * chunk - batch
                if pad:  # repeat the last problem: a valid input, dropped afterwards
                    flat = jnp.concatenate([flat, jnp.repeat(flat[-1:], pad, axis=0)])
                return flat.reshape((num_chunks, chunk, *flat.shape[1:]))

            def one(chunk_args):
                out = primitive.bind(*chunk_args, **params)
                return tuple(out) if primitive.multiple_results else out

            out = jax.lax.map(one, tuple(split(x) for x in args))

            def join(y):
                flat = y.reshape((num_chunks * chunk, *y.shape[2:]))[:batch]
                return flat.reshape((*batch_shape, *flat.shape[1:]))

            if primitive.multiple_results:
                return [join(y) for y in out]
            return join(out)

        return mlir.lower_fun(by_chunks, multiple_results=primitive.multiple_results)(
            ctx, *operands)

    return lowering
