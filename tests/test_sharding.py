"""Sharded runs (paths and sweep configurations over several devices) against single-device runs.

The several devices are host CPU devices (``--xla_force_host_platform_device_count=4``), which must be set
before jax starts: the sharded run goes in a subprocess, the single-device reference runs here.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import slowsde_jax as S
from slowsde_jax import noise, problems, sharding

NET = problems.diagonal_net(d=4, n=3, k=1, key=0, n_test=10)

# The discrete runs, built the same way here and in the four-device subprocess. Their shapes are those that
# a layout sharing one batch over the devices got wrong in the last bits: an odd number of paths left over
# per device (the d = 6 net), and a three-value sweep of a pytree MLP (its batched dots block differently
# for 3 x 2 lanes than for 3 x 6).
CASES = textwrap.dedent("""
    import jax, jax.numpy as jnp
    import slowsde_jax as S
    from slowsde_jax import noise, problems

    def cases():
        k = jax.random.split(jax.random.PRNGKey(0), 3)
        X = jax.random.normal(k[0], (12, 3))
        Y = jnp.sin(X[:, 0])
        p0 = {"W1": 0.5 * jax.random.normal(k[1], (3, 8)), "b1": jnp.zeros(8),
              "W2": 0.5 * jax.random.normal(k[2], (8,)), "b2": jnp.zeros(())}
        res = lambda p: jnp.tanh(X @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"] - Y
        mlp = problems.from_loss(lambda p: 0.5 * jnp.mean(res(p) ** 2), p0, residuals=res)
        net = problems.diagonal_net(d=6, n=4, k=2, key=0, n_test=10)
        return {  # name: (problem, method, arguments, paths_per_call)
            "net_sweep": (net, S.adam(c=5.0), dict(steps=2000, n_paths=9, key=3, n_record=3,
                                                   sweep={"eta": [0.05, 0.07]}), 4),  # groups 4, 4, 1
            "mlp_sweep": (mlp, S.adam(c=10.0), dict(steps=2000, n_paths=6, key=1, n_record=3,
                                                    sweep={"eta": [0.04, 0.05, 0.06]}), 2),  # 2, 2, 2
            "uneven": (net, S.adam(c=5.0), dict(steps=2000, eta=0.05, n_paths=7, key=3, n_record=3), 2),  # 2, 2, 2, 1
        }

    def run(name, **execution):
        problem, method, kw, per_call = cases()[name]
        out = S.simulate_discrete(problem, noise.label_noise(0.5), method, **kw, execution=S.Execution(
            block_steps=8, paths_per_call=per_call, **execution))
        return out if isinstance(out, list) else [out]
""")
exec(CASES)

SCRIPT = CASES + textwrap.dedent("""
    import shutil, sys
    import numpy as np
    assert len(jax.devices()) == 4
    devices = {}
    def seen(name):
        return lambda run: devices.setdefault(name, set()).update(
            d for st in run.groups if st is not None for d in st.theta.devices())
    out = {name: run(name, on_chunk=seen(name)) for name in cases()}
    # "uneven" interrupted after record 2 and resumed from its checkpoint, on the four devices; a copy of the
    # interrupted checkpoint is resumed on one device by the test
    ck = sys.argv[1] + ".ck.npz"
    def stop(run):
        if run.done == 3:
            raise KeyboardInterrupt
    try:
        run("uneven", checkpoint=ck, checkpoint_every_s=0, on_chunk=stop)
    except KeyboardInterrupt:
        pass
    shutil.copy(ck, sys.argv[1] + ".interrupted.npz")
    out["resumed"] = run("uneven", checkpoint=ck)
    np.savez(sys.argv[1], **{f"devices.{k}": len(v) for k, v in devices.items()},
             **{f"{name}.{i}.{k}": x for name, trs in out.items() for i, tr in enumerate(trs) for k, x in
                [("theta", tr.theta), ("v", tr.v), ("div", tr.diverged_step),
                 *[("obs." + o, x) for o, x in tr.observables.items()]]})
""")


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "out.npz"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", SCRIPT, str(out)], check=True, env=env, timeout=600)
    with np.load(out) as f:
        return dict(f, interrupted=str(out) + ".interrupted.npz")


def _assert_same(four, name, trajs):
    for i, tr in enumerate(trajs):
        np.testing.assert_array_equal(four[f"{name}.{i}.theta"], tr.theta)
        np.testing.assert_array_equal(four[f"{name}.{i}.v"], tr.v)
        np.testing.assert_array_equal(four[f"{name}.{i}.div"], tr.diverged_step)
        assert tr.observables
        for o, x in tr.observables.items():
            np.testing.assert_array_equal(four[f"{name}.{i}.obs.{o}"], x)
        assert not np.array_equal(tr.theta[:, 0], tr.theta[:, -1])  # the paths moved


@pytest.mark.slow
@pytest.mark.parametrize("name,n_devices", [("net_sweep", 3), ("mlp_sweep", 3), ("uneven", 4)])
def test_discrete_groups_over_four_devices_equal_one_device_bit_for_bit(four_devices, name, n_devices):
    """The discrete engine's groups of paths (every configuration of a sweep in each) on 4 host devices, group
    i on device i mod 4: every record equals the one-device run's bit for bit, for the same
    ``paths_per_call``, with a sweep and with uneven groups."""
    assert int(four_devices[f"devices.{name}"]) == n_devices  # the groups really ran on that many devices
    _assert_same(four_devices, name, run(name))


@pytest.mark.slow
def test_a_four_device_checkpoint_resumes_on_four_devices_and_on_one_bit_for_bit(four_devices, tmp_path):
    """7 paths in groups of 2, 2, 2, 1 interrupted on 4 devices after record 2: its checkpoint holds the whole
    state (7 paths) and resumes there and on one device with the uninterrupted run's numbers."""
    ck = tmp_path / "uneven.npz"
    ck.write_bytes(open(four_devices["interrupted"], "rb").read())
    with np.load(ck) as f:
        assert f["state.0"].shape[1] == 7 and int(f["done"]) == 2
    single = run("uneven")
    _assert_same(four_devices, "resumed", single)
    _assert_same(four_devices, "uneven", run("uneven", checkpoint=ck))


def test_group_sizes_cut_the_paths_the_last_group_shorter():
    assert sharding.group_sizes(7, 2) == [2, 2, 2, 1]
    assert sharding.group_sizes(1000, 1024) == [1000]
    assert sharding.group_sizes(2048, 1024) == [1024, 1024]
    assert sharding.group_sizes(1, 1) == [1]


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
