"""Both engines under ``jax.distributed``: several processes on this machine, each with CPU devices and gloo
collectives, started by the test, against the one-process run.

The discrete engine's lanes span every device of every process (``jax.devices()`` is global once
``jax.distributed.initialize`` has run); records are gathered onto every process. The slow engine runs its groups of paths on the devices of
every process and gathers them."""
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import slowsde_jax as S
from slowsde_jax import noise, problems

WORKER = textwrap.dedent("""
    import sys
    import jax
    from slowsde_jax import distributed
    pid, nproc, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    distributed.start(f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)  # as docs/howto/devices.md
    import numpy as np
    import slowsde_jax as S
    from slowsde_jax import noise, problems
    NET = problems.diagonal_net(d=4, n=3, k=1, key=0, n_test=10)
    FACT = problems.matrix_factorization(d1=3, d2=3, rank=1, n=5, key=0, model_rank=2)
    ex = S.Execution(block_steps=8, paths_per_call=2, progress=False)  # groups of 2, 2, 1 paths
    disc = S.simulate_discrete(NET, noise.label_noise(0.5), S.adam(c=5.0), T=0.2, n_paths=5, key=3, n_record=3,
                               sweep={"eta": [0.05, 0.07]}, execution=ex)
    ode = S.simulate_slow_sde(FACT, noise.label_noise(0.5), S.adam(c=5.0, eps=1e-6), T=0.05, n_paths=5, key=2,
                              n_record=2, execution=S.Execution(paths_per_call=2, progress=False))
    sde = S.simulate_slow_sde(NET, noise.label_noise(0.5), S.adam(c=5.0), T=0.01, n_paths=7, key=4, n_record=2,
                              integrator=S.ProjectedEulerMaruyama(dt=2.5e-3),
                              execution=S.Execution(paths_per_call=3, progress=False))
    np.savez(f"{out}.{pid}.npz", devices=len(jax.devices()), processes=jax.process_count(),
             **{f"disc{i}.{k}": getattr(t, k) for i, t in enumerate(disc) for k in ("theta", "v")},
             ode=ode.theta, sde=sde.theta)
    distributed.finished()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path, n_proc, devices_each):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each}", JAX_PLATFORMS="cpu")
    port, out = str(_free_port()), str(tmp_path / "out")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), str(n_proc), port, out], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(n_proc)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=400)[0].decode(errors="replace"))
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    return [dict(np.load(f"{out}.{i}.npz")) for i in range(n_proc)]


@pytest.fixture(scope="module")
def single():
    NET = problems.diagonal_net(d=4, n=3, k=1, key=0, n_test=10)
    FACT = problems.matrix_factorization(d1=3, d2=3, rank=1, n=5, key=0, model_rank=2)
    disc = S.simulate_discrete(NET, noise.label_noise(0.5), S.adam(c=5.0), T=0.2, n_paths=5, key=3, n_record=3,
                               sweep={"eta": [0.05, 0.07]}, execution=S.Execution(block_steps=8, paths_per_call=2))
    ode = S.simulate_slow_sde(FACT, noise.label_noise(0.5), S.adam(c=5.0, eps=1e-6), T=0.05, n_paths=5, key=2,
                              n_record=2, execution=S.Execution(paths_per_call=2))
    sde = S.simulate_slow_sde(NET, noise.label_noise(0.5), S.adam(c=5.0), T=0.01, n_paths=7, key=4, n_record=2,
                              integrator=S.ProjectedEulerMaruyama(dt=2.5e-3), execution=S.Execution(paths_per_call=3))
    return disc, ode, sde


@pytest.mark.slow
@pytest.mark.parametrize("n_proc,devices_each", [(2, 2), (4, 1)], ids=["2x2", "4x1"])
def test_several_processes_give_the_one_process_numbers(tmp_path, single, n_proc, devices_each):
    """A sweep of 2 step sizes x 5 paths in the discrete engine (groups of 2, 2, 1 paths, both step sizes in
    each), and the slow engine's label-noise ODE (groups of 2, 2, 1 paths) and projected Euler-Maruyama
    (3, 3, 1): bit for bit in every process."""
    disc, ode, sde = single
    outs = _launch(tmp_path, n_proc, devices_each)
    for out in outs:
        assert int(out["devices"]) == 4 and int(out["processes"]) == n_proc
        for i, tr in enumerate(disc):
            np.testing.assert_array_equal(out[f"disc{i}.theta"], tr.theta)
            np.testing.assert_array_equal(out[f"disc{i}.v"], tr.v)
        np.testing.assert_array_equal(out["ode"], ode.theta)
        np.testing.assert_array_equal(out["sde"], sde.theta)


@pytest.mark.parametrize("flags,field", [
    (["--coordinator", "127.0.0.1:1"], "--num-processes"),
    (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "--coordinator"),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "0", "--process-id", "0"], "--num-processes"),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"], "--process-id"),
    (["--lost-after", "5"], "--lost-after"),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "0", "--lost-after", "0"], "--lost-after"),
    (["--distributed", "--lost-after", "nan"], "--lost-after"),
])
def test_distributed_flags_are_checked_before_any_work(flags, field, tmp_path, capsys):
    from slowsde_jax import cli

    assert cli.main(["run", "--out", str(tmp_path), "--quiet", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"slowsde: error: {field}:") and err.count("\n") == 0, err
    assert not any(tmp_path.iterdir())


def test_distributed_outside_a_cluster_is_one_line(tmp_path):
    """``--distributed`` where no cluster environment says who is who: exit 2 with one line naming the flag
    (in a fresh process: jax.distributed may start only once per process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "OMPI", "PMI"))}
    p = subprocess.run([sys.executable, "-m", "slowsde_jax", "run", "--out", str(tmp_path), "--quiet", "--distributed"],
                       env=env, capture_output=True, text=True, timeout=120)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert err[-1].startswith("slowsde: error: --distributed: jax.distributed could not start"), p.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_the_cli_under_two_processes_writes_one_run_folder_with_the_one_process_numbers(tmp_path):
    """``slowsde run`` in two processes (two CPU devices each) with the distributed flags: both exit 0, process
    0 alone makes the run folder and prints, and its trajectories equal a one-process run's bit for bit
    (``paths_per_call: 2``: 5 paths in groups of 2, 2, 1 over the 4 devices)."""
    import yaml

    from slowsde_jax import cli, config, load_run

    cfg = config.load_config(None)
    cfg["problem"].update(d=6, n=4, k=2, n_test=50)
    cfg.update(n_paths=5, n_record=2, slow_flow=False, paths_per_call=2)
    cfg.pop("T", None)
    cfg["steps"] = 400
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-m", "slowsde_jax", "run", str(path), "--out", str(tmp_path / "multi"),
                               "--quiet", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                               "--process-id", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1].decode()[-2000:] for o in outs]
    said = ["\n".join(line for line in o[0].decode().splitlines() if not line.startswith("[Gloo]")) for o in outs]
    assert "run folder:" in said[0] and said[1].strip() == "", said  # gloo's own lines aside
    (folder,) = list((tmp_path / "multi").iterdir())
    assert cli.main(["run", str(path), "--out", str(tmp_path / "one"), "--quiet"]) == 0
    (one,) = list((tmp_path / "one").iterdir())
    multi_trajs, summary = load_run(folder)
    one_trajs, _ = load_run(one)
    assert summary["status"] == "completed" and not (folder / "checkpoints").exists()
    for name in one_trajs:
        a = multi_trajs[name] if isinstance(multi_trajs[name], list) else [multi_trajs[name]]
        b = one_trajs[name] if isinstance(one_trajs[name], list) else [one_trajs[name]]
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.theta, y.theta)
            assert (x.v is None) == (y.v is None)
            if y.v is not None:
                np.testing.assert_array_equal(x.v, y.v)


