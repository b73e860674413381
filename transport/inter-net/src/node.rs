//! One VM's network node: the smoltcp interface on a `phy::Device`, one TCP connection
//! per peer VM, the protocol links and the local ranks' inboxes — behind one lock,
//! driven by whichever rank calls into the transport (see the crate docs for why).

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use mpi::transport::{Header, SendTicket, Transport, TransportError};
use smoltcp::iface::{Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint, Ipv4Address};

use crate::payload::Payload;
use crate::protocol::{Inboxes, Link, Topology};

/// IPv4's largest packet: the default MTU.
pub const MAX_MTU: usize = 65_535;
/// The smallest MTU an IPv4 host must accept (RFC 791); below it TCP barely moves.
pub const MIN_MTU: usize = 576;

/// Everything a VM's node needs to know (the launcher's plan, and tuning).
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// This VM's index.
    pub vm: u32,
    /// VM index of every world rank.
    pub vm_of_rank: Vec<u32>,
    /// Job id (both ends check it in the hello).
    pub job: u64,
    pub mac: [u8; 6],
    /// VM j has address `ip_base + j`.
    pub ip_base: [u8; 4],
    pub prefix_len: u8,
    /// VM i listens for VM j (j > i) on `port_base + j`.
    pub port_base: u16,
    /// Credit per (source rank, destination rank) pair, wire bytes (default:
    /// `default_window`, 4 MiB for 2 VMs × 1–2 ranks, at least 512 KiB).
    pub window: usize,
    /// Largest payload per frame.
    pub chunk: usize,
    /// Sends up to this size are copied and complete at once.
    pub eager_limit: usize,
    /// TCP send and receive buffer per connection (each). Several full-size segments
    /// must fit in flight; the receive buffer's size sets the window scale (default:
    /// `default_socket_buffer`, 4 MiB for up to 3 VMs, at least 1 MiB).
    pub socket_buffer: usize,
    /// IP MTU: the largest IP packet (Ethernet frame minus its 14-byte header) the NIC
    /// sends and must be able to receive. The launcher's hub carries frames up to
    /// QEMU's NET_BUFSIZE, so the default is IPv4's own limit, 65535 (TCP segments of
    /// 65495 bytes); `vm::start` sizes the receive buffers from it. Every VM of a job
    /// must use the same (a larger frame than a receiver's buffers is dropped by QEMU).
    pub mtu: usize,
    /// Whether the virtio-net device computes and checks IPv4 and TCP checksums
    /// (`netcsum=1`). Off by default: the VMs' segment is memory to memory on one host
    /// (virtio rings, QEMU, a Unix socket pair), which corrupts nothing, and checksums
    /// cost two passes over every byte (Linux's loopback skips them for the same
    /// reason). Only `vm::VirtioNet` reads it; the in-memory test segment (`sim`)
    /// always checksums, since its fault injector corrupts frames.
    pub checksums: bool,
    /// A peer that has not connected by then is reported.
    pub connect_timeout_ms: u64,
    /// A connection silent for this long (data or keep-alives unacknowledged) is dead.
    /// Long on purpose: a VM answers only while one of its ranks is in a transport
    /// call, so silence also means "computing". Dead VMs are found otherwise: one that
    /// ends closes its connections (`Shared::close`), one that is killed or crashes is
    /// reported by the launcher, which sees its QEMU exit. This only catches a VM that
    /// is alive but hung, or a broken link.
    pub peer_timeout_ms: u64,
    pub keepalive_ms: u64,
    pub seed: u64,
}

/// Memory a VM may hold for arrived, unread chunks (credit windows) at the default
/// window, and for its TCP buffers at the default size (send and receive, all peers).
const CREDIT_BUDGET: usize = 16 << 20;
const TCP_BUDGET: usize = 16 << 20;

/// The default credit per (source, destination) rank pair: `CREDIT_BUDGET` shared by
/// the rank pairs that send into the VM that has most of them, between 512 KiB and
/// 4 MiB. A window smaller than a message in flight stalls the sender for a credit
/// round trip: 512 KiB gave 0.54 GB/s at 1 MiB between 2 VMs, 4 MiB 0.71 GB/s
/// (BENCHMARKS.md, inter-net). Both ends compute it from the same plan.
pub fn default_window(vm_of_rank: &[u32]) -> usize {
    let vms = vm_of_rank.iter().copied().max().map_or(1, |m| m as usize + 1);
    let pairs = (0..vms)
        .map(|vm| {
            let inside = vm_of_rank.iter().filter(|&&v| v as usize == vm).count();
            inside * (vm_of_rank.len() - inside)
        })
        .max()
        .unwrap_or(0)
        .max(1);
    (CREDIT_BUDGET / pairs).clamp(512 << 10, 4 << 20)
}

/// The default TCP buffer per connection (send and receive each): `TCP_BUDGET` shared
/// by the VM's connections (two buffers each), between 1 MiB and 4 MiB.
pub fn default_socket_buffer(vm_of_rank: &[u32]) -> usize {
    let vms = vm_of_rank.iter().copied().max().map_or(1, |m| m as usize + 1);
    (TCP_BUDGET / (2 * vms.saturating_sub(1).max(1))).clamp(1 << 20, 4 << 20)
}

