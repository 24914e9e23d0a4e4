//! SVG charts drawn on the server: no script, no CDN, readable at any size.

use std::fmt::Write;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A bar chart of `values` (oldest first) with a y axis from 0 to the maximum and labels under
/// the first, middle and last bar.
pub fn bars(values: &[u64], x_labels: [&str; 3], title: &str) -> String {
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let (mut svg, [left, top, plot_w, plot_h]) = frame(title, max, "", x_labels);
    let slot = plot_w / values.len().max(1) as f64;
    svg.push_str(r##"<g class="series" fill="#2458a6">"##);
    for (i, v) in values.iter().enumerate() {
        let bar_h = plot_h * (*v as f64) / max;
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{bar_h:.1}"><title>{v}</title></rect>"#,
            x = left + slot * i as f64 + slot * 0.1,
            y = top + plot_h - bar_h,
            bw = slot * 0.8
        );
    }
    svg.push_str("</g></svg>");
    svg
}

/// The frame every chart over time shares: background, y gridlines at 0, half (when the
/// maximum is 2 or more, so counts get no half line) and max (labelled with `unit`), x labels
/// under the first, middle and last slot. Returns the SVG so far and the plot's (left, top,
/// width, height).
fn frame(title: &str, max: f64, unit: &str, x_labels: [&str; 3]) -> (String, [f64; 4]) {
    let (w, h) = (720.0_f64, 220.0_f64);
    let (left, right, top, bottom) = (56.0, 12.0, 24.0, 28.0);
    let (plot_w, plot_h) = (w - left - right, h - top - bottom);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}"><title>{t}</title><rect width="{w}" height="{h}" fill="#fff"/>"##,
        t = escape(title)
    );
    let fracs: &[f64] = if max >= 2.0 {
        &[0.0, 0.5, 1.0]
    } else {
        &[0.0, 1.0]
    };
    for &frac in fracs {
        let y = top + plot_h * (1.0 - frac);
        let v = max * frac;
        let v = if v >= 10.0 || v == 0.0 {
            format!("{}", v.round())
        } else {
            format!("{v:.1}")
        };
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" stroke="#e3e6ea"/><text x="{tx}" y="{ty:.1}" font-size="11" text-anchor="end" fill="#6b7480">{v}{unit}</text>"##,
            x2 = w - right,
            tx = left - 6.0,
            ty = y + 4.0,
        );
    }
    for (label, x, anchor) in [
        (x_labels[0], left, "start"),
        (x_labels[1], left + plot_w / 2.0, "middle"),
        (x_labels[2], w - right, "end"),
    ] {
        let _ = write!(
            svg,
            r##"<text x="{x:.1}" y="{y}" font-size="11" text-anchor="{anchor}" fill="#6b7480">{l}</text>"##,
            y = h - 8.0,
            l = escape(label)
        );
    }
    (svg, [left, top, plot_w, plot_h])
}

/// A legend across the top: one coloured square and name per series.
fn legend(svg: &mut String, names: &[(&str, &str)]) {
    let mut x = 56.0;
    for (name, colour) in names {
        let _ = write!(
            svg,
            r##"<rect x="{x}" y="6" width="10" height="10" fill="{colour}"/><text x="{tx}" y="15" font-size="11" fill="#333">{n}</text>"##,
            tx = x + 14.0,
            n = escape(name)
        );
        x += 24.0 + 7.0 * name.len() as f64;
    }
}

/// Stacked bars: per slot, each series on top of the previous (e.g. succeeded, failed, dead).
pub fn stacked_bars(series: &[(&str, &str, &[i64])], x_labels: [&str; 3], title: &str) -> String {
    let slots = series.first().map_or(0, |s| s.2.len());
    let totals: Vec<i64> = (0..slots)
        .map(|i| series.iter().map(|s| s.2[i]).sum())
        .collect();
    let max = totals.iter().copied().max().unwrap_or(0).max(1) as f64;
    let (mut svg, [left, top, plot_w, plot_h]) = frame(title, max, "", x_labels);
    let slot = plot_w / slots.max(1) as f64;
    for (name, colour, values) in series {
        let _ = write!(
            svg,
            r#"<g class="series" data-series="{}" fill="{colour}">"#,
            escape(name)
        );
        for i in 0..slots {
            let below: i64 = series
                .iter()
                .take_while(|s| s.0 != *name)
                .map(|s| s.2[i])
                .sum();
            let v = values[i];
            if v == 0 {
                continue;
            }
            let y = top + plot_h * (1.0 - (below + v) as f64 / max);
            let _ = write!(
                svg,
                r#"<rect x="{x:.2}" y="{y:.2}" width="{bw:.2}" height="{bh:.2}"><title>{v}</title></rect>"#,
                x = left + slot * i as f64,
                bw = (slot * 0.9).max(0.5),
                bh = plot_h * v as f64 / max
            );
        }
        svg.push_str("</g>");
    }
    let names: Vec<(&str, &str)> = series.iter().map(|s| (s.0, s.1)).collect();
    legend(&mut svg, &names);
    svg.push_str("</svg>");
    svg
}

