"""Bidirectional evidence bounds on the testbed: plain SMC against twisted SMC.

    python bench/llm_evidence.py             # 40 problems at 8 operations (~30 min on 2 cores)
    python bench/llm_evidence.py --quick     # 8 problems
    python bench/llm_evidence.py --contenders twisted_learned_16 --twist-dir DIR  # one row

The target is the language model (temperature 1) conditioned on the exact checker's verdict,
so ``Z = P_LM(the reference solution)``, known exactly by teacher forcing
(``evaluate.reference_step_probabilities``). For every problem and method: the lower bound
(mean log Z of ``--runs`` SMC runs), the upper bound (mean log Z of conditional SMC around
exact samples from rejection sampling), whether they sandwich the true log Z within 2
standard errors, and the gap. Methods: plain SMC at N = 16 and 64, twisted SMC at N = 16
with the learned twist (``arith_twist``, a value head trained on the LM's rollouts) and with
the exact prefix check as the twist (the oracle PRM: 0 once a line is wrong, else 1).

Targets (issue 13): the sandwich holds for >= 95% of problems; the mean gap of twisted SMC
at N = 16 is below plain SMC's at N = 64. A run that finds no correct trace gives an
infinite lower bound; the gap is then infinite too, and counted apart.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
# Rows by name: (method, twist, N).
CONTENDERS = {"smc_16": ("smc", "none", 16), "smc_64": ("smc", "none", 64),
              "twisted_learned_16": ("twisted_smc", "learned", 16),
              "twisted_prefix_16": ("twisted_smc", "prefix check", 16)}
CHECKPOINTS = Path(__file__).resolve().parents[1] / "models" / "lm" / "checkpoints"


def main(argv=None) -> int:
    from ppl.inference.llm import evidence
    from ppl.models import lm
    from ppl.models.lm.testbed import prm, tasks, twist
    from ppl.models.lm.testbed.evaluate import reference_step_probabilities

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-problems", type=int, default=40)
    parser.add_argument("--difficulty", type=int, default=8)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--exact-samples", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--label", default="cpu")
    parser.add_argument("--contenders", nargs="*", default=list(CONTENDERS),
                        choices=list(CONTENDERS), help="which rows (default all)")
    parser.add_argument("--twist-dir", type=Path, default=CHECKPOINTS / "arith_twist",
                        help="the learned twist's checkpoint")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_problems = 8
    start_load = os.getloadavg()
    model_dir = CHECKPOINTS / "arith"
    model, tokenizer = lm.load(model_dir), lm.load_tokenizer(model_dir)
    rng = np.random.default_rng([777, args.difficulty])  # not the training or test seeds
    problems = [tasks.generate(rng, args.difficulty) for _ in range(args.num_problems)]
    prompts = [p.prompt for p in problems]
    log_z = np.array([np.sum(np.log(reference_step_probabilities(model, p, 1.0)))
                      for p in problems])
    samples, tries = evidence.rejection_samples(
        model, tokenizer, prompts, lambda i, text: text == problems[i].solution(),
        key=jax.random.key(1), num_samples=args.exact_samples, max_tries=4096)
    learned = twist.load(args.twist_dir, lm_directory=model_dir).reward_model()
    twists = {"none": None, "learned": learned, "prefix check": prm.OracleReward()}
    contenders = [CONTENDERS[name] for name in args.contenders]
    contenders = [(method, twists[name], name, n) for method, name, n in contenders]
    rows, per_problem = [], {}
    for method, twist_model, twist_name, n in contenders:
        began = time.perf_counter()
        result = evidence.evidence_bounds(
            method, model, tokenizer, prompts, key=jax.random.key(2), final=prm.OracleReward(),
            twist=twist_model, exact_samples=samples, num_particles=n, num_runs=args.runs)
        seconds = time.perf_counter() - began
        lower_runs = np.asarray(result.lower_runs)
        finite = np.isfinite(lower_runs).all(1)
        lower_se = np.where(finite, lower_runs.std(1, ddof=1) / np.sqrt(args.runs), np.inf)
        has_upper = np.isfinite(result.log_z_upper)
        upper_se = np.array([np.std(u, ddof=1) / np.sqrt(len(u)) if len(u) > 1 else np.inf
                             for u in result.upper_runs])
        lower_ok = ~finite | (result.log_z_lower <= log_z + 2 * lower_se)
        upper_ok = ~has_upper | (result.log_z_upper >= log_z - 2 * upper_se)
        gap = result.log_z_upper - result.log_z_lower
        both = finite & has_upper
        name = f"{method} N={n} twist={twist_name}"
        per_problem[name] = {"log_z_lower": result.log_z_lower.tolist(),
                             "log_z_upper": result.log_z_upper.tolist(),
                             "lower_runs": lower_runs.tolist()}
        rows.append({
            "method": method, "twist": twist_name, "num_particles": n,
            "sandwich": float(np.mean(lower_ok & upper_ok)),
            "problems_with_both_bounds": int(both.sum()),
            "problems_with_infinite_lower": int((~finite).sum()),
            "mean_gap": float(np.mean(gap[both])) if both.any() else None,
            "median_gap": float(np.median(gap[both])) if both.any() else None,
            "mean_abs_lower_error": float(np.mean(np.abs(result.log_z_lower - log_z)[finite]))
            if finite.any() else None,
            "seconds": seconds, "load_1min": os.getloadavg()[0],
        })
        print(json.dumps(rows[-1]), flush=True)
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "jax": jax.__version__, "load_average_start": start_load, "load_average_end":
        os.getloadavg(), "difficulty": args.difficulty, "num_problems": args.num_problems,
        "runs": args.runs, "exact_samples": args.exact_samples,
        "twist_dir": str(args.twist_dir), "argv": list(sys.argv[1:] if argv is None else argv),
        "exact_samples_found": [int(len(s)) for s in samples],
        "rejection_tries": [int(t) for t in tries],
        "log_z": log_z.tolist(), "rows": rows, "per_problem": per_problem,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"llm_evidence_{args.label}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [
        f"# Evidence bounds, {args.num_problems} problems at {args.difficulty} operations",
        "",
        f"`python bench/llm_evidence.py {' '.join(record['argv'])}`".replace(" `", "`")
        + f"; {record['date']}; {record['machine']}; jax "
        f"{jax.__version__}; load average {start_load[0]:.1f} at the start, "
        f"{record['load_average_end'][0]:.1f} at the end. True log Z by teacher forcing "
        f"(mean {log_z.mean():.2f}); {args.runs} runs per bound; upper bounds around "
        f"{args.exact_samples} exact samples (rejection sampling).",
        "",
        "| method | twist | N | sandwich within 2 SE | mean gap | median gap | infinite lower "
        "| mean abs. error of the lower bound | s [load] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        lines.append(
            f"| {row['method']} | {row['twist']} | {row['num_particles']} | "
            f"{row['sandwich']:.3f} | {fmt(row['mean_gap'])} | {fmt(row['median_gap'])} | "
            f"{row['problems_with_infinite_lower']} | {fmt(row['mean_abs_lower_error'])} | "
            f"{row['seconds']:.0f} [{row['load_1min']:.1f}] |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
