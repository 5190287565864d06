"""``ppl.from_numpyro``: the Model view of an ordinary NumPyro model.

This is the one place where NumPyro's conventions meet ppl's: latent sites are mapped to
the unconstrained scale with ``biject_to(support)``, the log-Jacobian is added to the
prior, and the log-density is positive (NumPyro's potential energy is its negative).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to
from numpyro.distributions.util import sum_rightmost

from ppl.model import AbstractModel, SiteInfo, check_finite_data

__all__ = ["NumPyroModel", "from_numpyro"]

_LOG_DET_SUFFIX = "__ppl_log_det"


def _is_factor(site: dict) -> bool:
    # numpyro.factor records an observed site of a Unit distribution.
    return type(site["fn"]).__name__ == "Unit"


def _latent_sites(trace: dict) -> list[dict]:
    return [
        s for s in trace.values() if s["type"] == "sample" and not s["is_observed"]
    ]


def _observed_sites(trace: dict) -> list[dict]:
    return [
        s
        for s in trace.values()
        if s["type"] == "sample" and s["is_observed"] and not _is_factor(s)
    ]


def _site_log_prob(site: dict) -> jax.Array:
    log_prob = site["fn"].log_prob(site["value"])
    if site["scale"] is not None:
        log_prob = site["scale"] * log_prob
    return log_prob


def _check_observed_shape(name: str, value_shape: tuple, expected: tuple) -> None:
    """Raise if observed data would be broadcast against its distribution's shape.

    ``expected`` is the site's ``fn.shape()`` (batch shape with plates, plus event shape).
    Data with that shape, or larger data the distribution broadcasts over (one likelihood
    term per value), are fine; anything else gives a silently wrong likelihood (data of
    shape (30, 1) in a plate of 30 makes 900 terms, one value reused for 30) or a shape
    error deep inside jax.numpy that names no site.
    """
    value_shape, expected = tuple(value_shape), tuple(expected)
    try:
        full = np.broadcast_shapes(value_shape, expected)
    except ValueError:
        full = None
    if full is not None and np.prod(full) == np.prod(value_shape):
        return
    if full is None:
        why = "the shapes do not broadcast"
    else:
        why = (
            f"broadcasting would make {int(np.prod(full))} likelihood terms from "
            f"{int(np.prod(value_shape))} observed value(s)"
        )
    hint = f"Pass data of shape {expected}, or fix the plate sizes and distribution shapes."
    if value_shape == expected + (1,):
        hint = f"Drop the trailing axis of size 1 (value.squeeze(-1) gives shape {expected})."
    raise ValueError(
        f"Observed site '{name}' expects data of shape {expected} (its distribution's batch "
        f"and event shape), got shape {value_shape}: {why}. {hint}"
    )


def _improper(fn) -> bool:
    """Whether a distribution is (a wrapper around) ImproperUniform, which cannot sample."""
    while fn is not None:
        if isinstance(fn, dist.ImproperUniform):
            return True
        fn = getattr(fn, "base_dist", None)
    return False


def _improper_value(site):
    """A placeholder value for an improper site: the transform of zeros (shape-correct)."""
    if site["type"] != "sample" or site["is_observed"] or not _improper(site["fn"]):
        return None
    transform = biject_to(site["fn"].support)
    shape = tuple(site["fn"].shape(site["kwargs"].get("sample_shape", ())))
    return transform(jnp.zeros(transform.inverse_shape(shape)))


class _ResampleObserved(numpyro.primitives.Messenger):
    """Turn observed sites back into random ones, so the model simulates its data."""

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["is_observed"] and not _is_factor(msg):
            msg["value"] = None
            msg["is_observed"] = False


class NumPyroModel(AbstractModel):
    """The flat, unconstrained view of a NumPyro model function.

    ``args`` and ``kwargs`` are pytree leaves of the module, so a new data set with the
    same shapes runs through already compiled programs. ``observed`` optionally overrides
    the values of observed sites (what :meth:`with_data` sets).
    """

    model_fn: Callable = eqx.field(static=True)
    args: tuple
    kwargs: dict
    observed: dict | None
    _sites: tuple[SiteInfo, ...] = eqx.field(static=True)
    _dim: int = eqx.field(static=True)
    _deterministic: tuple[str, ...] = eqx.field(static=True)
    _observed_names: tuple[str, ...] = eqx.field(static=True)
    _observed_shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)  # fn.shape() by site
    _observed_size: int = eqx.field(static=True)
    _improper_sites: tuple[str, ...] = eqx.field(static=True)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def sites(self) -> tuple[SiteInfo, ...]:
        return self._sites

    @property
    def num_observations(self) -> int:
        return self._observed_size

    @property
    def observed_sites(self) -> tuple[str, ...]:
        """Names of the observed sites (the data that ``simulate`` returns)."""
        return self._observed_names

    # -- running the model --------------------------------------------------------------
    def _conditioned_fn(self) -> Callable:
        fn = self.model_fn
        if self.observed is not None:
            fn = handlers.condition(fn, data=self.observed)
        return fn

    def _trace_at(self, z: jax.Array) -> dict:
        """Trace with every latent site set from ``z``; log-Jacobians as extra sites."""
        values = self.unflatten(z)

        def constrain(site):
            if site["type"] != "sample" or site["name"] not in values:
                return None
            u = values[site["name"]]
            support = site["fn"].support
            if support is constraints.real or (
                isinstance(support, constraints.independent)
                and support.base_constraint is constraints.real
            ):
                return u
            transform = biject_to(support)
            x = transform(u)
            log_det = transform.log_abs_det_jacobian(u, x)
            log_det = sum_rightmost(
                log_det, jnp.ndim(log_det) - jnp.ndim(x) + len(site["fn"].event_shape)
            )
            numpyro.factor(site["name"] + _LOG_DET_SUFFIX, log_det)
            return x

        fn = handlers.substitute(
            handlers.seed(self._conditioned_fn(), rng_seed=0), substitute_fn=constrain
        )
        return handlers.trace(fn).get_trace(*self.args, **self.kwargs)

    # -- densities ----------------------------------------------------------------------
    def _split_log_density(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        trace = self._trace_at(z)
        log_prior = jnp.zeros((), dtype=z.dtype)
        log_lik = jnp.zeros((), dtype=z.dtype)
        for site in trace.values():
            if site["type"] != "sample":
                continue
            term = jnp.sum(_site_log_prob(site))
            if not site["is_observed"] or site["name"].endswith(_LOG_DET_SUFFIX):
                log_prior = log_prior + term
            else:
                log_lik = log_lik + term  # observed sites and user factors
        return log_prior, log_lik

    def log_prior(self, z):
        return self._split_log_density(z)[0]

    def log_likelihood(self, z):
        return self._split_log_density(z)[1]

    def log_density(self, z):
        log_prior, log_lik = self._split_log_density(z)
        return log_prior + log_lik

    def pointwise_log_likelihood(self, z):
        trace = self._trace_at(z)
        return {s["name"]: _site_log_prob(s) for s in _observed_sites(trace)}

    def to_constrained(self, z):
        trace = self._trace_at(z)
        out = {s.name: trace[s.name]["value"] for s in self._sites}
        for name in self._deterministic:
            out[name] = trace[name]["value"]
        return out

    # -- prior and simulation -----------------------------------------------------------
    def _unconstrain_trace(self, trace: dict) -> jax.Array:
        parts = []
        for s in self._sites:
            site = trace[s.name]
            u = biject_to(site["fn"].support).inv(site["value"])
            parts.append(jnp.reshape(u, (-1,)))
        return jnp.concatenate(parts)

    def unconstrain(self, values):
        """Flat unconstrained vector from constrained latent values (dependent supports are
        resolved by running the model with those values)."""
        latent = {s.name: values[s.name] for s in self._sites}
        fn = handlers.substitute(handlers.seed(self._conditioned_fn(), rng_seed=0), data=latent)
        return self._unconstrain_trace(handlers.trace(fn).get_trace(*self.args, **self.kwargs))

    def sample_prior(self, key, num_samples):
        if self._improper_sites:
            raise ValueError(
                f"Site(s) {list(self._improper_sites)} have an improper prior (ImproperUniform): "
                "prior draws do not exist. Engines and checks that start from the prior (SMC, "
                "SBC, coverage) need a proper prior; NUTS, HMC and flow VI do not."
            )

        def one(k):
            fn = handlers.seed(self._conditioned_fn(), rng_seed=k)
            return self._unconstrain_trace(handlers.trace(fn).get_trace(*self.args, **self.kwargs))

        return jax.vmap(one)(jax.random.split(key, num_samples))

    def init_position(self, key, radius: float = 2.0):
        return jax.random.uniform(key, (self.dim,), minval=-radius, maxval=radius)

    def simulate(self, key, z):
        """Observed-site values simulated from the likelihood at ``z`` (a dict by site)."""
        values = self.to_constrained(z)
        latent = {s.name: values[s.name] for s in self._sites}
        fn = handlers.seed(
            _ResampleObserved(handlers.substitute(self._conditioned_fn(), data=latent)),
            rng_seed=key,
        )
        trace = handlers.trace(fn).get_trace(*self.args, **self.kwargs)
        return {name: trace[name]["value"] for name in self._observed_names}

    def with_data(self, data):
        """The same model with its observed sites set to ``data`` (a dict by site name)."""
        unknown = set(data) - set(self._observed_names)
        if unknown:
            raise ValueError(
                f"Expected observed site names {sorted(self._observed_names)}, "
                f"got unknown {sorted(unknown)}."
            )
        expected = dict(zip(self._observed_names, self._observed_shapes, strict=True))
        for name, value in data.items():
            # Against the shapes traced at build: the model's arguments, hence its plates,
            # are unchanged, so another data set must have the same shapes.
            _check_observed_shape(name, jnp.shape(value), expected[name])
            if not isinstance(value, jax.core.Tracer):  # traced data is checked by the caller
                check_finite_data(name, value)
        observed = dict(self.observed or {})
        observed.update({k: jnp.asarray(v) for k, v in data.items()})
        return dataclasses.replace(self, observed=observed)


def _as_data(value: Any) -> Any:
    """Numpy arrays become JAX arrays (traced leaves); Python scalars stay static."""
    if isinstance(value, np.ndarray):
        return jnp.asarray(value)
    return value


def _abstract_trace(model_fn: Callable, args: tuple, kwargs: dict) -> dict:
    """The model's trace under ``jax.eval_shape``: latent and derived values become
    ``ShapeDtypeStruct``s, observed data stay concrete. Tracing eagerly would run the model
    op by op, each op compiled on first use (21 small compilations for eight schools, paid in
    every process even with a warm compilation cache; bench/results/nuts_findings.md).
    """
    box = {}

    def run():
        fn = handlers.substitute(handlers.seed(model_fn, rng_seed=0), substitute_fn=_improper_value)
        trace = handlers.trace(fn).get_trace(*args, **kwargs)
        for site in _observed_sites(trace):
            # Before log_prob, which would broadcast wrong shapes or fail without a site name.
            _check_observed_shape(site["name"], jnp.shape(site["value"]), site["fn"].shape())
            site["log_prob_shape"] = tuple(jnp.shape(_site_log_prob(site)))
        for site in _latent_sites(trace):
            # Inside the trace: supports may depend on other (abstract) values.
            shape = tuple(jnp.shape(site["value"]))
            if not site["fn"].support.is_discrete:
                site["unconstrained_shape"] = tuple(
                    biject_to(site["fn"].support).inverse_shape(shape))
        for site in trace.values():
            if isinstance(site.get("value"), jax.core.Tracer):
                site["value"] = jax.ShapeDtypeStruct(site["value"].shape, site["value"].dtype)
        box["trace"] = trace

    jax.eval_shape(run)
    return box["trace"]


def from_numpyro(model_fn: Callable, *args: Any, **kwargs: Any) -> NumPyroModel:
    """Build the Model view of a NumPyro model.

    Args:
        model_fn: an ordinary NumPyro model function.
        *args, **kwargs: its arguments (data). Arrays become traced data, so running the
            same model on a new data set of the same shapes does not recompile.

    Raises:
        ValueError: a latent site is discrete, observed data contains NaN/inf, or observed
            data has a shape its distribution would broadcast (e.g. (30, 1) in a plate of 30).

    Example:
        >>> import numpyro, numpyro.distributions as dist, ppl
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0, 1))
        ...     numpyro.sample("y", dist.Normal(mu, 1), obs=y)
        >>> ppl.from_numpyro(model, y=jnp.array([0.5, 1.0])).dim
        1
    """
    if not callable(model_fn):
        raise TypeError(f"Expected a callable NumPyro model, got {type(model_fn).__name__}.")
    args = jax.tree_util.tree_map(_as_data, tuple(args))
    kwargs = jax.tree_util.tree_map(_as_data, dict(kwargs))
    trace = _abstract_trace(model_fn, args, kwargs)

    sites, offset = [], 0
    for site in _latent_sites(trace):
        name, support = site["name"], site["fn"].support
        if support.is_discrete:
            raise ValueError(
                f"Latent site '{name}' is discrete ({type(site['fn']).__name__}); gradient-based "
                "engines such as NUTS and the flat unconstrained Model view need continuous "
                "latents. Marginalise it out in the model (sum over its values with "
                "jax.nn.logsumexp and numpyro.factor), or, for a state-space model, use a "
                "particle filter (ppl.inference.smc) or SMC with discrete moves."
            )
        shape = tuple(site["value"].shape)
        unconstrained_shape = site["unconstrained_shape"]
        size = int(np.prod(unconstrained_shape))
        sites.append(SiteInfo(name, shape, unconstrained_shape, offset, size))
        offset += size
    if not sites:
        raise ValueError(
            f"Model '{getattr(model_fn, '__name__', model_fn)}' has no latent sample sites to "
            "infer: every numpyro.sample site has obs= data. Add a latent site (a "
            "numpyro.sample without obs=), or evaluate a fixed model's likelihood with "
            "numpyro.infer.util.log_density instead of ppl.infer."
        )
    observed_names, observed_shapes, observed_size = [], [], 0
    for site in _observed_sites(trace):
        if not isinstance(site["value"], jax.ShapeDtypeStruct):  # data, not derived values
            check_finite_data(site["name"], site["value"])
        observed_names.append(site["name"])
        observed_shapes.append(tuple(site["fn"].shape()))
        observed_size += int(np.prod(site["log_prob_shape"]))
    deterministic = tuple(s["name"] for s in trace.values() if s["type"] == "deterministic")
    return NumPyroModel(
        model_fn=model_fn,
        args=args,
        kwargs=kwargs,
        observed=None,
        _sites=tuple(sites),
        _dim=offset,
        _deterministic=deterministic,
        _observed_names=tuple(observed_names),
        _observed_shapes=tuple(observed_shapes),
        _observed_size=observed_size,
        _improper_sites=tuple(s["name"] for s in _latent_sites(trace) if _improper(s["fn"])),
    )
