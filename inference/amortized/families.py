"""Model families an amortizer is trained on: a hyper-distribution over mixture priors, a
simulator, the likelihood, and (conjugate families) the exact posterior.

A family is a plain, frozen description (its name and hashable settings) that a checkpoint
stores as JSON and compares on loading (:func:`family_to_json`, :func:`family_from_json`).
One training example is

    prior ~ hyperprior,   theta ~ prior,   n ~ U{min_points, ..., max_points},
    data_i | theta ~ p(x | theta)  (i < n),

with the data padded to ``max_points`` rows and a mask marking the ``n`` observed ones.

The hyper-distribution (:class:`MixtureHyperprior`): ``K ~ U{min_components, ...,
max_components}``, weights ``~ Dirichlet(concentration)``, means ``~ U[mean_low,
mean_high]^d``, marginal standard deviations log-uniform on ``[scale_low, scale_high]``,
and correlations from a unit lower-triangular matrix ``B`` with off-diagonal entries
``~ U[-max_shape, max_shape]``: ``Sigma = diag(s) C diag(s)`` with ``chol(C)`` the rows of
``B`` normalised to unit length. Every parameter has a bounded range that
:meth:`MixtureHyperprior.problems` checks (``B`` is recovered from ``chol(Sigma)`` by
dividing each row by its diagonal entry).

Registered families (:func:`get_family`, :func:`family_names`): ``gaussian_mean_1d``,
``gaussian_mean_2d``, ``gaussian_mean_3d`` (``x_i ~ N(theta, 1)``) and
``linear_regression`` (three coefficients, ``y = beta_0 + beta_1 t + beta_2 t^2 + eps``),
``linear_regression_4`` (cubic), all conjugate; and ``logistic_regression``
(``y_i ~ Bernoulli(sigmoid(beta_0 + beta_1 z_1 + beta_2 z_2))``, ``z ~ N(0, I_2)``), which
is not: its accuracy is judged against importance-sampled reference posteriors
(:mod:`~ppl.inference.amortized.reference`) and NUTS.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from ppl.validation import check_count

from .gmm import ConjugatePosterior, GaussianMixture, linear_gaussian_posterior

__all__ = [
    "MixtureHyperprior",
    "AbstractFamily",
    "GaussianMeanFamily",
    "LinearRegressionFamily",
    "LogisticRegressionFamily",
    "register_family",
    "get_family",
    "family_names",
    "family_to_json",
    "family_from_json",
]

# Relative slack when checking a prior against the hyper-distribution's bounds (float32).
_RANGE_TOLERANCE = 1e-5



def _positive_float(name, value, minimum=0.0, strict=True):
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        raise ValueError(f"Expected {name} {'>' if strict else '>='} {minimum}, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class MixtureHyperprior:
    """A hyper-distribution over Gaussian-mixture priors (see the module docstring).

    Attributes:
        max_components: most components of a prior (priors are padded to this many).
        min_components: fewest components.
        mean_low, mean_high: range of every coordinate of a component mean.
        scale_low, scale_high: range of a component's marginal standard deviations.
        max_shape: bound on the off-diagonal entries of the unit lower-triangular factor
            of a component's correlation matrix (0: diagonal components).
        concentration: Dirichlet concentration of the weights.
    """

    max_components: int = 4
    min_components: int = 1
    mean_low: float = -3.0
    mean_high: float = 3.0
    scale_low: float = 0.1
    scale_high: float = 3.0
    max_shape: float = 0.0
    concentration: float = 1.0

    def __post_init__(self):
        check_count("max_components", self.max_components)
        check_count("min_components", self.min_components)
        if self.min_components > self.max_components:
            raise ValueError(f"Expected min_components <= max_components "
                             f"({self.max_components}), got {self.min_components}.")
        if not (math.isfinite(self.mean_low) and math.isfinite(self.mean_high)
                and self.mean_low < self.mean_high):
            raise ValueError(f"Expected finite mean_low < mean_high, got {self.mean_low} and "
                             f"{self.mean_high}.")
        _positive_float("scale_low", self.scale_low)
        if not (math.isfinite(self.scale_high) and self.scale_high > self.scale_low):
            raise ValueError(f"Expected scale_high > scale_low ({self.scale_low}), got "
                             f"{self.scale_high}.")
        _positive_float("max_shape", self.max_shape, strict=False)
        _positive_float("concentration", self.concentration)

    def sample(self, key: PRNGKeyArray, dim: int) -> GaussianMixture:
        """One prior, padded to ``max_components`` (absent components have weight 0)."""
        size = self.max_components
        count_key, weight_key, mean_key, scale_key, shape_key = jax.random.split(key, 5)
        count = jax.random.randint(count_key, (), self.min_components, size + 1)
        present = jnp.arange(size) < count
        gammas = jax.random.gamma(weight_key, self.concentration, (size,))
        gammas = jnp.where(present, jnp.maximum(gammas, 1e-30), 0.0)
        log_weights = jnp.where(present, jnp.log(jnp.where(present, gammas, 1.0)), -jnp.inf)
        log_weights = log_weights - jnp.log(jnp.sum(gammas))
        means = jax.random.uniform(mean_key, (size, dim), minval=self.mean_low,
                                   maxval=self.mean_high)
        scales = jnp.exp(jax.random.uniform(scale_key, (size, dim),
                                            minval=math.log(self.scale_low),
                                            maxval=math.log(self.scale_high)))
        shape = jax.random.uniform(shape_key, (size, dim, dim), minval=-self.max_shape,
                                   maxval=self.max_shape)
        unit = jnp.tril(shape, k=-1) + jnp.eye(dim)
        correlation_tril = unit / jnp.linalg.norm(unit, axis=-1, keepdims=True)
        scale_tril = scales[..., :, None] * correlation_tril
        return GaussianMixture(log_weights, means, scale_tril=scale_tril, validate=False)

    def standardization(self) -> tuple[float, float]:
        """``(loc, scale)`` of one coordinate of ``theta`` under the hyper-distribution:
        centre of the mean range and ``sqrt(Var(mean) + E[s^2])``."""
        low, high = self.scale_low, self.scale_high
        expected_variance = (high**2 - low**2) / (2 * math.log(high / low))
        spread = (self.mean_high - self.mean_low) ** 2 / 12
        return 0.5 * (self.mean_low + self.mean_high), math.sqrt(spread + expected_variance)

    def problems(self, prior: GaussianMixture, *, limit: int = 5) -> list[str]:
        """Where ``prior`` (one mixture or a batch) leaves the hyper-distribution's support.

        Checks the number of components, every coordinate of every component mean, every
        marginal standard deviation and every entry of the correlation factor.

        Returns:
            Up to ``limit`` descriptions (empty when the prior is inside), then a count of
            the rest.
        """
        found, total = [], 0
        for bad, describe in self._checks(prior):
            total += int(bad.sum())
            for index in np.argwhere(bad)[: max(0, limit - len(found))]:
                found.append(describe(*(int(i) for i in index)))
        if total > len(found):
            found.append(f"and {total - len(found)} more")
        return found

    def outside(self, prior: GaussianMixture) -> np.ndarray:
        """Booleans of the prior's batch shape: True where a prior leaves the support."""
        flags = np.zeros(int(np.prod(prior.batch_shape, dtype=int)), bool)
        for bad, _ in self._checks(prior):
            flags |= bad.reshape(bad.shape[0], -1).any(axis=1)
        return flags.reshape(prior.batch_shape)

    def _checks(self, prior):
        """``(bad, describe)`` pairs: booleans with the flattened batch axis first, and a
        function of the indices of a True entry that describes it."""
        size, dim = prior.num_components, prior.dim
        log_weights = np.asarray(prior.log_weights, np.float64).reshape(-1, size)
        means = np.asarray(prior.means, np.float64).reshape(-1, size, dim)
        tril = np.asarray(prior.scale_tril, np.float64).reshape(-1, size, dim, dim)
        batched = len(prior.batch_shape) > 0
        present = log_weights > -np.inf

        def outside(value, low, high):
            slack = _RANGE_TOLERANCE * (abs(low) + abs(high) + 1.0)
            return (value < low - slack) | (value > high + slack)

        def where(index, component):
            return (f"prior {index}, component {component}" if batched
                    else f"component {component}")

        with np.errstate(divide="ignore", invalid="ignore"):
            sds = np.sqrt(np.sum(tril**2, axis=-1))
            shape = tril / np.diagonal(tril, axis1=-2, axis2=-1)[..., :, None]
        rows, cols = np.tril_indices(dim, k=-1)
        checks = [
            (present.sum(-1) > self.max_components,
             lambda i: f"{'prior ' + str(i) + ' has ' if batched else ''}"
                       f"{int(present[i].sum())} components, more than the "
                       f"{self.max_components} of the training priors"),
            (present[..., None] & outside(means, self.mean_low, self.mean_high),
             lambda i, k, a: f"{where(i, k)} has mean[{a}] = {means[i, k, a]:.4g}, outside "
                             f"[{self.mean_low:g}, {self.mean_high:g}]"),
            (present[..., None] & outside(sds, self.scale_low, self.scale_high),
             lambda i, k, a: f"{where(i, k)} has sd[{a}] = {sds[i, k, a]:.4g}, outside "
                             f"[{self.scale_low:g}, {self.scale_high:g}]"),
            (present[..., None] & outside(shape[..., rows, cols], -self.max_shape,
                                          self.max_shape),
             lambda i, k, e: f"{where(i, k)} has correlation-factor entry "
                             f"[{rows[e]}, {cols[e]}] = {shape[i, k, rows[e], cols[e]]:.4g}, "
                             f"outside [{-self.max_shape:g}, {self.max_shape:g}]"
                             + (" (the training priors are diagonal)"
                                if self.max_shape == 0 else "")),
        ]
        return checks


