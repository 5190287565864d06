"""Power sampling against alpha, and against plain sampling at the same token budget.

    python bench/llm_power.py            # 6 and 8 operations, 80 problems each (~15 min)
    python bench/llm_power.py --quick    # 20 problems

For each difficulty and alpha in (1, 2, 4): one power-sampling chain per problem (blocks of
16 tokens, 10 Metropolis-Hastings proposals after each, as Karan and Du), its accuracy and
tokens per problem; then, at the same budget (N = tokens of power sampling / tokens of one
sample), majority vote over N samples at temperature 1 and at temperature 1/alpha (the
low-temperature baseline), and one sample at each. Writes
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
    from ppl.inference import llm
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
    rows = []

    def accuracy(result, problems):
        correct = np.array([tasks.is_correct(p, t) for p, t in
                            zip(problems, result.traces, strict=True)], float)
        return float(correct.mean()), float(correct.std(ddof=1) / np.sqrt(len(correct)))

    for difficulty in (int(d) for d in args.difficulties.split(",")):
        rng = np.random.default_rng([909, difficulty])
        problems = [tasks.generate(rng, difficulty) for _ in range(args.num_problems)]
        prompts = [p.prompt for p in problems]
        common = dict(key=jax.random.key(difficulty), answer_fn=tasks.parse_answer)
        single = llm.run("self_consistency", model, tokenizer, prompts, num_particles=1,
                         temperature=1.0, **common)
        per_sample = float(single.tokens.mean())
        for alpha in ALPHAS:
            power = llm.run("power_sampling", model, tokenizer, prompts, num_particles=1,
                            alpha=alpha, **common)
            budget = float(power.tokens.mean())
            n = max(1, int(round(budget / per_sample)))
            row = {"difficulty": difficulty, "alpha": alpha,
                   "power_tokens": budget, "matched_n": n, "load_1min": os.getloadavg()[0]}
            row["power"], row["power_se"] = accuracy(power, problems)
            for name, temperature in (("temperature_1", 1.0), ("low_temperature", 1 / alpha)):
                one = llm.run("self_consistency", model, tokenizer, prompts, num_particles=1,
                              temperature=temperature, **common)
                vote = llm.run("self_consistency", model, tokenizer, prompts, num_particles=n,
                               temperature=temperature, **common)
                row[f"{name}_single"], row[f"{name}_single_se"] = accuracy(one, problems)
                row[f"{name}_vote"], row[f"{name}_vote_se"] = accuracy(vote, problems)
                row[f"{name}_vote_tokens"] = float(vote.tokens.mean())
            rows.append(row)
            print(json.dumps(row), flush=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    difficulties = sorted({r["difficulty"] for r in rows})
    fig, axes = plt.subplots(1, len(difficulties), figsize=(4.4 * len(difficulties), 3.2),
                             squeeze=False, sharey=True)
    for ax, difficulty in zip(axes[0], difficulties, strict=True):
        here = [r for r in rows if r["difficulty"] == difficulty]
        alphas = [r["alpha"] for r in here]
        for key, label, style in (("power", "power sampling (1 chain)", "o-"),
                                  ("temperature_1_vote", "vote, T = 1, same tokens", "s:"),
                                  ("low_temperature_vote", "vote, T = 1/alpha, same tokens",
                                   "^:"),
                                  ("low_temperature_single", "one sample, T = 1/alpha", "x--")):
            ax.errorbar(alphas, [r[key] for r in here], yerr=[r[key + "_se"] for r in here],
                        fmt=style, capsize=2, label=label, markersize=4)
        ax.set_title(f"{difficulty} operations", fontsize=9)
        ax.set_xlabel("alpha")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("accuracy")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"llm_power_{args.label}"
    stem.with_suffix(".png").write_bytes(figure_png(fig))
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "jax": jax.__version__,
              "load_average_start": start_load, "load_average_end": os.getloadavg(),
              "num_problems": args.num_problems, "rows": rows}
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# Power sampling on the testbed ({args.num_problems} problems per difficulty)", "",
             f"`python bench/llm_power.py`; {record['date']}; {record['machine']}; load average "
             f"{start_load[0]:.1f} at the start, {record['load_average_end'][0]:.1f} at the end. "
             "One chain per problem (blocks of 16 tokens, 10 proposals each); the baselines "
             "get the same tokens per problem (N samples, majority vote).", "",
             f"![accuracy against alpha]({stem.with_suffix('.png').name})", "",
             "| operations | alpha | power sampling | tokens | N | vote T=1 | vote T=1/alpha "
             "| one sample T=1 | one sample T=1/alpha |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cell = lambda k, r=r: f"{r[k]:.3f} +- {r[k + '_se']:.3f}"  # noqa: E731
        lines.append(f"| {r['difficulty']} | {r['alpha']:g} | {cell('power')} | "
                     f"{r['power_tokens']:.0f} | {r['matched_n']} | {cell('temperature_1_vote')} | "
                     f"{cell('low_temperature_vote')} | {cell('temperature_1_single')} | "
                     f"{cell('low_temperature_single')} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
