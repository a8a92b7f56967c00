//! A gateway node in its own process (the `gateway` binary), so a test can kill it with
//! SIGKILL mid-stream.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

#[derive(Debug)]
pub struct Node {
    child: Child,
    pub addr: SocketAddr,
}

/// Starts `gateway --bus URL` on a free port and waits until its bus is connected.
pub fn spawn_node(bus: &str) -> Node {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--listen",
            &addr.to_string(),
            "--bus",
            bus,
            "--workers",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the gateway binary");
    let node = Node { child, addr };
    crate::util::eventually(
        "the node's bus connected",
        std::time::Duration::from_secs(10),
        || {
            std::net::TcpStream::connect(addr).ok()?;
            crate::util::http_get(addr, "/healthz")
                .body_text()
                .contains("bus: connected")
                .then_some(())
        },
    );
    node
}

impl Node {
    /// SIGKILL: no drain, no close frames.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}
