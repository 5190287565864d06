"""Reading and writing local Hugging Face checkpoints (config.json plus safetensors).

Nothing is ever downloaded: ``directory`` must hold ``config.json`` and either
``model.safetensors`` or a sharded ``model.safetensors.index.json`` with its shards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from . import gpt2, qwen2

# Hugging Face architecture name -> module with from_hf(config, tensors, dtype=...).
ARCHITECTURES = {gpt2.ARCHITECTURE: gpt2, qwen2.ARCHITECTURE: qwen2}
_MODEL_TYPES = {"gpt2": gpt2.ARCHITECTURE, "qwen2": qwen2.ARCHITECTURE}


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ValueError(f"Expected a config.json in directory {str(directory)!r}, got none.")
    return json.loads(path.read_text())


def architecture_of(config: dict[str, Any]) -> str:
    names = config.get("architectures") or [_MODEL_TYPES.get(config.get("model_type"), None)]
    name = names[0] or config.get("model_type")
    if name not in ARCHITECTURES:
        raise ValueError(
            f"Unsupported architecture {name!r} in config.json; supported: "
            f"{', '.join(sorted(ARCHITECTURES))}."
        )
    return name


def read_tensors(directory: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a single-file or sharded safetensors checkpoint, as numpy arrays."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors: dict[str, np.ndarray] = {}
        for shard in shards:
            tensors.update(load_file(directory / shard))
        return tensors
    raise ValueError(
        f"Expected model.safetensors or model.safetensors.index.json in {str(directory)!r}, "
        "got neither."
    )


def load_transformer(directory: str | Path, *, dtype=jnp.float32):
    """The architecture module (``GPT2`` or ``Qwen2``) with the checkpoint's weights."""
    config = read_config(directory)
    module = ARCHITECTURES[architecture_of(config)]
    return module.from_hf(config, read_tensors(directory), dtype=dtype)


def save_qwen2(model: qwen2.Qwen2, directory: str | Path, *, storage_dtype=None,
               **extra_config: Any) -> None:
    """Writes ``model`` in the Hugging Face layout (transformers can load it back).

    ``storage_dtype`` (e.g. ``np.float16``) rounds the weights for storage; loading casts them
    back to the dtype asked for.
    """
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config, tensors = qwen2.to_hf(model)
    if storage_dtype is not None:
        tensors = {name: t.astype(storage_dtype) for name, t in tensors.items()}
    config.update(extra_config)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
