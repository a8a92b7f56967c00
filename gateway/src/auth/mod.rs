//! Tokens (JWT): what a client may do, as claims signed by the operator's backend.
//!
//! With `--jwt-secret` (HS256) and/or `--jwt-public-key` (RS256 or ES256) every WebSocket
//! upgrade needs a valid token, as `Authorization: Bearer JWT` or `?token=JWT`; `POST /publish`
//! accepts one as well as the publish token. This module owns the rules, as functions of their
//! inputs (the time is an argument): [`Verifier::verify`] (the token's length, shape, algorithm,
//! signature and claims), [`Claims`] (what the token allows) and [`pattern_matches`] (the topic
//! patterns). [`mint`] makes tokens (the `gateway token` subcommand). The event loop applies
//! the claims; see docs/PROTOCOL.md, "Tokens".

pub mod mint;
mod pattern;
mod verify;

pub use pattern::pattern_matches;
pub use verify::{Verifier, unix_now};

use crate::proto::handshake::Request;

/// The longest token accepted, in bytes; a longer one is refused before it is decoded.
/// Tokens are carried in a request head, itself at most 8 KiB.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What a valid token allows. A missing `topics`, `publish` or `commands` claim is an empty
/// list: it allows nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `sub`: who the token was issued to (informational).
    pub sub: Option<String>,
    /// `exp`: seconds since the Unix epoch at which the token expires (required).
    pub exp: u64,
    /// `topics`: patterns of the topics the client may subscribe to.
    pub topics: Vec<String>,
    /// `publish`: patterns of the topics the client may publish to.
    pub publish: Vec<String>,
    /// `commands`: names (or patterns, `*` for any) of the commands the client may run.
    pub commands: Vec<String>,
}

impl Claims {
    /// Whether the client may subscribe to `topic` (a `/ws` subscribe, or a chat, file or log
    /// socket's topic).
    pub fn allows_subscribe(&self, topic: &str) -> bool {
        self.topics.iter().any(|p| pattern_matches(p, topic))
    }

    /// Whether the client may publish to `topic` (a chat message, a `/ws` publish, or
    /// `POST /publish`).
    pub fn allows_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| pattern_matches(p, topic))
    }

    /// Whether the client may run the command `name` (`/ws/cmd/NAME`).
    pub fn allows_command(&self, name: &str) -> bool {
        self.commands.iter().any(|p| pattern_matches(p, name))
    }
}

/// Why a request's token was not accepted. Each cause has its counter in `/metrics`
/// (`gateway_token_refused_<cause>_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token was presented (401).
    Missing,
    /// Longer than [`MAX_TOKEN_LEN`] (401).
    TooLong,
    /// Not three base64url parts, or a header or payload that is not a JSON object (401).
    Malformed,
    /// `alg` is `none`, not supported, or not the one of a configured key: HS256 needs
    /// `--jwt-secret`, RS256 an RSA `--jwt-public-key`, ES256 a P-256 one (401).
    Algorithm,
    /// The signature does not verify with the configured key (401).
    Signature,
    /// `exp` is past (with `--jwt-leeway`) (401).
    Expired,
    /// A claim is missing or of the wrong type (`exp`, a list that is not strings), or `nbf`
    /// is still ahead (401).
    Claims,
    /// The token is valid but does not cover what was asked (403, a `/ws` error, close 1008).
    Forbidden,
}

impl Refusal {
    /// Every cause, in the order of the counters.
    pub const ALL: [Refusal; 8] = [
        Refusal::Missing,
        Refusal::TooLong,
        Refusal::Malformed,
        Refusal::Algorithm,
        Refusal::Signature,
        Refusal::Expired,
        Refusal::Claims,
        Refusal::Forbidden,
    ];

