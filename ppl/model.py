"""The Model view: one unconstrained, flat view of a probabilistic model.

Every engine consumes a :class:`Model`. Positions ``z`` are flat float vectors on the
unconstrained scale; ``to_constrained`` maps them to a dict of named, constrained values
(deterministic sites included). The log-density is split into ``log_prior`` (which
includes the log-Jacobian of the constraining transform) and ``log_likelihood`` because
tempered SMC anneals only the second.

A model is an :class:`equinox.Module` whose data (the model's arguments) are pytree leaves.
Engines pass the model *through* ``jax.jit`` as an argument, so that running the same
model code on a new data set of the same shapes reuses the compiled program.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["AbstractModel", "LogDensityModel", "from_logdensity", "SiteInfo"]


class SiteInfo(eqx.Module):
    """Static description of one latent site of the flat vector.

    Attributes:
        name: site name.
        shape: constrained shape of the value.
        unconstrained_shape: shape on the unconstrained scale (differs for simplexes etc.).
        offset: where the site starts in the flat vector.
        size: number of unconstrained coordinates.
    """

    name: str
    shape: tuple[int, ...]
    unconstrained_shape: tuple[int, ...]
    offset: int
    size: int


class AbstractModel(eqx.Module):
    """An unconstrained, flat view of a probabilistic model.

    Subclasses implement the abstract methods; engines use only this interface.
    """

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Number of unconstrained coordinates."""

    @property
    @abc.abstractmethod
    def sites(self) -> tuple[SiteInfo, ...]:
        """The latent sites in flat-vector order."""

    @abc.abstractmethod
    def log_prior(self, z: Float[Array, " dim"]) -> Float[Array, ""]:
        """Log prior density of ``z`` on the unconstrained scale (log-Jacobian included)."""

    @abc.abstractmethod
    def log_likelihood(self, z: Float[Array, " dim"]) -> Float[Array, ""]:
        """Log-likelihood of the observed data at ``z``."""

    @abc.abstractmethod
    def to_constrained(self, z: Float[Array, " dim"]) -> dict[str, Array]:
        """Named constrained values at ``z`` (deterministic sites included)."""

    @abc.abstractmethod
    def sample_prior(self, key: PRNGKeyArray, num_samples: int) -> Float[Array, "n dim"]:
        """Draws from the prior, as unconstrained flat vectors."""

    def unconstrain(self, values: dict[str, Any]) -> Float[Array, " dim"]:
        """Flat unconstrained vector from constrained site values (inverse of
        ``to_constrained`` on the latent sites; extra keys such as deterministic sites are
        ignored)."""
        return self.flatten({s.name: values[s.name] for s in self.sites})

    def log_density(self, z: Float[Array, " dim"]) -> Float[Array, ""]:
        """Unnormalised log posterior density on the unconstrained scale."""
        return self.log_prior(z) + self.log_likelihood(z)

    def init_position(self, key: PRNGKeyArray, radius: float = 2.0) -> Float[Array, " dim"]:
        """A starting point: uniform in ``(-radius, radius)`` on the unconstrained scale."""
        return jax.random.uniform(key, (self.dim,), minval=-radius, maxval=radius)

    def simulate(self, key: PRNGKeyArray, z: Float[Array, " dim"]) -> Any:
        """Simulate a data set from the model's likelihood at ``z``."""
        raise NotImplementedError(
            f"{type(self).__name__} has no simulator; build the model with "
            "ppl.from_numpyro (observed sites are simulated) or pass simulate_fn."
        )

    def with_data(self, data: Any) -> AbstractModel:
        """The same model conditioned on another data set (same structure)."""
        raise NotImplementedError(f"{type(self).__name__} cannot swap its data.")

    def pointwise_log_likelihood(self, z: Float[Array, " dim"]) -> dict[str, Array] | None:
        """Per-observation log-likelihood terms (for LOO/WAIC), or None if unknown."""
        return None

    @property
    def num_observations(self) -> int:
        """Number of pointwise log-likelihood terms (0 when unknown)."""
        return 0

    @property
    def discrete_sites(self) -> tuple[str, ...]:
        """Latent sites with discrete support (gradient engines refuse them)."""
        return ()

    def flatten(self, values: dict[str, Any]) -> Float[Array, " dim"]:
        """Flat unconstrained vector from a dict of *unconstrained* site values."""
        parts = [jnp.reshape(jnp.asarray(values[s.name]), (-1,)) for s in self.sites]
        return jnp.concatenate(parts) if parts else jnp.zeros((0,))

    def unflatten(self, z: Float[Array, " dim"]) -> dict[str, Array]:
        """Dict of unconstrained site values from a flat vector."""
        return {
            s.name: jnp.reshape(z[s.offset : s.offset + s.size], s.unconstrained_shape)
            for s in self.sites
        }


