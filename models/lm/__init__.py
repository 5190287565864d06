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

__all__ = [
    "ARCHITECTURES",
    "DTYPES",
    "TransformerTokenModel",
    "Tokenizer",
    "load",
    "load_tokenizer",
]


# Weight and activation dtypes the models support. Whatever the dtype, attention scores,
# softmax and norms are computed in float32, and logits come out in float32.
DTYPES = ("float32", "bfloat16")


def load(directory: str | Path, *, dtype=jnp.float32) -> TransformerTokenModel:
    """Loads a local checkpoint behind the token adapter.

    Args:
        directory: a local Hugging Face layout (config.json, safetensors).
        dtype: of the weights, activations and KV cache: ``jnp.float32`` (the default; use
            it on CPU) or ``jnp.bfloat16`` (half the memory and faster on GPU; logits and
            log-probabilities are still returned in float32). A name ("bfloat16") works too.

    The end-of-sequence ids come from ``eos_token_id`` in config.json, when it has one.
    """
    try:
        name = jnp.dtype(dtype).name
    except TypeError:
        name = repr(dtype)
    if name not in DTYPES:
        raise ValueError(f"Expected dtype one of {', '.join(DTYPES)}, got {name}.")
    dtype = jnp.dtype(name)
    config = read_config(directory)
    eos = config.get("eos_token_id")
    end_ids = () if eos is None else tuple(eos) if isinstance(eos, list) else (int(eos),)
    return TransformerTokenModel(load_transformer(directory, dtype=dtype), end_ids=end_ids)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer in ``directory/tokenizer.json``."""
    return Tokenizer.from_file(Path(directory) / "tokenizer.json")
