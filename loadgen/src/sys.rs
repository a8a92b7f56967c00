//! Process figures from the operating system: loadgen's own CPU time (getrusage, for the
//! process and for one thread such as the publisher) and a target process's CPU time and
//! resident memory (/proc/PID/stat, /proc/PID/status).
//!
//! These let every report put loadgen's CPU use beside the target's, so a reader can see which
//! side was the bottleneck.

use serde::{Deserialize, Serialize};

/// CPU seconds spent by this process (all threads) so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuTime {
    pub user_s: f64,
    pub sys_s: f64,
}

impl CpuTime {
    pub fn total(&self) -> f64 {
        self.user_s + self.sys_s
    }

    pub fn add(&mut self, o: &CpuTime) {
        self.user_s += o.user_s;
        self.sys_s += o.sys_s;
    }

    /// CPU time spent between `self` (earlier) and `later`.
    pub fn since(&self, later: &CpuTime) -> CpuTime {
        CpuTime {
            user_s: (later.user_s - self.user_s).max(0.0),
            sys_s: (later.sys_s - self.sys_s).max(0.0),
        }
    }
}

/// getrusage(RUSAGE_SELF): CPU time of this process, all threads.
pub fn self_cpu() -> CpuTime {
    rusage(libc::RUSAGE_SELF)
}

/// getrusage(RUSAGE_THREAD): CPU time of the calling thread only.
pub fn thread_cpu() -> CpuTime {
    rusage(libc::RUSAGE_THREAD)
}

fn rusage(who: libc::c_int) -> CpuTime {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the duration of the call.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return CpuTime::default();
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    CpuTime {
        user_s: tv(ru.ru_utime),
        sys_s: tv(ru.ru_stime),
    }
}

/// Clock ticks per second, the unit of utime/stime in /proc/PID/stat.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime and stime of `pid` from /proc/PID/stat; `None` if the process is gone.
pub fn proc_cpu(pid: u32) -> Option<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat, clock_ticks())
}

/// Fields 14 and 15 (utime, stime) of a /proc/PID/stat line. The command name (field 2) is in
/// parentheses and may contain spaces, so fields are counted from the last ')'.
fn parse_stat_cpu(stat: &str, ticks: f64) -> Option<CpuTime> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field N is fields[N - 3].
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(CpuTime {
        user_s: utime / ticks,
        sys_s: stime / ticks,
    })
}

/// VmRSS of `pid` in bytes, from /proc/PID/status; `None` if the process is gone.
pub fn proc_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_counted_after_the_command_name() {
        let line = "1234 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        let cpu = parse_stat_cpu(line, 100.0).unwrap();
        assert_eq!(cpu.user_s, 2.5);
        assert_eq!(cpu.sys_s, 0.5);
        assert!(parse_stat_cpu("garbage", 100.0).is_none());
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(proc_cpu(pid).is_some());
        assert!(proc_rss(pid).unwrap() > 0);
        assert!(self_cpu().total() >= 0.0);
    }

    #[test]
    fn thread_cpu_counts_this_thread_only() {
        let busy = std::thread::spawn(|| {
            let t0 = thread_cpu();
            let start = std::time::Instant::now();
            let mut x = 0u64;
            while start.elapsed() < std::time::Duration::from_millis(50) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            t0.since(&thread_cpu()).total()
        });
        let idle = std::thread::spawn(|| {
            let t0 = thread_cpu();
            std::thread::sleep(std::time::Duration::from_millis(50));
            t0.since(&thread_cpu()).total()
        });
        let (busy, idle) = (busy.join().unwrap(), idle.join().unwrap());
        assert!(busy > 0.0, "{busy}");
        assert!(idle < busy, "{idle} {busy}");
    }
}
