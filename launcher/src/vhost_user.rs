//! `--net-backend vhost-user`: the launcher is every VM's vhost-user-net back-end, so a
//! frame goes from one guest's transmit buffer into another guest's receive buffer in
//! one copy (`switch`), with no QEMU main loop, socket or system call in the data path.
//!
//! Each QEMU shares its guest RAM (`memory-backend-memfd,share=on`) and connects to a
//! Unix socket in the job directory (`vm-K.vhost`); the vhost-user protocol (memory
//! table, ring addresses, kick and call eventfds) is the rust-vmm crates'
//! (`vhost-user-backend`), one daemon per VM. A guest's kick (its write to the queue's
//! notify register, turned into an eventfd by KVM's ioeventfd) wakes that daemon's
//! worker, which pumps the switch and then keeps polling every transmit ring for
//! `POLL_AFTER_WORK` after the last frame moved, with kicks suppressed meanwhile (a
//! guest under PVM pays ~100 µs of VM exit per kick).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};

use crate::switch::{Memory, Port, Switch, SwitchStats, Vring};

/// How long a worker keeps polling the transmit rings after the last frame moved. It
/// yields the core between looks: on a host with as many cores as vCPUs a spinning
/// back-end would take the core a guest needs to produce the next frame.
pub const POLL_AFTER_WORK: Duration = Duration::from_micros(1000);
/// The guests' virtio-net queues have 256 entries.
const QUEUE_SIZE: usize = 256;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// QEMU 7.2 starts a vhost-user net device only with it (it enables the rings with
/// VHOST_USER_SET_VRING_ENABLE).
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// What the back-ends share.
struct Shared {
    switch: Mutex<Switch>,
    /// A worker is polling the rings (the others only pump once per kick).
    polling: AtomicBool,
    stopping: AtomicBool,
}

/// One VM's vhost-user-net device.
#[derive(Clone)]
struct NetDevice {
    port: usize,
    shared: Arc<Shared>,
}

impl NetDevice {
    fn switch(&self) -> std::sync::MutexGuard<'_, Switch> {
        self.shared.switch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pumps, then polls until the rings have been quiet for `POLL_AFTER_WORK`.
    fn run(&self) {
        if self.shared.polling.swap(true, Ordering::AcqRel) {
            // Another worker polls: one pump serves this kick.
            self.switch().pump();
            return;
        }
        self.switch().set_transmit_kicks(false);
        let mut last_work = Instant::now();
        loop {
            if self.switch().pump() {
                last_work = Instant::now();
                continue;
            }
            if self.shared.stopping.load(Ordering::Relaxed) || last_work.elapsed() >= POLL_AFTER_WORK {
                // Kicks back on; a buffer that came meanwhile keeps us polling.
                if self.switch().set_transmit_kicks(true) && !self.shared.stopping.load(Ordering::Relaxed) {
                    self.switch().set_transmit_kicks(false);
                    last_work = Instant::now();
                    continue;
                }
                break;
            }
            std::thread::yield_now();
        }
        self.shared.polling.store(false, Ordering::Release);
        // A kick that came while this worker was leaving found `polling` set and pumped
        // once itself; nothing is left behind.
    }
}

impl VhostUserBackend for NetDevice {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        2
    }
    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES
    }
    fn acked_features(&self, features: u64) {
        self.switch().set_features(self.port, features);
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::empty()
    }
    fn set_event_idx(&self, _enabled: bool) {}
    fn update_memory(&self, _memory: Memory) -> std::io::Result<()> {
        // The switch holds the same `GuestMemoryAtomic`, which the crate updates.
        Ok(())
    }
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }
    fn handle_event(&self, _device_event: u16, _evset: EventSet, vrings: &[Vring], _thread: usize) -> std::io::Result<()> {
        self.switch().attach(self.port, vrings);
        self.run();
        Ok(())
    }
}

/// QEMU's line when its vhost-user NIC could not start (it then runs its own virtio-net
/// with no network behind it).
pub fn is_fallback_line(line: &str) -> bool {
    line.contains("vhost") && line.contains("falling back on userspace virtio")
}

/// The running back-end of a job.
pub struct VhostNet {
    shared: Arc<Shared>,
    sockets: Vec<PathBuf>,
    threads: Vec<JoinHandle<()>>,
}

/// The socket VM `k`'s QEMU connects to.
pub fn socket_path(job_dir: &Path, k: usize) -> PathBuf {
    job_dir.join(format!("vm-{k}.vhost"))
}

impl VhostNet {
    /// Listens on one socket per VM (VM k has `macs[k]`) in `job_dir`; each QEMU must
    /// be started after this returns.
    pub fn start(job_dir: &Path, macs: &[[u8; 6]]) -> Result<VhostNet, String> {
        let memories: Vec<Memory> = macs.iter().map(|_| GuestMemoryAtomic::new(GuestMemoryMmap::new())).collect();
        let ports = macs.iter().zip(&memories).map(|(mac, m)| Port::new(*mac, m.clone())).collect();
        let shared = Arc::new(Shared { switch: Mutex::new(Switch::new(ports)), polling: AtomicBool::new(false), stopping: AtomicBool::new(false) });
        let mut net = VhostNet { shared: shared.clone(), sockets: Vec::new(), threads: Vec::new() };
        for (k, memory) in memories.into_iter().enumerate() {
            let path = socket_path(job_dir, k);
            let mut listener = Listener::new(&path, true)
                .map_err(|e| format!("vhost-user network: cannot listen on {}: {e}", path.display()))?;
            let device = NetDevice { port: k, shared: shared.clone() };
            let mut daemon = VhostUserDaemon::new(format!("toro-vhost-{k}"), device, memory)
                .map_err(|e| format!("vhost-user network: cannot start the back-end of vm {k}: {e}"))?;
            let shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("toro-vhost-{k}"))
                .spawn(move || {
                    // Errors need no report of their own: a QEMU that cannot use its NIC
                    // says so on stderr (`is_fallback_line`) or dies, and the launcher
                    // reports either; a hang-up is how every VM ends.
                    if daemon.start(&mut listener).is_ok() && !shared.stopping.load(Ordering::Relaxed) {
                        let _ = daemon.wait();
                    }
                    shared.switch.lock().unwrap_or_else(|e| e.into_inner()).detach(k);
                    // Dropping the daemon ends its worker thread.
                })
                .map_err(|e| format!("vhost-user network: cannot start a thread: {e}"))?;
            net.sockets.push(path);
            net.threads.push(thread);
        }
        Ok(net)
    }

    /// Stops every back-end thread and returns what the switch did.
    pub fn stop(mut self) -> SwitchStats {
        self.finish()
    }

    fn finish(&mut self) -> SwitchStats {
        self.shared.stopping.store(true, Ordering::Relaxed);
        // A daemon still waiting for its QEMU is let go by a connection that closes at
        // once; a connected one ends when its QEMU (stopped before this) hung up.
        for path in &self.sockets {
            drop(UnixStream::connect(path));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.shared.switch.lock().unwrap_or_else(|e| e.into_inner()).stats
    }
}

impl Drop for VhostNet {
    fn drop(&mut self) {
        self.finish();
    }
}
