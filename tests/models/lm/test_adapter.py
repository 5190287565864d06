"""The adapter's contract: cache equals recompute, padding and reordering are invisible."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.models import lm

from ppl.token_adapter import AbstractTokenModel

ATOL = 1e-5


@pytest.fixture(scope="module", params=["gpt2_dir", "qwen2_dir"])
def any_model(request):
    """Both architectures: for the tests of what each computes."""
    path, _ = request.getfixturevalue(request.param)
    return lm.load(path)


@pytest.fixture(scope="module")
def model(qwen2_dir):
    """One architecture: the state handling under test is shared code (adapter.py)."""
    return lm.load(qwen2_dir[0])


def _padded(rng, lengths, width, vocab):
    # Padding holds random tokens rather than zeros, so that leaking it would show.
    return rng.integers(0, vocab, size=(len(lengths), width)), np.asarray(lengths)


def test_is_a_token_model(any_model):
    assert isinstance(any_model, AbstractTokenModel)


def test_incremental_decoding_equals_full_recompute(any_model, check_chunked_decoding):
    sequences = np.random.default_rng(0).integers(0, any_model.vocab_size, size=(2, 16))
    check_chunked_decoding(any_model, sequences, np.array([5, 3]),
                           ([4, 2], [1, 3], [0, 1], [3, 3], [1, 1]), width=4, cache_length=20,
                           atol=ATOL)


def test_padded_batch_equals_rows_one_by_one(any_model):
    model = any_model
    rng = np.random.default_rng(1)
    prompts, lengths = _padded(rng, [7, 2, 4], 7, model.vocab_size)
    tokens = rng.integers(0, model.vocab_size, size=(3, 3))
    num_valid = np.array([3, 1, 2])

    @eqx.filter_jit
    def run(model, prompts, lengths, tokens, num_valid):
        state = model.init_state(prompts, lengths, 12)
        state, scores = model.extend(state, tokens, num_valid)
        return state.last_log_probs, scores

    last, scores = run(model, prompts, lengths, tokens, num_valid)
    for row in range(3):
        one = slice(row, row + 1)
        single_last, single_scores = run(
            model, prompts[one, : lengths[row]], lengths[one], tokens[one], num_valid[one]
        )
        np.testing.assert_allclose(last[row], single_last[0], atol=ATOL)
        np.testing.assert_allclose(scores[row], single_scores[0], atol=ATOL)


def test_reorder_commutes_with_step(model):
    rng = np.random.default_rng(2)
    prompts, lengths = _padded(rng, [3, 5, 2], 5, model.vocab_size)
    state = model.init_state(prompts, lengths, 24)
    ancestors = jnp.array([2, 0, 0])
    step = eqx.filter_jit(
        lambda m, s: m.sample_step(
            jax.random.key(0), s, temperature=0.0, stop_ids=jnp.array([3]), max_new_tokens=6
        )
    )
    after_state, after = step(model, state)
    after_state = model.reorder(after_state, ancestors)
    before_state, before = step(model, model.reorder(state, ancestors))
    np.testing.assert_array_equal(before.tokens, after.tokens[ancestors])
    np.testing.assert_array_equal(before.num_tokens, after.num_tokens[ancestors])
    np.testing.assert_array_equal(before_state.lengths, after_state.lengths)
    np.testing.assert_allclose(before.base_log_probs, after.base_log_probs[ancestors], atol=ATOL)
    np.testing.assert_allclose(before_state.last_log_probs, after_state.last_log_probs, atol=ATOL)


def test_sampling_is_reproducible_and_scored_correctly(model):
    rng = np.random.default_rng(3)
    prompts, lengths = _padded(rng, [4, 2, 3, 4], 4, model.vocab_size)
    state = model.init_state(prompts, lengths, 20)
    stop_ids = jnp.array([1, 2])
    step = eqx.filter_jit(
        lambda m, k, s, t: m.sample_step(k, s, temperature=t, stop_ids=stop_ids, max_new_tokens=8)
    )
    _, first = step(model, jax.random.key(7), state, 1.0)
    _, again = step(model, jax.random.key(7), state, 1.0)
    _, other = step(model, jax.random.key(8), state, 1.0)
    np.testing.assert_array_equal(first.tokens, again.tokens)
    assert not np.array_equal(first.tokens, other.tokens)
    # At temperature 1 the proposal is the model itself.
    np.testing.assert_allclose(first.proposal_log_probs, first.base_log_probs, atol=ATOL)
    # The returned base log-probs are the teacher-forced scores of the sampled tokens.
    _, scores = model.extend(state, first.tokens, first.num_tokens)
    np.testing.assert_allclose(scores, first.base_log_probs, atol=ATOL)
    # A step ends at its first stop token, or at max_new_tokens.
    for row in range(4):
        tokens = np.asarray(first.tokens[row, : first.num_tokens[row]])
        assert not np.isin(tokens[:-1], stop_ids).any()
        assert np.isin(tokens[-1], stop_ids) or len(tokens) == 8


def test_tempered_proposal_is_the_cooled_model(model):
    prompts, lengths = _padded(np.random.default_rng(4), [3, 2], 3, model.vocab_size)
    state = model.init_state(prompts, lengths, 10)
    _, out = model.sample_step(
        jax.random.key(0),
        state,
        temperature=0.5,
        stop_ids=jnp.array([], jnp.int32),
        max_new_tokens=1,
    )
    cooled = jax.nn.log_softmax(model.next_log_probs(state) / 0.5, axis=-1)
    token = np.asarray(out.tokens[:, 0])
    np.testing.assert_allclose(out.proposal_log_probs[:, 0], cooled[np.arange(2), token], atol=ATOL)
    np.testing.assert_allclose(
        out.base_log_probs[:, 0], model.next_log_probs(state)[np.arange(2), token], atol=ATOL
    )


def test_forced_step_scores_what_sampling_scored(model):
    """Replaying sampled steps with force_step gives the same state and log-probabilities
    (base and tempered), and an end token among them kills the row."""
    prompts, lengths = _padded(np.random.default_rng(5), [3, 5, 2], 5, model.vocab_size)
    state = model.init_state(prompts, lengths, 24)
    sampled_state, out = model.sample_step(
        jax.random.key(3), state, temperature=0.7, stop_ids=jnp.array([3]), max_new_tokens=6
    )
    forced_state, forced = model.force_step(state, out.tokens, out.num_tokens, temperature=0.7)
    np.testing.assert_array_equal(forced.tokens, out.tokens)
    np.testing.assert_array_equal(forced.num_tokens, out.num_tokens)
    np.testing.assert_allclose(forced.base_log_probs, out.base_log_probs, atol=ATOL)
    np.testing.assert_allclose(forced.proposal_log_probs, out.proposal_log_probs, atol=ATOL)
    np.testing.assert_array_equal(forced_state.lengths, sampled_state.lengths)
    np.testing.assert_allclose(forced_state.last_log_probs, sampled_state.last_log_probs,
                               atol=ATOL)
    ended = lm.TransformerTokenModel(model.transformer, end_ids=(7,))
    dead, _ = ended.force_step(state, jnp.array([[1, 7], [1, 2], [0, 0]]), jnp.array([2, 2, 0]),
                               temperature=1.0)
    assert list(np.asarray(dead.alive)) == [False, True, True]


def test_a_rows_draws_depend_on_its_own_key_only(model):
    """With one key per row, a row samples the same step alone or in any batch."""
    prompts, lengths = _padded(np.random.default_rng(6), [3, 4, 2], 4, model.vocab_size)
    keys = jax.random.split(jax.random.key(0), 3)
    step = eqx.filter_jit(
        lambda m, k, s: m.sample_step(k, s, temperature=1.0, stop_ids=jnp.array([3]),
                                      max_new_tokens=8)
    )
    _, together = step(model, keys, model.init_state(prompts, lengths, 20))
    for row in range(3):
        one = slice(row, row + 1)
        _, alone = step(model, keys[one], model.init_state(prompts[one], lengths[one], 20))
        np.testing.assert_array_equal(alone.tokens[0], together.tokens[row])
    with pytest.raises(ValueError, match="one per row"):
        step(model, keys[:2], model.init_state(prompts, lengths, 20))


def test_copy_rows_equals_reorder_on_every_block(model):
    """Copying rows into others gives the state a full reorder gives, also when the copied
    rows reach a later block of the cache (and a block none reached is left alone)."""
    blocked = lm.TransformerTokenModel(model.transformer, block_length=8)
    prompts, lengths = _padded(np.random.default_rng(7), [3, 12, 5, 2], 12, model.vocab_size)
    state = blocked.init_state(prompts, lengths, 24)
    for destinations, sources in (([1, 3], [2, 0]), ([0, 2, 4], [1, 1, 0])):
        ancestors = np.arange(4)
        for d, src in zip(destinations, sources, strict=True):
            if d < 4:
                ancestors[d] = src
        copied = blocked.copy_rows(state, jnp.asarray(destinations), jnp.asarray(sources))
        gathered = blocked.reorder(state, jnp.asarray(ancestors))
        np.testing.assert_array_equal(copied.lengths, gathered.lengths)
        np.testing.assert_array_equal(copied.last_log_probs, gathered.last_log_probs)
        np.testing.assert_array_equal(copied.alive, gathered.alive)
        # Every slot a row attends to holds the same keys and values (stale ones may differ).
        for name in ("keys", "values"):
            for a, b in zip(getattr(copied.cache, name), getattr(gathered.cache, name),
                            strict=True):
                a, b = np.concatenate(a, axis=2), np.concatenate(b, axis=2)
                for row, length in enumerate(np.asarray(copied.lengths)):
                    np.testing.assert_array_equal(a[row, :, :length], b[row, :, :length])
        _, out_copied = blocked.sample_step(jax.random.key(0), copied, temperature=0.0,
                                            stop_ids=jnp.array([3]), max_new_tokens=4)
        _, out_gathered = blocked.sample_step(jax.random.key(0), gathered, temperature=0.0,
                                              stop_ids=jnp.array([3]), max_new_tokens=4)
        np.testing.assert_array_equal(out_copied.tokens, out_gathered.tokens)


def test_end_token_kills_row_and_full_buffer_stops():
    import jax.random as jr
    from ppl.models.lm import qwen2
    from ppl.models.lm.adapter import TransformerTokenModel

    config = qwen2.Qwen2Config(
        vocab_size=5,
        hidden_size=16,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
    )
    model = TransformerTokenModel(qwen2.init(jr.key(0), config), end_ids=(4,))
    state = model.init_state(jnp.zeros((64, 2), jnp.int32), jnp.full((64,), 2), 10)
    state, out = model.sample_step(
        jr.key(1), state, temperature=1.0, stop_ids=jnp.array([], jnp.int32), max_new_tokens=6
    )
    tokens, num = np.asarray(out.tokens), np.asarray(out.num_tokens)
    ended = np.array([4 in tokens[row, : num[row]] for row in range(64)])
    assert ended.any() and (~ended).any()
    np.testing.assert_array_equal(np.asarray(state.alive), ~ended)
    # Dead rows generate nothing; survivors stop when the 10-slot buffer is full, and die.
    state, out = model.sample_step(
        jr.key(2), state, temperature=1.0, stop_ids=jnp.array([], jnp.int32), max_new_tokens=5
    )
    num = np.asarray(out.num_tokens)
    assert np.all(num[ended] == 0) and np.all(num[~ended] <= 2)
    assert np.all(np.asarray(state.lengths) <= 10)
    assert not np.asarray(state.alive)[np.asarray(state.lengths) == 10].any()


def test_extend_does_not_retrace_as_sequences_grow(model):
    traces = []

    @eqx.filter_jit
    def extend(m, s, t, n):
        traces.append(None)
        return m.extend(s, t, n)

    state = model.init_state(jnp.ones((2, 3), jnp.int32), jnp.array([3, 2]), 16)
    for _ in range(4):
        state, _ = extend(model, state, jnp.ones((2, 2), jnp.int32), jnp.array([2, 1]))
    assert len(traces) == 1


def test_bad_inputs_name_the_argument(model):
    with pytest.raises(ValueError, match="prompt_lengths"):
        model.init_state(jnp.ones((2, 3), jnp.int32), jnp.array([3]), 8)
    with pytest.raises(ValueError, match="max_length"):
        model.init_state(jnp.ones((2, 3), jnp.int32), jnp.array([3, 3]), 2)
    with pytest.raises(ValueError, match="tokens"):
        state = model.init_state(jnp.ones((2, 3), jnp.int32), jnp.array([3, 3]), 8)
        model.extend(state, jnp.ones((2,), jnp.int32), jnp.array([1, 1]))
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.sample_step(
            jax.random.key(0), state, temperature=1.0, stop_ids=jnp.array([1]), max_new_tokens=0
        )