def check_finite_data_tree(data: Any, prefix: str = "data") -> None:
    """:func:`check_finite_data` on every concrete leaf of a pytree of data, each named by
    its path (``data['y']``); traced leaves (under ``jax.jit``) are skipped."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(data):
        if not isinstance(leaf, jax.core.Tracer):
            check_finite_data(prefix + jax.tree_util.keystr(path), leaf)


def check_finite_data(name: str, value: Any) -> None:
    """Raise if observed data contains NaN or inf (it would silently poison the density)."""
    arr = np.asarray(value)
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.sum(np.isfinite(arr)))
        raise ValueError(
            f"Observed data for site '{name}' contains {bad} non-finite value(s) (NaN or inf). "
            "Remove or impute them (or mask them with numpyro.handlers.mask) before inference."
        )


class LogDensityModel(AbstractModel):
    """A model given by a plain JAX log-density over a pytree position.

    The log-density is treated as all likelihood under a flat (improper) prior, unless
    ``log_prior_fn`` is given, in which case ``logdensity_fn`` is the log-likelihood.
    """

    logdensity_fn: Callable = eqx.field(static=True)
    log_prior_fn: Callable | None = eqx.field(static=True)
    unravel_fn: Callable = eqx.field(static=True)
    simulate_fn: Callable | None = eqx.field(static=True)
    sample_prior_fn: Callable | None = eqx.field(static=True)
    _sites: tuple[SiteInfo, ...] = eqx.field(static=True)
    _dim: int = eqx.field(static=True)
    initial_flat: Array
    data: Any

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def sites(self) -> tuple[SiteInfo, ...]:
        return self._sites

    def _call(self, fn: Callable, z: Array) -> Array:
        position = self.unravel_fn(z)
        if self.data is None:
            return jnp.asarray(fn(position))
        return jnp.asarray(fn(position, self.data))

    def log_prior(self, z):
        if self.log_prior_fn is None:
            return jnp.zeros((), dtype=z.dtype)
        return self._call(self.log_prior_fn, z)

    def log_likelihood(self, z):
        return self._call(self.logdensity_fn, z)

    def to_constrained(self, z):
        position = self.unravel_fn(z)
        if isinstance(position, dict):
            return dict(position)
        if len(self._sites) == 1:
            return {self._sites[0].name: position}
        leaves = jax.tree_util.tree_leaves(position)
        return {s.name: leaf for s, leaf in zip(self._sites, leaves, strict=True)}

    def init_position(self, key, radius: float = 2.0):
        noise = jax.random.uniform(key, (self.dim,), minval=-radius, maxval=radius)
        return self.initial_flat + 0.1 * noise

    def sample_prior(self, key, num_samples):
        if self.sample_prior_fn is None:
            raise NotImplementedError(
                "This log-density model has no prior sampler; pass sample_prior_fn to "
                "ppl.from_logdensity (engines that start from the prior need it)."
            )
        draws = self.sample_prior_fn(key, num_samples)
        return jax.vmap(lambda p: jax.flatten_util.ravel_pytree(p)[0])(draws)

    def simulate(self, key, z):
        if self.simulate_fn is None:
            return AbstractModel.simulate(self, key, z)
        return self.simulate_fn(key, self.unravel_fn(z))

    def with_data(self, data):
        if self.data is None:
            raise ValueError("This model was built without data; nothing to swap.")
        check_finite_data_tree(data)
        return eqx.tree_at(lambda m: m.data, self, data)


def from_logdensity(
    logdensity_fn: Callable,
    initial_position: Any,
    *,
    data: Any = None,
    log_prior_fn: Callable | None = None,
    sample_prior_fn: Callable | None = None,
    simulate_fn: Callable | None = None,
) -> LogDensityModel:
    """Wrap a plain JAX log-density over a pytree as a :class:`Model`.

    Args:
        logdensity_fn: ``position -> scalar`` (or ``(position, data) -> scalar`` when
            ``data`` is given), a positive log-density on an unconstrained space.
        initial_position: a pytree fixing the structure and a default starting point.
        data: optional pytree of arrays passed to the functions; a model with the same
            structure and new data reuses compiled programs.
        log_prior_fn: optional log prior; then ``logdensity_fn`` is the log-likelihood.
        sample_prior_fn: ``(key, n) -> pytree with leading axis n`` (needed by SMC, SBC).
        simulate_fn: ``(key, position) -> data`` (needed by SBC, TARP, amortized engines).

    Example:
        >>> import jax.numpy as jnp, ppl
        >>> m = ppl.from_logdensity(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(3))
        >>> m.dim
        3
    """
    if not callable(logdensity_fn):
        raise TypeError(f"Expected a callable logdensity_fn, got {type(logdensity_fn).__name__}.")
    flat, unravel = jax.flatten_util.ravel_pytree(initial_position)
    if flat.size == 0:
        raise ValueError(
            "Expected a non-empty initial_position, got one with no array leaves: the model "
            "has no latent parameters to infer. Pass a pytree of arrays, e.g. jnp.zeros(dim)."
        )
    if data is not None:
        check_finite_data_tree(data)
    flat = jnp.asarray(flat, dtype=jnp.result_type(float))
    leaves_with_path = jax.tree_util.tree_leaves_with_path(initial_position)
    sites, offset = [], 0
    for path, leaf in leaves_with_path:
        name = jax.tree_util.keystr(path).strip("[]'\".") or "x"
        shape = tuple(np.shape(leaf))
        size = int(np.prod(shape))
        sites.append(SiteInfo(name, shape, shape, offset, size))
        offset += size
    value = jnp.asarray(
        logdensity_fn(initial_position) if data is None else logdensity_fn(initial_position, data)
    )
    if value.shape != ():
        raise ValueError(f"Expected logdensity_fn to return a scalar, got shape {value.shape}.")
    return LogDensityModel(
        logdensity_fn=logdensity_fn,
        log_prior_fn=log_prior_fn,
        unravel_fn=unravel,
        simulate_fn=simulate_fn,
        sample_prior_fn=sample_prior_fn,
        _sites=tuple(sites),
        _dim=int(flat.size),
        initial_flat=flat,
        data=data,
    )
