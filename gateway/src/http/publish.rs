//! `POST /publish/{topic}`: the checks a publish request passes before anything is published,
//! as one pure function of the request, the bytes received and the peer's address class. The
//! worker publishes what passes and writes the answer.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::origin::OriginPolicy;
use crate::auth::Refusal as TokenRefusal;
use crate::proto::MessageKind;
use crate::proto::handshake::Request;
use crate::topics::is_valid_topic;

/// Checks a bearer token as a JWT for a topic: `Ok` if it is valid and its `publish` claim
/// covers the topic.
pub type JwtCheck<'a> = dyn Fn(&str, &str) -> Result<(), TokenRefusal> + 'a;

/// What a publish request is held to.
#[derive(Clone, Copy)]
pub struct PublishPolicy<'a> {
    /// Largest body accepted (`--max-message`).
    pub max_body: usize,
    /// The bearer token, if one is configured.
    pub token: Option<&'a str>,
    /// Loopback clients may publish without the token, unless their request comes from a
    /// page of another site.
    pub trust_loopback: bool,
    /// The origin rule that decides what "another site" is.
    pub origins: OriginPolicy<'a>,
    /// With tokens on: checks a bearer token that is not the publish token as a JWT for the
    /// topic (valid, and its `publish` claim covers it). The checker counts its refusals.
    pub jwt: Option<&'a JwtCheck<'a>>,
}

impl std::fmt::Debug for PublishPolicy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishPolicy")
            .field("max_body", &self.max_body)
            .field("token", &self.token.map(|_| "(set)"))
            .field("trust_loopback", &self.trust_loopback)
            .field("origins", &self.origins)
            .field("jwt", &self.jwt.is_some())
            .finish()
    }
}

/// The outcome of the checks.
#[derive(Debug, PartialEq)]
pub enum PublishCheck<'b> {
    /// The head is fine but the body has not fully arrived: call again with more bytes.
    Incomplete,
    /// Refused: the status, extra headers and the JSON error body.
    Refused {
        status: u16,
        headers: &'static [(&'static str, &'static str)],
        body: Value,
    },
    /// Publish `body` (text if it is UTF-8); the request ends at `end` in the input.
    Ready {
        body: &'b [u8],
        kind: MessageKind,
        end: usize,
        keep_alive: bool,
    },
}

fn refused(
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: Value,
) -> PublishCheck<'static> {
    PublishCheck::Refused {
        status,
        headers,
        body,
    }
}

/// Checks a publish request whose head is `req` and whose bytes so far are `input` (head
/// included); `peer` is the client's address.
pub fn check_publish<'b>(
    req: &Request<'_, '_>,
    topic: &str,
    input: &'b [u8],
    peer: Option<IpAddr>,
    policy: &PublishPolicy<'_>,
) -> PublishCheck<'b> {
    if req.method != "POST" {
        return refused(
            405,
            &[("Allow", "POST")],
            json!({"error": "publish with POST"}),
        );
    }
    // A JWT is verified once, when the whole body is here (below): a client sending its body
    // in small pieces must not make the gateway check a signature per piece.
    let jwt = match authorize(req, peer, policy) {
        Ok(jwt) => jwt,
        Err(denied) => return denial(denied, topic),
    };
    if !is_valid_topic(topic) {
        return refused(
            400,
            &[],
            json!({"error": "invalid topic name", "topic": topic}),
        );
    }
    if req.header("Transfer-Encoding").is_some() {
        return refused(
            411,
            &[],
            json!({"error": "send the body with Content-Length"}),
        );
    }
    let len = match req.content_length() {
        Ok(Some(n)) => n,
        // The body's length is required (docs/PROTOCOL.md): without it, an empty message would
        // be published and any bytes sent as a body read as the next request.
        Ok(None) => {
            return refused(
                411,
                &[],
                json!({"error": "send the body with Content-Length"}),
            );
        }
        Err(e) => return refused(400, &[], json!({"error": e.to_string()})),
    };
    if len > policy.max_body {
        let limit = policy.max_body;
        return refused(
            413,
            &[],
            json!({"error": format!("body over the {limit}-byte limit")}),
        );
    }
    let end = req.head_len + len;
    if input.len() < end {
        return PublishCheck::Incomplete;
    }
    if let (Some(token), Some(check)) = (jwt, policy.jwt)
        && let Err(r) = check(token, topic)
    {
        return denial(Denied::Jwt(r), topic);
    }
    let body = &input[req.head_len..end];
    let kind = if std::str::from_utf8(body).is_ok() {
        MessageKind::Text
    } else {
        MessageKind::Binary
    };
    PublishCheck::Ready {
        body,
        kind,
        end,
        // HTTP/1.1 keeps the connection unless the client says close: a backend publishing a
        // stream of messages pays for one TCP handshake, not one per message.
        keep_alive: req.version >= 1 && !req.has_token("Connection", "close"),
    }
}

