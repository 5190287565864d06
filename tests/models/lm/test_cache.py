"""The KV cache in blocks: any block length computes what one block does.

``sample_step`` runs one decoding loop per block, attending only to the blocks its rows have
reached; ``extend`` writes chunks that straddle blocks. Compared against full recomputation
and against a cache of a single block, for both architectures.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.models import lm
from ppl.models.lm.adapter import TransformerTokenModel, _argmax

ATOL = 1e-5


@pytest.fixture(scope="module", params=["gpt2_dir", "qwen2_dir"])
def transformer(request):
    path, _ = request.getfixturevalue(request.param)
    return lm.load(path).transformer


def _with_blocks(transformer, block_length):
    return TransformerTokenModel(transformer, block_length=block_length)


def test_blocks_tile_the_cache(transformer):
    model = _with_blocks(transformer, 3)
    state = model.init_state(jnp.ones((2, 4), jnp.int32), jnp.array([4, 2]), 11)
    assert state.cache.block_ends == (3, 6, 9, 11)
    assert state.cache.num_slots == 11
    assert [b.shape[2] for b in state.cache.keys[0]] == [3, 3, 3, 2]
    assert len(state.cache.keys) == len(state.cache.values) == transformer.num_layers
    prefix = state.cache.prefix(2)
    assert prefix.block_ends == (3, 6) and prefix.keys[0][1] is state.cache.keys[0][1]
    assert state.cache.with_prefix(prefix).keys[0][3] is state.cache.keys[0][3]


def test_writes_touch_only_their_slots(transformer):
    model = _with_blocks(transformer, 3)
    prompts = np.random.default_rng(3).integers(0, model.vocab_size, size=(3, 7))
    lengths = np.array([7, 1, 4])
    state = model.init_state(prompts, lengths, 11)
    state, _ = model.extend(state, jnp.ones((3, 2), jnp.int32), jnp.array([1, 2, 0]))
    lengths = lengths + np.array([1, 2, 0])
    for buffers in (state.cache.keys, state.cache.values):
        for blocks in buffers:
            joined = np.concatenate([np.asarray(b) for b in blocks], axis=2)
            for row in range(3):
                assert np.all(joined[row, :, lengths[row] :] == 0)
                assert np.all(np.abs(joined[row, :, : lengths[row]]).sum(-1) > 0)


@pytest.mark.parametrize("block_length", [1, 3, 7])
def test_chunks_across_blocks_equal_full_recompute(transformer, block_length,
                                                  check_chunked_decoding):
    model = _with_blocks(transformer, block_length)
    sequences = np.random.default_rng(0).integers(0, model.vocab_size, size=(3, 17))
    check_chunked_decoding(model, sequences, np.array([5, 2, 6]),
                           ([4, 5, 0], [3, 1, 5], [0, 4, 1]), width=5, cache_length=17,
                           atol=ATOL)


def test_sampling_in_blocks_draws_what_one_block_draws(transformer):
    one_block, blocked = _with_blocks(transformer, 128), _with_blocks(transformer, 4)
    rng = np.random.default_rng(1)
    prompts = rng.integers(0, transformer.vocab_size, size=(4, 10))
    lengths = np.array([2, 10, 5, 3])

    @eqx.filter_jit
    def run(model, key):
        state = model.init_state(prompts, lengths, 27)
        # A finished row that already lies past the first blocks: it must not be extended.
        state = state._replace(alive=state.alive.at[1].set(False))
        outputs = []
        for subkey in jax.random.split(key, 3):
            state, out = model.sample_step(
                subkey, state, temperature=1.0, stop_ids=jnp.array([3]), max_new_tokens=7
            )
            outputs.append(out)
        return state, outputs

    for seed in range(3):
        state, outs = run(one_block, jax.random.key(seed))
        blocked_state, blocked_outs = run(blocked, jax.random.key(seed))
        for out, blocked_out in zip(outs, blocked_outs, strict=True):
            np.testing.assert_array_equal(blocked_out.tokens, out.tokens)
            np.testing.assert_array_equal(blocked_out.num_tokens, out.num_tokens)
            np.testing.assert_allclose(blocked_out.base_log_probs, out.base_log_probs, atol=ATOL)
        assert int(np.asarray(outs[0].num_tokens)[1]) == 0
        np.testing.assert_array_equal(blocked_state.lengths, state.lengths)
        np.testing.assert_array_equal(blocked_state.alive, state.alive)
        np.testing.assert_allclose(blocked_state.last_log_probs, state.last_log_probs, atol=ATOL)
        # The written slots hold the same keys and values.
        written = np.arange(27)[None, :] < np.asarray(state.lengths)[:, None]
        for name in ("keys", "values"):
            for layer, blocks in zip(
                getattr(state.cache, name), getattr(blocked_state.cache, name), strict=True
            ):
                joined = np.concatenate([np.asarray(b) for b in blocks], axis=2)
                np.testing.assert_allclose(
                    joined.transpose(0, 2, 1, 3)[written],
                    np.asarray(layer[0]).transpose(0, 2, 1, 3)[written],
                    atol=ATOL,
                )


def test_argmax_is_jnp_argmax():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 9)).astype(np.float32)
    x[1, [2, 5]] = 10.0  # a tie: the first wins
    x[2, 4] = np.nan
    x[2, 7] = np.nan  # NaNs: the first NaN wins
    x[3] = -np.inf
    x[4, 0] = np.inf
    np.testing.assert_array_equal(_argmax(jnp.asarray(x)), jnp.argmax(jnp.asarray(x), axis=-1))
