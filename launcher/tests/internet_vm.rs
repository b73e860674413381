//! inter-net through toro-mpirun: two VMs, one rank each, talking TCP (smoltcp on the
//! ring-3 virtio-net driver) through the launcher's network hub, with the
//! `transport/inter-net/vmtest` app (`internet-pingpong`). TCG always, KVM too when
//! `toro_image::vmtest::accels()` lists it.
//!
//! - ping-pong with data checks (0 B .. 1 MiB both ways, then 50 checked round trips
//!   of 8 B and 1 KiB);
//! - one large message, checked: 64 MiB under KVM, 16 MiB under TCG (with 64 KiB
//!   frames TCG moved 16 MiB in ~2 s, checks included, on a loaded 2-core host; with
//!   1500-byte frames it moved ~3–15 MB/s and 64 MiB took 20–30 s);
//! - a peer VM killed mid-transfer (its QEMU, found through /proc by job id): the job
//!   ends within 2 s naming it;
//! - a peer VM that ends mid-transfer: it closes its connection as it ends, rank 0's
//!   transport gets the FIN with a message still in flight and ends the job naming VM 1
//!   and its address; again with rank 0 halted, blocked on the network (`halt`);
//! - ranks that block on the network (`halt`): the checks and the large message;
//! - the same on q35, where the NIC is virtio-pci and its receive interrupt MSI-X.
//!
//! Every job runs under a watchdog; after every job no process of it may be left (the
//! QEMUs carry `job=ID` on their kernel command line) and its TMPDIR must be empty.
//! One job at a time.

mod common;

use common::{accel_name, job_processes, qemu_of, serial, signal};

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use toro_image::vmtest::{self, Accel};
use toro_launcher::testutil::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_toro-mpirun");

/// The app image, built once and copied (atomically) into this test's directory.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("internet-vm-images");
        std::fs::create_dir_all(&dir).unwrap();
        let from = vmtest::image("inter-net-vmtest", "internet-pingpong");
        let to = dir.join("internet-pingpong.elf");
        let tmp = dir.join(format!("internet-pingpong.{}.tmp", std::process::id()));
        std::fs::copy(&from, &tmp).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        std::fs::rename(&tmp, &to).unwrap();
        toro_image::check_file(&to).unwrap();
        to.to_str().unwrap().to_string()
    })
}


/// The large message's size in MiB.
fn big_mib(accel: Accel) -> u32 {
    match accel {
        Accel::Tcg => 16,
        Accel::Kvm => 64,
    }
}

/// A running job: the launcher, its output line by line, its id and TMPDIR.
struct Running {
    id: String,
    tmp: TempDir,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    started: Instant,
}

/// Lines of stdout and stderr (stderr lines prefixed `stderr: `), as they come.
fn start(accel: Accel, args: &[&str]) -> Running {
    static N: AtomicU32 = AtomicU32::new(0);
    // Hexadecimal: the guest parses `job=` as such (both ends check it in the hello).
    let id = format!("{:05x}{:03x}", std::process::id() & 0xf_ffff, N.fetch_add(1, Ordering::Relaxed) & 0xfff);
    let tmp = TempDir::new(&format!("internet-{id}"));
    let mut child = Command::new(BIN)
        .args(["--accel", accel_name(accel), "-np", "2", "--vms", "2", "--timeout", "170"])
        .args(args)
        .env("TORO_JOB_ID", &id)
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx2.send(line);
        }
    });
    let mut err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        for line in s.lines() {
            let _ = tx.send(format!("stderr: {line}"));
        }
    });
    Running { id, tmp, child: Some(child), lines, seen: Vec::new(), started: Instant::now() }
}

