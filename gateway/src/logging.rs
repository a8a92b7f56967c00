//! The operator's log: one line on stderr per event worth attention (start, listen, refusals in
//! aggregate, drain, reload, errors), as text or JSON (`--log-format`), filtered by
//! `--log-level`. The library logs through the `log` facade and never on the per-message path;
//! the binary installs [`Logger`]. Without it (tests, embedders) nothing is printed unless the
//! embedder installs a logger of its own.
//!
//! Text: `2026-11-30T04:50:12.345Z INFO listening on 0.0.0.0:80 (...)`. JSON: one object per
//! line, `{"time": ..., "level": "info", "target": "gateway::server", "message": ...}`, for log
//! shippers.

use std::io::Write;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `TIME LEVEL message`, for people and journald.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            _ => Err(format!("'{s}' is not a log format (text or json)")),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Text => "text",
            Format::Json => "json",
        })
    }
}

/// The default `--log-level`.
pub const DEFAULT_LEVEL: LevelFilter = LevelFilter::Info;

/// Parses `--log-level`: off, error, warn, info, debug or trace.
pub fn parse_level(s: &str) -> Result<LevelFilter, String> {
    LevelFilter::from_str(s)
        .map_err(|_| format!("'{s}' is not a log level (off, error, warn, info, debug, trace)"))
}

/// The logger the binary installs.
#[derive(Debug)]
pub struct Logger {
    format: Format,
    level: LevelFilter,
}

impl Logger {
    /// Installs the logger for the process (once; a second call changes nothing and errs).
    pub fn install(format: Format, level: LevelFilter) -> Result<(), log::SetLoggerError> {
        log::set_boxed_logger(Box::new(Logger { format, level }))?;
        log::set_max_level(level);
        Ok(())
    }

    /// One line for `record`, without its newline.
    fn line(&self, record: &Record<'_>, now: SystemTime) -> String {
        let time = rfc3339(now);
        match self.format {
            Format::Text => format!("{time} {:<5} {}", record.level(), record.args()),
            Format::Json => serde_json::json!({
                "time": time,
                "level": record.level().as_str().to_ascii_lowercase(),
                "target": record.target(),
                "message": record.args().to_string(),
            })
            .to_string(),
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = self.line(record, SystemTime::now());
        line.push('\n');
        // One write per line, so lines from several threads never interleave. A closed
        // stderr must not take the gateway down: the error is dropped.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// `time` as RFC 3339 UTC with milliseconds: `2026-11-30T04:50:12.345Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Whether `level` is logged (for work done only to build a log line).
pub fn enabled(level: Level) -> bool {
    level <= log::max_level()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps() {
        let at = |s: u64, ms: u64| rfc3339(UNIX_EPOCH + Duration::from_millis(s * 1000 + ms));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(at(1_796_013_012, 345), "2026-11-30T04:30:12.345Z");
        assert_eq!(at(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn lines() {
        let args = format_args!("listening on {}", "127.0.0.1:80");
        let record = Record::builder()
            .args(args)
            .level(Level::Warn)
            .target("gateway::server")
            .build();
        let now = UNIX_EPOCH + Duration::from_secs(1);
        let text = Logger {
            format: Format::Text,
            level: LevelFilter::Info,
        };
        assert_eq!(
            text.line(&record, now),
            "1970-01-01T00:00:01.000Z WARN  listening on 127.0.0.1:80"
        );
        let json = Logger {
            format: Format::Json,
            level: LevelFilter::Info,
        };
        let v: serde_json::Value = serde_json::from_str(&json.line(&record, now)).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["target"], "gateway::server");
        assert_eq!(v["message"], "listening on 127.0.0.1:80");
        assert_eq!(v["time"], "1970-01-01T00:00:01.000Z");
        assert!(json.enabled(&Metadata::builder().level(Level::Info).build()));
        assert!(!json.enabled(&Metadata::builder().level(Level::Debug).build()));
        assert_eq!(parse_level("debug"), Ok(LevelFilter::Debug));
        assert!(parse_level("loud").is_err());
        assert_eq!("json".parse::<Format>(), Ok(Format::Json));
        assert!("xml".parse::<Format>().is_err());
    }
}