impl NetConfig {
    /// Defaults for everything but the plan; the credit window and the TCP buffers
    /// depend on the plan (`default_window`, `default_socket_buffer`).
    pub fn new(vm: u32, vm_of_rank: Vec<u32>, mac: [u8; 6], ip_base: [u8; 4]) -> NetConfig {
        NetConfig {
            window: default_window(&vm_of_rank),
            socket_buffer: default_socket_buffer(&vm_of_rank),
            vm,
            vm_of_rank,
            job: 0,
            mac,
            ip_base,
            prefix_len: 16,
            port_base: 7400,
            chunk: 64 << 10,
            eager_limit: 16 << 10,
            mtu: MAX_MTU,
            checksums: false,
            connect_timeout_ms: 30_000,
            peer_timeout_ms: 60_000,
            keepalive_ms: 250,
            seed: 0x746f_726f,
        }
    }

    /// From the launcher's kernel command-line keys (`vm= place= mac= ip= ipbase= job=`,
    /// see launcher/README.md); `get` looks a key up. Tuning keys: `netwindow=`,
    /// `netchunk=`, `netpeertimeout=` (ms), `netmtu=` (IP MTU, 576..65535; every VM of
    /// the job needs the same), `netbuf=` (TCP buffer per connection, bytes), `netcsum=`
    /// (1: IPv4 and TCP checksums on the virtio-net device; default 0).
    pub fn from_keys<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<NetConfig, String> {
        let vm: u32 = get("vm").unwrap_or("0").parse().map_err(|_| String::from("vm= is not a number"))?;
        let place = get("place").ok_or_else(|| String::from("no place= on the command line"))?;
        let mut vm_of: Vec<(u32, u32)> = Vec::new();
        for (k, part) in place.split('/').enumerate() {
            let list = part.split_once('@').map_or(part, |(list, _)| list);
            for item in list.split(',').filter(|s| !s.is_empty()) {
                let (low, high) = item.split_once('-').unwrap_or((item, item));
                let low: u32 = low.parse().map_err(|_| format!("place=: bad rank {:?}", item))?;
                let high: u32 = high.parse().map_err(|_| format!("place=: bad rank {:?}", item))?;
                for rank in low..=high {
                    vm_of.push((rank, k as u32));
                }
            }
        }
        vm_of.sort();
        if vm_of.iter().enumerate().any(|(i, &(rank, _))| rank != i as u32) {
            return Err(format!("place={} does not place ranks 0..N once each", place));
        }
        let hex = |s: &str| u8::from_str_radix(s, 16).map_err(|_| format!("mac={} is not a MAC address", s));
        let mut mac = [0u8; 6];
        if let Some(text) = get("mac") {
            let parts: Vec<&str> = text.split(':').collect();
            if parts.len() != 6 {
                return Err(format!("mac={} is not a MAC address", text));
            }
            for (byte, part) in mac.iter_mut().zip(parts) {
                *byte = hex(part)?;
            }
        }
        let ipv4 = |text: &str| -> Result<[u8; 4], String> {
            let mut out = [0u8; 4];
            let parts: Vec<&str> = text.split('.').collect();
            if parts.len() != 4 {
                return Err(format!("{} is not an IPv4 address", text));
            }
            for (byte, part) in out.iter_mut().zip(parts) {
                *byte = part.parse().map_err(|_| format!("{} is not an IPv4 address", text))?;
            }
            Ok(out)
        };
        let ip_base = ipv4(get("ipbase").ok_or_else(|| String::from("no ipbase= on the command line"))?)?;
        let mut config = NetConfig::new(vm, vm_of.iter().map(|&(_, vm)| vm).collect(), mac, ip_base);
        if let Some(ip) = get("ip") {
            let (address, prefix) = ip.split_once('/').unwrap_or((ip, "16"));
            config.prefix_len = prefix.parse().map_err(|_| format!("ip={}: bad prefix", ip))?;
            if config.ip_of_vm(vm).octets() != ipv4(address)? {
                return Err(format!("ip={} is not ipbase + vm ({})", ip, config.ip_of_vm(vm)));
            }
        }
        if let Some(job) = get("job") {
            // The launcher's ids are hex; any other (TORO_JOB_ID) is hashed (FNV-1a):
            // the id only has to tell jobs apart in the hello frames.
            config.job = u64::from_str_radix(job, 16).unwrap_or_else(|_| {
                job.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
            });
        }
        let number = |key: &str| -> Result<Option<u64>, String> { get(key).map(|v| v.parse::<u64>().map_err(|_| format!("{}={} is not a number", key, v))).transpose() };
        if let Some(window) = number("netwindow")? {
            config.window = window as usize;
        }
        if let Some(chunk) = number("netchunk")? {
            config.chunk = (chunk as usize).clamp(1, crate::frame::MAX_CHUNK);
        }
        if let Some(timeout) = number("netpeertimeout")? {
            config.peer_timeout_ms = timeout;
        }
        if let Some(mtu) = number("netmtu")? {
            if !(MIN_MTU as u64..=MAX_MTU as u64).contains(&mtu) {
                return Err(format!("netmtu={} is not in {}..{}", mtu, MIN_MTU, MAX_MTU));
            }
            config.mtu = mtu as usize;
        }
        if let Some(bytes) = number("netbuf")? {
            // smoltcp's window scale goes up to 2^14: 1 GiB; below 4 KiB TCP crawls.
            if !(4096..=1 << 30).contains(&bytes) {
                return Err(format!("netbuf={} is not in 4096..{}", bytes, 1u64 << 30));
            }
            config.socket_buffer = bytes as usize;
        }
        if let Some(on) = number("netcsum")? {
            config.checksums = on != 0;
        }
        config.seed ^= config.job.rotate_left(17) ^ u64::from(vm);
        Ok(config)
    }

    pub fn ip_of_vm(&self, vm: u32) -> Ipv4Address {
        Ipv4Address::from_bits(u32::from_be_bytes(self.ip_base).wrapping_add(vm))
    }

