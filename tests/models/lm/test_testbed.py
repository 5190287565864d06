"""The reasoning testbed: generator, checker, shipped checkpoint, PRMs and the CLI."""

import json
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest
from ppl.models import lm
from ppl.models.lm import cli
from ppl.models.lm.testbed import data, evaluate, prm, tasks, train

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
    # A fixed rate at every depth (the learned PRM's training traces).
    correct = np.mean(
        [
            tasks.is_correct(
                p := tasks.generate(rng, 4), tasks.noisy_solution(rng, p, slip_rate=0.15)
            )
            for _ in range(num)
        ]
    )
    expected = 0.85**4
    assert abs(correct - expected) < 4 * np.sqrt(expected * (1 - expected) / num)
    with pytest.raises(ValueError, match="slip_rate"):
        tasks.noisy_solution(rng, tasks.generate(rng, 2), slip_rate=1.5)


def test_bucketed_batches_hold_whole_examples_padded_to_a_bucket():
    buckets = (24, 40, 56, 72, 88, 104, 120, 136)
    rng = np.random.default_rng(3)
    batches = data.bucketed_batches(rng, 16, num_batches=8, buckets=buckets, max_difficulty=8)
    assert len(batches) == 8
    widths, difficulties = [], []
    for ids, loss_mask, step_ends in batches:
        assert ids.shape == loss_mask.shape == step_ends.shape and ids.shape[0] == 16
        widths.append(ids.shape[1])
        lengths = (ids != data.PAD_ID).sum(1)
        # The smallest bucket that holds the batch's longest example.
        assert ids.shape[1] == min(b for b in buckets if b >= lengths.max())
        for row, length in enumerate(lengths):
            assert ids[row, length - 1] == data.EOS_ID  # nothing truncated
            prompt, solution = data.decode(ids[row]).split("\n", 1)
            problem = _parse_prompt(prompt)
            difficulties.append(problem.difficulty)
            # Targets start right after the prompt; labels sit on each solution newline.
            assert loss_mask[row].sum() == length - len(prompt) - 1
            assert loss_mask[row, len(prompt)] == 0 and loss_mask[row, len(prompt) + 1] == 1
            labels = step_ends[row][step_ends[row] >= 0]
            np.testing.assert_array_equal(labels, tasks.step_labels(problem, solution))
    # Sorting by length is what makes the batches cheap: they are not all padded to 136.
    assert len(set(widths)) > 4
    # Difficulty is still drawn uniformly from 1..8 (128 examples: 16 expected of each).
    counts = np.bincount(difficulties, minlength=9)[1:]
    assert counts.min() >= 5
    with pytest.raises(ValueError, match="buckets"):
        data.bucketed_batches(rng, 4, num_batches=2, buckets=(64, 32), max_difficulty=8)
    with pytest.raises(ValueError, match="num_batches"):
        data.bucketed_batches(rng, 4, num_batches=0, buckets=(64,), max_difficulty=8)


def _parse_prompt(prompt: str) -> tasks.Problem:
    _, start, *operations = prompt.split(" ")
    return tasks.Problem(int(start), tuple((op[0], int(op[1:])) for op in operations))


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
    # Both compute in float32 from the same (float16-stored) weights; summation order differs,
    # so log-probabilities near -12 may differ by a few float32 ulps (1.9e-5 seen): 2e-6 relative.
    np.testing.assert_allclose(np.asarray(model.log_probs(ids)), expected, atol=1e-5, rtol=2e-6)


