"""SMC benchmark (not a test): ppl's particle filter and tempered SMC against anchor libraries.

1. Bootstrap filter, stochastic volatility (mu=-1.02, rho=0.9702, sigma=0.178), T=1000,
   N=10,000, systematic resampling at ESS < N/2: ppl (float32, default fused-threefry keys)
   vs ``particles`` 0.3, interleaved run by run, with the load average recorded.
2. Tempered SMC on a logistic regression (N=10,000, D=25), 1000 particles: ppl (waste-free
   random walk, and HMC) vs BlackJAX's adaptive tempered SMC (modest settings).
3. The two-mode mixture: log-evidence error and mode-weight error against exact values.

Run: ``python bench/smc.py [--quick]``; writes bench/results/smc.json and smc.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from ppl.inference import smc
from scipy import special, stats

import ppl

RESULTS = pathlib.Path(
    os.environ.get("SMC_BENCH_RESULTS", pathlib.Path(__file__).parent / "results"))
MU, RHO, SIGMA = -1.02, 0.9702, 0.178


def sv_data(num_steps, seed=0):
    rng = np.random.default_rng(seed)
    x = np.empty(num_steps)
    x[0] = MU + SIGMA / np.sqrt(1 - RHO**2) * rng.normal()
    for t in range(1, num_steps):
        x[t] = MU + RHO * (x[t - 1] - MU) + SIGMA * rng.normal()
    return (np.exp(0.5 * x) * rng.normal(size=num_steps)).astype(np.float32)


def sv_ssm():
    sd0 = SIGMA / np.sqrt(1 - RHO**2)
    return smc.StateSpaceModel(
        sample_initial=lambda key, n: MU + sd0 * jax.random.normal(key, (n,)),
        sample_transition=lambda key, t, x: MU + RHO * (x - MU)
        + SIGMA * jax.random.normal(key, x.shape),
        log_observation=lambda t, x, y: -0.5 * (jnp.log(2 * jnp.pi) + x + y**2 * jnp.exp(-x)),
    )


def bench_filter(num_reps):
    """ppl and ``particles`` interleaved rep by rep (the machine is shared: load drifts).

    ``particles`` with ``collect=None`` records ESS, resampling flags and the log-likelihood
    per step, no moments: ``store_moments=False`` is ppl doing the same work; the default
    also computes filtering means and variances.
    """
    import particles
    from particles import state_space_models as ssms

    y = sv_data(1000)
    ssm = sv_ssm()
    n = 10_000
    fk = ssms.Bootstrap(ssm=ssms.StochVol(mu=MU, rho=RHO, sigma=SIGMA), data=y)

    def run_ppl(seed, store_moments):
        res = smc.particle_filter(jax.random.key(seed), ssm, y, num_particles=n,
                                  store_moments=store_moments)
        return float(res.log_likelihood), res.meta["wall_time"]

    def run_particles(seed):
        np.random.seed(seed)
        alg = particles.SMC(fk=fk, N=n, resampling="systematic", ESSrmin=0.5,
                            collect=None, store_history=False, verbose=False)
        start = time.perf_counter()
        alg.run()
        return float(alg.logLt), time.perf_counter() - start

    first = time.perf_counter()
    run_ppl(10_000, True)
    compile_time = time.perf_counter() - first
    run_ppl(10_000, False)
    run_particles(10_000)
    load_before = os.getloadavg()
    runs = {"ppl": ([], []), "ppl_no_moments": ([], []), "particles": ([], [])}
    for i in range(num_reps):
        for name, fn in (("ppl", lambda s: run_ppl(s + 1, True)),
                         ("ppl_no_moments", lambda s: run_ppl(s + 1, False)),
                         ("particles", run_particles)):
            ll, sec = fn(i)
            runs[name][0].append(ll)
            runs[name][1].append(sec)
    load_after = os.getloadavg()
    ppl_ll, pc_ll = np.array(runs["ppl"][0]), np.array(runs["particles"][0])
    diff_se = np.sqrt(ppl_ll.var(ddof=1) / num_reps + pc_ll.var(ddof=1) / num_reps)
    median = {name: float(np.median(times)) for name, (_, times) in runs.items()}
    return {
        "ppl_seconds_median": median["ppl"],
        "ppl_no_moments_seconds_median": median["ppl_no_moments"],
        "particles_seconds_median": median["particles"],
        "speedup": median["particles"] / median["ppl"],
        "speedup_no_moments": median["particles"] / median["ppl_no_moments"],
        "seconds": {name: times for name, (_, times) in runs.items()},
        "ppl_compile_seconds": compile_time,
        "ppl_log_likelihood_mean": float(ppl_ll.mean()),
        "ppl_log_likelihood_sd": float(ppl_ll.std(ddof=1)),
        "particles_log_likelihood_mean": float(pc_ll.mean()),
        "particles_log_likelihood_sd": float(pc_ll.std(ddof=1)),
        "difference_in_standard_errors": float(abs(ppl_ll.mean() - pc_ll.mean()) / diff_se),
        "num_reps": num_reps,
        "load_average_before": list(load_before), "load_average_after": list(load_after),
        "settings": "float32, prng_impl=threefry_fused (default), systematic at ESS < N/2",
    }


def logistic_data(num_data=10_000, dim=25, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_data, dim)).astype(np.float32)
    beta = (0.5 * rng.normal(size=dim)).astype(np.float32)
    y = (rng.uniform(size=num_data) < special.expit(x @ beta)).astype(np.float32)
    return x, y


def logistic_reference_log_evidence(x, y, num_draws=20_000, seed=0):
    """log Z by importance sampling from the Laplace approximation (float64 NumPy).

    Returns ``(log_z, mc_standard_error)``; the Laplace proposal is excellent here
    (N = 10,000 observations), so the importance weights' ESS is close to ``num_draws``.
    """
    from scipy import optimize

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    dim = x.shape[1]

    def neg_log_joint(b):
        logits = x @ b
        return -(np.sum(y * logits - np.logaddexp(0, logits)) - 0.5 * b @ b)

    def grad(b):
        return -(x.T @ (y - special.expit(x @ b)) - b)

    mode = optimize.minimize(neg_log_joint, np.zeros(dim), jac=grad, method="BFGS",
                             options={"gtol": 1e-10}).x
    p = special.expit(x @ mode)
    hessian = (x.T * (p * (1 - p))) @ x + np.eye(dim)
    chol = np.linalg.cholesky(np.linalg.inv(hessian))
    rng = np.random.default_rng(seed)
    log_w = []
    for _ in range(num_draws // 2000):
        z = rng.normal(size=(2000, dim))
        b = mode + z @ chol.T
        logits = b @ x.T
        log_p = np.sum(y * logits - np.logaddexp(0, logits), 1) - 0.5 * np.sum(b * b, 1)
        log_q = -0.5 * np.sum(z * z, 1) + 0.5 * np.linalg.slogdet(hessian)[1]
        log_w.append(log_p - log_q)
    log_w = np.concatenate(log_w)
    log_z = special.logsumexp(log_w) - np.log(log_w.size)
    w = np.exp(log_w - log_w.max())
    se = w.std(ddof=1) / np.sqrt(w.size) / w.mean()  # delta method on the log scale
    return float(log_z), float(se)


def _logistic_loglik(beta, data):
    x, y = data
    logits = x @ beta
    return jnp.sum(y * logits - jnp.logaddexp(0.0, logits))


def _logistic_logprior(beta, data):
    return jnp.sum(jax.scipy.stats.norm.logpdf(beta))


TEMPERED_CONFIGS = {
    # The defaults of ppl.infer(model, "smc") (HMC, dense cross-fitted population mass,
    # trajectory 1.5 in whitened units, acceptance 0.75, 2-50 moves by acceptance).
    "ppl_default": dict(),
    "ppl_ess_07": dict(target_ess=0.7),
    "ppl_waste_free": dict(waste_free=True, chain_length=10),
    "ppl_two_moves": dict(min_mcmc_steps=2, max_mcmc_steps=2),
    "ppl_trajectory_2": dict(trajectory_length=2.0),
    # Before 2026-11-23 (target_accept 0.65 was the default then): 4 leapfrog steps of ~0.9
    # (whitened) are about half a period of a Gaussian: the particles came back near their
    # mirror image, poorly decorrelated.
    "ppl_hmc": dict(kernel="hmc", num_integration_steps=4, min_mcmc_steps=2,
                    max_mcmc_steps=3, target_accept=0.65),
    "ppl_hmc_l2": dict(kernel="hmc", num_integration_steps=2, min_mcmc_steps=2,
                       max_mcmc_steps=10, target_accept=0.75),
    "ppl_hmc_l3": dict(kernel="hmc", num_integration_steps=3, min_mcmc_steps=2,
                       max_mcmc_steps=10, target_accept=0.85),
    "ppl_hmc_diag": dict(kernel="hmc", num_integration_steps=4, min_mcmc_steps=2,
                         max_mcmc_steps=3, dense_mass=False, target_accept=0.65),
    "ppl_waste_free_hmc": dict(kernel="hmc", waste_free=True, chain_length=10,
                               num_integration_steps=5, target_accept=0.65),
    "ppl_waste_free_rw": dict(kernel="rw", waste_free=True, chain_length=20),
}


def bench_tempered(num_seeds, quick, num_blackjax_seeds, config_names=None, extra_configs=None,
                   blackjax_first_seed=0):
    """ppl configurations and BlackJAX interleaved seed by seed (the machine is shared).

    Each configuration is compiled (one run) before timing. Per run: wall time, process CPU
    time (less sensitive to other processes' load on a shared machine than the wall time) and
    the 1-minute load average.
    """
    x, y = logistic_data()
    dim = x.shape[1]
    model = ppl.from_logdensity(
        _logistic_loglik, jnp.zeros(dim), data=(jnp.asarray(x), jnp.asarray(y)),
        log_prior_fn=_logistic_logprior,
        sample_prior_fn=lambda key, n: jax.random.normal(key, (n, dim)),
    )
    log_z_ref, log_z_ref_se = logistic_reference_log_evidence(x, y)
    out = {"reference_log_evidence": log_z_ref, "reference_log_evidence_se": log_z_ref_se}
    configs = dict(TEMPERED_CONFIGS, **(extra_configs or {}))
    wanted = ["ppl_default", "ppl_hmc"] if config_names is None else config_names
    runs = {name: [] for name in wanted}
    for name in wanted:
        ppl.infer(model, "smc", key=100, num_particles=1000, progress_bar=False,
                  **configs[name])
    blackjax_run = _blackjax_runner(x, y) if num_blackjax_seeds else None
    blackjax_runs = []
    for seed in range(max(num_seeds, num_blackjax_seeds)):
        for name in wanted:
            if seed >= num_seeds:
                continue
            cpu = time.process_time()
            post = ppl.infer(model, "smc", key=seed, num_particles=1000, progress_bar=False,
                             **configs[name])
            runs[name].append({
                "log_evidence": post.log_evidence, "seconds": post.meta["wall_time"],
                "cpu_seconds": time.process_time() - cpu,
                "num_temperatures": post.meta["num_temperatures"],
                "gradient_evals_per_particle": post.meta["num_gradient_evals"] / 1000,
                "load": os.getloadavg()[0]})
            print(name, seed, json.dumps(runs[name][-1]), flush=True)
        if seed < num_blackjax_seeds:
            blackjax_runs.append(blackjax_run(blackjax_first_seed + seed))
            print("blackjax", seed, json.dumps(blackjax_runs[-1]), flush=True)
    for name in wanted:
        out[name] = _summarise(runs[name], log_z_ref)
        out[name]["settings"] = configs[name]
    if blackjax_runs:
        out["blackjax"] = _summarise(blackjax_runs, log_z_ref)
        out["blackjax"]["compile_seconds"] = blackjax_run.first_run_seconds
        out["blackjax"]["settings"] = ("HMC, 10 leapfrog steps of 0.01, unit mass, 10 moves, "
                                       "target ESS 0.5")
    return out


def _summarise(runs, log_z_ref):
    log_z = np.array([r["log_evidence"] for r in runs])
    num = len(log_z)
    sd = float(np.std(log_z, ddof=1)) if num > 1 else float("nan")
    return {
        "log_evidence_mean": float(log_z.mean()), "log_evidences": log_z.tolist(),
        "log_evidence_sd": sd,
        # Standard error of a normal sample's sd: sd / sqrt(2 (n - 1)).
        "log_evidence_sd_se": sd / np.sqrt(2 * (num - 1)) if num > 1 else float("nan"),
        "bias_in_standard_errors": float((log_z.mean() - log_z_ref) / (sd / np.sqrt(num)))
        if num > 1 else float("nan"),
        "log_evidence_rmse": float(np.sqrt(np.mean((log_z - log_z_ref) ** 2))),
        "seconds_median": float(np.median([r["seconds"] for r in runs])),
        "cpu_seconds_median": float(np.median([r["cpu_seconds"] for r in runs])),
        "num_temperatures_median": float(np.median([r["num_temperatures"] for r in runs])),
        "gradient_evals_per_particle": float(
            np.median([r["gradient_evals_per_particle"] for r in runs])),
        "load_min_max": [min(r["load"] for r in runs), max(r["load"] for r in runs)],
        "num_seeds": num, "runs": runs,
    }


def _blackjax_runner(x, y):
    import blackjax
    from blackjax.smc import extend_params
    from blackjax.smc.resampling import systematic

    dim = x.shape[1]
    data = (jnp.asarray(x), jnp.asarray(y))
    loglik = lambda b: _logistic_loglik(b, data)  # noqa: E731
    logprior = lambda b: _logistic_logprior(b, data)  # noqa: E731
    params = extend_params({"step_size": 0.01, "inverse_mass_matrix": jnp.ones(dim),
                            "num_integration_steps": 10})
    algo = blackjax.adaptive_tempered_smc(
        logprior, loglik, blackjax.hmc.build_kernel(), blackjax.hmc.init, params,
        systematic, 0.5, num_mcmc_steps=10,
    )
    step = jax.jit(algo.step)

    def one(seed):
        key = jax.random.key(seed)
        state = algo.init(jax.random.normal(key, (1000, dim)))
        log_z, k = 0.0, 0
        while float(state.tempering_param) < 1.0:
            key, sub = jax.random.split(key)
            state, info = step(sub, state)
            log_z += float(info.log_likelihood_increment)
            k += 1
        return log_z, k

    def run(seed):
        start, cpu = time.perf_counter(), time.process_time()
        log_z, k = one(seed)
        return {"log_evidence": log_z, "seconds": time.perf_counter() - start,
                "cpu_seconds": time.process_time() - cpu, "num_temperatures": k,
                "gradient_evals_per_particle": 10 * 10 * k, "load": os.getloadavg()[0]}

    # Compile (init and one step; the step is the same program at every temperature).
    start = time.perf_counter()
    state = algo.init(jax.random.normal(jax.random.key(1000), (1000, dim)))
    jax.block_until_ready(step(jax.random.key(1001), state))
    run.first_run_seconds = time.perf_counter() - start
    return run


def bench_mixture(num_seeds):
    locs, scales, weights, prior_sd = (
        np.array([-2.0, 2.5]), np.array([0.3, 0.4]), np.array([0.7, 0.3]), 3.0)

    def log_lik(z):
        return special_lse(jnp.log(weights) + jax.scipy.stats.norm.logpdf(z["z"], locs, scales))

    special_lse = jax.scipy.special.logsumexp
    model = ppl.from_logdensity(
        log_lik, {"z": jnp.zeros(())},
        log_prior_fn=lambda z: jax.scipy.stats.norm.logpdf(z["z"], 0.0, prior_sd),
        sample_prior_fn=lambda key, n: {"z": prior_sd * jax.random.normal(key, (n,))},
    )
    log_joint = np.log(weights) + stats.norm.logpdf(locs, 0.0, np.sqrt(prior_sd**2 + scales**2))
    log_z = special.logsumexp(log_joint)
    right = np.exp(log_joint - log_z)[1]
    est_z, est_w = [], []
    for seed in range(num_seeds):
        post = ppl.infer(model, "smc", key=seed, num_particles=1000, kernel="rw",
                         progress_bar=False)
        est_z.append(post.log_evidence)
        est_w.append(float(np.sum(post.weights * (post.samples["z"] > 0))))
    est_z, est_w = np.array(est_z), np.array(est_w)
    return {"exact_log_evidence": float(log_z), "log_evidence_bias": float(est_z.mean() - log_z),
            "log_evidence_rmse": float(np.sqrt(np.mean((est_z - log_z) ** 2))),
            "exact_mode_weight": float(right), "mode_weight_bias": float(est_w.mean() - right),
            "mode_weight_rmse": float(np.sqrt(np.mean((est_w - right) ** 2))),
            "num_seeds": num_seeds, "num_particles": 1000}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=None, help="tempered SMC seeds for ppl")
    parser.add_argument("--blackjax-seeds", type=int, default=None)
    parser.add_argument("--blackjax-first-seed", type=int, default=0,
                        help="BlackJAX seeds run from here (to add seeds to an earlier run)")
    parser.add_argument("--configs", default="", help="comma list of ppl tempered configs "
                        f"({', '.join(TEMPERED_CONFIGS)}), or 'none' (BlackJAX only)")
    parser.add_argument("--only", default="filter,mixture,tempered")
    parser.add_argument("--label", default="", help="where it ran (goes into the results)")
    args = parser.parse_args()
    results = {"device": str(jax.devices()[0]), "jax": jax.__version__, "label": args.label,
               "cpu_count": os.cpu_count(), "quick": args.quick}
    only = args.only.split(",")
    if "filter" in only:
        results["sv_filter"] = bench_filter(num_reps=5 if args.quick else 20)
        print(json.dumps(results["sv_filter"], indent=1), flush=True)
    if "mixture" in only:
        results["mixture"] = bench_mixture(num_seeds=10 if args.quick else 30)
        print(json.dumps(results["mixture"], indent=1), flush=True)
    if "tempered" in only:
        seeds = args.seeds or (2 if args.quick else 10)
        bj_seeds = args.blackjax_seeds if args.blackjax_seeds is not None else (
            1 if args.quick else 5)
        results["logistic_tempered"] = bench_tempered(
            seeds, args.quick, bj_seeds,
            None if not args.configs else [] if args.configs == "none" else args.configs.split(","),
            blackjax_first_seed=args.blackjax_first_seed)
        print(json.dumps(results["logistic_tempered"], indent=1), flush=True)
    RESULTS.mkdir(exist_ok=True)
    stem = "smc" + (f"_{args.label}" if args.label else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=1))
    lines = [f"# SMC benchmark ({args.label or 'local'}; {results['device']}, "
             f"{results['cpu_count']} CPUs, jax {results['jax']}"
             f"{', --quick' if args.quick else ''})", ""]
    if "sv_filter" in results or "mixture" in results:
        lines += ["| task | ppl | anchor | ratio | accuracy |", "|---|---|---|---|---|"]
    if "sv_filter" in results:
        f = results["sv_filter"]
        lines.append(
            f"| SV bootstrap filter T=1000 N=10k ({f['num_reps']} reps interleaved, 1-min load "
            f"{f['load_average_before'][0]:.1f}-{f['load_average_after'][0]:.1f}) | "
            f"{f['ppl_seconds_median']:.3f} s with filtering moments, "
            f"{f['ppl_no_moments_seconds_median']:.3f} s without | "
            f"particles 0.3: {f['particles_seconds_median']:.3f} s | {f['speedup']:.1f}x, "
            f"{f['speedup_no_moments']:.1f}x like for like | log-lik "
            f"{f['ppl_log_likelihood_mean']:.2f} ± {f['ppl_log_likelihood_sd']:.2f} vs "
            f"{f['particles_log_likelihood_mean']:.2f} ± {f['particles_log_likelihood_sd']:.2f} "
            f"({f['difference_in_standard_errors']:.1f} SE) |")
    if "mixture" in results:
        m = results["mixture"]
        lines.append(
            f"| two-mode mixture, 1000 particles, {m['num_seeds']} seeds | log Z bias "
            f"{m['log_evidence_bias']:+.3f} (rmse {m['log_evidence_rmse']:.3f}); mode weight bias "
            f"{m['mode_weight_bias']:+.3f} (rmse {m['mode_weight_rmse']:.3f}) | exact | | exact "
            f"weight {m['exact_mode_weight']:.3f} |")
    if "logistic_tempered" in results:
        lt = results["logistic_tempered"]
        lines += ["", "Tempered SMC, logistic regression N=10k D=25, 1000 particles; "
                  f"reference log Z {lt['reference_log_evidence']:.3f} ± "
                  f"{lt['reference_log_evidence_se']:.3f} "
                  "(Laplace importance sampling). Seeds interleaved across configurations.", "",
                  "| configuration | seeds | median wall | median CPU | temperatures | "
                  "grads/particle | log Z mean | sd ± SE | bias / SE | load |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in lt.items():
            if not isinstance(r, dict):
                continue
            lines.append(
                f"| {name} {r['settings'] if name.startswith('ppl') else ''} | {r['num_seeds']} | "
                f"{r['seconds_median']:.1f} s | {r['cpu_seconds_median']:.1f} s | "
                f"{r['num_temperatures_median']:.0f} | {r['gradient_evals_per_particle']:.0f} | "
                f"{r['log_evidence_mean']:.2f} | {r['log_evidence_sd']:.2f} ± "
                f"{r['log_evidence_sd_se']:.2f} | {r['bias_in_standard_errors']:+.1f} | "
                f"{r['load_min_max'][0]:.1f}-{r['load_min_max'][1]:.1f} |")
        if "blackjax" in lt:
            bj = lt["blackjax"]
            for name, r in lt.items():
                if name.startswith("ppl_"):
                    lines.append(
                        f"- {name}: BlackJAX / ppl median wall "
                        f"{bj['seconds_median'] / r['seconds_median']:.1f}x, "
                        f"CPU {bj['cpu_seconds_median'] / r['cpu_seconds_median']:.1f}x")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