class AbstractFamily(abc.ABC):
    """A model family: a hyper-distribution over mixture priors and a simulator.

    Final subclasses are frozen dataclasses with at least the fields ``name``,
    ``max_points``, ``min_points`` and ``hyperprior``, and provide ``dim`` (parameters),
    ``data_labels`` (names of the numbers of a data point), the simulator and the
    likelihood; conjugate ones (``conjugate = True``) also the exact posterior.
    """

    kind: ClassVar[str]
    conjugate: ClassVar[bool] = True
    name: str
    max_points: int
    min_points: int
    hyperprior: MixtureHyperprior

    @property
    @abc.abstractmethod
    def data_labels(self) -> tuple[str, ...]:
        """Names of the ``data_dim`` numbers of a data point."""

    @abc.abstractmethod
    def simulate_data(self, key: PRNGKeyArray, theta: Float[Array, " d"]
                      ) -> Float[Array, "max_points p"]:
        """``max_points`` data points drawn given ``theta``."""

    @abc.abstractmethod
    def log_likelihood(self, theta: Float[Array, " d"], data: Float[Array, "n p"],
                       mask: Bool[Array, " n"]) -> Float[Array, ""]:
        """``log p(data | theta)`` of the observed rows (``mask``) of one data set."""

    def exact_posterior(self, prior: GaussianMixture, data: Float[Array, "n p"],
                        mask: Bool[Array, " n"]) -> ConjugatePosterior:
        """The exact posterior (one prior and one data set; vmap for batches)."""
        raise ValueError(f"Family {self.name!r} ({self.kind}) is not conjugate: it has no "
                         f"closed-form posterior (see ppl.inference.amortized.reference).")

    def data_problems(self, data: np.ndarray, mask: np.ndarray) -> str | None:
        """What is wrong with observed values that have the right shape and are finite
        (``data`` ``(n, p)`` or ``(batch, n, p)``, ``mask`` without the last axis), or
        None."""
        return None

    @property
    def data_dim(self) -> int:
        return len(self.data_labels)

    def sample_prior(self, key: PRNGKeyArray) -> GaussianMixture:
        """A prior from the hyper-distribution, padded to ``hyperprior.max_components``."""
        return self.hyperprior.sample(key, self.dim)

    def simulate(self, key: PRNGKeyArray, prior: GaussianMixture, num_points=None):
        """``theta ~ prior`` and a data set given it.

        Args:
            key: PRNG key.
            prior: an unbatched mixture.
            num_points: observed points (default: uniform on ``min_points..max_points``).

        Returns:
            ``(theta (d,), data (max_points, data_dim), mask (max_points,))``.
        """
        theta_key, count_key, data_key = jax.random.split(key, 3)
        theta = prior.sample(theta_key, 1)[0]
        if num_points is None:
            num_points = jax.random.randint(count_key, (), self.min_points, self.max_points + 1)
        mask = jnp.arange(self.max_points) < num_points
        return theta, self.simulate_data(data_key, theta), mask

    def sample_example(self, key: PRNGKeyArray):
        """One training example ``(prior, theta, data, mask)``."""
        prior_key, simulate_key = jax.random.split(key)
        prior = self.sample_prior(prior_key)
        return (prior, *self.simulate(simulate_key, prior))

    def settings(self) -> dict[str, Any]:
        """The settings, JSON-ready (``family_to_json`` adds the kind)."""
        return _jsonable(dataclasses.asdict(self))


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(item) for item in value]
    return value


