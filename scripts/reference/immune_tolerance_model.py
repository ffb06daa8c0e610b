#!/usr/bin/env python3
"""Why the 20 req/s 4 + 2 fleet passed a regression at the tolerance more often than promised.

Run: python3 scripts/reference/immune_tolerance_model.py   (numpy and scipy; about two minutes)

An independent model of the error-rate monitor's pass side (coordinator/src/immune/analysis.rs),
written from the module doc, not from the Rust: every host's errors over 2 s looks (Poisson with a
Gamma burst per host-interval, CV 0.3; traffic CV 0.1), judged against its own past 30 minutes
(y = ln((n + 1/2)/d) - ln((n_past + 1/2)/d_past), variance 1/(n + 1/2) + 1/(n_past + 1/2)), the
canary hosts' mean change minus the baseline hosts', the spread of changes at least 5 %
(DerSimonian-Laird above it, Satterthwaite degrees of freedom); the early pass when the
always-valid one-scale mixture against ln 1.5 reaches 20 (beta/2), checked from the end of the
60 s bake while the current look's change is under min_effect (+20 %); at 300 s the end look at
the END_LEVELS level, Student's t on its degrees of freedom. A regression of exactly +50 % on
every canary host. The revert side is left out (it only removes waves).

The fleet's drift and traffic swing are fleet-wide and cancel in the difference of changes, so
they are left out too.

"kept empty look": the code before the fix, where a look that counted no event on either side
(the first with >= 100 requests a side) had a zero-noise bound and kept an infinite pass
evidence. "fixed": that look's evidence not kept.
"""

import math

import numpy as np
from scipy import special, stats

# analysis::END_LEVELS (scripts/reference/immune_reference.py computes and checks them).
END_LEVELS = [(0.5, 0.099), (1, 0.099), (2, 0.099), (3, 0.098), (4, 0.097), (5, 0.096), (6, 0.095),
              (8, 0.093), (10, 0.092), (12, 0.090), (14, 0.089), (17, 0.087), (20, 0.086), (25, 0.084),
              (30, 0.082), (40, 0.080), (50, 0.078), (70, 0.075), (100, 0.073), (150, 0.070),
              (200, 0.069), (300, 0.067), (500, 0.066)]
THETA = math.log(1.5)
LN_EARLY = math.log(20.0)


def table_level(r):
    return next((lvl for rr, lvl in END_LEVELS if rr >= r), 0.05)


def ln_mixture(z, r):
    """One-sided normal mixture, prior variance ratio r (the closed form; checked by quadrature in
    immune_reference.py)."""
    s = r / (1 + r)
    return math.log(2) - 0.5 * np.log1p(r) + 0.5 * z * z * s + special.log_ndtr(z * np.sqrt(s))


def t_sf(t, df):
    finite = np.isfinite(df)
    out = stats.norm.sf(t)
    return np.where(finite, stats.t.sf(t, np.where(finite, df, 1.0)), out)


def contrast(n, den, past, past_den, canaries, floor=0.05):
    y = np.log((n + 0.5) / den) - np.log((past + 0.5) / past_den)
    v = 1 / (n + 0.5) + 1 / (past + 0.5)
    sides = [(y[:, :canaries], v[:, :canaries]), (y[:, canaries:], v[:, canaries:])]
    excess, df = 0.0, 0
    for ys, vs in sides:
        k = ys.shape[1]
        if k >= 2:
            excess = excess + ((ys - ys.mean(1, keepdims=True)) ** 2).sum(1) - vs.sum(1) * (1 - 1 / k)
            df += k - 1
    estimate = np.maximum(excess / df, 0.0)
    at_floor = estimate <= floor * floor
    tau2 = np.where(at_floor, floor * floor, estimate)
    with np.errstate(divide="ignore", invalid="ignore"):
        spread_df = np.where(at_floor, np.inf, df * (estimate / (estimate - floor * floor)) ** 2)
        spread = tau2 * sum(1 / s[0].shape[1] for s in sides)
        total = spread + sum(vs.sum(1) / vs.shape[1] ** 2 for _, vs in sides)
        t_df = np.where(at_floor, np.inf, total**2 / (spread**2 / spread_df))
    delta = sides[0][0].mean(1) - sides[1][0].mean(1)
    return delta, np.sqrt(total), t_df


