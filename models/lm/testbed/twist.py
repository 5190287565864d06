"""A learned twist for twisted SMC on the testbed: a value head trained on the LM's rollouts.

Twisted SMC (``ppl.inference.llm.twisted``) targets ``p_LM(x) phi(x) / Z``, ``phi`` the exact
checker's verdict on the finished trace and ``p_LM`` at temperature 1. Its best twist is the
value ``psi*(x_1..t) = E_{p_LM}[phi | x_1..t]``: the chance that the language model, carrying
on from the prefix, finishes with the right solution. It is 0 once a line is wrong (what the
PRM estimates) and, for a correct prefix, the chance of getting the remaining lines right,
which falls with the number left and with the numbers involved.

``train`` fits it the Monte Carlo way: sample whole traces from the language model at
temperature 1, label every prefix of a trace by that trace's own outcome (1 if it is exactly
the solution), and minimise the logistic loss. The expected label at a prefix is the value, so
the minimiser is ``psi*`` (an unbiased target; the noise of one rollout per prefix averages out
over many traces). The body starts from the learned PRM's (``arith_prm``), which already
tells right lines from wrong ones; training teaches it how likely the rest is.

    python -m ppl.models.lm.testbed.twist --out models/lm/checkpoints

writes ``arith_twist/`` (``Qwen2ForTokenClassification`` layout, float16, with the language
model it was trained for named in config.json: a twist for another model is refused) and
``twist_metrics.json`` (held-out log loss at each step end against the PRM's score used as a
twist and against the best constant per depth; wall and CPU time, load average).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import jax
import numpy as np
from ppl.models.lm.reward import TransformerRewardModel

from .. import loading
from ..adapter import TransformerTokenModel
from . import data, prm, tasks, train_prm

__all__ = ["LearnedTwist", "fingerprint", "load", "save", "train"]

# Problems of the training and evaluation rollouts (offsets of --seed; disjoint from the
# PRM's training seeds and from the evaluation seeds of train.py and train_prm.py).
TRAIN_SEED, EVAL_SEED = 50_000, 60_000


def fingerprint(lm_directory: str | Path) -> str:
    """The SHA-256 of a language model's weights file: what a twist is tied to."""
    path = Path(lm_directory) / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"Expected a language model's model.safetensors in {path.parent}.")
    return hashlib.sha256(path.read_bytes()).hexdigest()


class LearnedTwist:
    """The value estimate ``psi(x_1..t)`` as a PRM-shaped model, and the model it is for.

    Attributes:
        model: the body and logistic head (a :class:`prm.LearnedPRM`).
        language_model: the name of the language model it was trained on.
        lm_fingerprint: the SHA-256 of that model's weights (:func:`fingerprint`).
    """

    def __init__(self, model: prm.LearnedPRM, language_model: str, lm_fingerprint: str):
        self.model = model
        self.language_model = language_model
        self.lm_fingerprint = lm_fingerprint

    def reward_model(self, *, block_length: int = 128) -> TransformerRewardModel:
        """The twist behind the reward protocol (cached, incremental), for ``twisted_smc``."""
        return self.model.reward_model(block_length=block_length)

    def check_for(self, lm_directory: str | Path) -> None:
        """Refuses a language model other than the one the twist was trained on."""
        found = fingerprint(lm_directory)
        if found != self.lm_fingerprint:
            raise ValueError(
                f"This twist was trained for the language model {self.language_model!r} "
                f"(weights {self.lm_fingerprint[:12]}), not for {str(lm_directory)!r} (weights "
                f"{found[:12]}): train one for it (python -m ppl.models.lm.testbed.twist --lm ...)."
            )


