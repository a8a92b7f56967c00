//! The `gateway` binary: merges the configuration's layers (flags, `GATEWAY_*` environment,
//! `--config` file; [`gateway::cli::layers`]) into a [`Config`], raises the open-file limit,
//! and runs the server: SIGTERM or SIGINT drains it, SIGHUP reloads the configuration. Every
//! flag's default is read from [`Config::default`], so `--help` and the library cannot
//! disagree.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use gateway::cli::layers;
use gateway::cli::parse_duration;
use gateway::commands::{CommandSpec, parse_command_flag};
use gateway::logging;
use gateway::proto::DeflateConfig;
use gateway::server::config::format_duration;
use gateway::server::tls::TlsFiles;
use gateway::server::{Config, Server};
use gateway::topics::HistoryConfig;
use log::LevelFilter;

/// Where the flags' defaults come from. `workers` and `max_conns` are not taken from here:
/// they depend on the machine and on the open-file limit, raised after parsing.
static DEFAULTS: LazyLock<Config> = LazyLock::new(Config::default);

/// A WebSocket push gateway: echo and more on one port, for tens of thousands of connections.
#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    after_help = "Mint a test token (JWT) for --jwt-secret or --jwt-public-key: gateway token --help"
)]
struct Args {
    /// Read settings from this TOML file: each key is a long flag's name (`max-conns = 1000`,
    /// `allow-origin = ["https://a.example"]`). Precedence: flag > GATEWAY_<FLAG> environment
    /// variable > file > default. SIGHUP rereads it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML (every key) and exit.
    #[arg(long)]
    check_config: bool,
    /// Log lines as `text` or `json` (one object per line).
    #[arg(long, value_name = "FORMAT", default_value_t = logging::Format::default())]
    log_format: logging::Format,
    /// Least severe log lines shown: off, error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL", default_value_t = logging::DEFAULT_LEVEL, value_parser = logging::parse_level)]
    log_level: LevelFilter,
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
    /// Give each new connection to the worker of the CPU that received it (CPU % workers)
    /// instead of by address hash: best when connections arrive on every CPU (multi-queue
    /// NIC, RSS/RPS); with a single-queue NIC all would go to one worker.
    #[arg(long)]
    steer_by_cpu: bool,
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
    #[arg(long)]
    publish_token: Option<String>,
    /// Require a token (JWT) signed with this HS256 secret on every WebSocket upgrade
    /// (`Authorization: Bearer` or `?token=`); its claims bound what the client may subscribe
    /// and publish to. Mint test tokens with `gateway token`.
    #[arg(long, value_name = "SECRET")]
    jwt_secret: Option<String>,
    /// Require a token (JWT) signed for this public key (PEM: RSA for RS256, P-256 for ES256)
    /// on every WebSocket upgrade.
    #[arg(long, value_name = "PATH")]
    jwt_public_key: Option<PathBuf>,
    /// Accept tokens this long past their `exp` (clock skew between issuer and gateway); open
    /// connections are closed with 3000 at `exp` plus this.
    #[arg(long, value_name = "DURATION", default_value_t = FlagDuration(DEFAULTS.jwt_leeway),
          value_parser = parse_duration_or_zero)]
    jwt_leeway: FlagDuration,
    /// Topics clients may hold at once (subscriptions, chat rooms, publishing); past it new
    /// names are refused.
    #[arg(long, default_value_t = DEFAULTS.max_topics)]
    max_topics: usize,
    /// Forget a topic with no subscriber and no publish for this long (configured feeds are
    /// kept); its history is freed and a re-created topic gets a new epoch.
    #[arg(long, value_name = "DURATION", default_value_t = FlagDuration(DEFAULTS.topic_ttl))]
    topic_ttl: FlagDuration,
    /// New topics one connection may create at once (refilled at --topic-rate).
    #[arg(long, default_value_t = DEFAULTS.topic_burst)]
    topic_burst: u32,
    /// New topics per second one connection may create once its burst is spent.
    #[arg(long, default_value_t = DEFAULTS.topic_rate)]
    topic_rate: u32,
    /// Bytes of published messages waiting for one worker past which publishers are pushed
    /// back (503 with Retry-After, an error on /ws, chat clients paused).
    #[arg(long, default_value_t = DEFAULTS.max_backlog)]
    max_backlog: usize,
    /// Under a high message rate, write each subscriber at most once per this interval, with
    /// everything it is owed (a message after a quiet spell goes out at once); 0 disables.
    #[arg(long, default_value_t = FlagDuration(DEFAULTS.flush_interval),
          value_parser = parse_duration_or_zero)]
    flush_interval: FlagDuration,
    /// The cluster bus, redis://HOST:PORT[/DB]: topics shared with every gateway on the same
    /// Redis (publishes numbered by Redis, subscribers on every node get every message).
    /// Repeat it to spread topics over several Redis (the same list on every node).
    #[arg(long, value_name = "URL")]
    bus: Vec<String>,
    /// With --bus: /healthz answers 503 once the bus has been unreachable this long.
    #[arg(long, value_name = "DURATION", default_value_t = FlagDuration(DEFAULTS.bus_grace))]
    bus_grace: FlagDuration,
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
    /// Let permessage-deflate clients keep their compression context between messages
    /// (better ratio for repetitive client messages, but about 48 KiB per connection that
    /// sent a compressed message, until it closes). Default: clients are asked for
    /// client_no_context_takeover.
    #[arg(long)]
    deflate_client_context: bool,
    /// Watch a file (repeatable): its whole content is pushed to topic `file/NAME` whenever it
    /// changes; see `/file/NAME` and `/ws/file/NAME`. A missing file is reported to subscribers
    /// and followed once it appears.
    #[arg(long, value_name = "NAME=PATH", value_parser = parse_feed)]
    watch: Vec<(String, PathBuf)>,
    /// Tail a log (repeatable): each line appended to it is pushed to topic `log/NAME`; see
    /// `/ws/log/NAME?last=N`. Truncation and rotation are followed.
    #[arg(long, value_name = "NAME=PATH", value_parser = parse_feed)]
    tail: Vec<(String, PathBuf)>,
    /// Run a command per WebSocket (repeatable): `/ws/cmd/NAME` starts COMMAND LINE (split into
    /// words as a shell would, quotes included; no shell runs it) for each client presenting
    /// the publish token or a token (JWT) whose `commands` claim names it; its output lines are
    /// sent as messages, messages go to its stdin. Off unless given; without --publish-token or
    /// tokens every request is refused.
    #[arg(long, value_name = "NAME=COMMAND LINE", value_parser = parse_command_flag)]
    command: Vec<CommandSpec>,
    /// Command processes running at once (all workers); past it /ws/cmd/.. answers 503.
    #[arg(long, default_value_t = DEFAULTS.max_commands)]
    max_commands: usize,
    /// Serve TLS only (https://, wss://) with this certificate chain (PEM, leaf first); needs
    /// --tls-key. Reread on reload. [default: none, plain TCP]
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1); needs --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// A duration flag for which 0 means none (`--jwt-leeway`, `--flush-interval`).
fn parse_duration_or_zero(s: &str) -> Result<FlagDuration, String> {
    gateway::cli::parse_duration_or_zero(s).map(FlagDuration)
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
            steer_by_cpu: self.steer_by_cpu || defaults.steer_by_cpu,
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
                    && !self.deflate_client_context,
                ..defaults.deflate
            },
            history: HistoryConfig {
                messages: self.history.max(1),
                bytes: self.history_bytes,
            },
            history_memory: self.history_memory,
            publish_token: self.publish_token.filter(|t| !t.is_empty()),
            jwt_secret: self.jwt_secret.filter(|s| !s.is_empty()),
            jwt_public_key: self.jwt_public_key,
            jwt_leeway: self.jwt_leeway.0,
            max_topics: self.max_topics,
            topic_ttl: self.topic_ttl.0,
            topic_burst: self.topic_burst,
            topic_rate: self.topic_rate,
            max_backlog: self.max_backlog,
            flush_interval: self.flush_interval.0,
            bus: self.bus.into_iter().filter(|b| !b.is_empty()).collect(),
            bus_grace: self.bus_grace.0,
            watch: self.watch,
            tail: self.tail,
            commands: self.command,
            max_commands: self.max_commands,
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
    // `gateway token ...` mints a test token; everything else runs the gateway.
    if std::env::args_os().nth(1).is_some_and(|a| a == "token") {
        return gateway::auth::mint::run(std::env::args_os().skip(1));
    }
    let cli: Vec<OsString> = std::env::args_os().collect();
    let (args, matches) = match parse_layers(&cli) {
        Ok(parsed) => parsed,
        Err(Exit::Clap(e)) => e.exit(),
        Err(Exit::Config(e)) => {
            eprintln!("gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let limits = gateway::sys::raise_nofile_limit();
    if args.check_config {
        let config = args.into_config(Config::default());
        print!("{}", effective_toml(&matches, &config));
        return ExitCode::SUCCESS;
    }
    if let Err(e) = logging::Logger::install(args.log_format, args.log_level) {
        eprintln!("gateway: cannot start logging: {e}");
    }
    if let Some(path) = &args.config {
        log::info!("configuration file {}", path.display());
    }
    let config = args.into_config(Config::default());
    // Registered before the server starts, so that a signal sent as soon as the gateway says
    // it listens is handled, not the default action (which kills the process).
    let signals = register_signals();
    match Server::start(config.clone()) {
        Ok(server) => {
            let files = match limits {
                Ok((soft, _)) => format!("open-file limit {soft}"),
                Err(e) => format!("open-file limit unknown: {e}"),
            };
            log::info!(
                "listening on {} ({} workers, max {} connections, {files})",
                server.local_addr(),
                config.workers,
                config.max_conns
            );
            let no_jwt = config.jwt_secret.is_none() && config.jwt_public_key.is_none();
            if !config.commands.is_empty() && config.publish_token.is_none() && no_jwt {
                log::warn!(
                    "--command is set but neither --publish-token nor tokens (JWT) are: every \
                     /ws/cmd/.. request will be refused (403)"
                );
            }
            if let Some(signals) = signals {
                handle_signals(signals, &server, cli);
            }
            server.log_refusals_every(REFUSALS_LOG_INTERVAL);
            server.join();
            log::info!("drained, exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{e}");
            eprintln!("gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why the program stops before it starts.
enum Exit {
    /// A command line clap refuses, or `--help`/`--version`: clap prints and exits.
    Clap(clap::Error),
    /// A bad configuration file or environment variable: `FILE:LINE: ...`, exit status 2.
    Config(layers::LayerError),
}

/// Merges the configuration's layers for `cli` and parses the result.
fn parse_layers(cli: &[OsString]) -> Result<(Args, clap::ArgMatches), Exit> {
    let argv = layers::layered_args(&Args::command(), cli, &|k| std::env::var(k).ok())
        .map_err(Exit::Config)?;
    let matches = Args::command()
        .try_get_matches_from(argv)
        .map_err(Exit::Clap)?;
    let args = Args::from_arg_matches(&matches).map_err(Exit::Clap)?;
    Ok((args, matches))
}

/// `--check-config`: every key with its effective value; the token is not shown.
fn effective_toml(matches: &clap::ArgMatches, config: &Config) -> String {
    let resolved = |key: &str| match key {
        "workers" => Some(config.workers.to_string()),
        "max-conns" => Some(config.max_conns.to_string()),
        _ => None,
    };
    layers::effective_toml(&Args::command(), matches, &resolved, SECRETS)
}

/// How often refusals are logged, in aggregate (only when there were some).
const REFUSALS_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Flags whose values `--check-config` and the logs never show.
const SECRETS: &[&str] = &["publish-token", "jwt-secret"];

/// SIGTERM or SIGINT starts a graceful drain, a second one exits at once; SIGHUP reloads the
/// configuration from the same flags, environment and (reread) file.
fn handle_signals(
    mut signals: signal_hook::iterator::Signals,
    server: &gateway::server::ServerHandle,
    cli: Vec<OsString>,
) {
    use signal_hook::consts::SIGHUP;
    let drainer = server.drainer();
    let reloader = server.reloader();
    let spawned = std::thread::Builder::new()
        .name("gw-signals".into())
        .spawn(move || {
            let mut draining = false;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    reload(&reloader, &cli);
                } else if !draining {
                    log::info!("signal {sig}: draining (a second signal exits at once)");
                    draining = true;
                    drainer.drain();
                } else {
                    log::warn!("signal {sig} during the drain: exiting now");
                    std::process::exit(1);
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the signal thread: {e}");
    }
}

/// Starts catching SIGTERM, SIGINT and SIGHUP.
fn register_signals() -> Option<signal_hook::iterator::Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => Some(s),
        Err(e) => {
            log::error!("cannot handle signals ({e}); SIGTERM will kill without a drain");
            None
        }
    }
}

/// Rereads the configuration and applies it; a bad one is logged and the running one kept.
fn reload(server: &gateway::server::Reloader, cli: &[OsString]) {
    let args = match parse_layers(cli) {
        Ok((args, _)) => args,
        Err(Exit::Config(e)) => {
            log::error!("reload: {e}; keeping the running configuration");
            return;
        }
        Err(Exit::Clap(e)) => {
            let e = e.render().to_string();
            let first = e.lines().next().unwrap_or_default();
            log::error!("reload: {first}; keeping the running configuration");
            return;
        }
    };
    let report = server.reload(&args.into_config(Config::default()));
    let list = |v: &[&str]| {
        if v.is_empty() {
            "nothing".to_owned()
        } else {
            v.join(", ")
        }
    };
    log::info!("reload: changed {}", list(&report.changed));
    for e in &report.errors {
        log::error!("reload: {e}");
    }
    if !report.needs_restart.is_empty() {
        log::warn!(
            "reload: {} need a restart; the running values are kept",
            report.needs_restart.join(", ")
        );
    }
}

#[cfg(test)]
#[path = "main_tests.rs"]
mod tests;
