"""``ppl anesi train --digits N --out DIR`` and ``ppl anesi eval DIR`` (or ``--digits N`` for the
shipped checkpoint).

Wiring: this module follows ``ppl/cli.py``'s plugin protocol (``add_parser(subparsers)`` and
``run(args)``), so hooking it in is one entry of ``_PLUGINS`` there::

    "anesi": "ppl.inference.amortized.anesi.cli",

It also runs on its own: ``python -m ppl.inference.amortized.anesi.cli train --digits 1
--out /tmp/anesi1`` (or ``main(["train", "--digits", "1", "--out", DIR])`` from Python).

``train`` trains A-NeSI on ``Addition(N)`` (the training split only), saves the checkpoint to
``DIR``, evaluates it on the test split and records the result in ``DIR/anesi.json``; ``eval``
prints a checkpoint's test accuracy as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser", "run", "main", "build_parser"]


def _add_commands(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="action", required=True)
    train = commands.add_parser("train", help="train A-NeSI on N-digit addition",
                                description="Train A-NeSI on addition of two N-digit numbers "
                                            "of scikit-learn 8x8 digits.")
    train.add_argument("--digits", type=int, required=True, help="N, digits per number")
    train.add_argument("--out", required=True, help="checkpoint folder to write")
    train.add_argument("--steps", type=int, help="joint steps")
    train.add_argument("--prior-steps", type=int, help="inference-model steps on the prior")
    train.add_argument("--batch-size", type=int, help="task examples per joint step")
    train.add_argument("--explanation-steps", type=int,
                       help="steps of the explanation model (0: predict-only checkpoint)")
    train.add_argument("--seed", type=int, help="the training key's seed")
    train.add_argument("--num-examples", type=int, default=1000,
                       help="test examples for the final evaluation")
    evaluate = commands.add_parser("eval", help="test accuracy of a checkpoint",
                                   description="Print a checkpoint's test-split accuracy (JSON).")
    evaluate.add_argument("checkpoint", nargs="?",
                          help="a folder written by 'ppl anesi train' (or use --digits)")
    evaluate.add_argument("--digits", type=int,
                          help="evaluate the shipped checkpoint for N-digit addition")
    evaluate.add_argument("--num-examples", type=int, default=1000)
    evaluate.add_argument("--beam-width", type=int, default=1)
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the test examples")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``anesi`` under the ``ppl`` command's subparsers."""
    parser = subparsers.add_parser(
        "anesi", help="A-NeSI neurosymbolic inference on multi-digit addition",
        description="Train (ppl anesi train --digits N --out DIR) or evaluate "
                    "(ppl anesi eval DIR) A-NeSI on addition of 8x8 digit images.")
    _add_commands(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppl anesi")
    _add_commands(parser)
    return parser


def run(args) -> int:
    import dataclasses

    from .programs import Addition
    from .train import ANeSI, TrainingSettings, checkpoint_path, evaluate, load_pretrained, train

    try:
        if args.action == "train":
            overrides = {name: getattr(args, name) for name in
                         ("steps", "prior_steps", "batch_size", "explanation_steps", "seed")
                         if getattr(args, name) is not None}
            settings = dataclasses.replace(TrainingSettings(), **overrides)
            model = train(Addition(args.digits), settings=settings,
                          log_fn=lambda line: print(line, file=sys.stderr, flush=True))
            metrics = evaluate(model, num_examples=args.num_examples)
            model = dataclasses.replace(model, record={**model.record, "test": metrics})
            model.save(args.out)
            print(json.dumps({"checkpoint": str(args.out), **metrics}, indent=2))
        else:
            if (args.checkpoint is None) == (args.digits is None):
                raise ValueError("give a checkpoint folder or --digits N (the shipped "
                                 "checkpoint), not both and not neither")
            model = (load_pretrained(args.digits) if args.checkpoint is None
                     else ANeSI.load(args.checkpoint))
            metrics = evaluate(model, num_examples=args.num_examples, seed=args.seed,
                               beam_width=args.beam_width)
            where = args.checkpoint or str(checkpoint_path(args.digits))
            print(json.dumps({"checkpoint": where,
                              "program": model.program.describe(), **metrics}, indent=2))
    except (ValueError, FileNotFoundError) as error:
        print(f"ppl anesi: error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """``ppl anesi`` with ``argv`` (``sys.argv[1:]`` if ``None``); returns the exit status."""
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
