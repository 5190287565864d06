"""The testbed's character tokenizer and training batches.

One token per character, plus ``<pad>`` (id 0) and ``<eos>`` (id 1). The tokenizer is an
ordinary ``tokenizer.json`` (a BPE model with no merges), so the generic
:class:`ppl.models.lm.Tokenizer` reads it like any Hugging Face tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import tasks

PAD, EOS = "<pad>", "<eos>"
CHARACTERS = "0123456789+-*= \nQA"
VOCAB = [PAD, EOS, *CHARACTERS]
PAD_ID, EOS_ID = 0, 1
NEWLINE_ID = VOCAB.index("\n")
_IDS = {token: index for index, token in enumerate(VOCAB)}


def build_tokenizer():
    """A ``tokenizers.Tokenizer`` over ``VOCAB``."""
    from tokenizers import Tokenizer, decoders, models

    tokenizer = Tokenizer(models.BPE(vocab=dict(_IDS), merges=[]))
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([PAD, EOS])
    return tokenizer


def save_tokenizer(directory: str | Path) -> None:
    build_tokenizer().save(str(Path(directory) / "tokenizer.json"))


def encode(text: str) -> list[int]:
    """Fast path equal to the tokenizer's encoding for testbed text."""
    try:
        return [_IDS[character] for character in text]
    except KeyError as error:
        raise ValueError(
            f"Expected testbed characters {CHARACTERS!r}, got {error.args[0]!r}."
        ) from None


def decode(ids) -> str:
    return "".join(VOCAB[i] for i in ids if i > EOS_ID)


def training_batch(
    rng: np.random.Generator,
    batch: int,
    length: int,
    *,
    max_difficulty: int,
    slip_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tasks.Problem], list[str]]:
    """Right-padded prompt+solution+eos ids.

    Returns:
        ``(ids, loss_mask, step_ends, problems, solutions)``: ``(batch, length)`` ids,
        a mask that is 1 on the solution's tokens (the targets), ``(batch, length)`` labels
        at each solution line's newline (1 correct prefix, 0 wrong, -1 elsewhere).
    """
    ids = np.full((batch, length), PAD_ID, np.int32)
    loss_mask = np.zeros((batch, length), np.float32)
    step_ends = np.full((batch, length), -1, np.int32)
    problems, solutions = [], []
    for row in range(batch):
        problem = tasks.generate(rng, int(rng.integers(1, max_difficulty + 1)))
        solution = tasks.noisy_solution(rng, problem, slip_scale=slip_scale)
        prompt_ids, solution_ids = encode(problem.prompt), encode(solution) + [EOS_ID]
        row_ids = (prompt_ids + solution_ids)[:length]
        ids[row, : len(row_ids)] = row_ids
        loss_mask[row, len(prompt_ids) : len(row_ids)] = 1.0
        position = len(prompt_ids) - 1
        for label, line in zip(
            tasks.step_labels(problem, solution), solution.split("\n"), strict=False
        ):
            position += len(line) + 1
            if position < length:
                step_ends[row, position] = int(label)
        problems.append(problem)
        solutions.append(solution)
    return ids, loss_mask, step_ends, problems, solutions
