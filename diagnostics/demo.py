"""``ppl demo``: the main job. Fits the built-in models, prints summaries, writes a report.

The report (``OUT/index.html``) has, per model, the summary table (mean, sd, HDI, MCSE,
bulk/tail ESS, R-hat), divergences and warnings, the exact answer where one exists, and
trace, rank and posterior plots; then sections contributed by the other engines (SMC,
variational, calibration) when they are installed.
"""

from __future__ import annotations

import importlib
import json
import time
import traceback
from pathlib import Path

import jax
import numpy as np
from ppl.diagnostics.html import Section, figure_html, render_page, table_html

import ppl
from ppl import arviz_bridge, models
from ppl.data_paths import reference_data_dir

__all__ = ["run_demo", "DEMO_MODELS", "ENGINE_SECTIONS"]

# (zoo name, sites to plot); posteriordb entries run only when the shared data is present.
DEMO_MODELS = [
    ("eight_schools", ["mu", "tau"]),
    ("eight_schools_centered", ["mu", "tau"]),
    ("conjugate_normal", ["mu"]),
    ("beta_binomial", None),
    ("linear_regression", None),
    ("logistic_regression_small", None),
    ("posteriordb/kidiq-kidscore_momiq", None),
]

# Engines that contribute a section: "module:function" returning list[Section].
ENGINE_SECTIONS = [
    "ppl.diagnostics.smc_demo:demo_section",
    "ppl.diagnostics.vi_demo:demo_section",
    "ppl.diagnostics.coverage_demo:demo_section",
]


def _exact_table(entry, post) -> str:
    exact = entry.exact()
    if not exact or "mean" not in exact:
        return ""
    rows = []
    for site, mean in exact["mean"].items():
        sd = exact.get("sd", {}).get(site)
        est_mean, est_sd = post.mean(site), post.std(site)
        for j, m in enumerate(np.ravel(mean)):
            rows.append({
                "parameter": f"{site}[{j}]" if np.ndim(mean) else site,
                "exact mean": float(m),
                "NUTS mean": float(np.ravel(est_mean)[j]),
                "exact sd": float(np.ravel(sd)[j]) if sd is not None else float("nan"),
                "NUTS sd": float(np.ravel(est_sd)[j]),
            })
    import pandas as pd

    return "<h3>Against the closed form</h3>" + table_html(
        pd.DataFrame(rows).set_index("parameter"))


def _fit_one(name: str, plot_sites, key, quick: bool, out: Path):
    entry = models.get(name)
    model = entry.build()
    settings = dict(num_chains=4, num_warmup=300 if quick else 1000,
                    num_samples=300 if quick else 1000)
    post = ppl.infer(model, "nuts", key=key, **settings)
    table = post.summary()
    print(f"\n== {name}: NUTS, {settings['num_chains']} chains x {settings['num_samples']} draws, "
          f"{post.meta['wall_time']:.1f} s, {int(post.stats['diverging'].sum())} divergences")
    print(table.to_string(max_rows=30))
    post.save(out / f"{name.replace('/', '__')}.nc", overwrite=True)
    sites = plot_sites or [s.name for s in model.sites][:4]
    body = [f"<p>{entry.description}. NUTS, {settings['num_chains']} chains &times; "
            f"{settings['num_samples']} draws after {settings['num_warmup']} warm-up; "
            f"{post.meta['wall_time']:.1f} s wall time, {post.meta['num_gradient_evals']:,} "
            f"gradient evaluations, {int(post.stats['diverging'].sum())} divergences.</p>"]
    for warning in post.meta.get("warnings", []):
        body.append(f'<div class="warn">{warning}</div>')
    body.append(table_html(table.head(40)))
    body.append(_exact_table(entry, post))
    body.append(figure_html(arviz_bridge.plot_trace(post, sites), "trace"))
    body.append(figure_html(arviz_bridge.plot_rank(post, sites), "rank"))
    body.append(figure_html(arviz_bridge.plot_posterior(post, sites), "posterior"))
    summary = {
        "wall_time": post.meta["wall_time"],
        "divergences": int(post.stats["diverging"].sum()),
        "max_rhat": float(np.nanmax(table["r_hat"])),
        "min_ess_bulk": float(np.nanmin(table["ess_bulk"])),
        "warnings": post.meta.get("warnings", []),
    }
    return Section(f"{name} (NUTS)", "".join(body)), summary


def run_demo(out: str | Path = "reports/demo", *, quick: bool = False, seed: int = 0,
             engines: bool = True) -> Path:
    """Run the demo and write ``OUT/index.html`` and ``OUT/summary.json``.

    Returns:
        The path of the HTML report.

    Raises:
        RuntimeError: when a part failed (after writing the report, which shows the error).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(seed)
    sections, summary, failures = [], {}, []
    start = time.perf_counter()
    for i, (name, sites) in enumerate(DEMO_MODELS):
        if name.startswith("posteriordb/"):
            try:
                reference_data_dir("posteriordb")
            except FileNotFoundError as error:
                print(f"(skipping {name}: {error})")
                continue
        try:
            section, info = _fit_one(name, sites, jax.random.fold_in(key, i), quick, out)
        except Exception as error:  # shown in the report, and the demo exits non-zero
            failures.append(name)
            section = Section(name, f"<pre>{traceback.format_exc()}</pre>")
            info = {"error": repr(error)}
        sections.append(section)
        summary[name] = info
    if engines:
        for target in ENGINE_SECTIONS:
            module_name, function_name = target.split(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue  # that engine is not part of this installation
            try:
                print(f"\n== {module_name}")
                sections.extend(getattr(module, function_name)(out, quick=quick))
            except Exception:
                failures.append(module_name)
                sections.append(Section(module_name, f"<pre>{traceback.format_exc()}</pre>"))
    elapsed = time.perf_counter() - start
    intro = (f"<p>ppl {ppl.__version__}, JAX {jax.__version__} on "
             f"{jax.default_backend().upper()} ({jax.device_count()} device(s)); "
             f"total {elapsed:.0f} s. Posteriors are saved beside this page as netCDF "
             "(<code>ppl.load(path)</code>).</p>")
    page = out / "index.html"
    page.write_text(render_page("ppl demo report", sections, intro))
    (out / "summary.json").write_text(json.dumps(
        {"models": summary, "failures": failures, "wall_time": elapsed}, indent=2, default=str))
    print(f"\nReport: {page}")
    if failures:
        raise RuntimeError(f"demo parts failed: {', '.join(failures)} (see {page})")
    return page
