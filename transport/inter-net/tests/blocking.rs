//! Ranks that block on the network (`Shared::prepare_wait` / `finish_wait`): two
//! "VMs" of two ranks each on an in-memory segment, driven from one thread on a
//! simulated clock. A rank that announced it blocks is handed to the waker by
//! whichever poll finds something for it (a message, its large send completing);
//! something that happened for it before the announcement makes it look again
//! instead; the deadline covers the network's own timers.

use std::cell::RefCell;
use std::sync::Arc;

use inter_net::sim::{Segment, SimPort};
use inter_net::{NetConfig, Node, Shared};
use mpi::transport::{Header, MessageKind};

mod common;
use common::{advance, now_us};

thread_local! {
    static WOKEN: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

fn fatal(message: &str) -> ! {
    panic!("{}", message)
}

fn waker(rank: u32) {
    WOKEN.with(|woken| woken.borrow_mut().push(rank));
}

fn woken() -> Vec<u32> {
    WOKEN.with(|woken| std::mem::take(&mut *woken.borrow_mut()))
}

/// VM 0 holds ranks 0 and 1 (shared, with the waker), VM 1 ranks 2 and 3; connected.
fn connected() -> (Segment, Arc<Shared<SimPort>>, Node<SimPort>) {
    let segment = Segment::new(0, 7);
    let vm_of_rank = vec![0, 0, 1, 1];
    let node = |vm: u32| {
        let mac = [2, 0x74, 0x6f, 0, 0, vm as u8];
        let mut config = NetConfig::new(vm, vm_of_rank.clone(), mac, [169, 254, 1, 1]);
        config.seed = 100 + u64::from(vm);
        Node::new(config, segment.attach(mac), now_us)
    };
    let shared = Shared::new(node(0), fatal);
    shared.set_waker(waker);
    let mut other = node(1);
    for _ in 0..2000 {
        shared.poll();
        other.poll();
        advance(1000);
        if shared.node.lock().all_up() && other.all_up() {
            // Let the hellos cross too.
            for _ in 0..20 {
                shared.poll();
                other.poll();
                advance(1000);
            }
            assert!(woken().is_empty());
            return (segment, shared, other);
        }
    }
    panic!("the two nodes did not connect");
}

fn header(source: u32, dest: u32, len: usize) -> Header {
    Header { source, dest, tag: 9, context: 1, len, kind: MessageKind::Data, cookie: 0 }
}

/// Polls both sides until `done` or 2000 simulated ms.
fn until(shared: &Shared<SimPort>, other: &mut Node<SimPort>, mut done: impl FnMut(&Shared<SimPort>) -> bool) {
    for _ in 0..2000 {
        if done(shared) {
            return;
        }
        other.poll();
        shared.poll();
        advance(1000);
    }
    panic!("not done after 2 simulated seconds");
}

#[test]
fn a_blocked_rank_is_woken_by_the_poll_that_brings_its_message() {
    let (_segment, shared, mut other) = connected();
    let deadline = shared.prepare_wait(1).expect("nothing pending: rank 1 may block");
    assert!(deadline > now_us());
    other.send(&header(2, 1, 8), &[5; 8], false).unwrap();
    // Rank 0 (or the interrupt-woken rank) polls; rank 1 must be handed to the waker.
    until(&shared, &mut other, |_| WOKEN.with(|w| !w.borrow().is_empty()));
    assert_eq!(woken(), [1], "only the rank the message is for");
    shared.finish_wait(1);
    assert_eq!(shared.node.lock().peek(1).map(|h| h.len), Some(8));
    // Rank 0 never blocked: nothing for it.
    assert!(woken().is_empty());
}

#[test]
fn a_message_that_came_before_the_announcement_stops_the_block() {
    let (_segment, shared, mut other) = connected();
    other.send(&header(3, 1, 100), &[6; 100], false).unwrap();
    // Another rank's polls take the message in while rank 1 is not blocked.
    until(&shared, &mut other, |shared| shared.node.lock().peek(1).is_some());
    assert!(woken().is_empty());
    assert_eq!(shared.prepare_wait(1), None, "rank 1 must look again, not block");
    shared.finish_wait(1);
    // Looked: the next announcement blocks.
    assert!(shared.prepare_wait(1).is_some());
    shared.finish_wait(1);
    assert!(woken().is_empty());
}

#[test]
fn a_blocked_sender_is_woken_when_its_large_send_completes() {
    let (_segment, shared, mut other) = connected();
    // Larger than the eager limit: borrowed, completed only once written out.
    let payload = vec![7u8; 200_000];
    let ticket = shared.node.lock().send(&header(0, 2, payload.len()), &payload, true).unwrap();
    assert_ne!(ticket, 0);
    assert!(!shared.node.lock().send_done(ticket));
    assert!(shared.prepare_wait(0).is_some());
    // Within the credit window (512 KiB): it all flows while VM 1 only polls.
    until(&shared, &mut other, |_| WOKEN.with(|w| !w.borrow().is_empty()));
    assert_eq!(woken(), [0]);
    shared.finish_wait(0);
    assert!(shared.node.lock().send_done(ticket));
    for _ in 0..2000 {
        if other.peek(2).is_some() {
            break;
        }
        other.poll();
        shared.poll();
        advance(1000);
    }
    assert_eq!(other.peek(2).map(|h| h.len), Some(payload.len()));
}

#[test]
fn the_deadline_covers_the_network_timers_and_finish_wait_disarms() {
    let (_segment, shared, mut other) = connected();
    // Up connections keep their keep-alive (250 ms) running: never "no deadline".
    let deadline = shared.prepare_wait(1).expect("may block");
    assert!(deadline <= now_us() + 300_000, "deadline {} µs ahead", deadline - now_us());
    shared.finish_wait(1);
    // Data in flight to VM 1, unacknowledged: the retransmission timer is at most
    // the minimum RTO (1 s) away.
    shared.node.lock().send(&header(1, 3, 8), &[1; 8], false).unwrap();
    shared.poll();
    let deadline = shared.prepare_wait(1).expect("may block");
    assert!(deadline <= now_us() + 1_000_000);
    shared.finish_wait(1);
    until(&shared, &mut other, |_| true);
    assert!(woken().is_empty());
}
