"""Distribution transformers against NUTS on the same posteriors, in one run.

    python bench/amortized.py              # both shipped families, 8 data sets each (~3 min)
    python bench/amortized.py --quick      # 3 data sets

For each shipped family: data sets simulated from priors of the training hyper-distribution;
each posterior by the distribution transformer (one data set at a time, warm, and the time per
posterior in a batch of 256) and by ppl's NUTS (4 chains x 1000 + 1000, warm: the compiled
program is reused across data sets) on the same :func:`family_model`; both against the exact
conjugate posterior (mean error in posterior sds, sd ratio). Writes
``bench/results/amortized_<label>.{json,md}`` with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
FAMILIES = ("gaussian_mean_2d", "linear_regression")


def _errors(mean, sd, exact):
    exact_mean = np.asarray(exact.mean())
    exact_sd = np.sqrt(np.diag(np.asarray(exact.covariance())))
    return float(np.mean(np.abs(mean - exact_mean) / exact_sd)), float(np.mean(sd / exact_sd))


def main(argv=None) -> int:
    from ppl.inference.amortized import load_pretrained
    from ppl.inference.amortized.engine import family_model
    from ppl.inference.amortized.evaluate import simulate_datasets, time_posterior

    import ppl

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--label", default="cpu")
    args = parser.parse_args(argv)
    if args.quick:
        args.datasets = 3
    rows = []
    for name in FAMILIES:
        amortizer = load_pretrained(name)
        family = amortizer.family
        prior, _, data, mask = simulate_datasets(family, jax.random.key(11), args.datasets)
        batch = time_posterior(amortizer, batch_size=256)
        for i in range(args.datasets + 1):  # the first of each is the warm-up, untimed
            j = max(i - 1, 0)
            one_prior = prior.select(j)
            one_data, one_mask = np.asarray(data[j]), np.asarray(mask[j])
            # All max_points rows with a mask: one shape, so NUTS's compiled program is reused
            # (with_data swaps data, mask and prior).
            held = {"data": jax.numpy.asarray(one_data), "mask": jax.numpy.asarray(one_mask),
                    "prior": one_prior}
            if i == 0:
                base = family_model(family, one_prior, one_data, one_mask)
            model = base.with_data(held)
            exact = family.exact_posterior(one_prior, data[j], mask[j]).posterior
            load = os.getloadavg()[0]
            start = time.perf_counter()
            dt = ppl.infer(model, "distribution_transformer", key=j, amortizer=amortizer,
                           num_samples=4000)
            dt_wall = time.perf_counter() - start
            start = time.perf_counter()
            nuts = ppl.infer(model, "nuts", key=j, progress_bar=False, warn=False)
            nuts_wall = time.perf_counter() - start
            if i == 0:
                continue
            dt_mean_error, dt_sd_ratio = _errors(dt.mean("theta"), dt.std("theta"), exact)
            nuts_mean_error, nuts_sd_ratio = _errors(nuts.mean("theta"), nuts.std("theta"),
                                                     exact)
            rows.append({"family": name, "dataset": j, "points": int(one_mask.sum()),
                         "dt_seconds": dt_wall, "nuts_seconds": nuts_wall,
                         "dt_ms_per_posterior_batch256": batch["ms_per_posterior"],
                         "dt_mean_error_sd": dt_mean_error, "dt_sd_ratio": dt_sd_ratio,
                         "nuts_mean_error_sd": nuts_mean_error, "nuts_sd_ratio": nuts_sd_ratio,
                         "load": load})
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"amortized_{args.label}"
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "jax": jax.__version__,
              "rows": rows}
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# Distribution transformer against NUTS ({args.datasets} data sets per family)", "",
             f"`python bench/amortized.py`; {record['date']}; {record['machine']}; JAX "
             f"{jax.__version__}. Warm: the first data set of each family is run untimed. DT: "
             "one posterior through `ppl.infer` (4000 draws), and the time per posterior in a "
             "batch of 256; NUTS: 4 chains x (1000 + 1000). Errors against the exact posterior: "
             "mean |error| in posterior sds, sd ratio.", "",
             "| family | DT s (one) | DT ms/posterior (batch 256) | NUTS s | NUTS / DT one | "
             "NUTS / DT batched | DT mean err (sd) | DT sd ratio | NUTS mean err (sd) | "
             "NUTS sd ratio | load |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in FAMILIES:
        here = [r for r in rows if r["family"] == name]
        med = {k: float(np.median([r[k] for r in here])) for k in here[0] if k not in
               ("family",)}
        lines.append(
            f"| {name} | {med['dt_seconds']:.4f} | {med['dt_ms_per_posterior_batch256']:.3f} | "
            f"{med['nuts_seconds']:.2f} | {med['nuts_seconds'] / med['dt_seconds']:.0f}x | "
            f"{1000 * med['nuts_seconds'] / med['dt_ms_per_posterior_batch256']:.0f}x | "
            f"{med['dt_mean_error_sd']:.3f} | {med['dt_sd_ratio']:.3f} | "
            f"{med['nuts_mean_error_sd']:.3f} | {med['nuts_sd_ratio']:.3f} | "
            f"{min(r['load'] for r in here):.1f}-{max(r['load'] for r in here):.1f} |")
    lines += ["", "Medians over the data sets; load = 1-minute load average."]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
