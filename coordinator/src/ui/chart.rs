//! Server-rendered SVG charts for the dashboard: no JavaScript, no assets. Each chart is a
//! `<figure>` holding the SVG (with `role="img"`, an `aria-label` and a `<title>`), a caption and
//! a text alternative (a summary table) for screen readers and for anyone who wants the numbers.
//!
//! Invariants: every piece of text that reaches the output goes through [`escape`]; a series is
//! drawn with at most [`MAX_POINTS`] points however long it is (longer ones are downsampled,
//! keeping each bucket's lowest and highest value so spikes stay visible); values that are not
//! finite (NaN, ±∞) are not drawn — they break the line — and never reach a coordinate.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

/// The most points of one series drawn in a line chart.
pub const MAX_POINTS: usize = 400;

/// The most points drawn in a sparkline.
pub const SPARK_POINTS: usize = 120;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;

/// Colours and dash patterns of the series, in order: the dash tells series apart without colour.
const STYLES: [(&str, &str); 6] = [
    ("#1f77b4", ""),
    ("#d62728", "6 3"),
    ("#2ca02c", "2 2"),
    ("#9467bd", "8 3 2 3"),
    ("#8c564b", "1 3"),
    ("#e377c2", "10 4"),
];

/// Text made safe for HTML and SVG text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One line of a [`LineChart`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    /// Its name, in the legend.
    pub name: String,
    /// (x, y) points in x order. With [`XAxis::Time`], x is seconds since the Unix epoch.
    pub points: Vec<(f64, f64)>,
}

/// A labelled vertical line across a [`LineChart`], e.g. a look of the immune system or its
/// decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Marker {
    /// Where, on the x axis.
    pub x: f64,
    /// What it marks.
    pub label: String,
}

/// What the x axis counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XAxis {
    /// Seconds since the Unix epoch, labelled as UTC clock times.
    Time,
    /// Plain numbers.
    Number,
}

/// A time-series (or x/y) line chart with several series.
#[derive(Clone, Debug, PartialEq)]
pub struct LineChart {
    /// What it shows; the SVG's title and the figure's caption.
    pub title: String,
    /// What the y axis measures, e.g. `error rate`.
    pub y_label: String,
    /// What the x axis counts.
    pub x_axis: XAxis,
    /// The lines.
    pub series: Vec<Series>,
    /// Vertical markers.
    pub markers: Vec<Marker>,
}

/// Seconds since the Unix epoch of a time (negative before it), for [`XAxis::Time`].
pub fn epoch_secs(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Keeps at most `max` points of `points`: the finite ones unchanged when they fit; otherwise,
/// per bucket of consecutive points, the lowest and the highest (in x order). Non-finite points
/// are kept as gaps (one per run) so the line still breaks there.
pub fn downsample(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 4 {
        return points.iter().copied().take(max).collect();
    }
    let buckets = max / 2;
    let per = points.len().div_ceil(buckets);
    let mut out = Vec::with_capacity(max);
    for chunk in points.chunks(per) {
        let finite: Vec<(f64, f64)> = chunk.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        if finite.is_empty() {
            if out.len() < max {
                out.push((f64::NAN, f64::NAN));
            }
            continue;
        }
        let lo = finite.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1)).expect("not empty");
        let hi = finite.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1)).expect("not empty");
        let (first, second) = if lo.0 <= hi.0 { (lo, hi) } else { (hi, lo) };
        for p in [first, second] {
            if out.len() < max && out.last() != Some(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// About `want` round tick values (steps of 1, 2 or 5 × 10ⁿ) covering `lo..=hi`; the domain is
/// widened to the outer ticks. Returns (ticks, step).
pub fn nice_ticks(lo: f64, hi: f64, want: usize) -> (Vec<f64>, f64) {
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 1.0, lo + 1.0) };
    let raw = (hi - lo) / want.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).floor() * step;
    let last = (hi / step).ceil() * step;
    let n = ((last - first) / step).round() as usize;
    ((0..=n.min(50)).map(|i| first + i as f64 * step).collect(), step)
}

