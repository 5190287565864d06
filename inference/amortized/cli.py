"""``ppl amortize train FAMILY`` and ``ppl amortize eval CHECKPOINT``: the training script's
commands (:mod:`~ppl.inference.amortized.train_family`) under the ``ppl`` command."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "amortize", help="train and evaluate distribution transformers (amortized posteriors)",
        description="Train a family's distribution transformer (ppl amortize train FAMILY "
                    "[--out DIR] [--steps N] ...) or measure a checkpoint against the exact "
                    "posteriors (ppl amortize eval DIR_OR_FAMILY [--write]); 'ppl amortize "
                    "train --help' lists the settings.")
    parser.add_argument("action", choices=("train", "eval"))
    parser.add_argument("arguments", nargs=argparse.REMAINDER,
                        help="the family (train) or checkpoint (eval), then settings")
    return parser


def run(args) -> int:
    from .train_family import main

    return main(["train" if args.action == "train" else "evaluate", *args.arguments])
