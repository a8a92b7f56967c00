//! The command runner (`/ws/cmd/{name}`, `--command NAME=COMMAND LINE`): one process per
//! connection, its output lines sent as text messages, the connection's text messages written
//! to its stdin, its exit status sent last, and the process stopped when the connection goes.
//!
//! **In the event loop, never in its way.** A process's stdout, stderr and stdin are
//! non-blocking pipes registered in the worker's `Poll`, and so is a pidfd that becomes
//! readable when it exits; a process is reaped (`waitid` with `WNOHANG`) only once it has
//! exited, so nothing here blocks. Their tokens are `key * 4 + kind` with `key` the process's
//! slot in [`Procs`]: all below 2^32, where no connection's token lies (a connection's token
//! carries its generation, never 0, in the high 32 bits; see `ConnId::token`). Spawning is one
//! `posix_spawn`/`fork`+`exec`, bounded like an `accept`, and bounded in number by
//! `--max-commands`.
//!
//! **Per connection, in side tables.** A process is a [`Proc`] in the worker's [`Procs`], not
//! in `Conn`: it outlives its connection for up to two seconds (the stop sequence), so it has
//! its own slab, and the side table `by_conn` maps a connection's slot to it while both live.
//!
//! **Bounded both ways.** Output is read only while the connection has at most `--max-queued`
//! bytes queued: past it the pipes are left unread (the process blocks on a full pipe) until
//! the socket drains. Input waits in a buffer of at most [`STDIN_MAX`] bytes (plus one
//! message); past it the connection is not read until the process takes some.
//!
//! **Stopping.** When the connection closes or fails: stdin is closed (and the output pipes,
//! which nobody reads any more), SIGINT goes to the process group after 1 s, SIGKILL after 1 s
//! more, and the process is reaped when it exits; when the process exits on its own, what is
//! left of its group is killed before it is reaped (see [`process`]). A process dropped in any
//! other way (worker stopping) is killed and reaped at once.

mod ending;
mod lines;
mod process;

use std::io::{self, Read, Write};
use std::mem;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::auth::{Authorized, count_refusal};
use super::http::Refusal;
use super::{SideTable, Worker};
use crate::auth::Refusal as TokenRefusal;
use crate::http::command::{CommandPolicy, Denied, authorize_command};
use crate::proto::handshake::Request;
use crate::proto::{CloseCode, MessageKind};
use crate::server::ConnId;
use crate::server::stats::WorkerStats;
use lines::Lines;
use process::Process;

/// Input bytes waiting for a process's stdin past which its connection is not read.
pub(super) const STDIN_MAX: usize = 64 * 1024;
/// How long an unfinished output line waits for its end before it is sent as it is.
const PARTIAL_WAIT: Duration = Duration::from_millis(100);
/// The stop sequence: stdin closed, SIGINT this long after, SIGKILL this long after that.
const INTERRUPT_AFTER: Duration = Duration::from_secs(1);
const KILL_AFTER: Duration = Duration::from_secs(1);
/// After the process exited, how long its pipes may stay open (held by something that left
/// its process group) before the exit status is sent anyway.
const EOF_WAIT: Duration = Duration::from_secs(1);
/// Without pidfds, how often an unreaped process is checked.
const REAP_POLL: Duration = Duration::from_millis(50);
/// Reads of the read buffer per pipe per turn, so one chatty process cannot starve the loop.
const READS_PER_TURN: usize = 4;

/// What a process's token names.
const STDOUT: usize = 0;
const STDERR: usize = 1;
const STDIN: usize = 2;
const EXIT: usize = 3;
const KINDS: usize = 4;

/// Whether a token names a process's pipe or pidfd rather than a connection.
pub(super) fn is_process_token(t: Token) -> bool {
    t.0 >> 32 == 0
}

fn token(key: usize, kind: usize) -> Token {
    assert!(key < 1 << 30, "process slots stay below 2^30");
    Token(key * KINDS + kind)
}

/// The next step of the stop sequence.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Interrupt,
    Kill,
}

