"""The testbed's rewards behind the reward-model protocol: oracle, noisy oracle, cached PRM."""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.models import lm
from ppl.models.lm.reward import TransformerRewardModel
from ppl.models.lm.testbed import data, evaluate, prm, tasks

from ppl.reward_model import AbstractRewardModel

CHECKPOINTS = Path(lm.__file__).parent / "checkpoints"
WIDTH = 16  # chunk width of the steps fed to the rewards (a line has at most 13 tokens)


def _prompts(problems):
    """Right-padded prompt ids and lengths."""
    encoded = [data.encode(p.prompt) for p in problems]
    lengths = np.array([len(e) for e in encoded], np.int32)
    ids = np.full((len(encoded), lengths.max()), data.PAD_ID, np.int32)
    for row, prompt in enumerate(encoded):
        ids[row, : len(prompt)] = prompt
    return ids, lengths


def _steps(trace_ids, width=WIDTH):
    """A trace's tokens cut into steps as a particle filter's ``sample_step`` cuts them: each
    ends at a newline or ``<eos>``, or after ``width`` tokens (a runaway line), or where the
    trace ends (an unfinished line)."""
    steps, current = [], []
    for token in trace_ids:
        current.append(token)
        if token in (data.NEWLINE_ID, data.EOS_ID) or len(current) == width:
            steps.append(current)
            current = []
    if current:
        steps.append(current)
    return steps


def _chunk(rows_steps, index, width=WIDTH):
    """Step ``index`` of every row as an extend call's ``(tokens, num_valid)`` (0 when the
    row has no such step)."""
    tokens = np.zeros((len(rows_steps), width), np.int32)
    num_valid = np.zeros((len(rows_steps),), np.int32)
    for row, steps in enumerate(rows_steps):
        if index < len(steps):
            step = steps[index][:width]
            tokens[row, : len(step)], num_valid[row] = step, len(step)
    return jnp.asarray(tokens), jnp.asarray(num_valid)


@pytest.fixture(scope="module")
def lm_samples():
    """Problems of 1-8 operations and the shipped language model's traces for them (ids,
    ``<eos>`` kept), at temperature 1.2 so that many steps are wrong."""
    model = lm.load(CHECKPOINTS / "arith")
    rng = np.random.default_rng(7)
    problems = [tasks.generate(rng, d) for d in range(1, 9) for _ in range(12)]
    ids, lengths = _prompts(problems)
    num_new = evaluate.max_new_tokens(8)
    tokens, counts = evaluate._sample(
        model, jax.random.key(3), jnp.asarray(ids), jnp.asarray(lengths), 1.2,
        int(lengths.max()) + num_new, num_new,
    )
    traces = [np.asarray(tokens)[row, : int(counts[row])].tolist() for row in range(len(problems))]
    return problems, traces


HAND_MADE = {
    # (problem, trace text, whether <eos> follows)
    "correct": ("17+8=25\n25*3=75\n75-25=50\nA 50\n", True),
    "wrong second step": ("17+8=25\n25*3=76\n76-25=51\nA 51\n", True),
    "wrong answer line": ("17+8=25\n25*3=75\n75-25=50\nA 51\n", True),
    "too long": ("17+8=25\n25*3=75\n75-25=50\nA 50\n50+1=51\n", True),
    "no eos after the answer": ("17+8=25\n25*3=75\n75-25=50\nA 50\nA 50\n", False),
    "short line": ("17+8=2\n2*3=6\n", False),
    "runaway": ("17+8=25\n25*3=75757575757575757575", False),
    "eos too early": ("17+8=25\n", True),
    "empty line": ("\n", False),
}
HAND_PROBLEM = tasks.Problem(17, (("+", 8), ("*", 3), ("-", 25)))


