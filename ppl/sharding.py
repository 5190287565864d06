"""Where batch axes (chains, particles) run: one placement rule over JAX's own runtime.

A *placement* is a 1-D :class:`jax.sharding.Mesh` over the chosen devices; engines take it
as ``devices=`` and split their batch axis over it, and XLA's SPMD partitioner runs each
slice where it lives. Several hosts are the same thing with more devices: every process
calls ``jax.distributed.initialize()`` and then the same program (no other launcher).

The padding rule: a batch that does not divide by the device count is padded with copies
of its last row, and :func:`shard_batch` returns the true size with it, so that callers drop
the padding (never keep it, never lose a row).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ALL_PROCESSES", "DevicesLike", "Placement", "ShardedBatch", "dividing_placement",
           "gather_to_host", "resolve_devices", "shard_batch", "shard_leading_axis"]

ALL_PROCESSES = "all-processes"
LOCAL = "local"

_INITIALIZE = ("call jax.distributed.initialize() on every process before anything else "
               "touches JAX (one process per host; under SLURM or Open MPI it reads the job's "
               "environment, else pass coordinator_address, num_processes and process_id)")


@dataclass(frozen=True)
class Placement:
    """A 1-D mesh that a batch axis is split over. Hashable, so jitted code can take it as a
    static argument (its sharding constraints then name the mesh)."""

    mesh: jax.sharding.Mesh

    @property
    def axis_name(self) -> str:
        return self.mesh.axis_names[0]

    @property
    def devices(self) -> list:
        return list(self.mesh.devices.flat)

    @property
    def num_devices(self) -> int:
        return int(self.mesh.devices.size)

    @property
    def multi_process(self) -> bool:
        """Whether the devices belong to several processes (arrays not fully addressable)."""
        return len({d.process_index for d in self.devices}) > 1

    @property
    def batch_sharding(self) -> jax.sharding.NamedSharding:
        """The leading axis split over the mesh."""
        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(self.axis_name))

    @property
    def replicated(self) -> jax.sharding.NamedSharding:
        """A full copy on every device of the mesh."""
        return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())

    def padded_size(self, size: int) -> int:
        """``size`` rounded up to a multiple of the device count."""
        return -(-size // self.num_devices) * self.num_devices


DevicesLike = None | int | str | Sequence[Any] | Placement


def resolve_devices(devices: DevicesLike = None, axis_name: str = "batch") -> Placement:
    """The placement that ``devices=`` names.

    Args:
        devices: ``None`` (default): every device of every process (``jax.devices()``);
            ``"local"``: this process's devices only (each process then runs the whole
            batch itself); ``"all-processes"``: every device of every process, and an error
            when ``jax.distributed`` is not initialised; an int ``n``: the first ``n`` of
            ``jax.devices()``; a sequence of ``jax.Device``; or a :class:`Placement`.
        axis_name: the mesh axis name (``"chain"``, ``"particle"``...).

    Raises:
        ValueError: a request that this runtime cannot meet; a multi-host request without
            ``jax.distributed.initialize()`` says so.
    """
    if isinstance(devices, Placement):
        if devices.axis_name == axis_name:
            return devices
        return Placement(jax.sharding.Mesh(devices.mesh.devices, (axis_name,)))
    distributed = jax.distributed.is_initialized()
    if devices is None:
        chosen = jax.devices()
    elif isinstance(devices, str):
        if devices == LOCAL:
            chosen = jax.local_devices()
        elif devices == ALL_PROCESSES:
            if not distributed:
                raise ValueError(
                    f"devices={ALL_PROCESSES!r} asks for the devices of every process, but "
                    f"jax.distributed is not initialised: {_INITIALIZE}. On one host, "
                    f"devices=None uses this process's {jax.device_count()} device(s)."
                )
            chosen = jax.devices()
        else:
            raise ValueError(
                f"Expected devices None, {LOCAL!r}, {ALL_PROCESSES!r}, a device count, a list "
                f"of jax devices or a ppl.sharding.Placement, got {devices!r}."
            )
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        available = jax.devices()
        if devices < 1:
            raise ValueError(f"Expected devices >= 1, got {devices!r}.")
        if devices > len(available):
            if not distributed:
                raise ValueError(
                    f"devices={devices} asks for more devices than this process has "
                    f"({len(available)} {available[0].platform} device(s)); devices on other "
                    f"hosts need jax.distributed: {_INITIALIZE}. (On one host, "
                    "XLA_FLAGS=--xla_force_host_platform_device_count=N gives N CPU devices.)"
                )
            raise ValueError(
                f"devices={devices} but the {jax.process_count()} process(es) have "
                f"{len(available)} device(s) in all; ask for at most {len(available)}."
            )
        chosen = available[: int(devices)]
    elif isinstance(devices, Sequence) and devices and all(
            isinstance(d, jax.Device) for d in devices):
        chosen = list(devices)
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"Expected distinct devices, got {chosen!r}.")
        here = jax.process_index()
        if not distributed and any(d.process_index != here for d in chosen):
            raise ValueError(f"Devices of other processes need jax.distributed: {_INITIALIZE}.")
    else:
        raise ValueError(
            f"Expected devices None, {LOCAL!r}, {ALL_PROCESSES!r}, a device count, a non-empty "
            f"list of jax devices or a ppl.sharding.Placement, got {devices!r}."
        )
    return Placement(jax.sharding.Mesh(np.array(chosen), (axis_name,)))


def dividing_placement(devices: DevicesLike, size: int, axis_name: str = "batch",
                       what: str = "The batch", stacklevel: int = 3) -> Placement:
    """The placement of ``devices=`` for a batch of ``size`` rows that must not be padded
    (the rows interact, as SVGD's particles do: a padding copy would join the population).

    When the device count does not divide ``size``, an explicit ``devices`` (or devices of
    several processes) is refused with a ``ValueError`` naming both numbers, and the default
    runs on the most leading devices whose count divides ``size``, with a ``UserWarning``.
    The result may hold a single device.
    """
    placement = resolve_devices(devices, axis_name)
    num = placement.num_devices
    if size % num == 0:
        return placement
    if devices is not None or placement.multi_process:
        raise ValueError(
            f"{what} has {size} {axis_name}s, which do not split evenly over {num} devices "
            f"(padding would change the population): choose a multiple of {num} "
            f"{axis_name}s, or devices= a count that divides {size}."
        )
    fewer = max(k for k in range(1, num + 1) if size % k == 0)
    warnings.warn(
        f"{what}: {size} {axis_name}s do not split evenly over {num} devices; running on "
        f"{fewer}. Choose a multiple of {num} {axis_name}s to use them all.",
        UserWarning, stacklevel=stacklevel,
    )
    return resolve_devices(placement.devices[:fewer], axis_name)


class ShardedBatch(NamedTuple):
    """What :func:`shard_batch` returns: the placed batch and how many of its rows are real.

    Rows from ``size`` on are padding (copies of the last real row): drop them.
    """

    array: Any
    size: int

    @property
    def mask(self) -> np.ndarray:
        """True for the real rows of the padded batch."""
        rows = jax.tree_util.tree_leaves(self.array)[0].shape[0]
        return np.arange(rows) < self.size


def _is_key(leaf) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _place(leaf, size: int, padded: int, placement: Placement):
    if _is_key(leaf):
        data = _place(jax.random.key_data(leaf), size, padded, placement)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    sharding = placement.batch_sharding
    if placement.multi_process or not (isinstance(leaf, jax.Array) and leaf.is_fully_addressable):
        # Every process holds the same full value; each one places its own slices.
        host = np.asarray(gather_to_host(leaf))
        if padded > size:
            host = np.concatenate([host, np.repeat(host[-1:], padded - size, axis=0)])
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
    if padded > size:
        leaf = jnp.concatenate([leaf, jnp.repeat(leaf[-1:], padded - size, axis=0)])
    return jax.device_put(leaf, sharding)


def shard_batch(x: Any, axis_name: str = "batch", devices: DevicesLike = None) -> ShardedBatch:
    """Split the leading axis of ``x`` (an array or a pytree of them) over ``devices``.

    A batch that does not divide by the device count is padded to the next multiple with
    copies of its last row (copies compute the same as the row, so they cannot fail where
    it does not); ``size`` in the result says how many rows are real. A batch smaller than
    the device count is padded too, with a ``UserWarning`` naming the numbers. On one
    device nothing is moved unless ``devices`` names it.
    """
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves or any(np.ndim(leaf) == 0 for leaf in leaves):
        raise ValueError("Expected arrays with a leading batch axis to shard, got "
                         f"{[np.shape(leaf) for leaf in leaves]}.")
    sizes = {int(np.shape(leaf)[0]) for leaf in leaves}
    if len(sizes) != 1:
        raise ValueError(f"Expected one leading batch size for all arrays, got {sorted(sizes)}.")
    size = sizes.pop()
    placement = resolve_devices(devices, axis_name)
    num = placement.num_devices
    if num == 1:
        if devices is None:
            return ShardedBatch(x, size)
        return ShardedBatch(jax.device_put(x, placement.devices[0]), size)
    padded = placement.padded_size(size)
    if size < num:
        warnings.warn(
            f"A batch of {size} along {axis_name!r} over {num} devices: {num - size} device(s) "
            f"compute a padding copy of the last row, which is dropped. Pass devices={size} "
            f"(or a batch that is a multiple of {num}) not to waste them.",
            UserWarning, stacklevel=2,
        )
    placed = jax.tree_util.tree_map(lambda leaf: _place(leaf, size, padded, placement), x)
    return ShardedBatch(placed, size)


def gather_to_host(x: Any) -> Any:
    """``x`` (an array or a pytree of them) as numpy arrays holding the whole global value.

    Under several processes an array sharded over all of them is gathered
    (``process_allgather``, a collective: every process must call this in the same order)
    and every process gets the full array; otherwise this is ``np.asarray``.
    """
    from jax.experimental import multihost_utils

    def one(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(leaf)

    return jax.tree_util.tree_map(one, x)


def shard_leading_axis(x: jax.Array, axis_name: str = "batch") -> jax.Array:
    """Split the leading axis of ``x`` over all devices when there are several and it divides
    evenly; otherwise return ``x`` unchanged (callers that pad themselves rely on this; the
    engines use :func:`shard_batch`, which pads)."""
    num = jax.device_count()
    if num < 2 or x.shape[0] % num:
        return x
    return shard_batch(x, axis_name).array
