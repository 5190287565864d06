"""The bfloat16 option: weights, activations and KV cache in bfloat16, logits in float32.

Tolerances come from bfloat16's unit roundoff u = 2^-8 (8 significant bits). Between the
float32 weights and the logits a bfloat16 forward pass rounds about ``K = 2 + 12 * layers``
tensors in sequence (the weights and embedding lookup, then per layer the normed input,
q, k, v, the attention output and its projection, the residual sum, the second norm, the
two MLP products, their elementwise product and the down projection with its residual sum;
the final norm; attention scores, softmax and norm statistics are float32). Each rounding
is a relative error of at most u. Taking a gain of at most 1 from each stage to the
logits, the errors add at worst linearly (``max |error| <= K u max |logit|``) and, as
independent roundings do, in quadrature on average (``rms error <= sqrt(K) u rms logit``).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ppl.models import lm

UNIT_ROUNDOFF = float(jnp.finfo(jnp.bfloat16).eps) / 2  # 2^-8


def _num_roundings(model) -> int:
    return 2 + 12 * model.transformer.num_layers


@pytest.fixture(scope="module", params=["gpt2_dir", "qwen2_dir"])
def models(request):
    path, _ = request.getfixturevalue(request.param)
    return lm.load(path), lm.load(path, dtype=jnp.bfloat16)


def test_parameters_are_bfloat16_and_logits_float32_and_close(models):
    model32, model16 = models
    leaves = jax.tree.leaves(eqx.filter(model16, eqx.is_inexact_array))
    assert leaves and all(leaf.dtype == jnp.bfloat16 for leaf in leaves)
    ids = np.random.default_rng(0).integers(0, model32.vocab_size, size=(4, 24))
    positions = jnp.broadcast_to(jnp.arange(24), ids.shape)
    logits32, _ = model32.transformer(jnp.asarray(ids), positions, None, None)
    logits16, _ = model16.transformer(jnp.asarray(ids), positions, None, None)
    assert logits16.dtype == jnp.float32
    logits32, logits16 = np.asarray(logits32), np.asarray(logits16)
    assert np.all(np.isfinite(logits16))
    error = logits16 - logits32
    num = _num_roundings(model16)
    assert np.abs(error).max() <= num * UNIT_ROUNDOFF * np.abs(logits32).max()
    rms = lambda x: np.sqrt(np.mean(np.square(x)))  # noqa: E731
    assert rms(error) <= np.sqrt(num) * UNIT_ROUNDOFF * rms(logits32)
    # Rounding does change something: the bfloat16 path is not float32 in disguise.
    assert np.abs(error).max() > 0
    # Negative control: float32 weights rounded to 4 significant bits (16 times bfloat16's
    # roundoff) must fail the rms bound, so the bound resolves a loss of a few bits.
    coarse = jax.tree.map(
        lambda x: _round_significand(x, 4) if eqx.is_inexact_array(x) else x, model32
    )
    logits4, _ = coarse.transformer(jnp.asarray(ids), positions, None, None)
    assert rms(np.asarray(logits4) - logits32) > np.sqrt(num) * UNIT_ROUNDOFF * rms(logits32)


def _round_significand(x, bits):
    mantissa, exponent = jnp.frexp(x)  # mantissa in [0.5, 1): ``bits`` significant bits kept
    return jnp.ldexp(jnp.round(mantissa * 2**bits) / 2**bits, exponent)


def test_cached_decoding_runs_in_bfloat16(models):
    model32, model16 = models
    rng = np.random.default_rng(1)
    prompts, lengths = rng.integers(0, model16.vocab_size, size=(3, 6)), np.array([6, 2, 4])
    state = model16.init_state(prompts, lengths, 20)
    buffers = jax.tree.leaves(state.cache)
    assert buffers and all(buffer.dtype == jnp.bfloat16 for buffer in buffers)
    step = eqx.filter_jit(
        lambda m, k, s: m.sample_step(
            k, s, temperature=1.0, stop_ids=jnp.array([], jnp.int32), max_new_tokens=8
        )
    )
    state, out = step(model16, jax.random.key(0), state)
    assert all(buffer.dtype == jnp.bfloat16 for buffer in jax.tree.leaves(state.cache))
    assert out.base_log_probs.dtype == jnp.float32
    counts = np.asarray(out.num_tokens)
    np.testing.assert_array_equal(np.asarray(state.lengths), lengths + counts)
    base = np.asarray(out.base_log_probs)
    assert np.all(np.isfinite(base)) and np.all(base <= 0)
    # The sampled tokens, scored by the float32 model without a cache: a log-softmax moves
    # by at most twice the largest logit error.
    for row in range(3):
        tokens = np.asarray(out.tokens[row, : counts[row]])
        sequence = np.concatenate([prompts[row, : lengths[row]], tokens])[None]
        log_probs = np.asarray(model32.log_probs(sequence))[0]
        logits, _ = model32.transformer(
            jnp.asarray(sequence), jnp.arange(sequence.shape[1])[None], None, None
        )
        scale = np.abs(np.asarray(logits)).max()
        expected = log_probs[np.arange(lengths[row] - 1, sequence.shape[1] - 1), tokens]
        tolerance = 2 * _num_roundings(model16) * UNIT_ROUNDOFF * scale
        np.testing.assert_allclose(base[row, : counts[row]], expected, atol=tolerance, rtol=0)


def test_unsupported_dtype_is_named(qwen2_dir):
    with pytest.raises(ValueError, match="dtype one of float32, bfloat16, got int32"):
        lm.load(qwen2_dir[0], dtype=jnp.int32)
    with pytest.raises(ValueError, match="got float16"):
        lm.load(qwen2_dir[0], dtype="float16")
    assert lm.load(qwen2_dir[0], dtype="bfloat16").transformer.dtype == jnp.bfloat16
