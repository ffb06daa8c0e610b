#!/usr/bin/env python3
"""Reference values for coordinator/src/immune (the canary analysis), computed independently.

Run: python3 scripts/reference/immune_reference.py   (needs numpy and scipy: pip install numpy scipy)

It prints the constants the Rust tests in coordinator/src/immune/analysis.rs check against:
- normal and Student's t tails and quantiles (scipy.stats),
- the one-sided normal-mixture likelihood ratio, by numerical integration (scipy.integrate.quad)
  rather than by the closed form the Rust code uses,
- Mann-Whitney U and asymptotic, tie-corrected p-values (scipy.stats.mannwhitneyu) on samples expanded
  from bucket counts,
- the continuity-corrected signed root likelihood ratio of two Poisson rates, against scipy's exact
  conditional binomial test (scipy.stats.binomtest) to show how it is calibrated,
- whole looks of the three metric kinds (ratio, histogram, gauge) on small fixed data sets, recomputed
  here from the formulas in the module doc with numpy/scipy.
"""

import math

import numpy as np
from scipy import integrate, optimize, stats

np.set_printoptions(precision=17)


def show(label, value):
    print(f"{label} = {value!r}")


# ---------------------------------------------------------------------------------------------------
# Distributions
print("# normal and t")
show("norm.isf(0.0025)", stats.norm.isf(0.0025))
show("norm.isf(1e-6)", stats.norm.isf(1e-6))
show("norm.isf(1e-12)", stats.norm.isf(1e-12))
for t, df in [(2.5, 4.0), (7.0, 4.0), (12.0, 3.5), (4.0, 28.3), (30.0, 2.0), (-1.0, 6.0)]:
    show(f"t.sf({t}, {df})", stats.t.sf(t, df))
show("t.ppf(0.9, 5.5)", stats.t.ppf(0.9, 5.5))
show("norm.ppf(0.9)", stats.norm.ppf(0.9))


# ---------------------------------------------------------------------------------------------------
# The mixture likelihood ratio, by integration: V = 1, sigma^2 = r, S = z.
def mixture_log_lr_quad(z, r):
    var = 1.0
    info = 1.0 / var
    s = z * math.sqrt(info)
    sigma = math.sqrt(r * var)

    def integrand(theta):
        return math.exp(theta * s - theta * theta * info / 2.0) * 2.0 * stats.norm.pdf(theta / sigma) / sigma

    value, _ = integrate.quad(integrand, 0.0, np.inf, epsabs=0, epsrel=1e-13, limit=500)
    return math.log(value)


print("# mixture ln(Lambda)")
for z, r in [(2.0, 1.0), (4.0, 25.0), (-1.0, 4.0), (6.5, 0.3)]:
    show(f"mixture_log_lr({z}, {r})", mixture_log_lr_quad(z, r))


# ---------------------------------------------------------------------------------------------------
# Mann-Whitney
print("# Mann-Whitney (asymptotic, tie-corrected, no continuity correction)")
x = [1, 2, 3.5, 4, 5.2]
y = [2.5, 6, 7.1, 8, 9.3]
r = stats.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic", use_continuity=False)
show("U1(x, y)", r.statistic)
show("p two-sided", r.pvalue)
show("p two-sided, scipy default (exact)", stats.mannwhitneyu(x, y).pvalue)


def expand(counts):
    return np.repeat(np.arange(len(counts)), np.asarray(counts, dtype=int))


a = [3, 10, 25, 9, 2, 1]
b = [6, 15, 20, 5, 1, 0]
r = stats.mannwhitneyu(expand(a), expand(b), alternative="greater", method="asymptotic", use_continuity=False)
show("U1(a, b) ties", r.statistic)
show("p greater ties", r.pvalue)


# ---------------------------------------------------------------------------------------------------
# Whole looks, recomputed from the module doc's formulas.
def satterthwaite(spread, spread_df, sampling, sampling_df):
    terms = 0.0
    if spread_df > 0 and math.isfinite(spread_df):
        terms += spread**2 / spread_df
    if sampling_df > 0 and math.isfinite(sampling_df):
        terms += sampling**2 / sampling_df
    total = spread + sampling
    return total**2 / terms if terms > 0 else math.inf


