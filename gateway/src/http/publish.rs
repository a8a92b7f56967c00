//! `POST /publish/{topic}`: the checks a publish request passes before anything is published,
//! as one pure function of the request, the bytes received and the peer's address class. The
//! worker publishes what passes and writes the answer.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::origin::OriginPolicy;
use crate::proto::MessageKind;
use crate::proto::handshake::Request;
use crate::topics::is_valid_topic;

/// What a publish request is held to.
#[derive(Debug, Clone, Copy)]
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
    if let Err(denied) = authorize(req, peer, policy) {
        return match denied {
            Denied::Token => refused(
                401,
                &[("WWW-Authenticate", "Bearer")],
                json!({"error": "missing or wrong bearer token"}),
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
        };
    }
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

/// A presented token must be right; without one, loopback clients are trusted (unless
/// configured otherwise) and others need the token.
/// Why a publish was not authorized.
enum Denied {
    /// A token is configured and was missing (from a non-loopback peer) or wrong: 401.
    Token,
    /// No token is configured and the peer is not on loopback: 403.
    NotLoopback,
    /// The request relies on the loopback trust but comes from a browser page of another
    /// site (`Sec-Fetch-Site: cross-site`, or an `Origin` the origin rule refuses): 403.
    CrossSite,
}

fn authorize(
    req: &Request<'_, '_>,
    peer: Option<IpAddr>,
    policy: &PublishPolicy<'_>,
) -> Result<(), Denied> {
    let presented = req
        .header("Authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let loopback = peer.is_some_and(is_loopback);
    match (policy.token, presented) {
        (Some(token), Some(p)) if constant_time_eq(token.as_bytes(), p.as_bytes()) => Ok(()),
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
                Ok(())
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
