//! The job's Ethernet segment on the datagram path (`--net-backend dgram`; the default
//! is `vhost_user`): an L2 hub on a thread of the launcher, or, for a job of two VMs,
//! one socket pair between their QEMUs ([`direct_link`]; `--net-hub` keeps the hub).
//!
//! Each VM's NIC is QEMU's `-netdev dgram` on one end of a Unix datagram socket pair
//! (the child inherits it as fd [`QEMU_NET_FD`]); the hub holds the other ends. A
//! datagram is one whole Ethernet frame, so frames keep their boundaries and may be as
//! large as QEMU's network layer passes (`NET_BUFSIZE`, [`MAX_FRAME`]): the guests use
//! ~64 KiB frames, 45 times fewer than 1500-byte Ethernet, and the cost of the host
//! path is per frame. No file, no IP socket, no external program, no root.
//!
//! Forwarding: the plan gives every VM's MAC, so nothing is learned. A frame goes to the
//! port whose MAC is its destination, broadcast and multicast to every other port. A
//! frame whose source MAC is not its port's planned MAC is dropped and counted (the
//! launcher warns at the end); so are frames to an unknown MAC.
//!
//! Never blocking: every socket is non-blocking. A destination whose socket is full
//! (its QEMU is not reading: the guest has no receive buffer posted) gets its frames
//! queued here, up to more than its peers' TCP windows can put in flight (see
//! [`queue_limit`]), so in practice nothing is lost: QEMU stops reading the hub's socket
//! when its guest has no buffer, the hub holds what the senders' windows allow. Beyond
//! the limit frames are dropped like a switch does (TCP resends, slowly: see
//! transport/inter-net's README); the other ports go on. A dead VM (its QEMU exited, its end closed) makes sends fail
//! with `ECONNREFUSED`: its port is closed and its frames dropped. The thread ends when
//! the launcher drops its end of the stop socket (`Hub::stop`, or `Drop`).
//!
//! Socket buffers: every end asks for [`SOCKET_BUFFER`] of send buffer (a Unix datagram
//! socket pair queues what one end sent charged to that end's send buffer, 208 KiB by
//! default: three 64 KiB frames). With the default a sending QEMU found its socket full
//! after three frames and waited for the hub (or the other QEMU) to be scheduled.
//!
//! Two VMs need no switch: [`direct_link`] gives their QEMUs the two ends of one socket
//! pair, which saves the hub's two copies of every frame, two system calls and a thread
//! to wake per frame (measured: 1 MiB bandwidth ×1.5–1.6 with the larger buffers,
//! BENCHMARKS.md, inter-net). Nothing checks source MACs then (QEMU sends its NIC's
//! frames as the guest wrote them; the guests check the job id in their hello), and a
//! dead QEMU makes the other's sends fail just the same.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::thread::JoinHandle;

/// The descriptor number of its end of the socket pair in each QEMU process.
pub const QEMU_NET_FD: RawFd = 3;
/// QEMU's `NET_BUFSIZE` (include/net/net.h, 4096 + 65536): its network layer drops
/// larger packets, and its datagram netdev receives into a buffer of this size.
pub const MAX_FRAME: usize = 69_632;
/// Bytes queued for one port whose socket is full before frames to it are dropped, in
/// a job of `vms` VMs: what reaches a VM is bounded by its peers' TCP windows (its
/// receive buffers, 1 MiB each by default), so 2 MiB per peer, and at least 8 MiB.
pub fn queue_limit(vms: usize) -> usize {
    (2 << 20) * vms.saturating_sub(1).max(4)
}
/// Send buffer asked for on every socket end: room for more than a TCP window of
/// 64 KiB frames. Run as root the launcher gets it whatever `net.core.wmem_max` says;
/// otherwise the kernel caps it there (208 KiB on a stock Debian host, which only
/// costs bandwidth).
pub const SOCKET_BUFFER: usize = 4 << 20;

/// A Unix datagram socket pair whose ends have `SOCKET_BUFFER` of send buffer.
pub fn pair() -> std::io::Result<(UnixDatagram, UnixDatagram)> {
    let (a, b) = UnixDatagram::pair()?;
    set_send_buffer(&a, SOCKET_BUFFER)?;
    set_send_buffer(&b, SOCKET_BUFFER)?;
    Ok((a, b))
}