/// Round time ticks for a span of seconds: steps of 1 s up to a day.
fn time_ticks(lo: f64, hi: f64) -> (Vec<f64>, f64) {
    const STEPS: [f64; 16] =
        [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0];
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 30.0, lo + 30.0) };
    let step = STEPS
        .iter()
        .copied()
        .find(|s| (hi - lo) / s <= 6.0)
        .unwrap_or_else(|| ((hi - lo) / 6.0 / 86400.0).ceil() * 86400.0);
    let first = (lo / step).ceil() * step;
    let mut ticks = Vec::new();
    let mut t = first;
    while t <= hi && ticks.len() < 50 {
        ticks.push(t);
        t += step;
    }
    (ticks, step)
}

/// A tick value as text, with as many decimals as the step needs (`k`/`M`/`G` for large ones).
pub fn format_number(v: f64, step: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    let v = if v.abs() < step.abs() * 1e-9 { 0.0 } else { v };
    for (size, suffix) in [(1e9, "G"), (1e6, "M"), (1e3, "k")] {
        if step >= size {
            return format!("{}{suffix}", format_number(v / size, step / size));
        }
    }
    let decimals = if step > 0.0 && step < 1.0 { (-step.log10().floor()) as usize } else { 0 };
    format!("{v:.prec$}", prec = decimals.min(9))
}

/// A value for people (tables, labels): up to 4 significant digits.
pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return if v.is_nan() {
            "not a number".into()
        } else if v > 0.0 {
            "∞".into()
        } else {
            "−∞".into()
        };
    }
    if v == 0.0 {
        return "0".into();
    }
    let digits = (3 - v.abs().log10().floor() as i64).clamp(0, 9) as usize;
    let text = format!("{v:.digits$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// A UTC clock time of epoch seconds: `HH:MM` (`HH:MM:SS` when `seconds`).
fn clock(t: f64, seconds: bool) -> String {
    let secs = t.rem_euclid(86400.0) as u64;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if seconds {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}")
    }
}

/// An x value as text for tables.
fn x_text(axis: XAxis, x: f64) -> String {
    match axis {
        XAxis::Time if x.is_finite() && x >= 0.0 => {
            crate::views::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(x.min(253_402_300_799.0)))
        }
        _ => format_value(x),
    }
}

/// Maps `v` in `d0..d1` to `r0..r1`.
fn scale(v: f64, d0: f64, d1: f64, r0: f64, r1: f64) -> f64 {
    if d1 == d0 {
        return (r0 + r1) / 2.0;
    }
    r0 + (v - d0) / (d1 - d0) * (r1 - r0)
}

