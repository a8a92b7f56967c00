//! The `gateway` binary: parses flags into a [`Config`], raises the open-file limit, and runs
//! the server until it is killed. Every flag's default is read from [`Config::default`], so
//! `--help` and the library cannot disagree.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use clap::Parser;
use gateway::cli::parse_duration;
use gateway::proto::DeflateConfig;
use gateway::server::config::format_duration;
use gateway::server::tls::TlsFiles;
use gateway::server::{Config, Server};
use gateway::topics::HistoryConfig;

/// Where the flags' defaults come from. `workers` and `max_conns` are not taken from here:
/// they depend on the machine and on the open-file limit, raised after parsing.
static DEFAULTS: LazyLock<Config> = LazyLock::new(Config::default);

/// A WebSocket push gateway: echo and more on one port, for tens of thousands of connections.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value_t = DEFAULTS.listen)]
    listen: SocketAddr,
    /// Worker threads, each with its own event loop [default: number of CPUs].
    #[arg(long)]
    workers: Option<usize>,
    /// Share the port with other gateway processes (SO_REUSEPORT), to go past one process's
    /// open-file limit.
    #[arg(long)]
    reuse_port: bool,
    /// Most open connections; more are answered 503 [default: open-file limit - 64].
    #[arg(long)]
    max_conns: Option<usize>,
    /// Open connections one client address may hold (more get 503); 0: no limit.
    #[arg(long, default_value_t = DEFAULTS.max_conns_per_ip)]
    max_conns_per_ip: usize,
    /// Largest message accepted in bytes (after decompression); larger ones close with 1009.
    #[arg(long, default_value_t = DEFAULTS.max_message)]
    max_message: usize,
    /// Outbound bytes queued per connection before the gateway stops reading from it.
    #[arg(long, default_value_t = DEFAULTS.max_queued)]
    max_queued: usize,
    /// Drop connections that have not finished the handshake in this time (e.g. 10s, 500ms).
    #[arg(long, default_value_t = FlagDuration(DEFAULTS.handshake_timeout))]
    handshake_timeout: FlagDuration,
    /// Ping a connection after this much silence.
    #[arg(long, default_value_t = FlagDuration(DEFAULTS.ping_interval))]
    ping_interval: FlagDuration,
    /// Drop a connection from which nothing arrived for this long.
    #[arg(long, default_value_t = FlagDuration(DEFAULTS.pong_timeout))]
    pong_timeout: FlagDuration,
    /// Time allowed to finish a close handshake.
    #[arg(long, default_value_t = FlagDuration(DEFAULTS.close_grace))]
    close_grace: FlagDuration,
    /// On SIGTERM or SIGINT: stop accepting, send close 1001 to every WebSocket spread over
    /// this window, let closes and queued output finish, exit 0. A second signal exits at once.
    #[arg(long, default_value_t = FlagDuration(DEFAULTS.drain))]
    drain: FlagDuration,
    /// Also allow browser pages from this Origin (repeatable; `*` allows any). Default: only
    /// same-origin pages (an `Origin` must name the `Host`); clients without `Origin` are
    /// always allowed.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allow_origin: Vec<String>,
    /// Subprotocol to offer (repeatable), in order of preference.
    #[arg(long = "protocol", value_name = "NAME")]
    protocol: Vec<String>,
    /// Refuse permessage-deflate.
    #[arg(long)]
    no_deflate: bool,
    /// Bearer token that `POST /publish/..` from non-loopback clients must present. Without
    /// one, only loopback clients may publish.
    #[arg(long, env = "GATEWAY_PUBLISH_TOKEN", hide_env_values = true)]
    publish_token: Option<String>,
    /// Topics clients may create in all (subscriptions, chat rooms, publishing); past it new
    /// names are refused.
    #[arg(long, default_value_t = DEFAULTS.max_topics)]
    max_topics: usize,
    /// Bytes of published messages waiting for one worker past which publishers are pushed
    /// back (503 with Retry-After, an error on /ws, chat clients paused).
    #[arg(long, default_value_t = DEFAULTS.max_backlog)]
    max_backlog: usize,
    /// Under a high message rate, write each subscriber at most once per this interval, with
    /// everything it is owed (a message after a quiet spell goes out at once); 0 disables.
    #[arg(long, default_value_t = FlagDuration(DEFAULTS.flush_interval))]
    flush_interval: FlagDuration,
    /// Messages kept per topic for `since` recovery.
    #[arg(long, default_value_t = DEFAULTS.history.messages)]
    history: usize,
    /// Payload bytes kept per topic for `since` recovery.
    #[arg(long, default_value_t = DEFAULTS.history.bytes)]
    history_bytes: usize,
    /// Payload bytes kept for `since` recovery by all topics together; past it the oldest
    /// history across topics goes first.
    #[arg(long, default_value_t = DEFAULTS.history_memory)]
    history_memory: usize,
    /// Ask clients to compress every message on its own (saves a 32 KiB window per chatty
    /// connection, costs compression ratio).
    #[arg(long)]
    deflate_no_client_context: bool,
    /// Watch a file (repeatable): its whole content is pushed to topic `file/NAME` whenever it
    /// changes; see `/file/NAME` and `/ws/file/NAME`. A missing file is reported to subscribers
    /// and followed once it appears.
    #[arg(long, value_name = "NAME=PATH", value_parser = parse_feed)]
    watch: Vec<(String, PathBuf)>,
    /// Tail a log (repeatable): each line appended to it is pushed to topic `log/NAME`; see
    /// `/ws/log/NAME?last=N`. Truncation and rotation are followed.
    #[arg(long, value_name = "NAME=PATH", value_parser = parse_feed)]
    tail: Vec<(String, PathBuf)>,
    /// Serve TLS only (https://, wss://) with this certificate chain (PEM, leaf first); needs
    /// --tls-key. Reread on reload. [default: none, plain TCP]
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1); needs --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// Parses `NAME=PATH` for `--watch` and `--tail`: NAME is one topic segment.
fn parse_feed(s: &str) -> Result<(String, PathBuf), String> {
    let Some((name, path)) = s.split_once('=') else {
        return Err(format!("'{s}' is not NAME=PATH (try config=/etc/app.conf)"));
    };
    if !gateway::feeds::is_valid_feed_name(name) {
        return Err(format!(
            "'{name}' is not a feed name: use 1 to 128 of A-Z a-z 0-9 _ . - (no slash)"
        ));
    }
    if path.is_empty() {
        return Err(format!("'{s}' has no path after '='"));
    }
    Ok((name.to_owned(), PathBuf::from(path)))
}