    /// The cause's name in metrics and answers.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::TooLong => "too_long",
            Refusal::Malformed => "malformed",
            Refusal::Algorithm => "algorithm",
            Refusal::Signature => "signature",
            Refusal::Expired => "expired",
            Refusal::Claims => "claims",
            Refusal::Forbidden => "forbidden",
        }
    }

    /// A sentence for the client: what was wrong, never anything about the key.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Missing => "a token is required (Authorization: Bearer, or ?token=)",
            Refusal::TooLong => "the token is longer than 4096 bytes",
            Refusal::Malformed => "the token is not a JWT (three base64url parts of JSON)",
            Refusal::Algorithm => "the token's algorithm is not accepted",
            Refusal::Signature => "the token's signature does not verify",
            Refusal::Expired => "the token has expired",
            Refusal::Claims => "the token's claims are invalid (exp, nbf, or a list claim)",
            Refusal::Forbidden => "the token does not allow this",
        }
    }

    /// The HTTP status of a refusal of this cause.
    pub fn status(self) -> u16 {
        match self {
            Refusal::Forbidden => 403,
            _ => 401,
        }
    }
}

/// The token a request presents: `Authorization: Bearer JWT`, else the query's `token=JWT`.
/// The query value is taken as it is (a JWT's characters need no escaping).
pub fn presented_token<'b>(req: &Request<'_, 'b>) -> Option<&'b str> {
    bearer(req).or_else(|| {
        req.query()?
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
    })
}

/// The credentials of an `Authorization: Bearer ...` header (the scheme is case-insensitive).
pub fn bearer<'b>(req: &Request<'_, 'b>) -> Option<&'b str> {
    let value = req.header("Authorization")?.trim();
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case("bearer ").then(|| rest.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(topics: &[&str], publish: &[&str], commands: &[&str]) -> Claims {
        let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Claims {
            sub: None,
            exp: 0,
            topics: own(topics),
            publish: own(publish),
            commands: own(commands),
        }
    }

    #[test]
    fn claims_allow_what_they_list() {
        let c = claims(&["news/*", "chat/**"], &["chat/lobby"], &["date"]);
        assert!(c.allows_subscribe("news/eu") && c.allows_subscribe("chat/a/b"));
        assert!(!c.allows_subscribe("file/config"));
        assert!(c.allows_publish("chat/lobby") && !c.allows_publish("chat/other"));
        assert!(c.allows_command("date") && !c.allows_command("ls"));
        let none = claims(&[], &[], &[]);
        assert!(!none.allows_subscribe("news/eu") && !none.allows_publish("chat/lobby"));
        assert!(!none.allows_command("date"));
        assert!(claims(&[], &[], &["*"]).allows_command("anything"));
    }

    #[test]
    fn tokens_come_from_the_header_or_the_query() {
        let cases = [
            (
                "GET /ws HTTP/1.1\r\nAuthorization: Bearer a.b.c\r\n\r\n",
                Some("a.b.c"),
            ),
            ("GET /ws?token=q.r.s HTTP/1.1\r\n\r\n", Some("q.r.s")),
            ("GET /ws?x=1&token=q.r.s&y HTTP/1.1\r\n\r\n", Some("q.r.s")),
            (
                "GET /ws?token=q.r.s HTTP/1.1\r\nAuthorization: Bearer a.b.c\r\n\r\n",
                Some("a.b.c"),
            ),
            (
                "GET /ws HTTP/1.1\r\nAuthorization: Basic eDp5\r\n\r\n",
                None,
            ),
            (
                "GET /ws HTTP/1.1\r\nAuthorization: bearer a.b.c\r\n\r\n",
                Some("a.b.c"),
            ),
            ("GET /ws HTTP/1.1\r\nAuthorization: Bearer\r\n\r\n", None),
            (
                "GET /ws HTTP/1.1\r\nAuthorization: Beare\u{e9} x\r\n\r\n",
                None,
            ),
            ("GET /ws?tokenx=1 HTTP/1.1\r\n\r\n", None),
            ("GET /ws HTTP/1.1\r\n\r\n", None),
        ];
        for (head, want) in cases {
            let mut storage = [httparse::EMPTY_HEADER; 8];
            let req = Request::parse(head.as_bytes(), &mut storage)
                .unwrap()
                .unwrap();
            assert_eq!(presented_token(&req), want, "{head:?}");
        }
    }

    #[test]
    fn causes_have_names_and_statuses() {
        assert!(
            Refusal::TooLong
                .message()
                .contains(&MAX_TOKEN_LEN.to_string())
        );
        for r in Refusal::ALL {
            assert!(!r.name().is_empty() && !r.message().is_empty());
            assert_eq!(r.status(), if r == Refusal::Forbidden { 403 } else { 401 });
        }
    }
}