/// Whether a job of `vms` VMs gets the direct link rather than the hub (`--net-hub`
/// asks for the hub even with two).
pub fn is_direct(vms: usize, net_hub: bool) -> bool {
    vms == 2 && !net_hub
}

/// The network of a two-VM job without the hub: one socket pair, an end for each
/// VM's QEMU (the same contract as the ends `Hub::start` returns).
pub fn direct_link() -> Result<Vec<UnixDatagram>, String> {
    let (a, b) = pair().map_err(|e| format!("network: cannot create a socket pair: {e}"))?;
    Ok(vec![a, b])
}

/// Asks for a send buffer of `bytes`: beyond `net.core.wmem_max` where the launcher
/// may (root, CAP_NET_ADMIN: SO_SNDBUFFORCE), else capped by it (SO_SNDBUF).
fn set_send_buffer(socket: &UnixDatagram, bytes: usize) -> std::io::Result<()> {
    set_socket_option(socket, libc::SO_SNDBUFFORCE, bytes).or_else(|_| set_socket_option(socket, libc::SO_SNDBUF, bytes))
}

#[allow(unsafe_code)]
fn set_socket_option(socket: &UnixDatagram, option: libc::c_int, bytes: usize) -> std::io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `value`, a live local;
    // the descriptor is the socket's own.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Frames taken from one port in a row before the others get their turn.
const BATCH: usize = 32;

/// What the hub did, for the launcher's warnings and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Frames delivered to a port's socket (a broadcast counts once per port).
    pub forwarded: u64,
    /// The largest frame delivered, bytes.
    pub largest: usize,
    /// Dropped: the destination's queue was full, or its VM was gone.
    pub dropped_full: u64,
    /// Dropped: the source MAC was not the sending VM's planned MAC (or the frame was
    /// shorter than an Ethernet header).
    pub unknown_source: u64,
    /// The first such frame: (VM index, source MAC).
    pub first_unknown: Option<(usize, [u8; 6])>,
    /// Dropped: a unicast to a MAC no VM has.
    pub unknown_destination: u64,
}

/// The running hub. Dropping it stops the thread too.
pub struct Hub {
    stop: Option<UnixStream>,
    thread: Option<JoinHandle<HubStats>>,
}

impl Hub {
    /// Starts the hub for VMs with these MACs (VM k has `macs[k]`); returns it and, per
    /// VM, the socket end its QEMU gets (close it in the launcher once QEMU runs, so a
    /// dead QEMU's end is really gone).
    pub fn start(macs: &[[u8; 6]]) -> Result<(Hub, Vec<UnixDatagram>), String> {
        let err = |e: std::io::Error| format!("network hub: cannot create a socket pair: {e}");
        let mut vm_ends = Vec::new();
        let mut ports = Vec::new();
        for &mac in macs {
            let (hub_end, vm_end) = pair().map_err(err)?;
            hub_end.set_nonblocking(true).map_err(err)?;
            ports.push(Port { socket: Some(hub_end), mac, queue: VecDeque::new(), queued: 0 });
            vm_ends.push(vm_end);
        }
        let (stop, stop_seen) = UnixStream::pair().map_err(err)?;
        stop_seen.set_nonblocking(true).map_err(err)?;
        let thread = std::thread::Builder::new()
            .name("toro-hub".into())
            .spawn(move || Segment { limit: queue_limit(ports.len()), ports, stats: HubStats::default() }.run(stop_seen))
            .map_err(|e| format!("network hub: cannot start its thread: {e}"))?;
        Ok((Hub { stop: Some(stop), thread: Some(thread) }, vm_ends))
    }

    /// Stops the thread and returns what it did. Bounded: the thread never blocks
    /// anywhere but in `poll`, which the closed stop socket ends.
    pub fn stop(mut self) -> HubStats {
        self.finish()
    }

    fn finish(&mut self) -> HubStats {
        drop(self.stop.take());
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.finish();
    }
}

struct Port {
    /// None once its VM is gone.
    socket: Option<UnixDatagram>,
    mac: [u8; 6],
    /// Frames waiting for room in the socket, oldest first, and their bytes.
    queue: VecDeque<Vec<u8>>,
    queued: usize,
}

