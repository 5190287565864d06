"""Gaussian mixtures, exact conjugate posteriors of mixture priors, and their KL divergence.

Maths. A mixture over ``theta in R^d`` with ``K`` components,

    p(theta) = sum_k w_k N(theta; mu_k, L_k L_k^T),

is stored as ``log_weights`` (K,), ``means`` (K, d) and lower-triangular Cholesky factors
``scale_tril`` (K, d, d) of the component covariances (diagonal components are the special
case ``L_k = diag(scales_k)``). A component of weight zero (log-weight ``-inf``) is absent:
that is how mixtures of different sizes are padded to one shape for batching.

A Gaussian *site* ``t(theta) = exp(h^T theta - theta^T Lambda theta / 2)`` (precision
increment ``Lambda``, shift ``h``, possibly one per component) maps a mixture prior to the
mixture

    p(theta) t(theta) / Z = sum_k w'_k N(theta; mu'_k, Sigma'_k),
    P_k = Sigma_k^-1 + Lambda_k,  Sigma'_k = P_k^-1,  mu'_k = P_k^-1 (Sigma_k^-1 mu_k + h_k),
    w'_k ∝ w_k Z_k,  log Z_k = (eta_k^T mu'_k - mu_k^T Sigma_k^-1 mu_k) / 2
                                - log|L_k| - log|chol(P_k)|,  eta_k = Sigma_k^-1 mu_k + h_k,

(:func:`multiply_gaussian_site`). A linear-Gaussian likelihood ``y_i ~ N(A_i theta,
sigma^2 I)`` is such a site with ``Lambda = sum_i A_i^T A_i / sigma^2`` and
``h = sum_i A_i^T y_i / sigma^2``, so the posterior of a mixture prior is again a mixture
with the same number of components, exactly (Alspach & Sorenson 1972). Its components
have full covariance in general (regression), hence the Cholesky storage.

References:
    Alspach & Sorenson (1972), Nonlinear Bayesian estimation using Gaussian sum
    approximations, IEEE Transactions on Automatic Control.
    Bishop (2006), Pattern Recognition and Machine Learning, sections 2.3.3 and 3.3.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

__all__ = [
    "GaussianMixture",
    "ConjugatePosterior",
    "KLEstimate",
    "stack_mixtures",
    "multiply_gaussian_site",
    "linear_gaussian_posterior",
    "gaussian_mean_posterior",
    "linear_regression_posterior",
    "kl_divergence",
]

# How far ``logsumexp(log_weights)`` may be from 0 (weights summing to one) in float32.
WEIGHT_SUM_TOLERANCE = 1e-3


def _is_traced(*values) -> bool:
    return any(isinstance(value, jax.core.Tracer) for value in values)


class GaussianMixture(eqx.Module):
    """A mixture of multivariate normal distributions (diagonal or full covariance).

    Methods describe one mixture; a batch of mixtures is a ``GaussianMixture`` whose arrays
    carry leading batch axes, used through ``jax.vmap`` (``batch_shape`` names them and
    :meth:`select` takes one out).

    Attributes:
        log_weights: log mixture weights, ``(..., K)``; ``-inf`` marks an absent component.
        means: component means, ``(..., K, d)``.
        scale_tril: lower-triangular Cholesky factors of the component covariances,
            ``(..., K, d, d)``, with a positive diagonal.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> prior = GaussianMixture.from_weights(
        ...     jnp.array([0.3, 0.7]), jnp.array([[-1.0], [2.0]]), jnp.array([[0.5], [1.0]]))
        >>> round(float(prior.mean()[0]), 4)
        1.1
    """

    log_weights: Float[Array, "*batch K"]
    means: Float[Array, "*batch K d"]
    scale_tril: Float[Array, "*batch K d d"]

    def __init__(
        self,
        log_weights: Float[ArrayLike, "*batch K"],
        means: Float[ArrayLike, "*batch K d"],
        scales: Float[ArrayLike, "*batch K d"] | None = None,
        *,
        scale_tril: Float[ArrayLike, "*batch K d d"] | None = None,
        validate: bool = True,
    ):
        """Build a mixture from log-weights, means and either scales or Cholesky factors.

        Args:
            log_weights: log mixture weights ``(..., K)``, summing (as weights) to one;
                ``-inf`` for an absent (padding) component.
            means: component means ``(..., K, d)``.
            scales: diagonal standard deviations ``(..., K, d)`` (positive); or
            scale_tril: lower-triangular Cholesky factors ``(..., K, d, d)`` with a positive
                diagonal. Exactly one of ``scales`` and ``scale_tril``.
            validate: check values (finite, positive scales, weights summing to one) when the
                arrays are concrete; shapes are always checked. Inside ``jit`` values are
                tracers and only shapes can be checked.

        Raises:
            ValueError: shapes that do not fit together, NaN or infinite values, weights
                that do not sum to one, non-positive scales, a non-triangular factor.
        """
        if (scales is None) == (scale_tril is None):
            raise ValueError("Expected exactly one of scales and scale_tril, got "
                             f"{'both' if scales is not None else 'neither'}.")
        log_weights = jnp.asarray(log_weights, dtype=jnp.float32)
        means = jnp.asarray(means, dtype=jnp.float32)
        if log_weights.ndim < 1:
            raise ValueError(f"Expected log_weights of shape (..., K), got shape "
                             f"{log_weights.shape}.")
        if means.shape[:-1] != log_weights.shape or means.ndim < 2:
            raise ValueError(f"Expected means of shape {log_weights.shape + ('d',)} to match "
                             f"log_weights of shape {log_weights.shape}, got {means.shape}.")
        dim = means.shape[-1]
        if scales is not None:
            scales = jnp.asarray(scales, dtype=jnp.float32)
            if scales.shape != means.shape:
                raise ValueError(f"Expected scales of shape {means.shape} (like means), got "
                                 f"{scales.shape}.")
            if validate and not _is_traced(scales):
                _check_finite("scales", scales)
                if np.any(np.asarray(scales) <= 0):
                    raise ValueError(f"Expected positive scales, got minimum "
                                     f"{float(np.min(np.asarray(scales)))}.")
            scale_tril = scales[..., :, None] * jnp.eye(dim, dtype=jnp.float32)
        else:
            scale_tril = jnp.asarray(scale_tril, dtype=jnp.float32)
            if scale_tril.shape != means.shape + (dim,):
                raise ValueError(f"Expected scale_tril of shape {means.shape + (dim,)}, got "
                                 f"{scale_tril.shape}.")
        self.log_weights = log_weights
        self.means = means
        self.scale_tril = scale_tril
        if validate:
            self.validate()

    @classmethod
    def from_weights(
        cls,
        weights: Float[ArrayLike, "*batch K"],
        means: Float[ArrayLike, "*batch K d"],
        scales: Float[ArrayLike, "*batch K d"] | None = None,
        *,
        scale_tril: Float[ArrayLike, "*batch K d d"] | None = None,
    ) -> GaussianMixture:
        """A mixture from weights (non-negative, summing to one; zero marks padding)."""
        weights = jnp.asarray(weights, dtype=jnp.float32)
        if not _is_traced(weights):
            _check_finite("weights", weights)
            if np.any(np.asarray(weights) < 0):
                raise ValueError(f"Expected non-negative weights, got minimum "
                                 f"{float(np.min(np.asarray(weights)))}.")
        return cls(jnp.log(weights), means, scales, scale_tril=scale_tril)

    def validate(self) -> GaussianMixture:
        """Check the values (no-op under ``jit``); returns ``self``.

        Raises:
            ValueError: naming the first problem found.
        """
        if _is_traced(self.log_weights, self.means, self.scale_tril):
            return self
        log_weights = np.asarray(self.log_weights)
        if np.any(np.isnan(log_weights)) or np.any(log_weights == np.inf):
            raise ValueError(f"Expected finite log_weights (or -inf for an absent component), "
                             f"got {log_weights}.")
        present = log_weights > -np.inf
        if not np.all(np.any(present, axis=-1)):
            raise ValueError("Expected at least one component with positive weight, got all "
                             "weights zero.")
        with np.errstate(over="ignore"):
            total = np.exp(log_weights).sum(axis=-1)
        if np.any(np.abs(total - 1.0) > WEIGHT_SUM_TOLERANCE):
            worst = total.reshape(-1)[np.argmax(np.abs(total - 1.0).reshape(-1))]
            raise ValueError(f"Expected mixture weights summing to 1, got sum {float(worst):.6g}.")
        means = np.asarray(self.means)
        if not np.all(np.isfinite(means)):
            raise ValueError("Expected finite means, got NaN or inf.")
        tril = np.asarray(self.scale_tril)
        _check_finite("scale_tril", tril)
        diagonal = np.diagonal(tril, axis1=-2, axis2=-1)
        if np.any(diagonal[present] <= 0):
            raise ValueError(f"Expected positive scales (the diagonal of scale_tril), got "
                             f"minimum {float(np.min(diagonal[present]))}.")
        if np.any(np.triu(tril, k=1) != 0):
            raise ValueError("Expected scale_tril to be lower-triangular, got nonzero entries "
                             "above the diagonal.")
        return self

    @property
    def num_components(self) -> int:
        """``K``, the number of component slots (absent ones included)."""
        return self.log_weights.shape[-1]

    @property
    def dim(self) -> int:
        """``d``, the dimension of ``theta``."""
        return self.means.shape[-1]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch axes (``()`` for one mixture)."""
        return self.log_weights.shape[:-1]

    @property
    def weights(self) -> Float[Array, "*batch K"]:
        return jnp.exp(self.log_weights)

    @property
    def component_mask(self) -> Bool[Array, "*batch K"]:
        """True for the components with positive weight."""
        return self.log_weights > -jnp.inf

    @property
    def component_covariances(self) -> Float[Array, "*batch K d d"]:
        return self.scale_tril @ jnp.swapaxes(self.scale_tril, -1, -2)

    @property
    def scales(self) -> Float[Array, "*batch K d"]:
        """Marginal standard deviations of each component."""
        return jnp.sqrt(jnp.sum(self.scale_tril**2, axis=-1))

    def select(self, index) -> GaussianMixture:
        """The mixture(s) at ``index`` of the batch axes."""
        return jax.tree.map(lambda leaf: leaf[index], self)

    def component_log_probs(self, theta: Float[ArrayLike, "*shape d"]) -> Float[Array, "*shape K"]:
        """``log N(theta; mu_k, Sigma_k)`` for every component (absent ones included)."""
        theta = jnp.asarray(theta, dtype=jnp.float32)
        diff = theta[..., None, :] - self.means
        # One small inverse per component and a product per point: XLA's CPU triangular
        # solve, batched over points x components, hung intermittently (jaxlib 0.10.2).
        eye = jnp.eye(self.dim, dtype=jnp.float32)
        safe_tril = jnp.where(self.component_mask[..., None, None], self.scale_tril, eye)
        inverse = jax.scipy.linalg.solve_triangular(safe_tril, jnp.broadcast_to(
            eye, safe_tril.shape), lower=True)
        z = jnp.einsum("...kij,...kj->...ki", inverse, diff)
        log_det = jnp.sum(jnp.log(jnp.diagonal(safe_tril, axis1=-2, axis2=-1)), -1)
        return -0.5 * jnp.sum(z**2, -1) - log_det - 0.5 * self.dim * jnp.log(2 * jnp.pi)

    def log_prob(self, theta: Float[ArrayLike, "*shape d"]) -> Float[Array, "*shape"]:
        """Log-density at ``theta`` (any leading axes)."""
        theta = jnp.asarray(theta, dtype=jnp.float32)
        if theta.shape[-1:] != (self.dim,):
            raise ValueError(f"Expected theta of shape (..., {self.dim}), got {theta.shape}.")
        terms = jnp.where(self.component_mask, self.log_weights + self.component_log_probs(theta),
                          -jnp.inf)
        return jax.nn.logsumexp(terms, axis=-1)

    def sample(self, key: PRNGKeyArray, num_samples: int) -> Float[Array, "num_samples d"]:
        """``num_samples`` independent draws."""
        component_key, normal_key = jax.random.split(key)
        components = jax.random.categorical(component_key, self.log_weights,
                                            shape=(num_samples,))
        noise = jax.random.normal(normal_key, (num_samples, self.dim))
        return self.means[components] + jnp.einsum("nij,nj->ni", self.scale_tril[components],
                                                   noise)

    def mean(self) -> Float[Array, "*batch d"]:
        """The mixture mean ``sum_k w_k mu_k``."""
        return jnp.einsum("...k,...kd->...d", self.weights, self.means)

    def covariance(self) -> Float[Array, "*batch d d"]:
        """The mixture covariance ``sum_k w_k (Sigma_k + (mu_k - m)(mu_k - m)^T)``."""
        centred = self.means - self.mean()[..., None, :]
        spread = centred[..., :, None] * centred[..., None, :]
        return jnp.einsum("...k,...kij->...ij", self.weights,
                          self.component_covariances + spread)

    def marginal_sd(self) -> Float[Array, "*batch d"]:
        """Marginal standard deviations of the mixture."""
        return jnp.sqrt(jnp.diagonal(self.covariance(), axis1=-2, axis2=-1))

    def pad(self, num_components: int) -> GaussianMixture:
        """The same distribution with ``num_components`` slots (absent ones appended)."""
        extra = num_components - self.num_components
        if extra < 0:
            raise ValueError(f"Expected num_components >= {self.num_components}, got "
                             f"{num_components}.")
        if extra == 0:
            return self
        batch = self.batch_shape
        eye = jnp.broadcast_to(jnp.eye(self.dim), batch + (extra, self.dim, self.dim))
        return GaussianMixture(
            jnp.concatenate([self.log_weights, jnp.full(batch + (extra,), -jnp.inf)], -1),
            jnp.concatenate([self.means, jnp.zeros(batch + (extra, self.dim))], -2),
            scale_tril=jnp.concatenate([self.scale_tril, eye], -3),
            validate=False,
        )


