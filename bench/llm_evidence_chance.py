"""How often plain SMC's sandwich check fails by chance alone, and whether the true log Z holds.

    python bench/llm_evidence_chance.py                 # reads bench/results/llm_evidence_cpu.json
    python bench/llm_evidence_chance.py --samples 4096  # also samples the failing problems

Plain SMC with a 0/1 final check is importance sampling from the language model: each run's
estimate is ``k / N`` with ``k ~ Binomial(N, Z)``. Drawing that exactly, with each problem's
true ``Z`` (teacher forcing), and applying ``bench/llm_evidence.py``'s rule (the lower bound,
the mean of ``log Z_SMC`` over the runs when all are finite, above ``log Z`` by more than 2
standard errors fails) gives the failure rate that an exact estimator has under that rule,
and the chance of seeing at least as many failures as the benchmark saw. With ``--samples``
the problems that failed are sampled plainly (temperature 1) and the share of exact
solutions is compared with the teacher-forced ``Z``, which would show a biased ``Z``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def lower_fails(log_runs: np.ndarray, log_z: np.ndarray) -> np.ndarray:
    """The benchmark's lower-bound failures: all runs finite, mean above log Z + 2 SE."""
    finite = np.isfinite(log_runs).all(1)
    safe = np.where(np.isfinite(log_runs), log_runs, 0.0)
    se = safe.std(1, ddof=1) / np.sqrt(log_runs.shape[1])
    return finite & (safe.mean(1) > log_z + 2 * se)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS / "llm_evidence_cpu.json")
    parser.add_argument("--replications", type=int, default=4000)
    parser.add_argument("--samples", type=int, default=0)
    args = parser.parse_args(argv)
    record = json.loads(args.results.read_text())
    log_z = np.asarray(record["log_z"])
    runs = record["runs"]
    rng = np.random.default_rng(0)
    failing = set()
    for name, problem in record["per_problem"].items():
        if "twist=none" not in name:
            continue
        n = int(name.split("N=")[1].split()[0])
        seen = lower_fails(np.asarray(problem["lower_runs"]), log_z)
        failing |= set(np.flatnonzero(seen).tolist())
        k = rng.binomial(n, np.exp(log_z)[None, :, None],
                         size=(args.replications, len(log_z), runs))
        with np.errstate(divide="ignore"):
            simulated = np.log(k / n)
        rates = np.array([lower_fails(s, log_z).mean() for s in simulated])
        print(f"{name}: {seen.sum()} of {len(log_z)} lower-side failures seen; an exact "
              f"estimator fails {rates.mean():.3f} of problems on average, and at least "
              f"{seen.mean():.3f} in {np.mean(rates >= seen.mean()):.3f} of replications")
    if args.samples:
        import jax
        from ppl.inference import llm
        from ppl.models import lm
        from ppl.models.lm.testbed import tasks

        checkpoint = Path(__file__).resolve().parents[1] / "models" / "lm" / "checkpoints" / "arith"
        model, tokenizer = lm.load(checkpoint), lm.load_tokenizer(checkpoint)
        problem_rng = np.random.default_rng([777, record["difficulty"]])  # llm_evidence.py's
        problems = [tasks.generate(problem_rng, record["difficulty"])
                    for _ in range(record["num_problems"])]
        for i in sorted(failing):
            result = llm.run("self_consistency", model, tokenizer, [problems[i].prompt],
                             key=jax.random.key(100 + i), num_particles=args.samples,
                             temperature=1.0, batch_size=args.samples)
            exact = np.mean([c == problems[i].solution() for c in result.candidates[0]])
            se = np.sqrt(exact * (1 - exact) / args.samples)
            z = np.exp(log_z[i])
            print(f"problem {i}: Z {z:.4f} by teacher forcing, {exact:.4f} +- {se:.4f} by "
                  f"{args.samples} plain samples ({(exact - z) / se:+.2f} SE)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