/// The answer to a publish that was not authorized.
fn denial(denied: Denied, topic: &str) -> PublishCheck<'static> {
    match denied {
        Denied::Token => refused(
            401,
            &[("WWW-Authenticate", "Bearer")],
            json!({"error": "missing or wrong bearer token"}),
        ),
        Denied::Jwt(TokenRefusal::Forbidden) => refused(
            403,
            &[],
            json!({"error": "the token's publish claim does not cover this topic", "topic": topic}),
        ),
        Denied::Jwt(r) => refused(
            401,
            &[("WWW-Authenticate", "Bearer error=\"invalid_token\"")],
            json!({"error": r.message()}),
        ),
        Denied::NotLoopback => refused(
            403,
            &[],
            json!({"error": "only loopback clients may publish (no token configured)"}),
        ),
        Denied::CrossSite => refused(
            403,
            &[],
            json!({"error": "a cross-site request may not publish without the bearer token"}),
        ),
    }
}

/// Why a publish was not authorized.
enum Denied {
    /// A token is configured and was missing (from a non-loopback peer) or wrong: 401.
    Token,
    /// A bearer token that is not the publish token, checked as a JWT: invalid (401), or its
    /// `publish` claim does not cover the topic (403).
    Jwt(TokenRefusal),
    /// No token is configured and the peer is not on loopback: 403.
    NotLoopback,
    /// The request relies on the loopback trust but comes from a browser page of another
    /// site (`Sec-Fetch-Site: cross-site`, or an `Origin` the origin rule refuses): 403.
    CrossSite,
}

/// A presented token must be right: the publish token, or (with tokens on) a JWT that covers
/// the topic; without one, loopback clients are trusted (unless configured otherwise) and
/// others need the token.
fn authorize<'h>(
    req: &Request<'_, 'h>,
    peer: Option<IpAddr>,
    policy: &PublishPolicy<'_>,
) -> Result<Option<&'h str>, Denied> {
    let presented = crate::auth::bearer(req);
    if let (Some(_), Some(p)) = (policy.jwt, presented) {
        let is_publish_token = policy
            .token
            .is_some_and(|t| constant_time_eq(t.as_bytes(), p.as_bytes()));
        if !is_publish_token {
            // Verified by the caller once the body is complete.
            return Ok(Some(p));
        }
    }
    let loopback = peer.is_some_and(is_loopback);
    match (policy.token, presented) {
        (Some(token), Some(p)) if constant_time_eq(token.as_bytes(), p.as_bytes()) => Ok(None),
        (Some(_), Some(_)) => Err(Denied::Token),
        _ if loopback && policy.trust_loopback => {
            // A page in a browser on this host must not borrow the loopback trust.
            let cross_site = req
                .header("Sec-Fetch-Site")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("cross-site"));
            if cross_site
                || !policy
                    .origins
                    .allows(req.header("Origin"), req.header("Host"))
            {
                Err(Denied::CrossSite)
            } else {
                Ok(None)
            }
        }
        (Some(_), None) => Err(Denied::Token),
        (None, _) => Err(Denied::NotLoopback),
    }
}

pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Compares secrets without an early exit that would leak how much of a guess was right.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(head: &str, body: &[u8], peer: &str, token: Option<&str>) -> (u16, bool) {
        let mut input = head.as_bytes().to_vec();
        input.extend_from_slice(body);
        let mut storage = [httparse::EMPTY_HEADER; 16];
        let req = Request::parse(&input, &mut storage).unwrap().unwrap();
        let policy = PublishPolicy {
            max_body: 10,
            token,
            trust_loopback: true,
            origins: OriginPolicy { allowed: &[] },
            jwt: None,
        };
        match check_publish(
            &req,
            "news/eu",
            &input,
            Some(peer.parse().unwrap()),
            &policy,
        ) {
            PublishCheck::Incomplete => (0, false),
            PublishCheck::Refused { status, .. } => (status, false),
            PublishCheck::Ready { keep_alive, .. } => (200, keep_alive),
        }
    }

    /// Status of a publish of `hi` to `news/eu` with tokens on: the JWT checker accepts the
    /// token `good` (for `news/*` only), calls `valid-elsewhere` forbidden and refuses the
    /// rest as malformed.
    fn check_jwt(head: &str, peer: &str, publish_token: Option<&str>) -> u16 {
        let mut input = head.as_bytes().to_vec();
        input.extend_from_slice(b"hi");
        let mut storage = [httparse::EMPTY_HEADER; 16];
        let req = Request::parse(&input, &mut storage).unwrap().unwrap();
        let jwt = |token: &str, topic: &str| match token {
            "good" if topic.starts_with("news/") => Ok(()),
            "good" => Err(TokenRefusal::Forbidden),
            _ => Err(TokenRefusal::Malformed),
        };
        let policy = PublishPolicy {
            max_body: 10,
            token: publish_token,
            trust_loopback: true,
            origins: OriginPolicy { allowed: &[] },
            jwt: Some(&jwt),
        };
        let topic = req.path().strip_prefix("/publish/").unwrap();
        match check_publish(&req, topic, &input, Some(peer.parse().unwrap()), &policy) {
            PublishCheck::Refused { status, .. } => status,
            PublishCheck::Ready { .. } => 200,
            PublishCheck::Incomplete => 0,
        }
    }

    #[test]
    fn a_jwt_publishes_where_its_claim_covers() {
        let with = |token: &str, topic: &str| {
            format!(
                "POST /publish/{topic} HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\
                 Content-Length: 2\r\n\r\n"
            )
        };
        // From anywhere, a JWT whose claim covers the topic publishes.
        assert_eq!(check_jwt(&with("good", "news/eu"), "10.0.0.1", None), 200);
        assert_eq!(check_jwt(&with("good", "chat/x"), "10.0.0.1", None), 403);
        assert_eq!(check_jwt(&with("junk", "news/eu"), "10.0.0.1", None), 401);
        // A presented token that fails is refused even on loopback.
        assert_eq!(check_jwt(&with("junk", "news/eu"), "127.0.0.1", None), 401);
        // The publish token still works, and no token still means loopback trust.
        assert_eq!(
            check_jwt(&with("pt", "chat/x"), "10.0.0.1", Some("pt")),
            200
        );
        let bare = "POST /publish/chat/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(check_jwt(bare, "127.0.0.1", None), 200);
        assert_eq!(check_jwt(bare, "10.0.0.1", Some("pt")), 401);
    }

    #[test]
    fn a_jwt_is_verified_once_when_the_body_is_complete() {
        let calls = std::cell::Cell::new(0);
        let jwt = |_: &str, _: &str| {
            calls.set(calls.get() + 1);
            Ok(())
        };
        let policy = PublishPolicy {
            max_body: 10,
            token: None,
            trust_loopback: true,
            origins: OriginPolicy { allowed: &[] },
            jwt: Some(&jwt),
        };
        let head = "POST /publish/news/eu HTTP/1.1\r\nAuthorization: Bearer a.b.c\r\nContent-Length: 4\r\n\r\n";
        let peer = Some("10.0.0.1".parse().unwrap());
        for sent in 0..4 {
            let mut input = head.as_bytes().to_vec();
            input.extend(std::iter::repeat_n(b'x', sent));
            let mut storage = [httparse::EMPTY_HEADER; 16];
            let req = Request::parse(&input, &mut storage).unwrap().unwrap();
            let check = check_publish(&req, "news/eu", &input, peer, &policy);
            assert_eq!(check, PublishCheck::Incomplete, "{sent} bytes of the body");
        }
        assert_eq!(calls.get(), 0, "not verified while the body is incomplete");
        let mut input = head.as_bytes().to_vec();
        input.extend_from_slice(b"body");
        let mut storage = [httparse::EMPTY_HEADER; 16];
        let req = Request::parse(&input, &mut storage).unwrap().unwrap();
        let check = check_publish(&req, "news/eu", &input, peer, &policy);
        assert!(matches!(check, PublishCheck::Ready { .. }), "{check:?}");
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn publish_checks_in_order() {
        let post = "POST /publish/news/eu HTTP/1.1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(check(post, b"hi", "127.0.0.1", None), (200, true));
        assert_eq!(check(post, b"h", "127.0.0.1", None), (0, false));
        assert_eq!(check(post, b"hi", "10.0.0.1", None), (403, false));
        assert_eq!(check(post, b"hi", "10.0.0.1", Some("s")), (401, false));
        let bearer = "POST /p HTTP/1.1\r\nAuthorization: Bearer s\r\nContent-Length: 2\r\nConnection: close\r\n\r\n";
        assert_eq!(check(bearer, b"hi", "10.0.0.1", Some("s")), (200, false));
        let wrong = "POST /p HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(check(wrong, b"hi", "127.0.0.1", Some("s")), (401, false));
        let get = "GET /p HTTP/1.1\r\n\r\n";
        assert_eq!(check(get, b"", "127.0.0.1", None), (405, false));
        let chunked = "POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(check(chunked, b"", "127.0.0.1", None), (411, false));
        let big = "POST /p HTTP/1.1\r\nContent-Length: 11\r\n\r\n";
        assert_eq!(check(big, b"", "127.0.0.1", None), (413, false));
        for bad in ["x", "+5", "-1", "5, 5", "0x5", " ", "99999999999999999999"] {
            let head = format!("POST /p HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(check(&head, b"", "127.0.0.1", None), (400, false), "{bad}");
        }
        let two = "POST /p HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(check(two, b"hi", "127.0.0.1", None), (400, false));
        let same = "POST /p HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n";
        assert_eq!(check(same, b"hi", "127.0.0.1", None), (200, true));
        let none = "POST /p HTTP/1.1\r\n\r\n";
        assert_eq!(check(none, b"", "127.0.0.1", None), (411, false));
        let empty = "POST /p HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(check(empty, b"", "127.0.0.1", None), (200, true));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        // Loopback trust is not lent to other sites' pages; the token is.
        let page = "POST /p HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nOrigin: https://evil.example\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(check(page, b"hi", "127.0.0.1", None), (403, false));
        let fetch = "POST /p HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nSec-Fetch-Site: cross-site\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(check(fetch, b"hi", "127.0.0.1", None), (403, false));
        let own = "POST /p HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nOrigin: http://127.0.0.1:8080\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(check(own, b"hi", "127.0.0.1", None), (200, true));
        let tokened = "POST /p HTTP/1.1\r\nAuthorization: Bearer s\r\nSec-Fetch-Site: cross-site\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(check(tokened, b"hi", "127.0.0.1", Some("s")), (200, true));
    }
}