    pub fn vms(&self) -> u32 {
        self.vm_of_rank.iter().copied().max().map_or(1, |m| m + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_the_launcher_command_line() {
        let line = [("vm", "1"), ("place", "0,2@2/1,3@2"), ("mac", "02:74:6f:00:00:01"), ("ip", "169.254.1.2/16"), ("ipbase", "169.254.1.1"), ("job", "1a2b3c4d")];
        let get = |key: &str| line.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let config = NetConfig::from_keys(get).unwrap();
        assert_eq!((config.vm, config.vm_of_rank.clone(), config.mac, config.job), (1, vec![0, 1, 0, 1], [2, 0x74, 0x6f, 0, 0, 1], 0x1a2b_3c4d));
        assert_eq!(config.ip_of_vm(0).octets(), [169, 254, 1, 1]);
        let bad = [("vm", "0"), ("place", "0-1@2/1@1"), ("ipbase", "169.254.1.1")];
        let get = |key: &str| bad.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        assert!(NetConfig::from_keys(get).is_err());
        let wrong_ip = [("vm", "0"), ("place", "0@1/1@1"), ("ipbase", "169.254.1.1"), ("ip", "169.254.1.9/16")];
        let get = |key: &str| wrong_ip.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        assert!(NetConfig::from_keys(get).unwrap_err().contains("ipbase"));
    }

    #[test]
    fn default_window_and_buffers_follow_the_plan() {
        // 2 VMs x 1 rank: one pair into each VM, one connection: the largest sizes.
        assert_eq!((default_window(&[0, 1]), default_socket_buffer(&[0, 1])), (4 << 20, 4 << 20));
        // 2 VMs x 2: 4 pairs into each VM share 16 MiB.
        assert_eq!(default_window(&[0, 0, 1, 1]), 4 << 20);
        // 2 VMs x 8: 64 pairs: never below the former default, 512 KiB.
        assert_eq!(default_window(&[0; 8].iter().chain(&[1; 8]).copied().collect::<Vec<_>>()), 512 << 10);
        // 2 VMs x 4: 16 pairs, 1 MiB each.
        assert_eq!(default_window(&[0, 0, 0, 0, 1, 1, 1, 1]), 1 << 20);
        // Uneven: the VM with the most pairs sets it (3 x 5 = 15 pairs into VM 0 or 1).
        assert_eq!(default_window(&[0, 0, 0, 1, 1, 1, 1, 1]), (16 << 20) / 15);
        // 5 VMs: 4 connections of 2 buffers share 16 MiB (2 MiB each); 9 VMs and more: 1 MiB.
        assert_eq!(default_socket_buffer(&[0, 1, 2, 3, 4]), 2 << 20);
        assert_eq!(default_socket_buffer(&(0..16).collect::<Vec<_>>()), 1 << 20);
        // One VM: nothing to share.
        assert_eq!((default_window(&[0, 0]), default_socket_buffer(&[0, 0])), (4 << 20, 4 << 20));
    }

    #[test]
    fn mtu_and_buffer_keys() {
        let with = |key: &'static str, value: &'static str| {
            let line = [("vm", "0"), ("place", "0@1/1@1"), ("ipbase", "169.254.1.1"), (key, value)];
            NetConfig::from_keys(move |k: &str| line.iter().find(|(name, _)| *name == k).map(|(_, v)| *v))
        };
        let default = with("other", "1").unwrap();
        assert_eq!((default.mtu, default.socket_buffer, default.window), (MAX_MTU, 4 << 20, 4 << 20));
        assert_eq!(with("netmtu", "1500").unwrap().mtu, 1500);
        assert_eq!(with("netmtu", "65536").unwrap_err(), "netmtu=65536 is not in 576..65535");
        assert_eq!(with("netmtu", "100").unwrap_err(), "netmtu=100 is not in 576..65535");
        assert_eq!(with("netmtu", "big").unwrap_err(), "netmtu=big is not a number");
        assert_eq!(with("netbuf", "262144").unwrap().socket_buffer, 256 << 10);
        assert!(with("netbuf", "12").unwrap_err().starts_with("netbuf=12 is not in 4096.."));
        assert!(!default.checksums);
        assert!(with("netcsum", "1").unwrap().checksums);
        assert!(!with("netcsum", "0").unwrap().checksums);
        assert_eq!(with("netcsum", "yes").unwrap_err(), "netcsum=yes is not a number");
    }
}

/// A NIC the node can drive: a smoltcp device, plus `flush` at the end of each poll
/// (a virtio device issues its held-back notifies there).
pub trait Nic: Device {
    fn flush(&mut self) {}
    /// Whether frames handed to the device are still waiting to be sent.
    fn transmit_pending(&mut self) -> bool {
        false
    }
    /// Ranks are about to block: ask the device to interrupt when a frame arrives.
    /// False if a frame is already waiting (poll instead of blocking). A device
    /// without interrupts returns true: its blocked ranks rely on their deadline.
    fn arm_receive(&mut self) -> bool {
        true
    }
    /// No rank is blocked any more: no interrupts needed.
    fn disarm_receive(&mut self) {}
}

impl Nic for crate::sim::SimPort {}
impl<D: Device> Nic for smoltcp::phy::FaultInjector<D> {}

/// The unit of the receive windows smoltcp announces for a socket buffer of `bytes`: its
/// window scale, as smoltcp picks it (the buffer's size in bits beyond 16).
fn window_granule(bytes: usize) -> usize {
    1 << (usize::BITS - bytes.leading_zeros()).saturating_sub(16)
}

/// Time source: microseconds, monotonic.
pub type Clock = fn() -> u64;
/// Ends the job (or, in tests, the rank) with a message; never returns.
pub type Fatal = fn(&str) -> !;

#[derive(Clone, Debug, PartialEq, Eq)]
enum ConnState {
    /// Not up yet; `attempt_at`: when to (re)connect or re-listen.
    Connecting { attempt_at: u64 },
    Up,
    Gone { reason: String, lost_data: bool },
}

struct Slot {
    link: Link,
    socket: SocketHandle,
    /// We connect (our index is higher) or listen.
    connects: bool,
    state: ConnState,
}

/// Counters, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub polls: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub frames_sent: u64,
    pub frames_received: u64,
}

pub struct Node<D: Nic> {
    config: NetConfig,
    topo: Topology,
    iface: Interface,
    sockets: SocketSet<'static>,
    device: D,
    slots: Vec<Option<Slot>>,
    inboxes: Inboxes,
    clock: Clock,
    started_us: u64,
    next_ticket: u64,
    next_local_port: u16,
    failure: Option<String>,
    stats: NodeStats,
    /// Local ranks blocked between `prepare_wait` and `finish_wait` (the receive
    /// interrupt is armed while there are any).
    blocked: Vec<u32>,
    /// Local ranks something happened for (a chunk arrived for them, a send of
    /// theirs completed) since they last called `prepare_wait`, while not blocked.
    touched: Vec<u32>,
    /// Blocked ranks something happened for, to be woken (by `Shared`, after
    /// releasing the node's lock).
    to_wake: Vec<u32>,
}

fn add_once(list: &mut Vec<u32>, rank: u32) {
    if !list.contains(&rank) {
        list.push(rank);
    }
}

impl<D: Nic> Node<D> {
    pub fn new(config: NetConfig, mut device: D, clock: Clock) -> Node<D> {
        let now_us = clock();
        let mut iface_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(config.mac)));
        iface_config.random_seed = config.seed ^ u64::from(config.vm).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut iface = Interface::new(iface_config, &mut device, Instant::from_micros(now_us as i64));
        let my_ip = config.ip_of_vm(config.vm);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(my_ip), config.prefix_len));
        });
        let mut sockets = SocketSet::new(Vec::new());
        let topo = Topology { my_vm: config.vm, vm_of_rank: config.vm_of_rank.clone(), job: config.job, window: config.window, chunk: config.chunk };
        let vms = config.vms();
        let slots = (0..vms)
            .map(|vm| {
                (vm != config.vm).then(|| {
                    let mut socket = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; config.socket_buffer]), tcp::SocketBuffer::new(vec![0; config.socket_buffer]));
                    // No Nagle (latency); smoltcp's delayed ACK (10 ms) stays: an ACK then
                    // rides on the reply or the credit frame instead of costing its own notify.
                    socket.set_nagle_enabled(false);
                    // Congestion control (Reno): without it, smoltcp sends the whole
                    // window in one burst and answers a loss by resending all of it
                    // after a timeout of at least 1 s. Where the receiving side drops
                    // part of a burst (the network's or QEMU's queues when the other VM
                    // falls behind) that repeats for ever: the bandwidth phase once
                    // crawled at a few hundred KB/s (tests/lossy_link.rs,
                    // `many_large_sends_in_flight_through_a_shallow_switch`).
                    socket.set_congestion_control(tcp::CongestionControl::Reno);
                    Slot { link: Link::new(vm), socket: sockets.add(socket), connects: config.vm > vm, state: ConnState::Connecting { attempt_at: now_us } }
                })
            })
            .collect();
        let local = (0..topo.world()).filter(|&r| topo.vm_of(r) == Some(config.vm));
        let inboxes = Inboxes::new(local);
        let next_local_port = 49152 + (config.seed as u16 % 1000);
        Node {
            config,
            topo,
            iface,
            sockets,
            device,
            slots,
            inboxes,
            clock,
            started_us: now_us,
            next_ticket: 0,
            next_local_port,
            failure: None,
            stats: NodeStats::default(),
            blocked: Vec::new(),
            touched: Vec::new(),
            to_wake: Vec::new(),
        }
    }

    pub fn stats(&self) -> NodeStats {
        let mut stats = self.stats;
        for slot in self.slots.iter().flatten() {
            stats.frames_sent += slot.link.frames_sent;
            stats.frames_received += slot.link.frames_received;
        }
        stats
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The job-ending failure, if any (a protocol error, or a peer lost mid-transfer).
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Whether every connection is up.
    pub fn all_up(&self) -> bool {
        self.slots.iter().flatten().all(|s| s.state == ConnState::Up)
    }

    /// One line per connection: state, TCP queues, protocol counters (for diagnostics).
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for slot in self.slots.iter().flatten() {
            let socket = self.sockets.get::<tcp::Socket>(slot.socket);
            out += &format!(
                "VM {}: {:?} tcp {} send_queue {} recv_queue {} window {}; {}\n",
                slot.link.peer_vm,
                slot.state,
                socket.state(),
                socket.send_queue(),
                socket.recv_queue(),
                socket.recv_capacity(),
                slot.link.describe()
            );
        }
        out
    }

    /// Nothing of ours is queued, half sent or unacknowledged on any
    /// connection: the VM may end now without its peers losing data.
    pub fn quiet(&self) -> bool {
        self.slots.iter().flatten().all(|slot| {
            !slot.link.busy() && self.sockets.get::<tcp::Socket>(slot.socket).send_queue() == 0
        })
    }

    /// Whether everything queued to peers that are up was sent *and acknowledged* by
    /// their TCP (nothing queued or half written, every send queue empty). A VM must
    /// not end before this holds: frames still in its NIC or unacknowledged are lost
    /// with it (the peer would wait for them). Call `poll` until it does.
    pub fn flushed(&self) -> bool {
        self.slots.iter().flatten().filter(|slot| slot.state == ConnState::Up).all(|slot| !slot.link.has_output() && self.sockets.get::<tcp::Socket>(slot.socket).send_queue() == 0)
    }

    /// This VM is ending: closes every connection (a FIN each, sent by the next
    /// polls), so the peers learn at once that we are gone, and anything they still
    /// had queued to us is reported as lost.
    pub fn close(&mut self) {
        for slot in self.slots.iter_mut().flatten() {
            if slot.state == ConnState::Up {
                self.sockets.get_mut::<tcp::Socket>(slot.socket).close();
                slot.state = ConnState::Gone { reason: String::from("this VM closed the connection"), lost_data: false };
            }
        }
    }

    /// Bytes of arrived chunks not yet read by their rank.
    pub fn buffered(&self) -> usize {
        self.inboxes.buffered()
    }

    fn fail(&mut self, message: String) {
        if self.failure.is_none() {
            self.failure = Some(message);
        }
    }

    fn gone_message(&self, vm: u32, reason: &str) -> String {
        format!("inter-net: lost {} at {}: {}", self.topo.describe_vm(vm), self.config.ip_of_vm(vm), reason)
    }

    /// One round of progress: every frame the NIC holds, every connection's state, input
    /// and output. Returns whether anything moved.
    ///
    /// smoltcp sends only from `acknowledge_and_read`, when the bytes waiting unread in
    /// each socket are a multiple of the window's granule. smoltcp announces its free
    /// receive buffer rounded down to the window scale (2^7 bytes with 4 MiB buffers):
    /// an ACK sent with some other amount unread can move the window's right edge back
    /// by up to 127 bytes from one announced before, and smoltcp then drops the part of
    /// a segment the peer had sent up to the old edge, which the peer resends only at
    /// its retransmission timeout (1 s): the vhost-user back-end's ~1 s stalls
    /// (BENCHMARKS.md, inter-net). With a multiple unread, every ACK announces the edge at
    /// exactly (bytes read + buffer size), which never moves back. The ACKs still go out
    /// before the rest of the input is read, as smoltcp's own `poll` sent them, so the
    /// peers send on meanwhile (sending only after reading everything cost ~10 % of the
    /// bandwidth at 1 MiB). smoltcp still answers a segment out of order at once, during
    /// input: only after a loss, which the retransmission repairs anyway.
    pub fn poll(&mut self) -> bool {
        self.stats.polls += 1;
        let now_us = (self.clock)();
        let now = Instant::from_micros(now_us as i64);
        self.iface.poll_maintenance(now);
        let mut moved = self.take_in(now);
        for vm in 0..self.slots.len() {
            let Some(mut slot) = self.slots[vm].take() else { continue };
            self.manage(&mut slot, now_us);
            self.slots[vm] = Some(slot);
        }
        moved |= self.acknowledge_and_read(now);
        let mut wrote = false;
        // Credits for what local ranks have read.
        let mut grants = Vec::new();
        self.inboxes.take_grants(self.config.window / 4, &mut grants);
        for (source, dest, bytes) in grants {
            if let Some(Some(slot)) = self.topo.vm_of(source).and_then(|vm| self.slots.get_mut(vm as usize)) {
                slot.link.grant(dest, source, bytes);
                slot.link.note_granted(source, dest, bytes);
            }
        }
        // Output into the sockets, then onto the NIC with the ACKs.
        for slot in self.slots.iter_mut().flatten() {
            if slot.state != ConnState::Up {
                continue;
            }
            let socket = self.sockets.get_mut::<tcp::Socket>(slot.socket);
            while socket.can_send() && slot.link.has_output() {
                let (topo, link) = (&self.topo, &mut slot.link);
                match socket.send(|buffer| {
                    let n = link.fill(topo, buffer);
                    (n, n)
                }) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => wrote = true,
                }
            }
        }
        // What was just written, with the frames that came in meanwhile.
        if wrote {
            moved |= self.take_in(now);
            moved |= self.acknowledge_and_read(now);
        }
        self.device.flush();
        self.note_touched();
        moved || wrote
    }

    /// Hands every frame the NIC holds to smoltcp (which sends nothing then, but for an
    /// immediate answer to a segment out of order). Returns whether a socket changed.
    fn take_in(&mut self, now: Instant) -> bool {
        let mut changed = false;
        loop {
            match self.iface.poll_ingress_single(now, &mut self.device, &mut self.sockets) {
                PollIngressSingleResult::None => return changed,
                PollIngressSingleResult::PacketProcessed => {}
                PollIngressSingleResult::SocketStateChanged => changed = true,
            }
        }
    }

    /// Sends the ACKs (and whatever the sockets hold to send) with what stays unread a
    /// multiple of the window's granule (see `poll`), then reads the rest. Returns
    /// whether anything moved.
    fn acknowledge_and_read(&mut self, now: Instant) -> bool {
        let mut moved = self.read_input(Some(window_granule(self.config.socket_buffer)));
        while self.iface.poll_egress(now, &mut self.device, &mut self.sockets) == PollResult::SocketStateChanged {
            moved = true;
        }
        moved | self.read_input(None)
    }

    /// Feeds each connection's received bytes to its link: all of them, or with
    /// `Some(granule)` just enough that what stays unread is a multiple of `granule`.
    /// Returns whether anything was read.
    fn read_input(&mut self, granule: Option<usize>) -> bool {
        let mut moved = false;
        for slot in self.slots.iter_mut().flatten() {
            if slot.state != ConnState::Up {
                continue;
            }
            let socket = self.sockets.get_mut::<tcp::Socket>(slot.socket);
            let mut to_read = match granule {
                Some(granule) => socket.recv_queue() % granule,
                None => socket.recv_queue(),
            };
            while to_read > 0 {
                let (topo, inboxes, link) = (&self.topo, &mut self.inboxes, &mut slot.link);
                // `absorb` takes every byte it is given.
                match socket.recv(|bytes| match link.absorb(topo, inboxes, &bytes[..bytes.len().min(to_read)]) {
                    Ok(n) => (n, Ok(n)),
                    Err(error) => (bytes.len(), Err(error)),
                }) {
                    Ok(Ok(0)) | Err(_) => break,
                    Ok(Ok(n)) => {
                        to_read -= n;
                        moved = true;
                    }
                    Ok(Err(error)) => {
                        let message = format!("inter-net: protocol error {}", error.0);
                        socket.abort();
                        slot.state = ConnState::Gone { reason: message.clone(), lost_data: true };
                        self.failure.get_or_insert(message);
                        break;
                    }
                }
            }
        }
        moved
    }

    /// Sorts the ranks this poll did something for: blocked ones are to be woken,
    /// the others will not block on their next `prepare_wait`.
    fn note_touched(&mut self) {
        let mut ranks = core::mem::take(&mut self.inboxes.touched);
        for slot in self.slots.iter_mut().flatten() {
            ranks.append(&mut slot.link.completed_senders);
        }
        if ranks.is_empty() {
            self.inboxes.touched = ranks;
            return;
        }
        for rank in ranks.drain(..) {
            match self.blocked.iter().position(|&b| b == rank) {
                Some(i) => {
                    self.blocked.swap_remove(i);
                    add_once(&mut self.to_wake, rank);
                }
                None => add_once(&mut self.touched, rank),
            }
        }
        self.inboxes.touched = ranks;
        if self.blocked.is_empty() {
            self.device.disarm_receive();
        }
    }

    /// Local rank `rank` has nothing to do and is about to block (announce, then
    /// re-check). Returns `None` if it should look again instead: something happened
    /// for it since its last `prepare_wait`, a frame waits in the NIC, or the node
    /// needs a poll now. Otherwise the rank is registered as blocked (a poll that
    /// finds something for it puts it in the wake list, see `Shared`), the NIC's
    /// receive interrupt is armed, and the result is when the node must be polled
    /// again at the latest, in the clock's µs (`u64::MAX`: no timer of its own runs).
    /// Call `finish_wait` after waking, whatever this returned.
    pub fn prepare_wait(&mut self, rank: u32) -> Option<u64> {
        if let Some(i) = self.touched.iter().position(|&r| r == rank) {
            self.touched.swap_remove(i);
            return None;
        }
        if self.failure.is_some() {
            return None;
        }
        add_once(&mut self.blocked, rank);
        if !self.device.arm_receive() {
            return None;
        }
        let now_us = (self.clock)();
        let due = self.poll_due_us(now_us);
        (due > now_us).then_some(due)
    }

    /// `rank` woke up (or did not block): it no longer needs waking.
    pub fn finish_wait(&mut self, rank: u32) {
        if let Some(i) = self.blocked.iter().position(|&b| b == rank) {
            self.blocked.swap_remove(i);
        }
        if self.blocked.is_empty() {
            self.device.disarm_receive();
        }
    }

    /// When the node must be polled next even if no frame arrives: smoltcp's timers
    /// (retransmission, delayed ACK, keep-alive, timeout) and connection attempts.
    fn poll_due_us(&mut self, now_us: u64) -> u64 {
        let now = Instant::from_micros(now_us as i64);
        let mut due = self.iface.poll_at(now, &self.sockets).map_or(u64::MAX, |at| at.total_micros().max(0) as u64);
        for slot in self.slots.iter().flatten() {
            if let ConnState::Connecting { attempt_at } = slot.state {
                if self.sockets.get::<tcp::Socket>(slot.socket).state() == tcp::State::Closed {
                    due = due.min(attempt_at);
                }
            }
        }
        due
    }

    /// Connection set-up and loss detection for one peer.
    fn manage(&mut self, slot: &mut Slot, now_us: u64) {
        let peer_ip = self.config.ip_of_vm(slot.link.peer_vm);
        let socket = self.sockets.get_mut::<tcp::Socket>(slot.socket);
        match slot.state.clone() {
            ConnState::Connecting { attempt_at } => {
                let state = socket.state();
                if state == tcp::State::Established {
                    let remote = socket.remote_endpoint().map(|e| e.addr);
                    if remote != Some(IpAddress::Ipv4(peer_ip)) {
                        // Someone else on the segment: refuse and listen again.
                        socket.abort();
                        slot.state = ConnState::Connecting { attempt_at: now_us };
                        return;
                    }
                    socket.set_timeout(Some(Duration::from_millis(self.config.peer_timeout_ms)));
                    socket.set_keep_alive(Some(Duration::from_millis(self.config.keepalive_ms)));
                    slot.state = ConnState::Up;
                    return;
                }
                if now_us.saturating_sub(self.started_us) > self.config.connect_timeout_ms * 1000 {
                    let message = self.gone_message(slot.link.peer_vm, "no connection within the start-up time");
                    slot.state = ConnState::Gone { reason: message.clone(), lost_data: true };
                    self.fail(message);
                    return;
                }
                if state == tcp::State::Closed && now_us >= attempt_at {
                    let started = if slot.connects {
                        self.next_local_port = if self.next_local_port >= 65000 { 49152 } else { self.next_local_port + 1 };
                        let remote = IpEndpoint::new(IpAddress::Ipv4(peer_ip), self.config.port_base + self.config.vm as u16);
                        socket.connect(self.iface.context(), remote, self.next_local_port).is_ok()
                    } else {
                        socket.listen(self.config.port_base + slot.link.peer_vm as u16).is_ok()
                    };
                    // A refused connect (peer not listening yet) closes the socket: retry soon.
                    slot.state = ConnState::Connecting { attempt_at: now_us + if started { 20_000 } else { 100_000 } };
                }
            }
            ConnState::Up => {
                let state = socket.state();
                if !matches!(state, tcp::State::Established) {
                    // CloseWait: the peer VM ended and closed the connection (its FIN
                    // acknowledges everything it received, so bytes still unacknowledged
                    // then are only our late credit grants, unless a message is still
                    // queued or half moved, which `busy` tells). Anything else (reset,
                    // timeout) loses whatever is unacknowledged.
                    let ended = state == tcp::State::CloseWait;
                    let lost_data = slot.link.busy() || (!ended && socket.send_queue() > 0);
                    socket.abort();
                    let why = if ended { String::from("the VM ended (closed its connection)") } else { format!("connection {} (peer VM dead or reset)", state) };
                    let message = self.gone_message(slot.link.peer_vm, &why);
                    slot.state = ConnState::Gone { reason: message.clone(), lost_data };
                    if lost_data {
                        self.fail(message);
                    }
                }
            }
            ConnState::Gone { .. } => {}
        }
    }

    /// Queues a message to a rank in another VM; returns its ticket (0: already complete).
    pub fn send(&mut self, header: &Header, payload: &[u8], borrow: bool) -> Result<u64, String> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let Some(vm) = self.topo.vm_of(header.dest).filter(|&vm| vm != self.config.vm) else {
            return Err(format!("inter-net: rank {} is not in another VM", header.dest));
        };
        let Some(Some(slot)) = self.slots.get_mut(vm as usize) else { return Err(format!("inter-net: no VM {}", vm)) };
        if let ConnState::Gone { reason, .. } = &slot.state {
            return Err(format!("sending to rank {}: {}", header.dest, reason));
        }
        let (payload, ticket) = if borrow && payload.len() > self.config.eager_limit {
            self.next_ticket += 1;
            // SAFETY: `Transport::start_send`'s contract (the caller keeps `payload`
            // valid and unchanged until `send_complete` reports this ticket done).
            #[allow(unsafe_code)]
            let borrowed = unsafe { Payload::borrow(payload) };
            (borrowed, self.next_ticket)
        } else {
            (Payload::Owned(payload.to_vec()), 0)
        };
        slot.link.queue(*header, payload, ticket);
        self.stats.messages_sent += 1;
        Ok(ticket)
    }

    pub fn send_done(&mut self, ticket: u64) -> bool {
        ticket == 0 || self.slots.iter_mut().flatten().any(|slot| slot.link.completed.remove(&ticket))
    }

    pub fn peek(&self, rank: u32) -> Option<Header> {
        self.inboxes.peek(rank)
    }

    /// Copies what arrived of `rank`'s front message; true once it is all there.
    /// Err if its sender's VM was lost.
    pub fn read(&mut self, rank: u32, into: &mut [u8]) -> Result<bool, String> {
        let done = self.inboxes.read_into(rank, into);
        if done {
            self.stats.messages_received += 1;
            return Ok(true);
        }
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let source_vm = self.inboxes.front_source(rank).and_then(|(source, _)| self.topo.vm_of(source));
        if let Some(Some(Slot { state: ConnState::Gone { reason, .. }, .. })) = source_vm.and_then(|vm| self.slots.get(vm as usize)) {
            return Err(reason.clone());
        }
        Ok(false)
    }
}

