//! The end of a command process and its deadlines: the stop sequence when its connection
//! goes (stdin closed, SIGINT after 1 s, SIGKILL after 1 s more), unfinished lines sent after
//! a short wait, the wait for the pipes' end after an exit, polling for exits where there are
//! no pidfds, and killing everything when the worker stops.

use std::mem;
use std::time::{Duration, Instant};

use super::{EOF_WAIT, INTERRUPT_AFTER, KILL_AFTER, PARTIAL_WAIT, REAP_POLL, Stop, close_pipes};
use crate::proto::MessageKind;
use crate::server::ConnId;
use crate::server::stats::WorkerStats;
use crate::server::worker::Worker;

impl Worker {
    /// The connection has gone (closed, failed, reaped): stdin and the output pipes close and
    /// the stop sequence starts.
    pub(in crate::server::worker) fn command_detached(&mut self, id: ConnId) {
        let Some(pk) = self.procs.by_conn.remove(&id.slot()) else {
            return;
        };
        let proc = &mut self.procs.slab[pk];
        proc.owner = None;
        close_pipes(self.poll.registry(), &mut proc.process, false);
        proc.stdin_buf = Vec::new();
        proc.out = Default::default();
        proc.partial_since = None;
        if proc.status.is_some() {
            self.drop_process(pk);
            return;
        }
        proc.stop = Some((Instant::now() + INTERRUPT_AFTER, Stop::Interrupt));
    }

    /// Removes a process, killing and reaping it first if it still runs.
    pub(in crate::server::worker) fn drop_process(&mut self, pk: usize) {
        let mut proc = self.procs.slab.remove(pk);
        close_pipes(self.poll.registry(), &mut proc.process, true);
        if proc.status.is_none() {
            proc.process.kill_and_wait();
            self.release_command();
        }
    }

    /// The worker is stopping: every process is killed and reaped.
    pub(in crate::server::worker) fn kill_all_commands(&mut self) {
        let keys: Vec<usize> = self.procs.slab.iter().map(|(k, _)| k).collect();
        for pk in keys {
            self.drop_process(pk);
        }
        self.procs.by_conn.clear();
        self.procs.ready.clear();
    }

    /// How long the loop may sleep as far as processes are concerned.
    pub(in crate::server::worker) fn commands_timeout(&self) -> Option<Duration> {
        if self.procs.slab.is_empty() {
            return None;
        }
        if !self.procs.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let poll = self
            .procs
            .slab
            .iter()
            .any(|(_, p)| p.needs_poll())
            .then_some(REAP_POLL);
        let due = self
            .procs
            .slab
            .iter()
            .filter_map(|(_, p)| p.next_due())
            .min()
            .map(|at| at.saturating_duration_since(now));
        [poll, due].into_iter().flatten().min()
    }

    /// Whatever of the processes' deadlines is due: partial lines, the stop sequence, the wait
    /// for the pipes' end after an exit, and polling for exits without pidfds.
    pub(in crate::server::worker) fn run_command_timers(&mut self) {
        if self.procs.slab.is_empty() {
            return;
        }
        let now = Instant::now();
        let due: Vec<usize> = self
            .procs
            .slab
            .iter()
            .filter(|(_, p)| p.needs_poll() || p.next_due().is_some_and(|at| at <= now))
            .map(|(k, _)| k)
            .collect();
        for pk in due {
            // Each step touches only its own process, but a removed one is skipped all the same.
            let Some(owner) = self.procs.slab.get(pk).map(|p| p.owner) else {
                continue;
            };
            self.process_due(pk, now);
            self.reap_owner(owner);
        }
    }

    fn process_due(&mut self, pk: usize, now: Instant) {
        if self.procs.slab.get(pk).is_some_and(|p| p.needs_poll()) {
            self.check_exit(pk);
        }
        let Some(proc) = self.procs.slab.get_mut(pk) else {
            return;
        };
        if let Some((_, step)) = proc.stop.filter(|(at, _)| *at <= now) {
            match step {
                Stop::Interrupt => {
                    proc.process.signal_group(libc::SIGINT);
                    proc.stop = Some((now + KILL_AFTER, Stop::Kill));
                }
                Stop::Kill => {
                    proc.process.signal_group(libc::SIGKILL);
                    proc.stop = None;
                    WorkerStats::add(&self.stats().commands_killed_total, 1);
                }
            }
            return;
        }
        if proc.exited_at.is_some_and(|t| t + EOF_WAIT <= now) {
            if proc.paused {
                // Waiting for the client, not for the pipes: wait on.
                proc.exited_at = Some(now);
            } else {
                self.finish(pk);
            }
            return;
        }
        if proc.partial_since.is_some_and(|t| t + PARTIAL_WAIT <= now) {
            proc.partial_since = None;
            let Some(owner) = proc.owner.filter(|&o| self.is_live(o)) else {
                return;
            };
            let key = owner.slot();
            let mut out = mem::take(&mut self.procs.slab[pk].out);
            self.corked = Some(key);
            for lines in &mut out {
                lines.flush(false, &mut |text| {
                    self.send_data(key, MessageKind::Text, text.as_bytes())
                });
            }
            self.uncork(key);
            self.corked = None;
            self.cork.clear();
            self.procs.slab[pk].out = out;
        }
    }
}