def t_sf(t, df):
    return stats.norm.sf(t) if not math.isfinite(df) else stats.t.sf(t, df)


def t_ppf(p, df):
    return stats.norm.ppf(p) if not math.isfinite(df) else stats.t.ppf(p, df)


# The sequential test mixes equally over these multiples of its prior's spread.
MIXTURE_MULTIPLES = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]


def mixture_scales_log_lr(z, r):
    return math.log(np.mean([math.exp(mixture_log_lr_quad(z, min(r * m * m, 1e12))) for m in MIXTURE_MULTIPLES]))


for z, r in [(2.0, 1.0), (4.0, 25.0), (9.0, 0.04)]:
    show(f"mixture_log_lr_scales({z}, {r})", mixture_scales_log_lr(z, r))


def mixture_p(t, df, total, prior_sd):
    z = stats.norm.isf(t_sf(t, df))
    r = prior_sd**2 / total
    return min(1.0, math.exp(-mixture_scales_log_lr(z, r)))


def cs_upper(delta, sd, df, confidence):
    """The always-valid upper bound on the test's scale: the theta at which the one-scale mixture
    (prior spread theta itself, by integration) against a regression of theta reaches
    1/(1 - confidence); the t statistic (theta - delta)/sd mapped to a normal score as the test does."""
    target = -math.log(1.0 - confidence)

    def gap(theta):
        z = stats.norm.isf(t_sf((theta - delta) / sd, df))
        return mixture_log_lr_quad(z, min(theta**2 / sd**2, 1e12)) - target

    return optimize.brentq(gap, max(delta, 0.0) + 1e-9 * sd, max(delta, 0.0) + 40 * sd, xtol=1e-15, rtol=1e-14)


# The end look's level by the pass test's prior ratio at the end, r = (tolerance / sd)^2 on the
# test's scale (beta 0.1, early pass at beta/2): computed and checked against this table at the end
# of this script (end_level), floored to 0.001. Read at the next r at or above; beta/2 beyond.
END_LEVELS = [(0.5, 0.099), (1, 0.099), (2, 0.099), (3, 0.098), (4, 0.097), (5, 0.096), (6, 0.095),
              (8, 0.093), (10, 0.092), (12, 0.090), (14, 0.089), (17, 0.087), (20, 0.086), (25, 0.084),
              (30, 0.082), (40, 0.080), (50, 0.078), (70, 0.075), (100, 0.073), (150, 0.070),
              (200, 0.069), (300, 0.067), (500, 0.066)]


def end_confidence(theta, sd):
    r = (theta / sd) ** 2
    level = next((lvl for rr, lvl in END_LEVELS if rr >= r), 0.05)
    return 1.0 - level


def fixed_upper(delta, sd, df, confidence):
    """The end look's fixed-horizon upper bound on the test's scale: delta + t_{confidence, df} sd
    (scipy.stats.t.ppf; the normal's quantile when df is infinite)."""
    return delta + t_ppf(confidence, df) * sd


def shifted_auc(reference, bounds, factor):
    """The AUC of the reference's latencies all multiplied by factor against the reference, on the
    buckets: the reference's CDF by numpy.interp (edges 0, bounds...), read at bounds / factor."""
    reference = np.asarray(reference, float)
    total = reference.sum()
    cumulative = np.concatenate([[0.0], np.cumsum(reference[:-1])]) / total
    edges = np.concatenate([[0.0], np.asarray(bounds, float)])
    at = np.interp(np.asarray(bounds, float) / factor, edges, cumulative)
    shifted = np.diff(np.concatenate([[0.0], at, [1.0]]))
    return auc(shifted, reference / total)[0]


def rank_scale(reference, bounds, target):
    return math.exp(optimize.brentq(lambda lk: shifted_auc(reference, bounds, math.exp(lk)) - target, -6.9, 6.9,
                                    xtol=1e-14))


