//! Tokens on the worker: an upgrade's token is checked ([`crate::auth::Verifier`]) and, when
//! valid, its claims are kept in the worker's side table `auth` by slot (never in `Conn`: a
//! connection without a token pays nothing) for what the connection asks later (subscribe,
//! publish), and its expiry is one more deadline of the connection's timer entry: at `exp`
//! (plus `--jwt-leeway`) an open WebSocket is closed with 3000. Every refusal is counted by
//! cause.

use std::sync::Arc;
use std::time::Duration;

use super::Worker;
use crate::auth::{Claims, Refusal, presented_token, unix_now};
use crate::proto::CloseCode;
use crate::proto::handshake::Request;
use crate::server::conn::Phase;
use crate::server::stats::WorkerStats;
use crate::server::timer::TICK;

/// What a connection admitted with a token may do, and until when.
#[derive(Debug)]
pub(crate) struct Authorized {
    /// The token's claims (shared, so another part of the server can hold them too: the
    /// command runner checks `Claims::allows_command`).
    pub claims: Arc<Claims>,
    /// The worker tick at which the token expires (`exp` plus the leeway).
    pub expires: u32,
    /// A chat socket may publish to its room (`publish` covers `chat/ROOM`).
    pub chat_publish: bool,
}

/// Counts a token refusal under its cause.
pub(super) fn count_refusal(s: &WorkerStats, r: Refusal) {
    let counter = match r {
        Refusal::Missing => &s.token_refused_missing_total,
        Refusal::TooLong => &s.token_refused_too_long_total,
        Refusal::Malformed => &s.token_refused_malformed_total,
        Refusal::Algorithm => &s.token_refused_algorithm_total,
        Refusal::Signature => &s.token_refused_signature_total,
        Refusal::Expired => &s.token_refused_expired_total,
        Refusal::Claims => &s.token_refused_claims_total,
        Refusal::Forbidden => &s.token_refused_forbidden_total,
    };
    WorkerStats::add(counter, 1);
}

impl Worker {
    /// The token check of an upgrade whose socket follows `topic` (chat, file and log sockets;
    /// `None` for `/echo` and `/ws`): `Ok(None)` when tokens are off, the admitted claims, or
    /// the refusal (counted).
    pub(super) fn check_upgrade_token(
        &self,
        req: &Request<'_, '_>,
        topic: Option<&str>,
    ) -> Result<Option<Authorized>, Refusal> {
        let Some(verifier) = self.shared.verifier() else {
            return Ok(None);
        };
        let checked = presented_token(req)
            .ok_or(Refusal::Missing)
            .and_then(|token| verifier.verify(token, unix_now()))
            .and_then(|claims| match topic {
                Some(t) if !claims.allows_subscribe(t) => Err(Refusal::Forbidden),
                _ => Ok(claims),
            });
        match checked {
            Ok(claims) => Ok(Some(Authorized {
                expires: self.expiry_tick(verifier.valid_until(&claims)),
                chat_publish: topic.is_some_and(|t| claims.allows_publish(t)),
                claims: Arc::new(claims),
            })),
            Err(r) => {
                count_refusal(self.stats(), r);
                Err(r)
            }
        }
    }

    /// The first worker tick that starts at or after `valid_until` (since the Unix epoch), so
    /// the close never comes early.
    fn expiry_tick(&self, valid_until: Duration) -> u32 {
        let left = valid_until.saturating_sub(unix_now());
        let at = self.epoch.elapsed().saturating_add(left);
        u32::try_from(at.as_nanos().div_ceil(TICK.as_nanos()) + 1).unwrap_or(u32::MAX)
    }

    /// The claims a connection was admitted with; `None` without a token (tokens off when it
    /// opened).
    pub(crate) fn claims_of(&self, key: usize) -> Option<&Arc<Claims>> {
        self.auth.get(&key).map(|a| &a.claims)
    }

    /// Whether the connection may subscribe to `topic`; counts a refusal. A connection
    /// admitted without a token may.
    pub(super) fn may_subscribe(&self, key: usize, topic: &str) -> bool {
        self.allowed(key, |c| c.allows_subscribe(topic))
    }

    /// Whether the connection may publish to `topic`; counts a refusal.
    pub(super) fn may_publish(&self, key: usize, topic: &str) -> bool {
        self.allowed(key, |c| c.allows_publish(topic))
    }

    fn allowed(&self, key: usize, rule: impl Fn(&Claims) -> bool) -> bool {
        let ok = self.claims_of(key).is_none_or(|c| rule(c));
        if !ok {
            count_refusal(self.stats(), Refusal::Forbidden);
        }
        ok
    }

    /// Whether a chat socket may publish to its room; counts a refusal.
    pub(super) fn may_chat(&self, key: usize) -> bool {
        let ok = self.auth.get(&key).is_none_or(|a| a.chat_publish);
        if !ok {
            count_refusal(self.stats(), Refusal::Forbidden);
        }
        ok
    }

    /// The tick the connection's token expires at, if it has one.
    pub(super) fn token_expiry(&self, key: usize) -> Option<u32> {
        self.auth.get(&key).map(|a| a.expires)
    }

    /// Closes an open WebSocket whose token has expired with 3000; true if it did.
    pub(super) fn close_if_expired(&mut self, key: usize) -> bool {
        let expired = self.token_expiry(key).is_some_and(|at| at <= self.now);
        if !expired || !matches!(self.conns[key].phase, Phase::Open(_)) {
            return false;
        }
        WorkerStats::add(&self.stats().token_expired_closes_total, 1);
        self.close_ws(key, CloseCode::UNAUTHORIZED, "token expired");
        true
    }
}
