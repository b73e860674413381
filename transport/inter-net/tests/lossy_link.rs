//! Two or three VMs' nodes on an in-memory Ethernet segment with smoltcp's
//! `FaultInjector` (5 % drop, 5 % corruption) and 5 % reordering, driven from one
//! thread on a simulated clock (1 ms per round, so TCP's 1 s minimum retransmission
//! timeout costs 1000 rounds, not a second).

use inter_net::sim::{Segment, SimPort};
use inter_net::{NetConfig, Nic, Node};
use mpi::transport::{Header, MessageKind};
use smoltcp::phy::FaultInjector;

mod common;
use common::{advance, now_us};

type Dev = FaultInjector<SimPort>;

/// `vms` nodes with `per_vm` ranks each, all ports faulty.
fn build(vms: u32, per_vm: u32, faults: u8, reorder: u32, tune: impl Fn(&mut NetConfig)) -> (Segment, Vec<Node<Dev>>) {
    let segment = Segment::new(reorder, 0x1234_5678);
    let vm_of_rank: Vec<u32> = (0..vms * per_vm).map(|r| r / per_vm).collect();
    let nodes = (0..vms)
        .map(|vm| {
            let mac = [2, 0x74, 0x6f, 0, 0, vm as u8];
            let mut device = FaultInjector::new(segment.attach(mac), 77 + vm);
            device.set_drop_chance(faults);
            device.set_corrupt_chance(faults);
            let mut config = NetConfig::new(vm, vm_of_rank.clone(), mac, [169, 254, 1, 1]);
            config.seed = 1000 + u64::from(vm);
            tune(&mut config);
            Node::new(config, device, now_us)
        })
        .collect();
    (segment, nodes)
}

fn pattern(source: u32, dest: u32, seq: u32, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(31).wrapping_add(source * 7 + dest * 13 + seq * 101) as u8).collect()
}

fn header(source: u32, dest: u32, seq: u32, len: usize) -> Header {
    Header { source, dest, tag: seq as i32, context: 3, len, kind: MessageKind::Data, cookie: 0 }
}

/// One round: every node polls once; the clock moves 1 ms, or 20 ms when nothing moved.
fn round<D: Nic>(nodes: &mut [Node<D>]) {
    let mut moved = false;
    for node in nodes.iter_mut() {
        moved |= node.poll();
        assert_eq!(node.failure(), None, "at {} simulated ms", now_us() / 1000);
    }
    advance(if moved { 1000 } else { 20_000 });
}

/// Per-rank reader state: the message being read.
struct Reader {
    current: Option<(Header, Vec<u8>)>,
    next_seq: Vec<u32>,
}

/// Reads whatever is there for `rank`; checks order and contents. Returns messages completed.
fn read_some<D: Nic>(node: &mut Node<D>, rank: u32, reader: &mut Reader) -> usize {
    let mut done = 0;
    loop {
        if reader.current.is_none() {
            let Some(header) = node.peek(rank) else { return done };
            reader.current = Some((header, vec![0u8; header.len]));
        }
        let (header, buffer) = reader.current.as_mut().unwrap();
        if !node.read(rank, buffer).unwrap() {
            return done;
        }
        let seq = reader.next_seq[header.source as usize];
        assert_eq!(header.tag as u32, seq, "rank {} got message {} of rank {} out of order", rank, header.tag, header.source);
        assert!(*buffer == pattern(header.source, rank, seq, header.len), "rank {}: message {} of rank {} corrupted", rank, seq, header.source);
        reader.next_seq[header.source as usize] += 1;
        reader.current = None;
        done += 1;
    }
}

