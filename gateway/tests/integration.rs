//! Integration tests: a real gateway on 127.0.0.1 (port 0), driven over real sockets.
//!
//! One test binary (so the gateway library is linked once), one module per area of the
//! contract in DESIGN.md sections 4 and 5:
//!
//! - `config`: flags, environment and `--config` file through the binary; `--check-config`;
//!   log formats; reloads (SIGHUP and the library's) without dropping connections.
//! - `drain`: the graceful drain, from the library and on SIGTERM.
//! - `echo`: `/echo` returns every message byte for byte, at every payload-length form.
//! - `floods`: floods of tiny frames: endless empty fragments closed, the worker not monopolized.
//! - `fragments`: fragmented messages, with control frames between the fragments.
//! - `handshake`: the opening handshake as real clients send it; subprotocols.
//! - `control`: ping/pong and the close handshake.
//! - `deflate`: permessage-deflate negotiated and used in both directions.
//! - `refusals`: HTTP-level refusals (400, 403, 404, 405, 426, 431, 503) and their counters.
//! - `violations`: protocol violations closed with 1002, 1007 and 1009, and their counters.
//! - `deadlines`: handshake timeout, keep-alive pings and the pong timeout.
//! - `origins`: same-origin by default, the allow list, cross-site publishes refused.
//! - `plain_http`: `/healthz`, `/metrics`, `/`, unknown paths.
//! - `history_cap`: the history of all topics together stays under `--history-memory`.
//! - `isolation`: a misbehaving client never hurts the others.
//! - `backpressure`: a publish flood: bounded backlog, publishers pushed back, slow consumers.
//! - `strict_http`: framing two readers could read differently is refused (no smuggling).
//! - `topics`: chat rooms, the publish API, the `/ws` protocol, slow consumers.
//! - `topic_lifecycle`: topics forgotten when idle, the per-connection bound, epochs and resets.
//! - `feeds`: file watch and log tail: writes, atomic replace, delete, truncation, rotation.
//! - `scale`: thousands of idle connections on one gateway all still echo.
//!
//! The independent client is `tungstenite`; what it cannot do (fragment on demand, break the
//! protocol) goes through the hand-written client in `util::raw`.

mod util;

#[path = "integration/backpressure.rs"]
mod backpressure;
#[path = "integration/config.rs"]
mod config;
#[path = "integration/control.rs"]
mod control;
#[path = "integration/deadlines.rs"]
mod deadlines;
#[path = "integration/deflate.rs"]
mod deflate;
#[path = "integration/drain.rs"]
mod drain;
#[path = "integration/echo.rs"]
mod echo;
#[path = "integration/feeds.rs"]
mod feeds;
#[path = "integration/floods.rs"]
mod floods;
#[path = "integration/fragments.rs"]
mod fragments;
#[path = "integration/handshake.rs"]
mod handshake;
#[path = "integration/history_cap.rs"]
mod history_cap;
#[path = "integration/isolation.rs"]
mod isolation;
#[path = "integration/origins.rs"]
mod origins;
#[path = "integration/plain_http.rs"]
mod plain_http;
#[path = "integration/refusals.rs"]
mod refusals;
#[path = "integration/scale.rs"]
mod scale;
#[path = "integration/strict_http.rs"]
mod strict_http;
#[path = "integration/topic_lifecycle.rs"]
mod topic_lifecycle;
#[path = "integration/topics.rs"]
mod topics;
#[path = "integration/violations.rs"]
mod violations;