def spread_estimate(sides, relative, floor=0.0):
    """sides: list of (x, v_own, w) arrays. DerSimonian-Laird moments pooled within sides; relative
    spreads are measured on x / (weighted side mean) with precision weights 1/v, absolute ones with
    equal weights. Returns (tau2, its Satterthwaite df, measured)."""
    excess, scale, df = 0.0, 0.0, 0.0
    for xs, vs, ws in sides:
        n = len(xs)
        if n < 2:
            continue
        if relative:
            m = np.sum(ws * xs) / np.sum(ws)
            if m <= 0:
                continue
            xs, vs = xs / m, vs / m**2
            weights = 1 / vs if np.all(vs > 0) else np.ones(n)
        else:
            weights = np.ones(n)
        W = weights.sum()
        mean = np.sum(weights * xs) / W
        q = np.sum(weights * (xs - mean) ** 2)
        noise = np.sum(weights * vs) - np.sum(weights**2 * vs) / W
        excess += q - noise
        scale += W - np.sum(weights**2) / W
        df += n - 1
    estimate = max(excess / scale, 0.0) if df > 0 and scale > 0 else 0.0
    f2 = floor * floor
    if estimate <= f2:
        return f2, (math.inf if f2 > 0 else df), df > 0
    if f2 > 0:
        return estimate, df * (estimate / (estimate - f2)) ** 2, True
    return estimate, df, True


def signed_root_lr(n1, d1, n2, d2):
    """Signed root of the two-Poisson likelihood ratio, each count moved half an event towards its
    expectation under equal rates."""
    total = n1 + n2
    e1 = total * d1 / (d1 + d2)
    gap = n1 - e1
    if total <= 0 or abs(gap) <= 0.5:
        return 0.0
    c1 = n1 - 0.5 * math.copysign(1.0, gap)
    c2 = total - c1
    e2 = total - e1
    dev = 2 * sum(n * math.log(n / e) for n, e in [(c1, e1), (c2, e2)] if n > 0)
    return math.copysign(math.sqrt(max(dev, 0.0)), gap)


def ratio_look(base, can, mixture_scale=0.5, bad=1.0, confidence=0.95, host_floor=0.2):
    """base/can: {host: [(num, den), ...]} cumulative so far."""
    def agg(side):
        out = []
        for ivs in side.values():
            n = sum(i[0] for i in ivs)
            d = sum(i[1] for i in ivs)
            q = sum(i[0] ** 2 / i[1] for i in ivs)
            out.append((n, d, q, len(ivs)))
        return out

    B, C = agg(base), agg(can)
    nb, db = sum(h[0] for h in B), sum(h[1] for h in B)
    nc, dc = sum(h[0] for h in C), sum(h[1] for h in C)
    rb, rc = nb / db, nc / dc
    p0 = (nb + nc) / (db + dc)
    pear, pdf = 0.0, 0.0
    for n, d, q, T in B + C:
        if n > 0 and T >= 2:
            pear += max((q - n * n / d) / (n / d), 0.0)
            pdf += T - 1
    phi_hat = pear / pdf if pdf > 0 else 1.0
    phi, phi_df = (phi_hat, pdf) if phi_hat > 1 else (1.0, math.inf)

    def units(side, rate):
        x = np.array([n / d / p0 for n, d, _, _ in side])
        v0 = np.array([phi / (d * p0) for _, d, _, _ in side])
        v1 = np.array([phi * rate / (d * p0 * p0) for _, d, _, _ in side])
        w = np.array([d for _, d, _, _ in side])
        return x, v0, v1, w

    xc, v0c, v1c, wc = units(C, rc)
    xb, v0b, v1b, wb = units(B, rb)
    tau2, tau_df, _ = spread_estimate([(xc, v1c, wc), (xb, v1b, wb)], relative=True, floor=host_floor)
    wc, wb = wc / wc.sum(), wb / wb.sum()
    mc, mb = np.sum(wc * xc), np.sum(wb * xb)
    delta = mc - mb
    kc, kb = np.sum(wc**2), np.sum(wb**2)
    null_spread = tau2 * (kc + kb)
    null_sampling = np.sum(wc**2 * v0c) + np.sum(wb**2 * v0b)
    own_spread = tau2 * (mc * mc * kc + mb * mb * kb)
    own_sampling = np.sum(wc**2 * v1c) + np.sum(wb**2 * v1b)
    total = null_spread + null_sampling
    df = satterthwaite(null_spread, tau_df, null_sampling, phi_df)
    z_sampling = signed_root_lr(nc, dc, nb, db) / math.sqrt(phi)
    t = bad * z_sampling * math.sqrt(null_sampling / total)
    p = mixture_p(t, df, total, mixture_scale)
    df_own = satterthwaite(own_spread, tau_df, own_sampling, phi_df)
    upper = cs_upper(bad * delta, math.sqrt(own_spread + own_sampling), df_own, confidence) * p0 / rb
    sd_own = math.sqrt(own_spread + own_sampling)
    fixed = fixed_upper(bad * delta, sd_own, df_own, end_confidence(0.5 * rb / p0, sd_own)) * p0 / rb
    return dict(baseline=rb, canary=rc, phi=phi, tau2=tau2, t=t, df=df, p=p, upper=upper, fixed=fixed)


