"""Reproduce the headline of Sharrock & Nemeth (2023), "Coin Sampling": SVGD's accuracy
depends on its step size; coin sampling's does not, and matches SVGD at its best step.

2-D targets (Gaussian mixture, banana, donut, funnel, squiggle), 20 particles, 1000
iterations, energy distance to 2000 exact draws (mean over 5 initialisations), for SVGD
with Adagrad over a grid of step sizes and for Coin SVGD (no step size); plus Bayesian
logistic regression (synthetic, d=10, n=400 train / 400 test) with test accuracy and
energy distance to NUTS reference draws. Writes bench/results/coin_paper.png and
bench/results/coin_paper.json.

Run: .venv/bin/python bench/coin_paper.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from ppl.inference.vi import coin, svgd

RESULTS = pathlib.Path(__file__).parent / "results"
SQUIGGLE_COV = np.array([[2.0, 0.25], [0.25, 0.5]])


def _mvn_logpdf(x, cov):
    p = jnp.linalg.inv(cov)
    return -0.5 * x @ p @ x


TARGETS = {
    "gaussian mixture": (
        lambda x: jnp.logaddexp(-0.5 * jnp.sum((x - jnp.array([-2.0, 0.0])) ** 2),
                                -0.5 * jnp.sum((x - jnp.array([2.0, 0.0])) ** 2)),
        lambda rng, n: rng.normal(size=(n, 2)) + np.where(rng.random(n) < 0.5, -2.0, 2.0)[:, None]
        * np.array([1.0, 0.0]),
    ),
    "banana": (  # x1 ~ N(0, 1), x2 | x1 ~ N(x1^2 - 1, 0.5^2)
        lambda x: -0.5 * x[0] ** 2 - 0.5 * ((x[1] - x[0] ** 2 + 1.0) / 0.5) ** 2,
        lambda rng, n: (lambda a: np.stack([a, a**2 - 1 + 0.5 * rng.normal(size=n)], 1))(
            rng.normal(size=n)),
    ),
    "donut": (  # p(x) ~ exp(-(|x| - 2.5)^2 / (2 0.4^2))
        lambda x: -0.5 * ((jnp.sqrt(jnp.sum(x**2) + 1e-12) - 2.5) / 0.4) ** 2,
        None,  # sampled on a radial grid below
    ),
    "funnel": (  # v ~ N(0, 1.5^2), x | v ~ N(0, exp(v))
        lambda x: -0.5 * (x[0] / 1.5) ** 2 - 0.5 * x[1] ** 2 * jnp.exp(-x[0]) - 0.5 * x[0],
        lambda rng, n: (lambda v: np.stack([v, np.exp(v / 2) * rng.normal(size=n)], 1))(
            1.5 * rng.normal(size=n)),
    ),
    "squiggle": (  # (x1, x2 + sin(5 x1)) ~ N(0, S)
        lambda x: _mvn_logpdf(jnp.array([x[0], x[1] + jnp.sin(5.0 * x[0])]), SQUIGGLE_COV),
        lambda rng, n: (lambda y: np.stack([y[:, 0], y[:, 1] - np.sin(5 * y[:, 0])], 1))(
            rng.multivariate_normal(np.zeros(2), SQUIGGLE_COV, size=n)),
    ),
}


def _donut_draws(rng, n):
    r = np.linspace(1e-3, 6, 20000)
    density = r * np.exp(-0.5 * ((r - 2.5) / 0.4) ** 2)
    cdf = np.cumsum(density) / density.sum()
    radius = np.interp(rng.random(n), cdf, r)
    angle = rng.uniform(0, 2 * np.pi, n)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)


def energy_distance(x, y):
    """E|X-Y| - (E|X-X'| + E|Y-Y'|)/2 (V-statistics)."""
    def mean_dist(a, b):
        return jnp.mean(jnp.sqrt(jnp.maximum(
            jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, -1), 1e-30)))
    return mean_dist(x, y) - 0.5 * mean_dist(x, x) - 0.5 * mean_dist(y, y)


def _make_runner(logdensity_fn, num_iterations):
    @jax.jit
    def run_svgd(x0, step_size):
        algo = svgd.svgd(logdensity_fn, step_size)
        state, _ = jax.lax.scan(lambda s, k: algo.step(k, s), algo.init(x0),
                                jax.random.split(jax.random.key(0), num_iterations))
        return state.position

    @jax.jit
    def run_coin(x0):
        algo = coin.coin_svgd(logdensity_fn)
        state, _ = jax.lax.scan(lambda s, k: algo.step(k, s), algo.init(x0),
                                jax.random.split(jax.random.key(0), num_iterations))
        return state.position

    return run_svgd, run_coin


def run_target(logdensity_fn, exact, step_sizes, *, num_particles, num_iterations,
               num_seeds, dim):
    run_svgd, run_coin = _make_runner(logdensity_fn, num_iterations)
    x0 = jax.random.normal(jax.random.key(42), (num_seeds, num_particles, dim))
    exact = jnp.asarray(exact, jnp.float32)
    ed = jax.jit(jax.vmap(energy_distance, in_axes=(0, None)))
    svgd_x = jax.vmap(lambda s: jax.vmap(lambda x: run_svgd(x, s))(x0))(jnp.asarray(step_sizes))
    svgd_ed = np.asarray(jax.vmap(lambda xs: ed(xs, exact))(svgd_x))  # (step, seed)
    coin_x = jax.vmap(run_coin)(x0)
    coin_ed = np.asarray(ed(coin_x, exact))
    return svgd_ed, coin_ed, np.asarray(coin_x[0]), np.asarray(svgd_x[:, 0])


def _timing(logdensity_fn, num_particles, dim, num_iterations=200):
    run_svgd, run_coin = _make_runner(logdensity_fn, num_iterations)
    x0 = jax.random.normal(jax.random.key(0), (num_particles, dim))
    run_svgd(x0, 0.1).block_until_ready(), run_coin(x0).block_until_ready()
    times = {}
    for name, fn in (("svgd", lambda: run_svgd(x0, 0.1)), ("coin", lambda: run_coin(x0))):
        best = np.inf
        for _ in range(3):
            t = time.perf_counter()
            fn().block_until_ready()
            best = min(best, time.perf_counter() - t)
        times[name] = best / num_iterations
    return times


def logistic_regression_target(rng, dim=10, n=800):
    x = rng.normal(size=(n, dim)).astype(np.float32)
    w = rng.normal(size=dim)
    y = (rng.random(n) < 1 / (1 + np.exp(-x @ w))).astype(np.float32)
    xtr, ytr, xte, yte = x[: n // 2], y[: n // 2], x[n // 2:], y[n // 2:]

    def logdensity(beta):
        logits = jnp.asarray(xtr) @ beta
        return (jnp.sum(jnp.asarray(ytr) * logits - jnp.logaddexp(0.0, logits))
                - 0.5 * jnp.sum(beta**2))

    def accuracy(particles):
        p = jnp.mean(jax.nn.sigmoid(jnp.asarray(xte) @ particles.T), -1)
        return float(jnp.mean((p > 0.5) == (jnp.asarray(yte) > 0.5)))

    return logdensity, accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    num_iterations = 300 if args.quick else 1000
    num_seeds = 2 if args.quick else 5
    step_sizes = np.logspace(-3, 1.5, 7 if args.quick else 10)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {"step_sizes": step_sizes.tolist(), "num_particles": 20,
           "num_iterations": num_iterations, "num_seeds": num_seeds, "targets": {}}
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    for ax, (name, (logdensity_fn, sampler)) in zip(axes.flat, TARGETS.items(), strict=False):
        t0 = time.perf_counter()
        exact = (_donut_draws if sampler is None else sampler)(rng, 2000)
        svgd_ed, coin_ed, _, _ = run_target(
            logdensity_fn, exact, step_sizes, num_particles=20, num_iterations=num_iterations,
            num_seeds=num_seeds, dim=2)
        iid = [float(energy_distance(jnp.asarray(exact[rng.choice(2000, 20)], jnp.float32),
                                     jnp.asarray(exact, jnp.float32))) for _ in range(20)]
        out["targets"][name] = {
            "svgd_energy_distance": svgd_ed.mean(1).tolist(),
            "coin_energy_distance": float(coin_ed.mean()),
            "iid_energy_distance": float(np.mean(iid)),
            "best_svgd_energy_distance": float(svgd_ed.mean(1).min()),
            "best_step_size": float(step_sizes[np.argmin(svgd_ed.mean(1))]),
        }
        ax.loglog(step_sizes, svgd_ed.mean(1), "o-", label="SVGD (Adagrad)")
        ax.axhline(coin_ed.mean(), color="C3", lw=2, label="Coin SVGD")
        ax.axhline(np.mean(iid), color="gray", ls="--", label="20 exact draws")
        ax.set_title(name)
        ax.set_xlabel("SVGD step size")
        ax.set_ylabel("energy distance")
        print(f"{name}: coin {coin_ed.mean():.4f}, best SVGD {svgd_ed.mean(1).min():.4f} "
              f"(step {out['targets'][name]['best_step_size']:.3g}), iid {np.mean(iid):.4f} "
              f"[{time.perf_counter() - t0:.1f} s]", flush=True)
    # Bayesian logistic regression: test accuracy against step size.
    ax = axes.flat[5]
    logdensity, accuracy = logistic_regression_target(np.random.default_rng(1))
    run_svgd, run_coin = _make_runner(logdensity, num_iterations)
    x0 = jax.random.normal(jax.random.key(7), (20, 10))
    svgd_acc = [accuracy(run_svgd(x0, s)) for s in step_sizes]
    coin_acc = accuracy(run_coin(x0))
    out["targets"]["logistic regression"] = {"svgd_test_accuracy": svgd_acc,
                                             "coin_test_accuracy": coin_acc}
    ax.semilogx(step_sizes, svgd_acc, "o-", label="SVGD (Adagrad)")
    ax.axhline(coin_acc, color="C3", lw=2, label="Coin SVGD")
    ax.set_title("Bayesian logistic regression (d=10)")
    ax.set_xlabel("SVGD step size")
    ax.set_ylabel("test accuracy")
    axes.flat[0].legend()
    ax.legend()
    print(f"logistic regression: coin acc {coin_acc:.3f}, SVGD acc {np.round(svgd_acc, 3)}")
    fig.suptitle(f"Coin SVGD vs SVGD: 20 particles, {num_iterations} iterations")
    fig.tight_layout()
    fig.savefig(RESULTS / "coin_paper.png", dpi=100)
    # Per-iteration cost and scaling.
    timing = {}
    for n, d in ([(20, 2), (200, 10)] if args.quick else [(20, 2), (200, 10), (1000, 100)]):
        t = _timing(lambda x: -0.5 * jnp.sum(x**2), n, d, 50 if n >= 1000 else 200)
        timing[f"{n}x{d}"] = {**t, "ratio": t["coin"] / t["svgd"]}
        print(f"per-iteration {n} particles x {d} dims: SVGD {t['svgd'] * 1e3:.3f} ms, "
              f"coin {t['coin'] * 1e3:.3f} ms, ratio {t['coin'] / t['svgd']:.2f}", flush=True)
    out["per_iteration_seconds"] = timing
    (RESULTS / "coin_paper.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
