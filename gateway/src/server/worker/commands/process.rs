//! One command process as the operating system sees it: spawned in a process group of its own
//! with a clean environment, its three pipes non-blocking for the worker's `Poll`, a pidfd that
//! becomes readable when it exits, signals to its whole group, and reaping that never blocks.
//!
//! **Signals never reach a stranger.** The group's id is the leader's pid, which the kernel
//! does not reuse while the leader is unreaped (a zombie still holds it). So the group is only
//! signalled before the leader is reaped, and on exit the rest of the group is killed *before*
//! the leader is reaped: nothing of the command outlives it, and no signal can hit a process
//! group that took over the number later.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};

use mio::unix::pipe::{Receiver, Sender};

/// The whole environment a command gets (the gateway's own is not passed on).
pub(crate) const ENV: [(&str, &str); 2] = [("PATH", "/usr/bin:/bin"), ("LANG", "C.UTF-8")];

/// A running (or exited, not yet reaped) command.
#[derive(Debug)]
pub(crate) struct Process {
    child: Child,
    pub stdin: Option<Sender>,
    pub stdout: Option<Receiver>,
    pub stderr: Option<Receiver>,
    /// Readable once the process exits; `None` where pidfds are not available (Linux before
    /// 5.3, or a sandbox that forbids them): the worker then polls [`Process::try_reap`].
    pub pidfd: Option<OwnedFd>,
    reaped: bool,
}

impl Process {
    /// Starts `words` (program first; found on [`ENV`]'s `PATH`) with piped stdin, stdout and
    /// stderr, in a new process group, in the gateway's working directory.
    pub fn spawn(words: &[String]) -> io::Result<Process> {
        let (program, args) = words
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no program"))?;
        let mut child = Command::new(program)
            .args(args)
            .env_clear()
            .envs(ENV)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut process = Process {
            stdin: child.stdin.take().map(Sender::from),
            stdout: child.stdout.take().map(Receiver::from),
            stderr: child.stderr.take().map(Receiver::from),
            pidfd: pidfd_open(child.id()),
            child,
            reaped: false,
        };
        // On failure `process` is dropped, which kills and reaps the child.
        process.set_nonblocking()?;
        Ok(process)
    }

    fn set_nonblocking(&mut self) -> io::Result<()> {
        if let Some(p) = &self.stdin {
            p.set_nonblocking(true)?;
        }
        for p in [&self.stdout, &self.stderr].into_iter().flatten() {
            p.set_nonblocking(true)?;
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to every process of the command's group; nothing once it is reaped.
    pub fn signal_group(&self, signal: libc::c_int) {
        if self.reaped {
            return;
        }
        let Ok(pgid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill(2) takes no pointers; a negative pid names the process group, which is
        // the command's own (see the module documentation on why it cannot be another's).
        unsafe {
            libc::kill(-pgid, signal);
        }
    }

    /// If the process has exited: kills what is left of its group, reaps it, and returns its
    /// status. Never blocks.
    pub fn try_reap(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.reaped {
            return Ok(None);
        }
        if !exited_unreaped(self.child.id())? {
            return Ok(None);
        }
        self.signal_group(libc::SIGKILL);
        let status = self.child.try_wait()?;
        self.reaped = status.is_some();
        Ok(status)
    }

    /// Kills the whole group and waits for the leader (the worker is stopping; a killed process
    /// is reaped within moments).
    pub fn kill_and_wait(&mut self) {
        if self.reaped {
            return;
        }
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for Process {
    /// However the worker lets go of a process, it leaves no orphan and no zombie.
    fn drop(&mut self) {
        self.kill_and_wait();
    }
}

/// Whether process `pid`, a child of ours, has exited; it stays unreaped (`WNOWAIT`), so its
/// pid, and so its group's id, stay reserved.
fn exited_unreaped(pid: u32) -> io::Result<bool> {
    // SAFETY: siginfo_t is plain data for which all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable siginfo_t that outlives the call.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid filled `info` (or left it zeroed when nothing has exited: si_pid 0).
    Ok(unsafe { info.si_pid() } != 0)
}

/// A pidfd for `pid` (readable once it exits), or `None` where the kernel has none.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the descriptor was just returned to us and is owned by nothing else.
    // pidfd_open sets O_CLOEXEC itself, so no later child inherits it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::time::{Duration, Instant};

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    /// Polls [`Process::try_reap`] (the path without pidfds) until the process is reaped.
    fn reap(p: &mut Process) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = p.try_reap().expect("waitid") {
                return status;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "never exited");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn exits_and_signals_are_reaped_without_blocking() {
        let mut p = Process::spawn(&words(&["sh", "-c", "exit 7"])).unwrap();
        assert_eq!(reap(&mut p).code(), Some(7));
        // Reaped: no second status, and signals go nowhere.
        assert!(p.try_reap().unwrap().is_none());
        p.signal_group(libc::SIGKILL);

        let mut p = Process::spawn(&words(&["sleep", "30"])).unwrap();
        assert!(p.try_reap().unwrap().is_none(), "still running");
        p.signal_group(libc::SIGTERM);
        assert_eq!(reap(&mut p).signal(), Some(libc::SIGTERM));

        let e = Process::spawn(&words(&["/nonexistent/program"])).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn the_group_goes_with_its_leader() {
        // The leader exits at once; its background child would sleep on.
        let mut p = Process::spawn(&words(&["sh", "-c", "sleep 30 & echo $!"])).unwrap();
        let stdout = p.stdout.take().unwrap();
        stdout.set_nonblocking(false).unwrap();
        // One line: the background child keeps the pipe open, so there is no end to read to.
        let mut out = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut out).unwrap();
        let child: u32 = out.trim().parse().unwrap();
        assert_eq!(reap(&mut p).code(), Some(0));
        // Killed before the leader was reaped; gone (or a zombie of init's) soon after.
        let start = Instant::now();
        while let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) {
            if stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{child} still runs"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
