"""Fast PRNG keys: Threefry-2x32-20 lowered as fused elementwise operations.

JAX lowers its threefry on CPU as a rolled loop over rounds that XLA cannot fuse, and every
eager ``jax.random`` call with a new shape compiles such a program: slow to run in a particle
filter's inner loop (10^4 normals 0.13 ms against 0.06 ms) and slow to compile where a flow's
initialisers draw parameters of many shapes. Two implementations write the same algorithm
out round by round (bit for bit the same block function; tested):

- :data:`THREEFRY_FUSED` takes two output words from every block (half the hashing) and so
  gives other streams than JAX's: :func:`as_fast_key` re-keys to it (particle filters).
- :data:`THREEFRY_SAME_STREAMS` lays out counters exactly as JAX's default (partitionable)
  threefry does, so that :func:`same_streams_fused` keys give the very numbers the original
  key gives, from fused programs that compile faster when called eagerly (flow
  initialisation: about 2x faster in a cold process).
"""

from __future__ import annotations

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

__all__ = ["THREEFRY_FUSED", "THREEFRY_SAME_STREAMS", "PRNG_IMPLS", "as_fast_key",
           "same_streams_fused"]

_ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)


def _threefry2x32(key_words, x0, x1):
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), unrolled into elementwise ops.

    The same function as ``jax.random``'s threefry; JAX lowers that one on CPU as a rolled
    loop over rounds, which XLA cannot fuse (5x slower bits at N = 10^4). Unrolled, the
    rounds fuse with whatever consumes the bits (uniform, normal transforms).
    """
    k0, k1 = key_words[..., 0], key_words[..., 1]
    ks = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for r in range(20):
        rot = _ROTATIONS[r % 8]
        x0 = x0 + x1
        x1 = (x1 << np.uint32(rot)) | (x1 >> np.uint32(32 - rot))
        x1 = x1 ^ x0
        if r % 4 == 3:
            s = r // 4 + 1
            x0 = x0 + ks[s % 3]
            x1 = x1 + ks[(s + 1) % 3] + np.uint32(s)
    return x0, x1


def _words(key_words, num_words):
    # Counters (i, 0) for i < ceil(num_words / 2): two words per Threefry block.
    half = -(-num_words // 2)
    counter = jnp.arange(half, dtype=jnp.uint32)
    x0, x1 = _threefry2x32(key_words, counter, jnp.zeros_like(counter))
    return jnp.concatenate([x0, x1])[:num_words]


def _fused_seed(seed):
    seed = jnp.asarray(seed)
    low = seed.astype(jnp.uint32)
    high = (seed >> 32).astype(jnp.uint32) if seed.dtype.itemsize == 8 else jnp.zeros_like(low)
    return jnp.stack([high, low])


def _fused_split(key_words, shape):
    num = int(np.prod(shape))
    return _words(key_words, 2 * num).reshape(*shape, 2)


def _fused_fold_in(key_words, data):
    data = jnp.asarray(data).astype(jnp.uint32)
    # Lane 1 = 2^32 - 1 keeps fold_in's counters apart from split's and random_bits' (i, 0).
    x0, x1 = _threefry2x32(key_words, data, jnp.full_like(data, np.uint32(0xFFFFFFFF)))
    return jnp.stack([x0, x1])


def _fused_random_bits(key_words, bit_width, shape):
    num = int(np.prod(shape))
    if bit_width == 64:
        words = _words(key_words, 2 * num).reshape(2, num)
        bits = (words[0].astype(jnp.uint64) << np.uint64(32)) | words[1].astype(jnp.uint64)
        return bits.reshape(shape)
    dtype = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}[bit_width]
    return _words(key_words, num).astype(dtype).reshape(shape)


THREEFRY_FUSED = jax.extend.random.define_prng_impl(
    key_shape=(2,),
    seed=_fused_seed,
    split=_fused_split,
    random_bits=_fused_random_bits,
    fold_in=_fused_fold_in,
    name="threefry2x32_fused",
    tag="ppl_tf",
)


# JAX's partitionable layout: element i of a draw (or of a split) hashes the counter
# (hi, lo) = (0, i); 32-bit words are the XOR of the block's two outputs, split keys the
# pair itself; fold_in hashes (0, data).
def _same_counters(num):
    lo = jnp.arange(num, dtype=jnp.uint32)
    return jnp.zeros_like(lo), lo


def _same_split(key_words, shape):
    y0, y1 = _threefry2x32(key_words, *_same_counters(int(np.prod(shape))))
    return jnp.stack([y0, y1], axis=-1).reshape(*shape, 2)


def _same_fold_in(key_words, data):
    data = jnp.asarray(data).astype(jnp.uint32)
    y0, y1 = _threefry2x32(key_words, jnp.zeros_like(data), data)
    return jnp.stack([y0, y1])


def _same_random_bits(key_words, bit_width, shape):
    y0, y1 = _threefry2x32(key_words, *_same_counters(int(np.prod(shape))))
    if bit_width == 64:
        bits = (y0.astype(jnp.uint64) << np.uint64(32)) | y1.astype(jnp.uint64)
    else:
        bits = (y0 ^ y1).astype({8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}[bit_width])
    return bits.reshape(shape)


THREEFRY_SAME_STREAMS = jax.extend.random.define_prng_impl(
    key_shape=(2,),
    seed=_fused_seed,
    split=_same_split,
    random_bits=_same_random_bits,
    fold_in=_same_fold_in,
    name="threefry2x32_same_streams",
    tag="ppl_tfs",
)


def same_streams_fused(key: PRNGKeyArray) -> PRNGKeyArray:
    """``key`` re-wrapped as a :data:`THREEFRY_SAME_STREAMS` key: the same random numbers
    (with JAX's default ``jax_threefry_partitionable=True``), from fused programs."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(key)) != "threefry2x32":
            return key  # another generator: nothing to match
        data = jax.random.key_data(key)
    elif key.dtype == jnp.uint32 and key.shape[-1:] == (2,):  # a raw jax.random.PRNGKey
        data = key
    else:
        return key
    if not jax.config.jax_threefry_partitionable:
        return key
    return jax.random.wrap_key_data(data, impl=THREEFRY_SAME_STREAMS)


PRNG_IMPLS = ("threefry_fused", "rbg", "unsafe_rbg", "threefry2x32")


def as_fast_key(key: PRNGKeyArray, impl: str | None) -> PRNGKeyArray:
    """A key of another PRNG implementation seeded from ``key``.

    ``"threefry_fused"``: Threefry-2x32-20 (the default generator's algorithm) lowered as
    fused elementwise operations; on CPU its normals cost about a third of JAX's threefry
    ones. ``"rbg"``/``"unsafe_rbg"``: XLA's RngBitGenerator, fast on accelerators but slower
    than threefry on CPU. ``None`` or ``"threefry2x32"`` keeps ``key`` as it is.
    """
    if impl is None or impl == "threefry2x32":
        return key
    if impl not in PRNG_IMPLS:
        raise ValueError(f"Expected prng_impl None or one of {PRNG_IMPLS}, got {impl!r}.")
    if impl == "threefry_fused":
        return jax.random.wrap_key_data(jax.random.bits(key, (2,), jnp.uint32),
                                        impl=THREEFRY_FUSED)
    bits = jax.random.bits(key, (4,), jnp.uint32)
    return jax.random.wrap_key_data(bits, impl=impl)
