#!/usr/bin/env python3
"""Reference boundaries for coordinator/src/experiments/group_sequential.rs, computed independently
with scipy (not from Fifty's code, and not by its method): the probability of staying inside the
boundaries is the multivariate normal CDF of a rectangle (scipy's Genz integration), with
corr(Z_j, Z_k) = sqrt(I_j / I_k); each boundary is found with a root finder so that look k spends
alpha*(t_k) - alpha*(t_{k-1}) of the Lan-DeMets O'Brien-Fleming function, alpha / 2 a side. Run:

    python3 scripts/reference/group_sequential_reference.py > scripts/reference/group_sequential_reference.txt
    python3 scripts/reference/group_sequential_reference.py k14   # only the fourteen looks

and copy the values into the REF_* constants of group_sequential.rs's tests.

Fourteen looks are too many dimensions for the multivariate normal CDF to reach 1e-7 in reasonable
time, so REF_K14 comes from a second method written here from the textbook, not from Fifty's code:
the Armitage-McPherson-Rowe recursion on a uniform Simpson grid of step 0.002 (Fifty uses Jennison
and Turnbull's uneven grid), each boundary by brentq; it reproduces REF_K5 to 1e-8. Then a Monte
Carlo check that needs no integration at all: 20 million Gaussian paths through the fourteen
boundaries cross with probability alpha.
"""
import math
import sys

import numpy as np
import scipy
from scipy import optimize, special, stats

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


# `... group_sequential_reference.py k14` prints only the fourteen-look part (the multivariate
# normal part takes several minutes on a busy machine).
if sys.argv[1:] != ["k14"]:
    show("REF_K5", boundaries(0.05, [0.2, 0.4, 0.6, 0.8, 1.0], [0.2, 0.4, 0.6, 0.8, 1.0]))
    show("REF_UNEQUAL", boundaries(0.05, [0.2, 0.45, 0.8, 1.0], [0.2, 0.45, 0.8, 1.0]))
    show("REF_TIME_VS_INFO", boundaries(0.05, [1 / 3, 2 / 3, 1.0], [0.15, 0.6, 1.0]))
    print(f"const REF_SPENT_02: f64 = {float(spent(0.05, 0.2))!r};")


def simpson_grid(b, h):
    m = max(2, int(math.ceil(2 * b / h / 2)) * 2)  # an even number of intervals over [-b, b]
    x = np.linspace(-b, b, m + 1)
    w = np.ones(m + 1)
    w[1:-1:2] = 4
    w[2:-1:2] = 2
    return x, w * (2 * b / m) / 3


def phi(x):
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def boundaries_recursion(alpha, times, info, h=0.002):
    """None where a look's spend is at most 1e-15 (Fifty's rule: such a look spends nothing)."""
    out, so_far, state = [], 0.0, None
    for t, i in zip(times, info):
        target = spent(alpha, t) - so_far
        if target <= 1e-15:
            out.append(None)
            continue
        if state is None:
            b = float(stats.norm.isf(target / 2))
            x, w = simpson_grid(b, h)
            state = (i, x, w * phi(x))
        else:
            i0, x0, g0 = state
            c, s = math.sqrt(i0 / i), math.sqrt(1 - i0 / i)

            def cross(b):
                return float(np.sum(g0 * (special.ndtr((-b - c * x0) / s) + special.ndtr((-b + c * x0) / s))))

            b = optimize.brentq(lambda b: cross(b) / target - 1, 0.5, 12.0, xtol=1e-12)
            x, w = simpson_grid(b, h)
            g = (phi((x[:, None] - c * x0[None, :]) / s) / s) @ g0
            state = (i, x, w * g)
        so_far += target
        out.append(float(b))
    return out


k5 = boundaries_recursion(0.05, [0.2, 0.4, 0.6, 0.8, 1.0], [0.2, 0.4, 0.6, 0.8, 1.0])
print(f"# the uniform-grid recursion on REF_K5: {', '.join(f'{v:.9f}' for v in k5)}")
k14 = boundaries_recursion(0.05, [k / 14 for k in range(1, 15)], [k / 14 for k in range(1, 15)])
print("# fourteen equal looks; the first spends 1e-16 of alpha, so nothing (no boundary)")
show("REF_K14", k14[1:])

rng = np.random.default_rng(20261207)
paths, crossed = 0, 0
b = np.array([np.inf] + k14[1:])
for _ in range(40):
    steps = rng.standard_normal((500_000, 14)) * math.sqrt(1 / 14)
    z = np.cumsum(steps, axis=1) / np.sqrt(np.arange(1, 15) / 14)
    crossed += int(np.any(np.abs(z) >= b, axis=1).sum())
    paths += 500_000
p = crossed / paths
half = 1.959963984540054 * math.sqrt(p * (1 - p) / paths)
print(f"# Monte Carlo: {crossed} of {paths} Gaussian paths cross the REF_K14 boundaries: {p:.5f} (+-{half:.5f})")