/// One command process and what the worker keeps for it.
#[derive(Debug)]
pub(super) struct Proc {
    process: Process,
    /// The connection it serves; `None` once that has gone (the process is being stopped).
    owner: Option<ConnId>,
    /// The unfinished lines of stdout and stderr.
    out: [Lines; 2],
    /// Since when an unfinished line has waited.
    partial_since: Option<Instant>,
    /// Input not yet taken by the process.
    stdin_buf: Vec<u8>,
    /// The input buffer is over [`STDIN_MAX`]: the connection is not read.
    stdin_full: bool,
    /// Output is not read: the connection has more than `--max-queued` bytes queued.
    paused: bool,
    /// Its exit status, once reaped.
    status: Option<ExitStatus>,
    exited_at: Option<Instant>,
    /// Once the connection went: the next step of the stop sequence, and when.
    stop: Option<(Instant, Stop)>,
}

impl Proc {
    /// When this process next needs the worker (besides its tokens' events).
    fn next_due(&self) -> Option<Instant> {
        let partial = self
            .partial_since
            .filter(|_| self.owner.is_some() && !self.paused)
            .map(|t| t + PARTIAL_WAIT);
        let exit = self.exited_at.map(|t| t + EOF_WAIT);
        let stop = self.stop.map(|(at, _)| at);
        [partial, exit, stop].into_iter().flatten().min()
    }

    /// Without a pidfd its exit is found by polling.
    fn needs_poll(&self) -> bool {
        self.process.pidfd.is_none() && self.status.is_none()
    }
}

/// A worker's command processes.
#[derive(Debug, Default)]
pub(super) struct Procs {
    slab: Slab<Proc>,
    /// Connection slot to process slot, while both live.
    by_conn: SideTable<usize>,
    /// Processes whose output was left unread at the end of their turn.
    ready: Vec<usize>,
}

impl Procs {
    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Whether the connection in `slot` must not be read: its process has not taken its input.
    pub fn input_blocked(&self, slot: usize) -> bool {
        !self.by_conn.is_empty()
            && self
                .by_conn
                .get(&slot)
                .is_some_and(|&k| self.slab.get(k).is_some_and(|p| p.stdin_full))
    }
}

/// Removes a pipe or pidfd from the `Poll`; closing it follows when it is dropped.
fn deregister(registry: &Registry, source: &mut impl mio::event::Source) {
    let _ = registry.deregister(source);
}

/// Closes what connects a process to the worker: its pipes (and its pidfd with `pidfd`).
fn close_pipes(registry: &Registry, p: &mut Process, pidfd: bool) {
    if let Some(mut s) = p.stdin.take() {
        deregister(registry, &mut s);
    }
    for mut s in [p.stdout.take(), p.stderr.take()].into_iter().flatten() {
        deregister(registry, &mut s);
    }
    if pidfd && let Some(fd) = p.pidfd.take() {
        deregister(registry, &mut SourceFd(&fd.as_raw_fd()));
    }
}

/// The last message of a command socket.
fn status_message(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("{{\"exit\":{code}}}"),
        (None, Some(signal)) => format!("{{\"signal\":{signal}}}"),
        (None, None) => "{\"exit\":null}".to_owned(),
    }
}

impl Worker {
    /// The checks of a `/ws/cmd/{name}` upgrade before the handshake: 404 for a name not
    /// configured, then the authorization (401, 403).
    ///
    /// With tokens (JWT) on, a token whose `commands` claim lists the command is accepted as
    /// well: its claims are returned, to be kept like any token's (the socket is closed with
    /// 3000 at its `exp`). A valid token that does not list the command: 403.
    pub(super) fn check_command(
        &self,
        req: &Request<'_, '_>,
        name: &str,
    ) -> Result<Option<Authorized>, Refusal> {
        if !self.shared.config.commands.iter().any(|(n, _)| n == name) {
            return Err(Refusal::Status(404));
        }
        let policy = CommandPolicy {
            token: self.config.publish_token.as_deref(),
        };
        let denied = match authorize_command(req, name, &policy) {
            Ok(()) => return Ok(None),
            Err(denied) => denied,
        };
        if self.shared.verifier().is_none() {
            return Err(Refusal::Denied(denied));
        }
        let authorized = self
            .check_upgrade_token(req, None)
            .map_err(Refusal::Token)?
            .ok_or(Refusal::Denied(denied))?;
        if !authorized.claims.allows_command(name) {
            count_refusal(self.stats(), TokenRefusal::Forbidden);
            return Err(Refusal::Token(TokenRefusal::Forbidden));
        }
        Ok(Some(authorized))
    }

