"""Process reward models for the arithmetic testbed: the oracle and a learned one.

A PRM scores a partial trace: the probability that every step so far is correct. The
oracle knows (it runs the exact checker, ``tasks.step_labels``); the learned PRM is a small
Qwen2 body with a one-unit head read at the newline that ends each step, trained on
labelled noisy traces. Its mistakes are what a real PRM's would be: it must redo the
arithmetic to judge it, and it is measured against the oracle by ``train.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from .. import qwen2
from . import data, tasks


class OraclePRM:
    """Exact step checker: 1 for a prefix whose steps are all correct, 0 otherwise."""

    def step_scores(self, problem: tasks.Problem, trace: str) -> np.ndarray:
        """Score after each complete line of ``trace`` (text after the prompt)."""
        return np.asarray(tasks.step_labels(problem, trace), np.float32)

    def score(self, problem: tasks.Problem, trace: str) -> float:
        """Score of the prefix up to its last complete line (1 for an empty prefix)."""
        scores = self.step_scores(problem, trace)
        return float(scores[-1]) if len(scores) else 1.0


class LearnedPRM(eqx.Module):
    """A Qwen2 body and a logistic head read at each position.

    Attributes:
        body: the transformer (its output head is unused).
        head_weight: ``(hidden,)``.
        head_bias: scalar.
    """

    body: qwen2.Qwen2
    head_weight: Float[Array, " hidden"]
    head_bias: Float[Array, ""]

    def logits(
        self, token_ids: Int[Array, "batch length"], *, unroll: bool = False
    ) -> Float[Array, "batch length"]:
        """Correctness logit of the prefix ending at each position (read it at newlines).

        ``unroll`` unrolls the loop over layers (as in ``Qwen2.hidden``; used in training).
        """
        batch, length = token_ids.shape
        positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
        hidden, _ = self.body.hidden(token_ids, positions, None, None, unroll=unroll)
        return (hidden @ self.head_weight + self.head_bias).astype(jnp.float32)

    def step_scores(self, problem: tasks.Problem, trace: str) -> np.ndarray:
        """Probability of a correct prefix after each complete line of ``trace``."""
        return self.step_scores_batch([problem], [trace])[0]

    def step_scores_batch(self, problems, traces) -> list[np.ndarray]:
        """``step_scores`` for many traces in one jitted call (padded to a multiple of 64)."""
        encoded = [data.encode(p.prompt + t) for p, t in zip(problems, traces, strict=True)]
        width = 64 * -(-max(len(ids) for ids in encoded) // 64)
        ids = np.full((len(encoded), width), data.PAD_ID, np.int32)
        for row, row_ids in enumerate(encoded):
            ids[row, : len(row_ids)] = row_ids
        probs = np.asarray(jax.nn.sigmoid(_logits(self, jnp.asarray(ids))))
        scores = []
        for row, row_ids in enumerate(encoded):
            ends = [i for i, token in enumerate(row_ids) if token == data.NEWLINE_ID][1:]
            scores.append(probs[row, ends])
        return scores

    def score(self, problem: tasks.Problem, trace: str) -> float:
        scores = self.step_scores(problem, trace)
        return float(scores[-1]) if len(scores) else 1.0


@eqx.filter_jit
def _logits(prm: LearnedPRM, ids):
    return prm.logits(ids)


def init(key, config: qwen2.Qwen2Config) -> LearnedPRM:
    return LearnedPRM(qwen2.init(key, config), jnp.zeros((config.hidden_size,)), jnp.zeros(()))


def save(prm: LearnedPRM, directory: str | Path) -> None:
    """Hugging Face layout, as ``Qwen2ForTokenClassification`` with one label."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config, tensors = qwen2.to_hf(prm.body)
    tensors.pop("lm_head.weight", None)
    config.update(architectures=["Qwen2ForTokenClassification"], num_labels=1)
    tensors["score.weight"] = np.asarray(prm.head_weight, np.float32)[None]
    tensors["score.bias"] = np.asarray(prm.head_bias, np.float32)[None]
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def load(directory: str | Path) -> LearnedPRM:
    from safetensors.numpy import load_file

    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    tensors = load_file(directory / "model.safetensors")
    body = qwen2.from_hf({**config, "tie_word_embeddings": True}, tensors, dtype=jnp.float32)
    return LearnedPRM(
        body, jnp.asarray(tensors["score.weight"][0]), jnp.asarray(tensors["score.bias"][0])
    )
