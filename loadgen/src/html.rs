//! The `--report FILE.html` page: one self-contained file with the run's figures (the rows of
//! the text summary, see `summary`) and three charts drawn as inline SVG (latency percentile curves, connections over time, messages or
//! deliveries per second over time).
//!
//! Nothing is loaded from anywhere: no scripts, no fonts, no stylesheets, no images. The page
//! opens from disk, offline, in any browser, and can be attached to an issue as it is.

use std::fmt::Write as _;

use crate::report::{Report, Sample};
use crate::summary::{Row, rows};

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 45.0;

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

/// One line of a chart.
#[derive(Debug)]
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// How an axis maps values: linear from 0, or log10.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scale {
    Linear,
    Log,
}

/// Tick positions and labels of an axis.
#[derive(Debug)]
struct Axis {
    label: String,
    min: f64,
    max: f64,
    scale: Scale,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    fn pos(&self, v: f64) -> f64 {
        let (v, min, max) = match self.scale {
            Scale::Linear => (v, self.min, self.max),
            Scale::Log => (v.max(self.min).log10(), self.min.log10(), self.max.log10()),
        };
        if max > min {
            (v - min) / (max - min)
        } else {
            0.0
        }
    }

    /// A linear axis from 0 to a round number above `max`.
    fn linear(label: &str, max: f64, unit: &str) -> Axis {
        let max = if max > 0.0 { max } else { 1.0 };
        let raw = max / 5.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * mag);
        let top = (max / step).ceil() * step;
        let ticks = (0..=((top / step).round() as usize))
            .map(|i| {
                let v = i as f64 * step;
                (v, format!("{}{unit}", short(v)))
            })
            .collect();
        Axis {
            label: label.to_string(),
            min: 0.0,
            max: top,
            scale: Scale::Linear,
            ticks,
        }
    }

    /// A log10 axis over whole decades covering `lo..hi` (microseconds).
    fn log_us(label: &str, lo: f64, hi: f64) -> Axis {
        let lo = 10f64.powf(lo.max(0.1).log10().floor());
        let hi = 10f64.powf(hi.max(lo * 10.0).log10().ceil());
        let mut ticks = Vec::new();
        let mut v = lo;
        while v <= hi * 1.0001 {
            ticks.push((v, fmt_time_us(v)));
            v *= 10.0;
        }
        Axis {
            label: label.to_string(),
            min: lo,
            max: hi,
            scale: Scale::Log,
            ticks,
        }
    }
}

/// 1500 -> "1.5k", 2000000 -> "2M".
fn short(v: f64) -> String {
    let (x, suffix) = if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let text = format!("{x:.1}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{suffix}")
}

fn fmt_time_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{}s", short(us / 1e6))
    } else if us >= 1e3 {
        format!("{}ms", short(us / 1e3))
    } else {
        format!("{}µs", short(us))
    }
}

/// Draws a line chart as an `<svg>` element.
fn chart(title: &str, x: &Axis, y: &Axis, series: &[Series<'_>]) -> String {
    let pw = WIDTH - LEFT - RIGHT;
    let ph = HEIGHT - TOP - BOTTOM;
    let px = |v: f64| LEFT + x.pos(v).clamp(0.0, 1.0) * pw;
    let py = |v: f64| TOP + ph - y.pos(v).clamp(0.0, 1.0) * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{t}"><title>{t}</title>"#,
        t = esc(title)
    );
    let _ = write!(
        s,
        r#"<text x="{LEFT}" y="18" class="title">{}</text>"#,
        esc(title)
    );
    for (v, label) in &y.ticks {
        let yy = py(*v);
        let _ = write!(
            s,
            r#"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#,
            LEFT + pw,
            LEFT - 6.0,
            yy + 4.0,
            esc(label)
        );
    }
    for (v, label) in &x.ticks {
        let xx = px(*v);
        let _ = write!(
            s,
            r#"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" class="grid"/><text x="{xx:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"#,
            TOP + ph,
            TOP + ph + 16.0,
            esc(label)
        );
    }
    let _ = write!(
        s,
        r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" class="frame"/><text x="{:.1}" y="{:.1}" class="axis" text-anchor="middle">{}</text><text x="14" y="{:.1}" class="axis" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 6.0,
        esc(&x.label),
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(&y.label)
    );
    let mut legend_x = LEFT + pw;
    for sr in series.iter().rev() {
        legend_x -= 12.0 + 7.0 * sr.name.len() as f64 + 20.0;
        let _ = write!(
            s,
            r#"<rect x="{legend_x:.1}" y="9" width="12" height="4" fill="{c}"/><text x="{:.1}" y="15" class="tick">{}</text>"#,
            legend_x + 16.0,
            esc(sr.name),
            c = sr.color
        );
        if sr.points.is_empty() {
            continue;
        }
        let path: Vec<String> = sr
            .points
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", px(*a), py(*b)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            path.join(" "),
            sr.color
        );
    }
    s.push_str("</svg>");
    s
}

