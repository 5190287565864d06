"""Trains the testbed's language model and learned PRM, evaluates both, writes checkpoints.

    python -m ppl.models.lm.testbed.train --out models/lm/checkpoints

writes ``arith/`` (the Qwen2 language model, config.json, model.safetensors, tokenizer.json)
and ``arith_prm/`` (the learned PRM), plus ``metrics.json`` beside them: accuracy by
difficulty and the PRM's agreement with the oracle. The defaults regenerate the shipped
checkpoint; on 2 CPU cores they take well under 30 minutes (the time is recorded in
metrics.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import loading, qwen2
from ..adapter import TransformerTokenModel
from . import data, evaluate, prm, tasks

LM_CONFIG = qwen2.Qwen2Config(
    vocab_size=len(data.VOCAB),
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    rope_theta=10000.0,
    tie_word_embeddings=True,
    max_position_embeddings=256,
)
PRM_CONFIG = qwen2.Qwen2Config(
    vocab_size=len(data.VOCAB),
    hidden_size=96,
    intermediate_size=192,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=24,
    tie_word_embeddings=True,
    max_position_embeddings=256,
)
MAX_DIFFICULTY = 8
SEQUENCE_LENGTH = 136


def lm_loss(model: qwen2.Qwen2, ids, mask):
    """Mean negative log-likelihood of the solution tokens."""
    inputs = ids[:, :-1]
    positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)
    logits, _ = model(inputs, positions, None, None)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]
    weights = mask[:, 1:]
    return (nll * weights).sum() / weights.sum()


def prm_loss(model: prm.LearnedPRM, ids, labels):
    """Logistic loss at the newline that ends each step (labels -1 elsewhere)."""
    logits = model.logits(ids)
    where = labels >= 0
    targets = jnp.where(where, labels, 0).astype(jnp.float32)
    losses = optax.sigmoid_binary_cross_entropy(logits, targets)
    return jnp.where(where, losses, 0.0).sum() / where.sum()


def _optimizer(steps: int, learning_rate: float):
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        learning_rate,
        warmup_steps=min(100, steps // 10),
        decay_steps=steps,
        end_value=learning_rate * 0.05,
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))


def fit(model, loss_fn, batch_fn, *, steps: int, learning_rate: float, log_every: int, name: str):
    """Adam on ``loss_fn(model, *batch_fn())`` for ``steps`` steps."""
    optimizer = _optimizer(steps, learning_rate)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, opt_state, *batch):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    start, losses = time.perf_counter(), []
    for index in range(steps):
        model, opt_state, loss = step(model, opt_state, *batch_fn())
        losses.append(float(loss))
        if (index + 1) % log_every == 0 or index == 0:
            recent = np.mean(losses[-log_every:])
            print(
                f"[{name}] step {index + 1}/{steps} loss {recent:.4f} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return model, {
        "steps": steps,
        "final_loss": float(np.mean(losses[-100:])),
        "seconds": time.perf_counter() - start,
    }


def evaluate_prm(learned: prm.LearnedPRM, problems, traces) -> dict:
    """The learned PRM's step scores against the oracle's labels."""
    oracle = prm.OraclePRM()
    scores, labels = [], []
    for start in range(0, len(problems), 100):
        chunk = slice(start, start + 100)
        batch_scores = learned.step_scores_batch(problems[chunk], traces[chunk])
        for problem, trace, step_scores in zip(
            problems[chunk], traces[chunk], batch_scores, strict=True
        ):
            step_labels = oracle.step_scores(problem, trace)
            count = min(len(step_scores), len(step_labels))
            scores.extend(step_scores[:count])
            labels.extend(step_labels[:count])
    scores, labels = np.asarray(scores), np.asarray(labels).astype(bool)
    predicted = scores >= 0.5
    return {
        "num_steps": int(len(labels)),
        "fraction_correct_steps": float(labels.mean()),
        "accuracy": float((predicted == labels).mean()),
        "auc": _auc(scores, labels),
        "false_accept_rate": float(predicted[~labels].mean()) if (~labels).any() else None,
        "false_reject_rate": float((~predicted[labels]).mean()) if labels.any() else None,
        "brier": float(np.mean((scores - labels) ** 2)),
    }


def _auc(scores, labels) -> float | None:
    if labels.all() or not labels.any():
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    # Ties get their average rank.
    for value in np.unique(scores):
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    positives = labels.sum()
    return float(
        (ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * (~labels).sum())
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "checkpoints"
    )
    parser.add_argument("--lm-steps", type=int, default=2500)
    parser.add_argument("--prm-steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-problems", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=100)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    key_lm, key_prm, key_eval = jax.random.split(jax.random.key(args.seed), 3)

    def lm_batch():
        ids, mask, *_ = data.training_batch(
            rng, args.batch, SEQUENCE_LENGTH, max_difficulty=MAX_DIFFICULTY
        )
        return jnp.asarray(ids), jnp.asarray(mask)

    model, lm_info = fit(
        qwen2.init(key_lm, LM_CONFIG),
        lm_loss,
        lm_batch,
        steps=args.lm_steps,
        learning_rate=args.learning_rate,
        log_every=args.log_every,
        name="lm",
    )
    lm_dir = args.out / "arith"
    loading.save_qwen2(model, lm_dir, eos_token_id=data.EOS_ID, pad_token_id=data.PAD_ID)
    data.save_tokenizer(lm_dir)

    def prm_batch():
        # Twice the slips of the LM's data, so that wrong steps are not rare.
        ids, _, labels, *_ = data.training_batch(
            rng, args.batch, SEQUENCE_LENGTH, max_difficulty=MAX_DIFFICULTY, slip_scale=2.0
        )
        return jnp.asarray(ids), jnp.asarray(labels)

    learned, prm_info = fit(
        prm.init(key_prm, PRM_CONFIG),
        prm_loss,
        prm_batch,
        steps=args.prm_steps,
        learning_rate=args.learning_rate,
        log_every=args.log_every,
        name="prm",
    )
    prm.save(learned, args.out / "arith_prm")
    train_seconds = time.perf_counter() - start

    token_model = TransformerTokenModel(model, end_ids=(data.EOS_ID,))
    accuracy = evaluate.accuracy_by_difficulty(
        token_model,
        range(1, MAX_DIFFICULTY + 1),
        key=key_eval,
        num_problems=args.eval_problems,
        seed=10_000 + args.seed,
    )
    print(evaluate.format_table(accuracy), flush=True)

    # The learned PRM on held-out noisy traces and on the language model's own samples.
    held_out = np.random.default_rng(20_000 + args.seed)
    problems = [
        tasks.generate(held_out, d) for d in range(1, MAX_DIFFICULTY + 1) for _ in range(50)
    ]
    noisy = [tasks.noisy_solution(held_out, p, slip_scale=2.0) for p in problems]
    sampled = [row[0] for row in evaluate.sample_solutions(token_model, problems, key=key_eval)]
    prm_quality = {
        "noisy_traces": evaluate_prm(learned, problems, noisy),
        "lm_samples": evaluate_prm(learned, problems, sampled),
    }
    print(json.dumps(prm_quality, indent=2), flush=True)

    metrics = {
        "lm_config": LM_CONFIG.to_hf(),
        "lm_parameters": int(sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_array)))),
        "prm_parameters": int(
            sum(x.size for x in jax.tree.leaves(eqx.filter(learned, eqx.is_array)))
        ),
        "lm_training": lm_info,
        "prm_training": prm_info,
        "training_seconds": train_seconds,
        "backend": jax.default_backend(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "accuracy_by_difficulty": accuracy,
        "data_accuracy_by_difficulty": {
            d: float(
                np.mean(
                    [
                        tasks.is_correct(
                            p := tasks.generate(held_out, d), tasks.noisy_solution(held_out, p)
                        )
                        for _ in range(2000)
                    ]
                )
            )
            for d in range(1, MAX_DIFFICULTY + 1)
        },
        "learned_prm": prm_quality,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


if __name__ == "__main__":
    main()
