//! A connection's receive side on an arbitrary byte stream, split at arbitrary
//! places: never panics, never holds more than the window per pair, and once it
//! reports an error the stream is refused.
#![no_main]
use inter_net::protocol::{Inboxes, Link, Topology};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let topo = Topology { my_vm: 1, vm_of_rank: vec![0, 0, 1, 1], job: 7, window: 1 << 16, chunk: 4096 };
    let mut link = Link::new(0);
    let mut inboxes = Inboxes::new(2..4);
    // Start with a valid hello half the time, so the fuzzer reaches the message checks.
    let mut stream = Vec::new();
    if split & 1 == 1 {
        let mut hello = [0u8; inter_net::frame::HEADER_LEN];
        inter_net::frame::Frame::hello(0, 1, 4, 7).encode(&mut hello);
        stream.extend_from_slice(&hello);
    }
    stream.extend_from_slice(rest);
    let step = usize::from(split >> 1).max(1);
    for piece in stream.chunks(step) {
        if link.absorb(&topo, &mut inboxes, piece).is_err() {
            return;
        }
        assert!(inboxes.buffered() <= 2 * 2 * (1 << 16));
        for rank in 2..4 {
            if let Some(header) = inboxes.peek(rank) {
                let mut into = vec![0u8; header.len.min(1 << 20)];
                if into.len() == header.len {
                    inboxes.read_into(rank, &mut into);
                }
            }
        }
    }
});