def _small_job(tmp_path, steps, n_paths):
    import yaml

    from slowsde_jax import config

    cfg = config.load_config(None)
    cfg["problem"].update(d=6, n=4, k=2, n_test=50)
    cfg.update(n_paths=n_paths, n_record=20, slow_flow=False, steps=steps, checkpoint_every_s=0,
               paths_per_call=n_paths // 4)  # a group per device
    cfg.pop("T", None)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _start_cli(args, n_proc, devices_each, extra=()):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each}", JAX_PLATFORMS="cpu")
    port = str(_free_port())
    return [subprocess.Popen([sys.executable, "-m", "slowsde_jax", "run", *args, "--quiet", "--coordinator",
                              f"127.0.0.1:{port}", "--num-processes", str(n_proc), "--process-id", str(i), *extra],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(n_proc)]


@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 0], ids=["worker", "coordinator"])
def test_a_killed_process_stops_the_job_with_one_line_and_it_resumes_on_another_process_count(tmp_path, killed):
    """Two processes (two CPU devices each) run a job; once it has written a checkpoint one of them is killed
    with SIGKILL. When it is process 1, the other stops with exit status 3 and one line that names the loss
    and the --resume command, instead of waiting 100 s and aborting with a stack trace. When it is process 0,
    which hosts the coordinator, the other stops at once: with that line, or with the runtime's own fatal
    error (not ours to catch). Either way the folder then resumes in one process on one device and ends with
    the numbers of an uninterrupted run, bit for bit."""
    import signal
    import time

    from slowsde_jax import load_run

    job = _small_job(tmp_path, steps=40_000, n_paths=32)  # 8 paths per device
    procs = _start_cli([str(job), "--out", str(tmp_path / "runs")], 2, 2, ["--lost-after", "10"])
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list((tmp_path / "runs").glob("*/checkpoints/adam.npz")):
            assert all(p.poll() is None for p in procs), [p.communicate()[1].decode()[-2000:] for p in procs]
            time.sleep(0.2)
        (folder,) = list((tmp_path / "runs").iterdir())
        assert (folder / "checkpoints" / "adam.npz").exists(), "no checkpoint within 300 s"
        procs[killed].send_signal(signal.SIGKILL)
        survivor = procs[1 - killed]
        _, err = survivor.communicate(timeout=120)
    finally:
        for p in procs:
            p.kill()
    text = err.decode()
    lines = [line for line in text.splitlines() if line.strip()]
    if killed == 1 or survivor.returncode == 3:  # our line: the watchdog, or a collective that lost its peer
        assert survivor.returncode == 3 and lines, text[-3000:]
        assert len(lines) == 1 or killed == 0, text[-3000:]  # (the runtime may log the coordinator's loss first)
        assert lines[-1].startswith("slowsde: error: process ") and "lost" in lines[-1], text[-3000:]
        assert f"slowsde run --resume {folder}" in lines[-1]
    else:  # process 0 hosted the coordination service: the runtime ends the others itself (distributed.py)
        assert survivor.returncode in (-6, 134) and "detected fatal errors" in text, text[-3000:]
    assert not (folder / "summary.json").exists() or "completed" not in (folder / "summary.json").read_text()

    from slowsde_jax import cli

    assert cli.main(["run", "--resume", str(folder), "--quiet"]) == 0
    assert cli.main(["run", str(job), "--out", str(tmp_path / "one"), "--quiet"]) == 0
    (one,) = list((tmp_path / "one").iterdir())
    resumed, summary = load_run(folder)
    straight, _ = load_run(one)
    assert summary["status"] == "completed"
    for name in straight:
        np.testing.assert_array_equal(resumed[name].theta, straight[name].theta)
        np.testing.assert_array_equal(resumed[name].v, straight[name].v)