def _run(reward, problems, traces, *, context=None, max_length=200):
    """Feeds every row its trace step by step; returns the score after each step, per row."""
    ids, lengths = _prompts(problems)
    if context is None:
        context = reward.prepare([p.prompt for p in problems])
    init = eqx.filter_jit(lambda r, i, n, c: r.init_state(i, n, max_length, c))
    extend = eqx.filter_jit(lambda r, s, t, n: r.extend(s, t, n))
    state = init(reward, jnp.asarray(ids), jnp.asarray(lengths), context)
    rows_steps = [_steps(t) for t in traces]
    scores = [[] for _ in traces]
    for index in range(max(len(s) for s in rows_steps)):
        tokens, num_valid = _chunk(rows_steps, index)
        before = np.asarray(state.score)
        state = extend(reward, state, tokens, num_valid)
        after = np.asarray(state.score)
        for row in range(len(traces)):
            if index < len(rows_steps[row]):
                scores[row].append(float(after[row]))
            else:  # rows given no tokens keep their score
                assert after[row] == before[row]
    return scores


def _expected_oracle(problem, trace):
    """The checker's verdict after each step: ``step_labels`` at newlines, the exact match
    of the whole trace at ``<eos>``, and for a last piece without either, the prefix match."""
    reference = data.encode(problem.solution()) + [data.EOS_ID]
    expected, read = [], 0
    for step in _steps(trace):
        read += len(step)
        if step[-1] == data.NEWLINE_ID:
            expected.append(float(tasks.step_labels(problem, data.decode(trace[:read]))[-1]))
        else:
            expected.append(float(trace[:read] == reference[:read]))
    return expected


def test_parse_prompt_inverts_prompt_and_names_bad_prompts():
    rng = np.random.default_rng(0)
    for difficulty in range(1, 9):
        for _ in range(25):
            problem = tasks.generate(rng, difficulty)
            assert tasks.parse_prompt(problem.prompt) == problem
    for bad in ("Q 17 +8", "Q 17\n", "Q 17 /3\n", "17 +8\n", "Q 17  +8\n", "Q 17 +8\nA"):
        with pytest.raises(ValueError, match="Expected a prompt") as error:
            tasks.parse_prompt(bad)
        assert repr(bad) in str(error.value)
    with pytest.raises(ValueError, match="canonical"):
        tasks.parse_prompt("Q 07 +1\n")