#[test]
fn lossy_link_delivers_everything_intact_and_in_order() {
    // With ~10 % of frames lost each way, smoltcp's go-back-N retransmission backs its
    // RTO off towards 60 s (Karn's rule discards samples of retransmitted data), far
    // beyond the default peer timeout (1.5 s, meant for a loss-free VDE segment).
    let (segment, mut nodes) = build(2, 2, 5, 50, |c| c.peer_timeout_ms = 3_600_000);
    let world = 4u32;
    // Every rank sends 12 messages of mixed sizes (0 B to 150 KB) to each rank of the other VM.
    let sizes = [0usize, 8, 1024, 1500, 70_000, 150_000, 5, 65_536, 4096, 1, 100_000, 333];
    let mut expected = 0;
    let mut keep = Vec::new();
    for source in 0..world {
        for dest in 0..world {
            if source / 2 == dest / 2 {
                continue;
            }
            for (seq, &len) in sizes.iter().enumerate() {
                let data = pattern(source, dest, seq as u32, len);
                let ticket = nodes[(source / 2) as usize].send(&header(source, dest, seq as u32, len), &data, false).unwrap();
                assert_eq!(ticket, 0);
                keep.push(data);
                expected += 1;
            }
        }
    }
    let mut readers: Vec<Reader> = (0..world).map(|_| Reader { current: None, next_seq: vec![0; world as usize] }).collect();
    let mut received = 0;
    let mut rounds = 0;
    while received < expected {
        round(&mut nodes);
        for rank in 0..world {
            received += read_some(&mut nodes[(rank / 2) as usize], rank, &mut readers[rank as usize]);
        }
        rounds += 1;
        assert!(rounds < 400_000, "only {} of {} messages after {} rounds\n{}{}", received, expected, rounds, nodes[0].describe(), nodes[1].describe());
    }
    let (delivered, reordered) = segment.counts();
    assert!(reordered > 0, "the segment reordered nothing");
    println!("{} messages in {} rounds, {} simulated ms; {} Ethernet frames, {} reordered; stats {:?}", expected, rounds, now_us() / 1000, delivered, reordered, nodes[0].stats());
}

#[test]
fn three_vms_all_pairs() {
    let (_segment, mut nodes) = build(3, 2, 5, 50, |c| c.peer_timeout_ms = 3_600_000);
    let world = 6u32;
    let mut expected = 0;
    for source in 0..world {
        for dest in 0..world {
            if source / 2 != dest / 2 {
                for seq in 0..3u32 {
                    let len = 10_000 * seq as usize + 7;
                    nodes[(source / 2) as usize].send(&header(source, dest, seq, len), &pattern(source, dest, seq, len), false).unwrap();
                    expected += 1;
                }
            }
        }
    }
    let mut readers: Vec<Reader> = (0..world).map(|_| Reader { current: None, next_seq: vec![0; world as usize] }).collect();
    let mut received = 0;
    for _ in 0..100_000 {
        if received == expected {
            break;
        }
        round(&mut nodes);
        for rank in 0..world {
            received += read_some(&mut nodes[(rank / 2) as usize], rank, &mut readers[rank as usize]);
        }
    }
    assert_eq!(received, expected);
}

#[test]
fn flow_control_bounds_what_a_slow_receiver_holds() {
    let window = 128 << 10;
    let (_segment, mut nodes) = build(2, 2, 0, 0, |c| c.window = window);
    // Rank 0 streams 8 MiB to rank 2, which does not read; rank 1 → rank 3 must still flow.
    let big = pattern(0, 2, 0, 8 << 20);
    let ticket = nodes[0].send(&header(0, 2, 0, big.len()), &big, false).unwrap();
    assert_eq!(ticket, 0);
    let mut readers: Vec<Reader> = (0..4).map(|_| Reader { current: None, next_seq: vec![0; 4] }).collect();
    for seq in 0..20u32 {
        let small = pattern(1, 3, seq, 1000);
        nodes[0].send(&header(1, 3, seq, 1000), &small, false).unwrap();
    }
    let mut got = 0;
    for _ in 0..2000 {
        round(&mut nodes);
        got += read_some(&mut nodes[1], 3, &mut readers[3]);
        assert!(nodes[1].buffered() <= window, "receiver holds {} bytes", nodes[1].buffered());
    }
    assert_eq!(got, 20, "rank 3 starved behind rank 2's unread stream");
    assert!(nodes[1].buffered() > window / 2);
    // Now rank 2 reads: the whole 8 MiB arrives.
    let mut rounds = 0;
    while read_some(&mut nodes[1], 2, &mut readers[2]) == 0 {
        round(&mut nodes);
        assert!(nodes[1].buffered() <= window);
        rounds += 1;
        assert!(rounds < 100_000);
    }
}

