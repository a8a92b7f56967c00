//! `loadgen`: opens tens of thousands of WebSocket clients against the gateway and measures
//! latency, using the client side of `gateway::proto` (one codec for both ends).
//!
//! - [`args`]: flags and their validation into a [`Config`].
//! - [`url`]: the ws://, wss:// and http:// endpoints, resolved up front; [`tls`]: what a
//!   wss:// client trusts (`--ca`, `--insecure`) and its rustls configuration.
//! - [`client`]: one client WebSocket connection (connect, upgrade, `proto::Session`, close),
//!   the only one in loadgen; [`single`] drives one on its own poll (publisher, tests).
//! - [`sockets`]: socket setup: non-blocking connect, source addresses, connect causes.
//! - [`control`]: the controller protocol: phases, live counters, each thread's share.
//! - [`engine`]: one mio event loop per thread driving a slab of clients through the phases.
//! - [`scenario`]: what each connection does in connect, echo and fanout runs.
//! - [`fleet`]: the threads of this process, or worker processes when one process may not open
//!   enough sockets; the worker line protocol.
//! - [`publisher`]: the fanout and flood publisher: schedule, figures, WebSocket publisher;
//!   [`pipeline`]: the pipelined HTTP publisher.
//! - [`payload`]: what messages carry and how echoes and deliveries are checked.
//! - [`nodes`]: several `--url`s: connections round-robin over the nodes, figures per node.
//! - [`stats`]: histograms and counters that merge across threads and processes.
//! - [`run`]: the controller: phases, progress line, timeline.
//! - [`report`], [`summary`], [`html`]: the figures and the JSON; the rows both the text
//!   summary and the HTML page print.
//! - [`clock`], [`sys`]: CLOCK_MONOTONIC, CPU time and memory of processes.

pub mod args;
pub mod client;
pub mod clock;
pub mod control;
pub mod engine;
pub mod fleet;
pub mod html;
pub mod nodes;
pub mod payload;
pub mod pipeline;
pub mod publisher;
pub mod report;
pub mod run;
pub mod scenario;
pub mod single;
pub mod sockets;
pub mod stats;
pub mod summary;
pub mod sys;
pub mod tls;
pub mod url;

pub use args::Config;
pub use report::Report;
pub use run::run;

#[cfg(test)]
mod tidy;
