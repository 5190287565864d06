"""The variational engines' part of ``ppl demo``: flow VI and coin SVGD on a banana."""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
import numpy as np

__all__ = ["demo_section"]


def demo_section(out_dir: pathlib.Path, *, quick: bool):
    """Fit flow VI and coin SVGD to a 2-D banana; return report sections."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from ppl.diagnostics.html import Section, figure_html, table_html

    import ppl

    def banana(x):
        return -0.5 * x[0] ** 2 - 0.5 * ((x[1] - x[0] ** 2 + 1.0) / 0.5) ** 2

    model = ppl.from_logdensity(banana, jnp.zeros(2))
    flow_post = ppl.infer(model, "flow_vi", key=0, num_steps=300 if quick else 1500,
                          num_draws=1000, progress_bar=False, warn=False)
    coin_post = ppl.infer(model, "coin_svgd", key=1, num_particles=50 if quick else 200,
                          num_iterations=300 if quick else 1000, progress_bar=False)
    rng = np.random.default_rng(0)
    a = rng.normal(size=4000)
    exact = np.stack([a, a**2 - 1 + 0.5 * rng.normal(size=4000)], 1)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (title, x) in zip(axes[:2], [("flow VI (MAF)", flow_post.flat("x")),
                                         ("coin SVGD", coin_post.flat("x"))], strict=True):
        ax.scatter(exact[:, 0], exact[:, 1], s=2, c="lightgray", label="exact")
        ax.scatter(x[:, 0], x[:, 1], s=4 if len(x) > 500 else 12, c="C3", label=title)
        ax.set_title(title)
        ax.legend(loc="upper center")
    axes[2].plot(flow_post.history["elbo"], lw=0.5)
    axes[2].set_title(f"ELBO trace (log Z = {np.log(2 * np.pi * 0.5):.3f})")
    axes[2].set_ylim(np.log(2 * np.pi * 0.5) - 3, np.log(2 * np.pi * 0.5) + 0.5)
    rows = []
    for name, post in [("flow_vi", flow_post), ("coin_svgd", coin_post)]:
        x = post.flat("x")
        rows.append({"engine": name, "mean x1": x[:, 0].mean(), "mean x2": x[:, 1].mean(),
                     "sd x1": x[:, 0].std(), "sd x2": x[:, 1].std(),
                     "k-hat": post.meta.get("khat", np.nan),
                     "wall time (s)": post.meta["wall_time"]})
    rows.append({"engine": "exact", "mean x1": 0.0, "mean x2": 0.0, "sd x1": 1.0,
                 "sd x2": float(np.sqrt(2 + 0.25)), "k-hat": np.nan, "wall time (s)": np.nan})
    body = figure_html(fig, "flow VI and coin SVGD on a banana") + table_html(pd.DataFrame(rows))
    return [Section("Variational inference: normalizing flows and coin sampling", body)]
