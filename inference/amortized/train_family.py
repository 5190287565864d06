"""Train a family's distribution transformer and write its checkpoint and metrics.

    python -m ppl.inference.amortized.train_family train gaussian_mean_2d
    python -m ppl.inference.amortized.train_family train linear_regression
    python -m ppl.inference.amortized.train_family train logistic_regression
    python -m ppl.inference.amortized.train_family evaluate gaussian_mean_2d

``train`` writes ``weights.eqx``, ``amortizer.json``, ``metrics.json`` (accuracy against
the exact posteriors, importance-sampled for logistic regression, in every scenario of
:mod:`~ppl.inference.amortized.evaluate`, the time per posterior at batch 256, wall and CPU
time, the machine's load) and ``train_log.txt`` into ``--out`` (default: the shipped
checkpoint's directory, ``models/amortized/checkpoints/<family>/``). A run interrupted
part-way resumes from its last checkpoint when started again with the same arguments.
``evaluate`` measures a checkpoint (a directory or a family's shipped one) and prints the
same metrics as JSON (``--write`` merges them into the checkpoint's ``metrics.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from . import evaluate as _evaluate
from .families import family_names, get_family
from .train import ARCHITECTURE_DEFAULTS, Amortizer, checkpoint_path, train

__all__ = ["DEFAULT_TRAINING", "main", "measure"]

# Per-family training settings of the shipped checkpoints (other families: GENERIC).
GENERIC_TRAINING: dict[str, Any] = {"steps": 8000, "batch_size": 128, "learning_rate": 2e-3}
DEFAULT_TRAINING: dict[str, dict[str, Any]] = {
    name: dict(GENERIC_TRAINING)
    for name in ("gaussian_mean_1d", "gaussian_mean_2d", "gaussian_mean_3d", "linear_regression",
                 "linear_regression_4", "logistic_regression")
}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(amortizer: Amortizer, *, num_datasets: int = 512) -> dict[str, Any]:
    """Every evaluation scenario and the timing, as one JSON-ready dictionary."""
    scenarios = {name: _evaluate.evaluate(amortizer, name, num_datasets=num_datasets)
                 for name in _evaluate.SCENARIOS}
    return {"evaluation_seed": _evaluate.EVALUATION_SEED, "target": _evaluate.TARGET,
            "scenarios": scenarios, "timing": _evaluate.time_posterior(amortizer)}


def _train(args) -> int:
    family = get_family(args.family)
    defaults = DEFAULT_TRAINING.get(family.name, GENERIC_TRAINING)
    steps = args.steps or defaults["steps"]
    batch_size = args.batch_size or defaults["batch_size"]
    learning_rate = args.learning_rate or defaults["learning_rate"]
    architecture = {name: value for name in ARCHITECTURE_DEFAULTS
                    if (value := getattr(args, name)) is not None}
    out = Path(args.out) if args.out else checkpoint_path(family.name)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.txt"
    log_file = log_path.open("a")

    def log(line: str) -> None:
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    load_start = os.getloadavg()[0]
    cpu_start, wall_start = _cpu_seconds(), time.perf_counter()
    log(f"[train] family {family.name}: steps {steps}, batch {batch_size}, learning rate "
        f"{learning_rate}, architecture {architecture or 'default'}, seed {args.seed}; "
        f"load average {load_start:.2f}")
    amortizer = train(family, key=args.seed, steps=steps, batch_size=batch_size,
                      learning_rate=learning_rate, architecture=architecture or None,
                      checkpoint_dir=out, checkpoint_every=args.checkpoint_every,
                      resume=not args.no_resume, log_fn=log)
    wall, cpu = time.perf_counter() - wall_start, _cpu_seconds() - cpu_start
    load_end = os.getloadavg()[0]
    log(f"[train] done: {wall:.1f} s wall ({amortizer.training['wall_time']:.1f} s in the "
        f"training loop over all sessions), {cpu:.1f} CPU-seconds; load average {load_end:.2f}")
    metrics: dict[str, Any] = {
        "family": family.name,
        "command": "python -m ppl.inference.amortized.train_family " + " ".join(args.argv),
        "training": {"steps": steps, "batch_size": batch_size, "learning_rate": learning_rate,
                     "wall_seconds_this_session": round(wall, 1),
                     "training_loop_seconds": round(amortizer.training["wall_time"], 1),
                     "cpu_seconds_this_session": round(cpu, 1),
                     "final_loss": amortizer.training["loss_trace"][-1],
                     "load_average_start": round(load_start, 2),
                     "load_average_end": round(load_end, 2), "cpus": os.cpu_count()},
    }
    if not args.skip_evaluation:
        evaluation_start = time.perf_counter()
        metrics.update(measure(amortizer, num_datasets=args.num_datasets))
        metrics["evaluation_seconds"] = round(time.perf_counter() - evaluation_start, 1)
        for name, summary in metrics["scenarios"].items():
            log(f"[eval] {name}: " + json.dumps(summary))
        log("[eval] timing: " + json.dumps(metrics["timing"]))
    metrics["files_bytes"] = {path.name: path.stat().st_size for path in sorted(out.iterdir())
                              if path.suffix in (".eqx", ".json")}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    log_file.close()
    return 0


def _evaluate_command(args) -> int:
    target = Path(args.target)
    if not (target / "amortizer.json").exists():
        target = checkpoint_path(get_family(args.target).name)
    amortizer = Amortizer.load(target)
    start = time.perf_counter()
    measured = measure(amortizer, num_datasets=args.num_datasets)
    measured["evaluation_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(measured, indent=1))
    if args.write:
        path = target / "metrics.json"
        metrics = json.loads(path.read_text()) if path.exists() else {}
        metrics.update(measured)
        path.write_text(json.dumps(metrics, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m ppl.inference.amortized.train_family",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    trainer = commands.add_parser("train", help="train a family and write its checkpoint")
    trainer.add_argument("family", choices=family_names())
    trainer.add_argument("--out", help="checkpoint directory (default: the shipped one)")
    trainer.add_argument("--steps", type=int)
    trainer.add_argument("--batch-size", type=int)
    trainer.add_argument("--learning-rate", type=float)
    trainer.add_argument("--seed", type=int, default=0)
    trainer.add_argument("--width", type=int)
    trainer.add_argument("--depth", type=int)
    trainer.add_argument("--num-heads", dest="num_heads", type=int)
    trainer.add_argument("--mlp-width", dest="mlp_width", type=int)
    trainer.add_argument("--head", choices=("site", "direct"))
    trainer.add_argument("--checkpoint-every", type=int, default=1000)
    trainer.add_argument("--no-resume", action="store_true")
    trainer.add_argument("--skip-evaluation", action="store_true")
    trainer.add_argument("--num-datasets", type=int, default=512)
    evaluator = commands.add_parser("evaluate", help="measure a checkpoint")
    evaluator.add_argument("target", help="a checkpoint directory or a family name")
    evaluator.add_argument("--num-datasets", type=int, default=512)
    evaluator.add_argument("--write", action="store_true",
                           help="merge the measurements into the checkpoint's metrics.json")
    args = parser.parse_args(argv)
    args.argv = argv
    return _train(args) if args.command == "train" else _evaluate_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
