#!/usr/bin/env python3
"""Reference boundaries for coordinator/src/experiments/group_sequential.rs, computed independently
with scipy (not from Fifty's code, and not by its method): the probability of staying inside the
boundaries is the multivariate normal CDF of a rectangle (scipy's Genz integration), with
corr(Z_j, Z_k) = sqrt(I_j / I_k); each boundary is found with a root finder so that look k spends
alpha*(t_k) - alpha*(t_{k-1}) of the Lan-DeMets O'Brien-Fleming function, alpha / 2 a side. Run:

    python3 scripts/reference/group_sequential_reference.py > scripts/reference/group_sequential_reference.txt

and copy the values into the REF_* constants of group_sequential.rs's tests.
"""
import math

import numpy as np
import scipy
from scipy import optimize, stats

print(f"# scipy {scipy.__version__}, numpy {np.__version__}")


def spent(alpha, t):
    # Two-sided and symmetric, as ldbounds and gsDesign do it: each side spends alpha / 2 by
    # 2 - 2 Phi(z_{1 - (alpha/2)/2} / sqrt(t)).
    return 2 * (2 * stats.norm.sf(stats.norm.isf(alpha / 4) / math.sqrt(t)))


def inside(bounds, info):
    """P(|Z_j| < b_j for every j), the Z_j jointly normal with corr sqrt(I_i / I_j)."""
    k = len(bounds)
    if k == 1:
        return 1 - 2 * stats.norm.sf(bounds[0])
    cov = np.array([[math.sqrt(min(info[i], info[j]) / max(info[i], info[j])) for j in range(k)] for i in range(k)])
    b = np.array(bounds)
    mvn = stats.multivariate_normal(mean=np.zeros(k), cov=cov, maxpts=2_000_000 * k, abseps=1e-9, releps=1e-9)
    return float(mvn.cdf(b, lower_limit=-b))


def boundaries(alpha, times, info):
    out = []
    for k in range(len(times)):
        target = spent(alpha, times[k]) - (spent(alpha, times[k - 1]) if k else 0.0)
        if k == 0:
            out.append(float(stats.norm.isf(target / 2)))
            continue
        before = inside(out, info[:k])
        f = lambda b: (before - inside(out + [b], info[: k + 1])) - target
        out.append(float(optimize.brentq(f, 0.5, 12.0, xtol=1e-9)))
    return out


def show(name, values):
    print(f"const {name}: [f64; {len(values)}] = [{', '.join(f'{v:.7f}' for v in values)}];")


show("REF_K5", boundaries(0.05, [0.2, 0.4, 0.6, 0.8, 1.0], [0.2, 0.4, 0.6, 0.8, 1.0]))
show("REF_UNEQUAL", boundaries(0.05, [0.2, 0.45, 0.8, 1.0], [0.2, 0.45, 0.8, 1.0]))
show("REF_TIME_VS_INFO", boundaries(0.05, [1 / 3, 2 / 3, 1.0], [0.15, 0.6, 1.0]))
print(f"const REF_SPENT_02: f64 = {float(spent(0.05, 0.2))!r};")
