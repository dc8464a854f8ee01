//! Hand-written SVG charts: the percentile spectrum of one run (latency against
//! percentile, on the usual "nines" axis) and the capacity chart (latency
//! percentiles against offered rate, with the SLO limits).
//!
//! This module must never draw a point that was not measured (no smoothing, no
//! interpolation beyond straight segments between measured points).

use crate::capacity::CapacityReport;
use crate::hist::Hist;
use std::fmt::Write as _;

const W: f64 = 800.0;
const H: f64 = 480.0;
const L: f64 = 70.0;
const R: f64 = 150.0;
const T: f64 = 40.0;
const B: f64 = 50.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// One line of a chart: name and `(x, y_ms)` points.
type Series = (String, Vec<(f64, f64)>);

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart with a log-scale y axis in milliseconds.
fn chart(
    title: &str,
    x_label: &str,
    x_ticks: &[(f64, String)],
    x_range: (f64, f64),
    series: &[Series],
    hlines: &[(String, f64)],
) -> String {
    let ys = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .chain(hlines.iter().map(|(_, y)| *y))
        .filter(|y| *y > 0.0);
    let (mut lo, mut hi) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    if lo > hi {
        (lo, hi) = (0.001, 1.0);
    }
    let (ylo, yhi) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let (x0, x1) = (
        x_range.0,
        if x_range.1 > x_range.0 {
            x_range.1
        } else {
            x_range.0 + 1.0
        },
    );
    let px = |x: f64| L + (x - x0) / (x1 - x0) * (W - L - R);
    let py = |y: f64| {
        let v = y.max(10f64.powf(ylo)).log10();
        H - B - (v - ylo) / (yhi - ylo) * (H - T - B)
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        (W - R + L) / 2.0,
        esc(title)
    );
    let mut e = ylo as i32;
    while e <= yhi as i32 {
        let y = py(10f64.powi(e));
        let label = format!("{}ms", 10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{L}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - R,
            L - 6.0,
            y + 4.0,
            label
        );
        e += 1;
    }
    for (x, label) in x_ticks {
        let xx = px(*x);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{T}" y2="{}" stroke="#eee"/><text x="{xx:.1}" y="{}" text-anchor="middle">{}</text>"##,
            H - B,
            H - B + 16.0,
            esc(label)
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{L}" y="{T}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        W - L - R,
        H - T - B
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (W - R + L) / 2.0,
        H - 12.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">latency (log scale)</text>"#,
        H / 2.0,
        H / 2.0
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for &(x, y) in pts.iter().filter(|_| pts.len() <= 40) {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#,
                px(x),
                py(y)
            );
        }
        let ly = T + 16.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            W - R + 10.0,
            W - R + 30.0,
            W - R + 35.0,
            ly + 4.0,
            esc(name)
        );
    }
    for (i, (name, y)) in hlines.iter().enumerate() {
        let yy = py(*y);
        let _ = writeln!(
            s,
            r#"<line x1="{L}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="black" stroke-dasharray="6,4"/><text x="{}" y="{:.1}">{}</text>"#,
            W - R,
            W - R + 10.0,
            yy + 4.0 + 12.0 * i as f64,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// x coordinate of quantile `q` on the "nines" axis: log10(1 / (1 - q)).
fn nines(q: f64) -> f64 {
    (1.0 / (1.0 - q.min(0.999_999))).log10()
}

/// The percentile spectrum of one run: one line per histogram given.
pub fn spectrum_svg(title: &str, hists: &[(&str, &Hist)]) -> String {
    let series: Vec<Series> = hists
        .iter()
        .map(|(n, h)| {
            (
                n.to_string(),
                h.spectrum()
                    .into_iter()
                    .map(|(q, us)| (nines(q), us as f64 / 1000.0))
                    .collect(),
            )
        })
        .collect();
    let maxx = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.0))
        .fold(2.0f64, f64::max)
        .ceil();
    let names = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"];
    let ticks: Vec<(f64, String)> = (0..=maxx as usize)
        .map(|i| (i as f64, names[i.min(6)].to_string()))
        .collect();
    chart(title, "percentile", &ticks, (0.0, maxx), &series, &[])
}

/// The capacity chart: p50, p90, p99, p99.9 and max against offered rate, with
/// the SLO limits as dashed lines.
pub fn capacity_svg(title: &str, rep: &CapacityReport, slo: &crate::slo::Slo) -> String {
    type Pick = fn(&crate::hist::Percentiles) -> u64;
    let pick: [(&str, Pick); 5] = [
        ("p50", |p| p.p50_us),
        ("p90", |p| p.p90_us),
        ("p99", |p| p.p99_us),
        ("p99.9", |p| p.p999_us),
        ("max", |p| p.max_us),
    ];
    let series: Vec<Series> = pick
        .iter()
        .map(|(n, f)| {
            (
                n.to_string(),
                rep.points
                    .iter()
                    .map(|p| (p.result.offered, f(&p.result.response) as f64 / 1000.0))
                    .collect(),
            )
        })
        .collect();
    let maxx = rep.closed_max.max(1.0);
    let ticks: Vec<(f64, String)> = (0..=5)
        .map(|i| {
            let x = maxx * f64::from(i) / 5.0;
            (x, format!("{x:.0}"))
        })
        .collect();
    let hl: Vec<(String, f64)> = slo
        .0
        .iter()
        .map(|o| (format!("SLO {}", o.name), o.limit.as_secs_f64() * 1000.0))
        .collect();
    chart(
        title,
        "offered rate (req/s)",
        &ticks,
        (0.0, maxx),
        &series,
        &hl,
    )
}