def _check_common(family):
    if not isinstance(family.name, str) or not family.name:
        raise ValueError(f"Expected a non-empty family name, got {family.name!r}.")
    if hasattr(family, "noise_sd"):
        _positive_float("noise_sd", family.noise_sd)
    check_count("max_points", family.max_points)
    check_count("min_points", family.min_points, minimum=0)
    if family.min_points > family.max_points:
        raise ValueError(f"Expected min_points <= max_points ({family.max_points}), got "
                         f"{family.min_points}.")
    if not isinstance(family.hyperprior, MixtureHyperprior):
        raise ValueError(f"Expected hyperprior to be a MixtureHyperprior, got "
                         f"{type(family.hyperprior).__name__}.")


@dataclasses.dataclass(frozen=True)
class GaussianMeanFamily(AbstractFamily):
    """The mean of a Gaussian with known noise: ``x_i ~ N(theta, noise_sd^2 I_d)``.

    Attributes:
        name: registry name.
        dim: ``d``, the dimension of ``theta`` and of each data point.
        noise_sd: the known noise standard deviation.
        max_points, min_points: range of the number of observed points.
        hyperprior: the hyper-distribution over mixture priors.
    """

    kind: ClassVar[str] = "gaussian_mean"
    name: str
    dim: int
    noise_sd: float = 1.0
    max_points: int = 24
    min_points: int = 1
    hyperprior: MixtureHyperprior = MixtureHyperprior()

    def __post_init__(self):
        check_count("dim", self.dim)
        _check_common(self)

    @property
    def data_labels(self) -> tuple[str, ...]:
        return tuple(f"x_{i}" for i in range(self.dim))

    def simulate_data(self, key, theta):
        noise = jax.random.normal(key, (self.max_points, self.dim))
        return theta + self.noise_sd * noise

    def log_likelihood(self, theta, data, mask):
        residual = (data - theta) / self.noise_sd
        per_point = (-0.5 * jnp.sum(residual**2, axis=-1)
                     - self.dim * (math.log(self.noise_sd) + 0.5 * math.log(2 * math.pi)))
        return jnp.sum(jnp.where(mask, per_point, 0.0))

    def exact_posterior(self, prior, data, mask):
        eye = jnp.broadcast_to(jnp.eye(self.dim), (data.shape[0], self.dim, self.dim))
        return linear_gaussian_posterior(prior, eye, data, mask, self.noise_sd)


