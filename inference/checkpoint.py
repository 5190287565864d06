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

Under ``jax.distributed``, when the batch spans several processes (``multi_process=True``),
every process holds the same gathered values of what is recorded, so process 0 alone writes
the files and every process waits for it at a barrier after each record; on resume every
process reads the directory itself. It must therefore be on a filesystem that all the
processes share (a cluster's shared disk): a process that reads other content there than
process 0 (no manifest where process 0 found one, another state) is refused, on every
process, naming the directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ppl.sharding import gather_to_host

__all__ = ["RunCheckpoint", "fingerprint", "describe_model"]

FORMAT = "ppl-checkpoint-1"


def _write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # A name of this process's own: two processes recording into one directory (each running
    # the whole batch, devices="local") never write into each other's half-written file.
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
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
        multi_process: the run's batch spans the processes of a ``jax.distributed`` job:
            every process must then construct this and call :meth:`save` alike (both hold
            collectives); process 0 writes, all read.
    """

    def __init__(self, directory: str | os.PathLike, manifest: dict[str, Any],
                 multi_process: bool = False):
        self.directory = Path(directory)
        self.manifest = {"format": FORMAT, **json.loads(json.dumps(manifest))}
        self.multi_process = multi_process
        # Every process records the same values: one writer is enough, and two would race.
        self.writes = not multi_process or jax.process_index() == 0
        if not multi_process:
            self._open()
            return
        error = None
        if self.writes:
            try:
                self._open()
            except (ValueError, OSError) as caught:
                error = caught
        # Also the barrier that keeps the other processes from reading before the manifest
        # is written.
        if not _all_processes_ok(error is None):
            raise error or ValueError(
                f"checkpoint_dir={str(self.directory)!r} was refused on process 0 (its error "
                "says why); nothing was read here.")
        self._check_same_content()

    def _open(self) -> None:
        """Create the directory and write the manifest, or check the one already there."""
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
            temporary = path.with_name(f"manifest.json.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(self.manifest, indent=1))
            os.replace(temporary, path)

    def _check_same_content(self) -> None:
        """Refuse, on every process, a directory that a process reads differently from
        process 0 (not shared, or a stale copy): the processes would resume from different
        blocks and their collectives would no longer match."""
        from jax.experimental import multihost_utils

        # What this process sees: the manifest (0 none, 1 this run's, 2 another), the
        # completed blocks (-1: no state, -2: unreadable) and a hash of the state file.
        manifest = self.directory / "manifest.json"
        kind = 0
        if manifest.is_file():
            try:
                kind = 1 if json.loads(manifest.read_text()) == self.manifest else 2
            except ValueError:
                kind = 2
        state = self.directory / "state.npz"
        completed, digest = -1, bytes(8)
        if state.is_file():
            digest = hashlib.sha256(state.read_bytes()).digest()[:8]
            try:
                with np.load(state) as stored:
                    completed = int(stored["completed"])
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                completed = -2
        mine = np.concatenate([np.array([kind, completed], np.int32),
                               np.frombuffer(digest, np.int32)])
        seen = np.asarray(multihost_utils.process_allgather(mine))  # (process, 4)
        differ = [p for p in range(len(seen)) if not np.array_equal(seen[p], seen[0])]
        if not differ:
            return

        def describe(row) -> str:
            what = ("no manifest.json", "this run's manifest.json",
                    "another run's manifest.json")[row[0]]
            if row[1] == -1:
                return what + " and no state.npz"
            if row[1] == -2:
                return what + " and an unreadable state.npz"
            return f"{what} and a state.npz of {row[1]} completed block(s)"

        found = "; ".join(
            f"process {p} reads {describe(seen[p])}"
            + (" but other bytes" if describe(seen[p]) == describe(seen[0]) else "")
            for p in differ)
        raise ValueError(
            f"Expected every process to read the same checkpoint_dir={str(self.directory)!r} "
            "(process 0 writes it and every process reads it, so it must be on a filesystem "
            f"shared by all the processes), got: process 0 reads {describe(seen[0])}; "
            f"{found}. This is process {jax.process_index()}.")

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
        """Record block ``index``: its outputs, then the carry after it.

        Under several processes every process must call this (with the same values): the
        arrays are gathered on each (a collective), process 0 writes them, and all wait
        until it has.
        """
        host = {name: _to_host(value) for name, value in outputs.items()}
        leaves = [_to_host(leaf) for leaf in jax.tree_util.tree_leaves(carry)]
        if not self.multi_process:
            self._write(index, host, leaves, messages)
            return
        error = None
        if self.writes:
            try:
                self._write(index, host, leaves, messages)
            except OSError as caught:
                error = caught
        # No process runs ahead of the write (a later failure would leave it unrecorded).
        if not _all_processes_ok(error is None):
            raise error or OSError(
                f"Process 0 could not record block {index} in checkpoint_dir="
                f"{str(self.directory)!r} (its error says why).")

    def _write(self, index: int, outputs: dict, leaves: list, messages) -> None:
        _write_atomic(self._block_path(index), outputs)
        _write_atomic(self.directory / "state.npz", {
            "completed": np.asarray(index + 1),
            "num_leaves": np.asarray(len(leaves)),
            **{f"leaf_{i}": leaf for i, leaf in enumerate(leaves)},
            "messages": np.asarray(json.dumps(list(messages))),
        })


def _to_host(leaf) -> np.ndarray:
    """A leaf as a numpy array (PRNG keys as their key data), gathered from every process
    when it is sharded over several (every process must call this in the same order)."""
    return np.asarray(gather_to_host(jax.random.key_data(leaf) if _is_key(leaf) else leaf))


def _all_processes_ok(ok: bool) -> bool:
    """A barrier across all processes (as ``multihost_utils.sync_global_devices``) that also
    says whether every one of them got there with ``ok``: a failed write on process 0 then
    stops every process instead of leaving the others waiting on it."""
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
