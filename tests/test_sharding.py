"""Sharded runs (paths and sweep configurations over several devices) against single-device runs.

The several devices are host CPU devices (``--xla_force_host_platform_device_count=4``), which must be set
before jax starts: the sharded run goes in a subprocess, the single-device reference runs here.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import slowsde_jax as S
from slowsde_jax import discrete, noise, problems, sharding

NET = problems.diagonal_net(d=4, n=3, k=1, key=0, n_test=10)
RUN = dict(T=0.2, n_paths=6, key=3, n_record=3, sweep={"eta": [0.05, 0.07]})  # the shapes of test_discrete's
# 5 paths of one configuration on 4 devices: padded to 8 lanes, 2 per device
UNEVEN = dict(T=0.2, eta=0.05, n_paths=5, key=3, n_record=3)

SCRIPT = textwrap.dedent("""
    import json, shutil, sys
    import jax, numpy as np
    import slowsde_jax as S
    from slowsde_jax import discrete, noise, problems
    assert len(jax.devices()) == 4
    NET = problems.diagonal_net(d=4, n=3, k=1, key=0, n_test=10)
    RUN, UNEVEN = json.loads(sys.argv[1]), json.loads(sys.argv[3])
    seen = set()
    record = lambda run: seen.add(len(run.state.theta.sharding.device_set))
    trajs = S.simulate_discrete(NET, noise.label_noise(0.5), S.adam(c=5.0),
                                execution=S.Execution(on_chunk=record, block_steps=8), **RUN)
    # interrupted after record 2 and resumed from its checkpoint, on the four devices
    ck = sys.argv[2] + ".ck.npz"
    def stop(run):
        if run.done == 3:
            raise KeyboardInterrupt
    try:
        S.simulate_discrete(NET, noise.label_noise(0.5), S.adam(c=5.0), execution=S.Execution(
            block_steps=8, checkpoint=ck, checkpoint_every_s=0, on_chunk=stop), **RUN)
    except KeyboardInterrupt:
        pass
    resumed = S.simulate_discrete(NET, noise.label_noise(0.5), S.adam(c=5.0), execution=S.Execution(
        on_chunk=record, block_steps=8, checkpoint=ck), **RUN)
    same = all(np.array_equal(a.theta, b.theta) and np.array_equal(a.v, b.v) for a, b in zip(trajs, resumed))
    # uneven: 5 paths padded to 8 lanes on the four devices; its interrupted checkpoint is resumed here and,
    # from a copy, on one device by the test
    lanes = set()
    uneven = S.simulate_discrete(NET, noise.label_noise(0.5), S.adam(c=5.0), execution=S.Execution(
        block_steps=8, on_chunk=lambda run: lanes.add(run.state.theta.shape[1])), **UNEVEN)
    ck2 = sys.argv[2] + ".uneven.npz"
    try:
        S.simulate_discrete(NET, noise.label_noise(0.5), S.adam(c=5.0), execution=S.Execution(
            block_steps=8, checkpoint=ck2, checkpoint_every_s=0, on_chunk=stop), **UNEVEN)
    except KeyboardInterrupt:
        pass
    shutil.copy(ck2, sys.argv[2] + ".uneven_interrupted.npz")
    uneven_resumed = S.simulate_discrete(NET, noise.label_noise(0.5), S.adam(c=5.0), execution=S.Execution(
        block_steps=8, checkpoint=ck2, on_chunk=record), **UNEVEN)
    trajs = trajs + [uneven, uneven_resumed]
    np.savez(sys.argv[2], devices=np.asarray(sorted(seen)), resumed_same=np.asarray(same),
             uneven_lanes=np.asarray(sorted(lanes)),
             **{f"{i}.{k}": x for i, tr in enumerate(trajs) for k, x in
                [("theta", tr.theta), ("v", tr.v), ("div", tr.diverged_step), ("loss", tr.observables["train_loss"])]})