/// Wakes a blocked local rank (see `Shared::set_waker`).
pub type Waker = fn(rank: u32);
/// Called while a local rank waits for the rest of a message that is arriving, with
/// the µs since the last chunk came in (see `Shared::set_idler`).
pub type Idler = fn(rank: u32, idle_us: u64);

/// A node shared by the ranks of one VM.
pub struct Shared<D: Nic> {
    pub node: spin::Mutex<Node<D>>,
    fatal: Fatal,
    waker: spin::Mutex<Option<Waker>>,
    idler: spin::Mutex<Option<Idler>>,
}

impl<D: Nic> Shared<D> {
    pub fn new(node: Node<D>, fatal: Fatal) -> Arc<Shared<D>> {
        Arc::new(Shared { node: spin::Mutex::new(node), fatal, waker: spin::Mutex::new(None), idler: spin::Mutex::new(None) })
    }

    /// How ranks blocked in `prepare_wait` are woken when a poll (by any rank) finds
    /// something for them. Without a waker, ranks must not block.
    pub fn set_waker(&self, waker: Waker) {
        *self.waker.lock() = Some(waker);
    }

    /// What a rank does between polls while the rest of a message it is reading
    /// has not arrived (`NetEndpoint::receive_payload`): spin, yield, or block
    /// through `prepare_wait`. Without an idler it spins.
    pub fn set_idler(&self, idler: Idler) {
        *self.idler.lock() = Some(idler);
    }