def test_oracle_reward_is_the_checker_at_every_step(lm_samples):
    problems, traces = lm_samples
    hand_problems = [HAND_PROBLEM] * len(HAND_MADE)
    hand_traces = [
        data.encode(text) + ([data.EOS_ID] if eos else []) for text, eos in HAND_MADE.values()
    ]
    problems, traces = problems + hand_problems, traces + hand_traces
    oracle = prm.OracleReward()
    assert isinstance(oracle, AbstractRewardModel)
    scores = _run(oracle, problems, traces)
    for problem, trace, row_scores in zip(problems, traces, scores, strict=True):
        assert row_scores == _expected_oracle(problem, trace), data.decode(trace)
    # The LM's samples hold both verdicts at the end; the hand-made traces are what the
    # checker says: the correct trace ends at 1, every other one at 0.
    final = [row[-1] for row in scores[: len(lm_samples[0])]]
    assert 0.1 < np.mean(final) < 0.9
    hand = dict(zip(HAND_MADE, scores[len(lm_samples[0]) :], strict=True))
    assert hand["correct"] == [1.0] * 5
    assert hand["wrong second step"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert hand["too long"] == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert hand["eos too early"] == [1.0, 0.0]
    assert hand["runaway"] == [1.0, 0.0, 0.0]
    for name in ("wrong answer line", "no eos after the answer", "short line", "empty line"):
        assert hand[name][-1] == 0.0, name


def test_oracle_reward_checks_its_context():
    oracle = prm.OracleReward()
    ids, lengths = _prompts([HAND_PROBLEM, HAND_PROBLEM])
    with pytest.raises(ValueError, match="context"):
        oracle.init_state(ids, lengths, 64, None)
    with pytest.raises(ValueError, match="2 rows"):
        oracle.init_state(ids, lengths, 64, oracle.prepare([HAND_PROBLEM.prompt]))
    with pytest.raises(ValueError, match="Expected a prompt"):
        oracle.prepare(["not a prompt"])
    state = oracle.init_state(ids, lengths, 64, oracle.prepare([HAND_PROBLEM.prompt] * 2))
    with pytest.raises(ValueError, match="tokens of rank 2"):
        oracle.extend(state, jnp.zeros((2,), jnp.int32), jnp.zeros((2,), jnp.int32))
    with pytest.raises(ValueError, match=r"num_valid of shape \(2,\)"):
        oracle.extend(state, jnp.zeros((2, 4), jnp.int32), jnp.zeros((3,), jnp.int32))
    with pytest.raises(Exception, match="num_valid in 0 .. chunk"):
        jax.jit(oracle.extend)(state, jnp.zeros((2, 4), jnp.int32), jnp.array([1, 5]))


def _noisy_traces(num, seed):
    """``num`` distinct problems of 2-8 operations with noisy solutions (many wrong steps)."""
    rng = np.random.default_rng(seed)
    problems = [tasks.generate(rng, int(rng.integers(2, 9))) for _ in range(num)]
    traces = [
        data.encode(tasks.noisy_solution(rng, p, slip_rate=0.15)) + [data.EOS_ID]
        for p in problems
    ]
    return problems, traces


def test_noisy_oracle_flips_at_its_rates():
    problems, traces = _noisy_traces(600, seed=11)
    false_accept, false_reject = 0.3, 0.1
    noisy = prm.NoisyOracleReward(false_accept, false_reject, seed=5)
    truth = _run(prm.OracleReward(), problems, traces)
    verdicts = _run(noisy, problems, traces)
    truth, verdicts = np.concatenate(truth), np.concatenate(verdicts)
    assert set(np.unique(verdicts)) == {0.0, 1.0}
    for rate, measured, count in (
        (false_reject, np.mean(verdicts[truth == 1] == 0), np.sum(truth == 1)),
        (false_accept, np.mean(verdicts[truth == 0] == 1), np.sum(truth == 0)),
    ):
        assert count > 1000
        standard_error = np.sqrt(rate * (1 - rate) / count)
        assert abs(measured - rate) < 4 * standard_error, (rate, measured, count)
    # Rates 0 are the oracle itself; another seed draws other coins.
    assert np.array_equal(
        np.concatenate(_run(prm.NoisyOracleReward(0.0, 0.0), problems, traces)), truth
    )
    other = np.concatenate(_run(prm.NoisyOracleReward(false_accept, false_reject, seed=6),
                                problems, traces))
    assert np.mean(other != verdicts) > 0.1
    with pytest.raises(ValueError, match="false_accept_rate"):
        prm.NoisyOracleReward(1.5, 0.1)


def test_noisy_oracle_verdict_depends_on_the_prefix_only():
    problems, traces = _noisy_traces(32, seed=12)
    noisy = prm.NoisyOracleReward(0.5, 0.5, seed=1)
    scores = _run(noisy, problems, traces)
    # The same rows in another order, and in a batch with other rows: the same verdicts.
    order = np.random.default_rng(0).permutation(32)
    permuted = _run(noisy, [problems[i] for i in order], [traces[i] for i in order])
    assert [permuted[list(order).index(row)] for row in range(32)] == scores
    # Reordering (resampling) then extending equals extending then reordering.
    ids, lengths = _prompts(problems)
    state = noisy.init_state(ids, lengths, 200, noisy.prepare([p.prompt for p in problems]))
    rows_steps = [_steps(t) for t in traces]
    state = noisy.extend(state, *_chunk(rows_steps, 0))
    ancestors = jnp.asarray(np.random.default_rng(1).integers(0, 32, 32))
    step = _chunk(rows_steps, 1)
    first = noisy.extend(noisy.reorder(state, ancestors), step[0][ancestors], step[1][ancestors])
    second = noisy.reorder(noisy.extend(state, *step), ancestors)
    np.testing.assert_array_equal(first.score, second.score)
    jax.tree.map(np.testing.assert_array_equal, first.cache, second.cache)
    # A step cut into two calls ends with the same verdict as the step read at once.
    tokens, num_valid = _chunk(rows_steps, 1)
    half = num_valid // 2
    split = noisy.extend(state, tokens, half)
    rest = jnp.stack([jnp.roll(tokens[r], -int(half[r])) for r in range(32)])
    split = noisy.extend(split, rest, num_valid - half)
    np.testing.assert_array_equal(split.score[num_valid > 0], noisy.extend(
        state, tokens, num_valid).score[num_valid > 0])


@pytest.fixture(scope="module")
def learned():
    return prm.load(CHECKPOINTS / "arith_prm")


def _padded(rows):
    ids = np.full((len(rows), max(len(r) for r in rows)), data.PAD_ID, np.int32)
    for row, row_ids in enumerate(rows):
        ids[row, : len(row_ids)] = row_ids
    return jnp.asarray(ids)


def test_cached_prm_equals_cache_free_logits_over_steps(learned, lm_samples):
    problems, traces = lm_samples
    problems, traces = problems[::6], traces[::6]  # 16 rows, 1-8 operations
    # Small blocks, so that rows cross block boundaries as they grow.
    reward = learned.reward_model(block_length=16)
    assert isinstance(reward, TransformerRewardModel)
    ids, lengths = _prompts(problems)
    state = eqx.filter_jit(lambda r, i, n: r.init_state(i, n, 168))(
        reward, jnp.asarray(ids), jnp.asarray(lengths)
    )
    np.testing.assert_array_equal(state.score, np.ones(16))
    full = [data.encode(p.prompt) + t for p, t in zip(problems, traces, strict=True)]
    expected = np.asarray(jax.nn.sigmoid(learned.logits(_padded(full))))
    # Each row's trace cut into steps of random lengths 0..14 (0: the row sits the call out;
    # most steps end mid-line).
    rng = np.random.default_rng(4)
    rows_steps = []
    for trace in traces:
        sizes = []
        while sum(sizes) < len(trace):
            sizes.append(int(rng.integers(0, 15)))
        rows_steps.append(np.split(np.asarray(trace), np.cumsum(sizes)[:-1]))
    extend = eqx.filter_jit(lambda r, s, t, n: r.extend(s, t, n))
    read = np.zeros(16, np.int64)
    for index in range(max(len(steps) for steps in rows_steps)):
        tokens, num_valid = _chunk(rows_steps, index)
        before = np.asarray(state.score)
        state = extend(reward, state, tokens, num_valid)
        read += np.asarray(num_valid)
        for row in range(16):
            if num_valid[row] == 0:
                assert state.score[row] == before[row]
            else:
                position = lengths[row] + read[row] - 1
                np.testing.assert_allclose(state.score[row], expected[row, position], atol=1e-5)
    np.testing.assert_array_equal(read, [len(t) for t in traces])
    np.testing.assert_array_equal(state.cache.lengths, lengths + read)
    # The string interface's step scores are those at the newlines.
    row_scores = learned.step_scores(problems[5], data.decode(traces[5]))
    newlines = [i for i, t in enumerate(full[5]) if t == data.NEWLINE_ID][1:]
    np.testing.assert_allclose(row_scores, expected[5, newlines], atol=1e-5)


def test_cached_prm_reorder_commutes_and_does_not_retrace(learned, lm_samples):
    problems, traces = lm_samples
    problems, traces = problems[1::12], traces[1::12]  # 8 rows
    reward = learned.reward_model(block_length=32)
    ids, lengths = _prompts(problems)
    num_traces = []

    @eqx.filter_jit
    def extend(reward, state, tokens, num_valid):
        num_traces.append(1)
        return reward.extend(state, tokens, num_valid)

    state = reward.init_state(jnp.asarray(ids), jnp.asarray(lengths), 168)
    rows_steps = [_steps(t) for t in traces]
    for index in range(3):
        state = extend(reward, state, *_chunk(rows_steps, index))
    ancestors = jnp.array([3, 3, 0, 7, 1, 1, 5, 2])
    tokens, num_valid = _chunk(rows_steps, 3)
    # Resampling then extending each new row by its ancestor's step equals extending then
    # resampling.
    first = extend(reward, reward.reorder(state, ancestors), tokens[ancestors],
                   num_valid[ancestors])
    second = reward.reorder(extend(reward, state, tokens, num_valid), ancestors)
    np.testing.assert_allclose(first.score, second.score, atol=1e-6)
    np.testing.assert_array_equal(first.cache.lengths, second.cache.lengths)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), first.cache.kv,
                 second.cache.kv)
    # Rows grew over five calls of one shape: one trace.
    assert len(num_traces) == 1


