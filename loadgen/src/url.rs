//! The `ws://` and `http://` URLs loadgen is pointed at: parsed, checked and resolved once, up
//! front, so a typo is one clear error line instead of thousands of failed connections.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};

use crate::tls::Trust;

/// A resolved endpoint: where to connect, what to send as `Host`, and the request target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The authority as written in the URL (`host:port`), for the Host header.
    pub host: String,
    /// Path and query, starting with `/`.
    pub path: String,
    /// `wss://`: speak TLS, trusting this (set from `--ca` or `--insecure`; a `wss://` URL
    /// alone trusts nothing).
    #[serde(default)]
    pub tls: Option<Trust>,
}

impl Endpoint {
    /// Whether the target is an IPv4 loopback address: then client sockets are spread over
    /// several source addresses 127.0.0.K, each with its own ephemeral ports.
    pub fn is_loopback_v4(&self) -> bool {
        matches!(self.addr.ip(), IpAddr::V4(ip) if ip.is_loopback())
    }
}

/// Parses a `ws://host[:port][/path]` or `wss://host[:port][/path]` URL.
pub fn parse_ws(url: &str) -> Result<Endpoint, String> {
    if let Some(rest) = url.strip_prefix("wss://") {
        let mut e = parse_rest(url, rest, 443)?;
        crate::tls::server_name(&e.host).map_err(|err| format!("'{url}': {err}"))?;
        e.tls = Some(Trust::Ca(Vec::new()));
        return Ok(e);
    }
    let rest = url.strip_prefix("ws://").ok_or_else(|| {
        format!("'{url}' is not a ws:// or wss:// URL (expected ws://HOST:PORT/PATH)")
    })?;
    parse_rest(url, rest, 80)
}

/// Parses the `--url` list: one or more `ws://` or `wss://` URLs (the nodes of a cluster), in
/// order. They must all speak the same scheme (one `--ca`/`--insecure` choice serves them all),
/// and none may be given twice (each node's figures are reported apart).
pub fn parse_ws_list(urls: &[String]) -> Result<Vec<Endpoint>, String> {
    let mut out: Vec<Endpoint> = Vec::with_capacity(urls.len());
    for url in urls {
        let e = parse_ws(url)?;
        if let Some(first) = out.first()
            && first.tls.is_some() != e.tls.is_some()
        {
            return Err(format!(
                "'{url}' mixes ws:// and wss:// with '{}': give every node the same scheme",
                urls[0]
            ));
        }
        if let Some(i) = out
            .iter()
            .position(|o| o.addr == e.addr && o.path == e.path)
        {
            return Err(format!(
                "'{url}' names the same node as '{}': give each node once",
                urls[i]
            ));
        }
        out.push(e);
    }
    if out.is_empty() {
        return Err("no URL given".into());
    }
    Ok(out)
}

/// Parses an `http://host[:port][/path]` URL (the publish endpoint).
pub fn parse_http(url: &str) -> Result<Endpoint, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("'{url}' is not an http:// URL"))?;
    parse_rest(url, rest, 80)
}

fn parse_rest(url: &str, rest: &str, default_port: u16) -> Result<Endpoint, String> {
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.is_empty() {
        return Err(format!("'{url}' has no host"));
    }
    if authority.contains('@') {
        return Err(format!(
            "'{url}': user information in URLs is not supported"
        ));
    }
    // "[::1]:8080", "[::1]", "host:8080", "host".
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let with_port = if has_port {
        let port = &authority[authority.rfind(':').unwrap_or(0) + 1..];
        port.parse::<u16>()
            .map_err(|_| format!("'{url}': '{port}' is not a port number"))?;
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .map_err(|e| format!("'{url}': cannot resolve '{authority}': {e}"))?
        .collect();
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("'{url}': '{authority}' resolves to no address"))?;
    Ok(Endpoint {
        addr,
        host: authority.to_string(),
        path,
        tls: None,
    })
}