/// The `(min, max)` of the finite values, if any.
fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.filter(|v| v.is_finite()).fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// The line chart as a `<figure>`: SVG with axes, ticks, legend and markers, then a summary
/// table per series.
pub fn line_chart(chart: &LineChart) -> String {
    let series: Vec<(String, Vec<(f64, f64)>)> =
        chart.series.iter().map(|s| (s.name.clone(), downsample(&s.points, MAX_POINTS))).collect();
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let xs = extent(
        series.iter().flat_map(|(_, p)| p.iter().filter(finite).map(|p| p.0)).chain(chart.markers.iter().map(|m| m.x)),
    );
    let ys = extent(series.iter().flat_map(|(_, p)| p.iter().filter(finite).map(|p| p.1)));
    let title = escape(&chart.title);
    let mut out = String::new();
    let summary = summary_text(chart);
    open_figure(&mut out, &chart.title, &summary, HEIGHT);
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP);
    match (xs, ys) {
        (Some((xlo, xhi)), Some((ylo, yhi))) => {
            // The y axis starts at zero for values that are all positive (rates, counts), so
            // a small difference does not look like a large one.
            let ylo = if ylo > 0.0 { 0.0 } else { ylo };
            let (yticks, ystep) = nice_ticks(ylo, yhi, 5);
            let (ylo, yhi) = (yticks[0], *yticks.last().expect("at least one tick"));
            let (xticks, xstep, xlo, xhi) = match chart.x_axis {
                XAxis::Time => {
                    let (lo, hi) = if xhi > xlo { (xlo, xhi) } else { (xlo - 30.0, xlo + 30.0) };
                    let (t, s) = time_ticks(lo, hi);
                    (t, s, lo, hi)
                }
                XAxis::Number => {
                    let (t, s) = nice_ticks(xlo, xhi, 6);
                    let (lo, hi) = (t[0], *t.last().expect("at least one tick"));
                    (t, s, lo, hi)
                }
            };
            let sx = |x: f64| scale(x, xlo, xhi, x0, x1);
            let sy = |y: f64| scale(y, ylo, yhi, y0, y1);
            // Grid and y ticks.
            for t in &yticks {
                let y = sy(*t);
                let _ = write!(
                    out,
                    r##"<line x1="{x0:.1}" y1="{y:.1}" x2="{x1:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                    x0 - 4.0,
                    y + 4.0,
                    escape(&format_number(*t, ystep))
                );
            }
            for t in &xticks {
                let x = sx(*t);
                let label = match chart.x_axis {
                    XAxis::Time => clock(*t, xstep < 60.0),
                    XAxis::Number => format_number(*t, xstep),
                };
                let _ = write!(
                    out,
                    r##"<line x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                    y0 + 4.0,
                    y0 + 16.0,
                    escape(&label)
                );
            }
            let _ = write!(
                out,
                r##"<line x1="{x0:.1}" y1="{y0:.1}" x2="{x1:.1}" y2="{y0:.1}" stroke="#333"/><line x1="{x0:.1}" y1="{y0:.1}" x2="{x0:.1}" y2="{y1:.1}" stroke="#333"/><text x="12" y="{:.1}" transform="rotate(-90 12 {:.1})" text-anchor="middle">{}</text>"##,
                (y0 + y1) / 2.0,
                (y0 + y1) / 2.0,
                escape(&chart.y_label)
            );
            if chart.x_axis == XAxis::Time {
                let _ = write!(out, r#"<text x="{x1:.1}" y="{:.1}" text-anchor="end">UTC</text>"#, HEIGHT - 4.0);
            }
            // Markers, their labels on alternating rows so neighbours do not overlap.
            for (i, m) in chart.markers.iter().enumerate().filter(|(_, m)| m.x.is_finite()) {
                let x = sx(m.x);
                let ly = y1 - 4.0 - if i % 2 == 1 { 12.0 } else { 0.0 };
                let anchor = if x > (x0 + x1) / 2.0 { "end" } else { "start" };
                let _ = write!(
                    out,
                    r##"<g class="marker"><line x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{y1:.1}" stroke="#555" stroke-dasharray="3 3"/><text x="{x:.1}" y="{ly:.1}" text-anchor="{anchor}" fill="#333">{}</text></g>"##,
                    escape(&m.label)
                );
            }
            for (i, (name, points)) in series.iter().enumerate() {
                let (colour, dash) = STYLES[i % STYLES.len()];
                let mut d = String::new();
                let mut pen_down = false;
                for (x, y) in points {
                    if !(x.is_finite() && y.is_finite()) {
                        pen_down = false;
                        continue;
                    }
                    let _ = write!(d, "{}{:.1},{:.1} ", if pen_down { "L" } else { "M" }, sx(*x), sy(*y));
                    pen_down = true;
                }
                let dash = if dash.is_empty() { String::new() } else { format!(r#" stroke-dasharray="{dash}""#) };
                let _ = write!(
                    out,
                    r#"<path class="series" d="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}><title>{}</title></path>"#,
                    d.trim_end(),
                    escape(name)
                );
            }
        }
        _ => {
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">no data</text>"#,
                WIDTH / 2.0,
                HEIGHT / 2.0
            );
        }
    }
    legend(&mut out, chart.series.iter().map(|s| s.name.as_str()));
    let _ = write!(out, "</svg><figcaption>{title}</figcaption>");
    summary_table(&mut out, chart);
    out.push_str("</figure>");
    out
}

/// The legend across the top of a chart.
fn legend<'a>(out: &mut String, names: impl Iterator<Item = &'a str>) {
    let mut x = LEFT;
    for (i, name) in names.enumerate() {
        let (colour, dash) = STYLES[i % STYLES.len()];
        let dash = if dash.is_empty() { String::new() } else { format!(r#" stroke-dasharray="{dash}""#) };
        let _ = write!(
            out,
            r#"<g class="legend"><line x1="{x:.1}" y1="10" x2="{:.1}" y2="10" stroke="{colour}" stroke-width="2"{dash}/><text x="{:.1}" y="14">{}</text></g>"#,
            x + 18.0,
            x + 22.0,
            escape(name)
        );
        x += 30.0 + 7.0 * name.chars().count().min(30) as f64;
    }
}

/// One sentence on what the chart shows, for `aria-label` and `<desc>`.
fn summary_text(chart: &LineChart) -> String {
    let mut parts = Vec::new();
    for s in &chart.series {
        let finite: Vec<f64> = s.points.iter().filter(|p| p.0.is_finite() && p.1.is_finite()).map(|p| p.1).collect();
        match (extent(finite.iter().copied()), finite.last()) {
            (Some((lo, hi)), Some(last)) => parts.push(format!(
                "{} from {} to {}, last {}",
                s.name,
                format_value(lo),
                format_value(hi),
                format_value(*last)
            )),
            _ => parts.push(format!("{} has no data", s.name)),
        }
    }
    if parts.is_empty() {
        parts.push("no data".into());
    }
    for m in &chart.markers {
        parts.push(format!("{} at {}", m.label, x_text(chart.x_axis, m.x)));
    }
    parts.join("; ")
}

/// The text alternative: per series its points, range and last value; then the markers.
fn summary_table(out: &mut String, chart: &LineChart) {
    let _ = write!(
        out,
        "<details class=\"chart-data\"><summary>Data of “{}”</summary><table><thead><tr><th scope=\"col\">series</th><th scope=\"col\">points</th><th scope=\"col\">lowest</th><th scope=\"col\">highest</th><th scope=\"col\">last</th><th scope=\"col\">last at</th></tr></thead><tbody>",
        escape(&chart.title)
    );
    for s in &chart.series {
        let finite: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
        let range = extent(finite.iter().map(|p| p.1));
        let cell = |v: Option<f64>| v.map(format_value).unwrap_or_else(|| "—".into());
        let _ = write!(
            out,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&s.name),
            finite.len(),
            cell(range.map(|r| r.0)),
            cell(range.map(|r| r.1)),
            cell(finite.last().map(|p| p.1)),
            escape(&finite.last().map(|p| x_text(chart.x_axis, p.0)).unwrap_or_else(|| "—".into()))
        );
    }
    out.push_str("</tbody></table>");
    if !chart.markers.is_empty() {
        out.push_str("<ul class=\"markers\">");
        for m in &chart.markers {
            let _ = write!(out, "<li>{}: {}</li>", escape(&x_text(chart.x_axis, m.x)), escape(&m.label));
        }
        out.push_str("</ul>");
    }
    out.push_str("</details>");
}

/// One row of an [`interval_chart`]: an estimate with its confidence interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Interval {
    /// What it is, e.g. a variant's name.
    pub label: String,
    /// The point estimate.
    pub estimate: f64,
    /// The interval's lower end (−∞ when unbounded).
    pub low: f64,
    /// Its upper end (+∞ when unbounded).
    pub high: f64,
}

