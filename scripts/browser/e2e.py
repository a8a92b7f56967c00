#!/usr/bin/env python3
"""Browser-level test of the gateway's pages in headless Chromium, driven over WebDriver.

Speaks the W3C WebDriver protocol to chromedriver with the standard library only (no selenium),
so nothing but Debian's chromium and chromium-driver is needed. Checks:
  - chat: the page at /chat/ROOM connects, a name joins, a message typed and sent appears in the
    log, and a message published by someone else (POST /publish/chat/ROOM) appears live;
  - file (with --file NAME=PATH): the page at /file/NAME shows the file, and shows the new
    content after the file changes on disk;
  - echo: the tester page at /echo (asked for as text/html) connects, shows the echo of a text
    and of a binary message, and shows the close code of a close it asks for;
  - commands (with --token T, the gateway run with --publish-token T and the commands
    sed=sed -u s/a/b/ and count=sh -c 'echo one; echo two; exit 3'): /cmd/sed?token=T sends
    a typed line through sed and shows the answer, /cmd/count?token=T shows the output and
    "exited with code 3", and /cmd/sed without the token shows the refusal.
  - tokens (with --jwt JWT, against a gateway with --jwt-secret): the chat page without the
    token is refused, and with ?token=JWT works as above; with --token JWT as well, the command
    pages are driven with the JWT (its `commands` claim lists sed and count).
With an https:// --base (a gateway with --tls-cert/--tls-key) the same checks run over TLS
(the pages' sockets are then wss://); --insecure accepts a self-signed test certificate, in
Chromium (--ignore-certificate-errors) and in the publisher.
Screenshots go to --shots DIR. Exits non-zero with a clear message on the first failure.
"""
import argparse
import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