DESIGNS = ("polynomial", "gaussian")


@dataclasses.dataclass(frozen=True)
class LinearRegressionFamily(AbstractFamily):
    """Linear regression with known noise: ``y_i = x_i^T beta + eps_i``.

    A data point is the row ``(x_i, y_i)``. Design rows come from a fixed distribution:
    ``"polynomial"``, ``x_i = (1, t, ..., t^(d-1))`` with ``t ~ U[design_low, design_high]``,
    or ``"gaussian"``, ``x_i ~ N(0, I_d)``.

    Attributes:
        name: registry name.
        num_coefficients: ``d``, the length of ``beta``.
        noise_sd: the known noise standard deviation.
        max_points, min_points: range of the number of observed rows.
        design: ``"polynomial"`` or ``"gaussian"``.
        design_low, design_high: the range of ``t`` for the polynomial design.
        hyperprior: the hyper-distribution over mixture priors on ``beta``.
    """

    kind: ClassVar[str] = "linear_regression"
    name: str
    num_coefficients: int = 3
    noise_sd: float = 0.5
    max_points: int = 24
    min_points: int = 1
    design: str = "polynomial"
    design_low: float = -1.0
    design_high: float = 1.0
    hyperprior: MixtureHyperprior = MixtureHyperprior()

    def __post_init__(self):
        check_count("num_coefficients", self.num_coefficients)
        _check_common(self)
        if self.design not in DESIGNS:
            raise ValueError(f"Expected design in {DESIGNS}, got {self.design!r}.")
        if not self.design_low < self.design_high:
            raise ValueError(f"Expected design_low < design_high, got {self.design_low} and "
                             f"{self.design_high}.")

    @property
    def dim(self) -> int:
        return self.num_coefficients

    @property
    def data_labels(self) -> tuple[str, ...]:
        return tuple(f"x_{i}" for i in range(self.dim)) + ("y",)

    def sample_design(self, key: PRNGKeyArray, num_points: int) -> Float[Array, "n d"]:
        """``num_points`` design rows from the family's design distribution."""
        if self.design == "gaussian":
            return jax.random.normal(key, (num_points, self.dim))
        t = jax.random.uniform(key, (num_points, 1), minval=self.design_low,
                               maxval=self.design_high)
        return t ** jnp.arange(self.dim)

    def simulate_data(self, key, theta):
        design_key, noise_key = jax.random.split(key)
        design = self.sample_design(design_key, self.max_points)
        y = design @ theta + self.noise_sd * jax.random.normal(noise_key, (self.max_points,))
        return jnp.concatenate([design, y[:, None]], axis=1)

    def log_likelihood(self, theta, data, mask):
        design, y = data[:, : self.dim], data[:, self.dim]
        residual = (y - design @ theta) / self.noise_sd
        per_point = -0.5 * residual**2 - math.log(self.noise_sd) - 0.5 * math.log(2 * math.pi)
        return jnp.sum(jnp.where(mask, per_point, 0.0))

    def exact_posterior(self, prior, data, mask):
        design, y = data[:, : self.dim], data[:, self.dim]
        return linear_gaussian_posterior(prior, design[:, None, :], y[:, None], mask,
                                         self.noise_sd)


