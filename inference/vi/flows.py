"""Flow construction (flowjax) and Laplace whitening for variational inference.

Every flow here is a flowjax ``Transformed`` distribution built with ``invert=False``:
sampling (hence the reparameterised ELBO) runs the fast direction. Kinds:

- ``"maf"``: masked autoregressive flow with affine transformers (Papamakarios et al. 2017).
- ``"spline"``: coupling flow with rational-quadratic spline transformers (Durkan et al. 2019).
- ``"bnaf"``: block neural autoregressive flow (De Cao et al. 2019).
- ``"planar"``: planar flow (Rezende & Mohamed 2015, "Variational Inference with
  Normalizing Flows"): ``y = x + u tanh(w^T x + b)``, ``log|det| = log|1 + u^T psi(x)|``.

Badly scaled posteriors defeat flows started at unit scale, so the flow is fitted in
*whitened* coordinates ``u``, with ``z = m + W u`` from a Laplace approximation at the mode
``m``: ``W W^T = (-H)^{-1}``, ``H`` the Hessian of the log-density there
(:class:`Whiten`, a fixed affine bijection with ``log|det W|``).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import paramax
from flowjax.bijections import AbstractBijection, RationalQuadraticSpline
from flowjax.distributions import StandardNormal, StudentT, Transformed
from flowjax.flows import (
    block_neural_autoregressive_flow,
    coupling_flow,
    masked_autoregressive_flow,
    planar_flow,
)
from jaxtyping import Array, Float

from ppl.config import one_off_jit
from ppl.prng import same_streams_fused

__all__ = ["FLOW_KINDS", "make_flow", "Whiten", "Laplace", "laplace_approximation",
           "prior_whitening", "whitened_flow"]

FLOW_KINDS = ("maf", "spline", "bnaf", "planar")
FLOW_BASES = ("student_t", "normal")
# Initial degrees of freedom of the Student-t base (trained with the flow).
INITIAL_DF = 10.0


def make_flow(
    key,
    dim: int,
    *,
    kind: str = "maf",
    num_layers: int = 4,
    width: int = 32,
    depth: int = 1,
    knots: int = 8,
    interval: float = 4.0,
    base: str = "normal",
) -> Transformed:
    """A flowjax flow on ``R^dim``, ``invert=False``.

    Args:
        key: PRNG key for the initial parameters.
        dim: dimension.
        kind: one of ``FLOW_KINDS``.
        num_layers: flow layers.
        width: hidden width of the conditioner networks (block size for ``"bnaf"``).
        depth: hidden layers of the conditioner networks.
        knots, interval: spline settings (``"spline"`` only).
        base: the base distribution, ``"normal"`` (default: standard normal) or
            ``"student_t"`` (independent Student-t coordinates, degrees of freedom starting
            at 10 and trained with the flow; slower to compile and to sample). Flows with
            Lipschitz layers keep their base's tails (Jaini et al. 2020): from a Gaussian
            base a posterior with heavier tails than Gaussian (a scale parameter, a small
            data set) is fitted with too light ones, which the importance weights of PSIS
            see as a k-hat above 0.5 (0.5-0.8 on a 3-parameter regression) where a Student-t
            base gives 0.1-0.3.
    """
    if kind not in FLOW_KINDS:
        raise ValueError(f"Expected flow kind in {FLOW_KINDS}, got {kind!r}.")
    if base not in FLOW_BASES:
        raise ValueError(f"Expected flow base in {FLOW_BASES}, got {base!r}.")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"Expected dim to be a positive integer, got {dim!r}.")
    settings = (dim, kind, int(num_layers), int(width), int(depth), int(knots), float(interval),
                base)
    # flowjax initialises eagerly, one compiled program per parameter shape; the same random
    # numbers from fused programs compile about 2x faster (a cold process's biggest fixed cost;
    # 1.6x with jaxlib 0.12, where a few floats round one step apart). These are small
    # eager programs: the training program draws with JAX's own key (see flow.fit).
    flow = _make_flow(same_streams_fused(key), *settings)
    # flowjax flows carry per-instance closures as static leaves; reuse one static part per
    # architecture so that compiled training/sampling programs are not rebuilt per flow.
    params, static = eqx.partition(flow, eqx.is_array)
    if settings not in _STATIC_TEMPLATES:
        _STATIC_TEMPLATES[settings] = static
    return eqx.combine(params, _STATIC_TEMPLATES[settings])


_STATIC_TEMPLATES: dict = {}


def _make_flow(key, dim, kind, num_layers, width, depth, knots, interval, base_kind="normal"):
    base = (StudentT(df=jnp.full((dim,), INITIAL_DF)) if base_kind == "student_t"
            else StandardNormal((dim,)))
    if kind == "maf":
        return masked_autoregressive_flow(
            key, base_dist=base, flow_layers=num_layers, nn_width=width, nn_depth=depth,
            invert=False,
        )
    if kind == "spline":
        if dim < 2:
            raise ValueError(f"Expected dim >= 2 for a coupling flow, got {dim}.")
        return coupling_flow(
            key, base_dist=base, flow_layers=num_layers, nn_width=width, nn_depth=depth,
            transformer=RationalQuadraticSpline(knots=knots, interval=interval), invert=False,
        )
    if kind == "bnaf":
        return block_neural_autoregressive_flow(
            key, base_dist=base, flow_layers=num_layers, nn_depth=depth,
            nn_block_dim=max(1, width // max(dim, 1)) if width >= dim else 8, invert=False,
        )
    return planar_flow(key, base_dist=base, flow_layers=num_layers, invert=False)


class Whiten(AbstractBijection):
    """The fixed affine map ``z = loc + matrix @ u`` (not trained).

    ``log|det dz/du| = log|det matrix|``, computed once from the matrix's eigen- or
    Cholesky factors and stored.
    """

    shape: tuple[int, ...]
    cond_shape: ClassVar[None] = None
    loc: Array
    matrix: Array
    inverse_matrix: Array
    log_det: Array

    def __init__(self, loc, matrix):
        loc = jnp.asarray(loc, dtype=float)
        matrix = jnp.asarray(matrix, dtype=float)
        if matrix.shape != (loc.shape[0], loc.shape[0]):
            raise ValueError(
                f"Expected matrix of shape {(loc.shape[0],) * 2}, got {matrix.shape}."
            )
        self.shape = loc.shape
        self.loc = loc
        self.matrix = matrix
        if isinstance(matrix, jax.core.Tracer):
            self.inverse_matrix = jnp.linalg.inv(matrix)
            self.log_det = jnp.linalg.slogdet(matrix)[1]
        else:  # in NumPy: eagerly, jnp would compile two programs per dimension
            m = np.asarray(matrix, np.float64)
            self.inverse_matrix = jnp.asarray(np.linalg.inv(m), matrix.dtype)
            self.log_det = jnp.asarray(np.linalg.slogdet(m)[1], matrix.dtype)

    def transform_and_log_det(self, x, condition=None):
        return self.loc + self.matrix @ x, self.log_det

    def inverse_and_log_det(self, y, condition=None):
        return self.inverse_matrix @ (y - self.loc), -self.log_det


def whitened_flow(flow: Transformed, whiten: Whiten) -> Transformed:
    """``q(z)``: the flow in whitened coordinates pushed through the fixed ``whiten`` map."""
    return Transformed(flow, paramax.non_trainable(whiten))


class Laplace(NamedTuple):
    """A Laplace approximation ``N(mode, cov)`` of the unconstrained posterior.

    Attributes:
        mode: the optimum found (``(dim,)``).
        scale: a square root of the covariance, ``scale @ scale.T = cov``.
        log_density: the log-density at ``mode``.
        num_clipped: eigenvalues of ``-H`` that were not positive (replaced by 1).
        num_capped: positive eigenvalues of ``-H`` outside ``[min_precision,
            max_precision]`` (clipped to it): a curvature the search could not resolve.
        whitened_grad_norm: ``|W^T grad log p(mode)|``, the gradient at the mode in
            whitened units (about 0 at a true mode; large when the search ran off).
    """

    mode: Float[Array, " dim"]
    scale: Float[Array, "dim dim"]
    log_density: Float[Array, ""]
    num_clipped: Array
    num_capped: Array = jnp.zeros((), jnp.int32)
    whitened_grad_norm: Array = jnp.zeros(())

    def is_trustworthy(self, grad_tol: float = 0.1) -> bool:
        """Whether this approximation can whiten the posterior.

        False when the mode search failed or found no proper mode: a non-finite mode or
        scale, curvature that is non-positive or clipped (an unbounded density such as
        Neal's funnel or a centred hierarchical model, whose "mode" lies at a scale
        parameter of zero), or a gradient at the mode above ``grad_tol`` in whitened units.
        """
        return bool(
            np.all(np.isfinite(np.asarray(self.mode)))
            and np.all(np.isfinite(np.asarray(self.scale)))
            and np.isfinite(float(self.log_density))
            and int(self.num_clipped) == 0
            and int(self.num_capped) == 0
            and float(self.whitened_grad_norm) < grad_tol
        )


@eqx.filter_jit
def _optimise_mode(model, start, num_steps: int):
    def neg(z):
        return -model.log_density(z)

    # A backtracking line search: the default zoom search's nested loops made this program
    # take 1.6x longer to compile (1.1 s against 1.8 s on eight schools), for the same mode.
    opt = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(
        max_backtracking_steps=15, store_grad=True))
    value_and_grad = optax.value_and_grad_from_state(neg)

    def step(carry, _):
        z, state, best_z, best_value = carry
        value, grad = value_and_grad(z, state=state)
        updates, new_state = opt.update(grad, state, z, value=value, grad=grad, value_fn=neg)
        new_z = optax.apply_updates(z, updates)
        ok = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
        better = ok & (value < best_value)
        best_z = jnp.where(better, z, best_z)
        best_value = jnp.where(better, value, best_value)
        keep = jnp.all(jnp.isfinite(new_z))
        new_z = jnp.where(keep, new_z, best_z)
        return (new_z, new_state, best_z, best_value), None

    init = (start, opt.init(start), start, neg(start))
    (z, _, best_z, best_value), _ = jax.lax.scan(step, init, None, length=num_steps)
    final = neg(z)
    use_final = jnp.isfinite(final) & (final <= best_value)
    mode = jnp.where(use_final, z, best_z)
    return mode


@eqx.filter_jit
def _laplace_at(model, mode, min_precision, max_precision):
    value, grad = jax.value_and_grad(model.log_density)(mode)
    hessian = jax.hessian(model.log_density)(mode)
    precision = -0.5 * (hessian + hessian.T)
    precision = jnp.where(jnp.all(jnp.isfinite(precision)), precision, jnp.nan)
    eigenvalues, vectors = jnp.linalg.eigh(precision)
    bad = ~(jnp.isfinite(eigenvalues) & (eigenvalues > 0))
    eigenvalues = jnp.where(bad, 1.0, eigenvalues)
    capped = (eigenvalues < min_precision) | (eigenvalues > max_precision)
    eigenvalues = jnp.clip(eigenvalues, min_precision, max_precision)
    vectors = jnp.where(jnp.all(jnp.isfinite(vectors)), vectors, jnp.eye(mode.shape[0]))
    scale = vectors * eigenvalues[None, :] ** -0.5
    grad_norm = jnp.linalg.norm(scale.T @ grad)
    grad_norm = jnp.where(jnp.isfinite(grad_norm), grad_norm, jnp.inf)
    return scale, value, jnp.sum(bad), jnp.sum(capped & ~bad), grad_norm


@one_off_jit
def sample_prior(model, key, num_samples: int):
    """``model.sample_prior`` compiled with the model as an argument: called eagerly it would
    trace the model's code on every call, and a new data set would retrace."""
    return model.sample_prior(key, num_samples)


