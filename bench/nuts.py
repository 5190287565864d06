"""NUTS benchmark: ppl against NumPyro and BlackJAX (issue 2, "Benchmark").

Three contenders run the same NumPyro model code, 4 chains x (1000 warm-up + 1000 draws),
Stan-style window adaptation, float32:

* ``ppl``: ``ppl.infer(ppl.from_numpyro(model_fn, **data), "nuts", progress_bar=False)``.
* ``numpyro``: ``MCMC(NUTS(model_fn), num_chains=4, chain_method="vectorized")``.
* ``blackjax``: ``blackjax.window_adaptation`` + ``blackjax.nuts`` vmapped over the chains,
  on NumPyro's potential (``numpyro.infer.util.initialize_model``, data as traced arguments).

Each repetition runs every contender in two fresh processes, contenders alternating:

1. *cold*: an empty persistent compilation cache; the first call (model construction,
   compilation and sampling) is "including compilation, cold cache"; a second call with
   another key in the same process is "excluding compilation". NumPyro's second ``run``
   recompiles (it builds a new jitted loop body per call), so for NumPyro the excluding-
   compilation figure comes from the idiom its docs give for repeated runs: ``MCMC.run``
   inside the user's own ``jax.jit``, called twice; the plain repeat ``run`` is recorded too.
2. *warm*: a new process reusing that cache directory; its first call is "including
   compilation, warm cache". The persistent cache is on for all three libraries alike
   (``JAX_COMPILATION_CACHE_DIR`` and the same minimum compile time for writing).

The figure of merit is min over parameters of bulk-ESS (ArviZ, rank-normalised, so the
same on either scale) per wall-second. Gradient evaluations per ESS (sampling phase) are
recorded to separate sampling efficiency from speed. Results: ``bench/results/nuts.json``
and ``nuts.md``.

Usage::

    python bench/nuts.py                 # full run, 3 repeats (15-25 min on 2 idle cores)
    python bench/nuts.py --quick         # smoke check: ~1.5 min on an idle 2-core machine
                                         # (3.4 min at load 12)
    python bench/nuts.py --models logistic_regression --repeats 1 --tag gpu
"""

from __future__ import annotations

import time

_PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

LIBRARIES = ("ppl", "numpyro", "blackjax")
# "ppl-patched": ppl with the changes of bench/results/nuts_proposed.diff applied in the
# worker (the patched files are read from --patch-dir, laid out like the repository, and
# executed over the installed modules; the cache-write threshold of that diff is 0 s).
EXPERIMENTS = ("ppl-patched",)
MODELS = ("eight_schools", "logistic_regression")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


# -- models (NumPyro code shared by all three) ---------------------------------------------------


def eight_schools_noncentered(sigma, y=None):
    import numpyro
    import numpyro.distributions as dist

    mu = numpyro.sample("mu", dist.Normal(0, 5))
    tau = numpyro.sample("tau", dist.HalfCauchy(5))
    with numpyro.plate("school", sigma.shape[0]):
        z = numpyro.sample("z", dist.Normal(0, 1))
        theta = numpyro.deterministic("theta", mu + tau * z)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def logistic_regression(x, y=None):
    import numpyro
    import numpyro.distributions as dist

    alpha = numpyro.sample("alpha", dist.Normal(0, 1))
    beta = numpyro.sample("beta", dist.Normal(0, 1).expand([x.shape[1]]).to_event(1))
    numpyro.sample("y", dist.Bernoulli(logits=alpha + x @ beta), obs=y)


def make_data(name: str, quick: bool = False):
    """Model function, data (float32 numpy), and the latent sites the ESS is taken over."""
    import numpy as np

    if name == "eight_schools":
        y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], np.float32)
        sigma = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], np.float32)
        return eight_schools_noncentered, {"sigma": sigma, "y": y}, ("mu", "tau", "z")
    if name == "logistic_regression":
        rng = np.random.default_rng(2024)
        n, d = (2_000, 25) if quick else (10_000, 25)
        x = rng.normal(size=(n, d)).astype(np.float32)
        beta = rng.normal(scale=0.5, size=d)
        logits = 0.3 + x @ beta
        y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logits))).astype(np.float32)
        return logistic_regression, {"x": x, "y": y}, ("alpha", "beta")
    raise ValueError(f"Expected a model in {MODELS}, got {name!r}.")


