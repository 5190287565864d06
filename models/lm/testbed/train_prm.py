"""Trains the testbed's learned PRM on the language model's own samples, labelled by the checker.

    python -m ppl.models.lm.testbed.train_prm --out models/lm/checkpoints

reads the language model in ``arith/``, writes ``arith_prm/`` (the PRM, stored in float16) and
``prm_metrics.json`` beside it. The recipe, as real PRMs are trained:

1. Sample traces from the language model itself (16,384 by default: 512 for each of four
   temperatures 0.6-1.2 and eight difficulties 1-8), on problems drawn from seeds disjoint
   from the evaluation's, with the evaluation's prompts removed.
2. Label them by the exact checker: at every trace token, is the prefix up to it the
   reference's? (1 while the trace follows the reference solution, 0 from the first wrong
   token on.) At each newline this is the checker's step label (``tasks.step_labels``), at
   ``<eos>`` whether the trace is exactly the solution; labelling every token says where
   each mistake is, and weighing each trace's first wrong token 10 times says it loudly.
3. Train a Qwen2 body (4 layers, hidden 64) with a logistic head on those labels, plus an
   auxiliary next-token loss read after layer 2: while a trace follows the reference, the
   lower layers predict the reference's next token. That teaches the arithmetic early (one
   bit per step teaches it slowly), and leaves two layers to compare each token with what
   was expected of it and to carry a mistake forward to later steps.

Measured alternatives (the checkpoints README gives the figures):
labels at step ends only, or the auxiliary loss read at the last layer, plateaued far lower;
a body cut from the language model (width 128) costs 0.4-0.8 of the language model's step
at 2-3 layers, before any layer of its own.

Then it measures, on held-out problems and the language model's own samples at temperatures
0.8 and 1.0: the step-level AUC within depths 1-3 and within depths 4 and later, false accept
and false reject rates at 0.5, best-of-16 at 8 operations by the PRM's final score against
best-of-16 by the checker, and the PRM's cost per SMC step against the language model's.
Sampling counts in the training time; wall time, CPU time and load average are recorded.
The run is deterministic for a seed (numpy and JAX PRNGs, XLA on CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
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
from . import data, evaluate, prm, tasks

MAX_DIFFICULTY = 8
# The longest prompt (8 operations, every number two digits) has 37 tokens.
PROMPT_WIDTH = 40
MAX_NEW_TOKENS = evaluate.max_new_tokens(MAX_DIFFICULTY)
TRAIN_TEMPERATURES = (0.6, 0.8, 1.0, 1.2)
EVAL_TEMPERATURES = (0.8, 1.0)
# Seeds of the training problems and of the evaluation problems (offsets of --seed).
TRAIN_SEED, EVAL_SEED = 30_000, 40_000
# Padded lengths of a training batch (the longest prompt plus trace that we keep is 168).
BUCKETS = (32, 48, 64, 80, 96, 112, 128, 144, 168)
POOL_BATCHES = 8
SAMPLE_BATCH = 256


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- Sampling and labelling -----------------------------------------------------------------


@eqx.filter_jit
def _sample(model, key, prompt_ids, prompt_lengths, temperature):
    state = model.init_state(prompt_ids, prompt_lengths, PROMPT_WIDTH + MAX_NEW_TOKENS)
    _, out = model.sample_step(
        key,
        state,
        temperature=temperature,
        stop_ids=jnp.zeros((0,), jnp.int32),
        max_new_tokens=MAX_NEW_TOKENS,
    )
    return out.tokens, out.num_tokens


def sample_traces(
    model: TransformerTokenModel, problems, *, key, temperature: float
) -> list[list[int]]:
    """The token ids each problem's sampled trace (after the prompt; ``<eos>`` kept when it
    was drawn), in batches of ``SAMPLE_BATCH`` rows of one compiled shape.

    A batch runs until its longest trace ends: keep problems of one difficulty together.
    """
    traces = []
    for start in range(0, len(problems), SAMPLE_BATCH):
        chunk = problems[start : start + SAMPLE_BATCH]
        ids = np.zeros((SAMPLE_BATCH, PROMPT_WIDTH), np.int32)
        lengths = np.ones((SAMPLE_BATCH,), np.int32)
        # A short last batch is filled with copies of its first problem (discarded), which
        # end when the real ones do.
        for row in range(SAMPLE_BATCH):
            problem = chunk[row] if row < len(chunk) else chunk[0]
            prompt = data.encode(problem.prompt)
            ids[row, : len(prompt)], lengths[row] = prompt, len(prompt)
        key, subkey = jax.random.split(key)
        tokens, counts = _sample(
            model, subkey, jnp.asarray(ids), jnp.asarray(lengths), jnp.float32(temperature)
        )
        tokens, counts = np.asarray(tokens), np.asarray(counts)
        traces.extend(tokens[row, : counts[row]].tolist() for row in range(len(chunk)))
    return traces


def reference_ids(problem: tasks.Problem) -> list[int]:
    """The correct trace's token ids followed by ``<eos>`` (what the oracle follows)."""
    return data.encode(problem.solution()) + [data.EOS_ID]