def save(twist: LearnedTwist, directory: str | Path) -> None:
    directory = Path(directory)
    prm.save(twist.model, directory, storage_dtype=np.float16)
    config = json.loads((directory / "config.json").read_text())
    config["ppl_twist"] = {"language_model": twist.language_model,
                           "lm_sha256": twist.lm_fingerprint}
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load(directory: str | Path, *, lm_directory: str | Path | None = None) -> LearnedTwist:
    """Reads a twist; with ``lm_directory``, refuses it unless it was trained for that model."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    meta = config.get("ppl_twist")
    if meta is None:
        raise ValueError(f"{directory} holds no twist (config.json has no 'ppl_twist' entry).")
    twist = LearnedTwist(prm.load(directory), meta["language_model"], meta["lm_sha256"])
    if lm_directory is not None:
        twist.check_for(lm_directory)
    return twist


# --- Training -------------------------------------------------------------------------------


def rollout_example(problem: tasks.Problem, trace: list[int]):
    """``(ids, labels, targets)``: the trace's outcome at each of its tokens (-1 on the
    prompt), no next-token targets (``train_prm``'s batching and loss take these)."""
    prompt = data.encode(problem.prompt)
    outcome = int(list(trace) == train_prm.reference_ids(problem))
    ids = prompt + list(trace)
    labels = [-1] * len(prompt) + [outcome] * len(trace)
    return ids, labels, [-1] * len(ids)


def _problems(seed: int, difficulty: int, count: int) -> list[tasks.Problem]:
    rng = np.random.default_rng([seed, difficulty])
    return [tasks.generate(rng, difficulty) for _ in range(count)]


def _rollouts(token_model, seed: int, per_difficulty: int, key):
    """Problems of every difficulty and one trace of each at temperature 1."""
    problems, traces = [], []
    for difficulty in range(1, train_prm.MAX_DIFFICULTY + 1):
        chunk = _problems(seed, difficulty, per_difficulty)
        problems += chunk
        traces += train_prm.sample_traces(token_model, chunk, key=jax.random.fold_in(
            key, difficulty), temperature=1.0)
    return problems, traces


def _log_loss(p, y) -> float:
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    y = np.asarray(y, np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def evaluate(twist_model: prm.LearnedPRM, prm_model: prm.LearnedPRM, problems, traces) -> dict:
    """Held-out log loss of the rollout outcome at each newline: the twist, the PRM's score
    as a twist, and the best constant per (difficulty, depth) fitted on these same rollouts
    (an optimistic baseline that knows how many lines are left but reads none of them)."""
    outcomes, depth_keys, twist_scores, prm_scores = [], [], [], []
    twist_all = train_prm.score_traces(twist_model, problems, traces)
    prm_all = train_prm.score_traces(prm_model, problems, traces)
    for problem, trace, t_row, p_row in zip(problems, traces, twist_all, prm_all, strict=True):
        outcome = int(list(trace) == train_prm.reference_ids(problem))
        depth = 0
        for index, t_score, p_score in zip(train_prm.step_ends(trace), t_row, p_row,
                                           strict=True):
            if trace[index] != data.NEWLINE_ID:
                continue
            depth += 1
            outcomes.append(outcome)
            depth_keys.append((len(problem.operations), depth))
            twist_scores.append(float(t_score))
            prm_scores.append(float(p_score))
    outcomes = np.asarray(outcomes)
    by_depth = {}
    for key, outcome in zip(depth_keys, outcomes, strict=True):
        by_depth.setdefault(key, []).append(outcome)
    constant = np.array([np.mean(by_depth[key]) for key in depth_keys])
    return {
        "num_step_ends": int(len(outcomes)),
        "num_traces": len(traces),
        "success_rate": float(np.mean([list(t) == train_prm.reference_ids(p)
                                       for p, t in zip(problems, traces, strict=True)])),
        "log_loss_twist": _log_loss(twist_scores, outcomes),
        "log_loss_prm_as_twist": _log_loss(prm_scores, outcomes),
        "log_loss_constant_per_depth": _log_loss(constant, outcomes),
        "brier_twist": float(np.mean((np.asarray(twist_scores) - outcomes) ** 2)),
        "brier_prm_as_twist": float(np.mean((np.asarray(prm_scores) - outcomes) ** 2)),
    }


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    checkpoints = Path(__file__).resolve().parents[1] / "checkpoints"
    parser.add_argument("--out", type=Path, default=checkpoints,
                        help="writes arith_twist/ and twist_metrics.json here")
    parser.add_argument("--lm", type=Path, default=None, help="the language model (default "
                        "OUT/arith)")
    parser.add_argument("--prm", type=Path, default=None, help="the PRM to start from "
                        "(default OUT/arith_prm)")
    # 65,536 rollouts and 2,400 steps: 8,192 and 1,200 overfitted (held-out log loss 0.48,
    # last training batches 0.30), 32,768 and 1,200 gave 0.39, these 0.37 (11 min on 2 cores).
    parser.add_argument("--rollouts-per-difficulty", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--eval-per-difficulty", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=200)
    return parser


def train(argv=None, *, log=None) -> dict:
    args = parser().parse_args(argv)
    for name in ("rollouts_per_difficulty", "steps", "batch", "eval_per_difficulty",
                 "log_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"Expected --{name.replace('_', '-')} >= 1, got "
                             f"{getattr(args, name)}.")
    if log is None:
        log = lambda message: print(message, flush=True)  # noqa: E731
    start, start_cpu, start_load = time.perf_counter(), train_prm._cpu_seconds(), os.getloadavg()
    lm_dir = args.lm or args.out / "arith"
    prm_dir = args.prm or args.out / "arith_prm"
    token_model = TransformerTokenModel(loading.load_transformer(lm_dir), end_ids=(data.EOS_ID,))
    key_train, key_eval = jax.random.split(jax.random.key(args.seed))
    problems, traces = _rollouts(token_model, TRAIN_SEED + args.seed,
                                 args.rollouts_per_difficulty, key_train)
    examples = [rollout_example(p, t) for p, t in zip(problems, traces, strict=True)]
    successes = sum(e[1][-1] == 1 for e in examples)
    sampling_seconds = time.perf_counter() - start
    log(f"[sample] {len(examples)} rollouts at temperature 1, {successes} correct; "
        f"{sampling_seconds:.0f} s")

    start_model = prm.load(prm_dir)
    rng = np.random.default_rng([TRAIN_SEED + args.seed])
    model, fit_info = train_prm.fit(
        start_model, train_prm.batches(rng, examples, args.batch), steps=args.steps,
        learning_rate=args.learning_rate, step_weight=1.0, aux_weight=0.0, aux_layer=0,
        log_every=args.log_every, log=log, name="twist")
    twist = LearnedTwist(model, lm_dir.name, fingerprint(lm_dir))
    save(twist, args.out / "arith_twist")
    train_seconds, train_cpu = time.perf_counter() - start, train_prm._cpu_seconds() - start_cpu
    train_load = os.getloadavg()
    log(f"[twist] trained in {train_seconds:.0f} s wall, {train_cpu:.0f} CPU-s "
        f"(load average {train_load[0]:.2f})")

    stored = load(args.out / "arith_twist", lm_directory=lm_dir).model
    eval_problems, eval_traces = _rollouts(token_model, EVAL_SEED + args.seed,
                                           args.eval_per_difficulty, key_eval)
    quality = evaluate(stored, start_model, eval_problems, eval_traces)
    log("[eval] " + json.dumps(quality))
    metrics = {
        "start": str(prm_dir),
        "rollouts": len(examples),
        "correct_rollouts": int(successes),
        "training": fit_info,
        "sampling_seconds": sampling_seconds,
        "training_seconds_with_sampling": train_seconds,
        "training_cpu_seconds_with_sampling": train_cpu,
        "total_seconds_with_evaluation": time.perf_counter() - start,
        "load_average_1_5_15_min": {"start": start_load, "end_of_training": train_load,
                                    "end": os.getloadavg()},
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "held_out": quality,
    }
    (args.out / "twist_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


if __name__ == "__main__":
    train()
