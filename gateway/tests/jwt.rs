//! Tokens (JWT) over real sockets: a gateway started with `--jwt-secret` or `--jwt-public-key`
//! and clients that present good, bad and no tokens.
//!
//! - this file: every upgrade needs a valid token (header or query), bad tokens are refused by
//!   cause and counted without harming other connections, and an open connection is closed
//!   with 3000 at its token's `exp` (plus `--jwt-leeway`).
//! - `scope`: the claims bound what a connection may do: `/ws` subscribe and publish, the chat,
//!   file and log sockets, chat messages, and `POST /publish`.
//! - `keys`: RS256 and ES256 public keys (key confusion refused), `reload_tokens`, and the
//!   `gateway token` subcommand.
//!
//! Tokens are signed here with `jsonwebtoken` directly, or forged by hand for the bad inputs;
//! the RSA and P-256 test keys are made in the test (no openssl CLI).

// Shared with the integration binary, which uses what this one leaves unused.
#[allow(dead_code, unused_imports)]
mod util;

#[path = "jwt/keys.rs"]
mod keys;
#[path = "jwt/scope.rs"]
mod scope;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gateway::server::ServerHandle;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use util::raw::{RawWs, TEXT};
use util::{Response, Timings, metric, try_raw_handshake};

/// The HS256 secret of the test gateways.
pub const SECRET: &str = "a test secret of at least 32 bytes";

/// Seconds since the Unix epoch, as `exp` counts them.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token with these claims, signed with `alg` and `key`.
pub fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign a test token")
}

/// A token with these claims, signed with [`SECRET`] (HS256).
pub fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

/// Claims valid for a minute with these `topics` and `publish` patterns.
pub fn grant(topics: &[&str], publish: &[&str]) -> Value {
    json!({"exp": unix_now() + 60, "sub": "test", "topics": topics, "publish": publish})
}

/// A gateway that verifies HS256 tokens signed with [`SECRET`].
pub fn start_hs() -> ServerHandle {
    util::start(util::Config {
        jwt_secret: Some(SECRET.to_owned()),
        ..util::config()
    })
}

/// An upgrade to `path`, presenting `token` (if any) as `Authorization: Bearer`.
pub fn upgrade(addr: SocketAddr, path: &str, token: Option<&str>) -> (RawWs, Response) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let extra: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("Authorization", b.as_str()))
        .collect();
    try_raw_handshake(addr, path, &extra)
}

/// An upgrade that must succeed.
pub fn open(addr: SocketAddr, path: &str, token: &str) -> RawWs {
    let (ws, head) = upgrade(addr, path, Some(token));
    assert_eq!(
        head.status,
        101,
        "{path}: {:?}",
        String::from_utf8_lossy(&head.body)
    );
    ws
}

/// Sends one `/ws` command.
pub fn send_json(ws: &mut RawWs, value: &Value) {
    ws.send_text(&value.to_string());
}

/// Reads the next message of a `/ws` connection as JSON.
pub fn read_json(ws: &mut RawWs) -> Value {
    let f = ws.read_frame();
    assert_eq!(f.opcode, TEXT, "expected a text message, got {f:?}");
    serde_json::from_slice(&f.payload).expect("a JSON message")
}

/// The counter of token refusals for `cause`.
pub fn refused(addr: SocketAddr, cause: &str) -> u64 {
    metric(addr, &format!("gateway_token_refused_{cause}_total"))
}

#[test]
fn every_upgrade_needs_a_valid_token() {
    let server = start_hs();
    let addr = server.local_addr();
    let token = hs256(&grant(&["chat/lobby"], &[]));
    for path in ["/echo", "/ws", "/ws/chat/lobby"] {
        let (_, head) = upgrade(addr, path, None);
        assert_eq!(head.status, 401, "{path} without a token");
        assert_eq!(head.header("www-authenticate"), Some("Bearer"), "{path}");
        open(addr, path, &token);
        let (_, head) = try_raw_handshake(addr, &format!("{path}?token={token}"), &[]);
        assert_eq!(head.status, 101, "{path} with the token in the query");
    }
    let mut ws = open(addr, "/echo", &token);
    ws.send_text("with a token");
    ws.expect_text("with a token");
    assert_eq!(refused(addr, "missing"), 3);
    assert_eq!(metric(addr, "gateway_http_refused_401_total"), 3);
    // Plain HTTP needs no token.
    assert_eq!(util::http_get(addr, "/healthz").status, 200);
}