/// The HTTP publish URL that goes with a chat socket URL: `/ws/X` is published to with
/// `POST /publish/X` on the same host and port (the gateway's URL contract).
pub fn publish_url_for(ws: &Endpoint) -> Result<Endpoint, String> {
    let topic = ws.path.strip_prefix("/ws/").ok_or_else(|| {
        format!(
            "cannot derive the publish URL from the path '{}' (expected /ws/TOPIC): pass --publish-url",
            ws.path
        )
    })?;
    let topic = topic.split_once('?').map_or(topic, |(t, _)| t);
    Ok(Endpoint {
        addr: ws.addr,
        host: ws.host.clone(),
        path: format!("/publish/{topic}"),
        tls: ws.tls.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_urls() {
        let e = parse_ws("ws://127.0.0.1:9000/echo").unwrap();
        assert_eq!(e.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(
            (e.host.as_str(), e.path.as_str()),
            ("127.0.0.1:9000", "/echo")
        );
        assert!(e.is_loopback_v4());

        let e = parse_ws("ws://127.0.0.1").unwrap();
        assert_eq!((e.addr.port(), e.path.as_str()), (80, "/"));
        let e = parse_ws("ws://127.0.0.1:1?x=1").unwrap();
        assert_eq!(e.path, "/?x=1");
        let e = parse_ws("ws://[::1]:8080/ws/chat/a").unwrap();
        assert_eq!(e.addr, "[::1]:8080".parse().unwrap());
        assert!(!e.is_loopback_v4());
        let e = parse_ws("ws://localhost:8080/echo").unwrap();
        assert!(e.addr.ip().is_loopback());
        assert_eq!(e.tls, None);

        // wss: port 443 by default; trusts nothing until --ca or --insecure says what.
        let e = parse_ws("wss://127.0.0.1/echo").unwrap();
        assert_eq!(e.addr.port(), 443);
        assert_eq!(e.tls, Some(Trust::Ca(Vec::new())));
        let e = parse_ws("wss://localhost:8443/ws/chat/a").unwrap();
        assert_eq!((e.addr.port(), e.host.as_str()), (8443, "localhost:8443"));
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let table = [
            ("http://127.0.0.1:8080/echo", "not a ws:// or wss:// URL"),
            ("127.0.0.1:8080", "not a ws:// or wss:// URL"),
            ("ws://", "no host"),
            ("ws://127.0.0.1:99999/", "not a port"),
            ("ws://127.0.0.1:x/", "not a port"),
            ("ws://u@127.0.0.1/", "user information"),
        ];
        for (url, want) in table {
            let err = parse_ws(url).unwrap_err();
            assert!(err.contains(want), "{url}: {err}");
            assert!(!err.contains('\n'), "{url}: one line");
        }
    }

    #[test]
    fn url_lists() {
        let list = |v: &[&str]| parse_ws_list(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let nodes = list(&["ws://127.0.0.1:1/ws/chat/a", "ws://127.0.0.1:2/ws/chat/a"]).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!((nodes[0].addr.port(), nodes[1].addr.port()), (1, 2));
        // The same port with another path is another node (two topics); the same both is not.
        assert_eq!(
            list(&["ws://127.0.0.1:1/a", "ws://127.0.0.1:1/b"])
                .unwrap()
                .len(),
            2
        );
        let table: [(&[&str], &str); 4] = [
            (
                &["ws://127.0.0.1:1/a", "wss://127.0.0.1:2/a"],
                "mixes ws:// and wss://",
            ),
            (&["ws://127.0.0.1:1/a", "ws://localhost:1/a"], "same node"),
            (
                &["ws://127.0.0.1:1/a", "http://127.0.0.1:2/a"],
                "not a ws://",
            ),
            (&["ws://127.0.0.1:1/a", ""], "not a ws://"),
        ];
        for (urls, want) in table {
            let err = list(urls).unwrap_err();
            assert!(err.contains(want), "{urls:?}: {err}");
        }
        assert!(list(&[]).is_err());
    }

    #[test]
    fn publish_url_from_chat_url() {
        let ws = parse_ws("ws://127.0.0.1:8080/ws/chat/room1").unwrap();
        let p = publish_url_for(&ws).unwrap();
        assert_eq!(p.path, "/publish/chat/room1");
        assert_eq!(p.addr, ws.addr);
        assert!(publish_url_for(&parse_ws("ws://127.0.0.1/echo").unwrap()).is_err());
        let h = parse_http("http://127.0.0.1:8080/publish/chat/x").unwrap();
        assert_eq!(h.path, "/publish/chat/x");
    }
}
