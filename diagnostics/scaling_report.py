"""The inference-time scaling report: accuracy against budget, as Puri et al.'s figure 1.

``write_scaling_report(points, out_dir)`` writes ``report.html`` (one panel per problem set
and reward, accuracy against tokens per problem with standard-error bars, a second figure
against reward calls, power sampling against alpha where the study has it, and every point
in a table) and ``scaling.json`` (the points).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd
from ppl.diagnostics.html import Section, figure_html, render_page, table_html

__all__ = ["budget_matches", "plot_power", "plot_scaling", "power_table", "split_points",
           "write_scaling_report"]

_STYLES = {
    "particle_filter": ("#c0392b", "o", "-"),
    "entropic_particle_filter": ("#e67e22", "D", "-"),
    "particle_gibbs": ("#8e44ad", "s", "-"),
    "beam_search": ("#16a085", "^", "--"),
    "best_of_n": ("#2c3e50", "v", ":"),
    "weighted_best_of_n": ("#2980b9", "P", ":"),
    "self_consistency": ("#7f8c8d", "X", ":"),
}


_POWER_STYLES = {
    "power_sampling": ("#c0392b", "o-", "power sampling (1 chain)"),
    "vote, T=1": ("#7f8c8d", "s:", "vote, T = 1, same tokens"),
    "vote, T=1/alpha": ("#2980b9", "^:", "vote, T = 1/alpha, same tokens"),
    "one sample, T=1/alpha": ("#2c3e50", "x--", "one sample, T = 1/alpha"),
}


def split_points(points: list[dict]) -> tuple[list[dict], list[dict]]:
    """The points against N, and power sampling's points against alpha."""
    return ([p for p in points if p.get("alpha") is None],
            [p for p in points if p.get("alpha") is not None])


def plot_power(points: list[dict]):
    """Accuracy against alpha, one panel per problem set (power sampling's points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(split_points(points)[1])
    problem_sets = list(dict.fromkeys(frame["problems"]))
    fig, axes = plt.subplots(1, len(problem_sets), figsize=(4.4 * len(problem_sets), 3.2),
                             squeeze=False, sharey=True)
    for ax, label in zip(axes[0], problem_sets, strict=True):
        here = frame[frame["problems"] == label]
        for method, (color, style, name) in _POWER_STYLES.items():
            rows = here[here["method"] == method].sort_values("alpha")
            if len(rows):
                ax.errorbar(rows["alpha"], rows["accuracy"], yerr=rows["accuracy_se"],
                            fmt=style, color=color, capsize=2, markersize=4, label=name)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("alpha")
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("accuracy")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def power_table(points: list[dict]) -> pd.DataFrame:
    """One row per (problem set, alpha): every contender's accuracy and standard error, and
    the tokens per problem they had."""
    rows = {}
    for p in split_points(points)[1]:
        row = rows.setdefault((p["problems"], p["alpha"]), {"problems": p["problems"],
                                                            "alpha": p["alpha"]})
        row[p["method"]] = f"{p['accuracy']:.3f} +- {p['accuracy_se']:.3f}"
        if p["method"] == "power_sampling":
            row["tokens"] = round(p["tokens"])
        elif p["method"] == "vote, T=1":
            row["vote N"] = p["num_particles"]
    return pd.DataFrame(list(rows.values()))


def plot_scaling(points: list[dict], *, budget: str = "tokens"):
    """A grid of panels (rows: problem sets, columns: rewards), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(split_points(points)[0])
    problem_sets = list(dict.fromkeys(frame["problems"]))
    rewards = [r for r in dict.fromkeys(frame["reward"]) if r != "none"] or ["none"]
    fig, axes = plt.subplots(len(problem_sets), len(rewards), squeeze=False, sharey=True,
                             figsize=(4.2 * len(rewards), 3.2 * len(problem_sets)))
    for i, label in enumerate(problem_sets):
        for j, reward in enumerate(rewards):
            ax = axes[i, j]
            here = frame[(frame["problems"] == label)
                         & ((frame["reward"] == reward) | (frame["method"] == "self_consistency"))]
            for method, rows in here.groupby("method", sort=False):
                rows = rows.sort_values("num_particles")
                if budget == "reward_calls" and method == "self_consistency":
                    continue
                color, marker, style = _STYLES.get(method, ("#333", ".", "-"))
                ax.errorbar(rows[budget], rows["accuracy"], yerr=rows["accuracy_se"],
                            color=color, marker=marker, linestyle=style, markersize=4,
                            capsize=2, linewidth=1.2, label=method)
            ax.set_xscale("log", base=2)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.set_title(f"{label}, reward: {reward}", fontsize=9)
            if i == len(problem_sets) - 1:
                ax.set_xlabel("tokens per problem" if budget == "tokens"
                              else "reward calls per problem")
            if j == 0:
                ax.set_ylabel("accuracy")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    for ax in axes.ravel()[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8,
               bbox_to_anchor=(0.5, -0.02 - 0.02 * (len(labels) > 4)))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def budget_matches(points: list[dict], *, method: str = "particle_filter",
                   against: tuple[str, ...] = ("weighted_best_of_n", "self_consistency"),
                   factor: int = 4) -> list[dict]:
    """For every point of ``method`` at ``N``: the accuracy of each method of ``against``
    at ``factor * N`` (same problems and reward), and whether ``method`` is at least as good
    within their standard errors combined."""
    frame = pd.DataFrame(split_points(points)[0])
    if frame.empty:
        return []
    rows = []
    for _, point in frame[frame["method"] == method].iterrows():
        row = {"problems": point["problems"], "reward": point["reward"],
               "num_particles": int(point["num_particles"]), method: point["accuracy"]}
        for other in against:
            reward = "none" if other == "self_consistency" else point["reward"]
            match = frame[(frame["method"] == other) & (frame["problems"] == point["problems"])
                          & (frame["reward"] == reward)
                          & (frame["num_particles"] == factor * point["num_particles"])]
            if len(match):
                m = match.iloc[0]
                row[f"{other} at {factor}N"] = m["accuracy"]
                se = np.hypot(point["accuracy_se"], m["accuracy_se"])
                row[f"reaches {other}"] = bool(point["accuracy"] >= m["accuracy"] - 2 * se)
        rows.append(row)
    return rows


