"""Scaling curves: accuracy against budget for every method, reward and problem set.

Every point is one run of one method at one ``N`` on the same problems (paired across
methods), with its accuracy, the binomial standard error of that accuracy, and the mean
budget per problem in sampled tokens and in reward calls. The independent baselines
(``best_of_n``, ``weighted_best_of_n``, ``self_consistency``) are read off one run at the
largest ``N``: their first ``k`` samples of a problem are ``k`` independent samples, so
every smaller ``N`` is a subset of that run, at no further cost. The particle methods run
once per ``N``.

Power sampling has no reward and no particles to scale: its curve is against ``alpha``
(:func:`power_curve`): one chain per problem at each ``alpha``, beside majority vote at the
same tokens per problem (at temperature 1 and at ``1/alpha``) and one sample at ``1/alpha``.
Its points carry ``"alpha"``.

Points are appended to ``points.jsonl`` as they finish; a study started again in the same
directory with the same configuration skips the points it has (a different configuration
is refused, so that nothing saved is mixed or lost).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ppl.inference.llm.api import run
from ppl.inference.llm.selection import choose

__all__ = ["INDEPENDENT", "PARTICLE_METHODS", "ProblemSet", "nested_baselines", "power_curve",
           "scaling_study"]

INDEPENDENT = ("best_of_n", "weighted_best_of_n", "self_consistency")
# Reward-guided methods run once per N.
PARTICLE_METHODS = ("particle_filter", "entropic_particle_filter", "particle_gibbs",
                    "beam_search")
# Their curve is against alpha (power_curve), not N.
POWER = "power_sampling"
# The points of the power curve besides power sampling itself.
POWER_BASELINES = ("vote, T=1", "vote, T=1/alpha", "one sample, T=1/alpha")


class ProblemSet:
    """Prompts and how to check an answer to each.

    Args:
        label: shown in the report ("8 operations").
        prompts: the prompts.
        is_correct: ``(index, answer) -> bool`` for the problem at ``index``.
    """

    def __init__(self, label: str, prompts: Sequence[str], is_correct: Callable[[int, Any], bool]):
        self.label = label
        self.prompts = list(prompts)
        self.is_correct = is_correct


def _point(method, reward, label, n, correct, tokens, calls, wall, extra=None) -> dict:
    correct = np.asarray(correct, float)
    num = len(correct)
    accuracy = float(correct.mean())
    return {
        "method": method, "reward": reward, "problems": label, "num_particles": int(n),
        "accuracy": accuracy,
        "accuracy_se": float(np.sqrt(max(accuracy * (1 - accuracy), 1e-12) / num)),
        "num_problems": num, "tokens": float(np.mean(tokens)),
        "reward_calls": float(np.mean(calls)), "wall_time": float(wall), **(extra or {}),
    }


def nested_baselines(result, problems: ProblemSet, counts: Sequence[int], *, reward_name: str,
                     answer_fn, seed: int = 0) -> list[dict]:
    """The independent baselines at every ``k`` in ``counts`` from one run at ``max(counts)``
    (its first ``k`` samples per problem); the run's wall time is shared out by tokens."""
    rng = np.random.default_rng(seed)
    total_tokens = result.candidate_tokens.sum()
    points = []
    for k in counts:
        tokens = result.candidate_tokens[:, :k].sum(1)
        calls = result.candidate_reward_calls[:, :k].sum(1)
        share = result.wall_time * tokens.sum() / max(total_tokens, 1)
        for method, how, use_scores in (("best_of_n", "argmax", True),
                                         ("weighted_best_of_n", "vote", True),
                                         ("self_consistency", "vote", False)):
            if method == "self_consistency" and reward_name != "none":
                continue
            correct = []
            for index, traces in enumerate(result.candidates):
                weights = result.scores[index, :k] if use_scores else np.ones(k)
                _, answer, _ = choose(traces[:k], weights, how=how, answer_fn=answer_fn, rng=rng)
                correct.append(problems.is_correct(index, answer))
            points.append(_point(method, reward_name if use_scores else "none", problems.label,
                                 k, correct, tokens, calls if use_scores else 0 * calls, share,
                                 {"nested": True}))
    return points


