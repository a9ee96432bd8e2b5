"""Records streamed to a folder (``record_to``): the same numbers as records kept in memory, read back from
disk, and a resumed streamed run bit-identical to an uninterrupted one."""
import numpy as np
import pytest

import slowsde_jax as S
from slowsde_jax import discrete, noise, problems
from slowsde_jax.streaming import RecordStream

# the shapes of tests/test_discrete.py's fast-path runs, so the compiled kernel is shared
NET = problems.diagonal_net(d=4, n=3, k=1, key=0, n_test=10)
KW = dict(steps=60, n_paths=6, key=6, n_record=5, sweep={"eta": [0.05, 0.07]})
ADAM = S.adam(c=5.0)


@pytest.fixture(scope="module")
def in_memory():
    return S.simulate_discrete(NET, noise.label_noise(0.5), ADAM, **KW, execution=S.Execution(block_steps=8))


def assert_same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.theta, y.theta)
        np.testing.assert_array_equal(x.v, y.v)
        np.testing.assert_array_equal(x.t, y.t)
        np.testing.assert_array_equal(x.diverged_step, y.diverged_step)
        assert x.observables.keys() == y.observables.keys()
        for k in x.observables:
            np.testing.assert_array_equal(x.observables[k], y.observables[k])


def test_streamed_records_equal_the_in_memory_ones_and_live_on_disk(in_memory, tmp_path):
    streamed = S.simulate_discrete(NET, noise.label_noise(0.5), ADAM, **KW, recording=S.Recording(record_to=tmp_path / "rec"),
                                 execution=S.Execution(block_steps=8))
    assert_same(in_memory, streamed)
    assert isinstance(streamed[0].theta.base, np.memmap) or isinstance(streamed[0].theta, np.memmap)
    on_disk = np.load(tmp_path / "rec" / "theta.npy")
    assert on_disk.shape == (6, 2, 6, 8)  # (n_t, n_cfg, n_paths, D)
    np.testing.assert_array_equal(on_disk[:, 1], np.moveaxis(in_memory[1].theta, 1, 0))


def test_resumed_streamed_run_is_bit_identical(in_memory, tmp_path):
    class Stop(Exception):
        pass

    def stop(run):
        if run.done == 4:
            raise Stop

    ck, rec = tmp_path / "ck.npz", tmp_path / "rec"
    with pytest.raises(Stop):
        S.simulate_discrete(NET, noise.label_noise(0.5), ADAM, **KW, recording=S.Recording(record_to=rec), execution=S.Execution(block_steps=8, checkpoint=ck, checkpoint_every_s=0,
                                                                  on_chunk=stop))
    with np.load(ck) as f:  # saved at point 3 (the hook stopped point 4 first): the state, not the records
        assert int(f["done"]) == 3 and not any(k.startswith("rec.") for k in f)
    resumed = S.simulate_discrete(NET, noise.label_noise(0.5), ADAM, **KW, recording=S.Recording(record_to=rec),
                                  execution=S.Execution(block_steps=8, checkpoint=ck))
    assert_same(in_memory, resumed)


def test_record_stream_writes_each_record_at_its_offset(tmp_path):
    s = RecordStream(tmp_path, n_t=3)
    for j in (2, 0, 1):
        s.write(j, "x", np.full((2, 2), float(j)))
    np.testing.assert_array_equal(s.read("x"), np.arange(3.0)[:, None, None] * np.ones((3, 2, 2)))
    again = RecordStream(tmp_path, n_t=3, fresh=False)  # a resumed run keeps the records on disk
    again.write(1, "x", np.full((2, 2), 7.0))
    assert again.read("x")[:, 0, 0].tolist() == [0.0, 7.0, 2.0]
    assert RecordStream(tmp_path, n_t=3).names() == []  # a fresh run starts empty