/// Lines (e.g. p50, p95, p99 in milliseconds); a slot without a value breaks the line.
pub fn lines(
    series: &[(&str, &str, &[Option<f64>])],
    x_labels: [&str; 3],
    title: &str,
    unit: &str,
) -> String {
    let slots = series.first().map_or(0, |s| s.2.len());
    let max = series
        .iter()
        .flat_map(|s| s.2.iter().flatten())
        .copied()
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let (mut svg, [left, top, plot_w, plot_h]) = frame(title, max, unit, x_labels);
    let slot = plot_w / slots.max(1) as f64;
    for (name, colour, values) in series {
        let mut d = String::new();
        let mut pen_down = false;
        for (i, v) in values.iter().enumerate() {
            match v {
                Some(v) => {
                    let x = left + slot * (i as f64 + 0.5);
                    let y = top + plot_h * (1.0 - v / max);
                    let _ = write!(d, "{}{x:.2},{y:.2} ", if pen_down { "L" } else { "M" });
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        let _ = write!(
            svg,
            r#"<path class="series" data-series="{n}" d="{d}" fill="none" stroke="{colour}" stroke-width="1.5"/>"#,
            n = escape(name),
            d = d.trim_end()
        );
    }
    let names: Vec<(&str, &str)> = series.iter().map(|s| (s.0, s.1)).collect();
    legend(&mut svg, &names);
    svg.push_str("</svg>");
    svg
}

/// One day of a forecast: the point and its interval.
pub struct ForecastDay {
    pub day: chrono::NaiveDate,
    pub yhat: f64,
    pub lower: f64,
    pub upper: f64,
}

/// Recent history (a line), then the forecast (a dashed line) inside its interval band, on one
/// time axis with the first history day, the first forecast day and the last day labelled.
pub fn forecast(history: &[(chrono::NaiveDate, f64)], days: &[ForecastDay], title: &str) -> String {
    let (w, h) = (760.0_f64, 260.0_f64);
    let (left, right, top, bottom) = (48.0, 12.0, 16.0, 28.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let Some(first) = history
        .first()
        .map(|(d, _)| *d)
        .or(days.first().map(|d| d.day))
    else {
        return String::new();
    };
    let last = days
        .last()
        .map(|d| d.day)
        .or(history.last().map(|(d, _)| *d))
        .unwrap_or(first);
    let span = ((last - first).num_days().max(1)) as f64;
    let max = history
        .iter()
        .map(|(_, v)| *v)
        .chain(days.iter().map(|d| d.upper))
        .fold(1.0_f64, f64::max);
    let x = |d: chrono::NaiveDate| left + plot_w * (d - first).num_days() as f64 / span;
    let y = |v: f64| top + plot_h * (1.0 - v.max(0.0) / max);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}"><title>{t}</title><rect width="{w}" height="{h}" fill="#fff"/>"##,
        t = escape(title)
    );
    for frac in [0.0, 0.5, 1.0] {
        let gy = top + plot_h * (1.0 - frac);
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{x2}" y1="{gy:.1}" y2="{gy:.1}" stroke="#e3e6ea"/><text x="{tx}" y="{ty:.1}" font-size="11" text-anchor="end" fill="#6b7480">{v:.0}</text>"##,
            x2 = w - right,
            tx = left - 6.0,
            ty = gy + 4.0,
            v = max * frac
        );
    }
    if !days.is_empty() {
        let mut band = String::new();
        for d in days {
            let _ = write!(band, "{:.1},{:.1} ", x(d.day), y(d.upper));
        }
        for d in days.iter().rev() {
            let _ = write!(band, "{:.1},{:.1} ", x(d.day), y(d.lower));
        }
        let _ = write!(
            svg,
            r##"<polygon class="band" points="{}" fill="#2458a6" fill-opacity="0.15"><title>prediction interval</title></polygon>"##,
            band.trim_end()
        );
    }
    let line = |points: &mut dyn Iterator<Item = (f64, f64)>| -> String {
        points
            .map(|(px, py)| format!("{px:.1},{py:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = write!(
        svg,
        r##"<polyline class="series history" points="{}" fill="none" stroke="#3a3f45" stroke-width="1.5"><title>sales</title></polyline>"##,
        line(&mut history.iter().map(|(d, v)| (x(*d), y(*v))))
    );
    let _ = write!(
        svg,
        r##"<polyline class="series forecast" points="{}" fill="none" stroke="#2458a6" stroke-width="2" stroke-dasharray="5 3"><title>forecast</title></polyline>"##,
        line(&mut days.iter().map(|d| (x(d.day), y(d.yhat))))
    );
    let mut labels = vec![(first, "start")];
    if let Some(d) = days.first() {
        // Ends where the forecast starts, so it never runs into the last label.
        labels.push((d.day, "end"));
    }
    labels.push((last, "end"));
    for (d, anchor) in labels {
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{}" font-size="11" text-anchor="{anchor}" fill="#6b7480">{d}</text>"##,
            x(d),
            h - 8.0
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_maximum_and_escape_text() {
        let svg = bars(&[0, 5, 10], ["a", "b<", "c"], "T & T");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<rect x=").count(), 3);
        assert!(svg.contains("T &amp; T") && svg.contains("b&lt;"));
        assert!(
            svg.contains(">10</text>"),
            "the axis tops out at the maximum"
        );
    }

    #[test]
    fn the_forecast_chart_draws_history_forecast_and_band() {
        let day = |d: u32| chrono::NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
        let history: Vec<_> = (1..=10).map(|d| (day(d), d as f64)).collect();
        let days: Vec<ForecastDay> = (11..=14)
            .map(|d| ForecastDay {
                day: day(d),
                yhat: 10.0,
                lower: 8.0,
                upper: 20.0,
            })
            .collect();
        let svg = forecast(&history, &days, "SKU <1>");
        assert!(
            svg.contains(r#"class="series history""#) && svg.contains(r#"class="series forecast""#)
        );
        assert!(svg.contains(r#"class="band""#));
        assert!(svg.contains("SKU &lt;1&gt;"));
        // The band's top is the highest value: the axis tops out at 20.
        assert!(svg.contains(">20</text>"));
        assert_eq!(svg.matches("2026-11-").count(), 3, "three date labels");
        assert_eq!(forecast(&[], &[], "empty"), "");
    }
}