/// Outcome of one non-blocking send.
enum Sent {
    Done,
    Full,
    Gone,
}

fn send(socket: &UnixDatagram, frame: &[u8]) -> Sent {
    loop {
        match socket.send(frame) {
            Ok(_) => return Sent::Done,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Sent::Full,
            // ECONNREFUSED / ENOTCONN / EPIPE: the QEMU holding the other end is gone.
            // Anything else is not something a retry fixes either.
            Err(_) => return Sent::Gone,
        }
    }
}

struct Segment {
    ports: Vec<Port>,
    /// Bytes queued per port at most.
    limit: usize,
    stats: HubStats,
}

impl Segment {
    fn run(mut self, stop: UnixStream) -> HubStats {
        let mut frame = vec![0u8; MAX_FRAME + 1];
        let mut fds: Vec<libc::pollfd> = Vec::new();
        loop {
            fds.clear();
            fds.push(libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            for port in &self.ports {
                let (fd, events) = match &port.socket {
                    Some(s) => (s.as_raw_fd(), libc::POLLIN | if port.queue.is_empty() { 0 } else { libc::POLLOUT }),
                    // A negative descriptor is ignored by poll.
                    None => (-1, 0),
                };
                fds.push(libc::pollfd { fd, events, revents: 0 });
            }
            if poll(&mut fds).is_err() {
                break;
            }
            if fds[0].revents != 0 {
                // Closed (the launcher is done) or, unexpectedly, a byte: stop either way.
                let mut byte = [0u8; 1];
                if !matches!((&stop).read(&mut byte), Err(ref e) if e.kind() == ErrorKind::WouldBlock) {
                    break;
                }
            }
            for k in 0..self.ports.len() {
                let revents = fds[k + 1].revents;
                if revents & libc::POLLOUT != 0 {
                    self.flush(k);
                }
                if revents & libc::POLLIN != 0 {
                    self.take_from(k, &mut frame);
                }
                // An error (a send found the QEMU gone), or a hang-up: the port is dead,
                // and would wake every poll if kept.
                if revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                    self.close(k);
                }
            }
        }
        self.stats
    }

