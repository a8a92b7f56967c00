//! Plain HTTP on the one port: routing ([`route`]), the plain answers (pages, health, metrics,
//! 404: [`respond`]), response writing ([`response`]), the publish request checks
//! ([`publish`]), who may start a command ([`command`]) and the origin rule ([`origin`]).
//!
//! The event loop parses the request head (with `proto::handshake`) and asks [`route`] what the
//! path is. WebSocket endpoints go through the upgrade; `POST /publish/{topic}` is checked by
//! [`publish::check_publish`] and published by the loop (it needs the hub); everything else is
//! answered here with one response.

pub mod command;
pub mod origin;
pub mod pages;
pub mod publish;
pub mod response;

use crate::proto::handshake::Request;
use response::{HTML, Response, TEXT};

/// What a request path is. Routes with a parameter (room, topic) carry it in [`route`]'s
/// second return value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /echo` (WebSocket): echoes every message.
    Echo,
    /// `GET /ws/chat/{room}` (WebSocket): every message goes to everyone in the room.
    Chat,
    /// `GET /ws` (WebSocket): the multiplexed JSON protocol (docs/PROTOCOL.md).
    Multiplex,
    /// `GET /chat/{room}`: the chat page.
    ChatPage,
    /// `GET /ws/file/{name}?lastMod=<hex ns>` (WebSocket): a watched file's content.
    File,
    /// `GET /file/{name}`: the page showing a watched file, updated live.
    FilePage,
    /// `GET /ws/log/{name}?last=N` (WebSocket): the lines appended to a tailed log.
    Log,
    /// `GET /ws/cmd/{name}` (WebSocket): a configured command run for this connection.
    Command,
    /// `GET /cmd/{name}`: the page of a command's socket.
    CommandPage,
    /// `GET /echo` asked for as a page (`Accept: text/html`, no `Upgrade`): the echo tester.
    EchoPage,
    /// `POST /publish/{topic}`: a backend publishes a message.
    Publish,
    /// `GET /healthz`: liveness.
    Health,
    /// `GET /metrics`: Prometheus text.
    Metrics,
    /// `GET /`: the index page.
    Index,
    NotFound,
}

impl Route {
    /// Whether this route is a WebSocket endpoint.
    pub fn is_websocket(self) -> bool {
        matches!(
            self,
            Route::Echo
                | Route::Chat
                | Route::Multiplex
                | Route::File
                | Route::Log
                | Route::Command
        )
    }
}

/// Maps a request path (without query) to a route and its parameter ("" when none).
pub fn route(path: &str) -> (Route, &str) {
    if let Some(room) = path.strip_prefix("/ws/chat/") {
        return (Route::Chat, room);
    }
    if let Some(room) = path.strip_prefix("/chat/") {
        return (Route::ChatPage, room);
    }
    if let Some(name) = path.strip_prefix("/ws/file/") {
        return (Route::File, name);
    }
    if let Some(name) = path.strip_prefix("/file/") {
        return (Route::FilePage, name);
    }
    if let Some(name) = path.strip_prefix("/ws/log/") {
        return (Route::Log, name);
    }
    if let Some(name) = path.strip_prefix("/ws/cmd/") {
        return (Route::Command, name);
    }
    if let Some(name) = path.strip_prefix("/cmd/") {
        return (Route::CommandPage, name);
    }
    if let Some(topic) = path.strip_prefix("/publish/") {
        return (Route::Publish, topic);
    }
    let r = match path {
        "/echo" => Route::Echo,
        "/ws" => Route::Multiplex,
        "/healthz" => Route::Health,
        "/metrics" => Route::Metrics,
        "/" => Route::Index,
        _ => Route::NotFound,
    };
    (r, "")
}

/// What the plain routes need to know about the server.
pub struct PlainContext<'a> {
    pub metrics: &'a dyn Fn() -> String,
    /// `/healthz`: its status and body (with a bus, whether it is connected).
    pub health: &'a dyn Fn() -> (u16, String),
    /// The index page's listing: the most followed topics with a name prefix, and totals.
    pub topics: &'a dyn Fn(&str) -> crate::topics::TopicPage,
    /// A watched file's current content (or error text) and its stamp; `None` when no file of
    /// that name is watched.
    pub file: &'a dyn Fn(&str) -> Option<(String, u64)>,
    /// The configured commands (`--command`), for the index and the command pages.
    pub commands: &'a [crate::commands::CommandSpec],
}

impl std::fmt::Debug for PlainContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainContext").finish_non_exhaustive()
    }
}