def auc(host, ref):
    host, ref = np.asarray(host, float), np.asarray(ref, float)
    n1, n2 = host.sum(), ref.sum()
    below = np.concatenate([[0.0], np.cumsum(ref)[:-1]])
    u = np.sum(host * (below + 0.5 * ref))
    t = host + ref
    n = n1 + n2
    var_u = n1 * n2 / 12 * ((n + 1) - np.sum(t**3 - t) / (n * (n - 1)))
    return u / (n1 * n2), var_u / (n1 * n2) ** 2


def bucket_median(counts, bounds):
    """The median as Prometheus' histogram_quantile estimates it, here by inverting the piecewise
    linear cumulative distribution with numpy.interp (edges 0, bounds...; the +Inf bucket is cut at
    the last bound)."""
    counts = np.asarray(counts, float)
    cumulative = np.concatenate([[0.0], np.cumsum(counts[:-1])])
    edges = np.concatenate([[0.0], np.asarray(bounds, float)])
    half = counts.sum() / 2
    if half > cumulative[-1]:
        return float(bounds[-1])
    return float(np.interp(half, cumulative, edges))


def histogram_look(base, can, bounds, mixture_scale=0.5, bad=1.0, confidence=0.95):
    """base/can: {host: (per-bucket counts, sum, count)} cumulative so far. The effect is the
    median's (interpolated within the buckets), the quantity a rank test measures."""
    pooled = np.sum([np.asarray(c, float) for c, _, _ in base.values()], axis=0)
    pooled_can = np.sum([np.asarray(c, float) for c, _, _ in can.values()], axis=0)
    median_b = bucket_median(pooled, bounds)
    median_c = bucket_median(pooled_can, bounds)
    can_u = [auc(c, pooled) for c, _, _ in can.values()]
    base_u = [auc(c, pooled - np.asarray(c, float)) for c, _, _ in base.values()]
    xc, vc = np.array([u[0] for u in can_u]), np.array([u[1] for u in can_u])
    xb, vb = np.array([u[0] for u in base_u]), np.array([u[1] for u in base_u])
    tau2, tau_df, _ = spread_estimate([(xc, vc, None), (xb, vb, None)], relative=False)
    nc, nb = len(xc), len(xb)
    delta = xc.mean() - xb.mean()
    spread = tau2 * (1 / nc + 1 / nb)
    sampling = vc.sum() / nc**2 + vb.sum() / nb**2
    total = spread + sampling
    df = satterthwaite(spread, tau_df, sampling, math.inf)
    t = bad * delta / math.sqrt(total)
    p = mixture_p(t, df, total, mixture_scale * 0.4)
    # The change the ranks give (all latencies scaled by one factor) and its always-valid bound.
    effect = rank_scale(pooled, bounds, 0.5 + delta) - 1
    upper = rank_scale(pooled, bounds, 0.5 + cs_upper(bad * delta, math.sqrt(total), df, confidence)) - 1
    theta = shifted_auc(pooled, bounds, 1.5) - 0.5
    end = end_confidence(theta, math.sqrt(total))
    fixed = rank_scale(pooled, bounds, 0.5 + fixed_upper(bad * delta, math.sqrt(total), df, end)) - 1
    return dict(baseline=median_b, canary=median_c, effect=effect, tau2=tau2, t=t, df=df, p=p, upper=upper,
                fixed=fixed)


