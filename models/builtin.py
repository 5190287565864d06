"""Built-in zoo models with closed-form or filter-computable answers."""

from __future__ import annotations

import numpy as np
import numpyro
import numpyro.distributions as dist

from ppl.models.zoo import ZooEntry, register


# -- conjugate normal: unknown mean, known noise ----------------------------------------------
def conjugate_normal(y, prior_loc=0.0, prior_scale=2.0, noise_scale=1.0):
    mu = numpyro.sample("mu", dist.Normal(prior_loc, prior_scale))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, noise_scale), obs=y)


def _conjugate_normal_data():
    rng = np.random.default_rng(1)
    return {"y": rng.normal(1.5, 1.0, size=20).astype(np.float32)}


def _conjugate_normal_exact(data):
    y = np.asarray(data["y"], np.float64)
    m0 = float(data.get("prior_loc", 0.0))
    s0 = float(data.get("prior_scale", 2.0))
    s = float(data.get("noise_scale", 1.0))
    n = y.size
    precision = 1 / s0**2 + n / s**2
    mean = (m0 / s0**2 + y.sum() / s**2) / precision
    # Evidence: y ~ N(m0 1, s^2 I + s0^2 1 1^T).
    cov = s**2 * np.eye(n) + s0**2 * np.ones((n, n))
    diff = y - m0
    _, logdet = np.linalg.slogdet(cov)
    log_evidence = -0.5 * (diff @ np.linalg.solve(cov, diff) + logdet + n * np.log(2 * np.pi))
    return {"mean": {"mu": mean}, "sd": {"mu": precision**-0.5}, "log_evidence": log_evidence}


register(ZooEntry(
    "conjugate_normal", conjugate_normal, _conjugate_normal_data,
    "Normal mean with known noise and a normal prior (closed form)",
    exact_fn=_conjugate_normal_exact, tags=("closed_form",),
))