impl Running {
    fn output(&self) -> String {
        self.seen.join("\n")
    }

    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// Waits for a line containing `needle` (within `limit` from now).
    fn wait_for(&mut self, needle: &str, limit: Duration) {
        let t = Instant::now();
        loop {
            if self.seen.iter().any(|l| l.contains(needle)) {
                return;
            }
            let left = limit.saturating_sub(t.elapsed());
            match self.lines.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(line) => self.seen.push(line),
                Err(_) if t.elapsed() >= limit => {
                    self.kill_all();
                    panic!("job {}: no {needle:?} within {limit:?}:\n{}", self.id, self.output());
                }
                Err(_) => {}
            }
        }
    }

    /// Waits for the launcher to end within `limit`; then nothing of the job may be left.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                // The reader threads end with the pipes; collect the rest.
                let end = Instant::now();
                while end.elapsed() < Duration::from_secs(2) {
                    match self.lines.recv_timeout(Duration::from_millis(100)) {
                        Ok(line) => self.seen.push(line),
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                    }
                }
                self.assert_clean();
                return status;
            }
            if t.elapsed() > limit {
                self.kill_all();
                self.drain();
                panic!("job {}: toro-mpirun still running after {limit:?} (killed):\n{}", self.id, self.output());
            }
            self.drain();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn assert_clean(&self) {
        let t = Instant::now();
        let mut left = job_processes(&self.id);
        while !left.is_empty() && t.elapsed() < Duration::from_millis(500) {
            std::thread::sleep(Duration::from_millis(10));
            left = job_processes(&self.id);
        }
        assert!(left.is_empty(), "job {}: processes left: {left:?}", self.id);
        let files: Vec<_> = std::fs::read_dir(self.tmp.path()).unwrap().collect();
        assert!(files.is_empty(), "job {}: temp files left: {files:?}", self.id);
    }

    fn kill_all(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (pid, _) in job_processes(&self.id) {
            signal(pid, libc::SIGKILL);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill_all();
    }
}




/// Bound for a whole job (the host is shared: its load decides the speed).
fn limit(accel: Accel) -> Duration {
    match accel {
        Accel::Tcg => Duration::from_secs(150),
        Accel::Kvm => Duration::from_secs(120),
    }
}

#[test]
fn ping_pong_between_two_vms_with_data_checks() {
    let img = image();
    for accel in vmtest::accels() {
        for backend in NET_BACKENDS {
            let _one = serial();
            let mut job = start(accel, &["--net-backend", backend, img]);
            let status = job.wait(limit(accel));
            let out = job.output();
            assert_eq!(status.code(), Some(0), "{accel:?} {backend}:\n{out}");
            assert_both_ranks_checked(&out, &format!("{accel:?} {backend}"));
            eprintln!("{accel:?} {backend}: ping-pong job took {:?}", job.started.elapsed());
        }
    }
}

/// The network paths between VMs: the default first (`toro-mpirun --net-backend`).
const NET_BACKENDS: [&str; 2] = ["vhost-user", "dgram"];

#[test]
fn large_message_across_vms() {
    let img = image();
    for accel in vmtest::accels() {
        for backend in NET_BACKENDS {
            let _one = serial();
            let mib = big_mib(accel);
            let big = format!("big={mib}");
            let mut job = start(accel, &["--net-backend", backend, img, &big]);
            let status = job.wait(limit(accel));
            let out = job.output();
            assert_eq!(status.code(), Some(0), "{accel:?} {backend}:\n{out}");
            let line = format!("[rank 0] big message of {mib} MiB: ");
            assert!(out.lines().any(|l| l.starts_with(&line) && l.ends_with("ms, checked")), "{accel:?} {backend}: no {line:?}:\n{out}");
            eprintln!("{accel:?} {backend}: {}", out.lines().find(|l| l.starts_with(&line)).unwrap_or(""));
        }
    }
}

#[test]
fn peer_vm_killed_mid_transfer_ends_the_job_naming_it_within_2s() {
    let img = image();
    for accel in vmtest::accels() {
        let _one = serial();
        let big = format!("big={}", big_mib(accel));
        // Rank 1 takes the first chunk, then holds: the transfer stays in flight.
        let mut job = start(accel, &[img, &big, "hold"]);
        job.wait_for("[rank 1] big message arriving", limit(accel));
        let victim = qemu_of(&job.id, 1).expect("the QEMU of vm 1");
        assert!(qemu_of(&job.id, 0).is_some());
        signal(victim, libc::SIGKILL);
        let t = Instant::now();
        let status = job.wait(Duration::from_secs(10));
        let took = t.elapsed();
        let out = job.output();
        assert_eq!(status.code(), Some(125), "{accel:?}:\n{out}");
        assert!(took < Duration::from_secs(2), "{accel:?}: the job ended {took:?} after the kill:\n{out}");
        let verdict = out.lines().rev().find(|l| l.starts_with("stderr: toro-mpirun: ")).unwrap_or("");
        assert_eq!(verdict, "stderr: toro-mpirun: rank 1 (vm 1) died: QEMU killed by signal 9 (SIGKILL)", "{accel:?}:\n{out}");
        eprintln!("{accel:?}: job ended {took:?} after VM 1's QEMU was killed");
    }
}

#[test]
fn peer_vm_ending_mid_transfer_is_named_by_the_transport() {
    for accel in vmtest::accels() {
        peer_vm_ends_mid_transfer(accel, &[]);
    }
}

