//! [`Verifier`]: the configured keys and the checks a token passes, in order: its length, its
//! shape (three base64url parts, a JSON header), its algorithm (pinned to the key type: HS256
//! for the secret, RS256 for an RSA public key, ES256 for a P-256 one; `none` never), its
//! signature (by `jsonwebtoken`), then its claims against the time given.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{Claims, MAX_TOKEN_LEN, Refusal};
use crate::server::Config;

/// The keys tokens are verified with, and the clock leeway. Built from the configuration at
/// start and again on reload; shared by the workers behind an `Arc`.
pub struct Verifier {
    /// `--jwt-secret`: HS256.
    secret: Option<DecodingKey>,
    /// `--jwt-public-key`: RS256 (RSA) or ES256 (P-256), with its one algorithm.
    public: Option<(Algorithm, DecodingKey)>,
    /// `--jwt-leeway`: how long past `exp` (and before `nbf`) a token is still accepted.
    leeway: Duration,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("secret", &self.secret.as_ref().map(|_| "HS256"))
            .field("public", &self.public.as_ref().map(|(a, _)| a))
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl Verifier {
    /// The verifier the configuration asks for: `None` when neither `--jwt-secret` nor
    /// `--jwt-public-key` is set (tokens are off). The public key file is read now.
    pub fn from_config(cfg: &Config) -> Result<Option<Verifier>, String> {
        if cfg.jwt_secret.is_none() && cfg.jwt_public_key.is_none() {
            return Ok(None);
        }
        let pem = match &cfg.jwt_public_key {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("cannot read --jwt-public-key {}: {e}", path.display()))?,
            ),
            None => None,
        };
        Verifier::new(cfg.jwt_secret.as_deref(), pem.as_deref(), cfg.jwt_leeway).map(Some)
    }

    /// A verifier for an HS256 secret and/or a public key in PEM (an RSA or P-256 `PUBLIC KEY`,
    /// or a PKCS#1 `RSA PUBLIC KEY`).
    pub fn new(
        secret: Option<&str>,
        public_pem: Option<&[u8]>,
        leeway: Duration,
    ) -> Result<Verifier, String> {
        let secret = match secret {
            Some("") => return Err("--jwt-secret is empty".to_owned()),
            Some(s) => Some(DecodingKey::from_secret(s.as_bytes())),
            None => None,
        };
        let public = public_pem.map(public_key).transpose()?;
        Ok(Verifier {
            secret,
            public,
            leeway,
        })
    }

    /// The clock leeway (`--jwt-leeway`).
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// When a token with these claims stops being accepted: `exp` plus the leeway, as time
    /// since the Unix epoch. An open connection is closed (3000) then.
    pub fn valid_until(&self, claims: &Claims) -> Duration {
        Duration::from_secs(claims.exp).saturating_add(self.leeway)
    }

    /// Checks a token at time `now` (since the Unix epoch; see [`unix_now`]) and returns its
    /// claims, or why it is refused.
    pub fn verify(&self, token: &str, now: Duration) -> Result<Claims, Refusal> {
        if token.is_empty() {
            return Err(Refusal::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(Refusal::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Refusal::Malformed);
        };
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| Refusal::Malformed)?;
        let header: Value = serde_json::from_slice(&header).map_err(|_| Refusal::Malformed)?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(Refusal::Malformed)?;
        // The algorithm is the key's, never the token's choice: `none`, HMAC with a public key
        // as the secret, or any algorithm without its key is refused here.
        let (alg, key) = match alg {
            "HS256" => self.secret.as_ref().map(|k| (Algorithm::HS256, k)),
            "RS256" => self.public_for(Algorithm::RS256),
            "ES256" => self.public_for(Algorithm::ES256),
            _ => None,
        }
        .ok_or(Refusal::Algorithm)?;
        let mut validation = Validation::new(alg);
        // Time is checked below, against `now` and the leeway; no audience is configured.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Value>(token, key, &validation).map_err(|e| cause(&e))?;
        let claims = data.claims.as_object().ok_or(Refusal::Malformed)?;
        self.check_claims(claims, now)
    }

    /// The public key, if it is of the algorithm's type.
    fn public_for(&self, alg: Algorithm) -> Option<(Algorithm, &DecodingKey)> {
        match &self.public {
            Some((a, key)) if *a == alg => Some((alg, key)),
            _ => None,
        }
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: Duration) -> Result<Claims, Refusal> {
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(Refusal::Claims)?;
        if now >= Duration::from_secs(exp).saturating_add(self.leeway) {
            return Err(Refusal::Expired);
        }
        match claims.get("nbf") {
            None | Some(Value::Null) => {}
            Some(v) => {
                let nbf = v.as_u64().ok_or(Refusal::Claims)?;
                if now.saturating_add(self.leeway) < Duration::from_secs(nbf) {
                    return Err(Refusal::Claims);
                }
            }
        }
        let sub = match claims.get("sub") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(Refusal::Claims),
        };
        Ok(Claims {
            sub,
            exp,
            topics: list(claims, "topics")?,
            publish: list(claims, "publish")?,
            commands: list(claims, "commands")?,
        })
    }
}

