//! The results: one markdown table (printed, and written with the machine and date to
//! bench/results/latest.md), raw numbers in latest.json, and an SVG bar chart.

use std::fmt::Write;

/// One line of the table.
pub struct Row {
    pub scenario: String,
    pub measure: String,
    /// litefs-proxy's number.
    pub proxy: String,
    /// What it is compared with (nginx, the primary, LiteFS's documented figure, ...).
    pub baseline: String,
    pub ratio: String,
    pub goal: String,
    /// None: no goal for this line.
    pub met: Option<bool>,
}

impl Row {
    pub fn new(scenario: &str, measure: &str) -> Row {
        Row {
            scenario: scenario.into(),
            measure: measure.into(),
            proxy: String::new(),
            baseline: String::new(),
            ratio: String::new(),
            goal: String::new(),
            met: None,
        }
    }
}

pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str("| scenario | measure | litefs-proxy | compared with | ratio | goal | met |\n");
    s.push_str("|---|---|---:|---|---:|---|:-:|\n");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.scenario, r.measure, r.proxy, r.baseline, r.ratio, r.goal, met
        );
    }
    s
}

/// Milliseconds from microseconds, 2 significant decimals below 10 ms.
pub fn ms(us: f64) -> String {
    let ms = us / 1000.0;
    if ms < 1.0 {
        format!("{ms:.3} ms")
    } else if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

pub fn secs(s: f64) -> String {
    format!("{s:.3} s")
}

/// 12345.6 -> "12,346".
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "n/a".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile of a small sample (failover trials).
pub fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// A bar group: label, then (series, value) bars.
pub struct Group {
    pub label: String,
    pub bars: Vec<(String, f64)>,
}

/// One panel of grouped bars, drawn by hand: title, unit, groups.
pub struct Panel {
    pub title: String,
    pub unit: String,
    pub groups: Vec<Group>,
}

const COLORS: [&str; 4] = ["#8c8c8c", "#2b7bba", "#e07b39", "#4caf50"];
/// Panels per row of the chart.
const COLUMNS: usize = 3;

/// Panels in a grid, each with its own scale and legend (colors by series within a panel).
pub fn svg(title: &str, panels: &[Panel]) -> String {
    let (pw, ph, gap, top, below) = (380.0, 240.0, 50.0, 50.0, 80.0);
    let cols = panels.len().clamp(1, COLUMNS);
    let rows = panels.len().div_ceil(COLUMNS).max(1);
    let cell_h = top + ph + below;
    let width = gap + cols as f64 * (pw + gap);
    let height = 40.0 + rows as f64 * cell_h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{gap}" y="24" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    for (pi, p) in panels.iter().enumerate() {
        let x0 = gap + (pi % COLUMNS) as f64 * (pw + gap);
        let y0 = 40.0 + (pi / COLUMNS) as f64 * cell_h + top;
        let mut series: Vec<&str> = Vec::new();
        for g in &p.groups {
            for (name, _) in &g.bars {
                if !series.contains(&name.as_str()) {
                    series.push(name);
                }
            }
        }
        let max = p
            .groups
            .iter()
            .flat_map(|g| g.bars.iter().map(|b| b.1))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.15;
        let _ = writeln!(
            s,
            r#"<text x="{x0}" y="{}" font-weight="bold">{} ({})</text>"#,
            y0 - 14.0,
            esc(&p.title),
            esc(&p.unit)
        );
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{}" x2="{}" y2="{}" stroke="#333"/>"##,
            y0 + ph,
            x0 + pw,
            y0 + ph
        );
        let gw = pw / p.groups.len().max(1) as f64;
        for (gi, g) in p.groups.iter().enumerate() {
            let gx = x0 + gi as f64 * gw;
            let bw = (gw - 20.0) / g.bars.len().max(1) as f64;
            for (bi, (name, v)) in g.bars.iter().enumerate() {
                let ci = series.iter().position(|n| n == name).unwrap_or(0);
                let v = if v.is_finite() { *v } else { 0.0 };
                let h = v / max * ph;
                let x = gx + 10.0 + bi as f64 * bw;
                let y = y0 + ph - h;
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                    bw - 2.0,
                    COLORS[ci % COLORS.len()],
                    esc(name),
                    fmt_val(v)
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
                    x + (bw - 2.0) / 2.0,
                    y - 3.0,
                    fmt_val(v)
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                gx + gw / 2.0,
                y0 + ph + 16.0,
                esc(&g.label)
            );
        }
        for (i, name) in series.iter().enumerate() {
            let x = x0 + (i % 2) as f64 * (pw / 2.0);
            let y = y0 + ph + 38.0 + (i / 2) as f64 * 16.0;
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="{}" width="11" height="11" fill="{}"/><text x="{}" y="{y}">{}</text>"#,
                y - 10.0,
                COLORS[i % COLORS.len()],
                x + 15.0,
                esc(name)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn fmt_val(v: f64) -> String {
    if v >= 1000.0 {
        thousands(v)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0]), 1.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
        assert_eq!(ms(250.0), "0.250 ms");
    }

    #[test]
    fn svg_is_well_formed_enough() {
        let s = svg(
            "t",
            &[Panel {
                title: "p".into(),
                unit: "req/s".into(),
                groups: vec![Group {
                    label: "32".into(),
                    bars: vec![("a".into(), 1.0), ("b<".into(), 2.0)],
                }],
            }],
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("b&lt;"));
    }
}