def write_scaling_report(points: list[dict], out_dir: str | Path, *, title: str = "",
                         notes: str = "") -> Path:
    """Writes ``report.html`` and ``scaling.json`` into ``out_dir``; returns the report path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scaling.json").write_text(json.dumps(points, indent=1) + "\n")
    by_n, by_alpha = split_points(points)
    frame = pd.DataFrame(points)
    sections = []
    if by_n:
        sections += [
            Section("Accuracy against tokens", figure_html(plot_scaling(points, budget="tokens"),
                                                           "accuracy against tokens per problem")),
            Section("Accuracy against reward calls",
                    figure_html(plot_scaling(points, budget="reward_calls"),
                                "accuracy against reward calls per problem")),
        ]
    if by_alpha:
        sections.append(Section(
            "Power sampling against alpha",
            "<p>One Metropolis-Hastings chain per problem targeting p<sub>LM</sub><sup>alpha"
            "</sup>, against majority vote over as many tokens per problem (N samples) at "
            "temperature 1 and at 1/alpha, and one sample at 1/alpha.</p>"
            + figure_html(plot_power(points), "accuracy against alpha")
            + table_html(power_table(points))))
    matches = budget_matches(points)
    if matches:
        sections.append(Section(
            "Particle filter at N against the baselines at 4N",
            table_html(pd.DataFrame(matches), float_format="{:.3f}")))
    columns = ["problems", "reward", "method", "num_particles", "alpha", "accuracy", "accuracy_se",
               "num_problems", "tokens", "reward_calls", "wall_time"]
    table = frame[[c for c in columns if c in frame]].sort_values(
        [c for c in ("problems", "reward", "method", "alpha", "num_particles") if c in frame])
    sections.append(Section("Every point", table_html(table.reset_index(drop=True),
                                                      float_format="{:.3f}")))
    intro = (
        "<p>Accuracy (fraction of problems answered right, with its binomial standard error) "
        "against the budget per problem: sampled tokens (every token, discarded particles "
        "included) and reward calls (particle steps scored). The independent baselines at "
        "each N are the first N samples of one run at the largest N.</p>"
        + (f"<p>{html.escape(notes)}</p>" if notes else "")
    )
    path = out_dir / "report.html"
    path.write_text(render_page(title or "Inference-time scaling", sections, intro))
    return path
