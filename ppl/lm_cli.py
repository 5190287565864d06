"""``ppl lm solve`` and ``ppl lm scaling``: inference-time scaling on the command line.

    ppl lm solve --method particle_filter --particles 16 --reward learned \\
        --problems problems.jsonl --out answers.jsonl --seed 0
    ppl lm scaling --out reports/scaling            # the full study (hours on 2 cores)
    ppl lm scaling --out reports/scaling --quick    # a few minutes

The facade joins the language-model testbed (``ppl.models.lm``) and the algorithms
(``ppl.inference.llm``), which do not import each other. Rewards by name: ``oracle`` (the
exact checker, on token ids), ``learned`` (the testbed's learned PRM, with its KV cache),
``noisy:RATE`` (the checker's verdict flipped at RATE, false accepts and rejects alike),
``none``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["add_commands", "make_constraint", "make_reward"]

_CHECKPOINTS = Path(__file__).resolve().parents[1] / "models" / "lm" / "checkpoints"


def _ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"Expected comma-separated integers, got {text!r}."
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"Expected positive integers, got {text!r}.")
    return values


def _floats(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"Expected comma-separated numbers, got {text!r}."
        ) from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"Expected positive numbers, got {text!r}.")
    return values


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def make_reward(spec: str, *, seed: int = 0, checkpoints: Path = _CHECKPOINTS):
    """A testbed reward by name: ``oracle``, ``learned``, ``noisy:RATE`` or ``none``."""
    from ppl.models.lm.testbed import prm

    if spec == "none":
        return None
    if spec == "oracle":
        return prm.OracleReward()
    if spec == "learned":
        return prm.load(checkpoints / "arith_prm").reward_model()
    if spec.startswith("noisy:"):
        try:
            rate = float(spec.split(":", 1)[1])
        except ValueError:
            rate = None
        if rate is None or not 0 <= rate <= 1:
            raise ValueError(f"Expected noisy:RATE with RATE in [0, 1], got {spec!r}.")
        return prm.NoisyOracleReward(false_accept_rate=rate, false_reject_rate=rate, seed=seed)
    raise ValueError(
        f"Expected a reward among oracle, learned, noisy:RATE, none; got {spec!r}."
    )


def make_constraint(spec: str):
    """A constraint by name: ``copies`` (the testbed's) or ``module:function``."""
    if spec == "copies":
        from ppl.models.lm.testbed.constraints import copies_the_prompt

        return copies_the_prompt
    if ":" in spec:
        import importlib

        module_name, name = spec.split(":", 1)
        sys.path.insert(0, str(Path.cwd()))
        try:
            return getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError) as error:
            raise ValueError(
                f"Expected --constraint module:function, got {spec!r} ({error})."
            ) from None
    raise ValueError(f"Expected --constraint 'copies' or module:function, got {spec!r}.")


def _settings(pairs: list[str]) -> dict:
    from ppl.cli import _settings as parse

    return parse(pairs)


