"""A family's posterior as a ppl Model, and ``ppl.infer(model, "distribution_transformer")``.

:func:`family_model` turns (family, prior, data set) into the usual
:class:`~ppl.model.AbstractModel` (one site, ``theta``): every engine runs on it (NUTS for the
side-by-side comparison, the coverage driver for TARP and SBC), and the distribution
transformer reads the prior and the data back from it::

    model = family_model("gaussian_mean_2d", prior, data)
    post = ppl.infer(model, "distribution_transformer", key=0, amortizer="gaussian_mean_2d")
    post.meta["posterior_mixture"]        # the Gaussian mixture itself
    ppl.infer(model, "nuts", key=0)       # the same posterior by MCMC

The model's ``simulate`` draws a data set of as many points as the model holds, under the same
prior, so ``with_data`` keeps the prior: a coverage study checks the network on its own family.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ppl.model import LogDensityModel, from_logdensity
from ppl.posterior import Posterior
from ppl.validation import check_count

from .families import AbstractFamily, get_family
from .gmm import GaussianMixture
from .train import Amortizer, PriorOutsideTrainingWarning, load_pretrained

__all__ = ["family_log_likelihood", "family_model", "infer_distribution_transformer",
           "as_amortizer"]

_DATA_KEYS = ("data", "mask", "prior")


def family_log_likelihood(family: AbstractFamily, theta, data, mask):
    """``log p(data | theta)`` of the observed rows (``mask``) of one data set."""
    return get_family(family).log_likelihood(theta, data, mask)


def family_model(family: str | AbstractFamily, prior: GaussianMixture, data,
                 mask=None) -> LogDensityModel:
    """The posterior of ``theta`` under ``prior`` given one data set, as a ppl Model.

    Args:
        family: a family or its registered name.
        prior: an unbatched :class:`GaussianMixture` over ``theta``.
        data: ``(n, data_dim)`` one data set (``family.data_labels`` per row).
        mask: ``(n,)`` which rows are observed (default all).
    """
    family = get_family(family)
    if not isinstance(prior, GaussianMixture) or prior.batch_shape:
        raise ValueError(f"Expected one GaussianMixture prior (no batch axes), got "
                         f"{type(prior).__name__}"
                         + (f" of batch shape {prior.batch_shape}" if
                            isinstance(prior, GaussianMixture) else "") + ".")
    prior.validate()
    if prior.dim != family.dim:
        raise ValueError(f"Expected a prior over {family.dim} parameters (family "
                         f"{family.name!r}), got one over {prior.dim}.")
    data = np.asarray(data, np.float32)
    if data.ndim != 2 or data.shape[1] != family.data_dim:
        raise ValueError(f"Expected data of shape (n, {family.data_dim}) for family "
                         f"{family.name!r} ({', '.join(family.data_labels)}), got {data.shape}.")
    mask = np.ones(len(data), bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != (len(data),):
        raise ValueError(f"Expected mask of shape ({len(data)},), got {mask.shape}.")
    if not np.all(np.isfinite(data[mask])):
        row = int(np.argwhere(~np.all(np.isfinite(data), axis=1) & mask)[0, 0])
        raise ValueError(f"Expected finite data, got NaN or inf in row {row}.")
    problem = family.data_problems(data, mask)
    if problem:
        raise ValueError(problem)
    num_points = len(data)

    def log_likelihood(position, held):
        return family_log_likelihood(family, position["theta"], held["data"], held["mask"])

    def log_prior(position, held):
        return held["prior"].log_prob(position["theta"])

    blocks = -(-num_points // family.max_points)  # simulate_data gives max_points rows

    def simulate(key, position):
        keys = jax.random.split(key, blocks)
        rows = jax.vmap(lambda k: family.simulate_data(k, position["theta"]))(keys)
        rows = rows.reshape(-1, family.data_dim)[:num_points]
        return {"data": rows, "mask": jnp.asarray(mask), "prior": prior}

    return from_logdensity(
        log_likelihood, {"theta": jnp.zeros(family.dim)},
        data={"data": jnp.asarray(data), "mask": jnp.asarray(mask), "prior": prior},
        log_prior_fn=log_prior,
        sample_prior_fn=lambda key, n: {"theta": prior.sample(key, n)},
        simulate_fn=simulate,
    )


def as_amortizer(amortizer: Amortizer | str | Path) -> Amortizer:
    """An :class:`Amortizer`, a shipped checkpoint's name or a checkpoint directory."""
    if isinstance(amortizer, Amortizer):
        return amortizer
    if isinstance(amortizer, str) and not Path(amortizer).exists():
        return load_pretrained(amortizer)
    if isinstance(amortizer, str | Path):
        return Amortizer.load(amortizer)
    raise ValueError(f"Expected amortizer to be an Amortizer, a shipped checkpoint's name or a "
                     f"checkpoint directory, got {type(amortizer).__name__}.")


