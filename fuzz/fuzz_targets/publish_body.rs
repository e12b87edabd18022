//! Fuzzes the HTTP publish bodies (single and batch) through parsing and validation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamhub::gateway::protocol::{BatchBody, PublishBody};

fuzz_target!(|data: &[u8]| {
    let limits = streamhub::Config::defaults().limits;
    if let Ok(body) = serde_json::from_slice::<PublishBody>(data) {
        let _ = body.into_message().check(&limits);
    }
    if let Ok(batch) = serde_json::from_slice::<BatchBody>(data) {
        for body in batch.messages {
            let _ = body.into_message().check(&limits);
        }
    }
});