def laplace_approximation(
    key,
    model,
    *,
    num_steps: int = 200,
    num_starts: int = 16,
    initial_position=None,
    min_precision: float = 1e-4,
    max_precision: float = 1e10,
) -> Laplace:
    """Find the mode of ``model.log_density`` (L-BFGS, optax) and the Hessian there.

    Starting points: the best of ``num_starts`` prior draws (or ``model.init_position``
    draws when the model has no prior sampler or an improper prior), unless
    ``initial_position`` is given.
    Non-positive or non-finite curvature directions get unit precision; the others are
    clipped to ``[min_precision, max_precision]`` so that ``W`` stays finite.
    """
    if initial_position is None:
        try:
            candidates = sample_prior(model, key, num_starts)
        except (NotImplementedError, ValueError):  # no sampler, or an improper prior
            candidates = jax.vmap(model.init_position)(jax.random.split(key, num_starts))
        values = np.asarray(_batch_log_density(model, candidates))
        if not np.isfinite(values).any():
            candidates = jax.vmap(model.init_position)(jax.random.split(key, num_starts))
            values = np.asarray(_batch_log_density(model, candidates))
        if not np.isfinite(values).any():
            raise ValueError(
                f"The log-density is NaN or -inf at all {2 * num_starts} starting points tried; "
                "check the model (priors whose support excludes the data, NaN in data)."
            )
        start = candidates[int(np.nanargmax(np.where(np.isfinite(values), values, -np.inf)))]
    else:
        start = jnp.asarray(initial_position, dtype=jnp.result_type(float))
        if start.shape != (model.dim,):
            raise ValueError(
                f"Expected initial_position of shape ({model.dim},), got {start.shape}."
            )
    mode = _optimise_mode(model, start, int(num_steps))
    scale, value, clipped, capped, grad_norm = _laplace_at(model, mode, min_precision,
                                                           max_precision)
    laplace = Laplace(mode, scale, value, clipped, capped, grad_norm)
    if int(clipped) or int(capped) or _condition_number(scale) > _FLOAT32_CONDITION_LIMIT:
        laplace = _laplace_float64(model, laplace, min_precision, max_precision)
    return laplace