/// A horizontal interval chart: per row its estimate as a dot and its interval as a bar, with a
/// line at zero (no effect). `unit` names the values, e.g. `lift, %`. Unbounded ends are drawn to
/// the edge with an arrow; a row without a finite estimate is listed, not drawn.
pub fn interval_chart(title: &str, unit: &str, rows: &[Interval]) -> String {
    const ROW: f64 = 28.0;
    let label_w = 140.0;
    let height = TOP + ROW * rows.len().max(1) as f64 + BOTTOM;
    let ends = rows.iter().flat_map(|r| [r.estimate, r.low, r.high]).chain(std::iter::once(0.0));
    let (lo, hi) = extent(ends).unwrap_or((0.0, 0.0));
    let (ticks, step) = nice_ticks(lo, hi, 6);
    let (lo, hi) = (ticks[0], *ticks.last().expect("at least one tick"));
    let (x0, x1) = (label_w, WIDTH - RIGHT);
    let sx = |v: f64| scale(v.clamp(lo, hi), lo, hi, x0, x1);
    let summary = rows
        .iter()
        .map(|r| {
            format!("{}: {} ({} to {})", r.label, format_value(r.estimate), format_value(r.low), format_value(r.high))
        })
        .collect::<Vec<_>>()
        .join("; ");
    let summary = if summary.is_empty() { "no data".to_string() } else { summary };
    let mut out = String::new();
    open_figure(&mut out, title, &summary, height);
    let axis_y = height - BOTTOM;
    x_grid(&mut out, &ticks, step, &sx, axis_y);
    let zero = sx(0.0);
    let _ = write!(
        out,
        r##"<line class="zero" x1="{zero:.1}" y1="{:.1}" x2="{zero:.1}" y2="{axis_y:.1}" stroke="#333" stroke-width="1.5"/><line x1="{x0:.1}" y1="{axis_y:.1}" x2="{x1:.1}" y2="{axis_y:.1}" stroke="#333"/><text x="{x1:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
        TOP - 8.0,
        height - 4.0,
        escape(unit)
    );
    for (i, r) in rows.iter().enumerate() {
        let y = TOP + ROW * i as f64 + ROW / 2.0;
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            x0 - 8.0,
            y + 4.0,
            escape(&r.label)
        );
        if !r.estimate.is_finite() {
            let _ = write!(out, r#"<text x="{:.1}" y="{:.1}">no estimate</text>"#, x0 + 4.0, y + 4.0);
            continue;
        }
        let low = if r.low.is_nan() { r.estimate } else { r.low };
        let high = if r.high.is_nan() { r.estimate } else { r.high };
        let (a, b) = (sx(low), sx(high));
        let _ = write!(
            out,
            r##"<line class="interval" x1="{a:.1}" y1="{y:.1}" x2="{b:.1}" y2="{y:.1}" stroke="#1f77b4" stroke-width="3"/>"##
        );
        for (end, at, finite) in [(-1.0, a, low.is_finite()), (1.0, b, high.is_finite())] {
            if finite {
                let _ = write!(
                    out,
                    r##"<line x1="{at:.1}" y1="{:.1}" x2="{at:.1}" y2="{:.1}" stroke="#1f77b4" stroke-width="2"/>"##,
                    y - 6.0,
                    y + 6.0
                );
            } else {
                let tip = at + end * 6.0;
                let _ = write!(
                    out,
                    r##"<path d="M{at:.1},{:.1} L{tip:.1},{y:.1} L{at:.1},{:.1}" fill="#1f77b4"/>"##,
                    y - 5.0,
                    y + 5.0
                );
            }
        }
        let _ = write!(
            out,
            r##"<circle class="estimate" cx="{:.1}" cy="{y:.1}" r="4.5" fill="#d62728"><title>{}</title></circle>"##,
            sx(r.estimate),
            escape(&format!("{}: {}", r.label, format_value(r.estimate)))
        );
    }
    let _ = write!(
        out,
        "</svg><figcaption>{}</figcaption><details class=\"chart-data\"><summary>Data of “{}”</summary><table><thead><tr><th scope=\"col\"></th><th scope=\"col\">estimate</th><th scope=\"col\">low</th><th scope=\"col\">high</th></tr></thead><tbody>",
        escape(title),
        escape(title)
    );
    for r in rows {
        let _ = write!(
            out,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.label),
            escape(&format_value(r.estimate)),
            escape(&format_value(r.low)),
            escape(&format_value(r.high))
        );
    }
    out.push_str("</tbody></table></details></figure>");
    out
}

