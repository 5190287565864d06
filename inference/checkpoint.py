"""Checkpoints of a long run, so that an interrupted run resumes with nothing lost.

An engine that advances in blocks (NUTS/HMC: a compiled chunk of steps; tempered SMC: one
temperature) records, after every block,

- ``block_XXXXX.npz``: that block's outputs (named arrays: draws, stats);
- ``state.npz``: the carry after it (every leaf of the engine's state pytree, PRNG keys as
  their key data) and the number of blocks completed, written after the block's file (both
  atomically: a temporary file, then a rename), so a kill at any moment leaves a
  consistent pair; a block file newer than the state is simply recomputed;
- ``manifest.json``: what the run is (engine settings, key, model, initial points).

A second call with the same manifest loads the completed blocks and continues from the
carry: the result equals an uninterrupted run's, bit for bit (the blocks and keys are the
same). A directory holding another run is refused, naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["RunCheckpoint", "fingerprint", "describe_model"]

FORMAT = "ppl-checkpoint-1"


def _write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    temporary = path.with_name(path.name + ".tmp.npz")
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def fingerprint(array) -> str:
    """A short hash of an array's bytes (initial positions in the manifest)."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(array)).tobytes()).hexdigest()[:16]


def describe_model(model) -> dict:
    """The model's part of a manifest: its kind, its sites and a hash of its arrays (data
    included), so that a run is not resumed on another data set."""
    import equinox as eqx

    arrays = [a for a in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))
              if not _is_key(a)]
    flat = (np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in arrays]) if arrays
            else np.zeros(0))
    return {"model": type(model).__name__,
            "sites": [[site.name, list(site.shape)] for site in getattr(model, "sites", ())],
            "model_arrays": fingerprint(flat)}


class RunCheckpoint:
    """One run's checkpoint directory (see the module docstring).

    Args:
        directory: where the files live (created if absent).
        manifest: a JSON-ready description of the run; a directory holding another
            manifest is refused, naming the differing entries.
    """

    def __init__(self, directory: str | os.PathLike, manifest: dict[str, Any]):
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"Expected checkpoint_dir to be a directory, got the file "
                             f"{str(self.directory)!r}.")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"Cannot create checkpoint_dir {str(self.directory)!r}: "
                             f"{error.strerror or error}.") from error
        if not os.access(self.directory, os.W_OK):
            raise ValueError(f"Expected a writable checkpoint_dir, got {str(self.directory)!r}.")
        self.manifest = {"format": FORMAT, **json.loads(json.dumps(manifest))}
        path = self.directory / "manifest.json"
        if path.exists():
            previous = json.loads(path.read_text())
            if previous != self.manifest:
                changed = sorted(k for k in set(previous) | set(self.manifest)
                                 if previous.get(k) != self.manifest.get(k))
                raise ValueError(
                    f"Expected checkpoint_dir={str(self.directory)!r} to hold this run to "
                    f"resume, got a run that differs in {changed}; use another directory "
                    "(nothing there was changed).")
        else:
            temporary = path.with_name("manifest.json.tmp")
            temporary.write_text(json.dumps(self.manifest, indent=1))
            os.replace(temporary, path)

    def _block_path(self, index: int) -> Path:
        return self.directory / f"block_{index:05d}.npz"

    def load(self, template):
        """The completed blocks and the carry after them, or None for a fresh run.

        Args:
            template: a carry of the right structure (the freshly initialised one); the
                stored leaves replace its leaves (PRNG keys keep the template's kind).

        Returns:
            ``(num_completed, outputs, carry, messages)`` with ``outputs`` one dictionary of
            arrays per completed block, or None.
        """
        path = self.directory / "state.npz"
        if not path.exists():
            return None
        leaves, treedef = jax.tree_util.tree_flatten(template)
        with np.load(path) as state:
            completed = int(state["completed"])
            stored = [state[f"leaf_{i}"] for i in range(int(state["num_leaves"]))]
            messages = json.loads(str(state["messages"]))
        if len(stored) != len(leaves):
            raise ValueError(f"Expected {len(leaves)} state arrays in {str(path)!r}, got "
                             f"{len(stored)}: the checkpoint is damaged or of another engine.")
        restored = [jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf))
                    if _is_key(leaf) else jax.numpy.asarray(value)
                    for value, leaf in zip(stored, leaves, strict=True)]
        outputs = []
        for index in range(completed):
            with np.load(self._block_path(index)) as block:
                outputs.append({name: block[name] for name in block.files})
        return completed, outputs, jax.tree_util.tree_unflatten(treedef, restored), messages

    def save(self, index: int, outputs: dict, carry, messages=()) -> None:
        """Record block ``index``: its outputs, then the carry after it."""
        _write_atomic(self._block_path(index),
                      {name: np.asarray(value) for name, value in outputs.items()})
        leaves = jax.tree_util.tree_leaves(carry)
        _write_atomic(self.directory / "state.npz", {
            "completed": np.asarray(index + 1),
            "num_leaves": np.asarray(len(leaves)),
            **{f"leaf_{i}": np.asarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf)
               for i, leaf in enumerate(leaves)},
            "messages": np.asarray(json.dumps(list(messages))),
        })


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
