"""``ppl lm sample``: sample solutions to testbed problems and report accuracy by difficulty.

ppl lm sample --num-problems 100 --num-samples 4 --difficulties 2,4,6,8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "arith"


def _difficulties(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"Expected comma-separated integers, got {text!r}."
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"Expected difficulties >= 1, got {text!r}.")
    return values


def add_commands(commands) -> None:
    """Adds ``sample`` to the ``ppl lm`` subcommands."""
    sample = commands.add_parser("sample", help="sample N solutions, report accuracy by difficulty")
    sample.add_argument(
        "--checkpoint",
        type=Path,
        default=DEFAULT_CHECKPOINT,
        help="directory with config.json, model.safetensors (default: the testbed model)",
    )
    sample.add_argument(
        "--difficulties",
        type=_difficulties,
        default=[2, 4, 6, 8],
        help="comma-separated numbers of operations (default 2,4,6,8)",
    )
    sample.add_argument("--num-problems", type=int, default=100)
    sample.add_argument("--num-samples", type=int, default=1, help="solutions per problem (N)")
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    sample.add_argument("--show", type=int, default=0, help="print this many sampled traces")
    sample.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Runs ``ppl lm sample``; returns the exit code."""
    import jax
    import numpy as np

    from . import load
    from .testbed import evaluate, tasks

    for name in ("num_problems", "num_samples"):
        if getattr(args, name) < 1:
            raise ValueError(f"Expected {name} >= 1, got {getattr(args, name)}.")
    if args.temperature < 0:
        raise ValueError(f"Expected temperature >= 0, got {args.temperature}.")
    model = load(args.checkpoint)
    key = jax.random.key(args.seed)
    rows = evaluate.accuracy_by_difficulty(
        model,
        args.difficulties,
        key=key,
        num_problems=args.num_problems,
        num_samples=args.num_samples,
        temperature=args.temperature,
        seed=args.seed,
    )
    print(f"checkpoint: {args.checkpoint}  temperature: {args.temperature}")
    print(evaluate.format_table(rows))
    if args.show:
        rng = np.random.default_rng([args.seed, 99])
        problems = [tasks.generate(rng, d) for d in args.difficulties][: args.show]
        for problem, samples in zip(
            problems, evaluate.sample_solutions(model, problems, key=key), strict=True
        ):
            verdict = "correct" if tasks.is_correct(problem, samples[0]) else "wrong"
            print(f"\n{problem.prompt}{samples[0]}({verdict}; answer {problem.answer})")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def main(argv=None) -> int:
    """Stand-alone entry point (``python -m ppl.models.lm.cli sample ...``)."""
    parser = argparse.ArgumentParser(prog="ppl lm")
    add_commands(parser.add_subparsers(dest="lm_command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
