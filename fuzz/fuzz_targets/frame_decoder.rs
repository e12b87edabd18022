//! Fuzzes the WebSocket frame decoder with both encodings: it must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamhub::gateway::frames::{decode_client, Encoding};

fuzz_target!(|data: &[u8]| {
    let _ = decode_client(data, Encoding::Json);
    let _ = decode_client(data, Encoding::Msgpack);
});