/// Answers a plain (non-WebSocket) request into `out`; returns the status sent.
pub fn respond(
    req: &Request<'_, '_>,
    route: Route,
    param: &str,
    ctx: &PlainContext<'_>,
    out: &mut Vec<u8>,
) -> u16 {
    let head_only = req.method == "HEAD";
    if req.method != "GET" && !head_only {
        Response::new(405, TEXT, b"method not allowed\n")
            .headers(&[("Allow", "GET, HEAD")])
            .write(out);
        return 405;
    }
    let (status, ctype, body): (u16, &str, Vec<u8>) = match route {
        Route::Health => {
            let (status, body) = (ctx.health)();
            (status, TEXT, body.into_bytes())
        }
        Route::Metrics => (
            200,
            "text/plain; version=0.0.4",
            (ctx.metrics)().into_bytes(),
        ),
        Route::Index => {
            let prefix = index_prefix(req.query());
            let page = (ctx.topics)(&prefix);
            let names: Vec<&str> = ctx.commands.iter().map(|(n, _)| n.as_str()).collect();
            (200, HTML, pages::index(&page, &prefix, &names).into_bytes())
        }
        Route::EchoPage => (200, HTML, pages::echo().into_bytes()),
        Route::CommandPage if ctx.commands.iter().any(|(n, _)| n == param) => {
            (200, HTML, pages::command(param).into_bytes())
        }
        Route::ChatPage if crate::topics::is_valid_topic(param) && !param.contains('/') => {
            (200, HTML, pages::chat(param).into_bytes())
        }
        Route::FilePage => match (ctx.file)(param) {
            Some((content, stamp)) => (200, HTML, pages::file(param, &content, stamp).into_bytes()),
            None => (404, TEXT, b"not found\n".to_vec()),
        },
        _ => (404, TEXT, b"not found\n".to_vec()),
    };
    let response = Response::new(status, ctype, &body);
    if head_only {
        response.write_head(out);
    } else {
        response.write(out);
    }
    status
}

/// Whether a request to `/echo` asks for the tester page rather than a WebSocket: no
/// `Upgrade` header, and an `Accept` that names `text/html` (with a non-zero quality), as a
/// browser's address bar sends. Anything else keeps the 426 of a non-upgrade.
pub fn wants_echo_page(req: &Request<'_, '_>) -> bool {
    req.header("Upgrade").is_none() && req.header_values("Accept").any(accepts_html)
}

/// Whether an `Accept` value lists `text/html` without `q=0`.
fn accepts_html(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let html = parts
            .next()
            .is_some_and(|t| t.eq_ignore_ascii_case("text/html"));
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .is_some_and(|q| q.parse::<f32>().is_ok_and(|q| q <= 0.0))
        });
        html && !refused
    })
}

/// The `prefix` of the index page's query (`/?prefix=chat%2F`), `%2F` decoded; "" when none.
/// Any other escape is left as is: it cannot begin a topic name, so nothing matches.
pub fn index_prefix(query: Option<&str>) -> String {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("prefix="))
        .map(|v| v.replace("%2F", "/").replace("%2f", "/"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_prefixes() {
        assert_eq!(index_prefix(None), "");
        assert_eq!(index_prefix(Some("x=1&prefix=chat%2Fa")), "chat/a");
        assert_eq!(index_prefix(Some("prefix=news/")), "news/");
    }

    #[test]
    fn echo_page_only_for_html_without_upgrade() {
        let table = [
            (
                "Accept: text/html,application/xhtml+xml,*/*;q=0.8\r\n",
                true,
            ),
            ("Accept: TEXT/HTML; charset=utf-8\r\n", true),
            ("Accept: application/json\r\nAccept: text/html\r\n", true),
            ("Accept: text/html;q=0\r\n", false),
            ("Accept: */*\r\n", false),
            ("Accept: text/htmlx\r\n", false),
            ("", false),
            ("Accept: text/html\r\nUpgrade: websocket\r\n", false),
            ("Accept: text/html\r\nUpgrade: h2c\r\n", false),
        ];
        for (headers, want) in table {
            let head = format!("GET /echo HTTP/1.1\r\nHost: h\r\n{headers}\r\n");
            let mut storage = [httparse::EMPTY_HEADER; 16];
            let req = Request::parse(head.as_bytes(), &mut storage)
                .unwrap()
                .unwrap();
            assert_eq!(wants_echo_page(&req), want, "{headers:?}");
        }
    }

    #[test]
    fn routes() {
        let table = [
            ("/echo", Route::Echo, ""),
            ("/ws", Route::Multiplex, ""),
            ("/ws/chat/lobby", Route::Chat, "lobby"),
            ("/chat/lobby", Route::ChatPage, "lobby"),
            ("/ws/file/config", Route::File, "config"),
            ("/file/config", Route::FilePage, "config"),
            ("/ws/log/app", Route::Log, "app"),
            ("/publish/news/eu", Route::Publish, "news/eu"),
            ("/ws/cmd/sed", Route::Command, "sed"),
            ("/cmd/sed", Route::CommandPage, "sed"),
            ("/healthz", Route::Health, ""),
            ("/metrics", Route::Metrics, ""),
            ("/", Route::Index, ""),
            ("/echo/", Route::NotFound, ""),
            ("/nope", Route::NotFound, ""),
        ];
        for (path, r, param) in table {
            assert_eq!(route(path), (r, param), "{path}");
        }
    }
}