@dataclasses.dataclass(frozen=True)
class LogisticRegressionFamily(AbstractFamily):
    """Logistic regression: ``y_i ~ Bernoulli(sigmoid(x_i^T beta))``, not conjugate.

    A data point is the row ``(x_i, y_i)`` with ``x_i = (1, z_i)`` (an intercept and
    ``d - 1`` covariates ``z_i ~ N(0, covariate_sd^2 I)``) and ``y_i`` 0 or 1. The posterior
    of a mixture prior has no closed form: accuracy is measured against importance-sampled
    reference posteriors (:mod:`~ppl.inference.amortized.reference`).

    Attributes:
        name: registry name.
        num_coefficients: ``d``, the length of ``beta`` (the intercept included).
        covariate_sd: standard deviation of the covariates.
        max_points, min_points: range of the number of observed rows.
        hyperprior: the hyper-distribution over mixture priors on ``beta``.
    """

    kind: ClassVar[str] = "logistic_regression"
    conjugate: ClassVar[bool] = False
    name: str
    num_coefficients: int = 3
    covariate_sd: float = 1.0
    max_points: int = 32
    min_points: int = 1
    hyperprior: MixtureHyperprior = MixtureHyperprior()

    def __post_init__(self):
        check_count("num_coefficients", self.num_coefficients, minimum=2)
        _positive_float("covariate_sd", self.covariate_sd)
        _check_common(self)

    @property
    def dim(self) -> int:
        return self.num_coefficients

    @property
    def data_labels(self) -> tuple[str, ...]:
        return ("intercept",) + tuple(f"z_{i}" for i in range(1, self.dim)) + ("y",)

    def simulate_data(self, key, theta):
        design_key, outcome_key = jax.random.split(key)
        covariates = self.covariate_sd * jax.random.normal(design_key,
                                                           (self.max_points, self.dim - 1))
        design = jnp.concatenate([jnp.ones((self.max_points, 1)), covariates], axis=1)
        y = jax.random.bernoulli(outcome_key, jax.nn.sigmoid(design @ theta))
        return jnp.concatenate([design, y[:, None].astype(design.dtype)], axis=1)

    def log_likelihood(self, theta, data, mask):
        design, y = data[:, : self.dim], data[:, self.dim]
        logits = design @ theta
        per_point = y * logits - jax.nn.softplus(logits)
        return jnp.sum(jnp.where(mask, per_point, 0.0))

    def data_problems(self, data, mask):
        y, intercept = data[..., self.dim], data[..., 0]
        bad = mask & ~((y == 0) | (y == 1))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            return (f"Expected outcomes y of 0 or 1 for family {self.name!r}, got "
                    f"{y[where]:g} at point {where[-1]}"
                    + (f" of data set {where[0]}" if len(where) > 1 else "") + ".")
        bad = mask & (intercept != 1)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            return (f"Expected the intercept column (the first of {self.data_labels}) to be "
                    f"1 for family {self.name!r}, got {intercept[where]:g} at point "
                    f"{where[-1]}" + (f" of data set {where[0]}" if len(where) > 1 else "")
                    + ".")
        return None


