"""``ppl.inference.llm.run``: every inference-time-scaling method, reached by name.

    result = llm.run("particle_filter", lm, tokenizer, prompts, key=jax.random.key(0),
                     reward=prm, num_particles=16)
    result.traces[0], result.answers[0], result.weights[0]

Problems are batched ``batch_size // num_particles`` at a time (fewer, a power of two, when
there are fewer problems) as one flat batch of rows (each problem its own group of
particles, with its own weights, resampling and evidence), the last batch padded to the
same number of problems so that every batch runs the same compiled programs.
Each problem's random draws depend on ``key`` and its position in ``prompts`` only, so a
problem gets the same answer alone or batched with others.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from ppl.inference.llm import baselines, constrained, filters, gibbs, power, resume, twisted
from ppl.inference.llm import population as P
from ppl.inference.llm.job import Job, MethodOutput
from ppl.inference.llm.prompts import encode_prompts as _encode
from ppl.inference.llm.prompts import round_up as _round_up
from ppl.inference.llm.prompts import stop_ids as _stop_ids
from ppl.inference.llm.selection import choose, last_line
from ppl.inference.smc.base import check_num_particles

from ppl.progress import ProgressBar
from ppl.reward_model import AGGREGATIONS, AbstractRewardModel, HostReward
from ppl.sharding import DevicesLike, Placement, resolve_devices

__all__ = ["METHODS", "LMResult", "MethodSpec", "read_problems", "run", "write_results"]


class MethodSpec(NamedTuple):
    """One method: its function, a line for listings, and whether it needs a reward."""

    fn: Callable[..., MethodOutput]
    description: str
    needs_reward: bool


METHODS: dict[str, MethodSpec] = {
    "best_of_n": MethodSpec(
        baselines.best_of_n, "N independent traces, the best final reward", True),
    "weighted_best_of_n": MethodSpec(
        baselines.weighted_best_of_n, "N independent traces, answers' summed final rewards",
        True),
    "self_consistency": MethodSpec(
        baselines.self_consistency, "N independent traces, majority vote (no reward)", False),
    "beam_search": MethodSpec(
        baselines.beam_search, "step-level beams: keep N/M by the PRM, expand each M ways",
        True),
    "particle_filter": MethodSpec(
        filters.particle_filter, "particle filtering with the PRM (Puri et al. 2025)", True),
    "entropic_particle_filter": MethodSpec(
        filters.entropic_particle_filter,
        "particle filtering with entropic annealing and look-ahead (ePF)", True),
    "particle_gibbs": MethodSpec(
        gibbs.particle_gibbs, "iterated conditional SMC keeping a reference trace", True),
    "constrained_smc": MethodSpec(
        constrained.constrained_smc,
        "token-level SMC under a Boolean constraint (adaptive weighted rejection sampling)",
        False),
    "twisted_smc": MethodSpec(
        twisted.twisted_smc, "twisted SMC of the LM conditioned on a final verdict (the reward "
        "is the twist)", False),
    "power_sampling": MethodSpec(
        power.power_sampling, "Metropolis-Hastings over blocks targeting p_LM^alpha (no reward)",
        False),
}


@dataclasses.dataclass
class LMResult:
    """What a method found, per problem.

    Attributes:
        method: the method's name.
        prompts: the prompts, in order.
        traces: the chosen trace of each problem (the text after its prompt).
        answers: the chosen trace's answer (``answer_fn``; None when it has none).
        candidates: every final trace of each problem (``N`` of them).
        candidate_answers: their answers.
        weights: ``(P, N)`` normalised weights the answer was chosen by.
        scores: ``(P, N)`` final (aggregated) reward scores of the candidates.
        candidate_tokens: ``(P, N)`` tokens of each final trace (its end token included).
        candidate_steps: ``(P, N)`` steps of each final trace.
        candidate_reward_calls: ``(P, N)`` of those steps, how many the reward scored.
        log_evidence: ``(P,)`` log-evidence estimates, where the method defines one.
        tokens: ``(P,)`` tokens sampled per problem (every one, discarded particles too).
        reward_calls: ``(P,)`` particle steps scored by the reward.
        forward_passes: sequential decoding passes of the language model, all batches.
        collapsed: ``(P,)`` problems whose weights all vanished (``allow_collapse``).
        wall_time: seconds for the whole run.
        settings: what ran.
        extra: method-specific records, per batch.
        timings: with ``profile=True``: seconds in the language model (``lm``), the reward
            (``reward``), everything else (``smc``: resampling, copies, bookkeeping and the
            host loop) and the whole run (``wall``; choosing answers and decoding the final
            traces come after it).
    """

    method: str
    prompts: list[str]
    traces: list[str]
    answers: list[Any]
    candidates: list[list[str]]
    candidate_answers: list[list[Any]]
    weights: np.ndarray
    scores: np.ndarray
    candidate_tokens: np.ndarray
    candidate_steps: np.ndarray
    candidate_reward_calls: np.ndarray
    log_evidence: np.ndarray | None
    tokens: np.ndarray
    reward_calls: np.ndarray
    forward_passes: int
    collapsed: np.ndarray
    wall_time: float
    settings: dict
    extra: list[dict]
    timings: dict | None = None

    def records(self) -> list[dict]:
        """One JSON-ready dict per problem (what ``ppl lm solve --out`` writes)."""
        rows = []
        for i, prompt in enumerate(self.prompts):
            row = {
                "prompt": prompt,
                "trace": self.traces[i],
                "answer": _jsonable(self.answers[i]),
                "traces": self.candidates[i],
                "weights": [float(w) for w in self.weights[i]],
                "scores": [float(s) for s in self.scores[i]],
                "tokens": int(self.tokens[i]),
                "reward_calls": int(self.reward_calls[i]),
                "method": self.method,
            }
            if self.log_evidence is not None:
                row["log_evidence"] = float(self.log_evidence[i])
            rows.append(row)
        return rows

    def __repr__(self) -> str:
        return (
            f"LMResult({self.method}, {len(self.prompts)} problems, "
            f"{int(self.tokens.sum())} tokens, {self.wall_time:.1f} s)"
        )


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    return value if isinstance(value, int | float | str | bool | type(None)) else str(value)


def _as_reward(reward):
    if reward is None or isinstance(reward, AbstractRewardModel | HostReward):
        return reward
    if callable(reward):
        return HostReward(reward)
    raise TypeError(
        "Expected reward to be a ppl.reward_model.AbstractRewardModel, a HostReward, a "
        f"callable (prompts, traces) -> scores, or None; got {type(reward).__name__}."
    )


def run(
    method: str,
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    key,
    reward=None,
    num_particles: int = 16,
    temperature: float = 0.8,
    answer_fn: Callable[[str], Any] | None = None,
    stop: str | Sequence[str] = "\n",
    aggregation: str = "last",
    score_clip: float | None = None,
    max_step_tokens: int = 64,
    max_steps: int = 64,
    reward_pass_tokens: int = 16,
    max_new_tokens: int = 192,
    max_length: int | None = None,
    batch_size: int = 256,
    allow_collapse: bool = False,
    unfinished_score: float | None = None,
    progress_bar: bool | None = None,
    profile: bool = False,
    devices: DevicesLike = None,
    checkpoint_dir: str | Path | None = None,
    **settings,
) -> LMResult:
    """Runs an inference-time-scaling method on many prompts.

    Args:
        method: one of :data:`METHODS` (``particle_filter``, ``best_of_n``, ...).
        model: a token model (:class:`ppl.token_adapter.AbstractTokenModel`).
        tokenizer: with ``encode``, ``decode`` and ``stop_ids`` (:class:`ppl.models.lm.Tokenizer`).
        prompts: the problems' prompts.
        key: a PRNG key (or an int seed).
        reward: a JAX reward model (:class:`ppl.reward_model.AbstractRewardModel`), a host
            reward or any callable ``(prompts, traces) -> scores`` in [0, 1], or None.
        num_particles: ``N``, particles (or samples, or the budget) per problem.
        temperature: the language model's sampling temperature (0.8, as the anchors).
        answer_fn: a trace's answer (default: its last non-empty line).
        stop: what ends a step (default a newline).
        aggregation: how step scores combine: ``"last"``, ``"min"`` or ``"product"``.
        score_clip: scores are clipped to ``[clip, 1 - clip]`` in potentials; 0 keeps exact
            zeros. Default: the reward's own ``score_clip`` when it declares one (a verifier
            with a known error rate: its rate), else 1e-7, as the anchors.
        max_step_tokens: a step this long without a stop ran away; its particle is ended.
        max_steps: steps after which a particle is ended.
        reward_pass_tokens: columns of a step a JAX reward reads per pass. A pass costs
            about what its width does, so about the longest usual step is best (12 on the
            testbed, whose lines have at most 11 tokens); longer steps take several passes.
        max_new_tokens: room in the buffer after the longest prompt.
        max_length: the buffer (prompt plus trace); default the longest prompt plus
            ``max_new_tokens``, rounded up to 128 so that problems of other lengths reuse
            the compiled programs.
        batch_size: rows (problems times particles) per batch.
        allow_collapse: when every weight of a problem vanishes (a zero-score reward with
            ``score_clip=0``), record it (no answer, log-evidence -inf) instead of raising.
        unfinished_score: the score of a trace ended without an end token (a runaway step,
            the step or length limit), for rewards that judge whole traces (0); default: it
            keeps its last score.
        progress_bar: show one (default: when stderr is a terminal).
        profile: time the language model and the reward apart (``LMResult.timings``; each
            step then runs in separately synchronised pieces, slightly slower).
        devices: where the particles run (:func:`ppl.sharding.resolve_devices`): None (all
            devices of all processes), ``"local"``, a count, a list of devices. Each batch's
            problems are split over them whole (a problem's particles and their KV caches
            on one device), so resampling never crosses devices; the problems per batch are
            rounded up to a multiple of the device count (padding copies, dropped). The
            answers are those of one device. ``power_sampling``, ``constrained_smc`` and
            the token-level ``twisted_smc`` run on one device (an explicit request for
            several is refused). Under ``jax.distributed`` call ``run`` on every process:
            each gets every problem's result.
        checkpoint_dir: a directory where each finished batch of problems is recorded
            (:mod:`~ppl.inference.llm.resume`); calling again with the same arguments after
            an interruption skips the recorded batches, with the result of an uninterrupted
            run. A directory holding another run is refused, naming what differs.
        **settings: the method's own (``potential``, ``weight_temperature``, ``select``,
            ``expansions``, ``num_iterations``, ``target_ess``, ``lookahead_tokens``, ...).

    Returns:
        :class:`LMResult`.
    """
    if method not in METHODS:
        raise ValueError(f"Expected method one of {', '.join(METHODS)}, got {method!r}.")
    spec = METHODS[method]
    num_particles = check_num_particles(num_particles)
    reward = _as_reward(reward)
    if spec.needs_reward and reward is None:
        raise ValueError(
            f"Expected a reward for method {method!r} (it weighs traces by their scores), got "
            "None. Methods that need none: "
            + ", ".join(name for name, s in METHODS.items() if not s.needs_reward) + "."
        )
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"Expected aggregation one of {', '.join(AGGREGATIONS)}, got "
                         f"{aggregation!r}.")
    if score_clip is None:
        score_clip = getattr(reward, "score_clip", None)
        score_clip = 1e-7 if score_clip is None else float(score_clip)
    if not 0 <= score_clip < 0.5:
        raise ValueError(f"Expected score_clip in [0, 0.5), got {score_clip!r}.")
    if not temperature >= 0:
        raise ValueError(f"Expected temperature >= 0, got {temperature!r}.")
    for name, value in (("max_step_tokens", max_step_tokens), ("max_steps", max_steps),
                        ("max_new_tokens", max_new_tokens), ("batch_size", batch_size),
                        ("reward_pass_tokens", reward_pass_tokens)):
        check_num_particles(value, name)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("Expected at least one prompt, got none.")
    if isinstance(key, int):
        key = jax.random.key(key)
    encoded = _encode(tokenizer, prompts)
    longest = max(len(ids) for ids in encoded)
    if max_length is None:
        max_length = _round_up(longest + max_new_tokens, 128)
    if longest >= max_length:
        raise ValueError(
            f"Expected prompts shorter than max_length={max_length} tokens (the buffer holds "
            f"the prompt and the trace), got one of {longest} tokens (prompt "
            f"{int(np.argmax([len(i) for i in encoded]))})."
        )
    answer_fn = answer_fn or last_line
    placement = _placement(method, devices, settings)
    step = P.Settings(
        num_particles=num_particles,
        temperature=float(temperature),
        stop_ids=_stop_ids(tokenizer, stop),
        end_ids=tuple(int(i) for i in getattr(model, "end_ids", ())),
        max_step_tokens=int(max_step_tokens),
        max_steps=int(max_steps),
        reward_pass_tokens=int(reward_pass_tokens),
        aggregation=aggregation,
        score_clip=float(score_clip),
        reward_reads_end=bool(getattr(reward, "reads_end_tokens", False)),
        unfinished_score=-1.0 if unfinished_score is None else float(unfinished_score),
        placement=placement,
    )
    # Problems per batch: as many as batch_size rows hold, fewer (a power of two, so that
    # few shapes compile) when there are not that many problems.
    groups = max(1, batch_size // num_particles)
    groups = min(groups, 1 << max(0, int(np.ceil(np.log2(len(prompts))))))
    if placement is not None:
        groups = placement.padded_size(groups)
        if len(prompts) < placement.num_devices:
            warnings.warn(
                f"{len(prompts)} problem(s) over {placement.num_devices} devices: "
                f"{placement.num_devices - len(prompts)} device(s) run padding copies of the "
                f"last problem, which are dropped. Pass devices={len(prompts)} (or more "
                "problems) not to waste them.", UserWarning, stacklevel=2)
    width = _round_up(longest, 16)
    problem_keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(
        np.arange(_round_up(len(prompts), groups))
    )
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    recorded, checkpoint = [], None
    if checkpoint_dir is not None:
        checkpoint = resume.open_checkpoint(
            checkpoint_dir, method=method, prompts=prompts, key=key, model=model,
            reward=reward, groups=groups,
            settings={**_run_settings(num_particles, temperature, aggregation, score_clip,
                                      max_step_tokens, max_steps, max_length, reward),
                      "stop": repr(stop), "unfinished_score": unfinished_score,
                      "allow_collapse": allow_collapse, "reward_pass_tokens": reward_pass_tokens,
                      **settings},
            multi_process=placement is not None and placement.multi_process)
        restored = checkpoint.load(np.zeros(()))
        if restored is not None:
            recorded = [resume.restore(block) for block in restored[1]]
    outputs, extras = [], []
    timings = {"lm": 0.0, "reward": 0.0, "resample": 0.0, "copy": 0.0} if profile else None
    start = time.perf_counter()
    with ProgressBar(len(prompts) if ProgressBar.wanted(progress_bar) else 0,
                     desc=method) as bar:
        for index, first in enumerate(range(0, len(prompts), groups)):
            chunk = list(range(first, min(first + groups, len(prompts))))
            if index < len(recorded):
                outputs.append((chunk, recorded[index]))
                extras.append(recorded[index].extra)
                bar.update_to(chunk[-1] + 1)
                continue
            padded = chunk + [chunk[-1]] * (groups - len(chunk))
            ids = np.zeros((groups, width), np.int32)
            lengths = np.array([len(encoded[i]) for i in padded], np.int32)
            for row, i in enumerate(padded):
                ids[row, : lengths[row]] = encoded[i]
            batch_prompts = [prompts[i] for i in padded]
            context = reward.prepare(batch_prompts) if isinstance(
                reward, AbstractRewardModel) else None
            job = Job(
                lm=model, reward=reward, prompts=batch_prompts, prompt_ids=ids,
                prompt_lengths=lengths, context=context, max_length=int(max_length), step=step,
                decode=tokenizer.decode, allow_collapse=allow_collapse, on_step=None,
                labels=[f"{i} ({prompts[i]!r})" for i in padded], timings=timings,
            )
            out = spec.fn(problem_keys[first : first + groups], job, **settings)
            if checkpoint is not None:
                checkpoint.save(index, resume.record(out), np.zeros(()))
            outputs.append((chunk, out))
            extras.append(out.extra)
            bar.update_to(chunk[-1] + 1)
    wall_time = time.perf_counter() - start
    if timings is not None:
        timings["wall"] = wall_time
        timings["smc"] = wall_time - timings["lm"] - timings["reward"]
    return _assemble(method, prompts, outputs, extras, tokenizer, answer_fn, rng, wall_time,
                     timings,
                     settings={**_run_settings(num_particles, temperature, aggregation,
                                               score_clip, max_step_tokens, max_steps,
                                               max_length, reward),
                               "batch_size": batch_size,
                               "devices": 1 if placement is None else placement.num_devices,
                               "resumed_batches": len(recorded), **settings})


def _run_settings(num_particles, temperature, aggregation, score_clip, max_step_tokens,
                  max_steps, max_length, reward) -> dict:
    """What ran, as ``LMResult.settings`` and a checkpoint's manifest record it."""
    return {"num_particles": num_particles, "temperature": temperature,
            "aggregation": aggregation, "score_clip": score_clip,
            "max_step_tokens": max_step_tokens, "max_steps": max_steps,
            "max_length": int(max_length), "reward": repr(reward)}