def gauge_look(base, can, mixture_scale=0.5, bad=1.0, confidence=0.95):
    """base/can: {host: [values...]} so far."""
    mb = np.mean([np.mean(v) for v in base.values()])
    mc = np.mean([np.mean(v) for v in can.values()])
    scale = abs((mb + mc) / 2)

    def units(side):
        x = np.array([np.mean(v) / scale for v in side.values()])
        v = np.array([(np.var(v, ddof=1) if len(v) >= 2 else 0.0) / len(v) / scale**2 for v in side.values()])
        return x, v

    xc, vc = units(can)
    xb, vb = units(base)
    tau2, tau_df, _ = spread_estimate([(xc, vc, None), (xb, vb, None)], relative=False)
    nc, nb = len(xc), len(xb)
    delta = xc.mean() - xb.mean()
    spread = tau2 * (1 / nc + 1 / nb)
    sampling = vc.sum() / nc**2 + vb.sum() / nb**2
    sampling_df = max(sum(len(v) for v in base.values()) + sum(len(v) for v in can.values()) - nc - nb, 1)
    total = spread + sampling
    df = satterthwaite(spread, tau_df, sampling, sampling_df)
    t = bad * delta / math.sqrt(total)
    p = mixture_p(t, df, total, mixture_scale)
    upper = cs_upper(bad * delta, math.sqrt(total), df, confidence) * scale / abs(mb)
    end = end_confidence(0.5 * abs(mb) / scale, math.sqrt(total))
    fixed = fixed_upper(bad * delta, math.sqrt(total), df, end) * scale / abs(mb)
    return dict(baseline=mb, canary=mc, tau2=tau2, t=t, df=df, p=p, upper=upper, fixed=fixed)


print("# two-Poisson signed root LR (continuity corrected) vs the exact conditional binomial test")
for n1, d1, n2, d2 in [(11, 1000, 20, 5000), (20, 3000, 0, 3000), (150, 3000, 75, 15000), (3, 400, 30, 2000)]:
    z = signed_root_lr(n1, d1, n2, d2)
    exact = stats.binomtest(n1, n1 + n2, d1 / (d1 + d2), alternative="greater").pvalue
    show(f"signed_root_lr({n1}, {d1}, {n2}, {d2})", z)
    print(f"    normal tail {stats.norm.sf(z)!r}, exact binomial tail {exact!r}")

print("# ratio look (3 baseline hosts, 2 canary hosts, 3 intervals); p is the minimum over the looks")
RATIO_BASE = {
    "b1": [(2, 400), (1, 380), (3, 410)],
    "b2": [(0, 390), (2, 420), (1, 405)],
    "b3": [(4, 415), (1, 395), (2, 400)],
}
RATIO_CAN = {
    "c1": [(6, 400), (9, 410), (7, 390)],
    "c2": [(5, 380), (8, 400), (4, 395)],
}
p_min = 1.0
for k in range(1, 4):
    look = ratio_look({h: v[:k] for h, v in RATIO_BASE.items()}, {h: v[:k] for h, v in RATIO_CAN.items()})
    p_min = min(p_min, look["p"])
    print(f"look {k}: " + ", ".join(f"{key}={val!r}" for key, val in look.items()) + f", p_min={p_min!r}")

print("# histogram look (3 baseline hosts, 1 canary, 2 intervals)")
HIST_BASE = {
    "b1": ([[20, 50, 25, 4, 1], [18, 52, 26, 3, 1]], [9.1, 9.3]),
    "b2": ([[22, 47, 27, 3, 1], [25, 45, 24, 5, 1]], [9.0, 9.2]),
    "b3": ([[19, 51, 26, 3, 1], [21, 49, 25, 4, 1]], [9.2, 9.1]),
}
HIST_BOUNDS = [0.05, 0.1, 0.25, 0.5]
HIST_CAN = {"c1": ([[8, 35, 45, 10, 2], [7, 33, 47, 11, 2]], [14.8, 15.2])}


def hist_so_far(side, k):
    out = {}
    for h, (ivs, sums) in side.items():
        counts = np.sum(np.asarray(ivs[:k], float), axis=0)
        out[h] = (counts, sum(sums[:k]), counts.sum())
    return out