def step_ends(trace: list[int]) -> list[int]:
    """Indices in ``trace`` of the tokens that end a step: each newline, and ``<eos>``."""
    return [i for i, token in enumerate(trace) if token in (data.NEWLINE_ID, data.EOS_ID)]


def trace_labels(problem: tasks.Problem, trace: list[int]) -> list[int]:
    """The checker's label (1 correct prefix, 0 wrong) at each of ``step_ends(trace)``.

    At a newline, ``tasks.step_labels(problem, trace)[-1]``; at ``<eos>``, whether the whole
    trace is the reference solution (answer line included, nothing after it).
    """
    reference = reference_ids(problem)
    labels = []
    for index in step_ends(trace):
        if trace[index] == data.EOS_ID:
            labels.append(int(trace[: index + 1] == reference))
        else:
            labels.append(int(tasks.step_labels(problem, data.decode(trace[: index + 1]))[-1]))
    return labels


def matched_length(problem: tasks.Problem, trace: list[int]) -> int:
    """How many leading tokens of ``trace`` equal the reference's (``reference_ids``)."""
    reference = reference_ids(problem)
    matched = 0
    while matched < min(len(trace), len(reference)) and trace[matched] == reference[matched]:
        matched += 1
    return matched


def example(problem: tasks.Problem, trace: list[int]):
    """One training example: ``(ids, labels, targets)`` lists of equal length.

    ``ids`` is the prompt and the trace. ``labels`` holds, at every trace token, the
    oracle's verdict on the prefix ending there (1 while the trace follows the reference, 0
    from the first mismatch on; -1 on the prompt): at each step's last token that is the
    checker's step label (``trace_labels``), and labelling every token tells the model where
    the mistake is. ``targets`` holds the reference's next token at each position whose
    prefix still follows the reference (-1 elsewhere), the auxiliary loss's target.
    """
    prompt = data.encode(problem.prompt)
    ids = prompt + list(trace)
    matched = matched_length(problem, trace)
    labels = [-1] * len(prompt) + [int(j < matched) for j in range(len(trace))]
    reference = reference_ids(problem)
    targets = [-1] * len(ids)
    # Position len(prompt) - 1 + j predicts trace token j; the prefix follows the reference
    # for j <= matched (the first mismatching token included: what it should have been).
    for j in range(min(matched + 1, len(reference), len(trace))):
        targets[len(prompt) - 1 + j] = reference[j]
    return ids, labels, targets


