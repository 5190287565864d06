"""The reasoning testbed: generator, checker, shipped checkpoint, PRMs and the CLI."""

import argparse
from pathlib import Path

import jax
import numpy as np
import pytest
from ppl.models import lm
from ppl.models.lm import cli
from ppl.models.lm.testbed import data, evaluate, prm, tasks

CHECKPOINTS = Path(lm.__file__).parent / "checkpoints"


def test_generated_problems_stay_in_range_and_gold_solutions_check():
    rng = np.random.default_rng(0)
    for difficulty in range(1, 9):
        for _ in range(50):
            problem = tasks.generate(rng, difficulty)
            assert problem.difficulty == difficulty
            assert all(0 <= v <= tasks.MAX_VALUE for v in [problem.start, *problem.values()])
            solution = problem.solution()
            assert tasks.is_correct(problem, solution)
            assert all(tasks.step_labels(problem, solution))
            lines = solution.splitlines()
            previous = problem.start
            for line, operation, value in zip(
                lines, problem.operations, problem.values(), strict=False
            ):
                assert tasks.step_is_valid(line, previous, operation)
                previous = value


def test_checker_catches_a_wrong_step_and_everything_after():
    problem = tasks.Problem(17, (("+", 8), ("*", 3), ("-", 25)))
    assert problem.solution() == "17+8=25\n25*3=75\n75-25=50\nA 50\n"
    wrong = "17+8=25\n25*3=76\n76-25=51\nA 51\n"
    assert tasks.step_labels(problem, wrong) == [True, False, False, False]
    assert not tasks.is_correct(problem, wrong)
    assert not tasks.step_is_valid("25*3=76", 25, ("*", 3))
    # An unfinished last line is not a step yet.
    assert tasks.step_labels(problem, "17+8=25\n25*3=7") == [True]
    assert tasks.parse_answer("no answer") is None
    with pytest.raises(ValueError, match="difficulty"):
        tasks.generate(np.random.default_rng(0), 0)


def test_slip_rate_matches_its_specification():
    rng = np.random.default_rng(1)
    num = 2000
    for difficulty in (2, 8):
        correct = np.mean(
            [
                tasks.is_correct(p := tasks.generate(rng, difficulty), tasks.noisy_solution(rng, p))
                for _ in range(num)
            ]
        )
        expected = np.prod([1 - tasks.slip_probability(s) for s in range(difficulty)])
        standard_error = np.sqrt(expected * (1 - expected) / num)
        assert abs(correct - expected) < 4 * standard_error


def test_shipped_tokenizer_matches_the_fast_encoder():
    tokenizer = lm.load_tokenizer(CHECKPOINTS / "arith")
    text = tasks.Problem(5, (("*", 3), ("-", 4))).prompt + "5*3=15\n"
    assert tokenizer.encode(text) == data.encode(text)
    assert tokenizer.decode(data.encode(text) + [data.EOS_ID]) == text
    np.testing.assert_array_equal(tokenizer.stop_ids(["\n"]), [data.NEWLINE_ID])
    assert tokenizer.truncate("1+1=2\n2+1=3\n", ["\n"]) == "1+1=2\n"
    ids, lengths = tokenizer.encode_batch(["Q 1", "Q 12 +3"])
    np.testing.assert_array_equal(lengths, [3, 7])
    with pytest.raises(ValueError, match="sequence of strings"):
        tokenizer.stop_ids("\n")


def test_shipped_checkpoint_is_small_and_loads_in_transformers():
    import torch
    import transformers
    size = sum(f.stat().st_size for f in CHECKPOINTS.rglob("*") if f.is_file())
    assert size < 5 * 2**20
    model = lm.load(CHECKPOINTS / "arith")
    assert model.end_ids == (data.EOS_ID,)
    reference = transformers.Qwen2ForCausalLM.from_pretrained(CHECKPOINTS / "arith").eval()
    ids = np.array(
        [data.encode(tasks.Problem(7, (("+", 5), ("*", 2))).prompt + "7+5=12\n12*2=24\n")]
    )
    with torch.no_grad():
        expected = torch.log_softmax(reference(torch.tensor(ids)).logits, -1).numpy()
    np.testing.assert_allclose(np.asarray(model.log_probs(ids)), expected, atol=1e-5, rtol=0)


def test_shipped_model_gets_worse_with_difficulty():
    model = lm.load(CHECKPOINTS / "arith")
    rng = np.random.default_rng(5)
    num = 64
    problems = [tasks.generate(rng, d) for d in (2, 8) for _ in range(num)]
    samples = evaluate.sample_solutions(model, problems, key=jax.random.key(0))
    correct = np.array([tasks.is_correct(p, s[0]) for p, s in zip(problems, samples, strict=True)])
    easy, hard = correct[:num].mean(), correct[num:].mean()
    assert easy > 0.75
    assert hard < 0.45
    standard_error = np.sqrt((easy * (1 - easy) + hard * (1 - hard)) / num)
    assert easy - hard > 4 * standard_error


def test_oracle_and_learned_prm_rank_correct_steps_higher():
    learned = prm.load(CHECKPOINTS / "arith_prm")
    oracle = prm.OraclePRM()
    rng = np.random.default_rng(2)
    problems = [tasks.generate(rng, 4) for _ in range(40)]
    traces = [tasks.noisy_solution(rng, p, slip_scale=3.0) for p in problems]
    good, bad = [], []
    batch_scores = learned.step_scores_batch(problems, traces)
    np.testing.assert_allclose(
        learned.step_scores(problems[0], traces[0]), batch_scores[0], atol=1e-5
    )
    for problem, trace, scores in zip(problems, traces, batch_scores, strict=True):
        labels = oracle.step_scores(problem, trace)
        assert scores.shape == labels.shape
        assert np.all((scores >= 0) & (scores <= 1))
        good.extend(scores[labels == 1])
        bad.extend(scores[labels == 0])
    assert oracle.score(problems[0], problems[0].solution()) == 1.0
    assert good and bad
    # Learned PRM: better than chance by a wide margin, though not perfect.
    assert np.mean(good) - np.mean(bad) > 0.2


def test_cli_reports_accuracy_by_difficulty(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "lm",
            "sample",
            "--difficulties",
            "1,3",
            "--num-problems",
            "8",
            "--num-samples",
            "2",
            "--json",
            str(tmp_path / "rows.json"),
        ]
    )
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    assert "difficulty" in out and "pass@N" in out
    assert (tmp_path / "rows.json").is_file()
    with pytest.raises(SystemExit):
        parser.parse_args(["lm", "sample", "--difficulties", "two"])
    args.num_samples = 0
    with pytest.raises(ValueError, match="num_samples"):
        cli.run(args)