/// A horizontal bar chart of non-negative values (e.g. the slowest tests' durations), one row per
/// `(label, value)`, with a table of the values. Non-finite or negative values get no bar.
pub fn bar_chart(title: &str, unit: &str, rows: &[(String, f64)]) -> String {
    const ROW: f64 = 22.0;
    let label_w = 180.0;
    let height = TOP + ROW * rows.len().max(1) as f64 + BOTTOM;
    let hi = extent(rows.iter().map(|r| r.1).filter(|v| *v >= 0.0)).map(|e| e.1).unwrap_or(0.0);
    let (ticks, step) = nice_ticks(0.0, if hi > 0.0 { hi } else { 1.0 }, 5);
    let top = *ticks.last().expect("at least one tick");
    let (x0, x1) = (label_w, WIDTH - RIGHT);
    let sx = |v: f64| scale(v.clamp(0.0, top), 0.0, top, x0, x1);
    let summary = rows.iter().map(|(l, v)| format!("{l}: {}", format_value(*v))).collect::<Vec<_>>().join("; ");
    let summary = if summary.is_empty() { "no data".to_string() } else { summary };
    let mut out = String::new();
    open_figure(&mut out, title, &summary, height);
    let axis_y = height - BOTTOM;
    x_grid(&mut out, &ticks, step, &sx, axis_y);
    let _ = write!(
        out,
        r##"<line x1="{x0:.1}" y1="{TOP:.1}" x2="{x0:.1}" y2="{axis_y:.1}" stroke="#333"/><text x="{x1:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
        height - 4.0,
        escape(unit)
    );
    for (i, (label, v)) in rows.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            x0 - 6.0,
            y + ROW / 2.0 + 4.0,
            escape(label)
        );
        if v.is_finite() && *v >= 0.0 {
            let _ = write!(
                out,
                r##"<rect class="bar" x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#1f77b4"><title>{}</title></rect>"##,
                y + 3.0,
                sx(*v) - x0,
                ROW - 6.0,
                escape(&format!("{label}: {}", format_value(*v)))
            );
        }
    }
    let _ = write!(
        out,
        "</svg><figcaption>{}</figcaption><details class=\"chart-data\"><summary>Data of “{}”</summary><table><thead><tr><th scope=\"col\"></th><th scope=\"col\">{}</th></tr></thead><tbody>",
        escape(title),
        escape(title),
        escape(unit)
    );
    for (label, v) in rows {
        let _ = write!(out, "<tr><th scope=\"row\">{}</th><td>{}</td></tr>", escape(label), escape(&format_value(*v)));
    }
    out.push_str("</tbody></table></details></figure>");
    out
}

