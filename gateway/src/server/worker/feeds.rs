//! The worker's side of the file and log feeds ([`crate::feeds`]): the sockets
//! `/ws/file/{name}?lastMod=<hex ns>` and `/ws/log/{name}?last=N`, and what the `/file/{name}`
//! page shows.
//!
//! A feed socket subscribes when it opens, through the worker's one subscribe routine: what it
//! is owed from before is taken from the same [`Hub::subscribe`](crate::topics::Hub::subscribe)
//! call that registers it, so nothing published in between is missed or sent twice: a file socket gets the current version unless
//! `lastMod` says it has it (a file topic's history holds only its newest version), a log
//! socket the last N lines the topic's history still holds.

use super::Worker;
use super::delivery::{Replay, Subscribe};
use crate::http::Route;
use crate::server::Shared;
use crate::topics::{Resume, Style, TopicKind};

/// The value of `key` in a query string (`a=1&b=2`), undecoded; the feed parameters are hex
/// digits and numbers, which need no decoding.
pub(super) fn query_param<'q>(query: Option<&'q str>, key: &str) -> Option<&'q str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// `lastMod`: the stamp of the version the client has, in hex nanoseconds (the classic
/// file-watch example's format). Absent or unparseable means the client has nothing: 0.
pub(super) fn parse_last_mod(value: Option<&str>) -> u64 {
    value
        .map(|v| v.trim())
        .map(|v| v.strip_prefix("0x").unwrap_or(v))
        .filter(|v| v.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .unwrap_or(0)
}

/// `last`: how many past lines a log socket wants first. Absent or unparseable: none.
pub(super) fn parse_last(value: Option<&str>) -> usize {
    value.and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// The topic of a feed route and its kind; `None` if `name` is not a configured feed.
fn feed_topic(shared: &Shared, route: Route, name: &str) -> Option<(String, TopicKind)> {
    let (feeds, prefix, kind) = match route {
        Route::File | Route::FilePage => (&shared.config.watch, "file", TopicKind::Latest),
        Route::Log => (&shared.config.tail, "log", TopicKind::Stream),
        _ => return None,
    };
    feeds
        .iter()
        .any(|(n, _)| n == name)
        .then(|| (format!("{prefix}/{name}"), kind))
}

/// What the `/file/{name}` page shows: the current version as text (lossy for binary files)
/// and its stamp; `None` if no file of that name is watched.
pub(super) fn file_view(shared: &Shared, name: &str) -> Option<(String, u64)> {
    let (topic, kind) = feed_topic(shared, Route::FilePage, name)?;
    let id = shared.hub.topic(&topic, kind);
    Some(shared.hub.latest(id).map_or_else(
        || (String::new(), 0),
        |m| (String::from_utf8_lossy(&m.payload).into_owned(), m.stamp),
    ))
}

/// Whether a feed socket's name is configured (if not, the upgrade is refused with 404).
pub(super) fn configured(shared: &Shared, route: Route, name: &str) -> bool {
    feed_topic(shared, route, name).is_some()
}

impl Worker {
    /// Subscribes a freshly opened `/ws/file/..` or `/ws/log/..` socket, sending first what
    /// its query asks for from before.
    pub(super) fn subscribe_feed(
        &mut self,
        key: usize,
        route: Route,
        name: &str,
        query: Option<&str>,
    ) {
        let Some((topic, kind)) = feed_topic(&self.shared, route, name) else {
            return;
        };
        let replay = match route {
            Route::File => Replay::LatestNewerThan(parse_last_mod(query_param(query, "lastMod"))),
            _ => Replay::Last(parse_last(query_param(query, "last"))),
        };
        let id = self.shared.hub.topic(&topic, kind);
        // A feed's topic is pinned: it is never forgotten.
        let Some(sub) = self.shared.hub.subscribe(id, Resume::since(replay.since())) else {
            return;
        };
        self.subscribe(
            key,
            sub,
            Subscribe {
                replay,
                style: Style::Raw,
                announce: None,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        let table = [
            (Some("lastMod=1f"), "lastMod", Some("1f")),
            (Some("a=1&lastMod=ff&b"), "lastMod", Some("ff")),
            (Some("lastModX=1&lastMod=2"), "lastMod", Some("2")),
            (Some("lastMod"), "lastMod", None),
            (Some("last=5"), "lastMod", None),
            (Some(""), "last", None),
            (None, "last", None),
        ];
        for (query, key, want) in table {
            assert_eq!(query_param(query, key), want, "{query:?} {key}");
        }
    }

    #[test]
    fn last_mod_is_hex_nanoseconds_and_lenient() {
        let table = [
            (None, 0),
            (Some(""), 0),
            (Some("0"), 0),
            (Some("1f"), 0x1f),
            (Some("1F"), 0x1f),
            (Some("0x10"), 0x10),
            (Some("17d0f5a3c2e4b000"), 0x17d0_f5a3_c2e4_b000),
            (Some("ffffffffffffffff"), u64::MAX),
            // Unparseable: treated as "has nothing", so the content is sent.
            (Some("10000000000000000"), 0),
            (Some("xyz"), 0),
            (Some("+1"), 0),
            (Some("-1"), 0),
        ];
        for (value, want) in table {
            assert_eq!(parse_last_mod(value), want, "{value:?}");
        }
        assert_eq!(parse_last(Some("10")), 10);
        assert_eq!(parse_last(Some("-1")), 0);
        assert_eq!(parse_last(None), 0);
    }
}
