//! Fuzzes the Centrifugo frame decoder (JSON lines and varint-delimited Protobuf) and the
//! re-encoding of whatever it accepts: neither may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamhub::gateway::centrifugo::codec::Format;
use streamhub::gateway::centrifugo::proto::Reply;

fuzz_target!(|data: &[u8]| {
    for format in [Format::Json, Format::Protobuf] {
        if let Ok(commands) = format.decode(data) {
            for command in commands {
                // Payloads a client sent come back in pushes and replies.
                let data = command.publish.map(|p| p.data).unwrap_or_default();
                let _ = format.data(&data, true);
                let _ = format.encode(&Reply { id: command.id, ..Default::default() });
            }
        }
    }
});