@eqx.filter_jit
def _derivatives(model, z):
    """Log density, gradient and Hessian at ``z`` (float64 under ``jax.enable_x64``)."""
    return (model.log_density(z), jax.grad(model.log_density)(z),
            jax.hessian(model.log_density)(z))


# Above this condition number of the covariance, float32 eigenvalues of the Hessian are
# rounding noise (its smallest eigenvalues are below the largest times float32's epsilon).
_FLOAT32_CONDITION_LIMIT = 1e5
_FLOAT64_MAX_PRECISION = 1e14


def _condition_number(scale) -> float:
    singular = np.linalg.svd(np.asarray(scale, np.float64), compute_uv=False)
    return float(singular.max() ** 2 / max(singular.min() ** 2, 1e-300))


def _laplace_float64(model, laplace: Laplace, min_precision, max_precision,
                     num_newton: int = 20) -> Laplace:
    """The Laplace approximation again in float64, for an ill-conditioned posterior.

    An uncentred regression (a covariate near 2000) has intercept and slope correlated to
    -0.99999 and a covariance of condition number 1e11: in float32 the Hessian's small
    eigenvalues are lost (clipped or wrong), and the whitening with them. Newton steps from
    the float32 mode and the Hessian, all in float64 (the model's arrays promote), give the
    right curvature; the whitening map itself is then accurate in float32. Returned only
    when it is better (a trustworthy result, or fewer clipped directions).
    """
    with jax.enable_x64(True):
        z = np.asarray(laplace.mode, np.float64)
        value, g, h = (np.asarray(v, np.float64) for v in _derivatives(model, z))
        if not np.isfinite(value):
            return laplace
        for _ in range(num_newton):
            # Newton on |curvature| (a saddle or a non-concave start is not a step uphill
            # otherwise), with step halving until the log density rises.
            eigenvalues, vectors = np.linalg.eigh(-0.5 * (h + h.T))
            if not np.all(np.isfinite(eigenvalues)):
                break
            curvature = np.maximum(np.abs(eigenvalues), 1e-12 * np.abs(eigenvalues).max())
            step = vectors @ ((vectors.T @ g) / curvature)
            if np.sqrt(np.sum((vectors.T @ g) ** 2 / curvature)) < 1e-8:
                break
            for _ in range(30):
                new = z + step
                new_value = float(_derivatives(model, new)[0])
                if np.isfinite(new_value) and new_value >= value:
                    break
                step = step / 2
            else:
                break
            value, g, h = (np.asarray(v, np.float64) for v in _derivatives(model, new))
            z = new
        value = float(value)
    precision = -0.5 * (h + h.T)
    if not np.all(np.isfinite(precision)):
        return laplace
    eigenvalues, vectors = np.linalg.eigh(precision)
    bad = ~(eigenvalues > 0)
    eigenvalues = np.where(bad, 1.0, eigenvalues)
    # float64 resolves curvature up to 1e14 (the float32 whitening map holds its inverse
    # square root, 1e-7, without trouble).
    max_precision = max(max_precision, _FLOAT64_MAX_PRECISION)
    capped = (eigenvalues < min_precision) | (eigenvalues > max_precision)
    eigenvalues = np.clip(eigenvalues, min_precision, max_precision)
    scale = vectors * eigenvalues[None, :] ** -0.5
    grad_norm = float(np.linalg.norm(scale.T @ g))
    refined = Laplace(jnp.asarray(z, laplace.mode.dtype), jnp.asarray(scale, laplace.scale.dtype),
                      jnp.asarray(value, laplace.log_density.dtype),
                      jnp.asarray(int(bad.sum()), jnp.int32),
                      jnp.asarray(int((capped & ~bad).sum()), jnp.int32),
                      jnp.asarray(grad_norm if np.isfinite(grad_norm) else np.inf,
                                  laplace.whitened_grad_norm.dtype))
    if refined.is_trustworthy() or int(refined.num_clipped) < int(laplace.num_clipped):
        return refined
    return laplace