#[test]
fn borrowed_send_completes_after_streaming() {
    let (_segment, mut nodes) = build(2, 1, 0, 0, |_| {});
    let data = pattern(0, 1, 0, 3 << 20);
    let ticket = nodes[0].send(&header(0, 1, 0, data.len()), &data, true).unwrap();
    assert_ne!(ticket, 0);
    let mut reader = Reader { current: None, next_seq: vec![0; 2] };
    let mut rounds = 0;
    while read_some(&mut nodes[1], 1, &mut reader) == 0 {
        round(&mut nodes);
        rounds += 1;
        assert!(rounds < 100_000);
    }
    assert!(nodes[0].send_done(ticket));
}

#[test]
fn peer_killed_mid_transfer_is_reported_naming_it() {
    let (segment, mut nodes) = build(2, 2, 0, 0, |c| c.peer_timeout_ms = 1500);
    let data = pattern(0, 2, 0, 16 << 20);
    nodes[0].send(&header(0, 2, 0, data.len()), &data, false).unwrap();
    let mut reader = Reader { current: None, next_seq: vec![0; 4] };
    // Let the transfer start, then VM 1 dies.
    let mut rounds = 0;
    while reader.current.is_none() {
        round(&mut nodes);
        read_some(&mut nodes[1], 2, &mut reader);
        rounds += 1;
        assert!(rounds < 10_000);
    }
    segment.cut(1);
    let cut_at = now_us();
    while nodes[0].failure().is_none() {
        nodes[0].poll();
        advance(1000);
        assert!(now_us() - cut_at < 2_000_000, "no failure reported 2 s after the peer died");
    }
    let message = nodes[0].failure().unwrap().to_string();
    assert!(message.contains("VM 1 (ranks 2-3)") && message.contains("169.254.1.2"), "{}", message);
    // A new send to it is refused with the same reason.
    let error = nodes[0].send(&header(1, 3, 0, 1), &[1], false).unwrap_err();
    assert!(error.contains("VM 1"), "{}", error);
}

/// The VM bandwidth phase's pattern (osu_bw: 16 large sends in flight, then a short
/// reply) through a bottleneck: each NIC takes at most 16 frames per ms and its switch
/// port holds 64, like the network's and QEMU's queues when the receiving VM falls
/// behind. A full window (the 512 KiB credit, ~360 frames) sent in one burst overflows it.
/// Without congestion control every loss was answered by resending the whole window
/// (go-back-N) into the same overflow, after a retransmission timeout of at least 1 s:
/// 8 of the first 16 messages after 60 simulated s (~450 frames dropped), the VM
/// bandwidth phase's "hang". With Reno the sender backs off: 8 MiB in ~1.5 simulated s.
#[test]
fn many_large_sends_in_flight_through_a_shallow_switch() {
    let (segment, mut nodes) = build(2, 1, 0, 0, |c| c.peer_timeout_ms = 3_600_000);
    segment.set_queue_limit(64);
    segment.set_rate(16, now_us);
    let len = 64 << 10;
    let mut reader = Reader { current: None, next_seq: vec![0; 2] };
    let started_us = now_us();
    let mut seq = 0;
    let mut reply_seq = 0;
    let mut back = Reader { current: None, next_seq: vec![0; 2] };
    for _round in 0..8 {
        let payloads: Vec<Vec<u8>> = (0..16).map(|k| pattern(0, 1, seq + k, len)).collect();
        let tickets: Vec<u64> = payloads.iter().enumerate().map(|(k, data)| nodes[0].send(&header(0, 1, seq + k as u32, len), data, true).unwrap()).collect();
        seq += 16;
        let mut got = 0;
        while got < 16 {
            round(&mut nodes);
            got += read_some(&mut nodes[1], 1, &mut reader);
            assert!(now_us() - started_us < 60_000_000, "{} of 16 messages after {} simulated ms, {} frames dropped\n{}", got, (now_us() - started_us) / 1000, segment.dropped(), nodes[0].describe());
        }
        assert!(tickets.iter().all(|&t| nodes[0].send_done(t)));
        // The reply (4 bytes), which must come back through the same congested path.
        nodes[1].send(&header(1, 0, reply_seq, 4), &pattern(1, 0, reply_seq, 4), false).unwrap();
        reply_seq += 1;
        while read_some(&mut nodes[0], 0, &mut back) == 0 {
            round(&mut nodes);
        }
    }
    let elapsed_ms = (now_us() - started_us) / 1000;
    println!("8 MiB in {} simulated ms, {} frames dropped", elapsed_ms, segment.dropped());
    assert!(segment.dropped() > 0, "the switch never overflowed: the test does not test anything");
    // One round of `round()` is 1 simulated ms; a retransmission timeout is 1000.
    assert!(elapsed_ms < 8_000, "8 MiB took {} simulated ms ({} frames dropped)", elapsed_ms, segment.dropped());
}

