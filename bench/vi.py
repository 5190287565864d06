"""Flow VI side by side: ppl flow VI vs flowjax used directly vs NumPyro AutoIAFNormal /
AutoBNAFNormal, on Neal's funnel (2-D, 10-D) and eight schools (non-centred): final ELBO,
PSIS k-hat and wall time (first call, compilation included), all from 4000 fresh draws.
Writes bench/results/vi.json and vi.md. Coin vs SVGD: see bench/coin_paper.py.

Run: .venv/bin/python bench/vi.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

import ppl
from ppl.inference.vi import flow as flow_vi
from ppl.inference.vi.psis import importance_diagnostics

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


def run_ppl(model, steps):
    t = time.perf_counter()
    result = flow_vi.fit(jax.random.key(0), model, num_steps=steps, convergence_tol=None,
                         progress_bar=False)
    wall = time.perf_counter() - t
    z, log_q = result.flow.sample_and_log_prob(jax.random.key(9), (4000,))
    return {**_diag(model, z, log_q), "wall_time": wall}


def run_flowjax(model, steps):
    from flowjax.distributions import StandardNormal
    from flowjax.flows import masked_autoregressive_flow
    from flowjax.train import fit_to_key_based_loss
    from flowjax.train.losses import ElboLoss

    t = time.perf_counter()
    flow = masked_autoregressive_flow(jax.random.key(0), base_dist=StandardNormal((model.dim,)),
                                      flow_layers=4, nn_width=32, invert=False)
    log_density = jax.jit(lambda z: model.log_density(z))
    loss = ElboLoss(log_density, num_samples=16)
    flow, _ = fit_to_key_based_loss(jax.random.key(1), flow, loss_fn=loss, steps=steps,
                                    learning_rate=3e-3, show_progress=False)
    wall = time.perf_counter() - t
    z, log_q = flow.sample_and_log_prob(jax.random.key(9), (4000,))
    return {**_diag(model, z, log_q), "wall_time": wall}


def run_numpyro(model_fn, kwargs, model, steps, guide_cls):
    from numpyro.infer import SVI, Trace_ELBO

    t = time.perf_counter()
    guide = guide_cls(model_fn)
    svi = SVI(model_fn, guide, numpyro.optim.Adam(3e-3), Trace_ELBO(num_particles=16))
    result = svi.run(jax.random.key(0), steps, progress_bar=False, **kwargs)
    wall = time.perf_counter() - t
    transform = guide.get_transform(result.params)
    base = guide.get_base_dist()
    eps = base.sample(jax.random.key(9), (4000,))
    z = jax.vmap(transform)(eps)
    log_q = base.log_prob(eps) - jax.vmap(lambda e: transform.log_abs_det_jacobian(e, transform(e)))(eps)
    return {**_diag(model, z, log_q), "wall_time": wall}


def main(argv=None):
    from numpyro.infer.autoguide import AutoBNAFNormal, AutoIAFNormal

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    steps = 500 if args.quick else 2000
    cases = {"funnel 2-D": (funnel(2), {}), "funnel 10-D": (funnel(10), {}),
             "eight schools": (eight_schools, SCHOOLS)}
    rows = []
    for name, (model_fn, kwargs) in cases.items():
        model = ppl.from_numpyro(model_fn, **kwargs)
        runs = {
            "ppl flow_vi (MAF, whitened)": lambda: run_ppl(model, steps),
            "flowjax MAF direct": lambda: run_flowjax(model, steps),
            "numpyro AutoIAFNormal": lambda: run_numpyro(model_fn, kwargs, model, steps, AutoIAFNormal),
            "numpyro AutoBNAFNormal": lambda: run_numpyro(model_fn, kwargs, model, steps, AutoBNAFNormal),
        }
        for method, fn in runs.items():
            try:
                row = {"model": name, "method": method, **fn()}
            except Exception as error:  # a library failing on a model is a result too
                row = {"model": name, "method": method, "error": repr(error)[:200]}
            rows.append(row)
            print(json.dumps(row), flush=True)
            _write(rows, steps)


def _write(rows, steps):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vi.json").write_text(json.dumps({"steps": steps, "rows": rows}, indent=1))
    lines = ["| model | method | ELBO | k-hat | wall time (s) |", "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['method']} | error | | |")
        else:
            lines.append(f"| {r['model']} | {r['method']} | {r['elbo']:.3f} | {r['khat']:.2f} "
                         f"| {r['wall_time']:.1f} |")
    (RESULTS / "vi.md").write_text(
        f"Flow VI, {steps} steps, 16 draws per ELBO estimate; ELBO and k-hat from 4000 fresh "
        "draws (log Z = 0 for the funnels).\n\n" + "\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    main()
