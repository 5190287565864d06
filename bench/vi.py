"""Flow VI side by side: ppl flow VI vs flowjax used directly vs NumPyro AutoIAFNormal /
AutoBNAFNormal, on Neal's funnel (2-D, 10-D) and eight schools (non-centred): final ELBO,
PSIS k-hat and wall time, all from 4000 fresh draws. Every row runs in a fresh Python process
with the persistent compilation cache off: "cold" is the first call there (compilation
included), "warm" a second identical call in the same process. (Run one after another in one
process, later rows reused the earlier rows' compiled eager operations: flowjax's MAF
construction is the same program in ppl and flowjax, and the row that ran first paid for it.)
With ``--posteriordb``: ppl flow VI with default settings on the nine posteriordb dev
posteriors against their reference draws (max |dmean| / ref sd, max |sd ratio - 1|, k-hat,
wall time). Writes bench/results/vi.json and vi.md (rows of a partial run replace the
matching rows already there). Coin vs SVGD: see bench/coin_paper.py.

Run: .venv/bin/python bench/vi.py [--quick] [--models "funnel 10-D" ...] [--methods ...]
[--posteriordb]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from ppl.inference.vi import flow as flow_vi
from ppl.inference.vi.psis import importance_diagnostics

import ppl

RESULTS = pathlib.Path(__file__).parent / "results"


def funnel(dim):
    def model():
        v = numpyro.sample("v", dist.Normal(0.0, 3.0))
        numpyro.sample("x", dist.Normal(0.0, jnp.exp(v / 2)).expand([dim - 1]).to_event(1))
    model.__name__ = f"funnel{dim}"
    return model


def eight_schools(sigma, y):
    theta_trans = numpyro.sample("theta_trans", dist.Normal(0, 1).expand([8]).to_event(1))
    mu = numpyro.sample("mu", dist.Normal(0, 5))
    tau = numpyro.sample("tau", dist.HalfCauchy(5))
    numpyro.sample("y", dist.Normal(theta_trans * tau + mu, sigma), obs=y)


SCHOOLS = {"sigma": jnp.array([15.0, 10, 16, 11, 9, 11, 10, 18]),
           "y": jnp.array([28.0, 8, -3, 7, -1, 1, 18, 12])}


def _diag(model, z, log_q):
    log_p = jax.jit(jax.vmap(model.log_density))(z)
    d = importance_diagnostics(np.asarray(log_p - log_q))
    return {"elbo": d.elbo, "khat": d.khat, "log_evidence": d.log_evidence}


def run_ppl(model, steps, seed=0):
    t = time.perf_counter()
    result = flow_vi.fit(jax.random.key(seed), model, num_steps=steps, convergence_tol=None,
                         progress_bar=False)
    wall = time.perf_counter() - t
    z, log_q = result.flow.sample_and_log_prob(jax.random.key(9), (4000,))
    return {**_diag(model, z, log_q), "wall_time": wall, "whitening": result.whitening}


def run_ppl_defaults(model, seed=0):
    t = time.perf_counter()
    result = flow_vi.fit(jax.random.key(seed), model, progress_bar=False)
    wall = time.perf_counter() - t
    z, log_q = result.flow.sample_and_log_prob(jax.random.key(9), (4000,))
    return {**_diag(model, z, log_q), "wall_time": wall, "whitening": result.whitening,
            "num_steps": int(result.elbo_trace.size)}


def run_posteriordb(name):
    """Flow VI with no settings on one posteriordb posterior, against its reference."""
    from ppl.models.posteriordb import load_reference_flat, stan_flat_values

    from ppl import models

    model = models.get(f"posteriordb/{name}").build()
    t = time.perf_counter()
    post = ppl.infer(model, "flow_vi", key=0, progress_bar=False, warn=False)
    wall = time.perf_counter() - t
    flat_names, reference = load_reference_flat(name)
    reference = reference.reshape(-1, len(flat_names))
    values = stan_flat_values(post.samples, flat_names)
    draws = np.stack([np.asarray(values[n]).reshape(-1) for n in flat_names], -1)
    z = np.abs(draws.mean(0) - reference.mean(0)) / reference.std(0)
    r = np.abs(draws.std(0) / reference.std(0) - 1)
    return {"posterior": name, "dim": model.dim, "max_dmean_sd": float(z.max()),
            "worst_mean": flat_names[int(z.argmax())], "max_sd_ratio_error": float(r.max()),
            "worst_sd": flat_names[int(r.argmax())], "khat": post.meta["khat"],
            "whitening": post.meta["whitening"], "num_steps": int(post.history["elbo"].size),
            "wall_time": wall, "passes": bool(z.max() < 0.2 and r.max() < 0.2)}


def run_flowjax(model, steps, seed=0):
    from flowjax.distributions import StandardNormal
    from flowjax.flows import masked_autoregressive_flow
    from flowjax.train import fit_to_key_based_loss
    from flowjax.train.losses import ElboLoss

    t = time.perf_counter()
    flow = masked_autoregressive_flow(jax.random.key(seed), base_dist=StandardNormal((model.dim,)),
                                      flow_layers=4, nn_width=32, invert=False)
    log_density = jax.jit(lambda z: model.log_density(z))
    loss = ElboLoss(log_density, num_samples=16)
    flow, _ = fit_to_key_based_loss(jax.random.key(1000 + seed), flow, loss_fn=loss, steps=steps,
                                    learning_rate=3e-3, show_progress=False)
    wall = time.perf_counter() - t
    z, log_q = flow.sample_and_log_prob(jax.random.key(9), (4000,))
    return {**_diag(model, z, log_q), "wall_time": wall}


def run_numpyro(model_fn, kwargs, model, steps, guide_cls, seed=0):
    from numpyro.infer import SVI, Trace_ELBO

    t = time.perf_counter()
    guide = guide_cls(model_fn)
    svi = SVI(model_fn, guide, numpyro.optim.Adam(3e-3), Trace_ELBO(num_particles=16))
    result = svi.run(jax.random.key(seed), steps, progress_bar=False, **kwargs)
    wall = time.perf_counter() - t
    transform = guide.get_transform(result.params)
    base = guide.get_base_dist()
    eps = base.sample(jax.random.key(9), (4000,))
    z = jax.vmap(transform)(eps)
    log_det = jax.vmap(lambda e: transform.log_abs_det_jacobian(e, transform(e)))(eps)
    log_q = base.log_prob(eps) - log_det
    return {**_diag(model, z, log_q), "wall_time": wall}


POSTERIORDB = ["arK-arK", "diamonds-diamonds", "eight_schools-eight_schools_centered",
               "eight_schools-eight_schools_noncentered", "garch-garch11",
               "gp_pois_regr-gp_pois_regr", "hmm_example-hmm_example",
               "kidiq-kidscore_momiq", "low_dim_gauss_mix-low_dim_gauss_mix"]


CASES = {"funnel 2-D": (lambda: funnel(2), {}), "funnel 10-D": (lambda: funnel(10), {}),
         "eight schools": (lambda: eight_schools, SCHOOLS)}
METHODS = ("ppl flow_vi (MAF, auto whitening)", "ppl flow_vi defaults (up to 4000 steps)",
           "flowjax MAF direct", "numpyro AutoIAFNormal", "numpyro AutoBNAFNormal")


def run_case(name, method, steps, seed):
    """One run, in this process: metrics of the first call, its wall time, and the wall time
    of a second identical call."""
    from numpyro.infer.autoguide import AutoBNAFNormal, AutoIAFNormal

    model_fn, kwargs = CASES[name][0](), CASES[name][1]
    model = ppl.from_numpyro(model_fn, **kwargs)
    fn = {
        METHODS[0]: lambda: run_ppl(model, steps, seed),
        METHODS[1]: lambda: run_ppl_defaults(model, seed),
        METHODS[2]: lambda: run_flowjax(model, steps, seed),
        METHODS[3]: lambda: run_numpyro(model_fn, kwargs, model, steps, AutoIAFNormal, seed),
        METHODS[4]: lambda: run_numpyro(model_fn, kwargs, model, steps, AutoBNAFNormal, seed),
    }[method]
    first = fn()
    return {**first, "warm_time": fn()["wall_time"]}


def _run_isolated(name, method, steps, seed):
    """``run_case`` in a fresh interpreter with the persistent compilation cache off."""
    env = {**os.environ, "PPL_COMPILATION_CACHE": "0"}
    command = [sys.executable, __file__, "--worker", name, method, "--steps", str(steps),
               "--seed", str(seed)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:  # a library failing on a model is a result too
        return {"model": name, "method": method,
                "error": (done.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return {"model": name, "method": method, **json.loads(lines[-1])}


def _summary_row(runs):
    """Mean ELBO and its sd over seeds, median k-hat and wall times."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    row = dict(ok[0])
    elbos = [r["elbo"] for r in ok]
    row.update(elbo=float(np.mean(elbos)), elbo_sd=float(np.std(elbos)),
               khat=float(np.median([r["khat"] for r in ok])),
               khat_max=float(np.max([r["khat"] for r in ok])), seeds=len(ok),
               wall_time=float(np.median([r["wall_time"] for r in ok])),
               warm_time=float(np.median([r["warm_time"] for r in ok])))
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="*", default=None,
                        help="side-by-side cases to run (default: all)")
    parser.add_argument("--methods", nargs="*", default=None,
                        help="side-by-side methods to run (default: all)")
    parser.add_argument("--posteriordb", nargs="*", default=None,
                        help="run the posteriordb table (all nine, or the names given)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds per side-by-side row, each in a fresh process")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "METHOD"),
                        help=argparse.SUPPRESS)  # one row, printed as JSON (internal)
    parser.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = args.steps or (500 if args.quick else 2000)
    if args.worker:
        try:
            row = run_case(*args.worker, steps, args.seed)
        except Exception as error:  # a library failing on a model is a result too
            row = {"error": repr(error)[:200]}
        print(json.dumps(row), flush=True)
        return None
    previous = json.loads((RESULTS / "vi.json").read_text()) if (RESULTS / "vi.json").exists() \
        else {}
    rows, pdb_rows = previous.get("rows", []), previous.get("posteriordb", [])
    if args.posteriordb is not None:
        for name in args.posteriordb or POSTERIORDB:
            try:
                row = run_posteriordb(name)
            except Exception as error:  # a failure is a result too
                row = {"posterior": name, "error": repr(error)[:200]}
            pdb_rows = [r for r in pdb_rows if r["posterior"] != name] + [row]
            print(json.dumps(row), flush=True)
            _write(rows, pdb_rows, steps)
        if args.models is None:
            return
    for name in CASES:
        if args.models and name not in args.models:
            continue
        methods = [m for m in METHODS if not args.methods or m in args.methods]
        # Repetitions (seeds 0, 1, ...) alternate between the methods, so that a change of
        # load on the shared machine hits them alike; ELBOs vary with the seed as much as
        # between methods, so they are averaged too.
        runs = {m: [] for m in methods}
        for seed in range(args.seeds):
            for method in methods:
                runs[method].append(_run_isolated(name, method, steps, seed))
        for method in methods:
            row = _summary_row(runs[method])
            keep = [r for r in rows if (r["model"], r["method"]) != (name, method)
                    and r["method"] != "ppl flow_vi (MAF, whitened)"]  # the old name
            rows = keep + [row]
            rows.sort(key=lambda r: list(CASES).index(r["model"]) if r["model"] in CASES else 99)
            print(json.dumps(row), flush=True)
            _write(rows, pdb_rows, steps)