def _check_finite(name, value):
    if not np.all(np.isfinite(np.asarray(value))):
        raise ValueError(f"Expected finite {name}, got NaN or inf.")


def stack_mixtures(mixtures: list[GaussianMixture]) -> GaussianMixture:
    """A batch (leading axis) of unbatched mixtures, padded to the largest ``K``."""
    if not mixtures:
        raise ValueError("Expected at least one mixture, got none.")
    dims = {mixture.dim for mixture in mixtures}
    if len(dims) != 1:
        raise ValueError(f"Expected mixtures of one dimension, got dimensions {sorted(dims)}.")
    size = max(mixture.num_components for mixture in mixtures)
    padded = [mixture.pad(size) for mixture in mixtures]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *padded)


class ConjugatePosterior(NamedTuple):
    """An exact posterior and the log marginal likelihood of the data.

    Attributes:
        posterior: the posterior mixture (same components as the prior).
        log_evidence: ``log p(data)`` under the prior.
    """

    posterior: GaussianMixture
    log_evidence: Float[Array, ""]


def _reverse(matrix):
    return matrix[..., ::-1, ::-1]


def multiply_gaussian_site(
    prior: GaussianMixture,
    precision: Float[ArrayLike, "*K d d"],
    shift: Float[ArrayLike, "*K d"],
    log_scale: Float[ArrayLike, "*K"] = 0.0,
) -> ConjugatePosterior:
    """The mixture ``prior(theta) t_k(theta) / Z`` for Gaussian sites ``t_k``.

    ``t_k(theta) = exp(log_scale_k + shift_k^T theta - theta^T precision_k theta / 2)``, one
    site per component or one shared (leading ``K`` axis absent). ``precision`` must be
    symmetric positive semi-definite: a singular one (fewer points than parameters) is fine.

    Args:
        prior: an unbatched mixture (vmap for batches).
        precision: ``Lambda`` ``(d, d)`` or ``(K, d, d)``.
        shift: ``h`` ``(d,)`` or ``(K, d)``.
        log_scale: log-constant of each site, ``()`` or ``(K,)``.

    Returns:
        The product mixture and ``log Z = log integral prior(theta) t(theta) dtheta``.
    """
    dim, size = prior.dim, prior.num_components
    precision = jnp.broadcast_to(jnp.asarray(precision, jnp.float32), (size, dim, dim))
    shift = jnp.broadcast_to(jnp.asarray(shift, jnp.float32), (size, dim))
    log_scale = jnp.broadcast_to(jnp.asarray(log_scale, jnp.float32), (size,))
    eye = jnp.eye(dim, dtype=jnp.float32)

    def one(mean, tril, lam, h):
        tril_inv = jax.scipy.linalg.solve_triangular(tril, eye, lower=True)
        prior_precision = tril_inv.T @ tril_inv
        prior_eta = prior_precision @ mean
        post_precision = prior_precision + lam
        post_precision = 0.5 * (post_precision + post_precision.T)
        # The Cholesky factor of the covariance P^-1 without inverting P: with J the reversal
        # permutation and J P J = R R^T, P^-1 = (J R^-T J)(J R^-T J)^T, J R^-T J lower.
        reversed_chol = jnp.linalg.cholesky(_reverse(post_precision))
        reversed_inv = jax.scipy.linalg.solve_triangular(reversed_chol, eye, lower=True)
        post_tril = _reverse(reversed_inv.T)
        eta = prior_eta + h
        post_mean = post_tril @ (post_tril.T @ eta)
        log_z = (0.5 * (eta @ post_mean - mean @ prior_eta)
                 - jnp.sum(jnp.log(jnp.diagonal(tril)))
                 - jnp.sum(jnp.log(jnp.diagonal(reversed_chol))))
        return post_mean, post_tril, log_z

    mask = prior.component_mask
    # Absent components get a harmless stand-in so that no NaN reaches the gradients.
    safe_tril = jnp.where(mask[:, None, None], prior.scale_tril, eye)
    safe_mean = jnp.where(mask[:, None], prior.means, 0.0)
    post_mean, post_tril, log_z = jax.vmap(one)(safe_mean, safe_tril, precision, shift)
    # Absent components keep the prior's slots unchanged.
    post_mean = jnp.where(mask[:, None], post_mean, prior.means)
    post_tril = jnp.where(mask[:, None, None], post_tril, prior.scale_tril)
    joint = jnp.where(mask, prior.log_weights + log_z + log_scale, -jnp.inf)
    log_evidence = jax.nn.logsumexp(joint)
    posterior = GaussianMixture(joint - log_evidence, post_mean, scale_tril=post_tril,
                                validate=False)
    return ConjugatePosterior(posterior, log_evidence)


