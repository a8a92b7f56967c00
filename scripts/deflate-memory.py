#!/usr/bin/env python3
"""scripts/deflate-memory.py - what permessage-deflate costs the gateway per connection.

Starts `gateway --listen 127.0.0.1:0 --workers W [GATEWAY ARGS]` (a fresh one per run), reads
its VmRSS/RssAnon (0 connections), then opens N WebSocket connections to /echo that offer
permessage-deflate the way browsers do (`permessage-deflate; client_max_window_bits`). Each
sends ONE compressed 8 KB text message (raw DEFLATE, context kept as a browser keeps it,
unless the server asked for client_no_context_takeover), reads the echo, and goes quiet.
After --hold seconds the gateway's memory is read again (N quiet connections), then every
connection closes with a close handshake and after --settle seconds it is read a third time
(after close). Bytes per connection = (RSS@N - RSS@0) * 1024 / N.

Python standard library only; traffic stays on 127.0.0.1. Exit 0 measured, 1 a run failed,
2 usage.

  scripts/deflate-memory.py --conns 1000 --reps 3
  scripts/deflate-memory.py --conns 1000 -- --deflate-client-context
"""

import argparse
import base64
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import time
import zlib

OFFER = "permessage-deflate; client_max_window_bits"


def rss(pid):
    """(VmRSS, RssAnon) in kB from /proc/PID/status."""
    vals = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon"):
                vals[k] = int(v.split()[0])
    return vals["VmRSS"], vals["RssAnon"]


def recv_until(sock, marker):
    buf = b""
    while marker not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed during the handshake")
        buf += chunk
    return buf


