//! Routing on the one port, and the plain HTTP answers (index, health, metrics, 404).
//!
//! The event loop parses the request head (with `proto::handshake`) and asks [`route`] what the
//! path is. WebSocket endpoints go through the upgrade; everything else is answered here with one
//! response and the connection is closed.

use crate::proto::handshake::{Request, write_http_response};

/// What a request path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /echo` (WebSocket): echoes every message.
    Echo,
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
        matches!(self, Route::Echo)
    }
}

/// Maps a request path (without query) to a route.
pub fn route(path: &str) -> Route {
    match path {
        "/echo" => Route::Echo,
        "/healthz" => Route::Health,
        "/metrics" => Route::Metrics,
        "/" => Route::Index,
        _ => Route::NotFound,
    }
}

/// What the plain routes need to know about the server.
pub struct PlainContext<'a> {
    pub metrics: &'a dyn Fn() -> String,
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
    ctx: &PlainContext<'_>,
    out: &mut Vec<u8>,
) -> u16 {
    let head_only = req.method == "HEAD";
    if req.method != "GET" && !head_only {
        write_http_response(
            out,
            405,
            &[("Allow", "GET, HEAD")],
            "text/plain; charset=utf-8",
            b"method not allowed\n",
            false,
        );
        return 405;
    }
    let (status, ctype, body): (u16, &str, Vec<u8>) = match route {
        Route::Health => (200, "text/plain; charset=utf-8", b"ok\n".to_vec()),
        Route::Metrics => (
            200,
            "text/plain; version=0.0.4",
            (ctx.metrics)().into_bytes(),
        ),
        Route::Index => (
            200,
            "text/html; charset=utf-8",
            INDEX_HTML.as_bytes().to_vec(),
        ),
        Route::NotFound | Route::Echo => {
            (404, "text/plain; charset=utf-8", b"not found\n".to_vec())
        }
    };
    let mut response = Vec::new();
    write_http_response(&mut response, status, &[], ctype, &body, false);
    if head_only {
        response.truncate(response.len() - body.len());
    }
    out.extend_from_slice(&response);
    status
}

const INDEX_HTML: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>push gateway</title></head>
<body>
<h1>push gateway</h1>
<ul>
<li><code>GET /echo</code> (WebSocket): echoes every message, text or binary</li>
<li><a href="/healthz"><code>GET /healthz</code></a>: liveness</li>
<li><a href="/metrics"><code>GET /metrics</code></a>: Prometheus counters</li>
</ul>
</body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let table = [
            ("/echo", Route::Echo),
            ("/healthz", Route::Health),
            ("/metrics", Route::Metrics),
            ("/", Route::Index),
            ("/echo/", Route::NotFound),
            ("/nope", Route::NotFound),
        ];
        for (path, r) in table {
            assert_eq!(route(path), r, "{path}");
        }
    }
}
