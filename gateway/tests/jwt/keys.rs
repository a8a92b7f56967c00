//! Keys: RS256 and ES256 public keys (the algorithm pinned to the key, so HMAC signed with the
//! public key is refused), replacing the keys with `ServerHandle::reload_tokens`, and tokens
//! minted by the `gateway token` subcommand.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use jsonwebtoken::{Algorithm, EncodingKey};
use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use serde_json::json;

use gateway::server::ServerHandle;

use crate::util;
use crate::{SECRET, grant, hs256, open, read_json, refused, send_json, sign, upgrade};

/// A key pair as PEM: PKCS#8 private key, SPKI public key.
struct Pair {
    private: String,
    public: String,
}

/// A 2048-bit RSA pair, made once per test run.
fn rsa_pair() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        Pair {
            private: key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
            public: key
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
        }
    })
}

/// A fresh P-256 pair.
fn ec_pair() -> Pair {
    let key = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    Pair {
        private: key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
        public: key.public_key().to_public_key_pem(LineEnding::LF).unwrap(),
    }
}

fn rs256(pair: &Pair, claims: &serde_json::Value) -> String {
    let key = EncodingKey::from_rsa_pem(pair.private.as_bytes()).unwrap();
    sign(Algorithm::RS256, &key, claims)
}

fn es256(pair: &Pair, claims: &serde_json::Value) -> String {
    let key = EncodingKey::from_ec_pem(pair.private.as_bytes()).unwrap();
    sign(Algorithm::ES256, &key, claims)
}

/// A file of its own under the temporary directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, content: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("gateway-jwt-{}-{tag}", std::process::id()));
        fs::write(&path, content).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn start_with_public_key(pem: &TempFile) -> ServerHandle {
    util::start(util::Config {
        jwt_public_key: Some(pem.0.clone()),
        ..util::config()
    })
}

/// The status of an upgrade to `/echo` with `token`.
fn status(server: &ServerHandle, token: &str) -> u16 {
    upgrade(server.local_addr(), "/echo", Some(token)).1.status
}

#[test]
fn an_rsa_public_key_verifies_rs256_only() {
    let pair = rsa_pair();
    let file = TempFile::new("rsa.pem", &pair.public);
    let server = start_with_public_key(&file);
    let addr = server.local_addr();
    let claims = grant(&["news/*"], &[]);
    assert_eq!(status(&server, &rs256(pair, &claims)), 101);
    // Key confusion: HS256 "signed" with the public key as the secret.
    let confused = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(pair.public.as_bytes()),
        &claims,
    );
    assert_eq!(status(&server, &confused), 401);
    assert_eq!(status(&server, &es256(&ec_pair(), &claims)), 401);
    assert_eq!(
        status(&server, &hs256(&claims)),
        401,
        "no secret configured"
    );
    assert_eq!(refused(addr, "algorithm"), 3);
    let token = rs256(pair, &claims);
    let (head, rest) = token.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let other_claims = base64_json(&grant(&["**"], &["**"]));
    assert_eq!(
        status(&server, &format!("{head}.{other_claims}.{sig}")),
        401
    );
    assert_eq!(refused(addr, "signature"), 1);
}