    /// Takes up to `BATCH` frames from port `from` and forwards them.
    fn take_from(&mut self, from: usize, buffer: &mut [u8]) {
        for _ in 0..BATCH {
            let Some(socket) = &self.ports[from].socket else { return };
            let len = match socket.recv(buffer) {
                Ok(len) => len,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            // Longer than QEMU ever sends: not a frame of ours.
            if len > MAX_FRAME {
                self.stats.unknown_source += 1;
                continue;
            }
            self.forward(from, &buffer[..len]);
        }
    }

    /// Routes one frame that came in on port `from`.
    fn forward(&mut self, from: usize, frame: &[u8]) {
        if frame.len() < 14 || frame[6..12] != self.ports[from].mac {
            self.stats.unknown_source += 1;
            if self.stats.first_unknown.is_none() {
                let mut mac = [0u8; 6];
                if let Some(source) = frame.get(6..12) {
                    mac.copy_from_slice(source);
                }
                self.stats.first_unknown = Some((from, mac));
            }
            return;
        }
        let destination = &frame[0..6];
        if destination[0] & 1 == 1 {
            for to in (0..self.ports.len()).filter(|&to| to != from) {
                self.deliver(to, frame);
            }
        } else {
            match self.ports.iter().position(|p| p.mac == destination) {
                Some(to) if to != from => self.deliver(to, frame),
                _ => self.stats.unknown_destination += 1,
            }
        }
    }

    /// Sends at once if nothing is queued for the port and it has room, else queues.
    fn deliver(&mut self, to: usize, frame: &[u8]) {
        let port = &mut self.ports[to];
        let Some(socket) = &port.socket else {
            self.stats.dropped_full += 1;
            return;
        };
        if port.queue.is_empty() {
            match send(socket, frame) {
                Sent::Done => {
                    self.stats.forwarded += 1;
                    self.stats.largest = self.stats.largest.max(frame.len());
                    return;
                }
                Sent::Gone => {
                    self.stats.dropped_full += 1;
                    self.close(to);
                    return;
                }
                Sent::Full => {}
            }
        }
        if port.queued + frame.len() > self.limit {
            self.stats.dropped_full += 1;
            return;
        }
        port.queued += frame.len();
        port.queue.push_back(frame.to_vec());
    }

    /// Sends what is queued for port `to` until its socket is full again.
    fn flush(&mut self, to: usize) {
        let port = &mut self.ports[to];
        while let (Some(socket), Some(frame)) = (&port.socket, port.queue.front()) {
            match send(socket, frame) {
                Sent::Done => {
                    self.stats.forwarded += 1;
                    self.stats.largest = self.stats.largest.max(frame.len());
                    port.queued -= frame.len();
                    port.queue.pop_front();
                }
                Sent::Full => return,
                Sent::Gone => {
                    self.close(to);
                    return;
                }
            }
        }
    }

    /// Port `k`'s VM is gone: its socket closes and whatever was queued for it is dropped.
    fn close(&mut self, k: usize) {
        let port = &mut self.ports[k];
        self.stats.dropped_full += port.queue.len() as u64;
        port.queue.clear();
        port.queued = 0;
        port.socket = None;
    }
}

/// Waits until a descriptor is ready (at most 1 s, so a stuck wake-up costs no more).
#[allow(unsafe_code)]
fn poll(fds: &mut [libc::pollfd]) -> std::io::Result<()> {
    // SAFETY: `fds` is a live, exclusively borrowed array of `pollfd` of the length
    // passed; poll(2) only writes the `revents` fields within it.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == ErrorKind::Interrupted {
            fds.iter_mut().for_each(|f| f.revents = 0);
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn mac(k: u8) -> [u8; 6] {
        [2, 0x74, 0x6f, 0, 0, k]
    }

    fn frame(to: [u8; 6], from: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
        f[0..6].copy_from_slice(&to);
        f[6..12].copy_from_slice(&from);
        f
    }

    /// Runs a test body on a thread and fails it if it takes longer than 20 s (a hub
    /// that blocks would otherwise hang the test).
    fn within_20s(body: impl FnOnce() + Send + 'static) {
        let (done, finished) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            body();
            let _ = done.send(());
        });
        match finished.recv_timeout(Duration::from_secs(20)) {
            Ok(()) => thread.join().unwrap(),
            // The body panicked: its thread's panic is the failure.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => std::panic::resume_unwind(thread.join().unwrap_err()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("hub test still running after 20 s"),
        }
    }

    /// Starts a hub; the VMs' ends block at most 2 s on a send.
    fn hub(vms: u8) -> (Hub, Vec<UnixDatagram>) {
        let macs: Vec<[u8; 6]> = (0..vms).map(mac).collect();
        let (hub, ends) = Hub::start(&macs).unwrap();
        for end in &ends {
            end.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        (hub, ends)
    }

    /// The next frame on a VM's end, waiting at most 2 s (None: nothing came).
    fn next(end: &UnixDatagram) -> Option<Vec<u8>> {
        end.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buffer = vec![0u8; MAX_FRAME + 1];
        end.recv(&mut buffer).ok().map(|n| buffer[..n].to_vec())
    }

    fn nothing_on(end: &UnixDatagram) {
        end.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut buffer = [0u8; 64];
        assert!(end.recv(&mut buffer).is_err(), "an unexpected frame arrived");
    }

    #[test]
    fn forwards_by_destination_mac_and_broadcasts_to_the_others() {
        within_20s(forwarding);
    }

    fn forwarding() {
        let (hub, ends) = hub(3);
        // Unicast 0 → 2, with the largest frame QEMU passes, byte for byte.
        let big = frame(mac(2), mac(0), MAX_FRAME, 9);
        ends[0].send(&big).unwrap();
        assert_eq!(next(&ends[2]).as_deref(), Some(&big[..]));
        nothing_on(&ends[1]);
        // Broadcast from 1 reaches 0 and 2, not 1.
        let arp = frame([0xff; 6], mac(1), 60, 1);
        ends[1].send(&arp).unwrap();
        assert_eq!(next(&ends[0]).as_deref(), Some(&arp[..]));
        assert_eq!(next(&ends[2]).as_deref(), Some(&arp[..]));
        nothing_on(&ends[1]);
        // A forged source and an unknown destination are dropped and counted.
        ends[2].send(&frame(mac(0), mac(7), 100, 2)).unwrap();
        ends[2].send(&frame(mac(9), mac(2), 100, 3)).unwrap();
        ends[2].send(&[1, 2, 3]).unwrap();
        nothing_on(&ends[0]);
        let stats = hub.stop();
        assert_eq!((stats.forwarded, stats.largest), (3, MAX_FRAME));
        assert_eq!((stats.unknown_source, stats.first_unknown, stats.unknown_destination), (2, Some((2, mac(7))), 1));
    }

    #[test]
    fn a_full_or_dead_port_does_not_stop_the_others_and_stop_is_prompt() {
        within_20s(full_and_dead_ports);
    }

    fn full_and_dead_ports() {
        let (hub, mut ends) = hub(3);
        // VM 1 reads nothing: 12 MiB of 64 KiB frames to it fill its socket, then the
        // hub's queue (8 MiB for 3 VMs), then are dropped; VM 2 still gets its frames.
        for i in 0..192 {
            ends[0].send(&frame(mac(1), mac(0), 65_549, i as u8)).unwrap();
            if i % 64 == 0 {
                ends[0].send(&frame(mac(2), mac(0), 1500, 5)).unwrap();
                assert!(next(&ends[2]).is_some(), "VM 2 starved behind a full VM 1");
            }
        }
        // VM 1 now reads: its frames arrive in order, the oldest first.
        let first = next(&ends[1]).unwrap();
        assert_eq!(first, frame(mac(1), mac(0), 65_549, 0));
        // VM 2 dies (its QEMU's end closes); frames to it are dropped, the rest goes on.
        drop(ends.remove(2));
        ends[0].send(&frame(mac(2), mac(0), 100, 6)).unwrap();
        ends[1].send(&frame(mac(0), mac(1), 100, 7)).unwrap();
        assert!(next(&ends[0]).is_some());
        let t = Instant::now();
        let stats = hub.stop();
        assert!(t.elapsed() < Duration::from_millis(500), "stop took {:?}", t.elapsed());
        assert!(stats.dropped_full > 0, "{stats:?}");
    }

    #[test]
    fn direct_link_carries_frames_both_ways_and_its_ends_buffer_a_tcp_window() {
        within_20s(|| {
            let ends = direct_link().unwrap();
            let big = frame(mac(1), mac(0), MAX_FRAME, 3);
            ends[0].send(&big).unwrap();
            assert_eq!(next(&ends[1]).as_deref(), Some(&big[..]));
            let small = frame(mac(0), mac(1), 60, 4);
            ends[1].send(&small).unwrap();
            assert_eq!(next(&ends[0]).as_deref(), Some(&small[..]));
            // Unread, an end takes more than three 64 KiB frames (the default send buffer's
            // worth) before it would block: as many as SOCKET_BUFFER holds when root (or
            // when the host's wmem_max allows it).
            let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            ends[0].set_nonblocking(true).unwrap();
            let mut sent = 0;
            while sent < 64 && ends[0].send(&frame(mac(1), mac(0), 65_549, sent as u8)).is_ok() {
                sent += 1;
            }
            // SAFETY: geteuid has no preconditions and cannot fail.
            #[allow(unsafe_code)]
            let root = unsafe { libc::geteuid() } == 0;
            if root || wmem_max >= SOCKET_BUFFER {
                assert!(sent >= 32, "only {sent} frames fit (wmem_max {wmem_max})");
            }
            // The other end gets them in order; a closed end makes sends fail.
            assert_eq!(next(&ends[1]), Some(frame(mac(1), mac(0), 65_549, 0)));
            let mut ends = ends;
            drop(ends.remove(1));
            assert!(ends[0].send(&small).is_err());
        });
    }

    #[test]
    fn dropping_the_hub_ends_its_thread() {
        within_20s(|| {
            let (hub, ends) = hub(2);
            let t = Instant::now();
            drop(hub);
            assert!(t.elapsed() < Duration::from_millis(500));
            // The hub's ends are closed: a VM's send now fails instead of queueing for ever.
            let e = ends[0].send(&frame(mac(1), mac(0), 100, 0));
            assert!(e.is_err(), "{e:?}");
        });
    }
}
