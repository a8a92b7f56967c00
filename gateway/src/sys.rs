//! Operating-system calls that std does not wrap: the open-file limit (getrlimit/setrlimit),
//! which the gateway and loadgen both read and raise here and nowhere else, and marking the
//! descriptors a process inherited close-on-exec (so command processes do not get them),
//! giving free heap memory back to the kernel, and steering new connections to the worker of
//! the CPU that received them (`--steer-by-cpu`).

use std::io;

/// Returns the allocator's free memory to the kernel where it can (glibc's `malloc_trim`,
/// which also releases free pages in the middle of every arena, not only at the top); a no-op
/// with other C libraries.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it takes the allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The open-file limit as (soft, hard).
pub fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft limit on open files to the hard limit; returns the new (soft, hard) pair.
///
/// Every connection is a file descriptor, so the soft limit (often 1024) caps connections long
/// before memory does. The hard limit can only be raised by root (`ulimit -Hn`,
/// `LimitNOFILE=` in a systemd unit, or `/etc/security/limits.conf`); see docs/OPERATIONS.md.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = nofile_limit()?;
    if soft < hard {
        let raised = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: `raised` is a valid rlimit; the call only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((hard, hard))
}

/// Sets the soft limit on open files (at most the hard limit). For tests that make the process
/// run out of descriptors on purpose.
pub fn set_nofile_soft_limit(soft: u64) -> io::Result<()> {
    let (_, hard) = nofile_limit()?;
    let lim = libc::rlimit {
        rlim_cur: soft.min(hard),
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit; the call only reads it.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Marks every descriptor above stderr close-on-exec, so that no process the gateway starts
/// (`--command`) inherits one. Descriptors std and mio open are close-on-exec already; this is
/// for those the gateway itself inherited (from a shell, a supervisor, a test runner), which
/// would otherwise pass on to every command.
pub fn cloexec_inherited() -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range(2) takes no pointers; with CLOSE_RANGE_CLOEXEC it closes nothing,
    // it only sets FD_CLOEXEC on the range (Linux 5.11 and later).
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return Ok(());
    }
    // Older kernels: one descriptor at a time, as /proc lists them.
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::c_int>().ok())
        else {
            continue;
        };
        if fd > 2 {
            // SAFETY: fcntl(2) with F_GETFD/F_SETFD takes no pointers; a descriptor closed
            // meanwhile (the directory's own) just fails with EBADF.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
    }
    Ok(())
}

/// Makes a SO_REUSEPORT group (the sockets bound on `listener`'s address, in the order they
/// were bound) hand each new connection to socket `cpu % n`, `cpu` being the CPU that received
/// it: a classic BPF program, `ld cpu; mod #n; ret a`.
pub fn steer_by_cpu(listener: &std::net::TcpListener, n: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    // The ancillary load of the current CPU.
    let cpu = (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32;
    let op = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let mut code = [
        op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, cpu),
        op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, n),
        op(libc::BPF_RET | libc::BPF_A, 0),
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: a valid descriptor, and a program the kernel copies during the call.
    let r = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const prog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn soft_limit_reaches_hard_limit() {
        let (soft, hard) = super::raise_nofile_limit().unwrap();
        assert_eq!(soft, hard);
        assert_eq!(super::nofile_limit().unwrap(), (soft, hard));
    }
}
