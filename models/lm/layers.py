"""Pieces shared by the transformer architectures: the KV cache and cached attention.

Every architecture maps ``(token_ids, positions, cache, write_slots)`` to
``(logits, cache)``. New keys and values go to ``write_slots`` (one slot per input token,
``cache_length`` for a token that must not be written: scatters drop out-of-range indices);
a query at position ``p`` attends the slots ``0 .. p``. Since slot index equals position,
stale values left beyond a row's length are never attended. A cache holding only the first
blocks of slots (``KVCache.prefix``) is a valid cache too: a call then attends only to those.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

# Finite, so that a query with nothing to attend (a padding token) gives no NaN.
_MASKED = -1e30


class KVCache(NamedTuple):
    """Keys and values of every layer, each layer's slots split into blocks.

    ``keys[layer][block]`` is a ``(batch, kv_heads, block_slots, head_dim)`` array: head-major,
    so that each head's keys are contiguous ``(slots, head_dim)`` matrices, and one array per
    layer and block, so that attention reads them where they lie (slices of a stacked array
    are copied out first on CPU: at batch 64, 4 layers x 2 copies of 8.6 MB per token) and a
    prefix of blocks is a cache of its own, free to take (``prefix``).

    Attributes:
        keys: per layer, a tuple of blocks.
        values: same shapes as ``keys``.
    """

    keys: tuple[tuple[Float[Array, "batch kv_heads block head_dim"], ...], ...]
    values: tuple[tuple[Float[Array, "batch kv_heads block head_dim"], ...], ...]

    @property
    def block_ends(self) -> tuple[int, ...]:
        """The slot after each block: ``(b_0, b_0 + b_1, ...)``."""
        ends, end = [], 0
        for block in self.keys[0]:
            end += block.shape[2]
            ends.append(end)
        return tuple(ends)

    @property
    def num_slots(self) -> int:
        return self.block_ends[-1]

    def prefix(self, num_blocks: int) -> KVCache:
        """The cache of the first ``num_blocks`` blocks (the same arrays, not copies)."""
        take = lambda layers: tuple(blocks[:num_blocks] for blocks in layers)  # noqa: E731
        return KVCache(take(self.keys), take(self.values))

    def with_prefix(self, prefix: KVCache) -> KVCache:
        """This cache with its first blocks replaced by those of ``prefix``."""

        def merge(layers, new_layers):
            return tuple(new + old[len(new) :] for old, new in zip(layers, new_layers, strict=True))

        return KVCache(merge(self.keys, prefix.keys), merge(self.values, prefix.values))

    def copy_rows(self, destinations, sources, longest) -> KVCache:
        """Row ``destinations[i]`` of every block becomes a copy of row ``sources[i]``
        (out-of-range destinations dropped), skipping the blocks that start at or after
        ``longest``, the most slots any copied row holds: they hold nothing to copy, and in a
        two-block buffer most steps need only the first (half the bytes moved)."""
        write = lambda x: x.at[destinations].set(x[sources], mode="drop")  # noqa: E731

        def blocks(layers):
            out = []
            for layer in layers:
                starts = (0, *self.block_ends[:-1])
                out.append(tuple(jax.lax.cond(longest > start, write, lambda b: b, block)
                                 for block, start in zip(layer, starts, strict=True)))
            return tuple(out)

        return KVCache(blocks(self.keys), blocks(self.values))


def empty_cache(
    *,
    num_layers: int,
    batch: int,
    cache_length: int,
    block_length: int,
    num_kv_heads: int,
    head_dim: int,
    dtype,
) -> KVCache:
    """Zeros in blocks of ``block_length`` slots (the last one shorter when it does not divide)."""
    sizes = [
        min(block_length, cache_length - start) for start in range(0, cache_length, block_length)
    ]

    def layers():
        return tuple(
            tuple(jnp.zeros((batch, num_kv_heads, n, head_dim), dtype) for n in sizes)
            for _ in range(num_layers)
        )

    return KVCache(layers(), layers())


def self_attention(
    queries: Float[Array, "batch chunk heads dim"],
    keys: Float[Array, "batch chunk kv_heads dim"],
    values: Float[Array, "batch chunk kv_heads dim"],
    positions: Int[Array, "batch chunk"],
    cache: tuple[tuple[Array, ...], tuple[Array, ...]] | None,
    write_slots: Int[Array, "batch chunk"] | None,
) -> tuple[Float[Array, "batch chunk heads dim"], tuple | None]:
    """Writes the chunk's keys and values to one layer's cache, then attends causally over it.

    Without a cache (``None``) the chunk attends only to itself. With one (that layer's
    ``(key_blocks, value_blocks)``), the new keys and values are scattered in at
    ``[row, head, slot]``; slots outside the blocks are dropped.
    """
    if cache is None:
        to_heads = lambda x: (jnp.swapaxes(x, 1, 2),)  # noqa: E731
        return attend(queries, to_heads(keys), to_heads(values), positions), None
    rows = jnp.arange(keys.shape[0])[:, None]
    key_blocks, value_blocks, start = [], [], 0
    for key_block, value_block in zip(*cache, strict=True):
        size = key_block.shape[2]
        local = write_slots - start
        # Negative indices would wrap around; send them out of range, where they are dropped.
        where = (rows, slice(None), jnp.where(local < 0, size, local))
        key_blocks.append(key_block.at[where].set(keys.astype(key_block.dtype), mode="drop"))
        value_blocks.append(
            value_block.at[where].set(values.astype(value_block.dtype), mode="drop")
        )
        start += size
    out = attend(queries, key_blocks, value_blocks, positions)
    return out, (tuple(key_blocks), tuple(value_blocks))


def attend(
    queries: Float[Array, "batch chunk heads dim"],
    key_blocks: Sequence[Float[Array, "batch kv_heads block dim"]],
    value_blocks: Sequence[Float[Array, "batch kv_heads block dim"]],
    positions: Int[Array, "batch chunk"],
) -> Float[Array, "batch chunk heads dim"]:
    """Causal grouped-query attention of ``queries`` over consecutive blocks of slots.

    The softmax is taken in float32 over all blocks together.
    """
    batch, chunk, num_heads, head_dim = queries.shape
    num_kv_heads = key_blocks[0].shape[1]
    group = num_heads // num_kv_heads
    q = queries.reshape(batch, chunk, num_kv_heads, group, head_dim)
    # Scores accumulate and come out in float32 whatever the weights' dtype (bfloat16 too).
    scores = jnp.concatenate(
        [
            jnp.einsum("btkgd,bksd->bkgts", q, block, preferred_element_type=jnp.float32)
            for block in key_blocks
        ],
        axis=-1,
    )
    scores = scores / jnp.sqrt(jnp.float32(head_dim))
    slots = jnp.arange(scores.shape[-1])
    visible = slots[None, None, :] <= positions[:, :, None]  # (batch, chunk, slots)
    scores = jnp.where(visible[:, None, None], scores, _MASKED)
    weights = jax.nn.softmax(scores, axis=-1).astype(value_blocks[0].dtype)
    outs, start = [], 0
    for block in value_blocks:
        size = block.shape[2]
        # Weights on the left: XLA's CPU backend then runs this as one batched matmul in
        # XNNPACK (with values on the left it fell back to a slower generic dot).
        outs.append(
            jnp.einsum(
                "bkgts,bksd->bkgtd",
                weights[..., start : start + size],
                block,
                preferred_element_type=jnp.float32,
            )
        )
        start += size
    out = sum(outs[1:], outs[0])
    out = out.transpose(0, 3, 1, 2, 4).astype(value_blocks[0].dtype)
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


def run_layers(layer, x, params, cache: KVCache | None, *, unroll: bool = False, last=None):
    """Runs ``layer(x, (params_i, layer_cache_i)) -> (x, layer_cache_i)`` over layers.

    Without a cache, under ``lax.scan`` (compile time does not grow with depth). With one,
    as a Python loop: each layer's blocks are then separate arrays that XLA updates in place
    and attention reads without copying (a scan would slice them out of a stacked array).

    Args:
        unroll: unroll the cache-free scan (``cache is None``). Compile time then grows with
            depth, but XLA can fuse across layers: a training step of the testbed model
            (4 layers) ran about 20% faster on CPU.
        last: with a cache, a different function for the last layer (one that computes
            fewer outputs, say).
    """
    if cache is None:
        step = lambda x, p: (layer(x, (p, None))[0], None)  # noqa: E731
        return jax.lax.scan(step, x, params, unroll=unroll)[0], None
    keys, values = list(cache.keys), list(cache.values)
    for index in range(len(keys)):
        p = jax.tree.map(lambda w: w[index], params)  # noqa: B023
        run = last if last is not None and index == len(keys) - 1 else layer
        x, (keys[index], values[index]) = run(x, (p, (keys[index], values[index])))
    return x, KVCache(tuple(keys), tuple(values))
