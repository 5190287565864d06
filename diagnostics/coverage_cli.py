"""``ppl coverage MODEL --method METHOD --num-sims N --out DIR``.

MODEL is a zoo name (``ppl.models.names()``) or ``module:function``, naming either a
function that returns a ppl Model or a NumPyro model function that needs no arguments
(built with ``ppl.from_numpyro``). ``--vectorized`` / ``--no-vectorized`` and
``--chunk-size K`` choose how the data sets run, ``--devices N`` where (see
:func:`ppl.diagnostics.coverage.coverage`; default: vectorised where the engine can be).
The exit status is 0 when every check passes.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parser", "run"]


def _settings(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"Expected --set KEY=VALUE, got {pair!r}.")
        k, v = pair.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``coverage`` subcommand."""
    p = subparsers.add_parser(
        "coverage",
        help="calibration of an engine: TARP, SBC, expected coverage, report",
        description="Simulate data sets from the prior predictive, run the engine on each, "
        "and write DIR/report.html and DIR/summary.json (resumes an interrupted run).",
    )
    p.add_argument("model", help="zoo model name or module:function")
    p.add_argument("--method", default="nuts", help="engine name (default nuts)")
    p.add_argument("--num-sims", type=int, default=100)
    p.add_argument("--num-rank-draws", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--vectorized", action=argparse.BooleanOptionalAction, default=None,
                   help="run the data sets in vmapped chunks (NUTS, HMC) or one at a time "
                   "(default: vectorised where the engine has a batched runner)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="data sets per compiled call and checkpoint when vectorised "
                   "(default 100)")
    p.add_argument("--devices", type=int, default=None, metavar="N",
                   help="run on the first N devices (default: all of them)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="engine setting (JSON value), e.g. --set num_samples=500")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    """Run the subcommand; returns 0 when every check passes, 1 otherwise."""
    from ppl.diagnostics.coverage import coverage
    from ppl.diagnostics.coverage_report import write_report

    from ppl.cli import resolve_model

    model = resolve_model(args.model)
    result = coverage(
        model, args.method, num_sims=args.num_sims, key=args.seed, out_dir=args.out,
        resume=not args.no_resume, num_rank_draws=args.num_rank_draws,
        progress_bar=True, vectorized="auto" if args.vectorized is None else args.vectorized,
        chunk_size=args.chunk_size, devices=args.devices, **_settings(args.set),
    )
    summary = write_report(result, args.out, title=f"Calibration of {args.model}")
    for section in ("tarp", "sbc", "coverage"):
        print(f"{section:9s} {summary[section]['verdict']}")
    print(f"report: {args.out}/report.html")
    return 0 if result.passed else 1
