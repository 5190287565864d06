"""The SMC section of ``ppl demo``: a particle filter against a Kalman filter, and tempered
SMC on a two-mode posterior (mode weights and log-evidence against exact values)."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import special, stats

__all__ = ["demo_section"]


def _kalman(y, a, q, r, p0):
    m, p, ll, means, sds = 0.0, p0, 0.0, [], []
    for t, yt in enumerate(np.asarray(y, np.float64)):
        if t > 0:
            m, p = a * m, a * a * p + q
        ll += stats.norm.logpdf(yt, m, np.sqrt(p + r))
        k = p / (p + r)
        m, p = m + k * (yt - m), (1 - k) * p
        means.append(m), sds.append(np.sqrt(p))
    return np.array(means), np.array(sds), ll


def demo_section(out_dir: pathlib.Path, *, quick: bool) -> list:
    """Two report sections (figures inlined); ``quick`` shortens the runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ppl.diagnostics.html import Section, figure_html, table_html
    from ppl.inference import smc

    import ppl

    a, q, r, p0 = 0.9, 0.5, 1.0, 1.0
    num_steps = 50 if quick else 100
    rng = np.random.default_rng(0)
    x = np.zeros(num_steps)
    for t in range(1, num_steps):
        x[t] = a * x[t - 1] + rng.normal(0, np.sqrt(q))
    y = (x + rng.normal(0, 1, num_steps)).astype(np.float32)
    ssm = smc.StateSpaceModel(
        sample_initial=lambda key, n: jnp.sqrt(p0) * jax.random.normal(key, (n,)),
        sample_transition=lambda key, t, x: a * x + jnp.sqrt(q) * jax.random.normal(key, x.shape),
        log_observation=lambda t, x, y: jax.scipy.stats.norm.logpdf(y, x, jnp.sqrt(r)),
    )
    res = smc.particle_filter(jax.random.key(0), ssm, y, num_particles=1000)
    kf_mean, kf_sd, kf_ll = _kalman(y, a, q, r, p0)
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(x, "k.", ms=3, label="true state")
    ax.plot(kf_mean, "C0", label="Kalman mean")
    ax.fill_between(np.arange(num_steps), kf_mean - 2 * kf_sd, kf_mean + 2 * kf_sd, color="C0",
                    alpha=0.2)
    ax.plot(np.asarray(res.filtering_mean), "C3--", label="particle filter mean (N=1000)")
    ax.legend(fontsize=8)
    table = pd.DataFrame({"log-likelihood": [float(res.log_likelihood), kf_ll]},
                         index=["bootstrap filter", "Kalman (exact)"])
    pf = Section("SMC: bootstrap particle filter vs Kalman",
                 figure_html(fig, "filter") + table_html(table, "{:.3f}"))

    locs, scales, weights, prior_sd = (
        np.array([-2.0, 2.5]), np.array([0.3, 0.4]), np.array([0.7, 0.3]), 3.0)
    model = ppl.from_logdensity(
        lambda z: jax.scipy.special.logsumexp(
            jnp.log(weights) + jax.scipy.stats.norm.logpdf(z["z"], locs, scales)),
        {"z": jnp.zeros(())},
        log_prior_fn=lambda z: jax.scipy.stats.norm.logpdf(z["z"], 0.0, prior_sd),
        sample_prior_fn=lambda key, n: {"z": prior_sd * jax.random.normal(key, (n,))},
    )
    post = ppl.infer(model, "smc", key=0, num_particles=500 if quick else 2000, kernel="rw",
                     progress_bar=False)
    log_joint = np.log(weights) + stats.norm.logpdf(locs, 0.0, np.sqrt(prior_sd**2 + scales**2))
    log_z = special.logsumexp(log_joint)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3))
    grid = np.linspace(-4, 4, 400)
    dens = np.exp(
        special.logsumexp(np.log(weights) + stats.norm.logpdf(grid[:, None], locs, scales), axis=1)
        + stats.norm.logpdf(grid, 0, prior_sd) - log_z)
    ax1.hist(post.samples["z"].ravel(), bins=80, density=True, alpha=0.5, label="SMC particles")
    ax1.plot(grid, dens, "k", label="exact posterior")
    ax1.legend(fontsize=8)
    ax2.plot(post.history["temperature"], "o-")
    ax2.set_xlabel("SMC step"), ax2.set_ylabel("temperature")
    table = pd.DataFrame({
        "SMC": [post.log_evidence, float(np.sum(post.weights * (post.samples["z"] > 0)))],
        "exact": [log_z, float(np.exp(log_joint - log_z)[1])],
    }, index=["log-evidence", "weight of the right mode"])
    tempered = Section("SMC: adaptive tempering on a two-mode posterior",
                       figure_html(fig, "tempered") + table_html(table, "{:.3f}"))
    return [pf, tempered]
