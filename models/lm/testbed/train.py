"""Trains the testbed's language model and learned PRM, evaluates both, writes checkpoints.

    python -m ppl.models.lm.testbed.train --out models/lm/checkpoints

writes ``arith/`` (the Qwen2 language model, config.json, model.safetensors, tokenizer.json)
and ``metrics.json`` (its accuracy by difficulty), then trains the learned PRM on that model's
own samples with ``train_prm.py`` (its defaults), which writes ``arith_prm/`` and
``prm_metrics.json``. The language model takes about 11 minutes on 2 CPU cores and the PRM
about 20 more (wall and CPU time, and the machine's load average, are recorded in both
metrics files); ``--skip-prm`` stops after the language model.

Batches are cut from length-sorted pools and padded to a few fixed bucket lengths
(``data.bucketed_batches``): the examples average 63 tokens against 131 for the longest,
so padding everything to one length would double the cost of a step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import loading, qwen2
from ..adapter import TransformerTokenModel
from . import data, evaluate, tasks

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
MAX_DIFFICULTY = 8
# Padded lengths of a training batch; the longest example (8 steps) has 131 tokens.
BUCKETS = (24, 40, 56, 72, 88, 104, 120, 136)
# Batches drawn per length-sorted pool.
POOL_BATCHES = 8


def lm_loss(model: qwen2.Qwen2, ids, mask):
    """Mean negative log-likelihood of the solution tokens."""
    inputs = ids[:, :-1]
    positions = jnp.broadcast_to(jnp.arange(inputs.shape[1]), inputs.shape)
    logits, _ = model(inputs, positions, None, None, unroll=True)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, ids[:, 1:, None], axis=-1)[..., 0]
    weights = mask[:, 1:]
    return (nll * weights).sum() / weights.sum()


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


def batch_stream(rng: np.random.Generator, batch: int, *, slip_rate: float | None = None):
    """Endless ``(ids, loss_mask, step_ends)`` batches, bucketed by length (see module doc)."""
    while True:
        yield from data.bucketed_batches(
            rng,
            batch,
            num_batches=POOL_BATCHES,
            buckets=BUCKETS,
            max_difficulty=MAX_DIFFICULTY,
            slip_rate=slip_rate,
        )


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
    parser.add_argument("--lm-steps", type=int, default=2200)
    parser.add_argument("--skip-prm", action="store_true",
                        help="do not train the PRM (train_prm.py) after the language model")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-problems", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=100)
    args = parser.parse_args(argv)

    for name in ("lm_steps", "batch", "eval_problems", "log_every"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"Expected {flag} >= 1, got {getattr(args, name)}.")
    start, start_cpu, start_load = time.perf_counter(), _cpu_seconds(), os.getloadavg()
    rng = np.random.default_rng(args.seed)
    # Three keys as before (the third evaluates the language model); the PRM draws its own.
    key_lm, _, key_eval = jax.random.split(jax.random.key(args.seed), 3)
    lm_stream = batch_stream(rng, args.batch)

    def lm_batch():
        ids, mask, _ = next(lm_stream)
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
    # Stored in float16 (the repository's copy stays under 2 MB; rounding is at most 5e-4 of
    # each tensor's largest entry), and evaluated below as stored.
    loading.save_qwen2(model, lm_dir, storage_dtype=np.float16, eos_token_id=data.EOS_ID,
                       pad_token_id=data.PAD_ID)
    data.save_tokenizer(lm_dir)
    model = loading.load_transformer(lm_dir)

    train_seconds, train_cpu_seconds = time.perf_counter() - start, _cpu_seconds() - start_cpu
    train_load = os.getloadavg()
    print(f"trained in {train_seconds:.0f} s ({train_cpu_seconds:.0f} CPU-s)", flush=True)

    token_model = TransformerTokenModel(model, end_ids=(data.EOS_ID,))
    accuracy = evaluate.accuracy_by_difficulty(
        token_model,
        range(1, MAX_DIFFICULTY + 1),
        key=key_eval,
        num_problems=args.eval_problems,
        seed=10_000 + args.seed,
    )
    print(evaluate.format_table(accuracy), flush=True)

    held_out = np.random.default_rng(20_000 + args.seed)
    # The old in-file PRM's evaluation drew these first; drawn still, so that the data accuracy
    # below is computed on the same problems as in the shipped metrics.json.
    for problem in [
        tasks.generate(held_out, d) for d in range(1, MAX_DIFFICULTY + 1) for _ in range(50)
    ]:
        tasks.noisy_solution(held_out, problem, slip_scale=2.0)
    metrics = {
        "lm_config": LM_CONFIG.to_hf(),
        "lm_parameters": int(sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_array)))),
        "lm_training": lm_info,
        "training_seconds": train_seconds,
        "training_cpu_seconds": train_cpu_seconds,
        "total_seconds_with_evaluation": time.perf_counter() - start,
        "load_average_1_5_15_min": {"start": start_load, "end_of_training": train_load},
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
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
        "prm_metrics": "prm_metrics.json (train_prm.py)",
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if not args.skip_prm:
        from . import train_prm  # it imports this module

        train_prm.main(["--out", str(args.out), "--seed", str(args.seed)])
    return metrics


if __name__ == "__main__":
    main()