""")


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "out.npz"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(RUN), str(out), json.dumps(UNEVEN)], check=True, env=env,
                   timeout=600)
    with np.load(out) as f:
        return dict(f, interrupted=str(out) + ".uneven_interrupted.npz")


@pytest.mark.slow
def test_sharded_run_equals_the_single_device_run_bit_for_bit(four_devices):
    """2 configurations x 6 paths on a (cfg 2, paths 2) mesh of 4 devices, with per-configuration targets:
    every record equals the single-device run's, and so does a sharded run resumed from a checkpoint."""
    assert four_devices["devices"].tolist() == [4]  # the state really lived on four devices (resumed too)
    assert four_devices["resumed_same"]  # a checkpoint resumed on the four devices: bit for bit
    single = S.simulate_discrete(NET, noise.label_noise(0.5), S.adam(c=5.0), **RUN, execution=S.Execution(block_steps=8))
    assert len(single) == 2 and sharding.mesh_shape(2, 6, 4) == (2, 2)
    for i, tr in enumerate(single):
        np.testing.assert_array_equal(four_devices[f"{i}.theta"], tr.theta)
        np.testing.assert_array_equal(four_devices[f"{i}.v"], tr.v)
        np.testing.assert_array_equal(four_devices[f"{i}.div"], tr.diverged_step)
        np.testing.assert_array_equal(four_devices[f"{i}.loss"], tr.observables["train_loss"])


@pytest.mark.slow
def test_uneven_paths_are_padded_on_the_devices_and_equal_the_single_device_run(four_devices, tmp_path):
    """5 paths on 4 devices run as 8 lanes (2 per device, the padding repeats path 0): the 5 paths equal the
    single-device run bit for bit, also resumed from a checkpoint on the four devices and on one device."""
    assert four_devices["uneven_lanes"].tolist() == [8]
    single = S.simulate_discrete(NET, noise.label_noise(0.5), S.adam(c=5.0), **UNEVEN, execution=S.Execution(block_steps=8))
    ck = tmp_path / "uneven.npz"
    ck.write_bytes(open(four_devices["interrupted"], "rb").read())
    with np.load(ck) as f:
        assert f["state.0"].shape[1] == 5 and int(f["done"]) == 2  # saved without the padding, mid-run
    resumed_here = S.simulate_discrete(NET, noise.label_noise(0.5), S.adam(c=5.0), **UNEVEN, execution=S.Execution(block_steps=8, checkpoint=ck))
    assert single.theta.shape[0] == 5
    for i in (2, 3):  # run on four devices, and resumed there
        np.testing.assert_array_equal(four_devices[f"{i}.theta"], single.theta)
        np.testing.assert_array_equal(four_devices[f"{i}.v"], single.v)
        np.testing.assert_array_equal(four_devices[f"{i}.div"], single.diverged_step)
        np.testing.assert_array_equal(four_devices[f"{i}.loss"], single.observables["train_loss"])
    np.testing.assert_array_equal(resumed_here.theta, single.theta)
    np.testing.assert_array_equal(resumed_here.v, single.v)


@pytest.mark.parametrize("n_cfg,n_paths,shape,lanes", [(1, 1024, (1, 8), 1024), (4, 6, (4, 2), 6), (2, 3, (2, 3), 3),
                                                       (3, 5, (1, 5), 5), (6, 1000, (2, 4), 1000),
                                                       (16, 7, (8, 1), 7), (1, 13, (1, 8), 16), (2, 5, (2, 4), 8),
                                                       (1, 1, (1, 1), 1)])
def test_mesh_shape_splits_configurations_then_pads_the_paths(n_cfg, n_paths, shape, lanes):
    """Configurations split evenly, the other devices along the paths, whose count is padded to fill them."""
    assert sharding.mesh_shape(n_cfg, n_paths, 8) == shape
    from jax.sharding import Mesh

    b = shape[1]
    mesh = None if shape == (1, 1) else Mesh(np.asarray([object()] * (shape[0] * b)).reshape(shape), ("cfg", "paths"))
    assert sharding.padded_paths(n_paths, mesh) == lanes


def test_one_device_gives_no_mesh():
    import jax

    assert sharding.lane_mesh(4, 6, jax.devices()[:1]) is None


