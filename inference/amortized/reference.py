"""Reference posteriors of non-conjugate families: a Laplace mixture, refined by importance
sampling.

A mixture prior ``sum_k w_k N_k(theta)`` times a smooth log-concave likelihood ``L`` gives
a posterior that is close to a mixture of Laplace approximations, one per component
(:func:`laplace_mixture`): Newton's method finds the mode ``m_k`` of
``N_k(theta) L(theta)``, its Hessian ``H_k`` the component's precision, and the Laplace
evidence ``N_k(m_k) L(m_k) (2 pi)^(d/2) |H_k|^(-1/2)`` its weight (Tierney & Kadane 1986).

:func:`importance_reference` makes that exact in the limit of many draws: draws from a
defensive proposal (the Laplace mixture with its scales widened by
:data:`PROPOSAL_WIDENING`, and the prior with weight :data:`PRIOR_SHARE`, which keeps the
weights bounded where the Laplace mixture is too narrow) are weighted by
``prior(theta) L(theta) / proposal(theta)``; the self-normalised weights give posterior
moments, ``log Z`` (the mean weight, unbiased for ``Z``), and the effective sample size
that says whether to trust them. These are the "truth" a non-conjugate family's
distribution transformer is measured against (:mod:`~ppl.inference.amortized.evaluate`);
they are independent of the network.

References:
    Tierney & Kadane (1986), Accurate approximations for posterior moments and marginal
    densities, JASA.
    Hesterberg (1995), Weighted average importance sampling and defensive mixture
    distributions, Technometrics.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .gmm import ConjugatePosterior, GaussianMixture

__all__ = ["laplace_mixture", "ImportanceReference", "importance_reference",
           "PROPOSAL_WIDENING", "PRIOR_SHARE"]

PROPOSAL_WIDENING = 1.5
PRIOR_SHARE = 0.1
# Newton steps longer than this many prior-component sds are shortened (a guard for
# near-separable data, where the first steps can overshoot).
_MAX_STEP_SDS = 3.0


def laplace_mixture(family, prior: GaussianMixture, data, mask, *,
                    num_steps: int = 30) -> ConjugatePosterior:
    """One Laplace approximation per prior component (one prior and one data set).

    Args:
        family: a family with a smooth ``log_likelihood`` (concave for Newton to be safe).
        prior: an unbatched mixture over ``theta``.
        data, mask: one data set (``(n, data_dim)`` and ``(n,)``).
        num_steps: Newton iterations from each component's mean.

    Returns:
        The Laplace mixture and its log evidence (the Laplace approximation of ``log Z``).
    """
    dim = prior.dim
    eye = jnp.eye(dim, dtype=jnp.float32)

    def log_likelihood(theta):
        return family.log_likelihood(theta, data, mask)

    def one(log_weight, mean, tril):
        tril_inv = jax.scipy.linalg.solve_triangular(tril, eye, lower=True)
        prior_precision = tril_inv.T @ tril_inv
        step_limit = _MAX_STEP_SDS * jnp.min(jnp.sqrt(jnp.sum(tril**2, axis=-1)))

        def log_joint(theta):
            return log_likelihood(theta) - 0.5 * (theta - mean) @ prior_precision @ (theta - mean)

        def newton(theta, _):
            gradient = jax.grad(log_joint)(theta)
            precision = -jax.hessian(log_joint)(theta)
            step = jnp.linalg.solve(precision, gradient)
            norm = jnp.linalg.norm(step)
            step = step * jnp.minimum(1.0, step_limit / jnp.maximum(norm, 1e-30))
            return theta + step, None

        mode, _ = jax.lax.scan(newton, mean, None, length=num_steps)
        precision = -jax.hessian(log_joint)(mode)
        precision = 0.5 * (precision + precision.T)
        chol = jnp.linalg.cholesky(precision)
        # Cholesky factor of the covariance: the transpose-inverse of chol.
        scale_tril = jax.scipy.linalg.solve_triangular(chol, eye, lower=True).T
        scale_tril = jnp.linalg.cholesky(scale_tril @ scale_tril.T)
        log_prior_density = (-0.5 * (mode - mean) @ prior_precision @ (mode - mean)
                             - jnp.sum(jnp.log(jnp.diagonal(tril)))
                             - 0.5 * dim * jnp.log(2 * jnp.pi))
        log_evidence = (log_weight + log_prior_density + log_likelihood(mode)
                        + 0.5 * dim * jnp.log(2 * jnp.pi) - jnp.sum(jnp.log(jnp.diagonal(chol))))
        return mode, scale_tril, log_evidence

    component_mask = prior.component_mask
    safe_tril = jnp.where(component_mask[:, None, None], prior.scale_tril, eye)
    safe_mean = jnp.where(component_mask[:, None], prior.means, 0.0)
    safe_log_weight = jnp.where(component_mask, prior.log_weights, 0.0)
    modes, trils, log_evidences = jax.vmap(one)(safe_log_weight, safe_mean, safe_tril)
    joint = jnp.where(component_mask, log_evidences, -jnp.inf)
    log_evidence = jax.nn.logsumexp(joint)
    posterior = GaussianMixture(
        joint - log_evidence, jnp.where(component_mask[:, None], modes, prior.means),
        scale_tril=jnp.where(component_mask[:, None, None], trils, prior.scale_tril),
        validate=False)
    return ConjugatePosterior(posterior, log_evidence)


class ImportanceReference(NamedTuple):
    """An importance-sampled posterior (one data set).

    Attributes:
        draws: ``(S, d)`` draws from the proposal.
        log_weights: ``(S,)`` self-normalised log weights (they logsumexp to 0).
        log_evidence: ``log Z``, the log of the mean unnormalised weight.
        ess: the effective sample size ``1 / sum w^2``.
        mean, sd: posterior mean and marginal standard deviations.
    """

    draws: Float[Array, "S d"]
    log_weights: Float[Array, " S"]
    log_evidence: Float[Array, ""]
    ess: Float[Array, ""]
    mean: Float[Array, " d"]
    sd: Float[Array, " d"]

    def log_density(self, family, prior: GaussianMixture, data, mask, theta) -> Array:
        """``log p(theta | data)``, normalised by the estimated ``log Z``."""
        return (prior.log_prob(theta) + family.log_likelihood(theta, data, mask)
                - self.log_evidence)


def importance_reference(family, prior: GaussianMixture, data, mask, key: PRNGKeyArray, *,
                         num_draws: int = 4096) -> ImportanceReference:
    """The posterior of one data set by importance sampling from a defensive Laplace
    mixture (see the module docstring)."""
    laplace = laplace_mixture(family, prior, data, mask).posterior
    wide = GaussianMixture(laplace.log_weights, laplace.means,
                           scale_tril=PROPOSAL_WIDENING * laplace.scale_tril, validate=False)
    num_prior = max(1, int(round(PRIOR_SHARE * num_draws)))
    wide_key, prior_key = jax.random.split(key)
    # Stratified: a fixed number of draws from each part of the proposal (lower variance
    # than drawing the part at random, same proposal density).
    draws = jnp.concatenate([wide.sample(wide_key, num_draws - num_prior),
                             prior.sample(prior_key, num_prior)])
    share = num_prior / num_draws
    log_proposal = jnp.logaddexp(jnp.log1p(-share) + jax.vmap(wide.log_prob)(draws),
                                 jnp.log(share) + jax.vmap(prior.log_prob)(draws))
    log_target = (jax.vmap(prior.log_prob)(draws)
                  + jax.vmap(lambda t: family.log_likelihood(t, data, mask))(draws))
    log_raw = log_target - log_proposal
    log_total = jax.nn.logsumexp(log_raw)
    log_weights = log_raw - log_total
    weights = jnp.exp(log_weights)
    mean = weights @ draws
    sd = jnp.sqrt(jnp.maximum(weights @ (draws - mean) ** 2, 0.0))
    return ImportanceReference(draws, log_weights, log_total - jnp.log(num_draws),
                               1.0 / jnp.sum(weights**2), mean, sd)