def _mixture_record(mixture: GaussianMixture) -> dict[str, Any]:
    return {"weights": np.asarray(mixture.weights).tolist(),
            "means": np.asarray(mixture.means).tolist(),
            "scale_tril": np.asarray(mixture.scale_tril).tolist()}


def infer_distribution_transformer(
    key,
    model,
    *,
    amortizer: Amortizer | str | Path | None = None,
    num_samples: int = 4000,
    check_prior: bool = True,
) -> Posterior:
    """``ppl.infer(model, "distribution_transformer", amortizer=...)``.

    Args:
        key: a PRNG key (or an int seed) for the draws.
        model: a :func:`family_model` (the prior and the data are read from it).
        amortizer: an :class:`Amortizer`, a shipped checkpoint's name, or a checkpoint
            directory; default: the shipped checkpoint of the model's family.
        num_samples: draws from the posterior mixture (one chain).
        check_prior: warn when the prior lies outside what the network was trained on.

    Returns:
        A :class:`~ppl.Posterior` of ``theta`` (shape ``(1, num_samples, d)``), the mixture
        in ``meta["posterior_mixture"]`` (weights, means, Cholesky factors).
    """
    from ppl.infer import as_key

    start = time.perf_counter()
    held = getattr(model, "data", None)
    if not (isinstance(model, LogDensityModel) and isinstance(held, dict)
            and set(_DATA_KEYS) <= set(held)):
        raise ValueError(
            "Expected a model built by ppl.inference.amortized.family_model(family, prior, "
            "data) (the distribution transformer reads its prior and data set from it), got "
            f"{type(model).__name__}."
        )
    if amortizer is None:
        raise ValueError("Expected amortizer= (an Amortizer, a shipped checkpoint's name such "
                         "as 'gaussian_mean_2d', or a checkpoint directory).")
    amortizer = as_amortizer(amortizer)
    if model.dim != amortizer.family.dim:
        raise ValueError(f"Expected a model of {amortizer.family.dim} parameters for the "
                         f"amortizer of family {amortizer.family.name!r}, got {model.dim}.")
    check_count("num_samples", num_samples)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PriorOutsideTrainingWarning)
        mixture = amortizer.posterior(np.asarray(held["data"]), np.asarray(held["mask"]),
                                      held["prior"], check_prior=check_prior)
    messages = [str(w.message) for w in caught if issubclass(w.category,
                                                              PriorOutsideTrainingWarning)]
    for message in messages:
        warnings.warn(message, PriorOutsideTrainingWarning, stacklevel=3)
    draws = np.asarray(mixture.sample(as_key(key), num_samples))
    return Posterior(
        samples={"theta": draws[None]},
        meta={
            "engine": "distribution_transformer",
            "settings": {"num_samples": num_samples, "family": amortizer.family.name},
            "wall_time": time.perf_counter() - start,
            "posterior_mixture": _mixture_record(mixture),
            "warnings": messages,
        },
    )