def test_cached_prm_names_bad_inputs(learned):
    reward = learned.reward_model()
    ids, lengths = _prompts([HAND_PROBLEM, HAND_PROBLEM])
    with pytest.raises(ValueError, match="prompt_ids of rank 2"):
        reward.init_state(ids[0], lengths, 64)
    with pytest.raises(ValueError, match="max_length"):
        reward.init_state(ids, lengths, 4)
    state = reward.init_state(ids, lengths, 32)
    with pytest.raises(ValueError, match="tokens of rank 2"):
        reward.extend(state, jnp.zeros((2,), jnp.int32), jnp.zeros((2,), jnp.int32))
    with pytest.raises(ValueError, match="num_valid of rank 1"):
        reward.extend(state, jnp.zeros((2, 4), jnp.int32), jnp.zeros((2, 1), jnp.int32))
    with pytest.raises(ValueError, match="ancestors of rank 1"):
        reward.reorder(state, jnp.zeros((2, 1), jnp.int32))
    extend = eqx.filter_jit(lambda r, s, t, n: r.extend(s, t, n))
    with pytest.raises(Exception, match="num_valid in 0 .. chunk"):
        extend(reward, state, jnp.zeros((2, 4), jnp.int32), jnp.array([5, 0]))
    with pytest.raises(Exception, match="num_valid in 0 .. chunk"):
        extend(reward, state, jnp.zeros((2, 4), jnp.int32), jnp.array([-1, 0]))
    # 15 prompt tokens + 18 would overflow the 32 slots; 17 fit.
    assert lengths[0] == 15
    with pytest.raises(Exception, match="max_length"):
        extend(reward, state, jnp.zeros((2, 18), jnp.int32), jnp.array([18, 0]))
    extend(reward, state, jnp.zeros((2, 18), jnp.int32), jnp.array([17, 0]))