#[test]
fn bad_tokens_are_refused_by_cause_and_harm_no_one() {
    let server = start_hs();
    let addr = server.local_addr();
    let good = hs256(&grant(&["news/*"], &[]));
    let mut bystander = open(addr, "/echo", &good);
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let forge =
        |header: &str, claims: &Value| format!("{}.{}.", b64(header), b64(&claims.to_string()));
    let claims = grant(&["news/*"], &[]);
    let (good_head, rest) = good.split_once('.').unwrap();
    let (_, good_sig) = rest.split_once('.').unwrap();
    let other_secret = EncodingKey::from_secret(b"another secret, also 32 bytes long");
    let cases: Vec<(&str, String, &str)> = vec![
        ("bad base64", "!!!.@@@.###".into(), "malformed"),
        ("two parts", "abc.def".into(), "malformed"),
        (
            "header not JSON",
            format!("{}.{}.c2ln", b64("nope"), b64("{}")),
            "malformed",
        ),
        ("no alg", forge(r#"{"typ":"JWT"}"#, &claims), "malformed"),
        (
            "alg none",
            forge(r#"{"alg":"none","typ":"JWT"}"#, &claims),
            "algorithm",
        ),
        (
            "alg none with the good signature",
            format!(
                "{}.{}.{good_sig}",
                b64(r#"{"alg":"none"}"#),
                b64(&claims.to_string())
            ),
            "algorithm",
        ),
        (
            "HS512 with the right secret",
            sign(
                Algorithm::HS512,
                &EncodingKey::from_secret(SECRET.as_bytes()),
                &claims,
            ),
            "algorithm",
        ),
        (
            "RS256 without a public key",
            forge(r#"{"alg":"RS256"}"#, &claims),
            "algorithm",
        ),
        (
            "another secret",
            sign(Algorithm::HS256, &other_secret, &claims),
            "signature",
        ),
        (
            "payload swapped",
            format!(
                "{good_head}.{}.{good_sig}",
                b64(&grant(&["**"], &["**"]).to_string())
            ),
            "signature",
        ),
        (
            "expired",
            hs256(&json!({"exp": unix_now() - 10})),
            "expired",
        ),
        ("no exp", hs256(&json!({"topics": ["news/*"]})), "claims"),
        (
            "topics not a list",
            hs256(&json!({"exp": unix_now() + 60, "topics": "**"})),
            "claims",
        ),
        ("huge", format!("{good}{}", "A".repeat(5000)), "too_long"),
    ];
    let mut want = std::collections::BTreeMap::new();
    for (what, token, cause) in &cases {
        for path in ["/ws", "/ws/chat/lobby"] {
            let (_, head) = upgrade(addr, path, Some(token));
            assert_eq!(head.status, 401, "{what} on {path}");
            assert!(head.header("www-authenticate").is_some(), "{what}");
            *want.entry(*cause).or_insert(0) += 1;
        }
    }
    for (cause, n) in want {
        assert_eq!(
            refused(addr, cause),
            n,
            "gateway_token_refused_{cause}_total"
        );
    }
    assert_eq!(
        metric(addr, "gateway_http_refused_401_total"),
        2 * cases.len() as u64
    );
    assert!(
        server.hub().find("chat/lobby").is_none(),
        "refused upgrades create no room"
    );
    // A token too long for any request head is refused as the head: 431.
    let (_, head) = upgrade(addr, "/ws", Some(&"A".repeat(10_000)));
    assert_eq!(head.status, 431);
    // The connection that was open all along is unharmed.
    bystander.send_text("still here");
    bystander.expect_text("still here");
}

/// Checks that `ws` is closed with 3000 at `exp` seconds plus `leeway` (never before, and
/// within a second after).
fn expect_expiry_close(ws: &mut RawWs, exp: u64, leeway: Duration) {
    let reason = ws.expect_close_for(3000, "the token's expiry");
    let at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(reason, "token expired");
    let due = Duration::from_secs(exp) + leeway;
    let mut t = Timings::default();
    t.check(
        "close 3000 (since the epoch)",
        at,
        due,
        due + Duration::from_secs(1),
    );
    t.assert_all();
}

#[test]
fn an_open_connection_is_closed_with_3000_at_exp() {
    let server = start_hs();
    let addr = server.local_addr();
    let exp = unix_now() + 2;
    let token = hs256(&json!({"exp": exp, "topics": ["news/*"]}));
    let mut echo = open(addr, "/echo", &token);
    let mut ws = open(addr, "/ws", &token);
    echo.send_text("before exp");
    echo.expect_text("before exp");
    send_json(&mut ws, &json!({"type": "subscribe", "topic": "news/eu"}));
    assert_eq!(read_json(&mut ws)["type"], "subscribed");
    // A connection with a later token stays.
    let mut later = open(addr, "/echo", &hs256(&json!({"exp": exp + 60})));
    expect_expiry_close(&mut echo, exp, Duration::ZERO);
    expect_expiry_close(&mut ws, exp, Duration::ZERO);
    later.send_text("still valid");
    later.expect_text("still valid");
    assert_eq!(metric(addr, "gateway_token_expired_closes_total"), 2);
    // The same token is now refused at the door.
    let (_, head) = upgrade(addr, "/echo", Some(&token));
    assert_eq!(head.status, 401);
    assert_eq!(refused(addr, "expired"), 1);
}

#[test]
fn leeway_admits_a_recently_expired_token_until_exp_plus_leeway() {
    let leeway = Duration::from_secs(3);
    let server = util::start(util::Config {
        jwt_secret: Some(SECRET.to_owned()),
        jwt_leeway: leeway,
        ..util::config()
    });
    let strict = start_hs();
    // Expired between one and two seconds ago.
    let exp = unix_now() - 1;
    let token = hs256(&json!({"exp": exp}));
    let (_, head) = upgrade(strict.local_addr(), "/echo", Some(&token));
    assert_eq!(head.status, 401, "no leeway by default");
    let mut ws = open(server.local_addr(), "/echo", &token);
    ws.send_text("within the leeway");
    ws.expect_text("within the leeway");
    expect_expiry_close(&mut ws, exp, leeway);
}
