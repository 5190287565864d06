"""The scaling study's curves and tables for the README, from a ``ppl lm scaling`` folder.

    ppl lm scaling --out reports/scaling_d8 --difficulties 8 --particles 1,4,16,64 \\
        --methods particle_filter,weighted_best_of_n,self_consistency,best_of_n \\
        --rewards learned,oracle --num-problems 160
    python bench/llm_scaling_curves.py reports/scaling_d8 --label d8

writes ``bench/results/llm_scaling_<label>.png`` (accuracy against tokens per problem) and
``llm_scaling_<label>.md`` (every point with its standard error, the particle filter at N
against the baselines at 4N), with the load average and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    from ppl.diagnostics.html import figure_png
    from ppl.diagnostics.scaling_report import budget_matches, plot_scaling, split_points

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a ppl lm scaling --out folder")
    parser.add_argument("--label", required=True)
    parser.add_argument("--command", default="", help="the ppl lm scaling command, for the record")
    args = parser.parse_args(argv)
    points = json.loads((args.folder / "scaling.json").read_text())
    RESULTS.mkdir(exist_ok=True)
    png = RESULTS / f"llm_scaling_{args.label}.png"
    png.write_bytes(figure_png(plot_scaling(points, budget="tokens")))
    frame = pd.DataFrame(split_points(points)[0])  # power sampling's curve is llm_power.py's
    table = frame.pivot_table(index=["problems", "reward", "method"], columns="num_particles",
                              values="accuracy", aggfunc="first")
    se = frame.pivot_table(index=["problems", "reward", "method"], columns="num_particles",
                           values="accuracy_se", aggfunc="first")
    lines = [f"# Inference-time scaling on the testbed ({args.label})", "",
             f"{time.strftime('%Y-%m-%d', time.gmtime())}; load average now "
             f"{os.getloadavg()[0]:.1f} (timings are not the point here); "
             f"{int(frame['num_problems'].max())} problems per point. "
             + (f"`{args.command}`" if args.command else ""), "",
             f"![accuracy against tokens]({png.name})", "",
             "Accuracy +- standard error by N (particles or samples per problem):", "",
             "| problems | reward | method | " + " | ".join(f"N={n}" for n in table.columns) + " |",
             "|---|---|---|" + "---|" * len(table.columns)]
    for index, row in table.iterrows():
        cells = [f"{row[n]:.3f} +- {se.loc[index, n]:.3f}" if pd.notna(row[n]) else "-"
                 for n in table.columns]
        lines.append("| " + " | ".join(index) + " | " + " | ".join(cells) + " |")
    matches = budget_matches(points)
    if matches:
        lines += ["", "The particle filter at N against the baselines at 4N (reaches: within two "
                  "standard errors combined, or above):", ""]
        keys = list(dict.fromkeys(k for m in matches for k in m))
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for m in matches:
            lines.append("| " + " | ".join(
                f"{m[k]:.3f}" if isinstance(m.get(k), float) else str(m.get(k, "-"))
                for k in keys) + " |")
    (RESULTS / f"llm_scaling_{args.label}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