def test_shipped_prm_is_small_and_stored_in_float16():
    from safetensors.numpy import load_file

    directory = CHECKPOINTS / "arith_prm"
    size = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
    assert size < 2 * 2**20
    assert {t.dtype for t in load_file(directory / "model.safetensors").values()} == {
        np.dtype(np.float16)}


def test_cached_prm_copy_rows_equals_reorder_on_every_block(learned, lm_samples):
    """Copying rows (the dead particles' only) gives the scores and attended cache a full
    reorder gives, also when a copied row has reached a later block, and the next step
    scores alike."""
    problems, traces = lm_samples
    problems, traces = problems[2::12], traces[2::12]  # 8 rows
    reward = learned.reward_model(block_length=32)
    ids, lengths = _prompts(problems)
    state = reward.init_state(jnp.asarray(ids), jnp.asarray(lengths), 168)
    rows_steps = [_steps(t) for t in traces]
    for index in range(2):
        state = reward.extend(state, *_chunk(rows_steps, index))
    assert np.max(np.asarray(state.cache.lengths)) > 32  # some rows are in the second block
    destinations, sources = jnp.array([1, 4, 6, 8]), jnp.array([0, 3, 3, 0])  # 8: dropped
    ancestors = jnp.array([0, 0, 2, 3, 3, 5, 3, 7])
    copied = reward.copy_rows(state, destinations, sources)
    gathered = reward.reorder(state, ancestors)
    np.testing.assert_array_equal(copied.score, gathered.score)
    np.testing.assert_array_equal(copied.cache.lengths, gathered.cache.lengths)
    for name in ("keys", "values"):
        for a, b in zip(getattr(copied.cache.kv, name), getattr(gathered.cache.kv, name),
                        strict=True):
            a, b = np.concatenate(a, axis=2), np.concatenate(b, axis=2)
            for row, length in enumerate(np.asarray(copied.cache.lengths)):
                np.testing.assert_array_equal(a[row, :, :length], b[row, :, :length])
    tokens, num_valid = _chunk(rows_steps, 2)
    np.testing.assert_allclose(
        reward.extend(copied, tokens[ancestors], num_valid[ancestors]).score,
        reward.extend(gathered, tokens[ancestors], num_valid[ancestors]).score, atol=1e-6)
