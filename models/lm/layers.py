"""Pieces shared by the transformer architectures: the KV cache and cached attention.

Every architecture maps ``(token_ids, positions, cache, write_slots)`` to
``(logits, cache)``. New keys and values go to ``write_slots`` (one slot per input token,
``cache_length`` for a token that must not be written: scatters drop out-of-range indices);
a query at position ``p`` attends the slots ``0 .. p``. Since slot index equals position,
stale values left beyond a row's length are never attended.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

# Finite, so that a query with nothing to attend (a padding token) gives no NaN.
_MASKED = -1e30


class KVCache(NamedTuple):
    """Keys and values of every layer, one buffer per layer.

    Separate buffers rather than one stacked array: attention reads a layer's buffer where
    it lies, whereas a slice of a stacked array is copied out first on CPU (at batch 64,
    4 layers x 2 copies of 8.6 MB per decoding step).

    Attributes:
        keys: one ``(batch, kv_heads, cache_length, head_dim)`` array per layer; head-major,
            so that each head's keys are one contiguous ``(slots, head_dim)`` matrix.
        values: same shapes as ``keys``.
    """

    keys: tuple[Float[Array, "batch kv_heads slots head_dim"], ...]
    values: tuple[Float[Array, "batch kv_heads slots head_dim"], ...]

    @property
    def num_slots(self) -> int:
        return self.keys[0].shape[2]


def empty_cache(
    *, num_layers: int, batch: int, cache_length: int, num_kv_heads: int, head_dim: int, dtype
) -> KVCache:
    shape = (batch, num_kv_heads, cache_length, head_dim)
    layers = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))  # noqa: E731
    return KVCache(layers(), layers())


def self_attention(
    queries: Float[Array, "batch chunk heads dim"],
    keys: Float[Array, "batch chunk kv_heads dim"],
    values: Float[Array, "batch chunk kv_heads dim"],
    positions: Int[Array, "batch chunk"],
    cache: tuple[Array, Array] | None,
    write_slots: Int[Array, "batch chunk"] | None,
) -> tuple[Float[Array, "batch chunk heads dim"], tuple[Array, Array] | None]:
    """Writes the chunk's keys and values to one layer's cache, then attends causally over it.

    Without a cache (``None``) the chunk attends only to itself. With one (that layer's
    ``(keys, values)`` buffers), the new keys and values are scattered in at
    ``[row, head, slot]``; out-of-range slots are dropped.
    """
    if cache is None:
        to_heads = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731
        return attend(queries, to_heads(keys), to_heads(values), positions), None
    rows = jnp.arange(keys.shape[0])[:, None]
    where = (rows, slice(None), write_slots)
    cache_keys, cache_values = cache
    cache_keys = cache_keys.at[where].set(keys.astype(cache_keys.dtype), mode="drop")
    cache_values = cache_values.at[where].set(values.astype(cache_values.dtype), mode="drop")
    return attend(queries, cache_keys, cache_values, positions), (cache_keys, cache_values)


def attend(
    queries: Float[Array, "batch chunk heads dim"],
    keys: Float[Array, "batch kv_heads slots dim"],
    values: Float[Array, "batch kv_heads slots dim"],
    positions: Int[Array, "batch chunk"],
) -> Float[Array, "batch chunk heads dim"]:
    """Causal grouped-query attention of ``queries`` over the cache (softmax in float32)."""
    batch, chunk, num_heads, head_dim = queries.shape
    num_kv_heads = keys.shape[1]
    group = num_heads // num_kv_heads
    q = queries.reshape(batch, chunk, num_kv_heads, group, head_dim)
    # Scores accumulate and come out in float32 whatever the weights' dtype (bfloat16 too).
    scores = jnp.einsum("btkgd,bksd->bkgts", q, keys, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(head_dim))
    slots = jnp.arange(keys.shape[2])
    visible = slots[None, None, :] <= positions[:, :, None]  # (batch, chunk, slots)
    scores = jnp.where(visible[:, None, None], scores, _MASKED)
    weights = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
    # Weights on the left: XLA's CPU backend then runs this as one batched matmul in XNNPACK
    # (with values on the left it fell back to a slower generic dot).
    out = jnp.einsum("bkgts,bksd->bkgtd", weights, values, preferred_element_type=jnp.float32)
    out = out.transpose(0, 3, 1, 2, 4).astype(values.dtype)
    return out.reshape(batch, chunk, num_heads, head_dim)


def layer_norm(x, weight, bias, eps):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype) * weight + bias


def rms_norm(x, weight, eps):
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + eps)
    return weight * normed.astype(x.dtype)


def rotary(x: Float[Array, "batch chunk heads dim"], positions, theta: float):
    """Rotary embedding in the rotate-half layout that Hugging Face Llama/Qwen2 use."""
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (batch, chunk, dim/2)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    half = head_dim // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def run_layers(layer, x, params, cache: KVCache | None, *, unroll: bool = False):
    """Runs ``layer(x, (params_i, layer_cache_i)) -> (x, layer_cache_i)`` over layers.

    Without a cache, under ``lax.scan`` (compile time does not grow with depth). With one,
    as a Python loop: each layer's buffers are then separate arrays that XLA updates in place
    and attention reads without copying (a scan would slice them out of a stacked array).

    Args:
        unroll: unroll the cache-free scan (``cache is None``). Compile time then grows with
            depth, but XLA can fuse across layers: a training step of the testbed model
            (4 layers) ran about 20% faster on CPU.
    """
    if cache is None:
        step = lambda x, p: (layer(x, (p, None))[0], None)  # noqa: E731
        return jax.lax.scan(step, x, params, unroll=unroll)[0], None
    keys, values = list(cache.keys), list(cache.values)
    for index in range(len(keys)):
        p = jax.tree.map(lambda w: w[index], params)  # noqa: B023
        x, (keys[index], values[index]) = layer(x, (p, (keys[index], values[index])))
    return x, KVCache(tuple(keys), tuple(values))
