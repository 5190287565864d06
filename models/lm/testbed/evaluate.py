"""Sampling whole solutions from a token model and scoring them by difficulty."""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ppl.token_adapter import AbstractTokenModel

from . import data, tasks


def max_new_tokens(difficulty: int) -> int:
    """Room for ``difficulty`` lines of at most 13 characters, the answer and the end token."""
    return 14 * difficulty + 12


@eqx.filter_jit
def _sample(model, key, prompt_ids, prompt_lengths, temperature, max_length, num_new):
    state = model.init_state(prompt_ids, prompt_lengths, max_length)
    _, out = model.sample_step(
        key,
        state,
        temperature=temperature,
        stop_ids=jnp.array([], jnp.int32),
        max_new_tokens=num_new,
    )
    return out.tokens, out.num_tokens


def sample_solutions(
    model: AbstractTokenModel,
    problems: Sequence[tasks.Problem],
    *,
    key,
    num_samples: int = 1,
    temperature: float = 1.0,
) -> list[list[str]]:
    """``num_samples`` sampled traces (text after the prompt) for each problem."""
    if num_samples < 1:
        raise ValueError(f"Expected num_samples >= 1, got {num_samples}.")
    prompts = [data.encode(p.prompt) for p in problems for _ in range(num_samples)]
    lengths = np.array([len(p) for p in prompts], np.int32)
    ids = np.zeros((len(prompts), lengths.max()), np.int32)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = prompt
    num_new = max_new_tokens(max(p.difficulty for p in problems))
    tokens, counts = _sample(
        model,
        key,
        jnp.asarray(ids),
        jnp.asarray(lengths),
        temperature,
        int(lengths.max()) + num_new,
        num_new,
    )
    tokens, counts = np.asarray(tokens), np.asarray(counts)
    texts = [data.decode(tokens[row, : counts[row]]) for row in range(len(prompts))]
    return [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(problems))]


def accuracy_by_difficulty(
    model: AbstractTokenModel,
    difficulties: Sequence[int],
    *,
    key,
    num_problems: int,
    num_samples: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[dict]:
    """Per difficulty: mean single-sample accuracy, pass@N and majority-vote accuracy."""
    rows = []
    for difficulty in difficulties:
        rng = np.random.default_rng([seed, difficulty])
        problems = [tasks.generate(rng, difficulty) for _ in range(num_problems)]
        key, subkey = jax.random.split(key)
        samples = sample_solutions(
            model, problems, key=subkey, num_samples=num_samples, temperature=temperature
        )
        correct = np.array(
            [
                [tasks.is_correct(p, s) for s in row]
                for p, row in zip(problems, samples, strict=True)
            ]
        )
        majority = []
        for problem, row in zip(problems, samples, strict=True):
            answers = [a for a in map(tasks.parse_answer, row) if a is not None]
            vote = max(set(answers), key=answers.count) if answers else None
            majority.append(vote == problem.answer)
        rows.append(
            {
                "difficulty": difficulty,
                "num_problems": num_problems,
                "num_samples": num_samples,
                "accuracy": float(correct.mean()),
                "accuracy_se": float(correct.mean(1).std(ddof=1) / np.sqrt(num_problems))
                if num_problems > 1
                else 0.0,
                "pass_at_n": float(correct.any(1).mean()),
                "majority_vote": float(np.mean(majority)),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["difficulty  problems  samples  accuracy        pass@N  majority"]
    for r in rows:
        lines.append(
            f"{r['difficulty']:>10}  {r['num_problems']:>8}  {r['num_samples']:>7}  "
            f"{r['accuracy']:.3f} ± {r['accuracy_se']:.3f}  "
            f"{r['pass_at_n']:.3f}   {r['majority_vote']:.3f}"
        )
    return "\n".join(lines)


def reference_step_probabilities(model: AbstractTokenModel, problem: tasks.Problem,
                                 temperature: float = 1.0) -> np.ndarray:
    """``q_t``: the model's probability at ``temperature`` of each step of the reference
    solution (each line, then the end token) after the reference steps before it, by
    teacher forcing. Their product is the probability of sampling the reference solution."""
    prompt = data.encode(problem.prompt)
    state = model.init_state(jnp.asarray([prompt]), jnp.asarray([len(prompt)]), 256)
    steps = [data.encode(line + "\n") for line in problem.solution().splitlines()]
    steps.append([data.EOS_ID])
    probs = []
    for step in steps:
        state, out = model.force_step(
            state, jnp.asarray([step]), jnp.asarray([len(step)]), temperature=temperature
        )
        probs.append(float(np.exp(np.sum(out.proposal_log_probs))))
    return np.asarray(probs)