def power_curve(model, tokenizer, problems: ProblemSet, alphas: Sequence[float], *, key,
                answer_fn, run_settings: dict | None = None, power_settings: dict | None = None,
                skip: Callable[[float], bool] = lambda alpha: False) -> list[dict]:
    """Power sampling against ``alpha``, with the baselines at the same tokens per problem.

    For each ``alpha``: one chain per problem (:func:`~ppl.inference.llm.power.power_sampling`),
    then, with ``N`` = its tokens per problem over one sample's (at temperature 1), majority
    vote over ``N`` samples at temperature 1 and at ``1 / alpha``, and one sample at
    ``1 / alpha``. Every point has ``"alpha"`` and ``"num_particles"`` (the chains, 1, or the
    vote's ``N``); the single sample at temperature 1 is the point with ``alpha`` 1.

    Args:
        model, tokenizer, key, answer_fn: as :func:`scaling_study`.
        problems: the problem set.
        alphas: the powers (each ``> 0``).
        run_settings: settings for every run (``temperature`` is overridden here).
        power_settings: power sampling's own (``block_tokens``, ``mcmc_steps``).
        skip: the powers to leave out (those a resumed study has).
    """
    run_settings = {k: v for k, v in (run_settings or {}).items() if k != "temperature"}
    common = dict(key=key, answer_fn=answer_fn, **run_settings)

    def point(method, alpha, n, result, wall):
        correct = [problems.is_correct(i, a) for i, a in enumerate(result.answers)]
        return _point(method, "none", problems.label, n, correct, result.tokens,
                      0 * result.reward_calls, wall, {"alpha": float(alpha)})

    for alpha in alphas:
        if not isinstance(alpha, int | float) or not alpha > 0:
            raise ValueError(f"Expected every alpha > 0, got {alpha!r}.")
    todo = [float(a) for a in alphas if not skip(float(a))]
    if not todo:
        return []
    single = run("self_consistency", model, tokenizer, problems.prompts, num_particles=1,
                 temperature=1.0, **common)
    per_sample = max(float(single.tokens.mean()), 1.0)
    points = []
    for alpha in todo:
        start = time.perf_counter()
        power = run(POWER, model, tokenizer, problems.prompts, num_particles=1,
                    alpha=alpha, **common, **(power_settings or {}))
        here = point(POWER, alpha, 1, power, time.perf_counter() - start)
        points.append(here)
        n = max(1, int(round(here["tokens"] / per_sample)))
        for method, temperature, count in zip(POWER_BASELINES, (1.0, 1 / alpha, 1 / alpha),
                                              (n, n, 1), strict=True):
            start = time.perf_counter()
            result = run("self_consistency", model, tokenizer, problems.prompts,
                         num_particles=count, temperature=temperature, **common)
            points.append(point(method, alpha, count, result, time.perf_counter() - start))
    return points


def _point_key(point: dict) -> tuple:
    return (point["problems"], point["reward"], point["method"], point["num_particles"],
            point.get("alpha"))


