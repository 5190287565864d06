"""NumPyro versions of the posteriordb Stan programs (development set).

Each function is written from the Stan code in ``<posterior>/model.json``: the same
priors (Stan's implicit flat priors as :class:`ImproperFlat`), the same constraints, the
same parameterisation, and the transformed parameters that posteriordb's reference draws
hold as ``numpyro.deterministic`` sites with Stan's names. Constants that Stan drops with
``~`` (normalising terms, truncation of a half-Cauchy) only shift the log-density.

Data sizes (``N``, ``K``, ``T``, ``J``) are Python ints and stay static under ``jit``;
everything else is a traced array, so no Python control flow depends on data values and
recursions run under ``lax.scan``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

__all__ = [
    "ImproperFlat",
    "RestrictedPrior",
    "ark",
    "diamonds",
    "eight_schools_centered",
    "eight_schools_noncentered",
    "garch11",
    "gp_pois_regr",
    "hmm_example",
    "kidscore_momiq",
    "low_dim_gauss_mix",
]


class ImproperFlat(dist.ImproperUniform):
    """Stan's implicit flat prior on a constrained space (log-density 0 on ``support``).

    Unlike :class:`numpyro.distributions.ImproperUniform`, ``sample`` returns a value (Stan's
    initialisation: uniform in ``(-2, 2)`` on the unconstrained scale, mapped by
    ``biject_to(support)``), so the program also runs under plain NumPyro handlers
    (``seed``/``trace``). These are *not* prior draws: the prior is improper, and
    ``Model.sample_prior`` refuses such models (it recognises the ImproperUniform subclass).
    """

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape + self.event_shape
        transform = biject_to(self.support)
        u = jax.random.uniform(key, transform.inverse_shape(shape), minval=-2.0, maxval=2.0)
        return transform(u)


class RestrictedPrior(dist.Distribution):
    """A proper base density restricted to a smaller support, left unnormalised.

    ``log_prob`` is the base's log-density summed over the event (Stan's ``~`` statements
    on an ``ordered``/``positive_ordered`` parameter: the normalising constant
    ``log P_base(support)`` is dropped). ``sample`` draws from the restriction by
    rejection: 32 base draws, the first inside the support (sorted if none is).
    """

    arg_constraints = {}
    pytree_data_fields = ("base",)

    def __init__(self, base, support):
        self.base = base
        self._support = support
        super().__init__(batch_shape=(), event_shape=base.batch_shape + base.event_shape)

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self):
        return self._support

    def log_prob(self, value):
        return jnp.sum(self.base.log_prob(value), axis=-1)

    def sample(self, key, sample_shape=()):
        draws = self.base.sample(key, (32, *sample_shape))
        ok = self._support(draws)
        first = jnp.argmax(ok, axis=0)
        index = jnp.broadcast_to(first[None, ..., None], (1, *draws.shape[1:]))
        chosen = jnp.take_along_axis(draws, index, axis=0)[0]
        return jnp.where(jnp.any(ok, axis=0)[..., None], chosen, jnp.sort(jnp.abs(chosen), -1))


def _flat(support=constraints.real, shape=()):
    return ImproperFlat(support, batch_shape=(), event_shape=tuple(shape))


# -- arK-arK ------------------------------------------------------------------------------------
def ark(K: int, T: int, y):
    """AR(K): ``y_t ~ N(alpha + sum_k beta_k y_{t-k}, sigma)`` for ``t > K``.

    Priors ``alpha, beta ~ N(0, 10)``, ``sigma ~ Cauchy(0, 2.5)`` on ``sigma > 0``. The lag
    matrix is built by static slicing (the recursion is in the data, not the parameters).
    """
    alpha = numpyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 10.0).expand([K]).to_event(1))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    lags = jnp.stack([y[K - k : T - k] for k in range(1, K + 1)], axis=-1)  # (T - K, K)
    numpyro.sample("y", dist.Normal(alpha + lags @ beta, sigma).to_event(1), obs=y[K:])


# -- diamonds-diamonds --------------------------------------------------------------------------
def diamonds(N: int, K: int, X, Y=None, prior_only: int = 0):
    """brms log-log regression on the centred design (intercept ``Intercept`` of ``Xc``).

    ``b ~ N(0, 1)``, ``Intercept ~ StudentT(3, 8, 10)``, ``sigma ~ StudentT(3, 0, 10)``
    truncated to ``sigma > 0`` (a half-t: the ``lccdf`` term), ``Y ~ N(Intercept + Xc b, sigma)``.
    """
    xc = X[:, 1:] - jnp.mean(X[:, 1:], axis=0)
    b = numpyro.sample("b", dist.Normal(0.0, 1.0).expand([K - 1]).to_event(1))
    intercept = numpyro.sample("Intercept", dist.StudentT(3.0, 8.0, 10.0))
    sigma = numpyro.sample("sigma", dist.FoldedDistribution(dist.StudentT(3.0, 0.0, 10.0)))
    if not prior_only:
        numpyro.sample("Y", dist.Normal(intercept + xc @ b, sigma).to_event(1), obs=Y)


# -- eight_schools ------------------------------------------------------------------------------
def eight_schools_centered(J: int, sigma, y=None):
    """Centred: ``theta_j ~ N(mu, tau)``, ``y_j ~ N(theta_j, sigma_j)``.

    Priors ``mu ~ N(0, 5)``, ``tau ~ Cauchy(0, 5)`` on ``tau > 0``.
    """
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    theta = numpyro.sample("theta", dist.Normal(mu, tau).expand([J]).to_event(1))
    numpyro.sample("y", dist.Normal(theta, sigma).to_event(1), obs=y)


def eight_schools_noncentered(J: int, sigma, y=None):
    """``theta = theta_trans * tau + mu`` (deterministic) with ``theta_trans ~ N(0, 1)``."""
    theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0).expand([J]).to_event(1))
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    theta = numpyro.deterministic("theta", theta_trans * tau + mu)
    numpyro.sample("y", dist.Normal(theta, sigma).to_event(1), obs=y)


# -- garch-garch11 ------------------------------------------------------------------------------
def garch11(T: int, y, sigma1):
    """GARCH(1,1): ``sigma_t^2 = alpha0 + alpha1 (y_{t-1} - mu)^2 + beta1 sigma_{t-1}^2``.

    ``sigma_1 = sigma1`` (data), ``y_t ~ N(mu, sigma_t)``. Flat priors on ``mu``,
    ``alpha0 > 0``, ``0 < alpha1 < 1`` and ``0 < beta1 < 1 - alpha1`` (a bound that depends
    on ``alpha1``: flat in ``beta1``, not a normalised uniform). Recursion under ``lax.scan``.
    """
    mu = numpyro.sample("mu", _flat())
    alpha0 = numpyro.sample("alpha0", _flat(constraints.positive))
    alpha1 = numpyro.sample("alpha1", _flat(constraints.unit_interval))
    beta1 = numpyro.sample("beta1", _flat(constraints.interval(0.0, 1.0 - alpha1)))

    def step(sigma_prev, y_prev):
        sigma = jnp.sqrt(alpha0 + alpha1 * jnp.square(y_prev - mu) + beta1 * sigma_prev**2)
        return sigma, sigma

    sigma1 = jnp.asarray(sigma1, dtype=jnp.result_type(float))
    _, rest = jax.lax.scan(step, sigma1, y[:-1])
    sigma = jnp.concatenate([sigma1[None], rest])
    numpyro.sample("y", dist.Normal(mu, sigma).to_event(1), obs=y)


# -- gp_pois_regr-gp_pois_regr ------------------------------------------------------------------
def gp_pois_regr(N: int, x, k=None):
    """Latent GP with a Poisson log link, sampled through ``f_tilde``.

    ``rho ~ Gamma(25, 4)``, ``alpha ~ N+(0, 2)``, ``f_tilde ~ N(0, I)``,
    ``f = chol(K + jitter I) f_tilde`` (deterministic) with the squared-exponential kernel
    ``K_ij = alpha^2 exp(-(x_i - x_j)^2 / (2 rho^2))``, ``k_i ~ Poisson(exp(f_i))``.
    Stan's jitter is 1e-10 (float64); in float32 the Cholesky factor of this nearly
    singular kernel needs more, so the jitter is ``1e-10`` under x64 and ``1e-6 alpha^2``
    otherwise (it adds noise of sd ``1e-3 alpha`` to ``f``, far below the posterior sd).
    """
    rho = numpyro.sample("rho", dist.Gamma(25.0, 4.0))
    alpha = numpyro.sample("alpha", dist.HalfNormal(2.0))
    f_tilde = numpyro.sample("f_tilde", dist.Normal(0.0, 1.0).expand([N]).to_event(1))
    diff = x[:, None] - x[None, :]
    cov = alpha**2 * jnp.exp(-0.5 * jnp.square(diff / rho))
    dtype = jnp.result_type(cov)
    jitter = 1e-10 if dtype == jnp.float64 else 1e-6 * alpha**2
    chol = jnp.linalg.cholesky(cov + jitter * jnp.eye(N, dtype=dtype))
    f = numpyro.deterministic("f", chol @ f_tilde)
    numpyro.sample("k", dist.Poisson(jnp.exp(f)).to_event(1), obs=k)


# -- hmm_example-hmm_example --------------------------------------------------------------------
def hmm_example(N: int, K: int, y):
    """A K-state Gaussian HMM, states marginalised by the forward algorithm (``lax.scan``).

    ``theta1, theta2`` are the simplex rows of the transition matrix (flat priors: uniform
    on the simplex), ``mu`` is ``positive_ordered`` with ``mu_1 ~ N(3, 1)``, ``mu_2 ~ N(10, 1)``
    (unnormalised on the ordered cone), emissions ``y_t | z_t = k ~ N(mu_k, 1)``; as in the
    Stan program the first step has no initial-state probabilities. The marginal
    likelihood enters through ``numpyro.factor("log_lik", ...)``; ``theta`` is exposed.
    """
    if K != 2:
        raise ValueError(f"Expected K == 2 (the Stan program names theta1 and theta2), got {K}.")
    theta1 = numpyro.sample("theta1", dist.Dirichlet(jnp.ones(K)))
    theta2 = numpyro.sample("theta2", dist.Dirichlet(jnp.ones(K)))
    mu = numpyro.sample(
        "mu",
        RestrictedPrior(
            dist.Normal(jnp.array([3.0, 10.0]), 1.0), constraints.positive_ordered_vector
        ),
    )
    theta = numpyro.deterministic("theta", jnp.stack([theta1, theta2]))
    log_theta = jnp.log(theta)  # [j, k]: from state j to state k
    emission = jax.scipy.stats.norm.logpdf(y[:, None], mu, 1.0)  # (N, K)

    def forward(gamma, emission_t):
        gamma = jax.nn.logsumexp(gamma[:, None] + log_theta, axis=0) + emission_t
        return gamma, None

    gamma, _ = jax.lax.scan(forward, emission[0], emission[1:])
    numpyro.factor("log_lik", jax.nn.logsumexp(gamma))


# -- kidiq-kidscore_momiq -----------------------------------------------------------------------
def kidscore_momiq(N: int, mom_iq, kid_score=None):
    """``kid_score ~ N(beta_1 + beta_2 mom_iq, sigma)``; flat ``beta``, ``sigma ~ C+(0, 2.5)``."""
    beta = numpyro.sample("beta", _flat(constraints.real_vector, (2,)))
    sigma = numpyro.sample("sigma", dist.HalfCauchy(2.5))
    numpyro.sample("kid_score", dist.Normal(beta[0] + beta[1] * mom_iq, sigma).to_event(1),
                   obs=kid_score)


# -- low_dim_gauss_mix-low_dim_gauss_mix --------------------------------------------------------
def low_dim_gauss_mix(N: int, y):
    """Two-component 1-D normal mixture with ordered means.

    ``mu`` ordered with ``mu_k ~ N(0, 2)`` (ordered transform), ``sigma_k ~ N+(0, 2)``,
    ``theta ~ Beta(5, 5)``, ``y_n ~ theta N(mu_1, sigma_1) + (1 - theta) N(mu_2, sigma_2)``.
    """
    mu = numpyro.sample("mu", RestrictedPrior(dist.Normal(jnp.zeros(2), 2.0),
                                              constraints.ordered_vector))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0).expand([2]).to_event(1))
    theta = numpyro.sample("theta", dist.Beta(5.0, 5.0))
    mixing = dist.Categorical(probs=jnp.stack([theta, 1.0 - theta]))
    mixture = dist.MixtureSameFamily(mixing, dist.Normal(mu, sigma))
    with numpyro.plate("data", N):
        numpyro.sample("y", mixture, obs=y)