    /// Runs `f` on the node, then wakes the blocked ranks it found something for,
    /// after releasing the lock (a wake-up may cost an IPI).
    fn with_node<R>(&self, f: impl FnOnce(&mut Node<D>) -> R) -> R {
        let mut node = self.node.lock();
        let result = f(&mut node);
        self.wake(node);
        result
    }

    /// Releases the lock, then wakes the ranks in the node's wake list.
    fn wake(&self, mut node: spin::MutexGuard<'_, Node<D>>) {
        let to_wake = core::mem::take(&mut node.to_wake);
        drop(node);
        if to_wake.is_empty() {
            return;
        }
        if let Some(waker) = *self.waker.lock() {
            for rank in to_wake {
                waker(rank);
            }
        }
    }

    /// Polls the node once, unless another rank is doing it right now.
    pub fn poll(&self) -> bool {
        let Some(mut node) = self.node.try_lock() else { return false };
        let moved = node.poll();
        self.wake(node);
        moved
    }

    /// `rank` has nothing to do and is about to block: see `Node::prepare_wait`
    /// (`None`: look again instead; else poll the node by then at the latest, µs).
    /// Call `finish_wait` after waking, whatever this returned.
    pub fn prepare_wait(&self, rank: u32) -> Option<u64> {
        self.with_node(|node| node.prepare_wait(rank))
    }