impl Args {
    /// The configuration these flags ask for; anything they leave unsaid comes from
    /// `defaults`, which is [`Config::default`] taken after raising the open-file limit.
    fn into_config(self, defaults: Config) -> Config {
        Config {
            listen: self.listen,
            workers: self.workers.unwrap_or(defaults.workers).max(1),
            reuse_port: self.reuse_port || defaults.reuse_port,
            max_conns: self.max_conns.unwrap_or(defaults.max_conns),
            max_conns_per_ip: self.max_conns_per_ip,
            max_message: self.max_message,
            max_queued: self.max_queued,
            handshake_timeout: self.handshake_timeout.0,
            ping_interval: self.ping_interval.0,
            pong_timeout: self.pong_timeout.0,
            close_grace: self.close_grace.0,
            drain: self.drain.0,
            allowed_origins: self.allow_origin,
            subprotocols: self.protocol,
            deflate: DeflateConfig {
                enabled: defaults.deflate.enabled && !self.no_deflate,
                request_client_no_context_takeover: defaults
                    .deflate
                    .request_client_no_context_takeover
                    || self.deflate_no_client_context,
                ..defaults.deflate
            },
            history: HistoryConfig {
                messages: self.history.max(1),
                bytes: self.history_bytes,
            },
            history_memory: self.history_memory,
            publish_token: self.publish_token.filter(|t| !t.is_empty()),
            max_topics: self.max_topics,
            max_backlog: self.max_backlog,
            flush_interval: self.flush_interval.0,
            watch: self.watch,
            tail: self.tail,
            tls: match (self.tls_cert, self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                _ => defaults.tls,
            },
            ..defaults
        }
    }
}

/// A duration flag: read by [`parse_duration`] (`10s`, `500ms`), shown in `--help` by
/// [`format_duration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlagDuration(Duration);

