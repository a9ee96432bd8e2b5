"""Spreading the engines' independent paths over devices and processes.

Both engines cut their paths into groups of ``paths_per_call`` (``group_sizes``), one compiled call per
group (the discrete engine's group holds those paths of every sweep configuration), and run group i on
device i mod (number of devices) (``group_device``). ``map_groups`` runs this process's groups, each device's
in a thread of its own under ``jax.default_device``; ``gather_groups`` shares the groups' host results with
every process; ``run_groups`` is the two in one. A group's call is the same program whatever the devices,
so the numbers depend on the groups and never on the devices or processes. (A call's numbers move in the
last bits with its batch shape: XLA:CPU's kernels vectorise and block differently, so a layout that gave
each device a share of one batch would give other numbers on another number of devices.)

Several processes: call ``jax.distributed.initialize()`` (or ``slowsde_jax.distributed.start``) in every
process first; ``jax.devices()`` then lists the devices of all hosts and both engines use all of them.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Sequence, Union

import jax
import numpy as np
from jaxtyping import PyTree

__all__ = ["group_sizes", "group_device", "map_groups", "gather_groups", "run_groups"]


def group_sizes(n_paths: int, paths_per_call: int) -> list[int]:
    """The sizes of the groups ``n_paths`` paths make, ``paths_per_call`` each but the last."""
    q = max(1, min(int(paths_per_call), int(n_paths)))
    return [min(q, int(n_paths) - p0) for p0 in range(0, int(n_paths), q)]


def group_device(i: int, devices: Optional[Sequence] = None) -> jax.Device:
    """The device of group ``i``: device i mod len(devices) (default ``jax.devices()``)."""
    devs = list(jax.devices() if devices is None else devices)
    return devs[i % len(devs)]


def map_groups(call: Callable[[int], PyTree], n_groups: int, devices: Optional[Sequence] = None) -> dict:
    """``{i: call(i)}`` for the groups i < ``n_groups`` whose device (``group_device``) belongs to this
    process, each under ``jax.default_device`` of its device: one thread per local device, a device's groups
    in order."""
    devs = list(jax.devices() if devices is None else devices)
    mine = {}  # local device -> its groups, in order
    for i in range(n_groups):
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
    return results


def run_groups(call: Callable[[int], PyTree[np.ndarray]], sizes: Sequence[int],
               like: Union[PyTree[jax.ShapeDtypeStruct], Callable[[], PyTree[jax.ShapeDtypeStruct]]],
               devices: Optional[Sequence] = None) -> list:
    """Every group's ``call(i)``, i = 0 ... len(sizes) - 1, in every process: ``map_groups`` then
    ``gather_groups``."""
    return gather_groups(map_groups(call, len(sizes), devices), sizes, like, devices)


def gather_groups(results: dict, sizes: Sequence[int],
                  like: Union[PyTree[jax.ShapeDtypeStruct], Callable[[], PyTree[jax.ShapeDtypeStruct]]],
                  devices: Optional[Sequence] = None) -> list:
    """Every group's result on every process, from this process's own (``map_groups``'s dict).

    A group's result is a pytree of host arrays whose leaves lead with an axis of ``sizes[i]`` (its paths)
    and otherwise have the shapes and dtypes of ``like``'s leaves (or of ``like()``'s: asked for only under
    several processes). There each process stacks its groups, padded to the largest group and to the most
    groups a process holds, and one ``process_allgather`` per leaf shares the stacks."""
    if jax.process_count() == 1:
        return [results[i] for i in range(len(sizes))]
    from jax.experimental import multihost_utils

    devs = list(jax.devices() if devices is None else devices)
    like = like() if callable(like) else like

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

