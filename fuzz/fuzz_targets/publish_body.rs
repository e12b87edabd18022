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
        if body.check_data().is_ok() {
            // The stored (compacted) text means what was sent.
            let sent: serde_json::Value = serde_json::from_str(body.data.get()).expect("checked data parses");
            let message = body.into_message();
            let stored: serde_json::Value = serde_json::from_slice(&message.payload).expect("compacted data parses");
            assert_eq!(sent, stored);
            let _ = message.check(limits());
        }
    }
    if let Ok(batch) = serde_json::from_slice::<BatchBody>(data) {
        for body in batch.messages {
            let _ = body.into_message().check(limits());
        }
    }
});
