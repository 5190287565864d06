"""Checkpoints of a NUTS/HMC run, so that an interrupted run resumes with nothing lost.

The driver (:mod:`ppl.inference.mcmc.sampler`) advances all chains one compiled chunk of
steps at a time. With ``checkpoint_dir`` it writes, after every chunk,

- ``chunk_XXXXX.npz``: that chunk's positions and per-step stats;
- ``state.npz``: the carry after it (every leaf of the chains' kernel and adaptation
  states, the PRNG key) and the number of chunks completed, written after the chunk's file
  (both atomically: a temporary file, then a rename), so a kill at any moment leaves a
  consistent pair; a chunk file newer than the state is simply recomputed;
- ``manifest.json``: what the run is (engine settings, key, model, initial positions).

A second call with the same manifest loads the completed chunks and continues from the
carry: the draws equal those of an uninterrupted run, bit for bit (the chunks and keys are
the same). A directory holding another run is refused, naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["RunCheckpoint"]

FORMAT = "ppl-mcmc-checkpoint-1"


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

    def _chunk_path(self, index: int) -> Path:
        return self.directory / f"chunk_{index:05d}.npz"

    def load(self, template):
        """The completed chunks and the carry after them, or None for a fresh run.

        Args:
            template: ``(chains, key)`` of the right structure (the freshly initialised
                carry); the stored leaves replace its leaves.

        Returns:
            ``(num_completed, positions, stats, (chains, key), messages)`` or None.
        """
        path = self.directory / "state.npz"
        if not path.exists():
            return None
        with np.load(path) as state:
            completed = int(state["completed"])
            leaves = [state[f"leaf_{i}"] for i in range(int(state["num_leaves"]))]
            key_data = state["key_data"]
            messages = json.loads(str(state["messages"]))
        chains, key = template
        treedef = jax.tree_util.tree_structure(chains)
        if treedef.num_leaves != len(leaves):
            raise ValueError(f"Expected {treedef.num_leaves} state arrays in "
                             f"{str(path)!r}, got {len(leaves)}: the checkpoint is damaged.")
        chains = jax.tree_util.tree_unflatten(treedef, [jax.numpy.asarray(x) for x in leaves])
        key = jax.random.wrap_key_data(key_data, impl=jax.random.key_impl(key))
        positions, stats = [], []
        for index in range(completed):
            with np.load(self._chunk_path(index)) as chunk:
                positions.append(chunk["positions"])
                stats.append({name[len("stat_"):]: chunk[name] for name in chunk.files
                              if name.startswith("stat_")})
        return completed, positions, stats, (chains, key), messages

    def save(self, index: int, positions, stats: dict, chains, key, messages) -> None:
        """Record chunk ``index`` (its outputs, then the carry after it)."""
        _write_atomic(self._chunk_path(index), {
            "positions": np.asarray(positions),
            **{f"stat_{name}": np.asarray(value) for name, value in stats.items()}})
        leaves = jax.tree_util.tree_leaves(chains)
        _write_atomic(self.directory / "state.npz", {
            "completed": np.asarray(index + 1),
            "num_leaves": np.asarray(len(leaves)),
            **{f"leaf_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)},
            "key_data": np.asarray(jax.random.key_data(key)),
            "messages": np.asarray(json.dumps(list(messages))),
        })