SLOW_SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    import slowsde_jax as S
    from slowsde_jax import noise, problems
    assert len(jax.devices()) == 4
    NET = problems.diagonal_net(d=4, n=3, k=1, key=0, n_test=10)
    FACT = problems.matrix_factorization(d1=3, d2=3, rank=1, n=5, key=0, model_rank=2)
    WIDE = problems.diagonal_net(d=20, n=10, k=2, key=0, n_test=10)
    ex = lambda p: S.Execution(devices=jax.devices(), paths_per_call=p, progress=False)
    # the label-noise ODE on a factorization (5 paths in groups of 2, 2, 1 on devices 0, 1, 2), projected
    # Euler-Maruyama on a diagonal net (7 paths in groups of 3, 3, 1), and groups larger than the CPU-safe
    # batch (39 for n = 10: each group maps over sub-groups inside its call)
    ode = S.simulate_slow_sde(FACT, noise.label_noise(0.5), S.adam(c=5.0, eps=1e-6), T=0.05, n_paths=5, key=2,
                              n_record=2, execution=ex(2))
    sde = S.simulate_slow_sde(NET, noise.label_noise(0.5), S.adam(c=5.0), T=0.01, n_paths=7, key=4, n_record=2,
                              integrator=S.ProjectedEulerMaruyama(dt=2.5e-3), execution=ex(3))
    wide = S.simulate_slow_sde(WIDE, noise.label_noise(0.5), S.adam(c=5.0, eps=1e-6), T=0.05, n_paths=92, key=1,
                               n_record=1, execution=ex(45))
    np.savez(sys.argv[1], **{f"{name}.{k}": x for name, tr in (("ode", ode), ("sde", sde), ("wide", wide))
                             for k, x in (("theta", tr.theta), ("v", tr.v), ("failed", tr.diverged_time))})
""")


@pytest.mark.slow
def test_slow_engine_groups_over_four_devices_equal_one_device_bit_for_bit(tmp_path):
    """The slow engine's groups of paths run on 4 host devices, one group per device (uneven groups): the
    label-noise ODE and projected Euler-Maruyama give the one-device numbers bit for bit, for the same
    ``paths_per_call``."""
    out = tmp_path / "slow.npz"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", SLOW_SCRIPT, str(out)], check=True, env=env, timeout=600)
    fact = problems.matrix_factorization(d1=3, d2=3, rank=1, n=5, key=0, model_rank=2)
    ex = lambda p: S.Execution(paths_per_call=p)
    ode = S.simulate_slow_sde(fact, noise.label_noise(0.5), S.adam(c=5.0, eps=1e-6), T=0.05, n_paths=5, key=2,
                              n_record=2, execution=ex(2))
    sde = S.simulate_slow_sde(NET, noise.label_noise(0.5), S.adam(c=5.0), T=0.01, n_paths=7, key=4, n_record=2,
                              integrator=S.ProjectedEulerMaruyama(dt=2.5e-3), execution=ex(3))
    wide_net = problems.diagonal_net(d=20, n=10, k=2, key=0, n_test=10)
    wide = S.simulate_slow_sde(wide_net, noise.label_noise(0.5), S.adam(c=5.0, eps=1e-6), T=0.05, n_paths=92, key=1,
                               n_record=1, execution=ex(45))
    with np.load(out) as f:
        for name, tr in (("ode", ode), ("sde", sde), ("wide", wide)):
            np.testing.assert_array_equal(f[f"{name}.theta"], tr.theta)
            np.testing.assert_array_equal(f[f"{name}.v"], tr.v)
            np.testing.assert_array_equal(f[f"{name}.failed"], tr.diverged_time)
            assert not np.array_equal(f[f"{name}.theta"][:, 0], f[f"{name}.theta"][:, -1])  # the paths moved


def test_run_groups_returns_every_group_in_order():
    """Groups assigned round robin over a device list (here one device listed three times: one thread), each
    group's result in its place."""
    import jax

    sizes = [3, 3, 1]
    out = sharding.run_groups(lambda i: (np.full(sizes[i], i), np.arange(sizes[i])), sizes,
                              (jax.ShapeDtypeStruct((), np.int64),) * 2, jax.devices()[:1] * 3)
    assert [o[0].tolist() for o in out] == [[0, 0, 0], [1, 1, 1], [2]]
    assert [o[1].tolist() for o in out] == [[0, 1, 2], [0, 1, 2], [0]]