def _pad(examples, width: int):
    ids = np.full((len(examples), width), data.PAD_ID, np.int32)
    labels = np.full((len(examples), width), -1, np.int32)
    targets = np.full((len(examples), width), -1, np.int32)
    for row, (row_ids, row_labels, row_targets) in enumerate(examples):
        count = min(len(row_ids), width)
        ids[row, :count] = row_ids[:count]
        labels[row, :count] = row_labels[:count]
        targets[row, :count] = row_targets[:count]
    return ids, labels, targets


def batches(rng: np.random.Generator, examples, batch: int):
    """Endless padded batches: each pass shuffles, sorts pools of ``POOL_BATCHES`` batches by
    length and pads each batch to the smallest bucket that holds it (as ``train.py`` does)."""
    pool = batch * POOL_BATCHES
    if len(examples) < pool:
        raise ValueError(f"Expected at least {pool} examples (batch {batch} times "
                         f"{POOL_BATCHES} batches per pool), got {len(examples)}.")
    while True:
        order = rng.permutation(len(examples))
        cut = []
        for start in range(0, len(order) - pool + 1, pool):
            chunk = sorted(
                (examples[i] for i in order[start : start + pool]), key=lambda e: len(e[0])
            )
            for index in range(POOL_BATCHES):
                rows = chunk[index * batch : (index + 1) * batch]
                longest = len(rows[-1][0])
                width = next((b for b in BUCKETS if b >= longest), BUCKETS[-1])
                cut.append(_pad(rows, width))
        for index in rng.permutation(len(cut)):
            yield cut[index]


# --- The model and its loss -----------------------------------------------------------------


def with_lower_layers(model: prm.LearnedPRM, lower: qwen2.Qwen2) -> prm.LearnedPRM:
    """``model`` with its embeddings, final norm and first layers taken from ``lower``."""
    count = lower.num_layers
    layers = {
        name: weights.at[:count].set(lower.layers[name])
        for name, weights in model.body.layers.items()
    }
    body = qwen2.Qwen2(model.body.config, lower.embed, layers, lower.norm, None)
    return prm.LearnedPRM(body, model.head_weight, model.head_bias)


def truncated_body(body: qwen2.Qwen2, num_layers: int) -> qwen2.Qwen2:
    """The first ``num_layers`` layers of ``body`` (the same weights) and its final norm."""
    layers = {name: weights[:num_layers] for name, weights in body.layers.items()}
    config = dataclasses.replace(body.config, num_hidden_layers=num_layers)
    return qwen2.Qwen2(config, body.embed, layers, body.norm, None)


def loss_fn(model: prm.LearnedPRM, ids, labels, targets, step_weight, aux_weight, aux_layer,
            mismatch_weight=1.0):
    """``step_weight`` times the binary cross-entropy at the labelled positions, plus
    ``aux_weight`` times the
    next-token cross-entropy at the target positions, read after layer ``aux_layer`` (0: the
    last) through the final norm and the tied embeddings.

    Reading the next-token prediction below the last layer makes the body predict early, so
    that the layers above can compare each token with what was expected of it.
    """
    batch, length = ids.shape
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    hidden, _ = model.body.hidden(ids, positions, None, None, unroll=True)
    logits = (hidden @ model.head_weight + model.head_bias).astype(jnp.float32)
    labelled = labels >= 0
    bce = optax.sigmoid_binary_cross_entropy(
        logits, jnp.where(labelled, labels, 0).astype(jnp.float32)
    )
    # The first wrong token of a trace (a 0 after a 1 or after the prompt) is where the
    # comparison with the expected token is learnt; later zeros only repeat it.
    previous = jnp.concatenate([jnp.full((batch, 1), -1, labels.dtype), labels[:, :-1]], axis=1)
    first_wrong = (labels == 0) & (previous != 0)
    weights = jnp.where(labelled, jnp.where(first_wrong, mismatch_weight, 1.0), 0.0)
    prm_loss = (weights * bce).sum() / jnp.maximum(weights.sum(), 1)
    if aux_weight and aux_layer:
        aux_hidden, _ = truncated_body(model.body, aux_layer).hidden(
            ids, positions, None, None, unroll=True
        )
    else:
        aux_hidden = hidden
    token_logits = jnp.matmul(aux_hidden, model.body.embed.T, preferred_element_type=jnp.float32)
    targeted = targets >= 0
    nll = -jnp.take_along_axis(
        jax.nn.log_softmax(token_logits, axis=-1), jnp.where(targeted, targets, 0)[..., None], -1
    )[..., 0]
    aux_loss = jnp.where(targeted, nll, 0.0).sum() / jnp.maximum(targeted.sum(), 1)
    return step_weight * prm_loss + aux_weight * aux_loss, (prm_loss, aux_loss)


