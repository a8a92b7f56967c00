//! The report as labelled rows ([`rows`]): one list of what a run measured, which the text
//! summary printed at the end ([`Report::summary`]) and the HTML page (`html`) both render, so
//! the two never disagree.

use std::fmt::Write as _;

use crate::args::{PublisherKind, Scenario};
use crate::report::{FanoutReport, Report};
use crate::stats::Percentiles;

/// One line of the summary.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// What ran, against what.
    Title(String),
    /// A labelled figure.
    Field(&'static str, String),
    /// A further line of the figure above.
    More(String),
    /// A labelled detail of the figure above.
    Sub(String, String),
    /// A section heading (failures by cause).
    Heading(&'static str),
    /// A count and its cause.
    Count(u64, String),
    /// A remark of its own.
    Note(&'static str),
    /// A small table: its caption, column heads and rows of cells (the per-node figures).
    Table(&'static str, Vec<&'static str>, Vec<Vec<String>>),
}

/// Every row of the report, in order.
pub fn rows(r: &Report) -> Vec<Row> {
    let mut rows = vec![title(r)];
    let (t, c) = (&r.timing, &r.connect);
    rows.push(Row::Field(
        "connections",
        format!(
            "{} connected, {} failed, {} closed cleanly; {} open at once after {:.2} s",
            c.connected, c.failed, c.closed_clean, t.open_at_ramp_end, t.ramp_s
        ),
    ));
    rows.push(Row::Field("handshake", fmt_percentiles(&c.handshake)));
    echo_rows(r, &mut rows);
    fanout_rows(r, &mut rows);
    node_rows(r, &mut rows);
    if !r.failures.is_empty() {
        rows.push(Row::Heading("failures by cause:"));
        rows.extend(r.failures.iter().map(|(k, n)| Row::Count(*n, k.clone())));
    }
    cpu_rows(r, &mut rows);
    if t.aborted {
        rows.push(Row::Note("the run did not end by itself and was aborted"));
    }
    let reasons = r.not_ok_reasons();
    rows.push(Row::Field(
        "result",
        match (r.ok, reasons.is_empty()) {
            (true, _) => "ok: every client did what was asked".into(),
            (false, true) => "NOT OK: see failures above".into(),
            (false, false) => format!("NOT OK: {}", reasons.join("; ")),
        },
    ));
    rows
}

fn title(r: &Report) -> Row {
    Row::Title(format!(
        "loadgen: {:?} against {} with {} connections ({} process{}, {} thread{})",
        r.scenario,
        r.url,
        r.conns,
        r.procs,
        if r.procs == 1 { "" } else { "es" },
        r.threads,
        if r.threads == 1 { "" } else { "s" }
    ))
}

fn echo_rows(r: &Report, rows: &mut Vec<Row>) {
    if let Some(e) = &r.echo {
        rows.push(Row::Field(
            "echo",
            format!(
                "{:.0} msgs/s over {:.1} s ({} x {} B in flight per connection)",
                e.msgs_per_s, r.timing.run_s, e.pipeline, e.size
            ),
        ));
        rows.push(Row::More(format!(
            "{} sent, {} verified, {} mismatched, {} unanswered",
            e.sent, e.verified, e.mismatched, e.unanswered
        )));
        rows.push(Row::Field("round trip", fmt_percentiles(&e.rtt)));
    }
    if let Some(e) = &r.echo_check {
        rows.push(Row::Field(
            "echo check",
            format!(
                "{} sent, {} verified, {} mismatched, {} unanswered",
                e.sent, e.verified, e.mismatched, e.unanswered
            ),
        ));
        rows.push(Row::Field("round trip", fmt_percentiles(&e.rtt)));
    }
}

fn fanout_rows(r: &Report, rows: &mut Vec<Row>) {
    let Some(f) = &r.fanout else {
        return;
    };
    let server = f
        .server_subscribers
        .map_or(String::new(), |n| format!(" (server says {n})"));
    let a = &f.answers;
    if r.scenario == Scenario::Flood {
        rows.push(Row::Field(
            "flood",
            format!(
                "{} x {} B sent in {:.2} s to {} subscribers{server}: {:.0} answers/s, {:.0} accepted/s",
                f.published, f.size, f.publish_s, f.subscribers, f.requests_per_s, f.accepted_per_s
            ),
        ));
    } else {
        rows.push(Row::Field(
            "fanout",
            format!(
                "{} published ({} accepted) at {}/s to {} subscribers{server}",
                f.published, f.accepted, f.rate, f.subscribers
            ),
        ));
    }
    rows.push(Row::More(format!(
        "answers: {} ok, {} refused 503 Retry-After (busy), {} refused 503 other, {} other status, {} unanswered{}",
        a.ok,
        a.busy,
        a.refused,
        a.other,
        a.unanswered,
        if f.unsent > 0 {
            format!(", {} never sent", f.unsent)
        } else {
            String::new()
        }
    )));
    delivery_rows(f, rows);
    let lag = match r.scenario {
        Scenario::Flood => String::new(),
        _ => format!(
            "worst lag behind schedule {:.0} us; ",
            f.publisher_max_lag_us
        ),
    };
    let window = match f.publisher {
        PublisherKind::Http => format!(
            "up to {} of {} requests in flight; request ",
            f.max_in_flight, f.publish_window
        ),
        PublisherKind::Ws => "send ".to_string(),
    };
    rows.push(Row::Field(
        "publisher",
        format!("{lag}{window}{}", fmt_percentiles(&f.publish_request)),
    ));
    rows.push(Row::More(format!(
        "publisher thread cpu {:.2} s user + {:.2} s sys = {:.0}% of one core over {:.1} s",
        f.publisher_cpu_user_s, f.publisher_cpu_sys_s, f.publisher_cpu_pct, f.publish_s
    )));
    rows.extend(
        f.publish_failures
            .iter()
            .map(|(k, n)| Row::Count(*n, k.clone())),
    );
}

/// What the subscribers received, and what is still missing at the end.
fn delivery_rows(f: &FanoutReport, rows: &mut Vec<Row>) {
    let acc = &f.accounting;
    rows.push(Row::More(format!(
        "{} deliveries ({:.0}/s): expected {}, missing at the end {} over {} messages, {} duplicated, {} out of order, {} malformed",
        f.deliveries,
        f.deliveries_per_s,
        acc.expected,
        acc.lost,
        acc.seqs_with_loss,
        f.duplicates,
        f.out_of_order,
        f.malformed
    )));
    if acc.subscribers_cut_off > 0 || !f.server_closes.is_empty() {
        let closes: Vec<String> = f
            .server_closes
            .iter()
            .map(|(code, n)| {
                format!(
                    "{n} with {code}{}",
                    if code == "1008" {
                        " (slow consumer)"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        rows.push(Row::More(format!(
            "{} subscribers ended early (closed by the server: {}); {} deliveries not due after that",
            acc.subscribers_cut_off,
            if closes.is_empty() { "none".to_string() } else { closes.join(", ") },
            acc.cut_off
        )));
    }
    rows.push(Row::Field("delivery", fmt_percentiles(&f.latency)));
    rows.push(Row::Sub(
        "uncorrected".into(),
        fmt_percentiles(&f.latency_uncorrected),
    ));
}

/// Several `--url`s: one row per node, after the totals. Fan-out and flood show what each
/// node's subscribers received; the other scenarios each node's connections and handshakes.
fn node_rows(r: &Report, rows: &mut Vec<Row>) {
    if r.nodes.is_empty() {
        return;
    }
    let publishes = r.scenario.publishes();
    let head = if publishes {
        vec![
            "node",
            "url",
            "conns",
            "connected",
            "subscribers",
            "deliveries",
            "lost",
            "dup",
            "out-of-order",
            "p50",
            "p99",
            "max",
        ]
    } else {
        vec!["node", "url", "conns", "connected", "p50", "p99", "max"]
    };
    let body = r
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut cells = vec![
                (i + 1).to_string(),
                n.url.clone(),
                n.conns.to_string(),
                n.connected.to_string(),
            ];
            let latency = if publishes {
                cells.extend(
                    [
                        n.subscribers,
                        n.deliveries,
                        n.lost,
                        n.duplicates,
                        n.out_of_order,
                    ]
                    .map(|v| v.to_string()),
                );
                &n.latency
            } else {
                &n.handshake
            };
            cells.extend([latency.p50_us, latency.p99_us, latency.max_us].map(|us| {
                if latency.count == 0 {
                    "-".to_string()
                } else {
                    fmt_us(us)
                }
            }));
            cells
        })
        .collect();
    let caption = if publishes {
        "per node (delivery latency):"
    } else {
        "per node (handshake latency):"
    };
    rows.push(Row::Table(caption, head, body));
}

fn cpu_rows(r: &Report, rows: &mut Vec<Row>) {
    let cpu = &r.cpu;
    rows.push(Row::Field(
        "cpu",
        format!(
            "loadgen {:.2} s user + {:.2} s sys = {:.0}% of one core over {:.1} s ({} cores){}",
            cpu.loadgen_user_s,
            cpu.loadgen_sys_s,
            cpu.loadgen_pct,
            r.timing.wall_s,
            cpu.cores,
            cpu.targets_pct
                .map_or(String::new(), |p| format!("; target {p:.0}%"))
        ),
    ));
    let mib = |b: Option<u64>| {
        b.map_or("?".to_string(), |b| {
            format!("{:.1} MiB", b as f64 / 1048576.0)
        })
    };
    for tg in &cpu.targets {
        rows.push(Row::Sub(
            format!("pid {}:", tg.pid),
            format!(
                "cpu {} s, rss {} before, {} with all connections open, peak {}, {} after",
                tg.cpu_s.map_or("?".to_string(), |c| format!("{c:.2}")),
                mib(tg.rss_before),
                mib(tg.rss_at_ramp_end),
                mib(tg.rss_peak),
                mib(tg.rss_after)
            ),
        ));
    }
}

impl Report {
    /// The human summary printed at the end of a run: the rows as aligned text.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for row in rows(self) {
            let _ = match row {
                Row::Title(t) => writeln!(s, "{t}"),
                Row::Field(label, v) => writeln!(s, "  {label:<14}{v}"),
                Row::More(v) => writeln!(s, "{:16}{v}", ""),
                Row::Sub(label, v) => writeln!(s, "    {label} {v}"),
                Row::Heading(h) => writeln!(s, "  {h}"),
                Row::Count(n, cause) => writeln!(s, "    {n:>8}  {cause}"),
                Row::Note(t) => writeln!(s, "  {t}"),
                Row::Table(caption, head, body) => write_table(&mut s, caption, &head, &body),
            };
        }
        s
    }
}

/// A table as aligned text: the caption, then the heads and each row, columns padded to the
/// widest cell (the url left-aligned, numbers right-aligned).
fn write_table(
    s: &mut String,
    caption: &str,
    head: &[&str],
    body: &[Vec<String>],
) -> std::fmt::Result {
    writeln!(s, "  {caption}")?;
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in body {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |s: &mut String, cells: Vec<&str>| {
        let mut out = String::from("    ");
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let cell = if i == 1 {
                format!("{cell:<w$}")
            } else {
                format!("{cell:>w$}")
            };
            out.push_str(&cell);
            out.push_str("  ");
        }
        writeln!(s, "{}", out.trim_end())
    };
    line(s, head.to_vec())?;
    for row in body {
        line(s, row.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

fn fmt_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.0} us")
    }
}

/// "p50 .. p90 .. p99 .. p99.9 .. max (n)".
pub fn fmt_percentiles(p: &Percentiles) -> String {
    if p.count == 0 {
        return "no samples".to_string();
    }
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
        fmt_us(p.p50_us),
        fmt_us(p.p90_us),
        fmt_us(p.p99_us),
        fmt_us(p.p999_us),
        fmt_us(p.max_us),
        p.count
    )
}

#[cfg(test)]
#[path = "summary_tests.rs"]
mod tests;
