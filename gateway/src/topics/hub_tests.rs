//! The hub's unit tests: names, sequence numbers, history, limits, backpressure, frames.

use super::*;
use crate::proto::Compressor;

#[test]
fn topic_names() {
    for ok in ["chat/lobby", "news/eu", "file/config", "a", "log/app-1.2_x"] {
        assert!(is_valid_topic(ok), "{ok}");
    }
    for bad in [
        "",
        "/chat",
        "chat/",
        "chat//x",
        "chat/../x",
        "chat/./x",
        "ch at",
        "chat/é",
        &"x".repeat(129),
    ] {
        assert!(!is_valid_topic(bad), "{bad}");
    }
}

#[test]
fn sequence_history_and_replay() {
    let hub = Hub::new(HistoryConfig {
        messages: 3,
        bytes: 1000,
    });
    for i in 1..=5u8 {
        let r = hub.publish("chat/a", MessageKind::Text, vec![b'0' + i].into());
        assert_eq!(r.seq, u64::from(i));
    }
    let id = hub.topic("chat/a", TopicKind::Stream);
    // History holds 3..=5: since 3 replays 4 and 5, no gap.
    let s = hub.subscribe(id, Resume::since(Some(3))).unwrap();
    assert_eq!(s.replay.iter().map(|m| m.seq).collect::<Vec<_>>(), [4, 5]);
    assert_eq!((s.last_seq, s.gap_until), (5, None));
    // Since 1: message 2 is gone, so the gap is reported.
    let s = hub.subscribe(id, Resume::since(Some(1))).unwrap();
    assert_eq!(
        s.replay.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    assert_eq!(s.gap_until, Some(3));
    assert_eq!(
        hub.publish("chat/a", MessageKind::Text, b"x".to_vec().into())
            .subscribers,
        2
    );
}

#[test]
fn clients_cannot_create_topics_past_the_limit() {
    let limits = HubLimits {
        max_topics: 2,
        ..HubLimits::default()
    };
    let hub = Hub::with_limits(HistoryConfig::default(), limits);
    let join = |name: &str| hub.join(name, TopicKind::Stream, Resume::default(), true);
    assert!(join("a").is_ok());
    assert!(
        hub.try_publish("b", MessageKind::Text, b"x".to_vec().into(), true)
            .is_ok()
    );
    assert_eq!(join("c").err(), Some(Refused::TooManyTopics));
    assert_eq!(
        hub.try_publish("c", MessageKind::Text, b"x".to_vec().into(), true),
        Err(Refused::TooManyTopics)
    );
    // Existing topics stay usable; lookups create nothing.
    assert!(
        hub.try_publish("a", MessageKind::Text, b"x".to_vec().into(), true)
            .is_ok()
    );
    assert_eq!(hub.find("c"), None);
    assert_eq!(hub.snapshot().len(), 2);
}

/// A worker that does not keep up makes the hub refuse refusable publishes until it has
/// delivered its backlog; must-deliver publishes (chat, feeds) still go through.
#[test]
fn publishers_are_pushed_back_while_a_backlog_is_over_the_limit() {
    let limits = HubLimits {
        max_backlog: 4 * (100 + mailbox::MESSAGE_OVERHEAD),
        ..HubLimits::default()
    };
    let hub = Hub::with_limits(HistoryConfig::default(), limits);
    let poll = mio::Poll::new().unwrap();
    let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
    let (to_worker, inbox) = mailbox::mailbox(waker);
    hub.set_mailboxes(vec![to_worker]);
    let body = || vec![b'x'; 100].into_boxed_slice();
    let mut accepted = 0;
    while hub
        .try_publish("t", MessageKind::Text, body(), true)
        .is_ok()
    {
        accepted += 1;
        assert!(accepted <= 5, "the backlog bound holds");
    }
    assert_eq!(accepted, 5, "refused once over 4 messages' worth");
    assert_eq!(
        hub.try_publish("t", MessageKind::Text, body(), true),
        Err(Refused::Busy)
    );
    let id = hub.find("t").unwrap();
    assert_eq!(
        hub.publish_id(id, MessageKind::Text, body()).unwrap().seq,
        6
    );
    assert_eq!(hub.backlog().0, 6);
    while let Some(m) = inbox.next() {
        inbox.done(&m);
    }
    assert!(!inbox.is_pending() && !hub.congested());
    assert_eq!(
        hub.try_publish("t", MessageKind::Text, body(), true)
            .map(|(r, _)| r.seq),
        Ok(7)
    );
}

#[test]
fn history_bounded_by_bytes_but_keeps_the_newest() {
    let hub = Hub::new(HistoryConfig {
        messages: 100,
        bytes: 10,
    });
    hub.publish("t", MessageKind::Binary, vec![0; 6].into());
    hub.publish("t", MessageKind::Binary, vec![0; 6].into());
    hub.publish("t", MessageKind::Binary, vec![0; 50].into());
    let id = hub.topic("t", TopicKind::Stream);
    let s = hub.subscribe(id, Resume::since(Some(0))).unwrap();
    assert_eq!(s.replay.iter().map(|m| m.seq).collect::<Vec<_>>(), [3]);
    assert_eq!(s.gap_until, Some(3));
}

#[test]
fn latest_topics_keep_only_the_newest_message_and_its_stamp() {
    let hub = Hub::new(HistoryConfig::default());
    let id = hub.topic("file/a", TopicKind::Latest);
    hub.publish_stamped(id, MessageKind::Text, b"v1".to_vec().into(), 10);
    hub.publish_stamped(id, MessageKind::Text, b"v2".to_vec().into(), 20);
    let s = hub.subscribe(id, Resume::since(Some(0))).unwrap();
    assert_eq!(s.replay.len(), 1);
    assert_eq!((&*s.replay[0].payload, s.replay[0].stamp), (&b"v2"[..], 20));
    assert_eq!(s.gap_until, Some(2));
    hub.publish_id(id, MessageKind::Text, b"v3".to_vec().into());
    assert_eq!(hub.latest(id).unwrap().stamp, 0);
}

#[test]
fn frames_are_encoded_once_per_shape() {
    let hub = Hub::new(HistoryConfig::default());
    hub.publish("chat/a", MessageKind::Text, "say \"hi\"".as_bytes().into());
    let id = hub.topic("chat/a", TopicKind::Stream);
    let msg = hub.latest(id).unwrap();
    let a = msg.frame(Style::Raw, None);
    let b = msg.frame(Style::Raw, None);
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(&a[..], b"\x81\x08say \"hi\"");
    let env = msg.frame(Style::Envelope, None);
    let json: serde_json::Value = serde_json::from_slice(&env[2..]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"topic": "chat/a", "seq": 1, "data": "say \"hi\""})
    );
    // Too short to shrink: the "compressed" shape is the plain frame.
    let mut d = Compressor::default();
    let z = msg.frame(Style::Raw, Some((15, &mut d)));
    assert_eq!(&z[..], &a[..]);
    // A compressible message is compressed once and decodes to the original.
    let text = "say \"hi\" ".repeat(20);
    hub.publish("chat/a", MessageKind::Text, text.as_bytes().into());
    let msg = hub.latest(id).unwrap();
    let z = msg.frame(Style::Raw, Some((15, &mut d)));
    assert_eq!(z[0], 0xc1, "FIN + RSV1 + text");
    let mut inf = crate::proto::Inflater::new(15, true);
    let mut out = Vec::new();
    inf.inflate(&z[2..], &mut out, 1 << 20).unwrap();
    inf.finish(&mut out, 1 << 20).unwrap();
    assert_eq!(out, text.as_bytes());
}