class _FakeStore:
    """The coordination service's key-value store as ``distributed._watch`` uses it; process 1 beats
    ``beats`` times, then goes silent (or says "done")."""

    def __init__(self, beats, then="silent", fail=False):
        self.kv, self.beats, self.then, self.fail = {}, beats, then, fail

    def key_value_set(self, key, value, allow_overwrite=False):
        if self.fail:
            raise RuntimeError("UNAVAILABLE: Socket closed")
        self.kv[key] = value
        if self.beats > 0:
            self.beats -= 1
            self.kv["slowsde_jax/alive/1"] = str(self.beats)
        elif self.then == "done":
            self.kv["slowsde_jax/alive/1"] = "done"

    def key_value_dir_get(self, prefix):
        return [(k, v) for k, v in self.kv.items() if k.startswith(prefix)]


@pytest.mark.parametrize("store,lost", [
    (_FakeStore(beats=3), "process 1 of 2 gave no sign of life"),
    (_FakeStore(beats=3, then="done"), None),
    (_FakeStore(beats=0, fail=True), "process 1 of 2 lost the coordinator, process 0"),
], ids=["silent", "done", "coordinator-gone"])
def test_the_watchdog_names_a_silent_process_and_not_a_finished_one(store, lost, monkeypatch):
    """``distributed._watch`` (the thread ``watch`` starts): a process whose sign of life stops changing is
    reported once, with the resume hint; one that said "done" never is; a store that stops answering is the
    coordinator's loss (seen from process 1)."""
    import threading

    from slowsde_jax import distributed

    monkeypatch.setattr(distributed, "_BEAT_S", 0.01)
    distributed.note_resume("slowsde run --resume runs/x")
    said = []
    me = 1 if store.fail else 0
    stop = threading.Event()
    t = threading.Thread(target=distributed._watch, args=(store, me, 2, 0.2, said.append, stop), daemon=True)
    t.start()
    t.join(2.0 if lost is None else 10.0)
    distributed.note_resume(None)
    if lost is None:
        assert t.is_alive() and not said  # still watching, nothing reported
        stop.set()
        t.join(1.0)
        assert not t.is_alive()
        return
    assert not t.is_alive() and len(said) == 1 and said[0].startswith(lost), said
    assert said[0].endswith("Restart every process with: slowsde run --resume runs/x")


def test_a_lost_peer_is_read_only_under_several_processes():
    from slowsde_jax import distributed

    assert distributed.lost_process_message(RuntimeError("Gloo all-reduce failed: Connection closed by peer")) is None