/// A small inline line of `values` (oldest first) with no axes, for tables; the `aria-label`
/// says the last value and the range. Non-finite values are skipped.
pub fn sparkline(label: &str, values: &[f64]) -> String {
    const W: f64 = 120.0;
    const H: f64 = 24.0;
    let points: Vec<(f64, f64)> = values.iter().enumerate().map(|(i, v)| (i as f64, *v)).collect();
    let points = downsample(&points, SPARK_POINTS);
    let finite: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.1.is_finite()).collect();
    let text = match (extent(finite.iter().map(|p| p.1)), finite.last()) {
        (Some((lo, hi)), Some(last)) => {
            format!("{label}: last {}, lowest {}, highest {}", format_value(last.1), format_value(lo), format_value(hi))
        }
        _ => format!("{label}: no data"),
    };
    let mut out = format!(
        r#"<svg class="sparkline" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg"><title>{}</title>"#,
        escape(&text),
        escape(&text)
    );
    if let Some((lo, hi)) = extent(finite.iter().map(|p| p.1)) {
        let (xlo, xhi) = (finite[0].0, finite[finite.len() - 1].0);
        let coords: Vec<String> = finite
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", scale(*x, xlo, xhi, 1.0, W - 1.0), scale(*y, lo, hi, H - 2.0, 2.0)))
            .collect();
        let _ = write!(
            out,
            r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>"##,
            coords.join(" ")
        );
    }
    out.push_str("</svg>");
    out
}

/// Opens a chart's `<figure>` and `<svg>` of `height`, with its title and a text summary for
/// screen readers (`aria-label`, `<title>`, `<desc>`).
fn open_figure(out: &mut String, title: &str, summary: &str, height: f64) {
    let _ = write!(
        out,
        r#"<figure class="chart"><svg viewBox="0 0 {WIDTH} {height}" width="100%" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg" font-size="11" font-family="sans-serif"><title>{}</title><desc>{}</desc>"#,
        escape(&format!("{title}: {summary}")),
        escape(title),
        escape(summary)
    );
}

