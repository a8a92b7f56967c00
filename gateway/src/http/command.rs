//! Who may start a command (`/ws/cmd/{name}`): one pure function of the request, so the
//! rule is tested alone and extended in one place.
//!
//! A command runner reachable from the network is a remote shell unless it is authorized: the
//! client must present the publish token, as `Authorization: Bearer <token>` (programs) or
//! `?token=<token>` (browser pages, which cannot set headers on a WebSocket). Without a
//! configured token every request is refused with 403: unlike publishing, there is no
//! loopback trust, because a page in a browser on the gateway's own host could borrow it (DNS
//! rebinding makes a foreign page same-origin with `127.0.0.1`). The origin rule of every
//! WebSocket path applies on top, in the handshake.

use super::publish::constant_time_eq;
use crate::proto::handshake::Request;

/// What a command request is held to.
#[derive(Debug, Clone, Copy)]
pub struct CommandPolicy<'a> {
    /// The publish token (`--publish-token`), if one is configured.
    pub token: Option<&'a str>,
}

/// Why a command request was refused: the HTTP status and a one-line explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub status: u16,
    pub reason: &'static str,
}

/// Whether `req` may start the command `name`. 401: no token presented, or the wrong one; 403:
/// no token is configured, so nobody may.
///
/// `name` is unused: the publish token grants every command. A token (JWT) whose `commands`
/// claim lists the command is the other credential, checked by the worker when tokens are on
/// (`Worker::check_command`), with 403 for a valid token that does not list it.
pub fn authorize_command(
    req: &Request<'_, '_>,
    name: &str,
    policy: &CommandPolicy<'_>,
) -> Result<(), Denied> {
    let _ = name;
    let Some(token) = policy.token else {
        return Err(Denied {
            status: 403,
            reason: "commands need the publish token, and none is configured (--publish-token)",
        });
    };
    let presented = crate::auth::bearer(req)
        .map(str::to_owned)
        .or_else(|| query_token(req.query()));
    match presented {
        Some(p) if constant_time_eq(token.as_bytes(), p.as_bytes()) => Ok(()),
        Some(_) => Err(Denied {
            status: 401,
            reason: "wrong token",
        }),
        None => Err(Denied {
            status: 401,
            reason: "a token is required: Authorization: Bearer <token>, or ?token=<token>",
        }),
    }
}

/// The `token` query parameter, percent-decoded (a page passes it through
/// `encodeURIComponent`); `None` when absent or not decodable.
fn query_token(query: Option<&str>) -> Option<String> {
    let raw = query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))?;
    percent_decode(raw)
}

/// Decodes `%XX` escapes (and `+` as a space, as forms write it); `None` for a malformed
/// escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(head: &str, token: Option<&str>) -> Result<(), u16> {
        let mut storage = [httparse::EMPTY_HEADER; 16];
        let req = Request::parse(head.as_bytes(), &mut storage)
            .unwrap()
            .unwrap();
        authorize_command(&req, "sed", &CommandPolicy { token }).map_err(|d| d.status)
    }

    #[test]
    fn the_publish_token_is_required() {
        let bare = "GET /ws/cmd/sed HTTP/1.1\r\nHost: h\r\n\r\n";
        let bearer = "GET /ws/cmd/sed HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer s3cret\r\n\r\n";
        let wrong = "GET /ws/cmd/sed HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer s3cre\r\n\r\n";
        let query = "GET /ws/cmd/sed?x=1&token=s3cret HTTP/1.1\r\nHost: h\r\n\r\n";
        let encoded = "GET /ws/cmd/sed?token=a%2Fb%20c HTTP/1.1\r\nHost: h\r\n\r\n";
        let bad_escape = "GET /ws/cmd/sed?token=%zz HTTP/1.1\r\nHost: h\r\n\r\n";
        let basic = "GET /ws/cmd/sed HTTP/1.1\r\nHost: h\r\nAuthorization: Basic czNjcmV0\r\n\r\n";
        let table = [
            (bare, Some("s3cret"), Err(401)),
            (bearer, Some("s3cret"), Ok(())),
            (wrong, Some("s3cret"), Err(401)),
            (query, Some("s3cret"), Ok(())),
            (query, Some("other"), Err(401)),
            (encoded, Some("a/b c"), Ok(())),
            (bad_escape, Some("%zz"), Err(401)),
            (basic, Some("s3cret"), Err(401)),
            // No token configured: nobody, not even loopback or a presented token.
            (bare, None, Err(403)),
            (bearer, None, Err(403)),
        ];
        for (head, token, want) in table {
            assert_eq!(check(head, token), want, "{head:?} with {token:?}");
        }
    }
}