for counts, q in [([20, 50, 25, 4, 1], 0.5), ([20, 50, 25, 4, 1], 0.9), ([2, 10, 40, 40, 8], 0.5)]:
    show(f"bucket quantile {q} of {counts}", bucket_median(counts, HIST_BOUNDS) if q == 0.5 else
         float(np.interp(q * sum(counts), np.concatenate([[0.0], np.cumsum(counts[:-1])]), [0.0] + HIST_BOUNDS)))
p_min = 1.0
for k in range(1, 3):
    look = histogram_look(hist_so_far(HIST_BASE, k), hist_so_far(HIST_CAN, k), HIST_BOUNDS)
    p_min = min(p_min, look["p"])
    print(f"look {k}: " + ", ".join(f"{key}={val!r}" for key, val in look.items()) + f", p_min={p_min!r}")

print("# gauge look (4 baseline hosts, 2 canary hosts, 3 intervals), bad = increase")
GAUGE_BASE = {"b1": [41, 43, 40], "b2": [45, 44, 47], "b3": [38, 40, 39], "b4": [42, 41, 44]}
GAUGE_CAN = {"c1": [55, 58, 54], "c2": [60, 57, 59]}
p_min = 1.0
for k in range(1, 4):
    look = gauge_look({h: v[:k] for h, v in GAUGE_BASE.items()}, {h: v[:k] for h, v in GAUGE_CAN.items()})
    p_min = min(p_min, look["p"])
    print(f"look {k}: " + ", ".join(f"{key}={val!r}" for key, val in look.items()) + f", p_min={p_min!r}")

print("# ratio judged against each host's own past (difference in differences), one interval after")


def change_look(before, after, canary, floor=0.05, mixture_scale=0.5, confidence=0.95):
    """before/after: {host: (num, den)}; canary: the canary hosts' names. phi = 1 (one interval)."""
    def unit(h):
        (n, d), (nb, db) = after[h], before[h]
        return math.log((n + 0.5) / d) - math.log((nb + 0.5) / db), 1 / (n + 0.5) + 1 / (nb + 0.5)

    cu = np.array([unit(h) for h in after if h in canary])
    bu = np.array([unit(h) for h in after if h not in canary])
    xc, vc, xb, vb = cu[:, 0], cu[:, 1], bu[:, 0], bu[:, 1]
    tau2, tau_df, _ = spread_estimate([(xc, vc, None), (xb, vb, None)], relative=False, floor=floor)
    nc, nb = len(xc), len(xb)
    delta = xc.mean() - xb.mean()
    spread = tau2 * (1 / nc + 1 / nb)
    sampling = vc.sum() / nc**2 + vb.sum() / nb**2
    total = spread + sampling
    df = satterthwaite(spread, tau_df, sampling, math.inf)
    t = delta / math.sqrt(total)
    p = mixture_p(t, df, total, mixture_scale)
    upper = math.exp(cs_upper(delta, math.sqrt(total), df, confidence)) - 1
    end = end_confidence(math.log(1.5), math.sqrt(total))
    fixed = math.exp(fixed_upper(delta, math.sqrt(total), df, end)) - 1
    return dict(effect=math.exp(delta) - 1, t=t, df=df, p=p, upper=upper, fixed=fixed)


CHANGE_BEFORE = {"b0": (36, 18000), "b1": (45, 18000), "b2": (90, 18000), "c0": (72, 18000)}
CHANGE_AFTER = {"b0": (3, 1000), "b1": (2, 1000), "b2": (5, 1000), "c0": (9, 1000)}
look = change_look(CHANGE_BEFORE, CHANGE_AFTER, {"c0"})
print("change look: " + ", ".join(f"{key}={val!r}" for key, val in look.items()))

print("# a spread of hosts' changes learned from past waves (immune::spread), against the fixed floor")
BUSY_BEFORE = {"b0": (1800, 360000), "b1": (1750, 360000), "b2": (1850, 360000), "c0": (1800, 360000)}
BUSY_AFTER = {"b0": (150, 30000), "b1": (146, 30000), "b2": (155, 30000), "c0": (180, 30000)}


