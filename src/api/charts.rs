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
    let (w, h) = (720.0_f64, 220.0_f64);
    let (left, right, top, bottom) = (48.0, 12.0, 16.0, 28.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let n = values.len().max(1) as f64;
    let slot = plot_w / n;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}"><title>{t}</title><rect width="{w}" height="{h}" fill="#fff"/>"##,
        t = escape(title)
    );
    // A middle gridline only when it lands on a whole number.
    let fracs: &[f64] = if max >= 2.0 {
        &[0.0, 0.5, 1.0]
    } else {
        &[0.0, 1.0]
    };
    for &frac in fracs {
        let y = top + plot_h * (1.0 - frac);
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" stroke="#e3e6ea"/><text x="{tx}" y="{ty:.1}" font-size="11" text-anchor="end" fill="#6b7480">{v}</text>"##,
            x2 = w - right,
            tx = left - 6.0,
            ty = y + 4.0,
            v = (max * frac).round() as u64
        );
    }
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
    svg.push_str("</g>");
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
}
