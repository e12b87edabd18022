//! Fuzzes the stored-envelope decoder (MessagePack read from Redis): it must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = streamhub::Envelope::decode(data);
});
