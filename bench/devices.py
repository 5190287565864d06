"""The device table: how far each batch axis scales on whatever accelerator JAX finds.

    python bench/devices.py                  # all rows, up to 10^5 (10^6 with --max-exp 6)
    python bench/devices.py --row-budget 5   # a quick CPU table
    python bench/devices.py --rows nuts smc  # some rows only

One process, on ``jax.devices()`` (every device: the engines' default ``devices=``). Each
row scales one batch axis by powers of ten, from 10^2 up to ``10^--max-exp`` (default 5
on CPU, 6 on an accelerator); at each size one untimed call compiles (and warms up), and a
second call with the same shapes is timed, blocking until the results are on the host. A
row stops scaling after a timed call longer than ``--row-budget`` seconds (default 20), or
when the next size would take longer than three budgets on a linear extrapolation (a
warm-up call costs as much again).

- ``nuts``: ``ppl.infer(..., "nuts")`` on the zoo's ``eight_schools`` (10 latents), chains
  10^2 ..., 200 warm-up + 200 draws each: kept draws per second (warm-up included in the
  time).
- ``smc``: tempered SMC (``"smc"``, its default kernel) on ``eight_schools``, particles
  10^2 ...: particles per second.
- ``particle_filter``: the bootstrap filter (``"particle_filter"``) on the zoo's ``lgssm``
  (its ``state_space_fn``), 1,000 trajectories traced back: particle-steps per second.
- ``coverage``: the vectorised coverage driver on ``conjugate_normal`` with NUTS (2 chains,
  150 + 150, 50 rank draws), all simulations in one chunk: simulations per second.
- ``lm``: batched sampling from the reasoning testbed's language model
  (``models/lm/checkpoints/arith``, 0.6M parameters, KV cache, 64 new tokens after a
  16-token prompt), batch 1 .. 256: tokens per second.
- ``llm_filter``: ``ppl.inference.llm.run("particle_filter")`` on the testbed with the oracle
  reward in JAX, problems of 6 operations x 16 particles, 64 .. 16,384 particle rows in one
  batch (the problems split over every device, whole): sampled tokens per second.

Writes ``bench/results/devices_<platform>.{md,json}`` with the date, the device description
and the load average before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LM_CHECKPOINT = ROOT / "models" / "lm" / "checkpoints" / "arith"
PROMPT = 16
NEW_TOKENS = 64


def _block(x):
    import jax

    for leaf in jax.tree_util.tree_leaves(x):
        if isinstance(leaf, jax.Array):
            leaf.block_until_ready()
    return x


# -- the rows: each maker returns (fn(size) -> one blocking call, work(size), unit, sizes) ------


def _nuts_row(max_exp):
    import ppl
    from ppl import models

    model = models.get("eight_schools").build()

    def call(n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            post = ppl.infer(model, "nuts", key=0, num_chains=n, num_warmup=200,
                             num_samples=200, progress_bar=False, warn=False)
        return post

    return call, lambda n: n * 200, "draws/s", [10**e for e in range(2, max_exp + 1)], "chains"


def _smc_row(max_exp):
    import ppl
    from ppl import models

    model = models.get("eight_schools").build()

    def call(n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ppl.infer(model, "smc", key=0, num_particles=n, progress_bar=False)

    return call, lambda n: n, "particles/s", [10**e for e in range(2, max_exp + 1)], "particles"


def _particle_filter_row(max_exp):
    import ppl
    from ppl import models

    entry = models.get("lgssm")
    model, state_space = entry.build(), entry.state_space_fn()
    num_steps = []

    def call(n):
        post = ppl.infer(model, "particle_filter", key=0, state_space=state_space,
                         num_particles=n, num_trajectories=1000)
        num_steps[:] = [post.history["ess"].shape[0]]
        return post

    return (call, lambda n: n * num_steps[0], "particle-steps/s",
            [10**e for e in range(2, max_exp + 1)], "particles")


def _coverage_row(max_exp):
    import importlib

    from ppl import models

    coverage = importlib.import_module("ppl.diagnostics.coverage").coverage
    model = models.get("conjugate_normal").build()

    def call(n):
        return coverage(model, "nuts", num_sims=n, key=0, num_rank_draws=50, vectorized=True,
                        chunk_size=n, num_chains=2, num_warmup=150, num_samples=150,
                        num_bootstrap=20)

    return call, lambda n: n, "simulations/s", [10**e for e in range(2, max_exp + 1)], "sims"


def _lm_row(max_exp):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np
    from ppl.models import lm

    model = lm.load(LM_CHECKPOINT)
    no_stop = jnp.array([], jnp.int32)

    @eqx.filter_jit
    def sample(model, key, prompt):
        lengths = jnp.full((prompt.shape[0],), PROMPT)
        state = model.init_state(prompt, lengths, PROMPT + NEW_TOKENS)
        _, out = model.sample_step(key, state, temperature=1.0, stop_ids=no_stop,
                                   max_new_tokens=NEW_TOKENS)
        return out.tokens

    def call(n):
        prompt = jnp.asarray(np.random.default_rng(0).integers(0, model.vocab_size, (n, PROMPT)))
        return sample(model, jax.random.key(0), prompt)

    sizes = [1, 4, 16, 64, 256]
    return call, lambda n: n * NEW_TOKENS, "tokens/s", sizes, "batch"


def _llm_filter_row(max_exp):
    import jax
    import numpy as np
    from ppl.inference import llm
    from ppl.models import lm
    from ppl.models.lm.testbed import prm, tasks

    model, tokenizer = lm.load(LM_CHECKPOINT), lm.load_tokenizer(LM_CHECKPOINT)
    particles = 16
    tokens = []

    def call(rows):
        rng = np.random.default_rng(rows)
        prompts = [tasks.generate(rng, 6).prompt for _ in range(rows // particles)]
        result = llm.run("particle_filter", model, tokenizer, prompts, key=jax.random.key(0),
                         reward=prm.OracleReward(), num_particles=particles, batch_size=rows,
                         progress_bar=False)
        tokens[:] = [int(result.tokens.sum())]
        return result

    sizes = [64, 256, 1024, 4096, 16384][: max(2, max_exp - 1)]
    return call, lambda n: tokens[0], "tokens/s", sizes, "rows"


ROWS = {"nuts": _nuts_row, "smc": _smc_row, "particle_filter": _particle_filter_row,
        "coverage": _coverage_row, "lm": _lm_row, "llm_filter": _llm_filter_row}


def _seconds(fn, n):
    start = time.perf_counter()
    _block(fn(n))
    return time.perf_counter() - start


def run_row(name, maker, max_exp, budget):
    call, work, unit, sizes, axis = maker(max_exp)
    points = []
    for i, n in enumerate(sizes):
        warm = _seconds(call, n)
        timed = _seconds(call, n)
        points.append({"size": n, "seconds": timed, "warm_seconds": warm,
                       "rate": work(n) / timed, "load": os.getloadavg()[0]})
        print(f"{name:16s} {axis}={n:>8d}: {timed:8.2f} s, {work(n) / timed:12.1f} {unit} "
              f"(warm-up call {warm:.1f} s)", flush=True)
        if i + 1 < len(sizes) and (timed > budget or timed * sizes[i + 1] / n > 3 * budget):
            print(f"{name:16s} stops: the next size would exceed the row budget", flush=True)
            break
    return {"axis": axis, "unit": unit, "points": points}


def _table(report) -> str:
    dev = report["device"]
    lines = [
        f"# Device table: {dev['platform']} ({dev['count']} x {dev['kind']})",
        "",
        f"Written by `python bench/devices.py {' '.join(report['argv'])}` on {report['date']};"
        f" jax {report['jax']}; 1-minute load average {report['load_before'][0]:.2f} before, "
        f"{report['load_after'][0]:.2f} after (machine: {report['machine']['nproc']} CPU(s), "
        f"{report['machine']['cpu_model']}).",
        "",
        "Each figure is one call timed after a warm-up call of the same shapes (compilation "
        f"excluded); a row stops when a call passes the row budget ({report['row_budget']} s) "
        "or the next would pass three budgets extrapolated linearly.",
        "",
        "| row | batch axis | size | seconds | rate | unit | load |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for name, row in report["rows"].items():
        if "error" in row:
            lines.append(f"| {name} | | | | | failed: {row['error']} | |")
            continue
        for p in row["points"]:
            lines.append(f"| {name} | {row['axis']} | {p['size']:,} | {p['seconds']:.3f} | "
                         f"{p['rate']:,.0f} | {row['unit']} | {p['load']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import jax

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--max-exp", type=int, default=None,
                        help="largest size 10^k (default 5 on CPU, 6 on an accelerator)")
    parser.add_argument("--row-budget", type=float, default=20.0,
                        help="stop a row after a call longer than this (seconds)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    devices = jax.devices()
    platform = devices[0].platform
    max_exp = args.max_exp or (5 if platform == "cpu" else 6)
    report = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "argv": list(argv if argv is not None else sys.argv[1:]),
        "device": {"platform": platform, "kind": devices[0].device_kind, "count": len(devices),
                   "process_count": jax.process_count()},
        "jax": jax.__version__,
        "machine": machine_info(),
        "row_budget": args.row_budget,
        "max_exp": max_exp,
        "load_before": list(os.getloadavg()),
        "rows": {},
    }
    print(f"{len(devices)} x {devices[0].device_kind} ({platform})", flush=True)
    for name in args.rows:
        try:
            report["rows"][name] = run_row(name, ROWS[name], max_exp, args.row_budget)
        except Exception as error:  # one failing row does not lose the others
            report["rows"][name] = {"error": f"{type(error).__name__}: {error}"[:300]}
            print(f"{name}: failed: {error}", flush=True)
    report["load_after"] = list(os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"devices_{platform}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(_table(report))
    print(f"wrote {stem}.md and .json", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