    /// `rank` woke up (or did not block).
    pub fn finish_wait(&self, rank: u32) {
        self.with_node(|node| node.finish_wait(rank))
    }

    /// Before the VM ends (its ranks have all returned): polls until what we
    /// sent is acknowledged, then `grace_us` more so our own ACKs (smoltcp
    /// delays them 10 ms) reach the peers; gives up after `limit_us`.
    /// Returns whether everything was acknowledged.
    pub fn drain(&self, grace_us: u64, limit_us: u64) -> bool {
        let now = || (self.node.lock().clock)();
        let start = now();
        let mut quiet_since = None;
        loop {
            let t = now();
            let quiet = {
                let mut node = self.node.lock();
                node.poll();
                node.quiet()
            };
            match (quiet, quiet_since) {
                (true, None) => quiet_since = Some(t),
                (true, Some(q)) if t - q >= grace_us => return true,
                (false, _) => quiet_since = None,
                _ => {}
            }
            if t - start >= limit_us {
                return quiet;
            }
        }
    }

    /// The VM ends (after `drain`): closes every connection and polls until the
    /// FINs have left the NIC (a frame still in the device dies with the VM), at most
    /// `limit_us`. Without it a peer would only find out through the launcher or,
    /// if it had data queued to us, `peer_timeout_ms` later.
    pub fn close(&self, limit_us: u64) {
        let mut node = self.node.lock();
        let start = (node.clock)();
        node.close();
        let mut polls = 0;
        loop {
            node.poll();
            polls += 1;
            if (polls >= 2 && !node.device.transmit_pending()) || (node.clock)() - start >= limit_us {
                return;
            }
        }
    }