/// The osu_bw pattern (4 messages of 1 MiB in flight, then a 4-byte reply; 4 rounds)
/// with the VMs' large frames (IP MTU 65535: TCP segments of 65495 bytes) through a
/// bottleneck of 2 frames per ms per NIC (about 130 MB/s) whose ports hold `queue_limit`
/// frames (0: unbounded). Returns (simulated ms, frames delivered, frames dropped).
fn large_frames_through_a_bottleneck(queue_limit: usize) -> (u64, u64, u64) {
    let segment = Segment::new(0, 0x1234_5678);
    segment.set_mtu(65_535);
    segment.set_queue_limit(queue_limit);
    segment.set_rate(2, now_us);
    let mut nodes: Vec<Node<SimPort>> = (0..2u32)
        .map(|vm| {
            let mac = [2, 0x74, 0x6f, 0, 0, vm as u8];
            let mut config = NetConfig::new(vm, vec![0, 1], mac, [169, 254, 1, 1]);
            config.seed = 1000 + u64::from(vm);
            config.peer_timeout_ms = 3_600_000;
            Node::new(config, segment.attach(mac), now_us)
        })
        .collect();
    let len = 1 << 20;
    let mut reader = Reader { current: None, next_seq: vec![0; 2] };
    let mut back = Reader { current: None, next_seq: vec![0; 2] };
    let started_us = now_us();
    for round_no in 0..4u32 {
        for k in 0..4 {
            let seq = round_no * 4 + k;
            nodes[0].send(&header(0, 1, seq, len), &pattern(0, 1, seq, len), false).unwrap();
        }
        let mut got = 0;
        while got < 4 {
            round(&mut nodes);
            got += read_some(&mut nodes[1], 1, &mut reader);
            assert!(now_us() - started_us < 120_000_000, "{} of 4 messages after {} simulated ms, {} frames dropped\n{}", got, (now_us() - started_us) / 1000, segment.dropped(), nodes[0].describe());
        }
        nodes[1].send(&header(1, 0, round_no, 4), &pattern(1, 0, round_no, 4), false).unwrap();
        while read_some(&mut nodes[0], 0, &mut back) == 0 {
            round(&mut nodes);
        }
    }
    let elapsed_ms = (now_us() - started_us) / 1000;
    let (delivered, _) = segment.counts();
    println!("queue limit {}: 16 MiB in {} simulated ms, {} frames delivered, {} dropped", queue_limit, elapsed_ms, delivered, segment.dropped());
    (elapsed_ms, delivered, segment.dropped())
}

/// The VMs' path is lossless (QEMU stops reading the hub's socket when the guest has
/// no receive buffer, and the hub queues more than the TCP windows hold): every
/// message arrives intact and in order, in few frames (both ends announce the large
/// MSS and use it), at the bottleneck's pace — no retransmission timeout.
#[test]
fn large_frames_through_a_lossless_bottleneck() {
    let (elapsed_ms, delivered, dropped) = large_frames_through_a_bottleneck(0);
    assert_eq!(dropped, 0);
    // 16 MiB in 64 KiB segments is 257 data frames, plus ACKs and credit frames (with
    // 1500-byte frames it would be over 11,000).
    assert!(delivered < 1000, "{} frames for 16 MiB: the large MSS was not used", delivered);
    // 257 frames at 2 per ms: ~130 ms; a retransmission timeout alone is 1000.
    assert!(elapsed_ms < 1000, "16 MiB took {} simulated ms", elapsed_ms);
}

