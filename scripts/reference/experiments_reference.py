#!/usr/bin/env python3
"""Reference values for coordinator/src/experiments/analysis.rs, computed independently with scipy
and numpy (not from Fifty's code). Run:

    python3 scripts/reference/experiments_reference.py > scripts/reference/experiments_reference.txt

and copy the values into the REF_* constants of analysis.rs's tests.
"""
import math

import numpy as np
import scipy
from scipy import stats

print(f"# scipy {scipy.__version__}, numpy {np.__version__}")

# Sample-ratio mismatch: chi-square goodness of fit against the configured weights.
r = stats.chisquare([5200, 4800], [5000, 5000])
print(f"REF_SRM_2_CHI2 = {float(r.statistic)!r}\nREF_SRM_2_P = {float(r.pvalue)!r}")
r = stats.chisquare([2050, 2950, 5000], [2000, 3000, 5000])
print(f"REF_SRM_3_CHI2 = {float(r.statistic)!r}\nREF_SRM_3_P = {float(r.pvalue)!r}")
# Two periods (a ramp): statistics and degrees of freedom add up.
print(f"REF_SRM_SUM_P = {float(stats.chi2.sf(16.0 + float(r.statistic), 1 + 2))!r}")
# Far in the tail, where 1 - cdf rounds to 0.
print(f"REF_SRM_FAR_P = {float(stats.chisquare([5600, 4400], [5000, 5000]).pvalue)!r}")
print(f"REF_SRM_FARTHER_P = {float(stats.chisquare([6000, 4000], [5000, 5000]).pvalue)!r}")
r = stats.ttest_ind_from_stats(2.0, 1.0, 100, 0.0, 1.0, 100, equal_var=False)
print(f"REF_WELCH_FAR_P = {float(r.pvalue)!r}")

# Welch's t-test from summary statistics.
r = stats.ttest_ind_from_stats(10.5, math.sqrt(9), 400, 10.0, math.sqrt(16), 500, equal_var=False)
a, b = 9 / 400, 16 / 500
df = (a + b) ** 2 / (a * a / 399 + b * b / 499)
print(f"REF_WELCH_T = {float(r.statistic)!r}\nREF_WELCH_P = {float(r.pvalue)!r}\nREF_WELCH_DF = {df!r}")

# mSPRT (Johari et al. 2017), normal mixture N(0, tau^2) on the difference of proportions:
# the p-value is 1/Lambda and the confidence sequence is the set of theta with Lambda(theta) < 1/alpha,
# found here numerically with scipy's root finder rather than from the closed form Fifty uses.
nc, cc, nv, cv, phi, alpha = 10000, 1000, 10000, 1100, 0.05, 0.05
pc, pv = cc / nc, cv / nv
V = pc * (1 - pc) / nc + pv * (1 - pv) / nv
pooled = (cc + cv) / (nc + nv)
tau2 = phi**2 * pooled * (1 - pooled)
d = pv - pc


def lam(theta):
    # Mixture likelihood ratio: integral of N(d; theta + delta, V) N(delta; 0, tau2) d delta over
    # N(d; theta, V), by numerical integration.
    from scipy import integrate

    base = stats.norm.logpdf(d, theta, math.sqrt(V))
    f = lambda delta: math.exp(
        stats.norm.logpdf(d, theta + delta, math.sqrt(V)) - base + stats.norm.logpdf(delta, 0, math.sqrt(tau2))
    )
    s = math.sqrt(tau2)
    num, _ = integrate.quad(f, -12 * s, 12 * s, limit=200)
    return num


print(f"REF_MSPRT_P = {float(min(1.0, 1.0 / lam(0.0)))!r}")
from scipy import optimize

g = lambda theta: math.log(lam(theta)) - math.log(1 / alpha)
lo = optimize.brentq(g, d - 0.05, d)
hi = optimize.brentq(g, d, d + 0.05)
print(f"REF_CS_LO = {lo!r}\nREF_CS_HI = {hi!r}")