fn ttl_hub(ttl: Duration) -> Hub {
    let limits = HubLimits {
        topic_ttl: ttl,
        ..HubLimits::default()
    };
    Hub::with_limits(HistoryConfig::default(), limits)
}

#[test]
fn idle_topics_are_forgotten_with_their_history_and_come_back_with_a_new_epoch() {
    let hub = ttl_hub(Duration::from_millis(50));
    let first = hub.publish("news/a", MessageKind::Text, vec![b'x'; 100].into());
    let pinned = hub.topic("log/app", TopicKind::Stream);
    hub.publish_id(pinned, MessageKind::Text, b"line".to_vec().into());
    let (followed, _) = hub
        .join("news/b", TopicKind::Stream, Resume::default(), true)
        .unwrap();
    assert_eq!(hub.history_bytes(), 104);
    std::thread::sleep(Duration::from_millis(120));
    hub.expire_idle();
    // news/a went; the feed is pinned and news/b has a subscriber.
    assert_eq!(hub.topic_counts(), (2, 1));
    assert_eq!(hub.find("news/a"), None);
    assert_eq!(hub.history_bytes(), 4);
    assert!(
        hub.publish_id(first.topic, MessageKind::Text, b"x".to_vec().into())
            .is_none()
    );
    let again = hub.publish("news/a", MessageKind::Text, b"y".to_vec().into());
    assert_eq!(again.seq, 1, "numbering restarts");
    assert_ne!((again.topic, again.epoch), (first.topic, first.epoch));
    // Once its subscriber leaves, news/b goes too, a TTL later.
    hub.unsubscribe(followed.topic);
    std::thread::sleep(Duration::from_millis(120));
    hub.expire_idle();
    assert_eq!(hub.find("news/b"), None);
    assert!(hub.find("log/app").is_some());
}