def add_commands(commands) -> None:
    """Adds ``solve`` and ``scaling`` to the ``ppl lm`` subcommands."""
    from ppl.inference.llm import METHODS

    solve = commands.add_parser(
        "solve", help="solve problems with an inference-time-scaling method",
        description="Solve problems with an inference-time-scaling method; writes one JSON "
                    "object per problem.")
    solve.add_argument("--method", default="particle_filter", choices=sorted(METHODS))
    solve.add_argument("--particles", type=int, default=16, help="N (default 16)")
    solve.add_argument("--reward", default="learned",
                       help="oracle, learned (default), noisy:RATE or none")
    solve.add_argument("--problems", type=Path,
                       help='JSONL, one object per line with at least "prompt" (default: '
                            "testbed problems, see --difficulty and --num-problems)")
    solve.add_argument("--out", type=Path, help="JSONL answers, one object per problem")
    solve.add_argument("--seed", type=int, default=0)
    solve.add_argument("--difficulty", type=int, default=8, help="operations (generated problems)")
    solve.add_argument("--num-problems", type=int, default=20)
    solve.add_argument("--temperature", type=float, default=0.8)
    solve.add_argument("--checkpoint", type=Path, default=_CHECKPOINTS / "arith",
                       help="the language model (default: the testbed's)")
    solve.add_argument("--batch-size", type=int, default=256, help="rows per batch")
    solve.add_argument("--checkpoint-dir", type=Path, default=None, metavar="DIR",
                       help="record each finished batch there; the same command again "
                            "resumes after an interruption")
    solve.add_argument("--devices", type=int, default=None, metavar="N",
                       help="split each batch's problems over the first N devices (default: "
                            "every device; power_sampling and constrained_smc use one)")
    solve.add_argument("--constraint",
                       help="for --method constrained_smc: 'copies' (the testbed's: every "
                            "line copies its operands from the prompt) or module:function "
                            "(prompt, text) -> bool")
    solve.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                       help="method settings, e.g. --set potential=increment select=vote")
    solve.add_argument("--show", type=int, default=3, help="print this many chosen traces")
    solve.set_defaults(func=run_solve)

    evidence = commands.add_parser(
        "evidence", help="bounds on log P_LM(correct) per problem (twisted SMC and CSMC)",
        description="Lower (SMC) and upper (conditional SMC around exact samples) bounds on "
                    "the log-probability that the language model solves each problem exactly; "
                    "one JSON object per problem.")
    evidence.add_argument("--method", default="twisted_smc", choices=["smc", "twisted_smc"])
    evidence.add_argument("--particles", type=int, default=16)
    evidence.add_argument("--twist", default="learned",
                          help="twisted_smc's twist: learned (the testbed's, default) or oracle "
                               "(the exact prefix check)")
    evidence.add_argument("--proposal", default="step", choices=["step", "token"])
    evidence.add_argument("--problems", type=Path, help="JSONL with testbed prompts (default: "
                                                        "generated, --difficulty/--num-problems)")
    evidence.add_argument("--out", type=Path, help="JSONL, one object per problem")
    evidence.add_argument("--seed", type=int, default=0)
    evidence.add_argument("--difficulty", type=int, default=8)
    evidence.add_argument("--num-problems", type=int, default=10)
    evidence.add_argument("--runs", type=int, default=4, help="SMC runs per problem (lower)")
    evidence.add_argument("--exact-samples", type=int, default=4,
                          help="exact draws per problem for the upper bound")
    evidence.add_argument("--max-tries", type=int, default=1024,
                          help="plain samples per problem spent looking for exact draws")
    evidence.add_argument("--checkpoint", type=Path, default=_CHECKPOINTS / "arith")
    evidence.set_defaults(func=run_evidence)

    scaling = commands.add_parser(
        "scaling", help="accuracy against budget for every method (HTML report and JSON)",
        description="Scaling curves: accuracy against budget per method, reward and "
                    "difficulty; resumable (points.jsonl in --out).")
    scaling.add_argument("--out", type=Path, required=True, help="report directory")
    scaling.add_argument("--difficulties", type=_ints, default=[4, 6, 8])
    scaling.add_argument("--particles", type=_ints, default=[1, 2, 4, 8, 16, 32, 64])
    from ppl.inference.llm.scaling import INDEPENDENT, PARTICLE_METHODS

    scaling.add_argument("--methods", type=_names,
                         default=[*INDEPENDENT, *PARTICLE_METHODS, "power_sampling"],
                         help="comma-separated (default: the baselines, the particle methods "
                              "and power_sampling, whose curve is against --alphas)")
    scaling.add_argument("--alphas", type=_floats, default=[1.0, 2.0, 4.0],
                         help="power sampling's powers (default 1,2,4)")
    scaling.add_argument("--rewards", type=_names, default=["oracle", "noisy:0.2", "learned"])
    scaling.add_argument("--num-problems", type=int, default=160,
                         help="per difficulty (160 keeps every standard error below 0.04)")
    scaling.add_argument("--seed", type=int, default=0)
    scaling.add_argument("--temperature", type=float, default=0.8)
    scaling.add_argument("--checkpoint", type=Path, default=_CHECKPOINTS / "arith")
    scaling.add_argument("--batch-size", type=int, default=256)
    scaling.add_argument("--quick", action="store_true",
                         help="8 operations, N in 1,4,16, 40 problems, the filter and two "
                              "baselines with the oracle and the learned PRM (a few minutes)")
    scaling.set_defaults(func=run_scaling)


