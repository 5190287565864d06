"""Prompts to token ids, with the checks every method shares."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["encode_prompts", "round_up", "stop_ids"]


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of every prompt; refuses text the tokenizer cannot represent."""
    encoded = []
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"Expected prompt {index} to be a non-empty string, got {prompt!r}.")
        ids = list(tokenizer.encode(prompt))
        back = tokenizer.decode(ids)
        if back != prompt:
            position = next(
                (i for i, (a, b) in enumerate(zip(prompt, back, strict=False)) if a != b),
                min(len(prompt), len(back)),
            )
            character = prompt[position] if position < len(prompt) else ""
            raise ValueError(
                f"Prompt {index} has text the tokenizer cannot represent: character "
                f"{character!r} at position {position} of {prompt!r} (it decodes back as "
                f"{back!r})."
            )
        encoded.append(ids)
    return encoded


def round_up(value: int, multiple: int) -> int:
    return multiple * -(-value // multiple)


def stop_ids(tokenizer, stop) -> tuple[int, ...]:
    if isinstance(stop, str):
        stop = (stop,)
    ids = tuple(int(i) for i in tokenizer.stop_ids(list(stop)))
    if not ids:
        raise ValueError(f"Expected stop sequences the tokenizer has tokens for, got {stop!r}.")
    return ids