    /// Takes one of the `--max-commands` slots for a process, or refuses (503).
    pub(super) fn reserve_command(&self) -> Result<(), Refusal> {
        let max = self.config.max_commands;
        let reserved =
            self.shared
                .running_commands
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                });
        if reserved.is_err() {
            WorkerStats::add(&self.stats().commands_refused_busy_total, 1);
            return Err(Refusal::Denied(Denied {
                status: 503,
                reason: "the gateway runs its limit of commands (--max-commands): retry later",
            }));
        }
        Ok(())
    }

    fn release_command(&self) {
        self.shared.running_commands.fetch_sub(1, Ordering::AcqRel);
    }

    /// The socket is open: starts its process (its slot was reserved), or closes with 1011.
    pub(super) fn start_command(&mut self, key: usize, name: &str) {
        let shared = self.shared.clone();
        let Some((_, words)) = shared.config.commands.iter().find(|(n, _)| n == name) else {
            return;
        };
        let pk = self.procs.slab.vacant_key();
        let started = Process::spawn(words).and_then(|mut p| {
            self.register_process(pk, &mut p)?;
            Ok(p)
        });
        let process = match started {
            Ok(p) => p,
            Err(e) => {
                // A process that started and could not be registered is killed as it drops.
                self.release_command();
                WorkerStats::add(&self.stats().commands_failed_total, 1);
                let reason = format!("cannot start {name}: {e}");
                self.close_ws(key, CloseCode::INTERNAL_ERROR, &reason);
                return;
            }
        };
        WorkerStats::add(&self.stats().commands_started_total, 1);
        let owner = self.conns[key].id(key);
        self.procs.slab.insert(Proc {
            process,
            owner: Some(owner),
            out: Default::default(),
            partial_since: None,
            stdin_buf: Vec::new(),
            stdin_full: false,
            paused: false,
            status: None,
            exited_at: None,
            stop: None,
        });
        self.procs.by_conn.insert(key, pk);
    }

    fn register_process(&self, pk: usize, p: &mut Process) -> io::Result<()> {
        let registry = self.poll.registry();
        if let Some(s) = p.stdout.as_mut() {
            registry.register(s, token(pk, STDOUT), Interest::READABLE)?;
        }
        if let Some(s) = p.stderr.as_mut() {
            registry.register(s, token(pk, STDERR), Interest::READABLE)?;
        }
        if let Some(s) = p.stdin.as_mut() {
            registry.register(s, token(pk, STDIN), Interest::WRITABLE)?;
        }
        if let Some(fd) = &p.pidfd {
            let raw = fd.as_raw_fd();
            registry.register(&mut SourceFd(&raw), token(pk, EXIT), Interest::READABLE)?;
        }
        Ok(())
    }

    /// A message from the client: text goes to stdin with a newline; binary is refused (1003).
    pub(super) fn command_message(&mut self, key: usize, kind: MessageKind, payload: &[u8]) {
        if kind == MessageKind::Binary {
            WorkerStats::add(&self.stats().commands_binary_refused_total, 1);
            let reason = "a command's input is text: binary messages are refused";
            self.close_ws(key, CloseCode::UNSUPPORTED, reason);
            return;
        }
        let Some(&pk) = self.procs.by_conn.get(&key) else {
            return;
        };
        let proc = &mut self.procs.slab[pk];
        if proc.process.stdin.is_none() {
            return; // the process closed its input: nothing more reaches it
        }
        proc.stdin_buf.extend_from_slice(payload);
        proc.stdin_buf.push(b'\n');
        self.flush_stdin(pk);
        let proc = &mut self.procs.slab[pk];
        if proc.stdin_buf.len() > STDIN_MAX {
            // Stop reading this connection; the rest of the read waits (see `Procs::input_blocked`).
            proc.stdin_full = true;
            self.steps_left = 0;
        }
    }

    /// Writes waiting input to stdin; returns true when the buffer fell back under the bound
    /// and the connection may be read again.
    fn flush_stdin(&mut self, pk: usize) -> bool {
        let registry = self.poll.registry();
        let proc = &mut self.procs.slab[pk];
        let Some(pipe) = proc.process.stdin.as_mut() else {
            proc.stdin_buf = Vec::new();
            return mem::take(&mut proc.stdin_full);
        };
        let mut done = 0;
        let failed = loop {
            if done == proc.stdin_buf.len() {
                break false;
            }
            match pipe.write(&proc.stdin_buf[done..]) {
                Ok(0) => break true,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        proc.stdin_buf.drain(..done);
        if failed {
            // The process closed its input (or exited): what is sent to it now is dropped.
            if let Some(mut s) = proc.process.stdin.take() {
                deregister(registry, &mut s);
            }
            proc.stdin_buf = Vec::new();
        }
        if proc.stdin_full && proc.stdin_buf.len() <= STDIN_MAX {
            proc.stdin_full = false;
            return true;
        }
        false
    }

    /// An event on a process's token.
    pub(super) fn process_event(&mut self, t: Token) {
        let (pk, kind) = (t.0 / KINDS, t.0 % KINDS);
        let Some(proc) = self.procs.slab.get(pk) else {
            return;
        };
        let owner = proc.owner;
        match kind {
            STDIN => {
                if self.flush_stdin(pk)
                    && let Some(o) = owner.filter(|&o| self.is_live(o))
                {
                    self.read_ready(o.slot(), false);
                }
            }
            EXIT => self.check_exit(pk),
            _ => self.read_output(pk),
        }
        self.reap_owner(owner);
    }

    fn reap_owner(&mut self, owner: Option<ConnId>) {
        if let Some(o) = owner.filter(|&o| self.is_live(o)) {
            self.reap(o.slot());
        }
    }

    /// Reads the process's output and sends it, line by line, within the turn's budget and
    /// while the connection's queue is under `--max-queued`.
    fn read_output(&mut self, pk: usize) {
        let Some(proc) = self.procs.slab.get(pk) else {
            return;
        };
        let Some(owner) = proc.owner.filter(|&o| self.is_live(o)) else {
            return;
        };
        if proc.paused {
            return;
        }
        let key = owner.slot();
        let max_queued = self.shared.config.max_queued;
        let mut buf = mem::take(&mut self.read_buf);
        let mut budget_spent = false;
        self.corked = Some(key);
        for stream in [STDOUT, STDERR] {
            let mut lines = mem::take(&mut self.procs.slab[pk].out[stream]);
            let send =
                |w: &mut Worker, text: &str| w.send_data(key, MessageKind::Text, text.as_bytes());
            let mut reads = 0;
            loop {
                let conn = &mut self.conns[key];
                if conn.dead {
                    break;
                }
                if conn.queued() > max_queued {
                    conn.paused = true;
                    self.procs.slab[pk].paused = true;
                    break;
                }
                if reads == READS_PER_TURN {
                    budget_spent = true;
                    break;
                }
                let p = &mut self.procs.slab[pk].process;
                let Some(pipe) = (if stream == STDOUT {
                    &mut p.stdout
                } else {
                    &mut p.stderr
                }) else {
                    break;
                };
                match pipe.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        reads += 1;
                        lines.feed(&buf[..n], &mut |text| send(self, text));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // The end of the stream (or a failed pipe, which cannot be read either).
                    _ => {
                        lines.flush(true, &mut |text| send(self, text));
                        if let Some(mut s) = p_take(&mut self.procs.slab[pk].process, stream) {
                            deregister(self.poll.registry(), &mut s);
                        }
                        break;
                    }
                }
            }
            self.procs.slab[pk].out[stream] = lines;
        }
        self.uncork(key);
        self.corked = None;
        self.cork.clear();
        self.read_buf = buf;
        let proc = &mut self.procs.slab[pk];
        proc.partial_since = if proc.out.iter().any(Lines::has_partial) {
            proc.partial_since.or_else(|| Some(Instant::now()))
        } else {
            None
        };
        if budget_spent && !proc.paused {
            self.procs.ready.push(pk);
        }
        self.finish_if_done(pk);
    }

    /// The connection drained under `--max-queued`: reads output again.
    pub(super) fn resume_command_output(&mut self, key: usize) {
        let Some(&pk) = self.procs.by_conn.get(&key) else {
            return;
        };
        if mem::take(&mut self.procs.slab[pk].paused) {
            self.read_output(pk);
        }
    }

    /// Output left unread at the end of the processes' last turns.
    pub(super) fn run_ready_commands(&mut self) {
        for pk in mem::take(&mut self.procs.ready) {
            let owner = self.procs.slab.get(pk).and_then(|p| p.owner);
            self.read_output(pk);
            self.reap_owner(owner);
        }
    }

    /// Reaps the process if it has exited; then sends what is left of its output and its status.
    fn check_exit(&mut self, pk: usize) {
        let Some(proc) = self.procs.slab.get_mut(pk) else {
            return;
        };
        let status = match proc.process.try_reap() {
            Ok(Some(status)) => status,
            Ok(None) => return,
            Err(e) => {
                eprintln!(
                    "gateway: worker {}: waiting for command process {}: {e}",
                    self.id,
                    proc.process.pid()
                );
                return;
            }
        };
        proc.status = Some(status);
        if let Some(fd) = proc.process.pidfd.take() {
            deregister(self.poll.registry(), &mut SourceFd(&fd.as_raw_fd()));
        }
        if let Some(mut s) = proc.process.stdin.take() {
            deregister(self.poll.registry(), &mut s);
        }
        let owned = proc.owner.is_some();
        proc.exited_at = Some(Instant::now());
        self.release_command();
        if !owned {
            self.drop_process(pk);
            return;
        }
        self.read_output(pk);
    }

    /// Once the process is reaped and its output read to the end: the status, then close 1000.
    fn finish_if_done(&mut self, pk: usize) {
        let Some(proc) = self.procs.slab.get(pk) else {
            return;
        };
        let p = &proc.process;
        if proc.status.is_none() || p.stdout.is_some() || p.stderr.is_some() {
            return;
        }
        self.finish(pk);
    }

    /// Sends the last of the output, the exit status and close 1000; the process is gone.
    fn finish(&mut self, pk: usize) {
        let mut proc = self.procs.slab.remove(pk);
        close_pipes(self.poll.registry(), &mut proc.process, true);
        let Some(owner) = proc.owner else {
            return;
        };
        let key = owner.slot();
        if self.procs.by_conn.get(&key) == Some(&pk) {
            self.procs.by_conn.remove(&key);
        }
        if !self.is_live(owner) {
            return;
        }
        for lines in &mut proc.out {
            lines.flush(true, &mut |text| {
                self.send_data(key, MessageKind::Text, text.as_bytes())
            });
        }
        if let Some(status) = proc.status {
            let message = status_message(status);
            self.send_data(key, MessageKind::Text, message.as_bytes());
        }
        self.close_ws(key, CloseCode::NORMAL, "");
    }
}

/// Takes a process's stdout or stderr out of it.
fn p_take(p: &mut Process, stream: usize) -> Option<mio::unix::pipe::Receiver> {
    if stream == STDOUT {
        p.stdout.take()
    } else {
        p.stderr.take()
    }
}
