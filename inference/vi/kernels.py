"""Kernels for particle variational inference: RBF with the median heuristic, the Stein
direction of SVGD and the kernel Stein discrepancy.

With ``k(x, y) = exp(-|x - y|^2 / h)`` and the score ``s = grad log p``:

- Stein direction (Liu & Wang 2016):
  ``phi(x_i) = 1/N sum_j [k(x_j, x_i) s(x_j) + grad_{x_j} k(x_j, x_i)]``.
- Stein kernel (Liu, Lee & Jordan 2016):
  ``k_p(x, y) = k [s_x . s_y + (2/h) r . (s_x - s_y) + 2d/h - 4|r|^2/h^2]``, ``r = x - y``;
  ``KSD^2 = 1/N^2 sum_{i,j} k_p(x_i, x_j)``.
- Median heuristic: ``h = med(|x_i - x_j|^2) / log(N + 1)`` (Liu & Wang 2016), recomputed
  every step and held fixed (no gradient) within it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["squared_distances", "median_bandwidth", "rbf_kernel", "stein_direction",
           "kernel_stein_discrepancy"]


def squared_distances(x: Float[Array, "n d"], y: Float[Array, "m d"]) -> Float[Array, "n m"]:
    """Pairwise squared Euclidean distances (clipped at zero)."""
    d2 = (jnp.sum(x**2, -1)[:, None] + jnp.sum(y**2, -1)[None, :] - 2.0 * x @ y.T)
    return jnp.maximum(d2, 0.0)


def median_bandwidth(x: Float[Array, "n d"]) -> Float[Array, ""]:
    """Median heuristic ``med^2 / log(n + 1)`` (no gradient flows through it)."""
    n = x.shape[0]
    d2 = jax.lax.stop_gradient(squared_distances(x, x))
    med = jnp.median(d2)
    h = med / jnp.log(n + 1.0)
    return jnp.where(h > 0, h, 1.0)


def rbf_kernel(x, y, bandwidth):
    """``k(x_i, y_j) = exp(-|x_i - y_j|^2 / h)`` as an ``(n, m)`` matrix."""
    return jnp.exp(-squared_distances(x, y) / bandwidth)


def stein_direction(x: Float[Array, "n d"], scores: Float[Array, "n d"], bandwidth=None):
    """The SVGD direction ``phi(x_i)`` for every particle (an ``(n, d)`` array)."""
    h = median_bandwidth(x) if bandwidth is None else bandwidth
    k = rbf_kernel(x, x, h)  # k[j, i]
    n = x.shape[0]
    drive = k.T @ scores
    # grad_{x_j} k(x_j, x_i) = -2/h (x_j - x_i) k_ji; summed over j.
    repulse = (2.0 / h) * (x * jnp.sum(k, axis=0)[:, None] - k.T @ x)
    return (drive + repulse) / n


def kernel_stein_discrepancy(x, scores, bandwidth=None) -> Float[Array, ""]:
    """Squared KSD of the particles' empirical measure (V-statistic)."""
    h = median_bandwidth(x) if bandwidth is None else bandwidth
    n, d = x.shape
    k = rbf_kernel(x, x, h)
    d2 = squared_distances(x, x)
    ss = scores @ scores.T
    # r . (s_x - s_y) with r = x_i - x_j: x_i.s_i - x_i.s_j - x_j.s_i + x_j.s_j
    xs = x @ scores.T  # xs[i, j] = x_i . s_j
    diag = jnp.diag(xs)
    r_ds = diag[:, None] - xs - xs.T + diag[None, :]
    kp = k * (ss + (2.0 / h) * r_ds + 2.0 * d / h - 4.0 * d2 / h**2)
    return jnp.sum(kp) / n**2