def spread_sample(before, after, hosts):
    """One wave's sample: sum (y - mean)^2 - (1 - 1/k) sum v over the baseline hosts, and k - 1."""
    ys = np.array([math.log((after[h][0] + 0.5) / after[h][1]) - math.log((before[h][0] + 0.5) / before[h][1])
                   for h in hosts])
    vs = np.array([1 / (after[h][0] + 0.5) + 1 / (before[h][0] + 0.5) for h in hosts])
    k = len(hosts)
    return float(((ys - ys.mean()) ** 2).sum() - (1 - 1 / k) * vs.sum()), k - 1


show("spread_sample(busy baseline)", spread_sample(BUSY_BEFORE, BUSY_AFTER, ["b0", "b1", "b2"]))
# Three earlier waves each of 4 df with tau^2 0.0001, 0.0001, 0.0001 folded with weights 0.81, 0.9, 1:
learned = math.sqrt((0.81 + 0.9 + 1.0) * 4 * 0.0001 / ((0.81 + 0.9 + 1.0) * 4))
show("learned spread", learned)
for floor in (0.05, learned):
    look = change_look(BUSY_BEFORE, BUSY_AFTER, {"c0"}, floor=floor)
    print(f"busy change look, spread {floor}: " + ", ".join(f"{key}={val!r}" for key, val in look.items()))


# ---------------------------------------------------------------------------------------------------
# The end look and what it can do: the chance that a healthy wave is held at the end look's
# fixed-horizon bound, and the bake or canaries that make it small.
print("# end look: t quantiles and the information limit")
show("t.ppf(0.95, 5.5)", stats.t.ppf(0.95, 5.5))
show("norm.ppf(0.95)", stats.norm.ppf(0.95))


def change_variance(events_now, events_past, canaries, baselines, floor=0.05, phi=1.0):
    """The variance of the canary-minus-baseline mean log change, each host against its own past:
    phi/(n + 1/2) per window per host, plus the spread floor, over canaries and baselines."""
    per_host = phi / (events_now + 0.5) + phi / (events_past + 0.5)
    k = 1.0 / canaries + 1.0 / baselines
    return k * (per_host + floor * floor)


def held(se, pass_bound=0.5, beta=0.1):
    """P(a healthy wave's end-look bound exceeds pass_bound): Phi(z_{1-beta_end} - ln(1+pass_bound)/SE),
    beta_end the end look's level at r = (ln(1+pass_bound)/SE)^2 (END_LEVELS)."""
    theta = math.log(1 + pass_bound)
    return stats.norm.cdf(stats.norm.ppf(end_confidence(theta, se)) - theta / se)


def se_for(held_share, pass_bound=0.5, beta=0.1):
    return optimize.brentq(lambda se: held(se, pass_bound, beta) - held_share, 0.01, 1.0, xtol=1e-9)


show("held(0.2)", held(0.2))
show("held(0.12)", held(0.12))
for share in (0.02, 0.05):
    show(f"SE for {share:.0%} held", se_for(share))
for rps, rate, phi in [(100, 0.005, 1.09), (20, 0.005, 1.018)]:
    per_s = rps * rate
    for history in (600, 1800, 3600):
        for canaries, baselines in [(1, 5), (4, 2)]:
            v = change_variance(per_s * 300, per_s * history, canaries, baselines, phi=phi)
            print(f"{rps} req/s, {rate:.1%}, phi {phi}, history {history} s, {canaries} + {baselines}, 300 s: "
                  f"SE {math.sqrt(v):.4f}, held {held(math.sqrt(v)):.4f}")
        for canaries, baselines in [(1, 5), (4, 2), (3, 1000), (6, 6)]:
            for share in (0.02, 0.05):
                target = se_for(share) ** 2
                try:
                    bake = optimize.brentq(
                        lambda t: change_variance(per_s * t, per_s * history, canaries, baselines, phi=phi) - target,
                        1.0, 1e6)
                    print(f"    {canaries} + {baselines}, history {history} s: {share:.0%} held needs a bake of "
                          f"{bake:.0f} s")
                except ValueError:
                    print(f"    {canaries} + {baselines}, history {history} s: {share:.0%} held is out of reach")


