"""TARP: ppl.diagnostics.tarp against the `tarp` package (0.1.1), the benchmark anchor.

Case A: 1000 simulations x 1000 draws x 10 dimensions, 100 bootstrap rounds, both tools.
Case B: 10,000 x 1000 x 100 with ppl only (target: under 30 s on 2 CPU cores).
The package gets copies of the inputs (its bootstrap overwrites them) and the same
normalised reference points. Writes bench/results/tarp.json and tarp.md.

Run: .venv/bin/python bench/tarp.py [--quick]
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
from ppl.diagnostics.tarp import tarp


def gaussian_case(num_sims, num_draws, dim, seed=0):
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((num_sims, dim), dtype=np.float32)
    y = theta + rng.standard_normal((num_sims, dim), dtype=np.float32)
    draws = rng.standard_normal((num_sims, num_draws, dim), dtype=np.float32)
    draws *= np.float32(np.sqrt(0.5))
    draws += (y / 2)[:, None, :]
    return theta, draws


def time_ppl(draws, theta, repeats=3):
    first = time.perf_counter()
    res = tarp(draws, theta, key=jax.random.key(0), num_bootstrap=100)
    first = time.perf_counter() - first
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        res = tarp(draws, theta, key=jax.random.key(i + 1), num_bootstrap=100)
        times.append(time.perf_counter() - t)
    return res, first, min(times)


def main(quick: bool = False):
    out = {"machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count(),
                       "jax": jax.__version__, "backend": jax.default_backend()}}
    num_sims, num_draws, dim = (200, 1000, 10) if quick else (1000, 1000, 10)
    theta, draws = gaussian_case(num_sims, num_draws, dim)
    res, first, warm = time_ppl(draws, theta)
    # This script is itself called tarp.py: import the package, not this file.
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != here]
    sys.modules.pop("tarp", None)
    import tarp as tarp_pkg

    refs = res.references.astype(np.float64)
    t = time.perf_counter()
    boot, _ = tarp_pkg.get_tarp_coverage(
        np.swapaxes(draws, 0, 1).copy(), theta.copy(), references=refs, metric="euclidean",
        num_alpha_bins=100, num_bootstrap=100, norm=True, bootstrap=True, seed=0,
    )
    pkg = time.perf_counter() - t
    out["case_a"] = {
        "shape": [num_sims, num_draws, dim], "num_bootstrap": 100, "tarp_package_s": pkg,
        "ppl_first_call_s": first, "ppl_warm_s": warm, "speedup_warm": pkg / warm,
        "speedup_first_call": pkg / first, "ppl_p_value": res.p_value, "ppl_atc": res.atc,
    }
    print(json.dumps(out["case_a"], indent=1), flush=True)
    if not quick:
        del draws
        theta, draws = gaussian_case(10_000, 1000, 100)
        res, first, warm = time_ppl(draws, theta, repeats=1)
        out["case_b"] = {"shape": [10_000, 1000, 100], "num_bootstrap": 100,
                         "ppl_first_call_s": first, "ppl_warm_s": warm,
                         "ppl_p_value": res.p_value}
        print(json.dumps(out["case_b"], indent=1), flush=True)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    name = "tarp_quick" if quick else "tarp"
    (results / f"{name}.json").write_text(json.dumps(out, indent=1))
    a = out["case_a"]
    lines = [
        "# TARP: ppl vs the tarp package 0.1.1",
        "",
        f"Machine: {out['machine']}",
        "",
        "| case | tarp package | ppl (first call) | ppl (warm) | speed-up (warm / first) |",
        "|---|---|---|---|---|",
        f"| {a['shape'][0]} x {a['shape'][1]} x {a['shape'][2]}, 100 bootstrap | "
        f"{a['tarp_package_s']:.2f} s | {a['ppl_first_call_s']:.2f} s | {a['ppl_warm_s']:.3f} s | "
        f"{a['speedup_warm']:.0f}x / {a['speedup_first_call']:.0f}x |",
    ]
    if "case_b" in out:
        b = out["case_b"]
        lines.append(f"| 10000 x 1000 x 100, 100 bootstrap | - | {b['ppl_first_call_s']:.2f} s | "
                     f"{b['ppl_warm_s']:.2f} s | - |")
    (results / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
