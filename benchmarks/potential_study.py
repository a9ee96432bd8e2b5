"""Is each method's label-noise slow flow a gradient flow? docs/experiments.md section 6.

At points of Γ of 3 x 3 depth-2 matrix sensing (6 Gaussian measurements of a rank-2 matrix, model rank 3;
D = 18, dim Γ = 12), ``slowsde_jax.potential.label_noise_closedness`` measures the asymmetry of the
Jacobian of the pulled-back 1-form S⁻¹F (F the ODE's ζ-drift at the v-equilibrium, in a chart of Γ):
rounding for a gradient flow, order one for a flow with a rotation. Shampoo's S is a full matrix
(its metric S⁻¹ too).

    python benchmarks/potential_study.py            (about 2 minutes on a laptop CPU)
"""
import time

import jax

import slowsde_jax as S
from slowsde_jax import noise, potential, problems

METHODS = {"sgd": S.sgd(), "adam": S.adam(c=10.0, eps=0.0), "adame(0.25)": S.adame(lam=0.25, c=10.0, eps=0.0),
           "adalayer": S.adalayer(c=10.0, eps=0.0), "adafactor": S.adafactor(c=10.0, eps=0.0),
           "shampoo": S.shampoo(c=10.0, eps=1e-8)}


def main():
    prob = problems.matrix_factorization(d1=3, d2=3, rank=2, n=6, key=0, measurement="gaussian")
    nz = noise.label_noise(0.5)
    print(f"{'point':>5}  " + "  ".join(f"{n:>12}" for n in METHODS))
    t0 = time.time()
    for seed in range(4):
        z = S.on_gamma(prob, prob.init(jax.random.PRNGKey(seed)) * 5)
        row = [potential.label_noise_closedness(prob, nz, m, z).asymmetry for m in METHODS.values()]
        print(f"{seed:>5}  " + "  ".join(f"{a:12.2e}" for a in row))
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