impl fmt::Display for FlagDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl FromStr for FlagDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(FlagDuration)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let limits = gateway::sys::raise_nofile_limit();
    let config = args.into_config(Config::default());
    match Server::start(config.clone()) {
        Ok(server) => {
            let files = match limits {
                Ok((soft, _)) => format!("open-file limit {soft}"),
                Err(e) => format!("open-file limit unknown: {e}"),
            };
            eprintln!(
                "gateway: listening on {} ({} workers, max {} connections, {files})",
                server.local_addr(),
                config.workers,
                config.max_conns
            );
            drain_on_signals(&server);
            server.join();
            eprintln!("gateway: drained, exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM or SIGINT starts a graceful drain; a second one exits at once.
fn drain_on_signals(server: &gateway::server::ServerHandle) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gateway: cannot handle signals ({e}); SIGTERM will kill without a drain");
            return;
        }
    };
    let drainer = server.drainer();
    let spawned = std::thread::Builder::new()
        .name("gw-signals".into())
        .spawn(move || {
            let mut seen = signals.forever();
            if let Some(sig) = seen.next() {
                eprintln!("gateway: signal {sig}: draining (a second signal exits at once)");
                drainer.drain();
            }
            if let Some(sig) = seen.next() {
                eprintln!("gateway: signal {sig} during the drain: exiting now");
                std::process::exit(1);
            }
        });
    if let Err(e) = spawned {
        eprintln!("gateway: cannot start the signal thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    /// Parses `argv` (after the program name) as the binary would, but blind to
    /// `GATEWAY_PUBLISH_TOKEN`, so a token in the test's environment cannot leak in.
    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        let cmd = Args::command().mut_arg("publish_token", |a| a.env(None));
        let matches =
            cmd.try_get_matches_from(std::iter::once("gateway").chain(argv.iter().copied()))?;
        Args::from_arg_matches(&matches)
    }

    /// Asserts `got == want` field by field. The destructuring names every field, so a field
    /// added to `Config`, `DeflateConfig` or `HistoryConfig` fails to compile here until it is
    /// compared.
    fn assert_same(got: &Config, want: &Config) {
        let Config {
            listen,
            workers,
            reuse_port,
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
            max_backlog,
            flush_interval,
            publish_token,
            trust_loopback,
            watch,
            tail,
            tls,
        } = got;
        assert_eq!(*listen, want.listen, "listen");
        assert_eq!(*workers, want.workers, "workers");
        assert_eq!(*reuse_port, want.reuse_port, "reuse_port");
        assert_eq!(*backlog, want.backlog, "backlog");
        assert_eq!(*max_conns, want.max_conns, "max_conns");
        assert_eq!(*max_conns_per_ip, want.max_conns_per_ip, "max_conns_per_ip");
        assert_eq!(*max_message, want.max_message, "max_message");
        assert_eq!(*max_queued, want.max_queued, "max_queued");
        assert_eq!(
            *handshake_timeout, want.handshake_timeout,
            "handshake_timeout"
        );
        assert_eq!(*ping_interval, want.ping_interval, "ping_interval");
        assert_eq!(*pong_timeout, want.pong_timeout, "pong_timeout");
        assert_eq!(*close_grace, want.close_grace, "close_grace");
        assert_eq!(*drain, want.drain, "drain");
        assert_eq!(*allowed_origins, want.allowed_origins, "allowed_origins");
        assert_eq!(*subprotocols, want.subprotocols, "subprotocols");
        let DeflateConfig {
            enabled,
            request_client_no_context_takeover,
            level,
            min_size,
        } = deflate;
        assert_eq!(*enabled, want.deflate.enabled, "deflate.enabled");
        assert_eq!(
            *request_client_no_context_takeover, want.deflate.request_client_no_context_takeover,
            "deflate.request_client_no_context_takeover"
        );
        assert_eq!(*level, want.deflate.level, "deflate.level");
        assert_eq!(*min_size, want.deflate.min_size, "deflate.min_size");
        let HistoryConfig { messages, bytes } = history;
        assert_eq!(*messages, want.history.messages, "history.messages");
        assert_eq!(*bytes, want.history.bytes, "history.bytes");
        assert_eq!(*history_memory, want.history_memory, "history_memory");
        assert_eq!(*max_topics, want.max_topics, "max_topics");
        assert_eq!(*max_backlog, want.max_backlog, "max_backlog");
        assert_eq!(*flush_interval, want.flush_interval, "flush_interval");
        assert_eq!(*publish_token, want.publish_token, "publish_token");
        assert_eq!(*trust_loopback, want.trust_loopback, "trust_loopback");
        assert_eq!(*watch, want.watch, "watch");
        assert_eq!(*tail, want.tail, "tail");
        assert_eq!(*tls, want.tls, "tls");
    }

    #[test]
    fn empty_command_line_is_the_default() {
        let config = parse(&[]).unwrap().into_config(Config::default());
        assert_same(&config, &Config::default());
    }

    #[test]
    fn flags_override_defaults() {
        let config = parse(&[
            "--max-message",
            "1000",
            "--ping-interval",
            "500ms",
            "--no-deflate",
            "--history",
            "0",
            "--max-conns",
            "77",
        ])
        .unwrap()
        .into_config(Config::default());
        let want = Config {
            max_message: 1000,
            ping_interval: Duration::from_millis(500),
            deflate: DeflateConfig {
                enabled: false,
                ..DeflateConfig::default()
            },
            history: HistoryConfig {
                messages: 1, // at least one message is always kept
                ..HistoryConfig::default()
            },
            max_conns: 77,
            ..Config::default()
        };
        assert_same(&config, &want);
    }

    #[test]
    fn help_shows_the_defaults() {
        let help = Args::command().render_long_help().to_string();
        let d = Config::default();
        for shown in [
            format!("[default: {}]", d.listen),
            format!("[default: {}]", d.max_message),
            format!("[default: {}]", format_duration(d.handshake_timeout)),
            format!("[default: {}]", format_duration(d.pong_timeout)),
            format!("[default: {}]", d.history.messages),
        ] {
            assert!(help.contains(&shown), "{shown} missing from:\n{help}");
        }
    }

    #[test]
    fn flags_parse() {
        let a = Args::try_parse_from([
            "gateway",
            "--listen",
            "0.0.0.0:80",
            "--max-message",
            "16777216",
        ])
        .unwrap();
        assert_eq!(a.listen.port(), 80);
        assert_eq!(a.max_message, 16 << 20);
        assert!(Args::try_parse_from(["gateway", "--listen", "nowhere"]).is_err());
    }

    #[test]
    fn feed_flags() {
        let a = Args::try_parse_from([
            "gateway",
            "--watch",
            "config=/etc/app.conf",
            "--watch",
            "motd=rel/a=b.txt",
            "--tail",
            "app=/var/log/app.log",
        ])
        .unwrap();
        assert_eq!(
            a.watch,
            [
                ("config".into(), PathBuf::from("/etc/app.conf")),
                ("motd".into(), PathBuf::from("rel/a=b.txt"))
            ]
        );
        assert_eq!(a.tail, [("app".into(), PathBuf::from("/var/log/app.log"))]);
        for bad in [
            "config",
            "=/etc/x",
            "a/b=/etc/x",
            "..=/x",
            "a b=/x",
            "name=",
        ] {
            let e = parse_feed(bad).unwrap_err();
            assert!(e.contains(bad.split('=').next().unwrap()), "{bad}: {e}");
            assert!(Args::try_parse_from(["gateway", "--watch", bad]).is_err());
            assert!(Args::try_parse_from(["gateway", "--tail", bad]).is_err());
        }
    }

    #[test]
    fn tls_flags_come_in_pairs() {
        let config = parse(&[
            "--tls-cert",
            "/etc/gw/cert.pem",
            "--tls-key",
            "/etc/gw/key.pem",
        ])
        .unwrap()
        .into_config(Config::default());
        let files = TlsFiles {
            cert: "/etc/gw/cert.pem".into(),
            key: "/etc/gw/key.pem".into(),
        };
        assert_same(
            &config,
            &Config {
                tls: Some(files),
                ..Config::default()
            },
        );
        for alone in [["--tls-cert", "c.pem"], ["--tls-key", "k.pem"]] {
            let e = parse(&alone).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
            // clap exits 2 for usage errors.
            assert_eq!(e.exit_code(), 2);
            let other = if alone[0] == "--tls-cert" {
                "--tls-key"
            } else {
                "--tls-cert"
            };
            assert!(e.to_string().contains(other), "{e}");
        }
    }
}