# ---------------------------------------------------------------------------------------------------
# Spending beta between the early pass and the end look. Under a regression exactly at the
# tolerance the pass test's statistic is a Brownian motion W in the information fraction
# u = I/I_end (a score statistic: Cov(estimate_s, estimate_t) = Var(estimate_t) for s < t, also with
# the fixed noise of each host's past). The early pass crosses the always-valid boundary
# ln Lambda(W/sqrt(u), r*u) >= ln(1/beta_early), r = (tolerance/sd at the end)^2 its prior's ratio
# at the end; the end look passes when W_1 >= c. The chance to pass, P(early or end), is computed
# on a grid (the density of W on 0.006 / 0.003 spacing, 1000 / 4000 time steps, absorbed at the
# boundary: continuous monitoring, an upper bound on the real looks' crossing), extrapolated to
# continuous time in 1/sqrt(steps), and c chosen so that it is exactly beta. The end look's level
# P(W_1 >= c) is then at least beta - beta_early (the union bound) and near beta where the early
# pass rarely crosses without the end look also passing. A Monte Carlo run checks one r.
def lnlam_path(w, u, r):
    rr = r * u
    s = rr / (1 + rr)
    z = w / math.sqrt(u)
    return math.log(2) - 0.5 * math.log1p(rr) + 0.5 * z * z * s + stats.norm.logcdf(z * math.sqrt(s))


def early_boundary(u, r, beta_early):
    target = -math.log(beta_early)
    return optimize.brentq(lambda w: lnlam_path(w, u, r) - target, 1e-12, 80, xtol=1e-12)


def end_level_grid(r, beta, beta_early, steps, dx):
    x = np.arange(-9, 14, dx)
    p = np.zeros_like(x)
    p[np.argmin(abs(x))] = 1 / dx
    du = 1 / steps
    sd = math.sqrt(du)
    k = np.arange(-int(7 * sd / dx) - 1, int(7 * sd / dx) + 2) * dx
    kernel = stats.norm.pdf(k, 0, sd) * dx
    kernel /= kernel.sum()
    absorbed = 0.0
    for i in range(1, steps + 1):
        p = np.convolve(p, kernel, mode="same")
        crossed = x >= early_boundary(i * du, r, beta_early)
        absorbed += p[crossed].sum() * dx
        p[crossed] = 0
    above = np.cumsum(p[::-1])[::-1] * dx
    c = np.interp(-(beta - absorbed), -above, x)
    return absorbed, stats.norm.sf(c)


def end_level(r, beta=0.1, beta_early=0.05):
    a1, l1 = end_level_grid(r, beta, beta_early, 1000, 0.006)
    a4, l4 = end_level_grid(r, beta, beta_early, 4000, 0.003)
    # Error in 1/sqrt(steps): halve it from 1000 to 4000 steps, so the limit is l4 - (l1 - l4).
    return a4 + (a4 - a1), l4 - (l1 - l4)


print("# the end look's level after an early pass at beta/2 (beta 0.1), by the prior ratio r at the end")
END_RATIOS = [0.5, 1, 2, 3, 4, 5, 6, 8, 10, 12, 14, 17, 20, 25, 30, 40, 50, 70, 100, 150, 200, 300, 500]
for r in END_RATIOS:
    early, level = end_level(r)
    table = dict(END_LEVELS)[r]
    print(f"r {r}: P(early pass) {early:.5f}, end level {level:.5f}, table {table:.3f}")
    assert table <= level and level - table < 0.0015, (r, level, table)


def monte_carlo(r, beta_early, level, paths=200_000, steps=2000, seed=16):
    rng = np.random.default_rng(seed)
    c = stats.norm.isf(level)
    u = np.arange(1, steps + 1) / steps
    b = np.array([early_boundary(ui, r, beta_early) for ui in u])
    passed = 0
    for _ in range(paths // 20_000):
        w = np.cumsum(rng.standard_normal((20_000, steps)) * math.sqrt(1 / steps), axis=1)
        passed += int(((w >= b).any(axis=1) | (w[:, -1] >= c)).sum())
    return passed / paths


show("monte_carlo(12, 0.05, 0.090) pass share (<= 0.1)", monte_carlo(12, 0.05, 0.090))
