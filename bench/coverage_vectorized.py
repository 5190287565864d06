"""The coverage driver's host loop against its vectorised path, side by side in one run.

    python bench/coverage_vectorized.py                  # 1,000 data sets, 2 rounds (~5 min)
    python bench/coverage_vectorized.py --host-sims 200  # host loop on 200, time per sim scaled

``ppl.diagnostics.coverage`` on the zoo's ``conjugate_normal`` with NUTS, 4 chains x (500
warm-up + 500 draws) per data set, three ways, each in a fresh worker process:

- ``host``: one data set at a time through ``ppl.infer`` (``vectorized=False``), 1 device;
- ``vectorized``: vmapped chunks (``vectorized=True``), 1 device (JAX's CPU default);
- ``vectorized-Ndev``: the same with the CPU split into N JAX devices
  (``--xla_force_host_platform_device_count=N``, N = ``--devices``, default the core count),
  each chunk sharded over them.

Each worker first runs a small untimed study (4 data sets for the host loop, one chunk for
the vectorised path: compilation, or loading from JAX's persistent cache), then the timed
one; the shape-dependent programs both share (prior draws, TARP, SBC for ``num_sims`` data
sets) compile, or load, inside the timed call of both. The contenders alternate
(host, vectorised, sharded, host, ...) for ``--repeats`` rounds so that drifting load from
other jobs spreads over all; medians are reported, with the 1-minute load average beside
every figure. Writes ``bench/results/coverage_vectorized_<label>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import alternate, emit, machine_info, median_of, run_worker  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ENGINE = {"num_chains": 4, "num_warmup": 500, "num_samples": 500}


def worker(args) -> None:
    import jax
    from ppl.diagnostics.coverage import coverage

    from ppl import models

    model = models.get("conjugate_normal").build()
    vectorized = args.worker != "host"
    run = lambda n, key: coverage(  # noqa: E731
        model, "nuts", num_sims=n, key=key, vectorized=vectorized, chunk_size=args.chunk_size,
        **ENGINE)
    load_warm = os.getloadavg()[0]
    start = time.perf_counter()
    run(args.chunk_size if vectorized else 4, 100)
    warm_wall = time.perf_counter() - start
    num_sims = args.num_sims if vectorized else (args.host_sims or args.num_sims)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    result = run(num_sims, 0)
    wall = time.perf_counter() - start
    emit({
        "contender": args.worker, "num_devices": len(jax.devices()), "num_sims": num_sims,
        "wall": wall, "warm_wall": warm_wall,
        "load": [load_before, os.getloadavg()[0]], "load_warm": load_warm,
        "verdicts": {k: bool(v) for k, v in result.verdicts.items()},
        "mean": result.draws.mean(axis=1)[:, 0].tolist(),
        "sd": result.draws.std(axis=1)[:, 0].tolist(),
        "min_ess": result.diagnostics["min_ess"].tolist(),
        "num_rank_draws": int(result.draws.shape[1]),
        "jax": jax.__version__,
    })


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-sims", type=int, default=1000)
    parser.add_argument("--host-sims", type=int, default=None,
                        help="data sets for the host loop (default: --num-sims); fewer are "
                        "scaled to --num-sims by the time per data set")
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--devices", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--label", default="cpu")
    parser.add_argument("--worker", choices=("host", "vectorized"), default=None)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args)
        return 0

    host_sims = args.host_sims or args.num_sims
    common = ["--num-sims", str(args.num_sims), "--chunk-size", str(args.chunk_size),
              "--host-sims", str(host_sims)]
    sharded = f"vectorized-{args.devices}dev"
    contenders = {
        "host": (["--worker", "host"], {}),
        "vectorized": (["--worker", "vectorized"], {}),
        sharded: (["--worker", "vectorized"],
                  {"XLA_FLAGS": f"--xla_force_host_platform_device_count={args.devices}"}),
    }
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    info = machine_info()
    for _, name in alternate(list(contenders), args.repeats):
        flags, env = contenders[name]
        out = run_worker([__file__, *flags, *common], env=env)
        runs[name].append(out)
        print(f"{name}: {out['wall']:.1f} s for {out['num_sims']} data sets "
              f"({out['num_devices']} device(s)), load {out['load'][0]:.1f}-{out['load'][1]:.1f}",
              flush=True)

    import numpy as np

    def per_sim(name):
        return median_of(r["wall"] / r["num_sims"] for r in runs[name])

    host_per_sim = per_sim("host")
    rows = {}
    for name in contenders:
        rows[name] = {
            "num_sims": runs[name][0]["num_sims"],
            "num_devices": runs[name][0]["num_devices"],
            "wall_seconds": [r["wall"] for r in runs[name]],
            "seconds_per_sim_median": per_sim(name),
            "speedup_over_host": host_per_sim / per_sim(name),
            "warm_seconds": [r["warm_wall"] for r in runs[name]],
            "load_1min": [r["load"] for r in runs[name]],
            "verdicts": [r["verdicts"] for r in runs[name]],
        }
    # Agreement of the posteriors, data set by data set: the same keys give the same initial
    # points and random streams, and the draws differ where rounding differs between the
    # compiled programs (larger batches take other vectorised code paths) and chains drift.
    shared = min(host_sims, args.num_sims)
    h, v = runs["host"][0], runs["vectorized"][0]
    gap = np.abs(np.subtract(h["mean"][:shared], v["mean"][:shared]))
    # The means are over the kept (thinned) draws: at most num_rank_draws effective ones.
    n_eff = lambda r: np.minimum(np.asarray(r["min_ess"][:shared]), r["num_rank_draws"])  # noqa: E731
    mc_error = np.asarray(h["sd"][:shared]) * np.sqrt(1 / n_eff(h) + 1 / n_eff(v))
    z = gap / mc_error
    agreement = {"data_sets": shared, "max_abs_z": float(z.max()),
                 "share_abs_z_over_3": float(np.mean(z > 3)),
                 "median_gap_in_posterior_sd": float(np.median(gap / np.asarray(h["sd"][:shared])))}
    best = max((n for n in contenders if n != "host"), key=lambda n: rows[n]["speedup_over_host"])
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": info,
        "jax": runs["host"][0]["jax"], "model": "conjugate_normal",
        "engine": {"method": "nuts", **ENGINE}, "num_sims": args.num_sims,
        "host_sims": host_sims, "host_extrapolated": host_sims != args.num_sims,
        "chunk_size": args.chunk_size, "repeats": args.repeats, "rows": rows,
        "agreement_host_vs_vectorized": agreement, "best": best,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"coverage_vectorized_{args.label}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")

    fmt_loads = lambda loads: ", ".join(f"{a:.1f}-{b:.1f}" for a, b in loads)  # noqa: E731
    def fmt_verdicts(verdicts):
        if all(all(x.values()) for x in verdicts):
            return "all pass"
        return "; ".join(", ".join(f"{k} {'pass' if ok else 'fail'}" for k, ok in x.items())
                         for x in verdicts)
    scaled = (f" Host loop measured on {host_sims} data sets and scaled to {args.num_sims} by "
              "its time per data set." if record["host_extrapolated"] else "")
    lines = [
        f"# Coverage driver: host loop against vectorised ({args.num_sims} data sets)", "",
        f"`python bench/coverage_vectorized.py`; {record['date']}; {info['nproc']} cores "
        f"({info['cpu_model']}); JAX {record['jax']}. `coverage(conjugate_normal, \"nuts\", "
        "num_chains=4, num_warmup=500, num_samples=500)`, whole calls (sampling, engine "
        "diagnostics, TARP/SBC/expected-coverage checks), each in a fresh process after an "
        f"untimed small study; chunks of {args.chunk_size}; {args.repeats} alternating rounds, "
        f"medians.{scaled}", "",
        "| path | devices | data sets | wall s (rounds) | ms per data set (median) | "
        "speed-up | load (1 min, before-after) | verdicts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['num_devices']} | {row['num_sims']} | "
            f"{', '.join(f'{w:.1f}' for w in row['wall_seconds'])} | "
            f"{1000 * row['seconds_per_sim_median']:.1f} | {row['speedup_over_host']:.1f}x | "
            f"{fmt_loads(row['load_1min'])} | {fmt_verdicts(row['verdicts'])} |")
    lines += [
        "",
        f"**Speed-up over the host loop: {rows[best]['speedup_over_host']:.1f}x** ({best}); "
        f"{rows['vectorized']['speedup_over_host']:.1f}x on one device.",
        "",
        "First (untimed) calls, s, per round: " + "; ".join(
            f"{name} {', '.join(f'{w:.1f}' for w in row['warm_seconds'])}"
            for name, row in rows.items()) + " (host: 4 data sets; vectorised: one chunk).",
        "",
        f"Agreement, data set by data set (host against vectorised, first round, {shared} data "
        f"sets): the means of the kept draws differ by a median "
        f"{agreement['median_gap_in_posterior_sd']:.3f} posterior sd; in units of their Monte "
        f"Carlo error (effective draws: the smaller of the ESS and the kept draws), max |z| = "
        f"{agreement['max_abs_z']:.2f}, {100 * agreement['share_abs_z_over_3']:.1f}% above 3. "
        "(Same keys, initial points and random streams; the draws differ where rounding "
        "differs between the compiled programs and a chain's path drifts.)",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
