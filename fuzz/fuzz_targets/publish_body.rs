//! Fuzzes the HTTP publish bodies (single and batch) through parsing and validation.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use streamhub::config::Limits;
use streamhub::gateway::protocol::{BatchBody, PublishBody};

fn limits() -> &'static Limits {
    static LIMITS: OnceLock<Limits> = OnceLock::new();
    LIMITS.get_or_init(|| streamhub::Config::defaults().limits)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = serde_json::from_slice::<PublishBody>(data) {
        let sent = serde_json::from_str::<serde_json::Value>(body.data.get()).ok();
        if let Ok(message) = body.into_message() {
            // The stored (compacted) text means what was sent.
            let stored: serde_json::Value = serde_json::from_slice(&message.payload).expect("compacted data parses");
            assert_eq!(sent, Some(stored));
            let _ = message.check(limits());
        }
    }
    if let Ok(batch) = serde_json::from_slice::<BatchBody>(data) {
        for body in batch.messages {
            if let Ok(message) = body.into_message() {
                let _ = message.check(limits());
            }
        }
    }
});
