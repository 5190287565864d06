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


def _example(rng: np.random.Generator, *, max_difficulty: int, slip_scale: float, slip_rate):
    """One noisy example: its ids, its loss mask and its step labels (unpadded lists)."""
    problem = tasks.generate(rng, int(rng.integers(1, max_difficulty + 1)))
    solution = tasks.noisy_solution(rng, problem, slip_scale=slip_scale, slip_rate=slip_rate)
    prompt_ids = encode(problem.prompt)
    ids = prompt_ids + encode(solution) + [EOS_ID]
    loss_mask = [0.0] * len(prompt_ids) + [1.0] * (len(ids) - len(prompt_ids))
    step_ends = [-1] * len(ids)
    position = len(prompt_ids) - 1
    for label, line in zip(
        tasks.step_labels(problem, solution), solution.split("\n"), strict=False
    ):
        position += len(line) + 1
        step_ends[position] = int(label)
    return ids, loss_mask, step_ends, problem, solution


def _pad(examples, length: int):
    ids = np.full((len(examples), length), PAD_ID, np.int32)
    loss_mask = np.zeros((len(examples), length), np.float32)
    step_ends = np.full((len(examples), length), -1, np.int32)
    for row, (row_ids, row_mask, row_ends, *_) in enumerate(examples):
        count = min(len(row_ids), length)
        ids[row, :count] = row_ids[:count]
        loss_mask[row, :count] = row_mask[:count]
        step_ends[row, :count] = row_ends[:count]
    return ids, loss_mask, step_ends


def training_batch(
    rng: np.random.Generator,
    batch: int,
    length: int,
    *,
    max_difficulty: int,
    slip_scale: float = 1.0,
    slip_rate: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tasks.Problem], list[str]]:
    """Right-padded prompt+solution+eos ids (difficulty uniform in 1..max_difficulty).

    Slips as in :func:`tasks.noisy_solution` (``slip_scale``, ``slip_rate``).

    Returns:
        ``(ids, loss_mask, step_ends, problems, solutions)``: ``(batch, length)`` ids
        (longer examples are truncated), a mask that is 1 on the solution's tokens (the
        targets), ``(batch, length)`` labels at each solution line's newline (1 correct
        prefix, 0 wrong, -1 elsewhere).
    """
    examples = [
        _example(rng, max_difficulty=max_difficulty, slip_scale=slip_scale, slip_rate=slip_rate)
        for _ in range(batch)
    ]
    return (
        *_pad(examples, length),
        [e[3] for e in examples],
        [e[4] for e in examples],
    )


def bucketed_batches(
    rng: np.random.Generator,
    batch: int,
    *,
    num_batches: int,
    buckets: tuple[int, ...],
    max_difficulty: int,
    slip_scale: float = 1.0,
    slip_rate: float | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``num_batches`` batches cut from one pool sorted by length, in random order.

    Most examples are far shorter than the longest, so padding every batch to one length
    wastes most of the compute. Sorting a pool of ``batch * num_batches`` examples by length
    groups similar lengths together; each batch is padded to the smallest of ``buckets``
    that holds its longest example, so a jitted step compiles once per bucket only. Every
    example still has difficulty uniform in ``1 .. max_difficulty``; only which examples
    share a batch changes.

    Returns:
        ``(ids, loss_mask, step_ends)`` per batch, as in :func:`training_batch`.
    """
    if batch < 1 or num_batches < 1:
        raise ValueError(f"Expected batch and num_batches >= 1, got {batch} and {num_batches}.")
    if not buckets or list(buckets) != sorted(buckets):
        raise ValueError(f"Expected buckets a non-empty increasing tuple, got {buckets!r}.")
    examples = sorted(
        (
            _example(rng, max_difficulty=max_difficulty, slip_scale=slip_scale, slip_rate=slip_rate)
            for _ in range(batch * num_batches)
        ),
        key=lambda e: len(e[0]),
    )
    batches = []
    for index in range(num_batches):
        chunk = examples[index * batch : (index + 1) * batch]
        longest = len(chunk[-1][0])
        # The largest bucket truncates anything longer (none of the testbed's problems are).
        length = next((b for b in buckets if b >= longest), buckets[-1])
        batches.append(_pad(chunk, length))
    return [batches[i] for i in rng.permutation(num_batches)]