def _check_points(name, points, mask, width):
    points = jnp.asarray(points, jnp.float32)
    if points.ndim != 2 or (width is not None and points.shape[1] != width):
        wanted = f"(n, {width})" if width is not None else "(n, p)"
        raise ValueError(f"Expected {name} of shape {wanted}, got {points.shape}.")
    if mask is None:
        mask = jnp.ones(points.shape[0], bool)
    mask = jnp.asarray(mask)
    if mask.shape != points.shape[:1]:
        raise ValueError(f"Expected mask of shape {points.shape[:1]}, got {mask.shape}.")
    return points, mask.astype(bool)


def linear_gaussian_posterior(
    prior: GaussianMixture,
    design: Float[ArrayLike, "n o d"],
    observations: Float[ArrayLike, "n o"],
    mask: Bool[ArrayLike, " n"] | None,
    noise_sd: float,
) -> ConjugatePosterior:
    """Exact posterior of a mixture prior under ``y_i ~ N(A_i theta, noise_sd^2 I)``.

    Args:
        prior: unbatched mixture over ``theta`` (vmap for batches).
        design: ``A_i``, ``(n, o, d)``.
        observations: ``y_i``, ``(n, o)``.
        mask: which of the ``n`` points are observed (None: all).
        noise_sd: the known noise standard deviation.

    Returns:
        The posterior (same number of components, full covariance) and ``log p(y)``.
    """
    design = jnp.asarray(design, jnp.float32)
    observations = jnp.asarray(observations, jnp.float32)
    if design.ndim != 3 or design.shape[2] != prior.dim:
        raise ValueError(f"Expected design of shape (n, o, {prior.dim}), got {design.shape}.")
    if observations.shape != design.shape[:2]:
        raise ValueError(f"Expected observations of shape {design.shape[:2]}, got "
                         f"{observations.shape}.")
    if mask is None:
        mask = jnp.ones(design.shape[0], bool)
    mask = jnp.asarray(mask)
    if mask.shape != design.shape[:1]:
        raise ValueError(f"Expected mask of shape {design.shape[:1]}, got {mask.shape}.")
    # Unobserved rows may hold anything (NaN included): zero them before any product.
    observed = mask.astype(bool)
    design = jnp.where(observed[:, None, None], design, 0.0)
    observations = jnp.where(observed[:, None], observations, 0.0)
    mask = observed.astype(jnp.float32)
    variance = jnp.float32(noise_sd) ** 2
    precision = jnp.einsum("n,noi,noj->ij", mask, design, design) / variance
    shift = jnp.einsum("n,noi,no->i", mask, design, observations) / variance
    num_observed = jnp.sum(mask) * design.shape[1]
    log_const = (-0.5 * jnp.sum(mask[:, None] * observations**2) / variance
                 - 0.5 * num_observed * jnp.log(2 * jnp.pi * variance))
    posterior, log_z = multiply_gaussian_site(prior, precision, shift)
    return ConjugatePosterior(posterior, log_z + log_const)