def _testbed_problems(rng_seed: int, difficulty: int, count: int):
    import numpy as np

    from ppl.models.lm.testbed import tasks

    rng = np.random.default_rng([rng_seed, difficulty, 7])
    return [tasks.generate(rng, difficulty) for _ in range(count)]


def _problem_of(prompt: str):
    from ppl.models.lm.testbed import tasks

    try:
        return tasks.parse_prompt(prompt)
    except ValueError:
        return None


def run_solve(args) -> int:
    import jax

    from ppl.inference import llm
    from ppl.models import lm
    from ppl.models.lm.testbed import tasks

    for name in ("particles", "num_problems", "difficulty", "batch_size"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"Expected {flag} >= 1, got {getattr(args, name)}.")
    if args.problems is not None:
        rows = llm.read_problems(args.problems)
    else:
        rows = [{"prompt": p.prompt} for p in _testbed_problems(args.seed, args.difficulty,
                                                                 args.num_problems)]
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.open("a").close()  # an unwritable --out fails now, before the work
    prompts = [row["prompt"] for row in rows]
    settings = _settings(args.set)
    if args.constraint is not None:
        if args.method != "constrained_smc":
            raise ValueError(f"Expected --method constrained_smc with --constraint (it is what "
                             f"applies a constraint), got --method {args.method}.")
        settings["constraint"] = make_constraint(args.constraint)
    elif args.method == "constrained_smc":
        raise ValueError("Expected --constraint with --method constrained_smc ('copies' or "
                         "module:function).")
    model, tokenizer = lm.load(args.checkpoint), lm.load_tokenizer(args.checkpoint)
    reward = make_reward(args.reward, seed=args.seed)
    result = llm.run(args.method, model, tokenizer, prompts, key=jax.random.key(args.seed),
                     reward=reward, num_particles=args.particles, temperature=args.temperature,
                     answer_fn=tasks.parse_answer, batch_size=args.batch_size,
                     devices=args.devices, checkpoint_dir=args.checkpoint_dir, **settings)
    extras, correct = [], []
    for row, answer in zip(rows, result.answers, strict=True):
        problem = _problem_of(row["prompt"])
        extra = {k: v for k, v in row.items() if k != "prompt"}
        if problem is not None:
            extra["reference_answer"] = problem.answer
            extra["correct"] = answer == problem.answer
            correct.append(extra["correct"])
        extras.append(extra)
    if args.out is not None:
        llm.write_results(args.out, result, extras)
    print(f"{args.method}, N={args.particles}, reward {args.reward}: {len(prompts)} problems "
          f"in {result.wall_time:.1f} s, {result.tokens.mean():.0f} tokens per problem")
    if correct:
        import numpy as np

        accuracy = float(np.mean(correct))
        se = float(np.sqrt(accuracy * (1 - accuracy) / len(correct)))
        print(f"accuracy {accuracy:.3f} ± {se:.3f} ({sum(correct)} of {len(correct)})")
    for prompt, trace in list(zip(prompts, result.traces, strict=True))[: args.show]:
        print(f"\n{prompt}{trace}")
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0


def make_twist(spec: str, *, checkpoints: Path = _CHECKPOINTS, lm_directory=None):
    """A testbed twist by name: ``learned`` (``arith_twist``, refused unless it was trained
    for the language model in ``lm_directory``, when given) or ``oracle``."""
    from ppl.models.lm.testbed import prm

    if spec == "oracle":
        return prm.OracleReward()
    if spec == "learned":
        from ppl.models.lm.testbed import twist

        return twist.load(checkpoints / "arith_twist", lm_directory=lm_directory).reward_model()
    raise ValueError(f"Expected --twist learned or oracle, got {spec!r}.")