def frame(opcode, payload, rsv1=False):
    """A masked client frame."""
    mask = os.urandom(4)
    head = bytes([0x80 | (0x40 if rsv1 else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    reps = mask * (n // 4 + 1)
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(reps[:n], "big")).to_bytes(n, "big")
    return head + mask + body


def read_frame(sock, buf):
    """Reads one server frame: (opcode, rsv1, payload, rest of buf)."""
    while True:
        if len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            n, pos = b1 & 0x7F, 2
            if n == 126 and len(buf) >= 4:
                n, pos = struct.unpack("!H", buf[2:4])[0], 4
            elif n == 127 and len(buf) >= 10:
                n, pos = struct.unpack("!Q", buf[2:10])[0], 10
            if n < 126 or pos > 2:
                if len(buf) >= pos + n:
                    return b0 & 0x0F, bool(b0 & 0x40), buf[pos : pos + n], buf[pos + n :]
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed while reading a frame")
        buf += chunk


class Conn:
    def __init__(self, port, index):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {OFFER}\r\n\r\n"
            ).encode()
        )
        head, _, self.buf = recv_until(self.sock, b"\r\n\r\n").partition(b"\r\n\r\n")
        head = head.decode("latin-1")
        if not head.startswith("HTTP/1.1 101"):
            raise RuntimeError(f"upgrade refused: {head.splitlines()[0]}")
        ext = re.search(r"(?im)^sec-websocket-extensions:(.*)$", head)
        if not ext or "permessage-deflate" not in ext.group(1):
            raise RuntimeError("the gateway did not agree to permessage-deflate")
        self.extensions = ext.group(1).strip()
        # The client's compressor, kept between messages as a browser keeps it.
        self.deflate = zlib.compressobj(1, zlib.DEFLATED, -15)
        self.index = index

    def send_compressed(self, text):
        body = self.deflate.compress(text) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        assert body.endswith(b"\x00\x00\xff\xff")
        self.sock.sendall(frame(0x1, body[:-4], rsv1=True))
        opcode, rsv1, payload, self.buf = read_frame(self.sock, self.buf)
        if rsv1:
            payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
        if opcode != 0x1 or payload != text:
            raise RuntimeError(f"connection {self.index}: the echo differs")

    def close(self):
        self.sock.sendall(frame(0x8, struct.pack("!H", 1000)))
        opcode, _, _, self.buf = read_frame(self.sock, self.buf)
        if opcode != 0x8:
            raise RuntimeError(f"connection {self.index}: no close frame back")
        self.sock.close()


def message(index, size):
    """A chat-like JSON text of `size` bytes: compressible, different per connection."""
    words = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")
    body, i, length = [], index, 0
    while length < size:
        i = (i * 1103515245 + 12345) & 0x7FFFFFFF
        body.append(words[i % len(words)] + str(i % 97))
        length += len(body[-1]) + 1
    text = f'{{"user":"u{index}","text":"' + " ".join(body)
    return (text[: size - 2] + '"}').encode()


def run_once(args, rep):
    log_path = os.path.join(args.out, f"gateway.{rep}.log")
    log = open(log_path, "w")
    gw = subprocess.Popen(
        [args.gateway, "--listen", "127.0.0.1:0", "--workers", str(args.workers)]
        + args.gateway_args,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    conns = []
    try:
        port, deadline = None, time.time() + 10
        while port is None:
            m = re.search(r"listening on \S*:(\d+) ", open(log_path).read())
            if m:
                port = int(m.group(1))
            elif gw.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the gateway did not start ({log_path})")
            else:
                time.sleep(0.05)
        time.sleep(args.settle)
        rss0 = rss(gw.pid)
        for i in range(args.conns):
            conns.append(Conn(port, i))
        for c in conns:
            c.send_compressed(message(c.index, args.size))
        time.sleep(args.hold)
        rssn = rss(gw.pid)
        for c in conns:
            c.close()
        conns = []
        time.sleep(args.settle)
        rssc = rss(gw.pid)
        return rss0, rssn, rssc
    finally:
        for c in conns:
            c.sock.close()
        gw.terminate()
        gw.wait(10)
        log.close()


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Arguments after -- go to the gateway.",
    )
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    p.add_argument("--conns", type=int, default=1000)
    p.add_argument("--size", type=int, default=8192, help="bytes of the one message (8192)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--hold", type=float, default=2, help="quiet seconds before the reading")
    p.add_argument("--settle", type=float, default=1, help="seconds before the other readings")
    p.add_argument("--gateway", default=os.path.join(target, "release", "gateway"))
    p.add_argument("--out", default=os.path.join(target, "deflate-memory"))
    args, rest = p.parse_known_args()
    if rest and rest[0] == "--":
        rest = rest[1:]
    args.gateway_args = rest
    if args.conns < 1 or args.size < 16 or args.reps < 1:
        p.error("--conns and --reps must be positive, --size at least 16")
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for rep in range(1, args.reps + 1):
        try:
            (r0, a0), (rn, an), (rc, ac) = run_once(args, rep)
        except (RuntimeError, OSError) as e:
            print(f"deflate-memory: run {rep}: {e}", file=sys.stderr)
            return 1
        rows.append((r0, rn, rc, a0, an, ac, (rn - r0) * 1024 // args.conns,
                     (an - a0) * 1024 // args.conns, (rc - r0) * 1024 // args.conns))
    print(f"\nGateway memory, {args.conns} connections with permessage-deflate, one "
          f"{args.size}-byte compressed message each, {args.workers} workers, "
          f"args: {' '.join(args.gateway_args) or '(defaults)'}")
    names = ("VmRSS@0", "VmRSS@N", "VmRSS@closed", "Anon@0", "Anon@N", "Anon@closed",
             "B/conn", "B/conn(anon)", "B/conn(closed)")
    print("run    " + " ".join(f"{n:>14}" for n in names))
    for i, r in enumerate(rows, 1):
        print(f"{i:<6} " + " ".join(f"{v:>14}" for v in r))
    med = [int(statistics.median(col)) for col in zip(*rows)]
    print("median " + " ".join(f"{v:>14}" for v in med))
    print("(kB from /proc/PID/status; B/conn = (RSS@N - RSS@0) * 1024 / N; "
          "closed = --settle s after every connection closed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
