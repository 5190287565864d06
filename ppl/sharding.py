"""Placing batch axes (chains, particles) across devices with JAX's own sharding."""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["shard_leading_axis"]


def shard_leading_axis(x: jax.Array, axis_name: str = "batch") -> jax.Array:
    """Split the leading axis of ``x`` over all devices when there are several and it divides
    evenly; otherwise return ``x`` unchanged. Compiled code then runs each slice where it
    lives (XLA's SPMD partitioner follows the input sharding)."""
    devices = jax.devices()
    if len(devices) < 2 or x.shape[0] % len(devices):
        return x
    mesh = jax.sharding.Mesh(np.array(devices), (axis_name,))
    spec = jax.sharding.PartitionSpec(axis_name)
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))
