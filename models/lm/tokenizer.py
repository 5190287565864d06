"""A thin wrapper over the ``tokenizers`` package: encode, decode, stop sequences.

A step of a reasoning trace ends at a stop sequence (a newline, a blank line). The SMC
core works on token ids, so ``stop_ids`` turns stop strings into the token ids whose text
completes one; ``truncate`` cuts decoded text at the first stop sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


class Tokenizer:
    """Encoding and decoding with a Hugging Face ``tokenizer.json``.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"Expected a tokenizer.json at {str(path)!r}, got no such file.")
        return cls(HFTokenizer.from_file(str(path)))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        index = self.tokenizer.token_to_id(token)
        if index is None:
            raise ValueError(f"Expected a token in the vocabulary, got {token!r}.")
        return index

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(
        self, texts: Sequence[str], *, pad_id: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ``(batch, width)`` ids and ``(batch,)`` lengths, as ``init_state`` takes."""
        encoded = [self.encode(text) for text in texts]
        lengths = np.array([len(ids) for ids in encoded], np.int32)
        ids = np.full((len(texts), max(lengths.max(initial=1), 1)), pad_id, np.int32)
        for row, row_ids in enumerate(encoded):
            ids[row, : len(row_ids)] = row_ids
        return ids, lengths

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def stop_ids(self, stop_sequences: Sequence[str]) -> np.ndarray:
        """Ids of every token whose text contains one of ``stop_sequences``.

        A stop sequence split across several tokens (a blank line as two newline tokens) is
        caught token by token only when each piece contains it; use ``truncate`` on the
        decoded text for those.
        """
        if isinstance(stop_sequences, str):
            raise ValueError(f"Expected a sequence of strings, got the string {stop_sequences!r}.")
        ids = [
            index
            for index in range(self.vocab_size)
            if any(
                stop in self.decode([index], skip_special_tokens=False) for stop in stop_sequences
            )
        ]
        return np.array(ids, np.int32)

    @staticmethod
    def truncate(text: str, stop_sequences: Sequence[str]) -> str:
        """``text`` up to and including the first stop sequence."""
        cut = len(text)
        for stop in stop_sequences:
            found = text.find(stop)
            if found >= 0:
                cut = min(cut, found + len(stop))
        return text[:cut]
