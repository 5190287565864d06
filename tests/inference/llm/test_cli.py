"""``ppl lm solve`` and ``ppl lm scaling`` end to end (small)."""

import json

import pytest

from ppl.cli import build_parser, main


def test_solve_reads_problems_and_writes_one_answer_per_line(tmp_path, capsys):
    problems = tmp_path / "problems.jsonl"
    problems.write_text(
        json.dumps({"prompt": "Q 5 +3 *2\n", "id": "a"}) + "\n\n"
        + json.dumps({"prompt": "Q 7 -2 +9\n", "id": "b"}) + "\n"
    )
    out = tmp_path / "answers.jsonl"
    assert main(["lm", "solve", "--method", "particle_filter", "--particles", "4",
                 "--reward", "oracle", "--problems", str(problems), "--out", str(out),
                 "--seed", "1", "--show", "1"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"]
    for row in rows:
        assert {"prompt", "trace", "traces", "weights", "tokens", "answer", "correct"} <= set(row)
        assert len(row["traces"]) == 4 and abs(sum(row["weights"]) - 1) < 1e-5
        assert row["correct"] and row["trace"].endswith(f"A {row['reference_answer']}\n")
    printed = capsys.readouterr().out
    assert "accuracy 1.000" in printed and "Q 5 +3 *2" in printed


def test_solve_generates_problems_and_names_bad_input(tmp_path, monkeypatch):
    monkeypatch.setenv("PPL_DEBUG", "1")  # main re-raises user errors: match their messages
    out = tmp_path / "generated.jsonl"
    assert main(["lm", "solve", "--method", "self_consistency", "--reward", "none",
                 "--particles", "2", "--num-problems", "3", "--difficulty", "2",
                 "--out", str(out), "--show", "0"]) == 0
    assert len(out.read_text().splitlines()) == 3
    # --checkpoint-dir: the same command again takes every batch from the directory.
    argv = ["lm", "solve", "--method", "self_consistency", "--reward", "none", "--particles",
            "2", "--num-problems", "3", "--difficulty", "2", "--show", "0",
            "--checkpoint-dir", str(tmp_path / "record")]
    assert main([*argv, "--out", str(tmp_path / "first.jsonl")]) == 0
    assert any((tmp_path / "record").glob("block_*.npz"))
    assert main([*argv, "--out", str(tmp_path / "again.jsonl")]) == 0
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "first.jsonl").read_text()
    assert (tmp_path / "first.jsonl").read_text() == out.read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q 1 +1\\n"}\n{"prompt": \n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        main(["lm", "solve", "--problems", str(bad), "--reward", "oracle"])
    with pytest.raises(ValueError, match="noisy:RATE"):
        main(["lm", "solve", "--reward", "noisy:2", "--num-problems", "1"])
    with pytest.raises(ValueError, match=r"devices=2 asks for more devices than this process"):
        main(["lm", "solve", "--reward", "none", "--method", "self_consistency",
              "--num-problems", "1", "--devices", "2"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lm", "solve", "--method", "magic"])


def test_scaling_writes_a_report_and_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PPL_DEBUG", "1")  # main re-raises user errors: match their messages
    out = tmp_path / "scaling"
    argv = ["lm", "scaling", "--out", str(out), "--difficulties", "3", "--particles", "1,2",
            "--methods", "particle_filter,weighted_best_of_n,self_consistency",
            "--rewards", "oracle", "--num-problems", "4"]
    assert main(argv) == 0
    points = json.loads((out / "scaling.json").read_text())
    # self-consistency and weighted best-of-N at N = 1, 2, and the filter at N = 1, 2.
    assert len(points) == 6
    assert {p["method"] for p in points} == {"particle_filter", "weighted_best_of_n",
                                             "self_consistency"}
    assert all(0 <= p["accuracy"] <= 1 and p["tokens"] > 0 for p in points)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64") == 2 and "Every point" in html
    capsys.readouterr()
    # Run again: every point is already there, nothing runs.
    assert main(argv) == 0
    assert "N=" not in capsys.readouterr().err
    assert len((out / "points.jsonl").read_text().splitlines()) == 6
    # Another configuration in the same directory is refused.
    with pytest.raises(ValueError, match="another study's configuration"):
        main([*argv[:-1], "5"])


def test_scaling_draws_power_sampling_against_alpha(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PPL_DEBUG", "1")
    out = tmp_path / "power"
    argv = ["lm", "scaling", "--out", str(out), "--difficulties", "3", "--methods",
            "power_sampling", "--alphas", "1,2", "--num-problems", "3", "--rewards", "oracle"]
    assert main(argv) == 0
    points = json.loads((out / "scaling.json").read_text())
    # Per alpha: the chain and the three baselines at its token budget.
    assert sorted((p["alpha"], p["method"]) for p in points) == sorted(
        (a, m) for a in (1.0, 2.0) for m in ("power_sampling", "vote, T=1", "vote, T=1/alpha",
                                              "one sample, T=1/alpha"))
    for alpha in (1.0, 2.0):
        here = {p["method"]: p for p in points if p["alpha"] == alpha}
        assert here["power_sampling"]["num_particles"] == 1
        assert here["one sample, T=1/alpha"]["num_particles"] == 1
        # The votes get about the chain's tokens (N samples of one sample's length).
        n = here["vote, T=1"]["num_particles"]
        assert n >= 1 and here["vote, T=1/alpha"]["num_particles"] == n
        assert 0.3 < here["vote, T=1"]["tokens"] / here["power_sampling"]["tokens"] < 3
    html = (out / "report.html").read_text()
    assert "Power sampling against alpha" in html and html.count("data:image/png;base64") == 1
    capsys.readouterr()
    assert main(argv) == 0  # resumed: nothing runs again
    assert "power sampling at alpha" not in capsys.readouterr().err
    assert len((out / "points.jsonl").read_text().splitlines()) == 8
    with pytest.raises(ValueError, match="twisted_smc and constrained_smc target another"):
        main(["lm", "scaling", "--out", str(tmp_path / "x"), "--methods", "twisted_smc",
              "--difficulties", "3", "--num-problems", "2"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["lm", "scaling", "--out", "x", "--alphas", "0,2"])


def test_evidence_writes_bounds_per_problem(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PPL_DEBUG", "1")  # main re-raises user errors: match their messages
    out = tmp_path / "bounds.jsonl"
    assert main(["lm", "evidence", "--method", "smc", "--particles", "4", "--num-problems",
                 "1", "--difficulty", "3", "--runs", "2", "--exact-samples", "2",
                 "--max-tries", "64", "--out", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert {"log_z_lower", "log_z_upper", "num_exact_samples", "rejection_tries"} <= set(row)
    assert row["num_exact_samples"] == 2 and row["log_z_upper"] <= 1e-5  # a log-probability
    assert "lower" in capsys.readouterr().out
    problems = tmp_path / "free.jsonl"
    problems.write_text('{"prompt": "What is 2+2?\\n"}\n')
    with pytest.raises(ValueError, match="expected a testbed prompt"):
        main(["lm", "evidence", "--method", "smc", "--problems", str(problems)])
