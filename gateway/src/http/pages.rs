//! The HTML pages the gateway serves: the index, the chat room, the watched file, the echo
//! tester and a command's page. Each is one self-contained document (inline CSS and JS, no
//! CDN), so it works without network access.

use std::fmt::Write as _;

use crate::topics::TopicPage;

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:2em auto;max-width:46em;padding:0 1em}\
code{background:#f3f3f3;padding:0 .2em}table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:left;border-bottom:1px solid #ddd}";

/// The index: endpoints and the most followed topics (a [`TopicPage`]: at most
/// [`crate::topics::INDEX_TOPICS`] rows, whatever the number of topics), the totals, and a
/// form to filter by name prefix.
/// `commands`: the names of the configured commands (`--command`), each linked to its page.
pub fn index(page: &TopicPage, prefix: &str, commands: &[&str]) -> String {
    let mut rows = String::new();
    for (name, subs, seq) in &page.top {
        let link = if let Some(room) = name.strip_prefix("chat/") {
            format!(" <a href=\"/chat/{}\">page</a>", esc(room))
        } else if let Some(file) = name.strip_prefix("file/") {
            format!(" <a href=\"/file/{}\">page</a>", esc(file))
        } else {
            String::new()
        };
        let _ = write!(
            rows,
            "<tr><td><code>{}</code>{link}</td><td>{subs}</td><td>{seq}</td></tr>",
            esc(name)
        );
    }
    let summary = format!(
        "{} topics in all; {} match <code>{}</code>; the {} most followed are shown.",
        page.total,
        page.matching,
        esc(prefix),
        page.top.len()
    );
    if rows.is_empty() {
        rows.push_str("<tr><td colspan=3>no topics yet</td></tr>");
    }
    let prefix_attr = esc(prefix);
    let commands = if commands.is_empty() {
        "<p>none configured (<code>--command NAME=COMMAND LINE</code>)</p>".to_owned()
    } else {
        let mut items = String::new();
        for name in commands {
            let name = esc(name);
            let _ = write!(
                items,
                "<li><a href=\"/cmd/{name}\"><code>/cmd/{name}</code></a> (socket <code>/ws/cmd/{name}</code>)</li>"
            );
        }
        format!(
            "<p>Each needs the publish token: open the page as <code>/cmd/NAME?token=...</code>.</p><ul>{items}</ul>"
        )
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>push gateway</title><style>{STYLE}</style></head>
<body>
<h1>push gateway</h1>
<h2>Topics</h2>
<form action="/"><p>{summary} <input name="prefix" value="{prefix_attr}" placeholder="name prefix"> <button>filter</button></p></form>
<table><tr><th>topic</th><th>subscribers</th><th>messages</th></tr>{rows}</table>
<h2>Commands</h2>
{commands}
<h2>Endpoints</h2>
<ul>
<li><a href="/chat/lobby"><code>/chat/{{room}}</code></a>: a chat room page; its socket is <code>/ws/chat/{{room}}</code></li>
<li><code>/file/{{name}}</code>: a watched file (<code>--watch NAME=PATH</code>), updated live; its socket is <code>/ws/file/{{name}}?lastMod=&lt;hex ns&gt;</code></li>
<li><code>/ws/log/{{name}}?last=N</code> (WebSocket): each line appended to a tailed log (<code>--tail NAME=PATH</code>), after the last N lines</li>
<li><code>/ws</code> (WebSocket): subscribe, unsubscribe and publish to topics with a small JSON protocol</li>
<li><code>POST /publish/{{topic}}</code>: backends publish a message to a topic</li>
<li><a href="/echo"><code>/echo</code></a>: the echo tester page; as a WebSocket it echoes every message</li>
<li><code>/cmd/{{name}}</code>: a configured command's page; its socket <code>/ws/cmd/{{name}}</code> runs the command for each connection</li>
<li><a href="/healthz"><code>/healthz</code></a>, <a href="/metrics"><code>/metrics</code></a></li>
</ul>
</body></html>
"#
    )
}

/// The chat page for `room`: join with a name, send, see everyone's messages live, and see when
/// the connection drops (it reconnects on its own).
pub fn chat(room: &str) -> String {
    let room_json = serde_json::to_string(room).expect("a string");
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chat: {room_html}</title>
<style>{STYLE}
#log{{border:1px solid #ccc;height:22em;overflow-y:auto;padding:.5em;margin:.5em 0}}
#log div{{margin:.1em 0}} .sys{{color:#888;font-style:italic}} .name{{font-weight:600}}
[hidden]{{display:none!important}} form{{display:flex;gap:.5em}} #msg{{flex:1}}</style></head>
<body>
<h1>chat: {room_html}</h1>
<p id="status" class="sys">connecting…</p>
<form id="join"><input id="name" placeholder="your name" maxlength="40" required><button>join</button></form>
<div id="log" aria-live="polite"></div>
<form id="send" hidden><input id="msg" placeholder="message" maxlength="2000" autocomplete="off"><button>send</button></form>
<script>
"use strict";
const room = {room_json};
const log = document.getElementById("log");
const status = document.getElementById("status");
let ws = null, name = null, retry = 500;
function line(cls, parts) {{
  const d = document.createElement("div");
  if (cls) d.className = cls;
  for (const [c, t] of parts) {{ const s = document.createElement("span"); if (c) s.className = c; s.textContent = t; d.appendChild(s); }}
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 5;
  log.appendChild(d);
  if (atBottom) log.scrollTop = log.scrollHeight;
}}
function connect() {{
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  // A token given to the page (`?token=JWT`) goes on to its socket.
  const token = new URLSearchParams(location.search).get("token");
  ws = new WebSocket(proto + "//" + location.host + "/ws/chat/" + encodeURIComponent(room) + (token ? "?token=" + encodeURIComponent(token) : ""));
  ws.onopen = () => {{ status.textContent = "connected"; retry = 500; }};
  ws.onmessage = (ev) => {{
    let m;
    try {{ m = JSON.parse(ev.data); }} catch (_) {{ m = null; }}
    if (m && typeof m.username === "string" && typeof m.message === "string") line(null, [["name", m.username + ": "], [null, m.message]]);
    else line(null, [[null, String(ev.data)]]);
  }};
  ws.onclose = (ev) => {{
    status.textContent = "disconnected (" + (ev.code || "no code") + (ev.reason ? ": " + ev.reason : "") + "), reconnecting…";
    line("sys", [[null, "connection closed"]]);
    setTimeout(connect, retry); retry = Math.min(retry * 2, 10000);
  }};
}}
document.getElementById("join").onsubmit = (e) => {{
  e.preventDefault();
  name = document.getElementById("name").value.trim();
  if (!name) return;
  e.target.hidden = true;
  document.getElementById("send").hidden = false;
  document.getElementById("msg").focus();
}};
document.getElementById("send").onsubmit = (e) => {{
  e.preventDefault();
  const input = document.getElementById("msg");
  const text = input.value;
  if (!text || !ws || ws.readyState !== WebSocket.OPEN) return;
  ws.send(JSON.stringify({{username: name, message: text}}));
  input.value = "";
}};
connect();
</script>
</body></html>
"#,
        room_html = esc(room),
    )
}

