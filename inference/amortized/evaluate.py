"""Accuracy of an amortizer against the exact posteriors of its family.

For held-out simulated data sets (a fixed seed, independent of the training run's key,
which folds step numbers into its own stream) the exact posterior ``p`` and the amortized
one ``q`` are compared. A conjugate family's ``p`` is in closed form; a non-conjugate
family's is importance-sampled (:func:`~ppl.inference.amortized.reference.importance_reference`,
:data:`REFERENCE_DRAWS` draws; its effective sample size is reported). The summaries:

- ``mean_error``: ``|E_q[theta_j] - E_p[theta_j]| / sd_p(theta_j)``, averaged over data
  sets and coordinates (the target is <= 0.1);
- ``sd_error``: ``|sd_q(theta_j) / sd_p(theta_j) - 1|``, averaged likewise (<= 0.1), with
  ``sd_ratio`` the mean ratio (bias) beside it;
- ``kl``: ``KL(p || q)`` estimated from draws of ``p`` (weighted draws for an
  importance-sampled ``p``), averaged over data sets, with its standard error over data sets;
- ``nll_gap``: mean of ``log p(theta_true) - log q(theta_true)`` (the training loss's
  excess over its optimum; its expectation is the mean KL).

Scenarios (:data:`SCENARIOS`) change the prior at test time: ``held_out`` (the training
hyper-distribution), ``max_components`` (always ``max_components``), ``shifted_within``
(means in the top quarter of the range: off-centre but inside), ``more_components`` (two
more than trained on: outside), ``shifted_outside`` (means beyond the range: outside), and
``sequential`` (two updates on halves of the data, the first posterior as the second prior,
against the exact posterior of all of it).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .gmm import kl_divergence
from .reference import importance_reference
from .train import Amortizer, PriorOutsideTrainingWarning

__all__ = ["SCENARIOS", "EVALUATION_SEED", "scenario_hyperprior", "simulate_datasets",
           "compare", "reference_posteriors", "compare_to_reference", "evaluate",
           "time_posterior", "TARGET", "REFERENCE_DRAWS"]

SCENARIOS = ("held_out", "max_components", "shifted_within", "more_components",
             "shifted_outside", "sequential")
# Inside the training hyper-distribution (targets apply) or outside it (a warning applies).
INSIDE = ("held_out", "max_components", "shifted_within", "sequential")
EVALUATION_SEED = 20250204
TARGET = {"mean_error": 0.1, "sd_error": 0.1}
# Importance draws per data set for a non-conjugate family's reference posterior (an
# effective sample size near 5,000: Monte Carlo error about 0.015 posterior sd).
REFERENCE_DRAWS = 8192


def scenario_hyperprior(family, scenario: str):
    """The hyper-distribution the priors of ``scenario`` are drawn from."""
    hyper = family.hyperprior
    span = hyper.mean_high - hyper.mean_low
    if scenario in ("held_out", "sequential"):
        return hyper
    if scenario == "max_components":
        return dataclasses.replace(hyper, min_components=hyper.max_components)
    if scenario == "more_components":
        return dataclasses.replace(hyper, min_components=hyper.max_components + 2,
                                   max_components=hyper.max_components + 2)
    if scenario == "shifted_within":
        return dataclasses.replace(hyper, mean_low=hyper.mean_high - 0.25 * span)
    if scenario == "shifted_outside":
        return dataclasses.replace(hyper, mean_low=hyper.mean_high + 0.05 * span,
                                   mean_high=hyper.mean_high + 0.3 * span)
    raise ValueError(f"Expected scenario in {SCENARIOS}, got {scenario!r}.")


def simulate_datasets(family, key, num_datasets: int, hyperprior=None):
    """Priors, true parameters, data and masks of ``num_datasets`` simulated data sets."""
    hyperprior = hyperprior or family.hyperprior

    def one(key):
        prior_key, simulate_key = jax.random.split(key)
        prior = hyperprior.sample(prior_key, family.dim)
        return (prior, *family.simulate(simulate_key, prior))

    return jax.jit(jax.vmap(one))(jax.random.split(key, num_datasets))


@jax.jit
def _moments_and_kl(exact, approx, theta, key):
    keys = jax.random.split(key, exact.log_weights.shape[0])
    kl = jax.vmap(lambda p, q, k: kl_divergence(p, q, k, num_samples=256).value)(
        exact, approx, keys)
    gap = (jax.vmap(lambda p, t: p.log_prob(t))(exact, theta)
           - jax.vmap(lambda q, t: q.log_prob(t))(approx, theta))
    return exact.mean(), exact.marginal_sd(), approx.mean(), approx.marginal_sd(), kl, gap


def _summary(exact_mean, exact_sd, mean, sd, kl, gap) -> dict[str, float]:
    exact_mean, exact_sd, mean, sd, kl, gap = (
        np.asarray(v, np.float64) for v in (exact_mean, exact_sd, mean, sd, kl, gap))
    mean_error = np.abs(mean - exact_mean) / exact_sd
    ratio = sd / exact_sd
    return {
        "num_datasets": int(kl.shape[0]),
        "mean_error": float(mean_error.mean()),
        "mean_error_p90": float(np.quantile(mean_error, 0.9)),
        "sd_error": float(np.abs(ratio - 1).mean()),
        "sd_error_p90": float(np.quantile(np.abs(ratio - 1), 0.9)),
        "sd_ratio": float(ratio.mean()),
        "kl": float(kl.mean()),
        "kl_standard_error": float(kl.std() / np.sqrt(kl.size)),
        "kl_median": float(np.median(kl)),
        "nll_gap": float(gap.mean()),
    }


def compare(exact, approx, theta, key) -> dict[str, float]:
    """The accuracy summary of batched posteriors ``approx`` against ``exact``."""
    return _summary(*_moments_and_kl(exact, approx, theta, key))


def reference_posteriors(family, prior, data, mask, key, *, num_draws: int = REFERENCE_DRAWS):
    """Importance-sampled reference posteriors of a batch of data sets (in chunks of 16,
    which keeps the memory at draws x points x 16)."""
    keys = jax.random.split(key, data.shape[0])

    def one(args):
        one_prior, one_data, one_mask, one_key = args
        return importance_reference(family, one_prior, one_data, one_mask, one_key,
                                    num_draws=num_draws)

    return jax.jit(lambda *args: jax.lax.map(one, args, batch_size=16))(prior, data, mask, keys)


def compare_to_reference(family, reference, approx, prior, theta, data, mask):
    """:func:`compare` against importance-sampled references (batched), plus the smallest
    and median effective sample sizes of the references."""

    @jax.jit
    def kl_and_gap(reference, approx, prior, theta, data, mask):
        def one(ref, q, p, t, x, m):
            log_p = jax.vmap(lambda d: ref.log_density(family, p, x, m, d))(ref.draws)
            log_q = jax.vmap(q.log_prob)(ref.draws)
            kl = jnp.sum(jnp.exp(ref.log_weights) * (log_p - log_q))
            return kl, ref.log_density(family, p, x, m, t) - q.log_prob(t)

        return jax.lax.map(lambda args: one(*args), (reference, approx, prior, theta, data,
                                                     mask), batch_size=16)

    kl, gap = kl_and_gap(reference, approx, prior, theta, data, mask)
    summary = _summary(reference.mean, reference.sd, approx.mean(), approx.marginal_sd(), kl,
                       gap)
    ess = np.asarray(reference.ess)
    summary.update(reference_ess_min=float(ess.min()), reference_ess_median=float(np.median(ess)))
    return summary


def evaluate(amortizer: Amortizer, scenario: str = "held_out", *, num_datasets: int = 512,
             seed: int = EVALUATION_SEED) -> dict[str, Any]:
    """Accuracy of ``amortizer`` on ``num_datasets`` simulated data sets of ``scenario``.

    Returns:
        :func:`compare`'s summary plus ``scenario``, ``inside`` (whether the priors lie in
        the training hyper-distribution), ``warned`` (whether ``posterior`` warned) and
        ``meets_target`` (inside scenarios: mean and sd errors within :data:`TARGET`).
    """
    family = amortizer.family
    data_key, kl_key = jax.random.split(jax.random.key(seed))
    hyperprior = scenario_hyperprior(family, scenario)
    prior, theta, data, mask = simulate_datasets(family, data_key, num_datasets, hyperprior)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PriorOutsideTrainingWarning)
        if scenario == "sequential":
            half = jnp.arange(family.max_points) < (mask.sum(-1, keepdims=True) + 1) // 2
            first = amortizer.posterior(data, mask & half, prior, check_prior=False)
            approx = amortizer.posterior(data, mask & ~half, first)
        else:
            approx = amortizer.posterior(data, mask, prior)
    warned = any(issubclass(w.category, PriorOutsideTrainingWarning) for w in caught)
    if family.conjugate:
        exact = jax.vmap(family.exact_posterior)(prior, data, mask).posterior
        accuracy = compare(exact, approx, theta, kl_key)
    else:
        reference = reference_posteriors(family, prior, data, mask, kl_key)
        accuracy = compare_to_reference(family, reference, approx, prior, theta, data, mask)
    summary = {"scenario": scenario, "inside": scenario in INSIDE, "warned": warned,
               **accuracy}
    if scenario == "sequential":
        summary["first_posteriors_outside"] = int(family.hyperprior.outside(first).sum())
    summary["meets_target"] = (summary["mean_error"] <= TARGET["mean_error"]
                               and summary["sd_error"] <= TARGET["sd_error"])
    return summary


def time_posterior(amortizer: Amortizer, *, batch_size: int = 256, repeats: int = 20,
                   seed: int = 0) -> dict[str, float]:
    """Wall time of ``posterior`` on a batch (compiled first; best of ``repeats``)."""
    family = amortizer.family
    prior, _, data, mask = simulate_datasets(family, jax.random.key(seed), batch_size)
    data, mask = np.asarray(data), np.asarray(mask)
    jax.block_until_ready(amortizer.posterior(data, mask, prior).means)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(amortizer.posterior(data, mask, prior).means)
        times.append(time.perf_counter() - start)
    best = min(times)
    return {"batch_size": batch_size, "batch_seconds": best,
            "ms_per_posterior": 1000 * best / batch_size,
            "median_batch_seconds": float(np.median(times))}
