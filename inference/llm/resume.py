"""Resumable LLM runs: each finished batch of problems recorded, and restored on a rerun.

``ppl.inference.llm.run(..., checkpoint_dir=DIR)`` records every batch's final particles as
one block of :class:`ppl.inference.checkpoint.RunCheckpoint` (atomic writes, a manifest
that refuses another run, naming what differs). A problem's draws depend on the key and its
position only, so a rerun after an interruption skips the recorded batches and computes the
rest: the result equals an uninterrupted run's. A batch is the unit: an interrupted batch
is recomputed whole.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import numpy as np
from ppl.inference.checkpoint import RunCheckpoint
from ppl.inference.llm.driver import BatchOutput, Budget
from ppl.inference.llm.job import MethodOutput

__all__ = ["open_checkpoint", "record", "restore"]

_BATCH_FIELDS = ("tokens", "length", "step_lengths", "num_steps", "num_scored", "score",
                 "finished", "log_weights", "log_evidence", "collapsed")


def _digest(parts: Sequence[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def _arrays_digest(tree) -> str:
    leaves = jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array))
    return _digest([np.ascontiguousarray(np.asarray(leaf)).tobytes() for leaf in leaves])


def open_checkpoint(directory, *, method: str, prompts: Sequence[str], key, model, reward,
                    settings: dict, groups: int, multi_process: bool) -> RunCheckpoint:
    """The run's checkpoint directory, refusing one that holds another run (other method,
    settings, key, prompts, language model or reward weights, or batch size)."""
    manifest = {
        "engine": "llm",
        "method": method,
        "settings": {k: _describe(v) for k, v in settings.items()},
        "key": np.asarray(jax.random.key_data(key)).tolist(),
        "prompts": _digest([p.encode() for p in prompts]),
        "num_prompts": len(prompts),
        "problems_per_batch": groups,
        "language_model": _arrays_digest(model),
        "reward_arrays": None if reward is None else _arrays_digest(reward),
    }
    return RunCheckpoint(directory, manifest, multi_process=multi_process)


def _describe(value):
    """A setting as the manifest keeps it: a function by its name (its repr holds an
    address that changes from process to process)."""
    if isinstance(value, int | float | str | bool | type(None)):
        return value
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return repr(value)


def record(out: MethodOutput) -> dict[str, np.ndarray]:
    """One batch's result as named arrays (``extra`` as JSON, arrays tagged)."""
    batch = out.batch
    arrays = {f"batch.{name}": np.asarray(getattr(batch, name)) for name in _BATCH_FIELDS}
    arrays["budget.tokens"] = np.asarray(batch.budget.tokens)
    arrays["budget.reward_calls"] = np.asarray(batch.budget.reward_calls)
    arrays["budget.forward_passes"] = np.asarray(batch.budget.forward_passes)
    for name, value in batch.history.items():
        arrays[f"history.{name}"] = np.asarray(value)
    arrays["selection_weights"] = np.asarray(out.selection_weights)
    arrays["select"] = np.asarray(out.select)
    if out.log_evidence is not None:
        arrays["log_evidence"] = np.asarray(out.log_evidence)
    arrays["extra"] = np.asarray(json.dumps(_encode(out.extra)))
    return arrays


def restore(arrays: dict[str, np.ndarray]) -> MethodOutput:
    """The batch result that :func:`record` recorded."""
    batch = BatchOutput(
        **{name: arrays[f"batch.{name}"] for name in _BATCH_FIELDS},
        budget=Budget(arrays["budget.tokens"], arrays["budget.reward_calls"],
                      int(arrays["budget.forward_passes"])),
        history={name.split(".", 1)[1]: value for name, value in arrays.items()
                 if name.startswith("history.")},
    )
    return MethodOutput(batch, arrays["selection_weights"], str(arrays["select"]),
                        arrays.get("log_evidence"), _decode(json.loads(str(arrays["extra"]))))


def _encode(value: Any):
    """JSON for method records: arrays (and numpy scalars) tagged with their dtype."""
    if isinstance(value, np.ndarray | np.generic):
        return {"__array__": np.asarray(value).tolist(), "dtype": str(np.asarray(value).dtype)}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, int | float | str | bool | type(None)):
        return value
    raise TypeError(f"Cannot record a method's {type(value).__name__} in a checkpoint.")


def _decode(value: Any):
    if isinstance(value, dict):
        if "__array__" in value:
            return np.asarray(value["__array__"], dtype=value["dtype"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value