class Failure(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    def __init__(self, chromedriver, chromium, insecure=False):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [chromedriver, "--port=%d" % self.port], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.base = "http://127.0.0.1:%d" % self.port
        self.profile = tempfile.mkdtemp(prefix="gw-chromium-")
        deadline = time.time() + 20
        while True:
            try:
                self.call("GET", "/status")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.time() > deadline:
                    raise Failure("chromedriver did not start on port %d" % self.port)
                time.sleep(0.1)
        args = [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", "--window-size=1000,800", "--user-data-dir=" + self.profile,
        ]
        if insecure:
            args.append("--ignore-certificate-errors")
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "acceptInsecureCerts": insecure,
            "goog:chromeOptions": {"binary": chromium, "args": args}}}}
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"{}").get("value")
        except urllib.error.HTTPError as e:
            raise Failure("WebDriver %s %s: %s" % (method, path, e.read().decode(errors="replace")[:500]))

    def s(self, method, path, body=None):
        return self.call(method, "/session/%s%s" % (self.session, path), body)

    def go(self, url):
        self.s("POST", "/url", {"url": url})

    def find(self, css):
        return self.s("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def text(self, css):
        return self.s("GET", "/element/%s/text" % self.find(css))

    def type(self, css, text):
        self.s("POST", "/element/%s/value" % self.find(css), {"text": text})

    def click(self, css):
        self.s("POST", "/element/%s/click" % self.find(css), {})

    def screenshot(self, path):
        with open(path, "wb") as f:
            f.write(base64.b64decode(self.s("GET", "/screenshot")))

    def wait_text(self, css, predicate, what, timeout=10):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                last = self.text(css)
                if predicate(last):
                    return last
            except Failure:
                pass
            time.sleep(0.1)
        raise Failure("%s: %s never satisfied it within %ss; last text: %r" % (what, css, timeout, last))

    def close(self):
        try:
            self.call("DELETE", "/session/%s" % self.session)
        except Exception:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


# Set by --insecure: the publisher accepts the gateway's self-signed test certificate.
PUBLISH_SSL = None


def publish(base, topic, body):
    req = urllib.request.Request("%s/publish/%s" % (base, topic), data=body.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10, context=PUBLISH_SSL) as resp:
        return json.loads(resp.read())


def chat(wd, base, shots, token=None):
    room = "e2e"
    if token:
        # Tokens on: without one the socket is refused (401) and the page never connects.
        wd.go("%s/chat/%s" % (base, room))
        wd.wait_text("#status", lambda t: t.startswith("disconnected"), "chat page without a token is refused")
        wd.go("%s/chat/%s?token=%s" % (base, room, token))
    else:
        wd.go("%s/chat/%s" % (base, room))
    wd.wait_text("#status", lambda t: t == "connected", "chat page connects")
    wd.type("#name", "alice")
    wd.click("#join button")
    wd.type("#msg", "hello from the browser")
    wd.click("#send button")
    wd.wait_text("#log", lambda t: "alice: hello from the browser" in t, "own message appears")
    r = publish(base, "chat/" + room, json.dumps({"username": "bob", "message": "hi alice"}))
    if r.get("subscribers") != 1:
        raise Failure("expected the page to be the room's one subscriber, publish said %r" % r)
    wd.wait_text("#log", lambda t: "bob: hi alice" in t, "message from someone else appears live")
    wd.screenshot(os.path.join(shots, "chat-token.png" if token else "chat.png"))
    print("browser: chat page ok over %s (own message and a published message shown%s)"
          % (base.split(":", 1)[0], ", with a token" if token else ""))


def file_page(wd, base, name, path, shots):
    with open(path, "w") as f:
        f.write("first version\n")
    wd.go("%s/file/%s" % (base, name))
    wd.wait_text("pre", lambda t: "first version" in t, "file page shows the file")
    with open(path, "w") as f:
        f.write("second version, written while the page was open\n")
    wd.wait_text("pre", lambda t: "second version" in t, "file page updates live")
    wd.screenshot(os.path.join(shots, "file.png"))
    print("browser: file page ok over %s (content shown and updated live)" % base.split(":", 1)[0])


def echo_page(wd, base, shots):
    wd.go("%s/echo" % base)
    wd.wait_text("#status", lambda t: t == "open", "echo page connects")
    wd.type("#msg", "hello echo")
    wd.click("#sendbtn")
    wd.wait_text("#log", lambda t: "received: hello echo" in t, "echo of a text message shown")
    wd.click("#binary")
    wd.type("#msg", "bin")
    wd.click("#sendbtn")
    wd.wait_text("#log", lambda t: "received binary (3 bytes): bin" in t, "echo of a binary message shown")
    wd.screenshot(os.path.join(shots, "echo.png"))
    wd.click("#close")
    wd.wait_text("#log", lambda t: "closed: 1000" in t, "close code shown")
    print("browser: echo tester ok (text and binary echoes, close 1000 shown)")


def command_pages(wd, base, token, shots):
    wd.go("%s/cmd/sed?token=%s" % (base, token))
    wd.wait_text("#status", lambda t: t == "running", "command page starts sed")
    wd.type("#line", "banana")
    wd.click("#send button")
    wd.wait_text("#log", lambda t: "bbnana" in t, "sed's answer shown")
    wd.screenshot(os.path.join(shots, "cmd-sed.png"))
    wd.go("%s/cmd/count?token=%s" % (base, token))
    wd.wait_text("#exit", lambda t: t == "exited with code 3", "exit status shown")
    log = wd.text("#log")
    if "one" not in log or "two" not in log or "exit" in log:
        raise Failure("count's log should hold its two lines and not the status message: %r" % log)
    wd.screenshot(os.path.join(shots, "cmd-count.png"))
    wd.go("%s/cmd/sed" % base)
    wd.wait_text("#status", lambda t: "refused" in t, "a page without the token shows the refusal")
    print("browser: command pages ok (stdin round trip, exit status, refusal without the token)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="gateway base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--file", help="NAME=PATH of a file the gateway watches (--watch NAME=PATH)")
    ap.add_argument("--token", help="the gateway's --publish-token, to drive the command pages")
    ap.add_argument("--jwt", help="a JWT the gateway accepts (it runs with --jwt-secret): the chat "
                    "page is checked to be refused without it and to work with ?token=; the echo "
                    "page, which sends no token, is skipped")
    ap.add_argument("--shots", default="target/browser", help="directory for screenshots")
    ap.add_argument("--insecure", action="store_true",
                    help="accept a self-signed certificate (an https:// --base with a test certificate)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    a = ap.parse_args()
    os.makedirs(a.shots, exist_ok=True)
    global PUBLISH_SSL
    if a.insecure:
        PUBLISH_SSL = ssl._create_unverified_context()
    wd = None
    try:
        wd = WebDriver(a.chromedriver, a.chromium, a.insecure)
        chat(wd, a.base, a.shots, a.jwt)
        if a.file:
            name, path = a.file.split("=", 1)
            file_page(wd, a.base, name, path, a.shots)
        if not a.jwt:
            echo_page(wd, a.base, a.shots)
        if a.token:
            command_pages(wd, a.base, a.token, a.shots)
    except Failure as e:
        if wd:
            try:
                wd.screenshot(os.path.join(a.shots, "failure.png"))
            except Exception:
                pass
        print("browser: FAILED: %s" % e, file=sys.stderr)
        return 1
    finally:
        if wd:
            wd.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
