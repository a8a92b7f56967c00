//! Fuzzes the `/ws` command parser (`gateway::server::Command::parse`), which reads every
//! message a multiplexed client sends. Properties: no panic, whatever the bytes; an accepted
//! command names a valid topic; and an accepted command written back as JSON parses to the
//! same command (what the parser keeps is all that the message meant).
#![no_main]

use gateway::proto::MessageKind;
use gateway::server::Command;
use gateway::topics::is_valid_topic;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|input: &[u8]| {
    // Binary messages are refused whatever they hold.
    assert!(Command::parse(MessageKind::Binary, input).is_err());
    let Ok(cmd) = Command::parse(MessageKind::Text, input) else {
        return;
    };
    let again = match &cmd {
        Command::Subscribe {
            topic,
            since,
            epoch,
        } => {
            assert!(is_valid_topic(topic));
            json!({"type": "subscribe", "topic": topic, "since": since, "epoch": epoch})
        }
        Command::Unsubscribe { topic, .. } => {
            assert!(is_valid_topic(topic));
            json!({"type": "unsubscribe", "topic": topic})
        }
        Command::Publish { topic, data, .. } => {
            assert!(is_valid_topic(topic) && topic.starts_with("chat/"));
            json!({"type": "publish", "topic": topic, "data": data})
        }
    };
    let text = serde_json::to_vec(&again).expect("JSON values serialize");
    assert_eq!(Command::parse(MessageKind::Text, &text), Ok(cmd));
});
