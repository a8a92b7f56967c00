//! The report as labelled rows ([`rows`]): one list of what a run measured, which the text
//! summary printed at the end ([`Report::summary`]) and the HTML page (`html`) both render, so
//! the two never disagree.

use std::fmt::Write as _;

use crate::report::Report;
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
    if !r.failures.is_empty() {
        rows.push(Row::Heading("failures by cause:"));
        rows.extend(r.failures.iter().map(|(k, n)| Row::Count(*n, k.clone())));
    }
    cpu_rows(r, &mut rows);
    if t.aborted {
        rows.push(Row::Note("the run did not end by itself and was aborted"));
    }
    rows.push(Row::Field(
        "result",
        if r.ok {
            "ok: every client did what was asked"
        } else {
            "NOT OK: see failures above"
        }
        .into(),
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
    rows.push(Row::Field(
        "fanout",
        format!(
            "{} published ({} accepted) at {}/s to {} subscribers{}",
            f.published,
            f.accepted,
            f.rate,
            f.subscribers,
            f.server_subscribers
                .map_or(String::new(), |n| format!(" (server says {n})"))
        ),
    ));
    rows.push(Row::More(format!(
        "{} deliveries ({:.0}/s): expected {}, lost {} over {} messages, {} duplicated, {} malformed",
        f.deliveries,
        f.deliveries_per_s,
        f.accounting.expected,
        f.accounting.lost,
        f.accounting.seqs_with_loss,
        f.duplicates,
        f.malformed
    )));
    rows.push(Row::Field("delivery", fmt_percentiles(&f.latency)));
    rows.push(Row::Sub(
        "uncorrected".into(),
        fmt_percentiles(&f.latency_uncorrected),
    ));
    rows.push(Row::Field(
        "publisher",
        format!(
            "worst lag behind schedule {:.0} us; request {}",
            f.publisher_max_lag_us,
            fmt_percentiles(&f.publish_request)
        ),
    ));
    rows.extend(
        f.publish_failures
            .iter()
            .map(|(k, n)| Row::Count(*n, k.clone())),
    );
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
                "cpu {} s, rss {} before, {} with all connections open, {} after",
                tg.cpu_s.map_or("?".to_string(), |c| format!("{c:.2}")),
                mib(tg.rss_before),
                mib(tg.rss_at_ramp_end),
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
            };
        }
        s
    }
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