def run_evidence(args) -> int:
    import jax

    from ppl.inference.llm import evidence, read_problems
    from ppl.models import lm
    from ppl.models.lm.testbed import prm

    for name in ("particles", "num_problems", "runs", "max_tries"):
        if getattr(args, name) < 1:
            raise ValueError(f"Expected --{name.replace('_', '-')} >= 1, got "
                             f"{getattr(args, name)}.")
    if args.problems is not None:
        rows = read_problems(args.problems)
    else:
        rows = [{"prompt": p.prompt} for p in _testbed_problems(args.seed, args.difficulty,
                                                                 args.num_problems)]
    problems = []
    for number, row in enumerate(rows, 1):
        problem = _problem_of(row["prompt"])
        if problem is None:
            raise ValueError(f"Problem {number}: expected a testbed prompt (the exact checker "
                             f"defines the target), got {row['prompt']!r}.")
        problems.append(problem)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.open("a").close()
    prompts = [p.prompt for p in problems]
    model, tokenizer = lm.load(args.checkpoint), lm.load_tokenizer(args.checkpoint)
    key = jax.random.key(args.seed)
    samples, tries = evidence.rejection_samples(
        model, tokenizer, prompts, lambda i, text: text == problems[i].solution(),
        key=jax.random.fold_in(key, 1), num_samples=args.exact_samples,
        max_tries=args.max_tries)
    twist = (make_twist(args.twist, lm_directory=args.checkpoint)
             if args.method == "twisted_smc" else None)
    result = evidence.evidence_bounds(
        args.method, model, tokenizer, prompts, key=key, final=prm.OracleReward(), twist=twist,
        exact_samples=samples, num_particles=args.particles, num_runs=args.runs,
        proposal=args.proposal)
    result.rejection_tries[:] = tries
    records = result.records()
    for row, record in zip(rows, records, strict=True):
        record.update({k: v for k, v in row.items() if k != "prompt"})
    if args.out is not None:
        with args.out.open("w") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
    print(f"{args.method} (N={args.particles}, {args.runs} runs, proposal {args.proposal}): "
          f"{len(prompts)} problems in {result.wall_time:.0f} s")
    for record in records:
        upper = record["log_z_upper"]
        print(f"  lower {record['log_z_lower']:8.3f}  upper "
              f"{'   (none)' if upper is None else f'{upper:8.3f}'}  exact samples "
              f"{record['num_exact_samples']} of {record['rejection_tries']} tries  "
              f"{record['prompt'].strip()}")
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0


def run_scaling(args) -> int:
    import jax

    from ppl.diagnostics.scaling_report import budget_matches, write_scaling_report
    from ppl.inference import llm
    from ppl.inference.llm.scaling import ProblemSet, scaling_study
    from ppl.models import lm
    from ppl.models.lm.testbed import tasks

    if args.quick:
        args.difficulties, args.particles, args.num_problems = [8], [1, 4, 16], 40
        args.methods = ["particle_filter", "weighted_best_of_n", "self_consistency"]
        args.rewards = ["oracle", "learned"]
    unknown = [m for m in args.methods if m not in llm.METHODS]
    if unknown:
        raise ValueError(f"Expected methods among {', '.join(llm.METHODS)}, got {unknown}.")
    if any(not a > 0 for a in args.alphas):
        raise ValueError(f"Expected every --alphas value > 0, got {args.alphas}.")
    rewards = {"none": None} if "self_consistency" in args.methods else {}
    for spec in args.rewards:
        rewards[spec] = make_reward(spec, seed=args.seed)
    problem_sets = []
    for difficulty in args.difficulties:
        problems = _testbed_problems(10_000 + args.seed, difficulty, args.num_problems)
        problem_sets.append(ProblemSet(
            f"{difficulty} operations", [p.prompt for p in problems],
            lambda i, answer, problems=problems: answer == problems[i].answer))
    model, tokenizer = lm.load(args.checkpoint), lm.load_tokenizer(args.checkpoint)
    start = time.perf_counter()
    points = scaling_study(
        model, tokenizer, problem_sets, rewards, methods=args.methods,
        particle_counts=args.particles, key=jax.random.key(args.seed),
        answer_fn=tasks.parse_answer, out_dir=args.out,
        run_settings={"temperature": args.temperature, "batch_size": args.batch_size},
        alphas=args.alphas, log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    path = write_scaling_report(
        points, args.out, title="Inference-time scaling on the arithmetic testbed",
        notes=f"LM {args.checkpoint.name} at temperature {args.temperature}; "
              f"{args.num_problems} problems per difficulty; seed {args.seed}.")
    matches = budget_matches(points)
    (args.out / "budget_matches.json").write_text(json.dumps(matches, indent=1) + "\n")
    print(f"{len(points)} points in {time.perf_counter() - start:.0f} s; wrote {path}")
    worst = max((p["accuracy_se"] for p in points), default=0.0)
    print(f"largest standard error: {worst:.3f}")
    return 0