# Methods with loops of their own (token by token, or Metropolis-Hastings over blocks): they
# run on one device.
_ONE_DEVICE_METHODS = ("power_sampling", "constrained_smc")


def _placement(method: str, devices: DevicesLike, settings: dict) -> Placement | None:
    """The devices the method's problems are split over; None for one device."""
    own_loop = method in _ONE_DEVICE_METHODS or (
        method == "twisted_smc" and settings.get("proposal") == "token")
    if own_loop:
        if devices is not None and resolve_devices(devices, "particle").num_devices > 1:
            what = "twisted_smc with proposal='token'" if method == "twisted_smc" else method
            raise ValueError(
                f"{what} runs on one device (its loop is its own, not the step-level SMC "
                f"driver's); got devices={devices!r}. Leave devices=None, or pass devices=1."
            )
        return None
    placement = resolve_devices(devices, "particle")
    return placement if placement.num_devices > 1 else None


def _assemble(method, prompts, outputs, extras, tokenizer, answer_fn, rng, wall_time, timings,
              settings):
    traces, answers, candidates, candidate_answers = [], [], [], []
    weights, scores, evidence, tokens, calls, collapsed = [], [], [], [], [], []
    candidate_tokens, candidate_steps, candidate_calls = [], [], []
    passes, has_evidence = 0, True
    for chunk, out in outputs:
        batch = out.batch
        n = batch.log_weights.shape[1]
        passes += batch.budget.forward_passes
        has_evidence &= out.log_evidence is not None
        for g, _ in enumerate(chunk):
            rows = range(g * n, (g + 1) * n)
            texts = [tokenizer.decode(batch.tokens[r, : batch.length[r]]) for r in rows]
            w = np.asarray(out.selection_weights[g], np.float64)
            index, answer, row_answers = choose(texts, w, how=out.select, answer_fn=answer_fn,
                                                rng=rng)
            if batch.collapsed[g]:
                answer = None
            traces.append(texts[index])
            answers.append(answer)
            candidates.append(texts)
            candidate_answers.append(row_answers)
            total = w.sum()
            weights.append(w / total if total > 0 else np.full(n, 1.0 / n))
            scores.append(batch.score[g * n : (g + 1) * n])
            candidate_tokens.append(batch.length[g * n : (g + 1) * n])
            candidate_steps.append(batch.num_steps[g * n : (g + 1) * n])
            candidate_calls.append(batch.num_scored[g * n : (g + 1) * n])
            evidence.append(out.log_evidence[g] if out.log_evidence is not None else np.nan)
            tokens.append(batch.budget.tokens[g])
            calls.append(batch.budget.reward_calls[g])
            collapsed.append(batch.collapsed[g])
    return LMResult(
        method=method,
        prompts=list(prompts),
        traces=traces,
        answers=answers,
        candidates=candidates,
        candidate_answers=candidate_answers,
        weights=np.asarray(weights),
        scores=np.asarray(scores),
        candidate_tokens=np.asarray(candidate_tokens),
        candidate_steps=np.asarray(candidate_steps),
        candidate_reward_calls=np.asarray(candidate_calls),
        log_evidence=np.asarray(evidence) if has_evidence else None,
        tokens=np.asarray(tokens),
        reward_calls=np.asarray(calls),
        forward_passes=int(passes),
        collapsed=np.asarray(collapsed, bool),
        wall_time=wall_time,
        settings=settings,
        extra=extras,
        timings=timings,
    )


def read_problems(path: str | Path) -> list[dict]:
    """Problems from a JSONL file: one JSON object per line with at least ``"prompt"``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Expected a JSONL file of problems at {str(path)!r}, got no such file.")
    problems = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: expected a JSON object, got {line[:60]!r} "
                             f"({error.msg}).") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise ValueError(f'{path}:{number}: expected an object with a "prompt" string, got '
                             f"{line[:60]!r}.")
        problems.append(row)
    if not problems:
        raise ValueError(f"Expected at least one problem in {path}, got an empty file.")
    return problems


def write_results(path: str | Path, result: LMResult, extra_fields: Sequence[dict] | None = None):
    """One JSON object per problem (``LMResult.records``, plus ``extra_fields`` per line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = result.records()
    if extra_fields is not None:
        records = [{**extra, **row} for extra, row in zip(extra_fields, records, strict=True)]
    with path.open("w") as handle:
        for row in records:
            handle.write(json.dumps(row) + "\n")
