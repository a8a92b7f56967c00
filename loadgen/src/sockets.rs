//! Socket setup for client connections: a non-blocking TCP socket with its connect under way,
//! bound to a source address 127.0.0.K for loopback targets (each address has its own
//! ephemeral ports), and connect errors turned into failure causes that group well.

use std::borrow::Cow;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

use crate::url::Endpoint;

/// The source address of connection `index` toward `target`: 127.0.0.1, .2, ... for loopback
/// targets, `per_addr` connections each; `None` (the kernel chooses) otherwise.
pub fn source_addr(target: &Endpoint, per_addr: usize, index: usize) -> Option<Ipv4Addr> {
    target
        .is_loopback_v4()
        .then(|| Ipv4Addr::new(127, 0, 0, (1 + index / per_addr.max(1)) as u8))
}

/// A non-blocking socket with its connect under way, bound to `src` when given.
pub fn open_socket(target: SocketAddr, src: Option<Ipv4Addr>) -> io::Result<TcpStream> {
    let s = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    if let Some(ip) = src {
        set_bind_address_no_port(&s);
        s.bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())?;
    }
    match s.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

/// IP_BIND_ADDRESS_NO_PORT: a socket bound to a source address gets its port at connect time,
/// chosen for the whole 4-tuple, instead of at bind time from the ports free for every
/// destination. Best effort: without it binding still works, with fewer ports.
fn set_bind_address_no_port(s: &Socket) {
    let one: libc::c_int = 1;
    // SAFETY: the fd is a valid socket owned by `s`; the option value is a c_int that lives for
    // the duration of the call, and its size is passed alongside.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Whether a socket whose connect was under way is connected now: `Ok(false)` while it still
/// connects (a spurious wake-up), `Err` with the connect error when it failed.
pub fn is_connected(stream: &TcpStream) -> io::Result<bool> {
    if let Ok(Some(e)) | Err(e) = stream.take_error() {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// A connect error as a failure cause that groups well.
pub fn connect_cause(e: &io::Error) -> Cow<'static, str> {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "connect: refused".into(),
        Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => {
            "connect: no free source port (EADDRNOTAVAIL); lower --per-addr".into()
        }
        Some(libc::EMFILE | libc::ENFILE) => "connect: open-file limit reached (EMFILE)".into(),
        Some(libc::ETIMEDOUT) => "connect: timed out".into(),
        Some(libc::ECONNRESET) => "connect: reset".into(),
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => "connect: unreachable".into(),
        _ => format!("connect: {e}").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_group_by_cause() {
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(connect_cause(&e), "connect: refused");
        let e = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(connect_cause(&e).contains("open-file limit"));
    }

    #[test]
    fn loopback_targets_spread_over_source_addresses() {
        let lo = crate::url::parse_ws("ws://127.0.0.1:1/").unwrap();
        assert_eq!(source_addr(&lo, 5000, 0), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(
            source_addr(&lo, 5000, 5000),
            Some(Ipv4Addr::new(127, 0, 0, 2))
        );
        let v6 = crate::url::parse_ws("ws://[::1]:1/").unwrap();
        assert_eq!(source_addr(&v6, 5000, 0), None);
    }
}
