//! Changing the configuration of a running server (SIGHUP in the binary), without dropping a
//! connection.
//!
//! What can change safely changes: origins, the publish token, token keys, connection and
//! message limits, timeouts, the drain window, the hub's limits, the flush interval; the TLS
//! certificate and key files are reread (the same paths). What the server was built
//! around (the address, the workers, the feeds, history sizes, deflate) needs a restart: a
//! reload that changes it keeps the running value and says so, rather than failing.
//!
//! The current configuration is one `Arc<Config>` behind a lock, with a version number.
//! Workers keep their own `Arc` and compare the version (one relaxed atomic load) at the top
//! of each turn of their loop; nothing on the per-message path takes the lock. A new value
//! applies to what happens after the worker picks it up: deadlines already armed keep their
//! time, a handshake is checked against the policy of its moment.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::Config;

/// The configuration that reloads replace; see the module documentation.
#[derive(Debug)]
pub(crate) struct LiveConfig {
    current: Mutex<Arc<Config>>,
    version: AtomicU64,
}

impl LiveConfig {
    pub fn new(config: Config) -> LiveConfig {
        LiveConfig {
            current: Mutex::new(Arc::new(config)),
            version: AtomicU64::new(0),
        }
    }

    /// The version of [`LiveConfig::current`]; it changes with every reload.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<Config> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies what may change of `new` and returns the report with the result.
    pub fn reload(&self, new: &Config) -> (Arc<Config>, Reloaded) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let (merged, report) = merge(&current, new);
        let merged = Arc::new(merged);
        *current = merged.clone();
        self.version.fetch_add(1, Ordering::AcqRel);
        (merged, report)
    }
}

/// What a reload did, by flag name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Settings that changed and now apply.
    pub changed: Vec<&'static str>,
    /// Settings that differ in the new configuration but need a restart; the running value
    /// was kept.
    pub needs_restart: Vec<&'static str>,
    /// What could not be applied (an unusable token key: the keys in force stay).
    pub errors: Vec<String>,
}

/// `old` with every setting that may change taken from `new`, and what differed.
fn merge(old: &Config, new: &Config) -> (Config, Reloaded) {
    let mut merged = old.clone();
    let mut report = Reloaded::default();
    // Destructured so that a field added to `Config` does not compile until it is sorted
    // into one of the two lists below.
    let Config {
        listen,
        workers,
        reuse_port,
        steer_by_cpu,
        backlog,
        max_conns,
        max_conns_per_ip,
        max_message,
        max_queued,
        handshake_timeout,
        ping_interval,
        pong_timeout,
        close_grace,
        drain,
        allowed_origins,
        subprotocols,
        deflate,
        history,
        history_memory,
        max_topics,
        topic_ttl,
        topic_burst,
        topic_rate,
        max_backlog,
        bus,
        bus_grace,
        flush_interval,
        publish_token,
        jwt_secret,
        jwt_public_key,
        jwt_leeway,
        trust_loopback,
        watch,
        tail,
        commands,
        max_commands,
        tls,
    } = new;
    macro_rules! live {
        ($($field:ident => $flag:literal),* $(,)?) => {$(
            if merged.$field != *$field {
                merged.$field = $field.clone();
                report.changed.push($flag);
            }
        )*};
    }
    macro_rules! restart {
        ($($field:ident => $flag:literal),* $(,)?) => {$(
            if old.$field != *$field {
                report.needs_restart.push($flag);
            }
        )*};
    }
    live! {
        max_conns => "max-conns",
        max_conns_per_ip => "max-conns-per-ip",
        max_message => "max-message",
        max_queued => "max-queued",
        handshake_timeout => "handshake-timeout",
        ping_interval => "ping-interval",
        pong_timeout => "pong-timeout",
        close_grace => "close-grace",
        drain => "drain",
        allowed_origins => "allow-origin",
        subprotocols => "protocol",
        publish_token => "publish-token",
        jwt_secret => "jwt-secret",
        jwt_public_key => "jwt-public-key",
        jwt_leeway => "jwt-leeway",
        max_topics => "max-topics",
        topic_ttl => "topic-ttl",
        topic_burst => "topic-burst",
        topic_rate => "topic-rate",
        max_backlog => "max-backlog",
        flush_interval => "flush-interval",
        max_commands => "max-commands",
        bus_grace => "bus-grace",
    }
    restart! {
        listen => "listen",
        workers => "workers",
        reuse_port => "reuse-port",
        steer_by_cpu => "steer-by-cpu",
        backlog => "backlog",
        deflate => "deflate",
        history => "history",
        history_memory => "history-memory",
        trust_loopback => "trust-loopback",
        watch => "watch",
        tail => "tail",
        commands => "command",
        tls => "tls-cert/tls-key",
        bus => "bus",
    }
    (merged, report)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn safe_settings_change_and_the_others_are_kept() {
        let live = LiveConfig::new(Config::default());
        assert_eq!(live.version(), 0);
        let new = Config {
            max_conns: 5,
            allowed_origins: vec!["https://a.example".into()],
            publish_token: Some("t".into()),
            ping_interval: Duration::from_secs(3),
            listen: "127.0.0.1:1".parse().unwrap(),
            workers: 99,
            ..Config::default()
        };
        let (now, report) = live.reload(&new);
        assert_eq!(live.version(), 1);
        assert_eq!(
            report.changed,
            [
                "max-conns",
                "ping-interval",
                "allow-origin",
                "publish-token"
            ]
        );
        assert_eq!(report.needs_restart, ["listen", "workers"]);
        assert_eq!(now.max_conns, 5);
        assert_eq!(now.publish_token.as_deref(), Some("t"));
        assert_eq!(now.listen, Config::default().listen, "kept");
        assert_eq!(now.workers, Config::default().workers, "kept");
        assert!(Arc::ptr_eq(&now, &live.current()));
        let (_, again) = live.reload(&new);
        assert_eq!(
            again,
            Reloaded {
                changed: vec![],
                needs_restart: vec!["listen", "workers"],
                errors: vec![],
            }
        );
    }
}