/// Percentile to the "nines" position: 90 -> 1, 99 -> 2, ..., 100 (max) a little past 5.
fn nines(p: f64) -> f64 {
    if p >= 100.0 {
        5.3
    } else {
        (-(1.0 - p / 100.0).log10()).min(5.3)
    }
}

fn latency_chart(r: &Report) -> Option<String> {
    let mut series = Vec::new();
    let mut add = |name, color, pts: &Vec<(f64, f64)>| {
        if !pts.is_empty() {
            series.push(Series {
                name,
                color,
                points: pts.iter().map(|(p, us)| (nines(*p), *us)).collect(),
            });
        }
    };
    add("handshake", "#7a5195", &r.curves.handshake);
    add("echo round trip", "#ef5675", &r.curves.rtt);
    add("fan-out delivery", "#003f5c", &r.curves.delivery);
    if series.is_empty() {
        return None;
    }
    let all = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (lo, hi) = all.fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let x = Axis {
        label: "percentile".into(),
        min: 0.0,
        max: 5.3,
        scale: Scale::Linear,
        ticks: [
            (0.0, "0%"),
            (1.0, "90%"),
            (2.0, "99%"),
            (3.0, "99.9%"),
            (4.0, "99.99%"),
            (5.0, "99.999%"),
        ]
        .iter()
        .map(|(v, l)| (*v, l.to_string()))
        .collect(),
    };
    let y = Axis::log_us("latency (log)", lo, hi);
    Some(chart("Latency by percentile", &x, &y, &series))
}

fn timeline_chart(
    r: &Report,
    title: &str,
    label: &str,
    pick: fn(&Sample) -> f64,
    color: &str,
    name: &str,
) -> String {
    let points: Vec<(f64, f64)> = r.timeline.iter().map(|s| (s.t_s, pick(s))).collect();
    let tmax = points.last().map_or(1.0, |p| p.0).max(0.5);
    let vmax = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let x = Axis::linear("seconds since start", tmax, "s");
    let y = Axis::linear(label, vmax, "");
    chart(
        title,
        &x,
        &y,
        &[Series {
            name,
            color,
            points,
        }],
    )
}

/// Title, axis label, the figure a sample gives, and the legend of the rate chart.
type RateChart = (&'static str, &'static str, fn(&Sample) -> f64, &'static str);

/// The report's rows (the same as the text summary's) as table rows.
fn table(r: &Report) -> String {
    let mut t = String::new();
    for row in rows(r) {
        let _ = match row {
            Row::Title(v) => write!(
                t,
                "<tr><td colspan=\"2\"><strong>{}</strong></td></tr>",
                esc(&v)
            ),
            Row::Field(k, v) => write!(t, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v)),
            Row::More(v) => write!(t, "<tr><th></th><td>{}</td></tr>", esc(&v)),
            Row::Sub(k, v) => write!(t, "<tr><th></th><td>{} {}</td></tr>", esc(&k), esc(&v)),
            Row::Heading(h) => write!(
                t,
                "<tr><th colspan=\"2\" class=\"bad\">{}</th></tr>",
                esc(h)
            ),
            Row::Count(n, c) => write!(t, "<tr><th>{n}</th><td>{}</td></tr>", esc(&c)),
            Row::Note(v) => write!(
                t,
                "<tr><td colspan=\"2\" class=\"bad\">{}</td></tr>",
                esc(v)
            ),
            Row::Table(caption, head, body) => write!(
                t,
                "<tr><td colspan=\"2\">{}</td></tr>",
                inner_table(caption, &head, &body)
            ),
        };
    }
    t
}

/// A table of its own inside the figures (the per-node rows).
fn inner_table(caption: &str, head: &[&str], body: &[Vec<String>]) -> String {
    let mut t = format!(
        "<table class=\"nodes\"><caption>{}</caption><tr>",
        esc(caption)
    );
    for h in head {
        let _ = write!(t, "<th>{}</th>", esc(h));
    }
    t.push_str("</tr>");
    for row in body {
        t.push_str("<tr>");
        for cell in row {
            let _ = write!(t, "<td>{}</td>", esc(cell));
        }
        t.push_str("</tr>");
    }
    t.push_str("</table>");
    t
}