/// As above, with rank 0 blocked on the network (halted) when the FIN arrives: the
/// NIC's interrupt must wake it.
#[test]
fn peer_vm_ending_mid_transfer_wakes_a_halted_rank() {
    for accel in vmtest::accels() {
        peer_vm_ends_mid_transfer(accel, &["halt"]);
    }
}

fn peer_vm_ends_mid_transfer(accel: Accel, extra: &[&str]) {
    let img = image();
    let _one = serial();
    let big = format!("big={}", big_mib(accel));
    let mut args = vec![img, big.as_str(), "die"];
    args.extend_from_slice(extra);
    let mut job = start(accel, &args);
    job.wait_for("[vm 1] toro: exit 0", limit(accel));
    let t = Instant::now();
    let status = job.wait(Duration::from_secs(10));
    let took = t.elapsed();
    let out = job.output();
    // Rank 0's fatal hook: status 16, the inter-net message naming the peer VM.
    assert_eq!(status.code(), Some(16), "{accel:?} {extra:?}:\n{out}");
    assert!(out.lines().any(|l| l.starts_with("[rank 0] toro: inter-net: ") && l.contains("lost VM 1 (ranks [1]) at 169.254.1.2")), "{accel:?} {extra:?}:\n{out}");
    assert!(took < Duration::from_secs(2), "{accel:?} {extra:?}: the job ended {took:?} after VM 1 ended:\n{out}");
    eprintln!("{accel:?} {extra:?}: rank 0 reported the lost peer {took:?} after VM 1 ended");
}

/// Ranks that block on the network instead of spinning (`halt`: the NIC's receive
/// interrupt routed to the cores, `Shared::prepare_wait`, timed halts): the data
/// checks, the checked ping-pong and the large message all pass.
#[test]
fn halting_ranks_pass_the_checks_and_move_a_large_message() {
    for accel in vmtest::accels() {
        halting_ranks_pass_the_checks(accel, &[], "microvm");
    }
}

/// q35: the NIC is virtio-pci (configuration space from the MCFG, the BARs SeaBIOS
/// assigned, notify registers cached, the receive interrupt an MSI-X message). The
/// data checks, the checked ping-pong and the large message, with ranks halting on
/// that interrupt (`halt`). Under TCG through the datagram back-end: with vhost-user,
/// QEMU 7.2 under TCG crashes when the guest unmasks the MSI-X entry (MPI jobs spin
/// there instead, `toro_launcher::qemu::msix_crashes_qemu`).
#[test]
fn q35_virtio_pci_nic_with_halting_ranks_passes_the_checks_and_moves_a_large_message() {
    for accel in vmtest::accels() {
        let backend = match accel {
            Accel::Tcg => "dgram",
            Accel::Kvm => "vhost-user",
        };
        halting_ranks_pass_the_checks(accel, &["--machine", "q35", "--net-backend", backend], &format!("q35 {backend}"));
    }
}

/// Both ranks of the ping-pong image passed its data checks and its checked ping-pong.
fn assert_both_ranks_checked(out: &str, what: &str) {
    for rank in 0..2 {
        for needle in ["data checks passed (0 B .. 1 MiB both ways)", "ping-pong checks passed (8 B and 1 KiB"] {
            assert!(out.contains(&format!("[rank {rank}] {needle}")), "{what}: rank {rank}: no {needle:?}:\n{out}");
        }
    }
}

/// One `halt` job with `launcher_args` in front of the image: exit 0, both ranks'
/// data and ping-pong checks, rank 0's large message checked.
fn halting_ranks_pass_the_checks(accel: Accel, launcher_args: &[&str], what: &str) {
    let img = image();
    let _one = serial();
    let mib = big_mib(accel);
    let big = format!("big={mib}");
    let mut args = launcher_args.to_vec();
    args.extend_from_slice(&[img, "halt", &big]);
    let mut job = start(accel, &args);
    let status = job.wait(limit(accel));
    let out = job.output();
    assert_eq!(status.code(), Some(0), "{accel:?} {what}:\n{out}");
    assert_both_ranks_checked(&out, &format!("{accel:?} {what}"));
    let line = format!("[rank 0] big message of {mib} MiB: ");
    assert!(out.lines().any(|l| l.starts_with(&line) && l.ends_with("ms, checked")), "{accel:?} {what}: no {line:?}:\n{out}");
    eprintln!("{accel:?} {what}: halting ranks: {} (job {:?})", out.lines().find(|l| l.starts_with(&line)).unwrap_or(""), job.started.elapsed());
}