fn base64_json(v: &serde_json::Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn a_p256_public_key_verifies_es256_only() {
    let pair = ec_pair();
    let file = TempFile::new("ec.pem", &pair.public);
    let server = start_with_public_key(&file);
    let addr = server.local_addr();
    let claims = grant(&["news/*"], &[]);
    let mut ws = open(addr, "/ws", &es256(&pair, &claims));
    send_json(&mut ws, &json!({"type": "subscribe", "topic": "news/eu"}));
    assert_eq!(read_json(&mut ws)["type"], "subscribed");
    assert_eq!(
        status(&server, &es256(&ec_pair(), &claims)),
        401,
        "another key"
    );
    assert_eq!(refused(addr, "signature"), 1);
    assert_eq!(status(&server, &rs256(rsa_pair(), &claims)), 401);
    assert_eq!(refused(addr, "algorithm"), 1);
}

#[test]
fn unusable_keys_stop_the_start() {
    let private = TempFile::new("private.pem", &ec_pair().private);
    let missing = std::env::temp_dir().join("gateway-jwt-no-such-key.pem");
    for path in [private.0.clone(), missing] {
        let err = gateway::server::Server::start(util::Config {
            jwt_public_key: Some(path.clone()),
            ..util::config()
        })
        .expect_err("an unusable key is an error at start");
        assert!(err.to_string().contains("--jwt-public-key"), "{err}");
    }
}

#[test]
fn reload_tokens_replaces_the_keys_for_new_connections() {
    let server = util::start(util::Config {
        jwt_secret: Some(SECRET.to_owned()),
        ..util::config()
    });
    let claims = grant(&[], &[]);
    let old = hs256(&claims);
    let new_secret = "the secret after the reload, 32 bytes";
    let new = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(new_secret.as_bytes()),
        &claims,
    );
    let mut admitted = open(server.local_addr(), "/echo", &old);
    assert_eq!(status(&server, &new), 401);
    let reload = |config: util::Config| server.reload_tokens(&config);
    reload(util::Config {
        jwt_secret: Some(new_secret.to_owned()),
        ..util::config()
    })
    .unwrap();
    assert_eq!(status(&server, &old), 401);
    assert_eq!(status(&server, &new), 101);
    admitted.send_text("admitted before the reload");
    admitted.expect_text("admitted before the reload");
    // A key that cannot be read is an error, and the keys in force stay.
    let err = reload(util::Config {
        jwt_public_key: Some(std::env::temp_dir().join("gateway-jwt-no-such-key.pem")),
        ..util::config()
    })
    .unwrap_err();
    assert!(err.contains("--jwt-public-key"), "{err}");
    assert_eq!(status(&server, &new), 101);
    // Rotation to a public key: its tokens in, the secret's out.
    let pair = ec_pair();
    let file = TempFile::new("rotated.pem", &pair.public);
    reload(util::Config {
        jwt_public_key: Some(file.0.clone()),
        ..util::config()
    })
    .unwrap();
    assert_eq!(status(&server, &es256(&pair, &claims)), 101);
    assert_eq!(status(&server, &new), 401);
    // Neither key: tokens are off.
    reload(util::config()).unwrap();
    assert_eq!(upgrade(server.local_addr(), "/echo", None).1.status, 101);
}

/// Runs `gateway token` with `args`; returns its status and output.
fn gateway_token(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("token")
        .args(args)
        .output()
        .expect("run gateway token");
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code(), text(out.stdout), text(out.stderr))
}

#[test]
fn gateway_token_mints_tokens_the_gateway_accepts() {
    let server = crate::start_hs();
    let addr = server.local_addr();
    let (code, out, err) = gateway_token(&[
        "--secret",
        SECRET,
        "--sub",
        "alice",
        "--topics",
        "news/*,sport/**",
        "--publish",
        "chat/lobby",
        "--commands",
        "date",
        "--ttl",
        "1m",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let token = out.trim();
    let mut ws = open(addr, "/ws", token);
    send_json(
        &mut ws,
        &json!({"type": "subscribe", "topic": "sport/f1/live"}),
    );
    assert_eq!(read_json(&mut ws)["type"], "subscribed");
    send_json(
        &mut ws,
        &json!({"type": "subscribe", "topic": "file/config"}),
    );
    assert_eq!(read_json(&mut ws)["type"], "error");
    send_json(
        &mut ws,
        &json!({"type": "publish", "topic": "chat/lobby", "data": "x"}),
    );
    assert_eq!(read_json(&mut ws)["type"], "published");
    // With a private key: ES256, verified with the public half.
    let pair = ec_pair();
    let private = TempFile::new("mint-private.pem", &pair.private);
    let public = TempFile::new("mint-public.pem", &pair.public);
    let es = start_with_public_key(&public);
    let key = private.0.to_str().unwrap();
    let (code, out, err) = gateway_token(&["--key", key, "--topics", "**"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(status(&es, out.trim()), 101);
    // No key: a usage error (2); an unusable key file: 1.
    assert_eq!(gateway_token(&["--topics", "x"]).0, Some(2));
    let (code, _, err) = gateway_token(&["--key", public.0.to_str().unwrap()]);
    assert_eq!(code, Some(1), "a public key cannot sign: {err}");
}
