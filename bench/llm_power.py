"""Power sampling against alpha, and against plain sampling at the same token budget.

    python bench/llm_power.py            # 6 and 8 operations, 80 problems each (~15 min)
    python bench/llm_power.py --quick    # 20 problems

For each difficulty and alpha in (1, 2, 4), :func:`ppl.inference.llm.scaling.power_curve`
(what ``ppl lm scaling --methods power_sampling`` draws): one power-sampling chain per
problem (blocks of 16 tokens, 10 Metropolis-Hastings proposals after each, as Karan and Du),
its accuracy and tokens per problem; then, at the same budget (N = tokens of power sampling
/ tokens of one sample), majority vote over N samples at temperature 1 and at temperature
1/alpha (the low-temperature baseline), and one sample at 1/alpha. Writes
``bench/results/llm_power_<label>.{json,md,png}`` with the load average.
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
CHECKPOINTS = Path(__file__).resolve().parents[1] / "models" / "lm" / "checkpoints"
ALPHAS = (1.0, 2.0, 4.0)


def main(argv=None) -> int:
    from ppl.diagnostics.html import figure_png
    from ppl.diagnostics.scaling_report import plot_power, power_table
    from ppl.inference.llm.scaling import ProblemSet, power_curve
    from ppl.models import lm
    from ppl.models.lm.testbed import tasks

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-problems", type=int, default=80)
    parser.add_argument("--difficulties", default="6,8")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--label", default="cpu")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_problems = 20
    start_load = os.getloadavg()
    model = lm.load(CHECKPOINTS / "arith")
    tokenizer = lm.load_tokenizer(CHECKPOINTS / "arith")
    points = []
    for difficulty in (int(d) for d in args.difficulties.split(",")):
        rng = np.random.default_rng([909, difficulty])
        problems = [tasks.generate(rng, difficulty) for _ in range(args.num_problems)]
        problem_set = ProblemSet(
            f"{difficulty} operations", [p.prompt for p in problems],
            lambda i, answer, problems=problems: answer == problems[i].answer)
        for point in power_curve(model, tokenizer, problem_set, ALPHAS,
                                 key=jax.random.key(difficulty), answer_fn=tasks.parse_answer):
            point["load_1min"] = os.getloadavg()[0]
            points.append(point)
            print(json.dumps(point), flush=True)

    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"llm_power_{args.label}"
    stem.with_suffix(".png").write_bytes(figure_png(plot_power(points)))
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "jax": jax.__version__,
              "load_average_start": start_load, "load_average_end": os.getloadavg(),
              "num_problems": args.num_problems, "points": points}
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    table = power_table(points)
    lines = [f"# Power sampling on the testbed ({args.num_problems} problems per difficulty)", "",
             f"`python bench/llm_power.py`; {record['date']}; {record['machine']}; load average "
             f"{start_load[0]:.1f} at the start, {record['load_average_end'][0]:.1f} at the end. "
             "One chain per problem (blocks of 16 tokens, 10 proposals each); the votes get the "
             "same tokens per problem (vote N samples). One sample at temperature 1 is the "
             "alpha = 1 row's `one sample, T=1/alpha`.", "",
             f"![accuracy against alpha]({stem.with_suffix('.png').name})", "",
             "| " + " | ".join(table.columns) + " |", "|---" * len(table.columns) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(f"{v:g}" if isinstance(v, float) else str(v)
                                       for v in row) + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
