//! The `gateway` binary: parses flags into a [`Config`], raises the open-file limit, and runs
//! the server until it is killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gateway::cli::parse_duration;
use gateway::proto::DeflateConfig;
use gateway::server::{Config, Server};

/// A WebSocket push gateway: echo and more on one port, for tens of thousands of connections.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
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
    /// Largest message accepted in bytes (after decompression); larger ones close with 1009.
    #[arg(long, default_value_t = 64 * 1024)]
    max_message: usize,
    /// Outbound bytes queued per connection before the gateway stops reading from it.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_queued: usize,
    /// Drop connections that have not finished the handshake in this time (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// Ping a connection after this much silence.
    #[arg(long, default_value = "54s", value_parser = parse_duration)]
    ping_interval: Duration,
    /// Drop a connection from which nothing arrived for this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pong_timeout: Duration,
    /// Time allowed to finish a close handshake.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    close_grace: Duration,
    /// Allow WebSockets only from this Origin (repeatable). Default: any origin.
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
    #[arg(long, default_value_t = 100_000)]
    max_topics: usize,
    /// Messages kept per topic for `since` recovery.
    #[arg(long, default_value_t = 256)]
    history: usize,
    /// Payload bytes kept per topic for `since` recovery.
    #[arg(long, default_value_t = 1024 * 1024)]
    history_bytes: usize,
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

fn main() -> ExitCode {
    let args = Args::parse();
    let limits = gateway::sys::raise_nofile_limit();
    let defaults = Config::default();
    let config = Config {
        listen: args.listen,
        workers: args.workers.unwrap_or(defaults.workers).max(1),
        reuse_port: args.reuse_port,
        max_conns: args.max_conns.unwrap_or(defaults.max_conns),
        max_message: args.max_message,
        max_queued: args.max_queued,
        handshake_timeout: args.handshake_timeout,
        ping_interval: args.ping_interval,
        pong_timeout: args.pong_timeout,
        close_grace: args.close_grace,
        allowed_origins: args.allow_origin,
        subprotocols: args.protocol,
        deflate: DeflateConfig {
            enabled: !args.no_deflate,
            request_client_no_context_takeover: args.deflate_no_client_context,
            ..DeflateConfig::default()
        },
        history: gateway::topics::HistoryConfig {
            messages: args.history.max(1),
            bytes: args.history_bytes,
        },
        publish_token: args.publish_token.filter(|t| !t.is_empty()),
        max_topics: args.max_topics,
        watch: args.watch,
        tail: args.tail,
        ..defaults
    };
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
            server.join();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