/// Vertical grid lines at `ticks` along a horizontal value axis, each labelled below `axis_y`.
fn x_grid(out: &mut String, ticks: &[f64], step: f64, sx: &dyn Fn(f64) -> f64, axis_y: f64) {
    for t in ticks {
        let x = sx(*t);
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP:.1}" x2="{x:.1}" y2="{axis_y:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            axis_y + 16.0,
            escape(&format_number(*t, step))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: Vec<Series>, markers: Vec<Marker>) -> LineChart {
        LineChart { title: "error rate".into(), y_label: "ratio".into(), x_axis: XAxis::Number, series, markers }
    }

    /// The `d` attribute of the n-th drawn series.
    fn path_of(svg: &str, n: usize) -> String {
        let start = svg.match_indices(r#"<path class="series" d=""#).nth(n).expect("a series path").0 + 24;
        svg[start..start + svg[start..].find('"').expect("closing quote")].to_string()
    }

    #[test]
    fn points_map_to_the_plot_area() {
        // x 0..10 and y 0..10 are already round: the corners of the data are those of the plot.
        let svg =
            line_chart(&chart(vec![Series { name: "canary".into(), points: vec![(0.0, 0.0), (10.0, 10.0)] }], vec![]));
        let d = path_of(&svg, 0);
        assert_eq!(d, format!("M{LEFT:.1},{:.1} L{:.1},{TOP:.1}", HEIGHT - BOTTOM, WIDTH - RIGHT));
        // A point in the middle lands in the middle.
        let svg = line_chart(&chart(
            vec![Series { name: "s".into(), points: vec![(0.0, 0.0), (5.0, 5.0), (10.0, 10.0)] }],
            vec![],
        ));
        let mid = format!("L{:.1},{:.1}", (LEFT + WIDTH - RIGHT) / 2.0, (TOP + HEIGHT - BOTTOM) / 2.0);
        assert!(path_of(&svg, 0).contains(&mid), "{}", path_of(&svg, 0));
    }

    #[test]
    fn an_empty_chart_says_so() {
        let svg = line_chart(&chart(vec![Series { name: "canary".into(), points: vec![] }], vec![]));
        assert!(svg.contains(">no data<"), "{svg}");
        assert!(svg.contains("canary has no data"), "{svg}");
        let svg = line_chart(&chart(vec![], vec![]));
        assert!(svg.contains(">no data<") && !svg.contains("NaN"), "{svg}");
    }

    #[test]
    fn non_finite_values_break_the_line_and_never_reach_a_coordinate() {
        let points = vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 2.0), (3.0, f64::INFINITY), (4.0, 3.0), (f64::NAN, 1.0)];
        let svg = line_chart(&chart(vec![Series { name: "s".into(), points }], vec![]));
        let d = path_of(&svg, 0);
        assert_eq!(d.matches('M').count(), 3, "three segments: {d}");
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        let spark = sparkline("cpu", &[1.0, f64::NAN, f64::NEG_INFINITY, 2.0]);
        assert!(!spark.contains("NaN") && !spark.contains("inf"), "{spark}");
        assert!(spark.contains("cpu: last 2, lowest 1, highest 2"), "{spark}");
    }

    #[test]
    fn every_text_is_escaped() {
        let evil = r#"<script>alert("x")</script>&'"#;
        let svg = line_chart(&LineChart {
            title: evil.into(),
            y_label: evil.into(),
            x_axis: XAxis::Time,
            series: vec![Series { name: evil.into(), points: vec![(1.0e9, 1.0), (1.0e9 + 60.0, 2.0)] }],
            markers: vec![Marker { x: 1.0e9 + 30.0, label: evil.into() }],
        });
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"), "{svg}");
        let bars = interval_chart(evil, evil, &[Interval { label: evil.into(), estimate: 1.0, low: 0.0, high: 2.0 }]);
        assert!(!bars.contains("<script>"), "{bars}");
        assert!(!sparkline(evil, &[1.0]).contains("<script>"));
    }

    #[test]
    fn long_series_are_downsampled_keeping_their_extremes() {
        let mut points: Vec<(f64, f64)> = (0..100_000).map(|i| (i as f64, (i % 7) as f64)).collect();
        points[54_321].1 = 1000.0;
        let kept = downsample(&points, MAX_POINTS);
        assert!(kept.len() <= MAX_POINTS, "{}", kept.len());
        assert!(kept.contains(&(54_321.0, 1000.0)), "the spike is kept");
        assert!(kept.windows(2).all(|w| w[0].0 <= w[1].0), "still in x order");
        let svg = line_chart(&chart(vec![Series { name: "s".into(), points }], vec![]));
        assert!(path_of(&svg, 0).matches(['M', 'L']).count() <= MAX_POINTS);
        // Short series are untouched.
        assert_eq!(downsample(&[(0.0, 1.0), (1.0, 2.0)], MAX_POINTS), vec![(0.0, 1.0), (1.0, 2.0)]);
    }

    #[test]
    fn markers_are_drawn_where_they_happened_and_listed() {
        let svg = line_chart(&chart(
            vec![Series { name: "canary".into(), points: vec![(0.0, 1.0), (10.0, 2.0)] }],
            vec![Marker { x: 5.0, label: "look 3".into() }, Marker { x: 10.0, label: "decision: revert".into() }],
        ));
        let mid = (LEFT + WIDTH - RIGHT) / 2.0;
        assert!(svg.contains(&format!(r#"<line x1="{mid:.1}""#)), "{svg}");
        assert!(svg.contains(">look 3</text>") && svg.contains(">decision: revert</text>"));
        assert!(svg.contains("<li>10: decision: revert</li>"), "{svg}");
    }

    #[test]
    fn ticks_are_round_and_cover_the_data() {
        let (ticks, step) = nice_ticks(0.0, 0.013, 5);
        assert_eq!(step, 0.005);
        assert!(ticks[0] <= 0.0 && *ticks.last().unwrap() >= 0.013);
        assert_eq!(format_number(0.015, step), "0.015");
        assert_eq!(format_number(3_000_000.0, 1_000_000.0), "3M");
        assert_eq!(format_number(2_500_000.0, 500_000.0), "2500k");
        let (ticks, step) = time_ticks(1000.0, 1000.0 + 600.0);
        assert_eq!(step, 120.0);
        assert!(ticks.iter().all(|t| t % 120.0 == 0.0));
        assert_eq!(clock(3600.0 * 13.0 + 61.0, true), "13:01:01");
    }

    #[test]
    fn a_bar_chart_scales_bars_from_zero() {
        let svg = bar_chart("slowest", "seconds", &[("a<b".into(), 10.0), ("c".into(), 5.0), ("d".into(), f64::NAN)]);
        // Ticks 0..10: the longest bar spans the plot, the next one half of it.
        let full = WIDTH - RIGHT - 180.0;
        assert!(svg.contains(&format!(r#"width="{full:.1}""#)), "{svg}");
        assert!(svg.contains(&format!(r#"width="{:.1}""#, full / 2.0)), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 2, "no bar for a value that is not a number");
        assert!(svg.contains("a&lt;b") && !svg.contains("a<b") && !svg.contains("NaN"), "{svg}");
        assert!(bar_chart("none", "s", &[]).contains("no data"));
    }

    #[test]
    fn an_interval_chart_draws_the_estimate_its_interval_and_zero() {
        let svg = interval_chart(
            "lift of B",
            "lift, %",
            &[
                Interval { label: "B".into(), estimate: 5.0, low: -5.0, high: 15.0 },
                Interval { label: "C".into(), estimate: f64::NAN, low: f64::NAN, high: f64::NAN },
                Interval { label: "D".into(), estimate: 2.0, low: f64::NEG_INFINITY, high: 4.0 },
            ],
        );
        // Ticks -5..15 in steps of 5 (zero included): zero sits a quarter of the way along.
        let zero = 140.0 + (WIDTH - RIGHT - 140.0) * 0.25;
        assert!(svg.contains(&format!(r#"<line class="zero" x1="{zero:.1}""#)), "{svg}");
        assert!(svg.contains(r#"<circle class="estimate" cx="382.0""#), "estimate 5 at the middle: {svg}");
        assert!(svg.contains(">no estimate<"));
        assert!(svg.contains("<td>−∞</td>"), "an unbounded end is said: {svg}");
        assert!(!svg.contains("NaN"));
    }
}
