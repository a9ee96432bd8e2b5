"""Spreading the engines' independent lanes over devices and processes.

Discrete engine: the state has two leading batch axes, configurations of a sweep (``n_cfg``) and paths
(``n_paths``); every lane is independent of the others. ``lane_mesh`` lays the devices out as a 2-D
``jax.sharding.Mesh`` with axes ``("cfg", "paths")`` and ``lane_sharding`` splits those two axes
over it, so the same jitted step runs on every device with no communication inside a step (the only
collectives are the one-flag reductions at block ends, see ``slowsde_jax.discrete._advance``). Path counts
that the devices do not divide are padded (``padded_paths``): the engine adds lanes that repeat path 0 (its
key, so its numbers) and drops them from every record, checkpoint and result.

Slow engine: its paths go in groups of ``paths_per_call``, one compiled call per group, and
``run_groups`` runs group i on device i mod (number of devices), this process's groups concurrently (one
thread per local device), then gathers every group's results onto every process. A group's call is the
same program on every device, so the numbers depend on the groups, never on the devices or processes. (A
call's numbers move in the last bits with its batch shape: XLA:CPU's kernels vectorise differently.)

Several processes: call ``jax.distributed.initialize()`` in every process first; ``jax.devices()`` then lists
the devices of all hosts and both engines use all of them. ``to_host`` gathers a sharded array onto every
host for recording.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import ArrayLike, PyTree

__all__ = ["mesh_shape", "padded_paths", "lane_mesh", "lane_sharding", "config_sharding", "run_groups", "place",
           "to_host"]


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


def run_groups(call: Callable[[int], PyTree[np.ndarray]], sizes: Sequence[int], like: PyTree[jax.ShapeDtypeStruct],
               devices: Optional[Sequence] = None) -> list:
    """Every group's ``call(i)``, i = 0 ... len(sizes) - 1, in every process: group i runs on device
    i mod len(devices) (default ``jax.devices()``, every device of every process), under
    ``jax.default_device``, this process's groups concurrently, one thread per local device.

    ``call(i)`` returns a pytree of host arrays whose leaves lead with an axis of ``sizes[i]`` (the group's
    paths) and otherwise have the shapes and dtypes of ``like``'s leaves. Under several processes each
    process computes the groups of its own devices and one ``process_allgather`` per leaf shares them."""
    devs = list(jax.devices() if devices is None else devices)
    mine = {}  # local device -> its groups, in order
    for i in range(len(sizes)):
        d = devs[i % len(devs)]
        if d.process_index == jax.process_index():
            mine.setdefault(d, []).append(i)

    def work(device):
        with jax.default_device(device):
            return [(i, call(i)) for i in mine[device]]

    results = {}
    if len(mine) <= 1:
        for d in mine:
            results.update(work(d))
    else:
        with ThreadPoolExecutor(len(mine)) as pool:
            for done in pool.map(work, list(mine)):
                results.update(done)
    if jax.process_count() == 1:
        return [results[i] for i in range(len(sizes))]
    return _gather_groups(results, sizes, like, devs)


def _gather_groups(results: dict, sizes: Sequence[int], like, devs) -> list:
    """All groups' results on every process from each process's own (``run_groups``): each process stacks its
    groups, padded to the largest group and to the most groups a process holds, and gathers the stacks."""
    from jax.experimental import multihost_utils

    owner = [devs[i % len(devs)].process_index for i in range(len(sizes))]
    held = [[i for i in range(len(sizes)) if owner[i] == p] for p in range(jax.process_count())]
    rows, width = max(len(h) for h in held), max(sizes)
    leaves, treedef = jax.tree_util.tree_flatten(like)
    stacks = []
    for k, leaf in enumerate(leaves):
        stack = np.zeros((rows, width, *leaf.shape), leaf.dtype)
        for r, i in enumerate(held[jax.process_index()]):
            stack[r, : sizes[i]] = jax.tree_util.tree_leaves(results[i])[k]
        stacks.append(stack)
    gathered = [np.asarray(multihost_utils.process_allgather(x)) for x in stacks]  # (processes, rows, width, ...)
    out = []
    for i in range(len(sizes)):
        r = held[owner[i]].index(i)
        out.append(jax.tree_util.tree_unflatten(treedef, [g[owner[i], r, : sizes[i]] for g in gathered]))
    return out


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
