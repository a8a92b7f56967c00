//! A high-concurrency WebSocket push gateway.
//!
//! - [`auth`]: tokens (JWT): verification, claims, topic patterns, minting.
//! - [`proto`]: the sans-I/O RFC 6455 / RFC 7692 core, shared by the server and `loadgen`.
//! - [`server`]: the mio event loop: workers, connections, buffers, timers.
//! - [`topics`]: the topic hub: sequence numbers, history, and frames encoded once for all
//!   subscribers.
//! - [`commands`]: `--command NAME=COMMAND LINE` parsed (words split as a shell would, no shell).
//! - [`feeds`]: what feeds topics from files: file watch (`file/NAME`) and log tail (`log/NAME`).
//! - [`http`]: routing of requests on the one port, and the plain HTTP answers.
//! - [`cli`]: command-line helpers shared with `loadgen` (durations), and the layers of the
//!   configuration (flags, `GATEWAY_*` environment, `--config` file).
//! - [`logging`]: the operator's log lines (text or JSON) through the `log` facade.
//! - [`sys`]: the few operating-system calls std does not wrap (resource limits).

pub mod auth;
pub mod bus;
pub mod cli;
pub mod commands;
pub mod feeds;
pub mod http;
pub mod logging;
pub mod proto;
pub mod server;
pub mod sys;
pub mod topics;

#[cfg(test)]
mod tidy;