#[test]
fn a_publish_keeps_an_idle_topic() {
    let hub = ttl_hub(Duration::from_millis(100));
    hub.publish("t", MessageKind::Text, b"1".to_vec().into());
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(40));
        hub.publish("t", MessageKind::Text, b"x".to_vec().into());
        hub.expire_idle();
    }
    let id = hub.find("t").expect("kept while published to");
    let s = hub.subscribe(id, Resume::since(Some(0))).unwrap();
    assert_eq!(s.replay.len(), 5);
}

#[test]
fn a_since_from_another_epoch_or_beyond_the_last_seq_is_a_reset() {
    let hub = Hub::new(HistoryConfig::default());
    let r = hub.publish("t", MessageKind::Text, b"1".to_vec().into());
    hub.publish("t", MessageKind::Text, b"2".to_vec().into());
    let epoch = r.epoch.to_string();
    assert_eq!(epoch.len(), 12);
    let resume = |since, epoch| Resume {
        since: Some(since),
        epoch,
    };
    let ok = hub.subscribe(r.topic, resume(1, Some(&epoch))).unwrap();
    assert!(!ok.reset);
    assert_eq!(ok.replay.len(), 1);
    for (since, e) in [(1, Some("000000000000")), (1, Some("nonsense")), (3, None)] {
        let s = hub.subscribe(r.topic, resume(since, e)).unwrap();
        assert!(s.reset, "{since} {e:?}");
        assert!(s.replay.is_empty() && s.gap_until.is_none());
        assert_eq!((s.last_seq, s.epoch), (2, r.epoch));
    }
    // Another hub (a restart) numbers the same topic in another epoch.
    let other = Hub::new(HistoryConfig::default());
    let r2 = other.publish("t", MessageKind::Text, b"1".to_vec().into());
    assert_eq!(r2.topic, r.topic);
    assert_ne!(r2.epoch, r.epoch);
}

#[test]
fn a_refused_creation_creates_nothing() {
    let hub = Hub::new(HistoryConfig::default());
    let refused = hub.join("a", TopicKind::Stream, Resume::default(), false);
    assert_eq!(refused.err(), Some(Refused::CreateRate));
    assert_eq!(
        hub.try_publish("b", MessageKind::Text, b"x".to_vec().into(), false),
        Err(Refused::CreateRate)
    );
    assert_eq!(hub.topic_counts().0, 0);
    // Existing topics need no allowance.
    hub.publish("a", MessageKind::Text, b"x".to_vec().into());
    assert!(
        hub.join("a", TopicKind::Stream, Resume::default(), false)
            .is_ok()
    );
}