def _signature(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def scaling_study(
    model,
    tokenizer,
    problem_sets: Sequence[ProblemSet],
    rewards: dict[str, Any],
    *,
    methods: Sequence[str],
    particle_counts: Sequence[int],
    key,
    answer_fn,
    out_dir: str | Path | None = None,
    method_settings: dict[str, dict] | None = None,
    run_settings: dict | None = None,
    alphas: Sequence[float] = (1.0, 2.0, 4.0),
    config: dict | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Runs every (problem set, reward, method, N) point; returns the points.

    Args:
        model, tokenizer: as :func:`~ppl.inference.llm.run`.
        problem_sets: the problem sets (difficulties, say).
        rewards: name to reward (``"none"`` for None; self-consistency runs without one).
        methods: method names: :data:`INDEPENDENT`, :data:`PARTICLE_METHODS` and
            ``"power_sampling"`` (its curve against ``alphas``, :func:`power_curve`).
        particle_counts: the ``N`` of every point.
        key: PRNG key; each point's run uses the same key, so methods see the same draws
            where they coincide.
        answer_fn: a trace's answer.
        out_dir: where ``points.jsonl`` and ``config.json`` go (resumable); None keeps
            nothing.
        method_settings: extra settings per method.
        run_settings: extra settings for every run (temperature, batch size, ...).
        alphas: power sampling's powers.
        config: what identifies the study (checked on resume); default: the arguments.
        log: progress lines.
    """
    method_settings = method_settings or {}
    run_settings = run_settings or {}
    unknown = [m for m in methods if m not in (*INDEPENDENT, *PARTICLE_METHODS, POWER)]
    if unknown:
        raise ValueError(
            f"Expected scaling methods among {', '.join((*INDEPENDENT, *PARTICLE_METHODS, POWER))}"
            f", got {unknown} (twisted_smc and constrained_smc target another distribution: "
            "see ppl lm evidence and ppl lm solve)."
        )
    counts = sorted(set(int(n) for n in particle_counts))
    config = config or {
        "problems": {s.label: s.prompts for s in problem_sets}, "rewards": list(rewards),
        "methods": list(methods), "particle_counts": counts,
        "method_settings": method_settings, "run_settings": run_settings,
        **({"alphas": [float(a) for a in alphas]} if POWER in methods else {}),
    }
    done: dict[tuple, dict] = {}
    points_path = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        config_path, points_path = out_dir / "config.json", out_dir / "points.jsonl"
        if config_path.exists():
            saved = config_path.read_text()
            if saved.strip() != _signature(config):
                raise ValueError(
                    f"{config_path} holds another study's configuration: resuming would mix "
                    "its points with these. Use another output directory (or remove that one)."
                )
            if points_path.exists():
                for line in points_path.read_text().splitlines():
                    point = json.loads(line)
                    done[_point_key(point)] = point
        else:
            config_path.write_text(_signature(config))
    points = list(done.values())

    def record(new_points):
        for point in new_points:
            k = _point_key(point)
            if k in done:
                continue
            done[k] = point
            points.append(point)
            if points_path is not None:
                with points_path.open("a") as handle:
                    handle.write(json.dumps(point) + "\n")

    for problems in problem_sets:
        if POWER in methods:
            start = time.perf_counter()
            new = power_curve(model, tokenizer, problems, alphas, key=key, answer_fn=answer_fn,
                              run_settings=run_settings,
                              power_settings=method_settings.get(POWER),
                              skip=lambda alpha, label=problems.label: sum(
                                  k[0] == label and k[4] == alpha for k in done
                              ) > len(POWER_BASELINES))
            if new:
                record(new)
                log(f"{problems.label}: power sampling at alpha "
                    f"{', '.join(f'{a:g}' for a in alphas)} in {time.perf_counter() - start:.0f} s")
        for reward_name, reward in rewards.items():
            independent = [m for m in methods if m in INDEPENDENT]
            if reward_name == "none":
                independent = [m for m in independent if m == "self_consistency"]
            else:
                independent = [m for m in independent if m != "self_consistency"]
            wanted = [(problems.label, reward_name if m != "self_consistency" else "none", m, n,
                       None) for m in independent for n in counts]
            if independent and not all(w in done for w in wanted):
                start = time.perf_counter()
                result = run("best_of_n" if reward is not None else "self_consistency", model,
                             tokenizer, problems.prompts, key=key, reward=reward,
                             num_particles=counts[-1], answer_fn=answer_fn, **run_settings)
                new = [p for p in nested_baselines(result, problems, counts,
                                                   reward_name=reward_name, answer_fn=answer_fn)
                       if p["method"] in independent]
                record(new)
                log(f"{problems.label} / {reward_name}: independent baselines up to N="
                    f"{counts[-1]} in {time.perf_counter() - start:.0f} s")
            if reward is None:
                continue
            for method in methods:
                if method not in PARTICLE_METHODS:
                    continue
                for n in counts:
                    if (problems.label, reward_name, method, n, None) in done:
                        continue
                    start = time.perf_counter()
                    result = run(method, model, tokenizer, problems.prompts, key=key,
                                 reward=reward, num_particles=n, answer_fn=answer_fn,
                                 **run_settings, **method_settings.get(method, {}))
                    wall = time.perf_counter() - start
                    correct = [problems.is_correct(i, a) for i, a in enumerate(result.answers)]
                    record([_point(method, reward_name, problems.label, n, correct,
                                   result.tokens, result.reward_calls, wall)])
                    log(f"{problems.label} / {reward_name} / {method} N={n}: accuracy "
                        f"{np.mean(correct):.3f} ({wall:.0f} s)")
    return points
