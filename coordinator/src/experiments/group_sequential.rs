//! Group-sequential boundaries with alpha spending, for experiments looked at on a schedule.
//!
//! An experiment declared with `looks = K` is judged only at its K scheduled looks. At look k the
//! two-sided test rejects when |Z_k| ≥ b_k, and the boundaries spend alpha by the Lan-DeMets
//! O'Brien-Fleming function, α/2 a side as ldbounds and gsDesign do it:
//! α*(t) = 2 · (2 − 2Φ(z_{1−α/4} / √t)). By look k the chance of any false rejection is exactly
//! α*(t_k), and α at the last look (t = 1). Early looks get very little alpha,
//! so the final look's boundary is close to the fixed-horizon one: most of the power of a single
//! look at the end, with the option to stop early on a large effect.
//!
//! Each boundary is computed from the looks actually taken, not a plan: the information at each
//! look (from the units counted) sets the correlation between the looks' statistics,
//! corr(Z_j, Z_k) = √(I_j / I_k), so uneven traffic (weekends, a ramp) is accounted for. A look
//! with no new information, or too few units to test, spends nothing and its alpha rolls over to
//! the next look. The boundaries solve the standard recursion (Armitage, McPherson and Rowe 1969)
//! by numerical integration on the grid of Jennison and Turnbull (2000, §19.2; the grid gsDesign
//! uses), to about 1e-6 in probability.
//!
//! b_k depends only on looks 1..k, so the boundaries shown at a look never change later.

use statrs::distribution::{ContinuousCDF, Normal};

/// Jennison and Turnbull's grid parameter: about 12·r points over the continuation region; r = 18
/// (gsDesign's default) integrates to about 1e-6.
const GRID_R: usize = 18;

/// One look, as the recursion needs it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Look {
    /// Spending time in (0, 1]: the share of the schedule done (k / K for look k of K).
    pub time: f64,
    /// Statistical information at the look (1 / variance of the estimate, up to a constant factor
    /// shared by all looks); 0 when the look cannot test (too few units).
    pub info: f64,
}

/// The boundary at one look.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bound {
    /// Reject when |Z| ≥ this; None when the look spends nothing (no new information, too few
    /// units, or no alpha left to spend).
    pub z: Option<f64>,
    /// Alpha spent by the end of this look, this one included.
    pub spent: f64,
}

/// α*(t) of the two-sided symmetric Lan-DeMets O'Brien-Fleming spending function: each side
/// spends α/2 by 2 − 2Φ(z_{1−(α/2)/2} / √t) (the convention of ldbounds and gsDesign, whose
/// published boundaries the tests check).
pub fn obrien_fleming_spent(alpha: f64, t: f64) -> f64 {
    if t <= 0.0 {
        return 0.0;
    }
    if t >= 1.0 {
        return alpha;
    }
    let n = std_normal();
    let z = -n.inverse_cdf(alpha / 4.0);
    // The survival function keeps the tiny early spends exact.
    (4.0 * n.sf(z / t.sqrt())).min(alpha)
}

fn std_normal() -> Normal {
    Normal::new(0.0, 1.0).expect("the standard normal is valid")
}