def tolerance_pass_share(rps, canaries, baselines, keep_empty, level=table_level, waves=20_000, seed=16,
                         rate=0.005, bake=60, max_bake=300, history=1800, interval=2, burst_cv=0.3,
                         traffic_cv=0.1, factor=1.5):
    rng = np.random.default_rng(seed)
    hosts = canaries + baselines
    traffic = rng.gamma(1 / traffic_cv**2, traffic_cv**2, (waves, hosts))
    past_den = traffic * rps * history
    past_intervals = history / interval
    past = rng.poisson(past_den * rate * rng.gamma(past_intervals / burst_cv**2, burst_cv**2 / past_intervals,
                                                   (waves, hosts)))
    effect = np.r_[np.full(canaries, factor), np.ones(baselines)]
    n = np.zeros((waves, hosts))
    den = np.zeros((waves, hosts))
    best = np.full(waves, -np.inf)
    early = np.zeros(waves, bool)
    empty = np.zeros(waves, bool)
    for k in range(int(max_bake / interval)):
        requests = traffic * rps * interval
        n += rng.poisson(requests * rate * rng.gamma(1 / burst_cv**2, burst_cv**2, (waves, hosts)) * effect)
        den += requests
        delta, sd, t_df = contrast(n, den, past, past_den, canaries)
        z = np.clip(stats.norm.isf(t_sf((THETA - delta) / sd, t_df)), -37, 37)
        evidence = ln_mixture(z, np.minimum((THETA / sd) ** 2, 1e12))
        enough = (den[:, :canaries].sum(1) >= 100) & (den[:, canaries:].sum(1) >= 100)
        evidence = np.where(enough, evidence, -np.inf)
        nothing = enough & (n.sum(1) == 0)
        empty |= nothing
        if keep_empty:
            evidence = np.where(nothing, np.inf, evidence)
        best = np.maximum(best, evidence)
        if (k + 1) * interval >= bake:
            early |= (best >= LN_EARLY) & (np.expm1(delta) < 0.2)
    r = (THETA / sd) ** 2
    levels = np.array([level(x) for x in r])
    quantile = np.where(np.isfinite(t_df), stats.t.isf(levels, np.where(np.isfinite(t_df), t_df, 1.0)),
                        stats.norm.isf(levels))
    end = delta + quantile * sd <= THETA
    return (early | end).mean(), early.mean(), empty.mean(), np.median(r)


def wilson(p, n, z=1.959963984540054):
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


print("# passed at +50 % (promised <= 10 %), 20,000 waves a row")
for rps, canaries, baselines in [(20, 4, 2), (20, 1, 5), (100, 1, 5), (100, 4, 2)]:
    for keep_empty in (True, False):
        share, early, empty, r = tolerance_pass_share(rps, canaries, baselines, keep_empty)
        lo, hi = wilson(share, 20_000)
        what = "kept empty look" if keep_empty else "fixed"
        print(f"{rps} req/s {canaries} + {baselines}, {what}: passed {share:.4f} ({lo:.4f}-{hi:.4f}), early "
              f"{early:.4f}, first usable look empty {empty:.4f}, median r at the end {r:.2f}")
# The same with the end look at beta/2 (the Bonferroni halves the table replaced).
for keep_empty in (True, False):
    share, early, _, _ = tolerance_pass_share(20, 4, 2, keep_empty, level=lambda r: 0.05)
    print(f"20 req/s 4 + 2, end look at 0.05, {'kept empty look' if keep_empty else 'fixed'}: passed {share:.4f}")