/// Renders the whole page.
pub fn render(r: &Report) -> String {
    let mut page = String::new();
    page.push_str(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
    );
    let _ = write!(
        page,
        "<title>loadgen: {} x {}</title>",
        esc(&format!("{:?}", r.scenario).to_lowercase()),
        r.conns
    );
    page.push_str(
        "<style>body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:800px;color:#222}\
         table{border-collapse:collapse;margin:1em 0}td,th{text-align:left;padding:3px 10px;border-bottom:1px solid #ddd;vertical-align:top}\
         th{font-weight:600;white-space:nowrap}svg{display:block;margin:1.5em 0;max-width:100%;height:auto}\
         .grid{stroke:#e5e5e5}.frame{fill:none;stroke:#999}.tick{font-size:11px;fill:#555}\
         .axis{font-size:12px;fill:#333}.title{font-size:14px;font-weight:600;fill:#222}\
         .bad{color:#b00}.nodes{margin:0}.nodes caption{text-align:left;font-weight:600}\
         .nodes td{text-align:right}.nodes td:nth-child(2){text-align:left}</style></head><body>\n",
    );
    let _ = writeln!(page, "<h1>loadgen report</h1>\n<table>{}</table>", table(r));
    if let Some(c) = latency_chart(r) {
        page.push_str(&c);
        page.push('\n');
    }
    page.push_str(&timeline_chart(
        r,
        "Connections open over time",
        "open connections",
        |s| s.open as f64,
        "#2f4b7c",
        "open",
    ));
    page.push('\n');
    // The connect scenario sends no messages: its third chart would be a flat line.
    let rate_chart: Option<RateChart> = match r.scenario {
        crate::args::Scenario::Fanout | crate::args::Scenario::Flood => Some((
            "Deliveries per second over time",
            "deliveries/s",
            |s| s.deliveries_per_s,
            "deliveries/s",
        )),
        crate::args::Scenario::Echo => Some((
            "Verified echoes per second over time",
            "messages/s",
            |s| s.msgs_per_s,
            "msgs/s",
        )),
        crate::args::Scenario::Connect => None,
    };
    if let Some((title, label, pick, name)) = rate_chart {
        page.push_str(&timeline_chart(r, title, label, pick, "#ffa600", name));
        page.push('\n');
    }
    page.push_str(
        "<p><small>Latencies are HdrHistogram percentiles (3 significant digits). Fan-out latency \
         is measured from each message's intended send time (corrected for coordinated \
         omission); timestamps are CLOCK_MONOTONIC, shared by every process on the machine. \
         Every figure is in the --json output.</small></p>\n</body></html>\n",
    );
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    /// Checks that tags open and close in order (the page is hand-built, so this is its parser
    /// test): void elements and self-closed tags excepted.
    fn assert_well_formed(page: &str) {
        let void = ["meta", "line", "rect", "polyline", "br"];
        let mut stack: Vec<String> = Vec::new();
        let mut rest = page;
        while let Some(i) = rest.find('<') {
            rest = &rest[i + 1..];
            let end = rest.find('>').expect("every tag is closed");
            let tag = &rest[..end];
            rest = &rest[end + 1..];
            if tag.starts_with('!') {
                continue;
            }
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if let Some(closing) = tag.strip_prefix('/') {
                let _ = closing;
                let open = stack.pop().unwrap_or_default();
                assert_eq!(open, name, "</{name}> closes <{open}>");
            } else if !tag.ends_with('/') && !void.contains(&name.as_str()) {
                stack.push(name);
            }
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
    }

    #[test]
    fn page_is_self_contained_and_well_formed() {
        for scenario in ["echo", "fanout", "connect"] {
            let page = render(&sample_report(scenario));
            assert!(page.starts_with("<!doctype html>"));
            // Latency, connections, and (except for connect) messages or deliveries per second.
            let charts = if scenario == "connect" { 2 } else { 3 };
            assert_eq!(page.matches("<svg").count(), charts, "{scenario}");
            assert!(page.contains("<polyline"));
            for banned in [
                "http://", "https://", "src=", "<script", "<link", "@import", "url(",
            ] {
                assert!(!page.contains(banned), "{scenario}: page contains {banned}");
            }
            assert_well_formed(&page);
        }
        let page = render(&sample_report("echo"));
        assert!(page.contains("Verified echoes per second"));
        assert!(page.contains("99.9%"));
        let page = render(&sample_report("fanout"));
        assert!(page.contains("Deliveries per second"));
    }

    #[test]
    fn text_is_escaped() {
        let mut r = sample_report("connect");
        r.url = "ws://x/<script>&\"".into();
        r.failures.insert("<b>".into(), 1);
        let page = render(&r);
        assert!(!page.contains("<script>") && !page.contains("<b>"));
        assert!(page.contains("&lt;script&gt;&amp;&quot;"));
        assert_well_formed(&page);
    }

    #[test]
    fn axes() {
        let a = Axis::linear("x", 7.3, "");
        assert_eq!(a.max, 8.0);
        assert_eq!(a.ticks.len(), 5);
        let l = Axis::log_us("y", 35.0, 12_000.0);
        assert_eq!((l.min, l.max), (10.0, 100_000.0));
        assert_eq!(l.ticks.len(), 5);
        assert!((l.pos(1000.0) - 0.5).abs() < 1e-9);
        assert_eq!(short(1500.0), "1.5k");
        assert_eq!(short(2_000_000.0), "2M");
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
    }
}