/// The page for watched file `name`: its content now (`content`, the text of the version with
/// stamp `stamp`) in a `<pre>`, replaced by every newer version the socket pushes. Reconnects
/// ask with `lastMod`, so only a newer version is sent again.
pub fn file(name: &str, content: &str, stamp: u64) -> String {
    let name_json = serde_json::to_string(name).expect("a string");
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>file: {name_html}</title>
<style>{STYLE}
body{{max-width:none}} pre{{border:1px solid #ccc;padding:.5em;white-space:pre-wrap;word-break:break-all}}
.sys{{color:#888;font-style:italic}}</style></head>
<body>
<h1>file: {name_html}</h1>
<p id="status" class="sys">connecting…</p>
<pre id="content">{content_html}</pre>
<script>
"use strict";
const name = {name_json};
const lastMod = "{stamp:x}";
const content = document.getElementById("content");
const status = document.getElementById("status");
let retry = 500;
function connect() {{
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const token = new URLSearchParams(location.search).get("token");
  const ws = new WebSocket(proto + "//" + location.host + "/ws/file/" + encodeURIComponent(name) + "?lastMod=" + lastMod + (token ? "&token=" + encodeURIComponent(token) : ""));
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {{ status.textContent = "connected: changes appear as they happen"; retry = 500; }};
  ws.onmessage = (ev) => {{
    content.textContent = typeof ev.data === "string" ? ev.data : new TextDecoder().decode(ev.data);
    status.textContent = "updated " + new Date().toLocaleTimeString();
  }};
  ws.onclose = (ev) => {{
    status.textContent = "disconnected (" + (ev.code || "no code") + (ev.reason ? ": " + ev.reason : "") + "), reconnecting…";
    setTimeout(connect, retry); retry = Math.min(retry * 2, 10000);
  }};
}}
connect();
</script>
</body></html>
"#,
        name_html = esc(name),
        content_html = esc(content),
    )
}

/// The echo tester: connect to `/echo` (or another URL), send text or binary messages, see
/// each echo, close with a chosen code and reason, and see the close code and reason of every
/// close.
pub fn echo() -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>echo tester</title>
<style>{STYLE}
#log{{border:1px solid #ccc;height:20em;overflow-y:auto;padding:.5em;margin:.5em 0;font-family:monospace;white-space:pre-wrap}}
.sys{{color:#888;font-style:italic}} .out{{color:#05a}} form{{display:flex;gap:.5em;margin:.4em 0;align-items:center}} #url,#msg{{flex:1}}</style></head>
<body>
<h1>echo tester</h1>
<form id="conn"><input id="url" aria-label="socket URL"><button id="connect">connect</button></form>
<form id="closer"><label>code <input id="code" value="1000" size="5"></label><label>reason <input id="reason" size="16"></label><button id="close" disabled>close</button></form>
<p id="status" class="sys">not connected</p>
<form id="send"><input id="msg" placeholder="message" autocomplete="off"><label><input type="checkbox" id="binary"> binary</label><button id="sendbtn" disabled>send</button></form>
<div id="log" aria-live="polite"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const log = $("log"), status = $("status");
let ws = null;
$("url").value = (location.protocol === "https:" ? "wss:" : "ws:") + "//" + location.host + "/echo";
function line(cls, text) {{
  const d = document.createElement("div");
  d.className = cls;
  d.textContent = text;
  log.appendChild(d);
  log.scrollTop = log.scrollHeight;
}}
function connected(open) {{ $("close").disabled = !open; $("sendbtn").disabled = !open; }}
function connect() {{
  if (ws) ws.close();
  const sock = new WebSocket($("url").value);
  ws = sock;
  sock.binaryType = "arraybuffer";
  status.textContent = "connecting…";
  sock.onopen = () => {{ status.textContent = "open"; line("sys", "open: " + sock.url); connected(true); }};
  sock.onmessage = (ev) => {{
    if (typeof ev.data === "string") line("in", "received: " + ev.data);
    else line("in", "received binary (" + ev.data.byteLength + " bytes): " + new TextDecoder().decode(ev.data));
  }};
  sock.onerror = () => line("sys", "error");
  sock.onclose = (ev) => {{
    const text = "closed: " + ev.code + (ev.reason ? " " + ev.reason : "") + (ev.wasClean ? "" : " (not clean)");
    line("sys", text);
    if (ws === sock) {{ status.textContent = text; connected(false); ws = null; }}
  }};
}}
$("conn").onsubmit = (e) => {{ e.preventDefault(); connect(); }};
$("closer").onsubmit = (e) => {{
  e.preventDefault();
  if (!ws) return;
  try {{ ws.close(Number($("code").value), $("reason").value); }}
  catch (err) {{ line("sys", "cannot close that way: " + err.message); }}
}};
$("send").onsubmit = (e) => {{
  e.preventDefault();
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  const text = $("msg").value;
  if ($("binary").checked) {{ ws.send(new TextEncoder().encode(text)); line("out", "sent binary: " + text); }}
  else {{ ws.send(text); line("out", "sent: " + text); }}
  $("msg").value = "";
}};
connect();
</script>
</body></html>
"#
    )
}

/// The page of command `name`: its output as a scrolling log, an input line for its stdin, and
/// its exit status. The page itself needs no token: it passes the one in its own `?token=` to
/// the socket. It does not restart a command on its own; "run again" does.
pub fn command(name: &str) -> String {
    let name_json = serde_json::to_string(name).expect("a string");
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>command: {name_html}</title>
<style>{STYLE}
body{{max-width:60em}} #log{{border:1px solid #ccc;height:24em;overflow-y:auto;padding:.5em;margin:.5em 0;font-family:monospace;white-space:pre-wrap;word-break:break-all}}
.sys{{color:#888;font-style:italic}} .in{{color:#05a}} form{{display:flex;gap:.5em}} #line{{flex:1}} #exit{{font-weight:600}}</style></head>
<body>
<h1>command: {name_html}</h1>
<p id="status" class="sys">starting…</p>
<div id="log" aria-live="polite"></div>
<form id="send"><input id="line" placeholder="a line for the command's input" autocomplete="off"><button>send</button></form>
<p><span id="exit"></span> <button id="again" hidden>run again</button></p>
<script>
"use strict";
const name = {name_json};
const token = new URLSearchParams(location.search).get("token");
const log = document.getElementById("log"), status = document.getElementById("status");
const exit = document.getElementById("exit"), again = document.getElementById("again");
let ws = null, last = null;
function line(cls, text) {{
  const d = document.createElement("div");
  if (cls) d.className = cls;
  d.textContent = text;
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 5;
  log.appendChild(d);
  if (atBottom) log.scrollTop = log.scrollHeight;
  return d;
}}
// The socket's last message before its close 1000 is the exit status, {{"exit": N}} or {{"signal": N}}.
function status_of(text) {{
  try {{
    const m = JSON.parse(text);
    const keys = m && typeof m === "object" ? Object.keys(m) : [];
    if (keys.length === 1 && (keys[0] === "exit" || keys[0] === "signal") && Number.isInteger(m[keys[0]])) return m;
  }} catch (_) {{}}
  return null;
}}
function run() {{
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const query = token ? "?token=" + encodeURIComponent(token) : "";
  ws = new WebSocket(proto + "//" + location.host + "/ws/cmd/" + encodeURIComponent(name) + query);
  exit.textContent = ""; again.hidden = true; last = null;
  ws.onopen = () => {{ status.textContent = "running"; }};
  ws.onmessage = (ev) => {{ last = {{text: String(ev.data), el: line(null, String(ev.data))}}; }};
  ws.onclose = (ev) => {{
    const st = ev.code === 1000 && last ? status_of(last.text) : null;
    if (st) {{
      last.el.remove();
      exit.textContent = "exit" in st ? "exited with code " + st.exit : "killed by signal " + st.signal;
      status.textContent = "finished";
    }} else {{
      status.textContent = "closed (" + (ev.code || "no code") + (ev.reason ? ": " + ev.reason : "") + ")";
      if (ev.code === 1006 && !last) status.textContent += ": refused? the page needs ?token=<publish token>";
    }}
    again.hidden = false;
  }};
}}
document.getElementById("send").onsubmit = (e) => {{
  e.preventDefault();
  const input = document.getElementById("line");
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  ws.send(input.value);
  line("in", "> " + input.value);
  input.value = "";
}};
again.onclick = () => {{ line("sys", "(run again)"); run(); }};
run();
</script>
</body></html>
"#,
        name_html = esc(name),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn pages_escape_and_need_no_network() {
        let page = super::chat("lobby");
        assert!(page.contains("const room = \"lobby\";"));
        assert!(!page.contains("http://") && !page.contains("https://"));
        let listing = |top: Vec<(String, usize, u64)>| crate::topics::TopicPage {
            total: 7,
            matching: 1,
            top,
        };
        let index = super::index(&listing(vec![("chat/a<b".into(), 3, 9)]), "\"x", &[]);
        assert!(index.contains("none configured") && index.contains("href=\"/echo\""));
        assert!(index.contains("chat/a&lt;b") && index.contains("<td>3</td>"));
        assert!(index.contains("7 topics in all; 1 match <code>&quot;x</code>"));
        assert!(index.contains("value=\"&quot;x\""));
        let index = super::index(&listing(vec![("file/conf".into(), 0, 1)]), "", &["up<"]);
        assert!(index.contains("<a href=\"/cmd/up&lt;\">"));
        assert!(index.contains("<a href=\"/file/conf\">page</a>"));
        let page = super::file("conf", "</pre><script>x", 0x1f);
        assert!(page.contains("&lt;/pre&gt;&lt;script&gt;x</pre>"));
        assert!(page.contains("const lastMod = \"1f\";"));
        assert!(!page.contains("http://") && !page.contains("https://"));
        // Command names are feed names ([A-Za-z0-9_.-]), so they need no escaping in a script.
        assert!(super::command("up.1").contains("const name = \"up.1\";"));
        for page in [super::echo(), super::command("sed")] {
            assert!(!page.contains("http://") && !page.contains("https://"));
        }
    }
}