def test_shipped_model_gets_worse_with_difficulty():
    model = lm.load(CHECKPOINTS / "arith")
    rng = np.random.default_rng(5)
    num = 64
    problems = [tasks.generate(rng, d) for d in (2, 8) for _ in range(num)]
    samples = evaluate.sample_solutions(model, problems, key=jax.random.key(0))
    correct = np.array([tasks.is_correct(p, s[0]) for p, s in zip(problems, samples, strict=True)])
    easy, hard = correct[:num].mean(), correct[num:].mean()
    # The shape: about 90% on 2 steps, well under 30% on 8.
    assert easy > 0.75
    assert hard < 0.3
    standard_error = np.sqrt((easy * (1 - easy) + hard * (1 - hard)) / num)
    assert easy - hard > 4 * standard_error
    # metrics.json describes this checkpoint: its figures (200 other problems each) agree
    # with these within 4 standard errors of the difference.
    shipped = {
        row["difficulty"]: row
        for row in json.loads((CHECKPOINTS / "metrics.json").read_text())["accuracy_by_difficulty"]
    }
    for difficulty, measured in ((2, easy), (8, hard)):
        row = shipped[difficulty]
        se = np.sqrt(row["accuracy_se"] ** 2 + row["accuracy"] * (1 - row["accuracy"]) / num)
        assert abs(measured - row["accuracy"]) < 4 * se


def test_oracle_and_learned_prm_rank_correct_steps_higher():
    learned = prm.load(CHECKPOINTS / "arith_prm")
    oracle = prm.OraclePRM()
    rng = np.random.default_rng(2)
    # Held-out traces like the PRM's training ones: 25 problems per difficulty, 15% slips.
    problems = [tasks.generate(rng, d) for d in range(1, 9) for _ in range(25)]
    traces = [tasks.noisy_solution(rng, p, slip_rate=0.15) for p in problems]
    batch_scores = learned.step_scores_batch(problems, traces)
    np.testing.assert_allclose(
        learned.step_scores(problems[0], traces[0]), batch_scores[0], atol=1e-5
    )
    scores, labels, depths = [], [], []
    for problem, trace, row_scores in zip(problems, traces, batch_scores, strict=True):
        row_labels = oracle.step_scores(problem, trace)
        assert row_scores.shape == row_labels.shape
        assert np.all((row_scores >= 0) & (row_scores <= 1))
        scores.extend(row_scores)
        labels.extend(row_labels == 1)
        depths.extend(range(1, len(row_labels) + 1))
    scores, labels, depths = np.array(scores), np.array(labels), np.array(depths)
    assert oracle.score(problems[0], problems[0].solution()) == 1.0
    assert labels.any() and not labels.all()
    # The shipped PRM (train_prm.py) measured AUC 0.96 here over 1,100 steps (Hanley-McNeil
    # standard error about 0.007), and within steps 1-3 and 4-9 (where counting lines cannot
    # help) 0.93 and 0.96 (standard errors about 0.012 and 0.008). The bounds sit about 4
    # standard errors below; the upper one says it is a learned model, not the checker.
    assert 0.93 < train._auc(scores, labels) < 0.999
    for group, bound in ((depths <= 3, 0.88), (depths > 3, 0.92)):
        assert train._auc(scores[group], labels[group]) > bound
    assert scores[labels].mean() - scores[~labels].mean() > 0.6


def test_cli_reports_accuracy_by_difficulty(tmp_path, capsys):
    from ppl.cli import build_parser

    parser = build_parser()
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


def test_save_qwen2_rounds_weights_only_for_storage(qwen2_dir, tmp_path):
    from ppl.models.lm import loading  # noqa: I001
    from safetensors.numpy import load_file

    model = loading.load_transformer(qwen2_dir[0])
    loading.save_qwen2(model, tmp_path / "f16", storage_dtype=np.float16)
    loading.save_qwen2(model, tmp_path / "f32")
    stored = load_file(tmp_path / "f16" / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {np.dtype(np.float16)}
    assert {t.dtype for t in load_file(tmp_path / "f32" / "model.safetensors").values()} == {
        np.dtype(np.float32)}
    reloaded = loading.load_transformer(tmp_path / "f16")
    original, rounded = (jax.tree.leaves(eqx.filter(m, eqx.is_array)) for m in (model, reloaded))
    for a, b in zip(original, rounded, strict=True):
        assert b.dtype == a.dtype  # loaded back as float32
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a).astype(np.float16))
