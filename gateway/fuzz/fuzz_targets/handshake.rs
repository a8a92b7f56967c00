//! Fuzzes the request-head parser and the upgrade decision: no panic, and every refusal maps
//! to an HTTP status and a well-formed response.
#![no_main]

use gateway::proto::DeflateConfig;
use gateway::proto::handshake::{self, MAX_HEADERS, Request, ServerPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let protocols = vec!["chat".to_string()];
    let policy = ServerPolicy {
        subprotocols: &protocols,
        origin: None,
        deflate: DeflateConfig::default(),
    };
    let mut out = Vec::new();
    match Request::parse(data, &mut storage) {
        Ok(None) => {}
        Ok(Some(req)) => {
            assert!(req.head_len <= data.len());
            match handshake::accept(&req, &policy) {
                Ok(accepted) => accepted.write_response(&mut out),
                Err(e) => gateway::http::response::write_refusal(&e, &mut out),
            }
            assert!(out.starts_with(b"HTTP/1.1 "));
        }
        Err(e) => {
            gateway::http::response::write_refusal(&e, &mut out);
            assert!((400..500).contains(&e.status()));
        }
    }
});