def _write(rows, pdb_rows, steps):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vi.json").write_text(json.dumps(
        {"steps": steps, "rows": rows, "posteriordb": pdb_rows}, indent=1))
    lines = ["| model | method | seeds | ELBO (mean ± sd) | k-hat (median, max) | cold (s) "
             "| warm (s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | | error: {r['error'][:80]} | | | |")
        else:
            lines.append(
                f"| {r['model']} | {r['method']} | {r.get('seeds', 1)} "
                f"| {r['elbo']:.3f} ± {r.get('elbo_sd', 0.0):.3f} "
                f"| {r['khat']:.2f}, {r.get('khat_max', r['khat']):.2f} "
                f"| {r['wall_time']:.1f} | {r['warm_time']:.2f} |")
    pdb = ["| posterior | dim | max abs(dmean)/sd | max abs(sd ratio - 1) | k-hat | whitening "
           "| steps | wall time (s) | passes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in pdb_rows:
        if "error" in r:
            pdb.append(f"| {r['posterior']} | | error: {r['error'][:80]} | | | | | | no |")
        else:
            pdb.append(
                f"| {r['posterior']} | {r['dim']} | {r['max_dmean_sd']:.3f} ({r['worst_mean']}) "
                f"| {r['max_sd_ratio_error']:.3f} ({r['worst_sd']}) | {r['khat']:.2f} "
                f"| {r['whitening']} | {r['num_steps']} | {r['wall_time']:.1f} "
                f"| {'yes' if r['passes'] else 'no'} |")
    (RESULTS / "vi.md").write_text(
        f"Flow VI, {steps} steps, 16 draws per ELBO estimate; ELBO and k-hat from 4000 fresh "
        "draws (log Z = 0 for the funnels), one run per seed. Every run in a fresh process "
        "with the persistent compilation cache off, the methods alternating: cold = first "
        "call (compilation included), warm = a second identical call, medians over seeds; 2 "
        f"shared CPU cores, load average {os.getloadavg()[0]:.1f} at the end of the run.\n\n"
        + "\n".join(lines) + "\n\n"
        "## posteriordb dev posteriors, flow VI with default settings\n\n"
        "`ppl.infer(model, \"flow_vi\", key=0)`, 2000 draws from q; criterion (issue 5): "
        "abs(dmean) < 0.2 reference sd and sd within 20% for every flat parameter.\n\n"
        + "\n".join(pdb) + "\n" + NOTES)
    return lines


NOTES = """
## Notes

- Default whitening (`whiten="auto"`). The Laplace approximation is used when it is
  trustworthy (finite, positive curvature inside [1e-4, 1e10], whitened gradient at the mode
  below 0.1). On the 10-D funnel and the centred eight schools the mode search runs off
  towards a zero scale and the curvature is clipped; then Laplace and robust prior-scale
  whitening (median and IQR/1.349 of 1000 prior draws) are each trained for one 200-step
  chunk and the higher pilot ELBO continues (funnel 10-D pilot ELBOs: Laplace -34.3, prior
  -1.6). Before this change the 10-D funnel gave ELBO -11.07, k-hat 1.09 and the centred
  eight schools failed with a NaN ELBO at step 0.
- Defaults changed with it: Adam peak learning rate 3e-3 -> 1e-2, `num_steps` 2000 -> 4000
  (the convergence check still starts at half, and an early stop now ends with one chunk on
  the schedule's low-learning-rate tail). On the 10-D funnel, 2000 steps left 5 of 6 seeds
  with a PSIS-weighted sd of v 2.45-2.8 (exact 3); 4000 steps passed for the 4 seeds tried.
- The 10-D funnel is the seed-sensitive case: with the defaults (seed 0) k-hat 0.66, ELBO
  -0.21, PSIS-weighted sd of v 2.75 (z = 3.1 MCSE; the test's bound is 3.29), and ELBOs
  between -0.04 and -0.33 over seeds 0-5. One seed is no comparison: at seed 0 flowjax's MAF
  used directly looked better (ELBO -0.20, k-hat 0.50, against -0.26, 0.61); over seeds
  0-2 (table) ppl is ahead (-0.12 ± 0.10 against -0.41 ± 0.13).
- Verdict (2026-11-23 table): ppl has the best mean ELBO on all three models and the lowest
  median k-hat or within 0.01 of it. Cold, it is level with flowjax used directly \
(0.94-1.06x its time)
  and 1.1x (2-D funnel), 1.2x (eight schools) and 1.6x (10-D funnel, where the Laplace
  search fails and two whitenings are piloted) NumPyro AutoIAFNormal's time; warm, it is
  10-17x faster than every anchor. The issue's "no more wall time" holds against flowjax
  and AutoBNAFNormal, and against AutoIAFNormal only warm.
- The 2-D funnel with the defaults (4000 steps, Laplace trusted there: its mode at v = -4.5 is
  proper) reaches ELBO -0.004 but k-hat 1.55: a few draws deep in the neck carry huge
  weights. The 2000-step row has k-hat 0.57. k-hat is a tail diagnostic and can disagree
  with a near-zero KL; the warning fires, as it should.
- gp_pois_regr: plain draws from the fitted flow put the sd of the GP amplitude `alpha` (and
  of `rho`) 15-25% too low: the reverse-KL optimum is under-dispersed on these weakly
  identified hyperparameters. Over seeds (2026-11-22, 2 loaded cores), plain draws' sd ratios
  (alpha, rho) to the reference: 0.79/0.81 (seed 0), 0.81/0.72 (seed 2), 0.85/0.86 (seed 3).
  What did not change it (seed 0): stick-the-landing 0.78/0.73, 64 draws per step 0.79/0.74,
  8 layers 0.79/0.81, 10,000 steps at learning rate 3e-3 0.79/0.76, a spline flow 0.63/0.55,
  a Student-t base (df 5) 0.84/0.77 (k-hat 0.45), an importance-weighted ELBO with
  doubly-reparameterised gradients (K=8) over-dispersed f. Prior whitening 0.83/0.84 (k-hat
  0.56) passes but its pilot ELBO is lower, so `auto` rightly keeps the Laplace whitening.
- What fixed it (2026-11-23): PSIS-weighted moments. With `flow.fit` defaults, the
  self-normalised PSIS sd ratios (alpha, rho) were 0.89/0.97 from 2000 draws and 0.95/0.94
  from 20,000 (seed 0, k-hat 0.68 and 0.80), 0.91/0.92 from 8000 (seed 1, k-hat 0.53) and
  0.83/0.88 (seed 2, k-hat 0.56; plain 0.77/0.79). So `ppl.infer(..., "flow_vi")` now
  returns PSIS-resampled draws by default (4 proposals per draw, systematic resampling, as
  Pathfinder does), and the table above passes on all nine posteriors.
- Seed 2 used to stop at step 4 with a non-finite ELBO gradient (one draw with alpha > 20 and
  rho > 26, where exp(f) overflows in float32). Isolated non-finite steps are now skipped (at
  most 9; the tenth stops the fit).
- Cold wall time is mostly compilation and flowjax's eager construction of the flow (one
  compiled program per parameter shape). ppl draws the flow's initial parameters through
  fused Threefry programs that give JAX's exact random numbers (`ppl.prng`), about 2x
  faster to compile; its remaining extra cost over the anchors is the Laplace mode search
  (four small programs, about 2 s cold). Warm, ppl trains in one compiled scan per 200 steps
  and is 10-30x faster than flowjax's `fit_to_key_based_loss` (a Python loop) or NumPyro's
  SVI.
- The posteriordb table runs in one process, one posterior after another: its wall times
  are not cold times.
"""


if __name__ == "__main__":
    main()
