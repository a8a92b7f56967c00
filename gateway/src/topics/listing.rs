//! The topic listing behind `GET /`: the most followed topics, filtered by a name prefix, and
//! the totals. Its cost is bounded by the page, not by what the hub holds: one pass over the
//! topics under the hub lock, comparing counts and names in place (no allocation per topic) and
//! keeping the best [`INDEX_TOPICS`] in a small heap; only the page's rows are copied out.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::Hub;

/// Topics shown on the index page.
pub const INDEX_TOPICS: usize = 100;

/// One page of the topic listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPage {
    /// Topics in the hub.
    pub total: usize,
    /// Topics whose name starts with the prefix.
    pub matching: usize,
    /// (name, subscribers, last sequence number) of the most followed matching topics, most
    /// subscribers first, then by name.
    pub top: Vec<(String, usize, u64)>,
}

impl Hub {
    /// The `limit` most followed topics whose name starts with `prefix`, and the totals.
    pub fn top_topics(&self, prefix: &str, limit: usize) -> TopicPage {
        let inner = self.lock();
        // A min-heap of the best so far: its top is the one to drop when a better one comes.
        // "Better" is more subscribers, then the smaller name.
        let mut best = BinaryHeap::with_capacity(limit + 1);
        let mut matching = 0;
        for (id, t) in inner.topics.iter() {
            if !t.name.starts_with(prefix) {
                continue;
            }
            matching += 1;
            best.push(Reverse((t.subscribers, Reverse(&*t.name), id)));
            if best.len() > limit {
                best.pop();
            }
        }
        let top = best
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse((subs, Reverse(name), id))| {
                (
                    name.to_owned(),
                    subs,
                    inner.topics.get(&id).map_or(0, |t| t.last_seq),
                )
            })
            .collect();
        TopicPage {
            total: inner.topics.len(),
            matching,
            top,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::MessageKind;
    use crate::topics::{HistoryConfig, Resume, TopicKind};

    #[test]
    fn most_followed_first_then_by_name_within_the_prefix() {
        let hub = Hub::new(HistoryConfig::default());
        for name in ["a/3", "a/1", "a/2", "b/1", "a/4"] {
            hub.publish(name, MessageKind::Text, b"x".to_vec().into());
        }
        let a2 = hub.topic("a/2", TopicKind::Stream);
        let a4 = hub.topic("a/4", TopicKind::Stream);
        hub.subscribe(a2, Resume::default());
        hub.subscribe(a2, Resume::default());
        hub.subscribe(a4, Resume::default());
        let page = hub.top_topics("a/", 3);
        assert_eq!((page.total, page.matching), (5, 4));
        let names: Vec<_> = page.top.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(names, ["a/2", "a/4", "a/1"]);
        assert_eq!(page.top[0], ("a/2".to_owned(), 2, 1));
        assert_eq!(hub.top_topics("", 10).top.len(), 5);
        assert_eq!(hub.top_topics("zz", 10).matching, 0);
    }
}