def prior_whitening(key, model, *, num_draws: int = 1000):
    """Robust prior-scale whitening: ``(loc, scale)`` from ``model.sample_prior`` draws.

    ``loc`` is the coordinate-wise median of ``num_draws`` unconstrained prior draws and
    ``scale`` the diagonal matrix of their interquartile ranges divided by 1.349 (the sd
    for a normal; robust where the prior has heavy tails, e.g. the log of a half-Cauchy
    scale). The fallback when a posterior has no proper mode (Neal's funnel, centred
    hierarchical models): there the posterior's scale is of the order of the prior's.

    Returns:
        ``(loc, scale)``, or None when the model has no prior sampler or its draws are not
        finite.
    """
    try:
        draws = np.asarray(sample_prior(model, key, int(num_draws)), dtype=np.float64)
    except (NotImplementedError, ValueError):  # no sampler, or an improper prior
        return None
    draws = draws[np.all(np.isfinite(draws), axis=-1)]
    if draws.shape[0] < 10:
        return None
    loc = np.median(draws, axis=0)
    q25, q75 = np.percentile(draws, [25.0, 75.0], axis=0)
    scale = (q75 - q25) / 1.349
    scale = np.where(np.isfinite(scale) & (scale > 1e-6), scale, 1.0)
    dtype = jnp.result_type(float)
    return jnp.asarray(loc, dtype), jnp.asarray(np.diag(scale), dtype)


@eqx.filter_jit
def _batch_log_density(model, z):
    value, grad = jax.vmap(jax.value_and_grad(model.log_density))(z)
    return jnp.where(jnp.all(jnp.isfinite(grad), -1), value, -jnp.inf)


def eqx_partition(flow):
    """Split a flow into trainable arrays and the rest (non-trainable wrappers kept whole)."""
    return eqx.partition(
        flow, eqx.is_inexact_array, is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable)
    )


eqx_combine = eqx.combine