def fit(model, stream, *, steps: int, learning_rate: float, step_weight: float,
        aux_weight: float, aux_layer: int, mismatch_weight: float = 1.0, log_every: int,
        log=print, name: str = "prm"):
    """AdamW (warmup, cosine decay, clipped gradients) for ``steps`` steps."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup_steps=min(200, steps // 10), decay_steps=steps,
        end_value=learning_rate * 0.02,
    )
    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01)
    )
    opt_state = optimizer.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, opt_state, ids, labels, targets):
        (_, parts), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
            model, ids, labels, targets, step_weight, aux_weight, aux_layer, mismatch_weight
        )
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, parts

    start, history = time.perf_counter(), []
    for index in range(steps):
        model, opt_state, parts = step(model, opt_state, *map(jnp.asarray, next(stream)))
        history.append([float(p) for p in parts])
        if (index + 1) % log_every == 0 or index == 0:
            recent = np.mean(history[-log_every:], axis=0)
            log(f"[{name}] step {index + 1}/{steps} step loss {recent[0]:.4f} "
                f"next-token loss {recent[1]:.4f} ({time.perf_counter() - start:.0f} s)")
    final = np.mean(history[-100:], axis=0)
    return model, {
        "steps": steps,
        "final_step_loss": float(final[0]),
        "final_next_token_loss": float(final[1]),
        "seconds": time.perf_counter() - start,
    }


# --- Evaluation -----------------------------------------------------------------------------


@eqx.filter_jit
def _probabilities(model: prm.LearnedPRM, ids):
    return jax.nn.sigmoid(model.logits(ids))


def score_traces(model: prm.LearnedPRM, problems, traces, *, batch: int = 256):
    """The PRM's score at each of ``step_ends(trace)``, cache-free, one array per trace."""
    scores = []
    for start in range(0, len(problems), batch):
        rows = [
            data.encode(p.prompt) + list(t)
            for p, t in zip(problems[start : start + batch], traces[start : start + batch],
                            strict=True)
        ]
        width = 32 * -(-max(len(r) for r in rows) // 32)
        ids = np.full((batch, width), data.PAD_ID, np.int32)
        for row, row_ids in enumerate(rows):
            ids[row, : len(row_ids)] = row_ids
        probabilities = np.asarray(_probabilities(model, jnp.asarray(ids)))
        for row, (problem, trace) in enumerate(
            zip(problems[start : start + batch], traces[start : start + batch], strict=True)
        ):
            offset = len(data.encode(problem.prompt))
            scores.append(probabilities[row, [offset + i for i in step_ends(trace)]])
    return scores


def auc(scores, labels) -> float | None:
    """Area under the ROC curve (ties counted half); None when one class is missing."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    if labels.all() or not labels.any():
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    # Average rank of each run of tied scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for first, last in zip(starts, ends, strict=True):
        ranks[order[first:last]] = (first + last + 1) / 2
    positives = labels.sum()
    return float(
        (ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * (~labels).sum())
    )


def step_metrics(problems, traces, scores) -> dict:
    """Step-level agreement with the checker at each newline (depth = line number).

    The AUC within depths 1-3 and within depths 4 and later are the fair figures: the share
    of wrong prefixes grows with depth, so a pooled AUC also rewards counting lines. The
    ``min`` figures score each prefix by the smallest step score so far (the ``min``
    aggregation of the particle filters).
    """
    values, minima, labels, depths = [], [], [], []
    for problem, trace, row_scores in zip(problems, traces, scores, strict=True):
        ends = step_ends(trace)
        row_labels = trace_labels(problem, trace)
        running, depth = 1.0, 0
        for index, label, score in zip(ends, row_labels, row_scores, strict=True):
            running = min(running, float(score))
            if trace[index] != data.NEWLINE_ID:
                continue
            depth += 1
            values.append(float(score))
            minima.append(running)
            labels.append(bool(label))
            depths.append(depth)
    values, minima = np.asarray(values), np.asarray(minima)
    labels, depths = np.asarray(labels), np.asarray(depths)
    early = depths <= 3
    accepted = values >= 0.5
    return {
        "num_steps": int(len(labels)),
        "num_wrong_steps_1_3": int((~labels[early]).sum()),
        "num_wrong_steps_4_on": int((~labels[~early]).sum()),
        "fraction_correct_steps": float(labels.mean()),
        "auc": auc(values, labels),
        "auc_steps_1_3": auc(values[early], labels[early]),
        "auc_steps_4_on": auc(values[~early], labels[~early]),
        "auc_min_steps_1_3": auc(minima[early], labels[early]),
        "auc_min_steps_4_on": auc(minima[~early], labels[~early]),
        "accuracy": float((accepted == labels).mean()),
        "false_accept_rate": float(accepted[~labels].mean()) if (~labels).any() else None,
        "false_reject_rate": float((~accepted[labels]).mean()) if labels.any() else None,
        "brier": float(np.mean((values - labels) ** 2)),
    }


def best_of_n(model: prm.LearnedPRM, token_model, *, key, num_problems: int, num_samples: int,
              difficulty: int, temperature: float, seed: int) -> dict:
    """Best-of-N accuracy picking by the PRM's final score (at ``<eos>``, or the last step
    end), against picking by the checker (pass@N), the first sample and majority vote."""
    rng = np.random.default_rng([seed, difficulty])
    problems = [tasks.generate(rng, difficulty) for _ in range(num_problems)]
    repeated = [p for p in problems for _ in range(num_samples)]
    traces = sample_traces(token_model, repeated, key=key, temperature=temperature)
    scores = score_traces(model, repeated, traces)
    final = np.array([s[-1] if len(s) else 0.0 for s in scores]).reshape(num_problems, -1)
    correct = np.array(
        [tasks.is_correct(p, data.decode(t)) for p, t in zip(repeated, traces, strict=True)]
    ).reshape(num_problems, -1)
    picked = correct[np.arange(num_problems), np.argmax(final, axis=1)]
    standard_error = lambda x: float(np.std(x, ddof=1) / np.sqrt(len(x)))  # noqa: E731
    return {
        "difficulty": difficulty,
        "temperature": temperature,
        "num_problems": num_problems,
        "num_samples": num_samples,
        "best_of_n_by_prm": float(picked.mean()),
        "best_of_n_by_prm_se": standard_error(picked),
        "best_of_n_by_checker": float(correct.any(1).mean()),
        "single_sample": float(correct[:, 0].mean()),
        "mean_sample": float(correct.mean()),
    }


def _median_seconds(fn, make_args, *, repeats: int) -> float:
    """Median wall time of ``fn(*make_args())`` (arguments made fresh, outside the timing,
    so that a donating ``fn`` can consume them), after one warm-up call."""
    jax.block_until_ready(fn(*make_args()))
    times = []
    for _ in range(repeats):
        args = jax.block_until_ready(make_args())
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def step_cost(model: prm.LearnedPRM, token_model, *, batch: int = 256, max_length: int = 256,
              repeats: int = 9) -> dict:
    """Wall time of one PRM ``extend`` of a 14-token step against one LM ``sample_step`` to
    the newline (at most 14 tokens), at ``batch`` rows of 8-operation problems three steps in.

    Both jitted and warm, the median of ``repeats`` calls; measured with the state donated
    (as the particle filters call them: the KV caches are then updated in place) and not.
    ``max_length`` 256 is the buffer ``ppl.inference.llm.run`` allocates for these prompts.
    """
    rng = np.random.default_rng(0)
    problems = [tasks.generate(rng, MAX_DIFFICULTY) for _ in range(batch)]
    ids = np.zeros((batch, PROMPT_WIDTH), np.int32)
    lengths = np.zeros((batch,), np.int32)
    for row, problem in enumerate(problems):
        prompt = data.encode(problem.prompt)
        ids[row, : len(prompt)], lengths[row] = prompt, len(prompt)
    stop_ids = jnp.array([data.NEWLINE_ID])
    reward = model.reward_model()

    def sample_step(token_model, key, state):
        return token_model.sample_step(key, state, temperature=1.0, stop_ids=stop_ids,
                                       max_new_tokens=14)

    def extend(reward, state, tokens, num_valid):
        return reward.extend(state, tokens, num_valid)

    state = token_model.init_state(jnp.asarray(ids), jnp.asarray(lengths), max_length)
    reward_state = reward.init_state(jnp.asarray(ids), jnp.asarray(lengths), max_length)
    key = jax.random.key(0)
    for step in range(3):  # three steps in, as in the middle of a particle filter's run
        state, out = eqx.filter_jit(sample_step)(token_model, jax.random.fold_in(key, step),
                                                 state)
        reward_state = eqx.filter_jit(extend)(reward, reward_state, out.tokens, out.num_tokens)
    tokens = jnp.asarray(np.random.default_rng(1).integers(2, len(data.VOCAB), (batch, 14)),
                         jnp.int32)
    num_valid = jnp.full((batch,), 14, jnp.int32)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731
    result = {"batch": batch, "max_length": max_length}
    for name, donate in (("donated", "all-except-first"), ("not_donated", "none")):
        lm_seconds = _median_seconds(
            eqx.filter_jit(sample_step, donate=donate),
            lambda: (token_model, *copy((jax.random.fold_in(key, 4), state))), repeats=repeats)
        prm_seconds = _median_seconds(
            eqx.filter_jit(extend, donate=donate),
            lambda: (reward, *copy((reward_state, tokens, num_valid))), repeats=repeats)
        result[name] = {"lm_sample_step_seconds": lm_seconds,
                        "prm_extend_14_tokens_seconds": prm_seconds,
                        "ratio": prm_seconds / lm_seconds}
    _, out = eqx.filter_jit(sample_step)(token_model, jax.random.fold_in(key, 4), state)
    result["lm_step_tokens_mean"] = float(np.mean(out.num_tokens))
    result["lm_step_tokens_max"] = int(np.max(out.num_tokens))
    result["load_average_1_5_15_min"] = os.getloadavg()
    return result


# --- The whole recipe -----------------------------------------------------------------------


def training_problems(seed: int, num_per_group: int, exclude: set[str]):
    """``{(temperature, difficulty): problems}`` from the training seeds, without the
    prompts in ``exclude`` (the evaluation's)."""
    groups = {}
    for t_index, temperature in enumerate(TRAIN_TEMPERATURES):
        for difficulty in range(1, MAX_DIFFICULTY + 1):
            rng = np.random.default_rng([TRAIN_SEED + seed, t_index, difficulty])
            problems = []
            while len(problems) < num_per_group:
                problem = tasks.generate(rng, difficulty)
                if problem.prompt not in exclude:
                    problems.append(problem)
            groups[temperature, difficulty] = problems
    return groups


def evaluation_problems(seed: int, num_per_difficulty: int) -> list[tasks.Problem]:
    """``num_per_difficulty`` held-out problems of each difficulty, from the evaluation seeds."""
    problems = []
    for difficulty in range(1, MAX_DIFFICULTY + 1):
        rng = np.random.default_rng([EVAL_SEED + seed, difficulty])
        problems.extend(tasks.generate(rng, difficulty) for _ in range(num_per_difficulty))
    return problems


def prm_config(args) -> qwen2.Qwen2Config:
    return qwen2.Qwen2Config(
        vocab_size=len(data.VOCAB),
        hidden_size=args.hidden,
        intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=max(1, args.heads // 2),
        head_dim=args.hidden // args.heads,
        tie_word_embeddings=True,
        max_position_embeddings=256,
    )


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "checkpoints",
        help="directory with the language model's arith/; arith_prm/ and prm_metrics.json "
        "are written there",
    )
    parser.add_argument("--lm", type=Path, default=None, help="the language model (default "
                        "OUT/arith)")
    parser.add_argument("--samples-per-group", type=int, default=512,
                        help="traces per (temperature, difficulty)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--pretrain-steps", type=int, default=0,
                        help="steps of next-token loss alone on the layers up to --aux-layer")
    parser.add_argument("--steps", type=int, default=3600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--aux-weight", type=float, default=1.0)
    parser.add_argument("--mismatch-weight", type=float, default=10.0,
                        help="weight of each trace's first wrong token in the step loss")
    parser.add_argument("--aux-layer", type=int, default=2,
                        help="read the next-token prediction after this layer (0: the last)")
    parser.add_argument("--noisy-fraction", type=float, default=0.0,
                        help="extra synthetic noisy traces (15%% slips), as a fraction of the "
                        "sampled ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-problems", type=int, default=100,
                        help="held-out problems per difficulty and temperature")
    parser.add_argument("--best-of-problems", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=250)
    return parser


def main(argv=None, *, log=None) -> dict:
    args = parser().parse_args(argv)
    for name in ("samples_per_group", "layers", "hidden", "heads", "steps", "batch",
                 "eval_problems", "best_of_problems", "log_every"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"Expected {flag} >= 1, got {getattr(args, name)}.")
    if log is None:
        log = lambda message: print(message, flush=True)  # noqa: E731
    start, start_cpu, start_load = time.perf_counter(), _cpu_seconds(), os.getloadavg()
    lm_dir = args.lm or args.out / "arith"
    transformer = loading.load_transformer(lm_dir)
    token_model = TransformerTokenModel(transformer, end_ids=(data.EOS_ID,))
    key_sample, key_init, key_eval, key_best = jax.random.split(jax.random.key(args.seed), 4)

    evaluation = evaluation_problems(args.seed, args.eval_problems)
    groups = training_problems(args.seed, args.samples_per_group, {p.prompt for p in evaluation})
    examples, counts = [], {"traces": 0, "steps": 0, "wrong_steps": 0}
    for index, ((temperature, difficulty), problems) in enumerate(groups.items()):
        traces = sample_traces(token_model, problems, key=jax.random.fold_in(key_sample, index),
                               temperature=temperature)
        for problem, trace in zip(problems, traces, strict=True):
            ids, labels, targets = example(problem, trace)
            examples.append((ids, labels, targets))
            counts["traces"] += 1
            step_labels = trace_labels(problem, trace)
            counts["steps"] += len(step_labels)
            counts["wrong_steps"] += step_labels.count(0)
        if difficulty == MAX_DIFFICULTY:
            log(f"[sample] temperature {temperature}: {counts['traces']} traces so far "
                f"({time.perf_counter() - start:.0f} s)")
    rng = np.random.default_rng([TRAIN_SEED + args.seed])
    num_noisy = int(round(args.noisy_fraction * len(examples)))
    for _ in range(num_noisy):
        problem = tasks.generate(rng, int(rng.integers(1, MAX_DIFFICULTY + 1)))
        if problem.prompt in {p.prompt for p in evaluation}:
            continue
        trace = data.encode(tasks.noisy_solution(rng, problem, slip_rate=0.15)) + [data.EOS_ID]
        examples.append(example(problem, trace))
    sampling_seconds = time.perf_counter() - start
    log(f"[sample] {counts['traces']} sampled traces, {counts['steps']} labelled steps "
        f"({counts['wrong_steps']} wrong), {num_noisy} noisy traces; {sampling_seconds:.0f} s")

    config = prm_config(args)
    model = prm.init(key_init, config)
    stream = batches(rng, examples, args.batch)
    pretrain_info = None
    if args.pretrain_steps:
        # The lower layers alone first, on the next-token loss: the arithmetic is what the
        # step labels teach slowest, and these passes are cheaper.
        lower = truncated_body(model.body, args.aux_layer or config.num_hidden_layers)
        lower_prm = prm.LearnedPRM(lower, model.head_weight, model.head_bias)
        lower_prm, pretrain_info = fit(
            lower_prm, stream, steps=args.pretrain_steps, learning_rate=args.learning_rate,
            step_weight=0.0, aux_weight=1.0, aux_layer=0, log_every=args.log_every, log=log,
            name="pretrain")
        model = with_lower_layers(model, lower_prm.body)
    model, fit_info = fit(model, stream, steps=args.steps, learning_rate=args.learning_rate,
                          step_weight=1.0, aux_weight=args.aux_weight, aux_layer=args.aux_layer,
                          mismatch_weight=args.mismatch_weight, log_every=args.log_every, log=log)
    fit_info["pretraining"] = pretrain_info
    prm.save(model, args.out / "arith_prm", storage_dtype=np.float16)
    train_seconds, train_cpu = time.perf_counter() - start, _cpu_seconds() - start_cpu
    train_load = os.getloadavg()
    log(f"[prm] trained in {train_seconds:.0f} s wall, {train_cpu:.0f} CPU-s "
        f"(load average {train_load[0]:.2f})")

    # Evaluate the model as stored (float16-rounded weights).
    model = prm.load(args.out / "arith_prm")
    quality = {}
    for t_index, temperature in enumerate(EVAL_TEMPERATURES):
        traces = sample_traces(token_model, evaluation, key=jax.random.fold_in(key_eval, t_index),
                               temperature=temperature)
        quality[f"lm_samples_temperature_{temperature}"] = step_metrics(
            evaluation, traces, score_traces(model, evaluation, traces))
        log(f"[eval] temperature {temperature}: "
            + json.dumps(quality[f"lm_samples_temperature_{temperature}"]))
    best = [
        best_of_n(model, token_model, key=jax.random.fold_in(key_best, t_index),
                  num_problems=args.best_of_problems, num_samples=16,
                  difficulty=MAX_DIFFICULTY, temperature=temperature, seed=EVAL_SEED + args.seed)
        for t_index, temperature in enumerate(EVAL_TEMPERATURES)
    ]
    for row in best:
        log("[eval] best-of-16: " + json.dumps(row))
    cost = step_cost(model, token_model)
    log("[eval] cost: " + json.dumps(cost))
    metrics = {
        "prm_config": config.to_hf(),
        "prm_parameters": int(
            sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_array)))
        ),
        "data": {**counts, "noisy_traces": num_noisy, "temperatures": TRAIN_TEMPERATURES,
                 "difficulties": [1, MAX_DIFFICULTY]},
        "training": fit_info,
        "sampling_seconds": sampling_seconds,
        "training_seconds_with_sampling": train_seconds,
        "training_cpu_seconds_with_sampling": train_cpu,
        "total_seconds_with_evaluation": time.perf_counter() - start,
        "load_average_1_5_15_min": {"start": start_load, "end_of_training": train_load,
                                    "end": os.getloadavg()},
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "step_quality": quality,
        "best_of_16": best,
        "cost_per_step": cost,
    }
    (args.out / "prm_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


if __name__ == "__main__":
    main()