# -- the three contenders (worker side) ----------------------------------------------------------
# Each returns a callable ``call(seed) -> (draws {site: (chain, draw, ...)}, info)`` where
# info has sampling-phase gradient evaluations and, where known, the warm-up ones.


def _ppl_runner(model_fn, data, cfg):
    import jax
    import numpy as np

    # The engine's imports (blackjax), untimed as NumPyro's are: `import numpyro` (in
    # make_data) already loads numpyro.infer.
    import ppl.inference.mcmc  # noqa: F401

    import ppl

    def call(seed):
        model = ppl.from_numpyro(model_fn, **data)
        post = ppl.infer(
            model, "nuts", key=jax.random.key(seed), num_chains=cfg.num_chains,
            num_warmup=cfg.num_warmup, num_samples=cfg.num_samples, progress_bar=False,
        )
        sampling = int(np.sum(post.stats["n_steps"]))
        info = {
            "grads_sampling": sampling,
            "grads_total": int(post.meta["num_gradient_evals"]),
            "divergences": int(np.sum(post.stats["diverging"])),
        }
        return post.samples, info

    return call


def _ppl_patched_runner(model_fn, data, cfg):
    import jax
    from ppl.inference.mcmc import sampler

    import ppl.arviz_bridge
    import ppl.numpyro_model

    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    for module, path in ((ppl.numpyro_model, "ppl/numpyro_model.py"),
                         (sampler, "inference/mcmc/sampler.py"),
                         (ppl.arviz_bridge, "ppl/arviz_bridge.py")):
        source = (Path(cfg.patch_dir) / path).read_text()
        exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102
    ppl.from_numpyro = ppl.numpyro_model.from_numpyro
    return _ppl_runner(model_fn, data, cfg)


def _numpyro_mcmc(model_fn, cfg):
    from numpyro.infer import MCMC, NUTS

    return MCMC(
        NUTS(model_fn), num_warmup=cfg.num_warmup, num_samples=cfg.num_samples,
        num_chains=cfg.num_chains, chain_method="vectorized", progress_bar=False,
    )


def _numpyro_runner(model_fn, data, cfg):
    import jax
    import numpy as np

    state = {}

    def call(seed):
        mcmc = _numpyro_mcmc(model_fn, cfg)
        mcmc.run(jax.random.PRNGKey(seed), extra_fields=("num_steps", "diverging"), **data)
        state["mcmc"] = mcmc
        return _numpyro_out(mcmc.get_samples(group_by_chain=True),
                            mcmc.get_extra_fields(group_by_chain=True))

    def repeat(seed):
        # The same MCMC object again: NumPyro builds a fresh jitted loop and recompiles.
        mcmc = state["mcmc"]
        mcmc.run(jax.random.PRNGKey(seed), extra_fields=("num_steps", "diverging"), **data)
        return _numpyro_out(mcmc.get_samples(group_by_chain=True),
                            mcmc.get_extra_fields(group_by_chain=True))

    @jax.jit
    def jitted(key, data):
        mcmc = _numpyro_mcmc(model_fn, cfg)
        mcmc.run(key, extra_fields=("num_steps", "diverging"), **data)
        return mcmc.get_samples(group_by_chain=True), mcmc.get_extra_fields(group_by_chain=True)

    def in_user_jit(seed):
        samples, extra = jitted(jax.random.PRNGKey(seed), data)
        return _numpyro_out(jax.block_until_ready(samples), extra)

    def _numpyro_out(samples, extra):
        samples = {k: np.asarray(v) for k, v in samples.items()}
        info = {
            "grads_sampling": int(np.sum(extra["num_steps"])),
            "grads_total": None,
            "divergences": int(np.sum(extra["diverging"])),
        }
        return samples, info

    call.repeat = repeat
    call.in_user_jit = in_user_jit
    return call


