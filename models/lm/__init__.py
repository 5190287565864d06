"""Language models in JAX behind the token-likelihood adapter.

``load(directory)`` reads a local Hugging Face checkpoint (GPT-2 or Qwen2) and returns a
:class:`TransformerTokenModel`; ``load_tokenizer(directory)`` reads its ``tokenizer.json``.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp

from .adapter import TransformerTokenModel
from .loading import ARCHITECTURES, load_transformer, read_config
from .tokenizer import Tokenizer

__all__ = ["ARCHITECTURES", "TransformerTokenModel", "Tokenizer", "load", "load_tokenizer"]


def load(directory: str | Path, *, dtype=jnp.float32) -> TransformerTokenModel:
    """Loads a local checkpoint behind the token adapter (float32 by default; bfloat16 on GPU).

    The end-of-sequence ids come from ``eos_token_id`` in config.json, when it has one.
    """
    config = read_config(directory)
    eos = config.get("eos_token_id")
    end_ids = () if eos is None else tuple(eos) if isinstance(eos, list) else (int(eos),)
    return TransformerTokenModel(load_transformer(directory, dtype=dtype), end_ids=end_ids)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer in ``directory/tokenizer.json``."""
    return Tokenizer.from_file(Path(directory) / "tokenizer.json")
