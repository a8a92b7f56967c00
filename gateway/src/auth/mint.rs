//! Minting tokens: [`mint`] signs a [`Grant`] with an HS256 secret or a private key (RS256 for
//! RSA, ES256 for P-256), and [`run`] is the `gateway token` subcommand that prints one, for
//! tests and first steps. Production tokens come from the operator's own backend, signed with
//! the same key the gateway verifies with.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::cli::parse_duration;

/// What a minted token allows, and for how long.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    pub sub: Option<String>,
    /// `topics` patterns; an empty list leaves the claim out (it allows nothing).
    pub topics: Vec<String>,
    /// `publish` patterns; likewise.
    pub publish: Vec<String>,
    /// `commands` names; likewise.
    pub commands: Vec<String>,
    /// From now to `exp`.
    pub ttl: Duration,
}

/// A key to sign with and its algorithm.
pub struct SigningKey {
    alg: Algorithm,
    key: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .finish()
    }
}

impl SigningKey {
    /// An HS256 secret (the gateway's `--jwt-secret`).
    pub fn secret(secret: &str) -> Result<SigningKey, String> {
        if secret.is_empty() {
            return Err("the secret is empty".to_owned());
        }
        Ok(SigningKey {
            alg: Algorithm::HS256,
            key: EncodingKey::from_secret(secret.as_bytes()),
        })
    }

    /// A private key in PEM: a PKCS#8 `PRIVATE KEY` (P-256: ES256; RSA: RS256) or a PKCS#1
    /// `RSA PRIVATE KEY` (RS256).
    pub fn pem(pem: &[u8]) -> Result<SigningKey, String> {
        if let Ok(key) = EncodingKey::from_ec_pem(pem) {
            return Ok(SigningKey {
                alg: Algorithm::ES256,
                key,
            });
        }
        match EncodingKey::from_rsa_pem(pem) {
            Ok(key) => Ok(SigningKey {
                alg: Algorithm::RS256,
                key,
            }),
            Err(e) => Err(format!(
                "not a PKCS#8 P-256 or RSA private key in PEM ({e}); an `EC PRIVATE KEY` \
                 converts with `openssl pkcs8 -topk8 -nocrypt`"
            )),
        }
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// Signs a token for `grant`, issued at `now` (since the Unix epoch): `exp` is `now + ttl`
/// rounded up to a whole second.
pub fn mint(key: &SigningKey, grant: &Grant, now: Duration) -> Result<String, String> {
    let exp = now.saturating_add(grant.ttl);
    let exp = exp.as_secs() + u64::from(exp.subsec_nanos() > 0);
    let mut claims = json!({"iat": now.as_secs(), "exp": exp});
    if let Some(sub) = &grant.sub {
        claims["sub"] = json!(sub);
    }
    for (name, list) in [
        ("topics", &grant.topics),
        ("publish", &grant.publish),
        ("commands", &grant.commands),
    ] {
        if !list.is_empty() {
            claims[name] = Value::from(list.clone());
        }
    }
    jsonwebtoken::encode(&Header::new(key.alg), &claims, &key.key)
        .map_err(|e| format!("cannot sign: {e}"))
}

/// Mints a test token (JWT) for a gateway started with `--jwt-secret` or `--jwt-public-key`,
/// and prints it.
#[derive(Debug, Parser)]
#[command(
    name = "gateway token",
    bin_name = "gateway token",
    after_help = "Patterns: `*` is one topic segment, a trailing `**` any rest (news/*, chat/**).\n\
                  Example: gateway token --secret \"$SECRET\" --sub alice --topics 'news/*' \
                  --publish chat/lobby --ttl 1h"
)]
struct TokenArgs {
    /// Sign with this HS256 secret (the gateway's --jwt-secret).
    #[arg(long, required_unless_present = "key", conflicts_with = "key")]
    secret: Option<String>,
    /// Sign with this private key in PEM: PKCS#8 P-256 (ES256) or RSA (RS256); the gateway
    /// verifies with the public half (--jwt-public-key).
    #[arg(long, value_name = "PEM")]
    key: Option<PathBuf>,
    /// The `sub` claim: who the token is for.
    #[arg(long)]
    sub: Option<String>,
    /// Topic patterns the client may subscribe to (repeatable or comma-separated).
    #[arg(long, value_name = "PATTERN", value_delimiter = ',')]
    topics: Vec<String>,
    /// Topic patterns the client may publish to (repeatable or comma-separated).
    #[arg(long, value_name = "PATTERN", value_delimiter = ',')]
    publish: Vec<String>,
    /// Commands the client may run (repeatable or comma-separated).
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    commands: Vec<String>,
    /// How long the token is valid (e.g. 90s, 15m, 1h).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
}

/// `gateway token ...`: `args` are the words from `token` on. Prints the token on stdout;
/// bad flags exit 2 (clap), an unusable key 1.
pub fn run(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = TokenArgs::parse_from(args);
    let key = match (&args.secret, &args.key) {
        (Some(secret), _) => SigningKey::secret(secret),
        (None, Some(path)) => std::fs::read(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|pem| SigningKey::pem(&pem)),
        (None, None) => Err("give --secret or --key".to_owned()),
    };
    let grant = Grant {
        sub: args.sub,
        topics: args.topics,
        publish: args.publish,
        commands: args.commands,
        ttl: args.ttl,
    };
    match key.and_then(|k| mint(&k, &grant, super::verify::unix_now())) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gateway token: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Verifier;

    #[test]
    fn minted_tokens_verify() {
        let key = SigningKey::secret("s3cret").unwrap();
        let grant = Grant {
            sub: Some("alice".into()),
            topics: vec!["news/*".into()],
            publish: vec!["chat/lobby".into()],
            commands: vec![],
            ttl: Duration::from_millis(1500),
        };
        let now = Duration::from_secs(1_000_000);
        let token = mint(&key, &grant, now).unwrap();
        let v = Verifier::new(Some("s3cret"), None, Duration::ZERO).unwrap();
        let c = v.verify(&token, now).unwrap();
        assert_eq!(c.exp, 1_000_002, "rounded up");
        assert_eq!(c.sub.as_deref(), Some("alice"));
        assert_eq!(c.topics, ["news/*"]);
        assert_eq!(c.publish, ["chat/lobby"]);
        assert!(c.commands.is_empty());
        assert!(SigningKey::secret("").is_err());
        assert!(SigningKey::pem(b"nope").is_err());
    }

    #[test]
    fn flags() {
        let a = TokenArgs::try_parse_from([
            "gateway token",
            "--secret",
            "s",
            "--topics",
            "news/*,chat/**",
            "--topics",
            "x",
            "--ttl",
            "2m",
        ])
        .unwrap();
        assert_eq!(a.topics, ["news/*", "chat/**", "x"]);
        assert_eq!(a.ttl, Duration::from_secs(120));
        assert!(
            TokenArgs::try_parse_from(["gateway token"]).is_err(),
            "a key is needed"
        );
        assert!(
            TokenArgs::try_parse_from(["t", "--secret", "s", "--key", "k.pem"]).is_err(),
            "one key"
        );
    }
}
