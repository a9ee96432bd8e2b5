"""Golden numbers: reference runs of both engines, saved so that a refactor can be checked bit for bit.

    python benchmarks/golden_numbers.py before.npz        # before the change
    python benchmarks/golden_numbers.py after.npz         # after it
    python benchmarks/golden_numbers.py --compare before.npz after.npz

Both engines, every method (adam, adam_mini, adalayer, adame, rmsprop, sgd), label, Gaussian and minibatch
noise, a 2 x 2 sweep, the diagonal net's log-coordinate ODE, the factorization's floored ODE, Richardson and a
checkpointed run: 216 arrays, about a minute on a 2-core CPU. Used for the engine-options refactor (0 of 216
differed).
"""
import sys
import tempfile
from pathlib import Path

import numpy as np

import slowsde_jax as S
from slowsde_jax import noise, problems

if sys.argv[1] == "--compare":
    a, b = np.load(sys.argv[2]), np.load(sys.argv[3])
    differ = [k for k in a.files if k not in b.files or a[k].shape != b[k].shape
              or not np.array_equal(a[k], b[k], equal_nan=True)]
    print(f"{len(a.files)} arrays, {len(differ)} differ" + (f": {differ[:10]}" if differ else ""))
    sys.exit(1 if differ or set(a.files) != set(b.files) else 0)
out = sys.argv[1]
HYP = problems.hyperbola()
DN = problems.diagonal_net(d=5, n=3, k=1, n_test=20)
MF = problems.matrix_factorization(d1=3, d2=3, rank=1, n=5, model_rank=2)
LAB, GAU, MB = noise.label_noise(0.5), noise.gaussian([0.49, 0.09]), noise.minibatch(1)
METHODS = {"adam": S.adam(), "adam_mini": S.adam_mini([0, 1]), "adalayer": S.adalayer(), "adame": S.adame(lam=0.3),
           "rmsprop": S.rmsprop(), "sgd": S.sgd(momentum=0.5)}
res = {}


def keep(name, traj):
    trajs = traj if isinstance(traj, list) else [traj]
    for i, t in enumerate(trajs):
        for k, v in t.to_arrays().items():
            if k != "meta":
                res[f"{name}/{i}/{k}"] = np.asarray(v)


def disc(prob, nz, m, **kw):
    kw.setdefault("n_record", 4)
    return S.simulate_discrete(prob, nz, m, execution=S.Execution(progress=False), **kw)


def slow(prob, nz, m, T, **kw):
    kw.setdefault("n_record", 4)
    new = {}
    if "dt" in kw or "richardson" in kw:
        new["integrator"] = S.ProjectedEulerMaruyama(dt=kw.pop("dt", 1e-3), richardson=kw.pop("richardson", False))
    ex = {"progress": False}
    for k in ("checkpoint", "records_per_call", "paths_per_call"):
        if k in kw:
            ex[k] = kw.pop(k)
    return S.simulate_slow_sde(prob, nz, m, T, execution=S.Execution(**ex), **new, **kw)


for name, m in METHODS.items():
    keep(f"disc_lab_{name}", disc(HYP, LAB, m, eta=0.05, steps=100, n_paths=3, key=1))
    keep(f"ode_{name}", slow(HYP, LAB, m, 0.2))
keep("disc_gauss", disc(HYP, GAU, S.adam(), eta=0.05, T=0.2, n_paths=3))
keep("disc_mb", disc(DN, MB, S.adam(), eta=0.05, steps=50, n_paths=2))
keep("disc_sweep", disc(HYP, LAB, S.adame(lam=0.3), eta=0.05, T=0.1, n_paths=2, sweep={"eta": [0.05, 0.1], "lam": [0.25, 0.5]}))
keep("ode_dn", slow(DN, LAB, S.adam(eps=1e-6), 0.2))
keep("ode_mf", slow(MF, LAB, S.adam(), 0.1))
keep("sde_gauss", slow(HYP, GAU, S.adam(), 0.1, n_paths=4, dt=0.01))
keep("sde_rich", slow(HYP, GAU, S.adam(), 0.1, n_paths=4, dt=0.01, richardson=True))
with tempfile.TemporaryDirectory() as tmp:
    keep("sde_ckpt", slow(HYP, GAU, S.adam(), 0.1, n_paths=2, dt=0.01, checkpoint=Path(tmp) / "s.npz"))
np.savez(out, **res)
print(len(res), "arrays")