/// If frames were lost (a port holding 4 large frames, less than a window), everything
/// still arrives intact and in order. Slowly: a window holds only ~16 large segments,
/// so losses are often repaired by a retransmission timeout (smoltcp's minimum: 1 s)
/// rather than fast retransmit — why the VMs' path must stay lossless.
#[test]
fn large_frames_through_a_lossy_bottleneck_still_arrive() {
    let (_, _, dropped) = large_frames_through_a_bottleneck(4);
    assert!(dropped > 0, "the switch never overflowed: the test does not test anything");
}

/// Rank 0 (VM 0) sends 16 MiB to `rank`, the first rank of VM 1; returns once VM 1
/// has begun to receive it.
fn start_16_mib_to(nodes: &mut [Node<Dev>], rank: u32) -> Reader {
    let data = pattern(0, rank, 0, 16 << 20);
    nodes[0].send(&header(0, rank, 0, data.len()), &data, false).unwrap();
    let mut reader = Reader { current: None, next_seq: vec![0; 2 * rank as usize] };
    let mut rounds = 0;
    while reader.current.is_none() {
        round(nodes);
        read_some(&mut nodes[1], rank, &mut reader);
        rounds += 1;
        assert!(rounds < 10_000);
    }
    reader
}

/// A VM whose ranks compute instead of calling into the transport polls no NIC and
/// acknowledges nothing. Its peer, with 16 MiB in flight to it, must not take 5 s of
/// that silence for death (the default `peer_timeout_ms` is long: dead VMs are found
/// through their FIN or the launcher); once it polls again, everything arrives.
#[test]
fn peer_silent_while_computing_is_not_taken_for_dead() {
    let (_segment, mut nodes) = build(2, 1, 0, 0, |_| {});
    let mut reader = start_16_mib_to(&mut nodes, 1);
    // VM 1 computes for 5 simulated seconds: only VM 0 polls.
    let until = now_us() + 5_000_000;
    while now_us() < until {
        nodes[0].poll();
        assert_eq!(nodes[0].failure(), None, "VM 0 took the silent VM 1 for dead");
        advance(1000);
    }
    let mut rounds = 0;
    while read_some(&mut nodes[1], 1, &mut reader) == 0 {
        round(&mut nodes);
        rounds += 1;
        assert!(rounds < 200_000, "the transfer did not resume");
    }
}

/// A VM that ends closes its connections: a peer still sending to it is told at once
/// (not after `peer_timeout_ms`), naming the VM.
#[test]
fn peer_vm_ending_mid_transfer_is_reported_at_once() {
    let (segment, mut nodes) = build(2, 2, 0, 0, |_| {});
    start_16_mib_to(&mut nodes, 2);
    nodes[1].close();
    for _ in 0..3 {
        nodes[1].poll();
    }
    segment.cut(1);
    let ended_at = now_us();
    while nodes[0].failure().is_none() {
        nodes[0].poll();
        advance(1000);
        assert!(now_us() - ended_at < 100_000, "no failure 100 ms after the peer VM ended");
    }
    let message = nodes[0].failure().unwrap().to_string();
    assert!(message.contains("lost VM 1 (ranks 2-3)") && message.contains("ended"), "{}", message);
}

/// A VM that ends once its messages are all exchanged is no error for its peers; only
/// a later send to it is refused, naming it.
#[test]
fn peer_vm_ending_after_the_exchange_is_no_error() {
    let (segment, mut nodes) = build(2, 1, 0, 0, |_| {});
    let data = pattern(0, 1, 0, 300_000);
    nodes[0].send(&header(0, 1, 0, data.len()), &data, false).unwrap();
    let mut reader = Reader { current: None, next_seq: vec![0; 2] };
    let (mut rounds, mut received) = (0, 0);
    loop {
        received += read_some(&mut nodes[1], 1, &mut reader);
        if received == 1 && nodes[1].quiet() && nodes[0].flushed() {
            break;
        }
        round(&mut nodes);
        rounds += 1;
        assert!(rounds < 10_000);
    }
    nodes[1].close();
    for _ in 0..3 {
        nodes[1].poll();
    }
    segment.cut(1);
    for _ in 0..3000 {
        nodes[0].poll();
        assert_eq!(nodes[0].failure(), None);
        advance(1000);
    }
    let error = nodes[0].send(&header(0, 1, 1, 1), &[1], false).unwrap_err();
    assert!(error.contains("lost VM 1") && error.contains("ended"), "{}", error);
}