/// The time now as the claims count it: since the Unix epoch.
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

/// A list claim: absent (or null) is empty; otherwise it must be an array of strings.
fn list(claims: &Map<String, Value>, name: &str) -> Result<Vec<String>, Refusal> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or(Refusal::Claims))
            .collect(),
        Some(_) => Err(Refusal::Claims),
    }
}

/// The cause of a `jsonwebtoken` error.
fn cause(e: &jsonwebtoken::errors::Error) -> Refusal {
    match e.kind() {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => Refusal::Signature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName => Refusal::Algorithm,
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::ImmatureSignature => Refusal::Claims,
        ErrorKind::ExpiredSignature => Refusal::Expired,
        _ => Refusal::Malformed,
    }
}

/// Loads `--jwt-public-key`: an RSA key verifies RS256, a P-256 key ES256.
fn public_key(pem: &[u8]) -> Result<(Algorithm, DecodingKey), String> {
    if String::from_utf8_lossy(pem).contains("PRIVATE KEY") {
        return Err("--jwt-public-key holds a private key: give the public key".to_owned());
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((Algorithm::RS256, key));
    }
    match DecodingKey::from_ec_pem(pem) {
        // An uncompressed P-256 point: 0x04, then 32 bytes of x and 32 of y.
        Ok(key) if key.as_bytes().len() == 65 => Ok((Algorithm::ES256, key)),
        Ok(_) => Err("--jwt-public-key: only P-256 EC keys (ES256) are supported".to_owned()),
        Err(e) => Err(format!(
            "--jwt-public-key is not an RSA or P-256 public key in PEM: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "test secret, long enough for HS256";
    /// 2030-01-01, in seconds since the epoch: "now" for these tests.
    const NOW: u64 = 1_893_456_000;

    fn now() -> Duration {
        Duration::from_secs(NOW)
    }

    fn hs256(claims: &Value) -> String {
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
    }

    fn verifier(leeway: Duration) -> Verifier {
        Verifier::new(Some(SECRET), None, leeway).unwrap()
    }

    /// A token with this header (as JSON text) and payload, signed with nothing.
    fn forged(header: &str, payload: &Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(header);
        let p = URL_SAFE_NO_PAD.encode(payload.to_string());
        format!("{h}.{p}.")
    }

    #[test]
    fn a_valid_token_gives_its_claims() {
        let token = hs256(&json!({
            "exp": NOW + 60, "sub": "alice", "topics": ["news/*"],
            "publish": ["chat/lobby"], "commands": ["date"]
        }));
        let c = verifier(Duration::ZERO).verify(&token, now()).unwrap();
        assert_eq!(c.sub.as_deref(), Some("alice"));
        assert_eq!(c.exp, NOW + 60);
        assert_eq!(
            (c.topics, c.publish, c.commands),
            (
                vec!["news/*".to_owned()],
                vec!["chat/lobby".to_owned()],
                vec!["date".to_owned()]
            )
        );
        // Missing list claims are empty: they allow nothing.
        let bare = verifier(Duration::ZERO)
            .verify(&hs256(&json!({"exp": NOW + 60})), now())
            .unwrap();
        assert!(bare.topics.is_empty() && bare.publish.is_empty() && bare.sub.is_none());
    }

    #[test]
    fn expiry_and_leeway() {
        let token = hs256(&json!({"exp": NOW}));
        let v = verifier(Duration::ZERO);
        assert_eq!(
            v.verify(&token, now() - Duration::from_millis(1))
                .map(|c| c.exp),
            Ok(NOW)
        );
        assert_eq!(v.verify(&token, now()), Err(Refusal::Expired));
        let lenient = verifier(Duration::from_secs(30));
        assert!(
            lenient
                .verify(&token, now() + Duration::from_secs(29))
                .is_ok()
        );
        assert_eq!(
            lenient.verify(&token, now() + Duration::from_secs(30)),
            Err(Refusal::Expired)
        );
        assert_eq!(
            lenient.valid_until(&lenient.verify(&token, now()).unwrap()),
            Duration::from_secs(NOW + 30)
        );
        let later = hs256(&json!({"exp": NOW + 60, "nbf": NOW + 10}));
        assert_eq!(v.verify(&later, now()), Err(Refusal::Claims));
        assert!(v.verify(&later, now() + Duration::from_secs(10)).is_ok());
        assert!(lenient.verify(&later, now()).is_ok());
    }

    #[test]
    fn bad_tokens_are_refused_by_cause() {
        let v = verifier(Duration::ZERO);
        let good = hs256(&json!({"exp": NOW + 60}));
        let (head, rest) = good.split_once('.').unwrap();
        let flipped = {
            let mut t = good.clone().into_bytes();
            let last = t.len() - 2;
            t[last] = if t[last] == b'A' { b'B' } else { b'A' };
            String::from_utf8(t).unwrap()
        };
        let cases: Vec<(String, Refusal)> = vec![
            (String::new(), Refusal::Missing),
            ("x".repeat(MAX_TOKEN_LEN + 1), Refusal::TooLong),
            ("abc".into(), Refusal::Malformed),
            ("a.b".into(), Refusal::Malformed),
            ("a.b.c.d".into(), Refusal::Malformed),
            (format!("{head}!.{rest}"), Refusal::Malformed),
            (
                format!("{}.{rest}", URL_SAFE_NO_PAD.encode("not json")),
                Refusal::Malformed,
            ),
            (
                format!("{}.{rest}", URL_SAFE_NO_PAD.encode("{}")),
                Refusal::Malformed,
            ),
            (format!("{head}.%%%.sig"), Refusal::Signature),
            (flipped, Refusal::Signature),
            (
                forged(r#"{"alg":"none"}"#, &json!({"exp": NOW + 60})),
                Refusal::Algorithm,
            ),
            (
                forged(r#"{"alg":"None"}"#, &json!({"exp": NOW + 60})),
                Refusal::Algorithm,
            ),
            (
                forged(r#"{"alg":"HS512"}"#, &json!({"exp": NOW + 60})),
                Refusal::Algorithm,
            ),
            (
                forged(r#"{"alg":"RS256"}"#, &json!({"exp": NOW + 60})),
                Refusal::Algorithm,
            ),
            (
                forged(r#"{"alg":"ES256"}"#, &json!({"exp": NOW + 60})),
                Refusal::Algorithm,
            ),
            (hs256(&json!({"sub": "no exp"})), Refusal::Claims),
            (hs256(&json!({"exp": "soon"})), Refusal::Claims),
            (
                hs256(&json!({"exp": NOW + 60, "topics": "news/*"})),
                Refusal::Claims,
            ),
            (
                hs256(&json!({"exp": NOW + 60, "publish": [1]})),
                Refusal::Claims,
            ),
            (hs256(&json!({"exp": NOW + 60, "sub": 7})), Refusal::Claims),
            (hs256(&json!({"exp": NOW - 1})), Refusal::Expired),
        ];
        for (token, want) in cases {
            let shown: String = token.chars().take(60).collect();
            assert_eq!(v.verify(&token, now()).map(|_| ()), Err(want), "{shown}");
        }
        // Another secret's token.
        let other = Verifier::new(Some("another secret"), None, Duration::ZERO).unwrap();
        assert_eq!(other.verify(&good, now()), Err(Refusal::Signature));
    }

    #[test]
    fn keys_are_checked_when_loaded() {
        assert!(Verifier::new(Some(""), None, Duration::ZERO).is_err());
        assert!(Verifier::new(None, Some(b"not a pem"), Duration::ZERO).is_err());
        let private = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(Verifier::new(None, Some(private), Duration::ZERO).is_err());
    }
}
