//! The hub's unit tests: names, sequence numbers, history, limits, backpressure, frames.

use super::*;

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
    let s = hub.subscribe(id, Some(3));
    assert_eq!(s.replay.iter().map(|m| m.seq).collect::<Vec<_>>(), [4, 5]);
    assert_eq!((s.last_seq, s.gap_until), (5, None));
    // Since 1: message 2 is gone, so the gap is reported.
    let s = hub.subscribe(id, Some(1));
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
    assert!(hub.try_topic("a", TopicKind::Stream).is_some());
    assert!(
        hub.try_publish("b", MessageKind::Text, b"x".to_vec().into())
            .is_ok()
    );
    assert_eq!(hub.try_topic("c", TopicKind::Stream), None);
    assert_eq!(
        hub.try_publish("c", MessageKind::Text, b"x".to_vec().into()),
        Err(Refused::TooManyTopics)
    );
    // Existing topics stay usable; lookups create nothing.
    assert!(
        hub.try_publish("a", MessageKind::Text, b"x".to_vec().into())
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
    while hub.try_publish("t", MessageKind::Text, body()).is_ok() {
        accepted += 1;
        assert!(accepted <= 5, "the backlog bound holds");
    }
    assert_eq!(accepted, 5, "refused once over 4 messages' worth");
    assert_eq!(
        hub.try_publish("t", MessageKind::Text, body()),
        Err(Refused::Busy)
    );
    let id = hub.find("t").unwrap();
    assert_eq!(hub.publish_id(id, MessageKind::Text, body()).seq, 6);
    assert_eq!(hub.backlog().0, 6);
    while let Some(m) = inbox.next() {
        inbox.done(&m);
    }
    assert!(!inbox.is_pending() && !hub.congested());
    assert_eq!(
        hub.try_publish("t", MessageKind::Text, body())
            .map(|r| r.seq),
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
    let s = hub.subscribe(id, Some(0));
    assert_eq!(s.replay.iter().map(|m| m.seq).collect::<Vec<_>>(), [3]);
    assert_eq!(s.gap_until, Some(3));
}

#[test]
fn latest_topics_keep_only_the_newest_message_and_its_stamp() {
    let hub = Hub::new(HistoryConfig::default());
    let id = hub.topic("file/a", TopicKind::Latest);
    hub.publish_stamped(id, MessageKind::Text, b"v1".to_vec().into(), 10);
    hub.publish_stamped(id, MessageKind::Text, b"v2".to_vec().into(), 20);
    let s = hub.subscribe(id, Some(0));
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