    fn check(&self) {
        let failure = self.node.lock().failure.clone();
        if let Some(message) = failure {
            (self.fatal)(&message);
        }
    }
}

/// One local rank's endpoint: the `mpi::transport::Transport` for its peers in other VMs.
pub struct NetEndpoint<D: Nic> {
    shared: Arc<Shared<D>>,
    rank: u32,
}

impl<D: Nic + Send + 'static> NetEndpoint<D> {
    pub fn new(shared: Arc<Shared<D>>, rank: u32) -> NetEndpoint<D> {
        NetEndpoint { shared, rank }
    }

    pub fn boxed(shared: Arc<Shared<D>>, rank: u32) -> Box<dyn Transport> {
        Box::new(NetEndpoint::new(shared, rank))
    }
}

impl<D: Nic + Send> Transport for NetEndpoint<D> {
    fn start_send(&mut self, header: &Header, payload: &[u8]) -> Result<SendTicket, TransportError> {
        let outcome = self.shared.with_node(|node| {
            let outcome = node.send(header, payload, true);
            node.poll();
            outcome
        });
        match outcome {
            Ok(ticket) => Ok(SendTicket(ticket)),
            Err(message) => (self.shared.fatal)(&message),
        }
    }

    fn send_complete(&mut self, ticket: SendTicket) -> bool {
        let done = self.shared.with_node(|node| {
            if node.send_done(ticket.0) {
                return true;
            }
            node.poll();
            node.send_done(ticket.0)
        });
        if !done {
            self.shared.check();
        }
        done
    }

    fn peek(&mut self) -> Option<Header> {
        let rank = self.rank;
        let found = self.shared.with_node(|node| match node.peek(rank) {
            Some(header) => Some(header),
            None => {
                node.poll();
                node.peek(rank)
            }
        });
        if found.is_none() {
            self.shared.check();
        }
        found
    }

    fn receive_payload(&mut self, into: &mut [u8]) {
        let rank = self.rank;
        let idler = *self.shared.idler.lock();
        let mut last = (0, 0);
        loop {
            let (outcome, read, now_us) = self.shared.with_node(|node| {
                let outcome = match node.read(rank, into) {
                    Ok(false) => {
                        node.poll();
                        node.read(rank, into)
                    }
                    other => other,
                };
                (outcome, node.inboxes.bytes_read, (node.clock)())
            });
            match outcome {
                Ok(true) => return,
                Ok(false) => {
                    if read != last.0 || last.1 == 0 {
                        last = (read, now_us);
                    }
                    match idler {
                        Some(idle) => idle(rank, now_us.saturating_sub(last.1)),
                        None => core::hint::spin_loop(),
                    }
                }
                Err(message) => (self.shared.fatal)(&message),
            }
        }
    }
}