_KINDS: dict[str, type[AbstractFamily]] = {
    GaussianMeanFamily.kind: GaussianMeanFamily,
    LinearRegressionFamily.kind: LinearRegressionFamily,
    LogisticRegressionFamily.kind: LogisticRegressionFamily,
}
_FAMILIES: dict[str, AbstractFamily] = {}


def register_family(family: AbstractFamily) -> AbstractFamily:
    """Register (or replace) ``family`` under its name; returns it."""
    if not isinstance(family, AbstractFamily):
        raise ValueError(f"Expected a model family, got {type(family).__name__}.")
    _FAMILIES[family.name] = family
    return family


def get_family(name: str | AbstractFamily) -> AbstractFamily:
    """The family registered as ``name`` (a family is returned as it is)."""
    if isinstance(name, AbstractFamily):
        return name
    if name not in _FAMILIES:
        raise ValueError(f"Unknown family {name!r}. Available families: "
                         f"{', '.join(family_names())}.")
    return _FAMILIES[name]


def family_names() -> list[str]:
    return sorted(_FAMILIES)


def family_to_json(family: AbstractFamily) -> dict[str, Any]:
    """``{"kind": ..., **settings}``: what a checkpoint stores."""
    return {"kind": family.kind, **family.settings()}


def family_from_json(description: dict[str, Any]) -> AbstractFamily:
    """The family a :func:`family_to_json` dictionary describes."""
    description = dict(description)
    kind = description.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"Expected a family kind in {sorted(_KINDS)}, got {kind!r}.")
    if "hyperprior" in description:
        description["hyperprior"] = MixtureHyperprior(**description["hyperprior"])
    return _KINDS[kind](**description)


for _dim in (1, 2, 3):
    register_family(GaussianMeanFamily(
        name=f"gaussian_mean_{_dim}d", dim=_dim, noise_sd=1.0, max_points=24,
        hyperprior=MixtureHyperprior(max_components=4, mean_low=-4.0, mean_high=4.0,
                                     scale_low=0.1, scale_high=3.0,
                                     max_shape=0.5 if _dim > 1 else 0.0),
    ))
register_family(LinearRegressionFamily(
    name="linear_regression", num_coefficients=3, noise_sd=0.5, max_points=24,
    hyperprior=MixtureHyperprior(max_components=4, mean_low=-2.0, mean_high=2.0,
                                 scale_low=0.1, scale_high=2.0, max_shape=0.5),
))
register_family(LinearRegressionFamily(
    name="linear_regression_4", num_coefficients=4, noise_sd=0.5, max_points=24,
    hyperprior=MixtureHyperprior(max_components=4, mean_low=-2.0, mean_high=2.0,
                                 scale_low=0.1, scale_high=2.0, max_shape=0.5),
))
register_family(LogisticRegressionFamily(
    name="logistic_regression", num_coefficients=3, covariate_sd=1.0, max_points=32,
    hyperprior=MixtureHyperprior(max_components=4, mean_low=-2.0, mean_high=2.0,
                                 scale_low=0.1, scale_high=2.0, max_shape=0.5),
))
