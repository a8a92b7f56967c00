//! Fuzzes the streaming frame reader in both roles, with and without permessage-deflate.
//!
//! The input is cut into pieces at fuzzer-chosen points and fed the way the event loop feeds
//! it (unconsumed bytes kept for the next call). Properties: no panic; no message over the
//! limit; a text message is valid UTF-8; feeding the same bytes whole gives the same events and
//! fails if and only if the pieces failed. (Which rule a failure names may depend on the cut:
//! fail-fast UTF-8 checking can see bad text in a piece before a later byte breaks the
//! compressed stream.)
#![no_main]

use gateway::proto::{Event, MessageKind, Reader, Role};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1 << 16;

fn run(reader: &mut Reader, data: &[u8], cuts: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = Vec::new();
    let mut msg = Vec::new();
    let mut inflater = None;
    let mut rest = data;
    let mut cuts = cuts.iter().cycle();
    while !rest.is_empty() {
        let n = (usize::from(*cuts.next().unwrap_or(&255)) + 1).min(rest.len());
        pending.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        let mut pos = 0;
        loop {
            match reader.read(&mut pending[pos..], &mut msg, &mut inflater) {
                Err(e) => {
                    out.push(format!("error {e}"));
                    return out;
                }
                Ok(step) => {
                    pos += step.consumed;
                    match step.event {
                        Some(Event::Message(kind)) => {
                            assert!(msg.len() <= LIMIT, "message over the limit");
                            if kind == MessageKind::Text {
                                assert!(std::str::from_utf8(&msg).is_ok(), "text that is not UTF-8");
                            }
                            out.push(format!("{kind:?} {:?}", msg));
                            msg.clear();
                        }
                        Some(e) => out.push(format!("{e:?}")),
                        None if step.consumed == 0 => break,
                        None => {}
                    }
                }
            }
        }
        pending.drain(..pos);
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else { return };
    let split = rest.len().min(usize::from(flags >> 2));
    let (cuts, data) = rest.split_at(split);
    let role = if flags & 1 == 0 { Role::Server } else { Role::Client };
    let deflate = (flags & 2 != 0).then_some((15, false));
    let pieces = run(&mut Reader::new(role, LIMIT, deflate), data, cuts);
    let whole = run(&mut Reader::new(role, LIMIT, deflate), data, &[255]);
    // Splitting the input differently never changes what comes out.
    let events = |v: &[String]| v.iter().filter(|e| !e.starts_with("error")).cloned().collect::<Vec<_>>();
    let failed = |v: &[String]| v.last().is_some_and(|e| e.starts_with("error"));
    assert_eq!(events(&pieces), events(&whole));
    assert_eq!(failed(&pieces), failed(&whole), "{pieces:?} vs {whole:?}");
});