fn density(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// Points and Simpson weights over (−b, b) on Jennison and Turnbull's grid for a statistic of mean
/// 0 (denser near the middle, logarithmically spaced tails out to ±(3 + 4 ln r)).
fn grid(b: f64, r: usize) -> (Vec<f64>, Vec<f64>) {
    let rf = r as f64;
    let mut base: Vec<f64> = (1..6 * r)
        .map(|i| {
            let i_f = i as f64;
            if i < r {
                -3.0 - 4.0 * (rf / i_f).ln()
            } else if i <= 5 * r {
                -3.0 + 3.0 * (i_f - rf) / (2.0 * rf)
            } else {
                3.0 + 4.0 * (rf / (6.0 * rf - i_f)).ln()
            }
        })
        .filter(|x| x.abs() < b)
        .collect();
    // Past the grid's last point the density is below 1e-40: a farther boundary ends it there.
    if b <= 3.0 + 4.0 * rf.ln() {
        base.insert(0, -b);
        base.push(b);
    }
    let mut z = Vec::with_capacity(2 * base.len());
    let mut w = Vec::with_capacity(2 * base.len());
    for pair in base.windows(2) {
        let (lo, hi) = (pair[0], pair[1]);
        let d = hi - lo;
        if z.is_empty() {
            z.push(lo);
            w.push(0.0);
        }
        *w.last_mut().expect("pushed above") += d / 6.0;
        z.push((lo + hi) / 2.0);
        w.push(4.0 * d / 6.0);
        z.push(hi);
        w.push(d / 6.0);
    }
    (z, w)
}

/// The sub-density of the last active look's statistic over its continuation region.
struct State {
    info: f64,
    z: Vec<f64>,
    /// weight × sub-density at each point.
    wh: Vec<f64>,
}

/// P(no earlier rejection and |Z_k| ≥ b), Z_k = (c·Z_prev·… ) as in the module docs: given
/// Z_prev = u, Z_k ~ N(c·u, s²) with c = √(I_prev/I_k), s = √(1 − I_prev/I_k).
fn cross(state: &State, c: f64, s: f64, b: f64, n: &Normal) -> (f64, f64) {
    let (mut p, mut dp) = (0.0, 0.0);
    for (u, wh) in state.z.iter().zip(&state.wh) {
        let (lo, hi) = ((-b - c * u) / s, (-b + c * u) / s);
        p += wh * (n.cdf(lo) + n.cdf(hi));
        dp -= wh * (density(lo) + density(hi)) / s;
    }
    (p, dp)
}

/// The b with P(cross at b) = target, P falling in b: Newton's steps kept inside a bisection
/// bracket.
fn solve(state: &State, c: f64, s: f64, target: f64, n: &Normal) -> f64 {
    let (mut lo, mut hi) = (0.0, 40.0);
    let mut b = n.inverse_cdf(1.0 - target / 2.0).clamp(lo, hi);
    for _ in 0..200 {
        let (p, dp) = cross(state, c, s, b, n);
        if p > target {
            lo = b;
        } else {
            hi = b;
        }
        let newton = b - (p - target) / dp;
        let next = if dp < 0.0 && newton > lo && newton < hi { newton } else { (lo + hi) / 2.0 };
        if (next - b).abs() < 1e-12 || hi - lo < 1e-12 {
            return next;
        }
        b = next;
    }
    b
}

/// The sub-density on the grid of (−b, b) one look later.
fn advance(state: &State, c: f64, s: f64, info: f64, b: f64, r: usize) -> State {
    let (z, w) = grid(b, r);
    let wh = z
        .iter()
        .zip(&w)
        .map(|(x, wx)| {
            let h: f64 = state.z.iter().zip(&state.wh).map(|(u, wh)| wh * density((x - c * u) / s) / s).sum();
            wx * h
        })
        .collect();
    State { info, z, wh }
}

/// The first look that tests: Z ~ N(0, 1) on (−b, b).
fn first(info: f64, b: f64, r: usize) -> State {
    let (z, w) = grid(b, r);
    let wh = z.iter().zip(&w).map(|(x, wx)| wx * density(*x)).collect();
    State { info, z, wh }
}

/// Boundaries for `looks` (in order, information never falling) at two-sided level `alpha`,
/// spending by [`obrien_fleming_spent`] at each look's `time`. The last look of a schedule has
/// time 1 and spends what is left, so the spent column ends at `alpha`.
pub fn boundaries(alpha: f64, looks: &[Look]) -> Vec<Bound> {
    boundaries_with(alpha, looks, GRID_R)
}

fn boundaries_with(alpha: f64, looks: &[Look], r: usize) -> Vec<Bound> {
    let n = std_normal();
    let mut state: Option<State> = None;
    let mut spent = 0.0;
    let mut out = Vec::with_capacity(looks.len());
    for look in looks {
        let target = obrien_fleming_spent(alpha, look.time) - spent;
        // Less than this much new information (relative): the statistic is the last look's again.
        let grew = state.as_ref().is_none_or(|s| look.info > s.info * (1.0 + 1e-9));
        if target <= 1e-15 || look.info <= 0.0 || !look.info.is_finite() || !grew {
            out.push(Bound { z: None, spent });
            continue;
        }
        let b = match &state {
            None => {
                let b = -n.inverse_cdf(target / 2.0);
                state = Some(first(look.info, b, r));
                b
            }
            Some(prev) => {
                let ratio = prev.info / look.info;
                let (c, s) = (ratio.sqrt(), (1.0 - ratio).sqrt());
                let b = solve(prev, c, s, target, &n);
                let next = advance(prev, c, s, look.info, b, r);
                state = Some(next);
                b
            }
        };
        spent += target;
        out.push(Bound { z: Some(b), spent });
    }
    out
}

/// The probability that a path crosses any of `bounds` (None: no test at that look) under no
/// difference, integrated on a grid of parameter `r`: what the boundaries were solved to spend.
#[cfg(test)]
fn crossing_probability(looks: &[Look], bounds: &[Option<f64>], r: usize) -> f64 {
    let n = std_normal();
    let mut state: Option<State> = None;
    let mut total = 0.0;
    for (look, b) in looks.iter().zip(bounds) {
        let Some(b) = *b else { continue };
        match &state {
            None => {
                total += 2.0 * n.cdf(-b);
                state = Some(first(look.info, b, r));
            }
            Some(prev) => {
                let ratio = prev.info / look.info;
                let (c, s) = (ratio.sqrt(), (1.0 - ratio).sqrt());
                total += cross(prev, c, s, b, &n).0;
                state = Some(advance(prev, c, s, look.info, b, r));
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn equal(k: usize) -> Vec<Look> {
        (1..=k).map(|i| Look { time: i as f64 / k as f64, info: i as f64 / k as f64 }).collect()
    }

    fn zs(b: &[Bound]) -> Vec<f64> {
        b.iter().map(|b| b.z.expect("every look tests")).collect()
    }

    fn assert_close(got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tol, "got {got:?}, want {want:?}");
        }
    }

    // Reference values from independent implementations:
    // - ldbounds (R; Reboussin, DeMets et al.) and gsDesign's published table for Lan-DeMets
    //   O'Brien-Fleming, two-sided α = 0.05, K = 5 equally spaced: 4.877, 3.357, 2.680, 2.290, 2.031;
    // - `python3 scripts/reference/group_sequential_reference.py` (scipy's multivariate normal
    //   CDF, Genz's method, with a root finder: no recursion, no grid), output kept in
    //   scripts/reference/group_sequential_reference.txt.

    #[test]
    fn five_equal_looks_match_ldbounds() {
        let b = boundaries(0.05, &equal(5));
        assert_close(&zs(&b), &[4.877, 3.357, 2.680, 2.290, 2.031], 1e-3);
        assert_close(&zs(&b), &REF_K5, 2e-5);
        assert!((b[4].spent - 0.05).abs() < 1e-12, "{b:?}");
    }

    #[test]
    fn fourteen_equal_looks_match_the_independent_recursion() {
        // The schedule of issue 16 (`--looks 14 --look-every 1d`), checked against the script's
        // own recursion on a uniform grid (the multivariate normal CDF is too slow at 14
        // dimensions), which 20 million Gaussian paths confirm spends alpha.
        let b = boundaries(0.05, &equal(14));
        assert_eq!(b[0].z, None, "the first look's share of alpha is 1e-16: it spends nothing");
        assert_eq!(b[0].spent, 0.0);
        let got: Vec<f64> = b[1..].iter().map(|b| b.z.expect("looks 2-14 test")).collect();
        assert_close(&got, &REF_K14, 2e-5);
        assert!((b[13].spent - 0.05).abs() < 1e-12, "{b:?}");
    }

    #[test]
    fn unequal_looks_match_the_multivariate_normal() {
        // Looks at 20%, 45%, 80% and 100% of the information.
        let looks: Vec<Look> = [0.2, 0.45, 0.8, 1.0].iter().map(|&t| Look { time: t, info: t }).collect();
        assert_close(&zs(&boundaries(0.05, &looks)), &REF_UNEQUAL, 2e-5);
        // Spending by schedule (thirds) while the information came unevenly (a slow first day).
        let looks =
            [Look { time: 1.0 / 3.0, info: 0.15 }, Look { time: 2.0 / 3.0, info: 0.6 }, Look { time: 1.0, info: 1.0 }];
        assert_close(&zs(&boundaries(0.05, &looks)), &REF_TIME_VS_INFO, 2e-5);
    }

    #[test]
    fn the_whole_alpha_is_spent_by_the_last_look() {
        for looks in [equal(5), equal(14), vec![Look { time: 0.3, info: 1.0 }, Look { time: 1.0, info: 7.0 }]] {
            let b = boundaries(0.05, &looks);
            let bounds: Vec<Option<f64>> = b.iter().map(|b| b.z).collect();
            // Integrated again on a grid three times as fine: the boundaries cross with
            // probability alpha, as solved.
            let p = crossing_probability(&looks, &bounds, 3 * GRID_R);
            assert!((p - 0.05).abs() < 1e-6, "{p} for {looks:?}");
        }
    }

    #[test]
    fn looks_that_cannot_test_roll_their_alpha_over() {
        // Look 2 brings no new units; look 1 had too few to test.
        let looks = [
            Look { time: 0.25, info: 0.0 },
            Look { time: 0.5, info: 0.5 },
            Look { time: 0.75, info: 0.5 },
            Look { time: 1.0, info: 1.0 },
        ];
        let b = boundaries(0.05, &looks);
        assert!(b[0].z.is_none() && b[2].z.is_none(), "{b:?}");
        // Two testing looks at half and all of the information, spending α*(0.5) then the rest:
        // the K = 2 design.
        let two = boundaries(0.05, &[Look { time: 0.5, info: 0.5 }, Look { time: 1.0, info: 1.0 }]);
        assert_eq!(b[1].z, two[0].z);
        assert!((b[3].z.unwrap() - two[1].z.unwrap()).abs() < 1e-9, "{b:?} {two:?}");
        assert!((b[3].spent - 0.05).abs() < 1e-12);
        let bounds: Vec<Option<f64>> = b.iter().map(|b| b.z).collect();
        assert!((crossing_probability(&looks, &bounds, 3 * GRID_R) - 0.05).abs() < 1e-6);
    }

    #[test]
    fn a_boundary_never_changes_once_shown() {
        let looks = equal(14);
        let all = boundaries(0.05, &looks);
        for k in 1..looks.len() {
            assert_eq!(boundaries(0.05, &looks[..k])[..], all[..k]);
        }
    }

    #[test]
    fn the_spending_function_matches_its_formula() {
        // scipy: 2 * (2 * norm.sf(norm.isf(0.0125) / sqrt(0.2)))
        assert!((obrien_fleming_spent(0.05, 0.2) / REF_SPENT_02 - 1.0).abs() < 1e-9);
        assert_eq!(obrien_fleming_spent(0.05, 1.0), 0.05);
        assert_eq!(obrien_fleming_spent(0.05, 0.0), 0.0);
    }

    // Printed by scripts/reference/group_sequential_reference.py.
    const REF_K5: [f64; 5] = [4.8768849, 3.3570119, 2.6802801, 2.2898168, 2.0310320];
    const REF_UNEQUAL: [f64; 4] = [4.8768849, 3.1438484, 2.2591945, 2.0266396];
    const REF_TIME_VS_INFO: [f64; 3] = [3.7103029, 2.5137542, 2.0026383];
    const REF_SPENT_02: f64 = 1.0777425258117499e-06;
    // `... group_sequential_reference.py k14`: looks 2-14 of fourteen equal looks.
    const REF_K14: [f64; 13] = [
        5.8153274, 4.7026012, 4.0372171, 3.5869287, 3.2584772, 3.0059269, 2.8041292, 2.6381520, 2.4985388, 2.3789848,
        2.2751082, 2.1837580, 2.1026035,
    ];
}