def _blackjax_runner(model_fn, data, cfg):
    import blackjax
    import jax
    import jax.numpy as jnp
    import numpy as np
    from numpyro.infer.util import initialize_model

    def keep_num_steps(state, info, adaptation_state):
        return info.num_integration_steps

    @jax.jit
    def run(key, init_positions, data):
        def logdensity_fn(position):
            return -potential_fn_gen(**data)(position)

        def one_chain(key, position):
            warmup_key, sample_key = jax.random.split(key)
            warmup = blackjax.window_adaptation(
                blackjax.nuts, logdensity_fn, adaptation_info_fn=keep_num_steps
            )
            (state, parameters), warmup_steps = warmup.run(
                warmup_key, position, num_steps=cfg.num_warmup
            )
            kernel = blackjax.nuts(logdensity_fn, **parameters).step

            def body(state, key):
                state, info = kernel(key, state)
                return state, (state.position, info.num_integration_steps, info.is_divergent)

            _, (positions, num_steps, diverging) = jax.lax.scan(
                body, state, jax.random.split(sample_key, cfg.num_samples)
            )
            return positions, num_steps, diverging, jnp.sum(warmup_steps)

        keys = jax.random.split(key, cfg.num_chains)
        return jax.vmap(one_chain)(keys, init_positions)

    def call(seed):
        nonlocal potential_fn_gen, initial_positions
        if potential_fn_gen is None:
            # Once per process (later calls reuse the starting points, as a user would).
            init_keys = jax.random.split(jax.random.PRNGKey(seed + 10_000), cfg.num_chains)
            model_info = initialize_model(
                init_keys, model_fn, model_kwargs=data, dynamic_args=True
            )
            potential_fn_gen = model_info.potential_fn
            initial_positions = model_info.param_info.z
        positions, num_steps, diverging, warmup_steps = run(
            jax.random.PRNGKey(seed), initial_positions, data
        )
        positions = jax.block_until_ready(positions)
        samples = {k: np.asarray(v) for k, v in positions.items()}
        sampling = int(np.sum(num_steps))
        info = {
            "grads_sampling": sampling,
            "grads_total": sampling + int(np.sum(warmup_steps)),
            "divergences": int(np.sum(diverging)),
        }
        return samples, info

    potential_fn_gen = initial_positions = None
    return call


def _min_bulk_ess(samples: dict, sites) -> tuple[float, dict]:
    import arviz as az
    import numpy as np

    per_site = {}
    for name in sites:
        x = np.asarray(samples[name], np.float64)
        x = x.reshape(x.shape[0], x.shape[1], -1)
        ds = az.convert_to_dataset(x)
        per_site[name] = float(np.min(np.asarray(az.ess(ds, method="bulk")["x"])))
    return min(per_site.values()), per_site


def worker(args) -> None:
    import jax

    t_imports_start = time.perf_counter()
    monitor = _common.CompileMonitor()
    model_fn, data, sites = make_data(args.model, quick=args.quick)
    runner = {"ppl": _ppl_runner, "numpyro": _numpyro_runner, "blackjax": _blackjax_runner,
              "ppl-patched": _ppl_patched_runner}
    call = runner[args.lib](model_fn, data, args)
    t_ready = time.perf_counter()
    result = {
        "lib": args.lib, "model": args.model, "phase": args.phase,
        "python_start_to_ready": t_ready - _PROCESS_START,
        "library_imports": t_ready - t_imports_start,
        "jax_backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "jax_version": jax.__version__,
        "loadavg": os.getloadavg(),
        "persistent_cache_min_compile_time_secs":
            jax.config.jax_persistent_cache_min_compile_time_secs,
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
    }

    def timed(fn, seed, label):
        snap = monitor.snapshot()
        start = time.perf_counter()
        samples, info = fn(seed)
        wall = time.perf_counter() - start
        events = monitor.since(snap)
        ess, per_site = _min_bulk_ess(samples, sites)
        result[label] = {
            "wall": wall, "min_bulk_ess": ess, "ess_per_site": per_site,
            "ess_per_second": ess / wall,
            "grads_per_ess": info["grads_sampling"] / ess, **info, "compile_events": events,
        }

    timed(call, args.seed, "first")
    if args.phase == "cold":
        if args.lib == "numpyro":
            if not args.quick:
                timed(call.repeat, args.seed + 1, "repeat_run")
            timed(call.in_user_jit, args.seed + 2, "user_jit_first")
            timed(call.in_user_jit, args.seed + 3, "second")
        else:
            timed(call, args.seed + 1, "second")
    _common.emit(result)