def gaussian_mean_posterior(
    prior: GaussianMixture,
    x: Float[ArrayLike, "n d"],
    mask: Bool[ArrayLike, " n"] | None,
    noise_sd: float,
) -> GaussianMixture:
    """Exact posterior of a mixture prior on the mean of ``x_i ~ N(theta, noise_sd^2 I)``.

    Component ``k`` becomes ``N(P^-1 (Sigma_k^-1 mu_k + n xbar / s^2), P^-1)`` with
    ``P = Sigma_k^-1 + n / s^2 I`` (diagonal when ``Sigma_k`` is) and weight
    ``∝ w_k N(xbar; mu_k, Sigma_k + s^2 / n I)``; masked points are ignored.
    """
    x, mask = _check_points("x", x, mask, prior.dim)
    eye = jnp.broadcast_to(jnp.eye(prior.dim), (x.shape[0], prior.dim, prior.dim))
    return linear_gaussian_posterior(prior, eye, x, mask, noise_sd).posterior


def linear_regression_posterior(
    prior: GaussianMixture,
    X: Float[ArrayLike, "n d"],  # noqa: N803 (the design matrix)
    y: Float[ArrayLike, " n"],
    mask: Bool[ArrayLike, " n"] | None,
    noise_sd: float,
) -> GaussianMixture:
    """Exact posterior of a mixture prior on ``beta`` for ``y = X beta + eps``.

    Component ``k`` becomes ``N(P^-1 (Sigma_k^-1 mu_k + X^T y / s^2), P^-1)`` with
    ``P = Sigma_k^-1 + X^T X / s^2`` (full covariance) and weight
    ``∝ w_k N(y; X mu_k, X Sigma_k X^T + s^2 I)``; masked rows are ignored.
    """
    X, mask = _check_points("X", X, mask, prior.dim)  # noqa: N806
    y = jnp.asarray(y, jnp.float32)
    if y.shape != X.shape[:1]:
        raise ValueError(f"Expected y of shape {X.shape[:1]}, got {y.shape}.")
    return linear_gaussian_posterior(prior, X[:, None, :], y[:, None], mask, noise_sd).posterior


class KLEstimate(NamedTuple):
    """A Monte Carlo estimate of ``KL(p || q)``.

    Attributes:
        value: mean of ``log p(x) - log q(x)`` over ``x ~ p``.
        standard_error: its Monte Carlo standard error.
    """

    value: Float[Array, ""]
    standard_error: Float[Array, ""]


def kl_divergence(
    p: GaussianMixture, q: GaussianMixture, key: PRNGKeyArray, *, num_samples: int = 4096
) -> KLEstimate:
    """``KL(p || q) = E_p[log p - log q]`` estimated from ``num_samples`` draws of ``p``.

    Unbatched mixtures (vmap for batches). Unbiased; the estimate may be slightly negative
    when ``q`` is close to ``p``.
    """
    if p.dim != q.dim:
        raise ValueError(f"Expected mixtures of one dimension, got {p.dim} and {q.dim}.")
    draws = p.sample(key, num_samples)
    log_ratio = p.log_prob(draws) - q.log_prob(draws)
    return KLEstimate(jnp.mean(log_ratio), jnp.std(log_ratio) / jnp.sqrt(num_samples))
