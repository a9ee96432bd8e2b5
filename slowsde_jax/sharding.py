"""Spreading the engines' lanes over devices with ``jax.sharding``.

The engine's state has two leading batch axes, configurations of a sweep (``n_cfg``) and paths
(``n_paths``); every lane is independent of the others. ``lane_mesh`` lays the devices out as a 2-D
``jax.sharding.Mesh`` with axes ``("cfg", "paths")`` and ``lane_sharding`` splits those two axes
over it, so the same jitted step runs on every device with no communication inside a step (the only
collectives are the one-flag reductions at block ends, see ``slowsde_jax.discrete._advance``).

The slow engine's paths are independent too: ``path_mesh`` is a 1-D ``("paths",)`` mesh, and each compiled
call of the slow engine takes its group of paths split over it (``path_sharding``, ``path_lanes``).

Several processes: call ``jax.distributed.initialize()`` in every process first; ``jax.devices()`` then lists
the devices of all hosts and the same call shards over all of them. ``to_host`` gathers a sharded array
onto every host for recording.

Path counts that the devices do not divide are padded (``padded_paths``): the engine adds lanes that
repeat path 0 (its key, so its numbers) up to a multiple of the devices along the paths, and drops them
from every record, checkpoint and result. Lanes never interact, so the real paths' numbers are those of
one device.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import ArrayLike, PyTree

__all__ = ["mesh_shape", "padded_paths", "lane_mesh", "lane_sharding", "config_sharding", "path_mesh",
           "path_sharding", "path_lanes", "place", "to_host"]


def mesh_shape(n_cfg: int, n_paths: int, n_devices: int) -> tuple[int, int]:
    """(a, b): a = gcd(n_cfg, n_devices) devices along the configurations, b = min(n_devices / a, n_paths)
    along the paths. Every device holds n_cfg / a configurations of ceil(n_paths / b) paths, the paths
    padded to a multiple of b (``padded_paths``); no other layout of the devices holds fewer lanes per
    device."""
    a = math.gcd(int(n_cfg), int(n_devices))
    return a, max(1, min(int(n_devices) // a, int(n_paths)))


def padded_paths(n_paths: int, mesh: Optional[Mesh]) -> int:
    """The number of path lanes the engine runs: ``n_paths`` rounded up to a multiple of the mesh's "paths"
    axis (``n_paths`` without a mesh). The extra lanes repeat path 0 and are dropped from the results."""
    b = 1 if mesh is None else int(mesh.shape["paths"])
    return -(-int(n_paths) // b) * b


def lane_mesh(n_cfg: int, n_paths: int, devices: Optional[Sequence] = None) -> Optional[Mesh]:
    """A mesh ``("cfg", "paths")`` of shape (a, b) over ``devices`` (default: ``jax.devices()``), or None when
    it would hold a single device.

    The shape is ``mesh_shape``'s; the first a * b devices are used, each with the same number of lanes
    once the paths are padded to ``padded_paths``.
    """
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        return None
    a, b = mesh_shape(n_cfg, n_paths, len(devs))
    if a * b == 1:
        return None
    return Mesh(np.asarray(devs[: a * b], dtype=object).reshape(a, b), ("cfg", "paths"))


def lane_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axes (n_cfg, n_paths) split over the mesh's ("cfg", "paths") axes; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec("cfg", "paths"))


def config_sharding(mesh: Mesh) -> NamedSharding:
    """A leading axis (n_cfg,) split over the mesh's "cfg" axis (hyperparameters, targets)."""
    return NamedSharding(mesh, PartitionSpec("cfg"))


def path_mesh(n_paths: int, devices: Optional[Sequence] = None) -> Optional[Mesh]:
    """The slow engine's mesh: a 1-D ``("paths",)`` mesh over at most ``n_paths`` of ``devices`` (default
    ``jax.devices()``), or None for a single device. Under several processes every device is kept, so that
    each process holds a shard of every call (and takes part in gathering it)."""
    devs = list(jax.devices() if devices is None else devices)
    if jax.process_count() == 1:
        devs = devs[: max(1, int(n_paths))]
    return Mesh(np.asarray(devs, dtype=object), ("paths",)) if len(devs) > 1 else None


def path_sharding(mesh: Mesh) -> NamedSharding:
    """A leading paths axis split over the mesh's "paths" axis; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec("paths"))


def path_lanes(start: int, n_real: int, mesh: Optional[Mesh]) -> np.ndarray:
    """Indices of the paths start ... start + n_real - 1, followed by repeats of ``start`` up to a multiple of
    the mesh's devices: the lanes of one call of the slow engine (the repeats are dropped from its results)."""
    lanes = padded_paths(n_real, mesh)
    return np.concatenate([np.arange(start, start + n_real), np.full(lanes - n_real, start)]).astype(np.int64)


def place(tree: PyTree[ArrayLike], sharding: jax.sharding.Sharding) -> PyTree[jax.Array]:
    """Every array leaf of ``tree`` laid out by ``sharding``. Host (numpy) leaves become global arrays through
    ``jax.make_array_from_callback``, so each process supplies only its own shards (several hosts)."""

    def put(x):
        if isinstance(x, jax.Array) and x.is_fully_addressable:
            return jax.device_put(x, sharding)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx], dtype=x.dtype)  # (a process
        # whose devices hold no shard still needs the dtype)

    return jax.tree_util.tree_map(put, tree)


def to_host(x: ArrayLike) -> np.ndarray:
    """A (possibly sharded) array as one numpy array on this host; gathers across processes when the array
    spans several hosts."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