# -- driver ---------------------------------------------------------------------------------------


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def summarise(records: list[dict], models, libs) -> dict:
    """Medians over repetitions of ESS/s in the three regimes, and the ratios."""
    out = {}
    for model in models:
        rows = {}
        for lib in libs:
            cold = [r for r in records
                    if r["model"] == model and r["lib"] == lib and r["phase"] == "cold"]
            warm = [r for r in records
                    if r["model"] == model and r["lib"] == lib and r["phase"] == "warm"]
            med = _common.median_of
            rows[lib] = {
                "ess_per_s_cold": med(r["first"]["ess_per_second"] for r in cold),
                "ess_per_s_warm": med(r["first"]["ess_per_second"] for r in warm),
                "ess_per_s_sampling": med(r["second"]["ess_per_second"] for r in cold),
                "wall_cold": med(r["first"]["wall"] for r in cold),
                "wall_warm": med(r["first"]["wall"] for r in warm),
                "wall_sampling": med(r["second"]["wall"] for r in cold),
                "wall_repeat_run": med(r.get("repeat_run", {}).get("wall") for r in cold),
                "min_bulk_ess": med(r["first"]["min_bulk_ess"] for r in cold + warm),
                "grads_per_ess": med(r["first"]["grads_per_ess"] for r in cold + warm),
                "grads_sampling": med(r["first"]["grads_sampling"] for r in cold + warm),
                "grads_total": med(r["first"]["grads_total"] for r in cold + warm),
                "divergences": med(r["first"]["divergences"] for r in cold + warm),
                "process_start_to_ready": med(r["python_start_to_ready"] for r in cold + warm),
                "backend_compile_cold": med(
                    r["first"]["compile_events"].get("backend_compile_duration") for r in cold),
                "backend_compile_warm": med(
                    r["first"]["compile_events"].get("backend_compile_duration") for r in warm),
                "num_repeats": len(cold),
            }
        ratios = {}
        for mine in [lib for lib in libs if lib.startswith("ppl")]:
            for other in [lib for lib in libs if not lib.startswith("ppl")]:
                ratios[f"{mine}/{other}"] = {
                    regime: _ratio(rows[mine][f"ess_per_s_{regime}"],
                                   rows[other][f"ess_per_s_{regime}"])
                    for regime in ("cold", "warm", "sampling")
                }
        out[model] = {"libraries": rows, "ratios": ratios}
    return out


def _fmt(x, digits=1):
    return "-" if x is None else f"{x:.{digits}f}"


def to_markdown(summary: dict, meta: dict) -> str:
    m = meta["machine"]
    lines = [
        f"# NUTS benchmark ({meta['tag']})",
        "",
        f"Machine: {m['nproc']} CPU cores ({m['cpu_model']}), {m['platform']}, "
        f"Python {m['python']}; JAX backend {meta.get('jax_backend')} ({meta.get('device')}), "
        f"jax {meta.get('jax_version')}.",
        f"Run: {meta['num_chains']} chains x ({meta['num_warmup']} warm-up + "
        f"{meta['num_samples']} draws), {meta['repeats']} repetitions alternating "
        "ppl/NumPyro/BlackJAX in fresh processes; medians. Persistent compilation cache on for "
        "all three (fresh directory per cold process, reused by the warm one; min compile time "
        f"to write = {meta['min_compile_time_secs']} s for all).",
        f"Started {meta['started']}, took {meta['duration_s']:.0f} s; "
        f"load average at start {m.get('loadavg_at_start')}.",
        "",
    ]
    for model, block in summary.items():
        lines += [
            f"## {model}", "",
            "| library | ESS/s cold (incl. compile) | ESS/s warm cache | ESS/s sampling only "
            "| wall cold s | wall warm s | wall sampling s | min bulk ESS | grads/ESS "
            "| grads (sampling, total) | divergences | XLA compile cold s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for lib, r in block["libraries"].items():
            total = "-" if r["grads_total"] is None else f"{r['grads_total']:.0f}"
            lines.append(
                f"| {lib} | {_fmt(r['ess_per_s_cold'])} | {_fmt(r['ess_per_s_warm'])} | "
                f"{_fmt(r['ess_per_s_sampling'])} | {_fmt(r['wall_cold'], 2)} | "
                f"{_fmt(r['wall_warm'], 2)} | {_fmt(r['wall_sampling'], 2)} | "
                f"{_fmt(r['min_bulk_ess'], 0)} | {_fmt(r['grads_per_ess'], 1)} | "
                f"{_fmt(r['grads_sampling'], 0)}, {total} | {_fmt(r['divergences'], 0)} | "
                f"{_fmt(r['backend_compile_cold'], 2)} |"
            )
        if "numpyro" in block["libraries"] and block["libraries"]["numpyro"]["wall_repeat_run"]:
            lines.append("")
            lines.append(
                f"NumPyro's plain repeat `run` on the same MCMC object took "
                f"{block['libraries']['numpyro']['wall_repeat_run']:.2f} s (it recompiles); its "
                "sampling-only figure is the second call of `MCMC.run` inside the user's own "
                "`jax.jit`."
            )
        lines += ["", "| ratio | cold cache | warm cache | sampling only |", "|---|---|---|---|"]
        for name, r in block["ratios"].items():
            lines.append(f"| {name} | {_fmt(r['cold'], 2)} | {_fmt(r['warm'], 2)} | "
                         f"{_fmt(r['sampling'], 2)} |")
        lines.append("")
    return "\n".join(lines)


def driver(args) -> None:
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.perf_counter()
    models = args.models or (MODELS)
    libs = args.libs or LIBRARIES
    records = []
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "nuts" if args.tag == "cpu" else f"nuts_{args.tag}"
    if args.quick:
        stem += "_quick"
    partial = out_dir / f"{stem}_records.partial.json"
    if args.from_records:
        records = json.loads(Path(args.from_records).read_text())["records"]
        models = [m for m in models if any(r["model"] == m for r in records)]
    base = [sys.argv[0], "--worker", "--num-chains", str(args.num_chains),
            "--num-warmup", str(args.num_warmup), "--num-samples", str(args.num_samples)]
    if args.quick:
        base.append("--quick")
    if args.patch_dir:
        base += ["--patch-dir", args.patch_dir]
    for model in [] if args.from_records else models:
        for rep, lib in _common.alternate(libs, args.repeats):
            cache = _common.new_cache_dir()
            env = _common.cache_env(cache, args.min_compile_time)
            for phase in ("cold", "warm"):
                argv = base + ["--lib", lib, "--model", model, "--phase", phase,
                               "--seed", str(100 * rep)]
                rec = _common.run_worker(argv, env)
                rec["repeat"] = rep
                records.append(rec)
                partial.write_text(json.dumps({"records": records}, default=str))
                print(f"[{time.perf_counter() - t0:6.0f}s] {model:20s} {lib:9s} {phase:5s} "
                      f"rep {rep}: "
                      f"first {rec['first']['wall']:.2f}s ESS {rec['first']['min_bulk_ess']:.0f}"
                      + (f", second {rec['second']['wall']:.2f}s" if "second" in rec else ""),
                      flush=True)
    summary = summarise(records, models, libs)
    meta = {
        "tag": args.tag, "started": started, "duration_s": time.perf_counter() - t0,
        "machine": _common.machine_info(), "num_chains": args.num_chains,
        "num_warmup": args.num_warmup, "num_samples": args.num_samples,
        "repeats": max((r["repeat"] for r in records), default=-1) + 1, "quick": args.quick,
        "min_compile_time_secs": args.min_compile_time,
        "jax_backend": records[0]["jax_backend"], "device": records[0]["device"],
        "jax_version": records[0]["jax_version"],
    }
    md = to_markdown(summary, meta)
    print(md)
    (out_dir / f"{stem}.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "records": records}, indent=1, default=str)
    )
    (out_dir / f"{stem}.md").write_text(md + "\n")
    partial.unlink(missing_ok=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--lib", choices=LIBRARIES + EXPERIMENTS)
    p.add_argument("--model", choices=MODELS)
    p.add_argument("--phase", choices=("cold", "warm"), default="cold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true",
                   help="smoke check: 1 repeat, 300+300 draws, eight schools only unless --models "
                   "(logistic regression then with N=2000)")
    p.add_argument("--libs", nargs="*", choices=LIBRARIES + EXPERIMENTS)
    p.add_argument("--patch-dir", default=None,
                   help="a folder of patched ppl files, for --libs ppl-patched (an experiment)")
    p.add_argument("--models", nargs="*", choices=MODELS)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-chains", type=int, default=4)
    p.add_argument("--num-warmup", type=int, default=1000)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--min-compile-time", type=float, default=0.5,
                   help="jax_persistent_cache_min_compile_time_secs for all libraries "
                   "(ppl's default)")
    p.add_argument("--tag", default="cpu")
    p.add_argument("--from-records",
                   help="summarise the records of an interrupted run (its .partial.json)")
    p.add_argument("--out-dir", default=str(RESULTS_DIR))
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.repeats = 1
        args.models = args.models or ["eight_schools"]
        args.num_warmup = min(args.num_warmup, 300)
        args.num_samples = min(args.num_samples, 300)
    driver(args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
