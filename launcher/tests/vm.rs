//! toro-mpirun with real VMs: the hello and selftest images booted as jobs
//! of 1 to 4 QEMU VMs, under TCG and (when /dev/kvm works) KVM.
//!
//! Every job runs under a watchdog, and after every job the process table
//! is searched (through /proc) for anything of that job — a QEMU whose
//! kernel command line holds `job=ID` — and the job's TMPDIR must be empty. Jobs run one at a time
//! (they are timed, and the host may have only two cores).

mod common;

use common::{accel_name, job_processes, qemu_of, serial, signal};

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use toro_image::vmtest::{self, Accel};
use toro_launcher::testutil::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_toro-mpirun");


/// The images, built once per test process and copied (atomically, by
/// rename) into this crate's test directory under target/: another crate's
/// tests may rebuild the shared build output while a VM of ours reads it.
struct Images {
    hello: String,
    selftest: String,
    kernel_only: String,
    /// MPI programs (the `toro` glue: MPI over virtio-bus inside a VM).
    pi: String,
    jacobi: String,
    /// The MPI test suite app (examples/mpi-suite).
    suite: String,
}

fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("launcher-vm-images");
        std::fs::create_dir_all(&dir).unwrap();
        let copy = |from: std::path::PathBuf, name: &str| {
            let to = dir.join(name);
            let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
            std::fs::copy(&from, &tmp).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
            std::fs::rename(&tmp, &to).unwrap();
            to.to_str().unwrap().to_string()
        };
        let hello = copy(vmtest::image("hello", "hello"), "hello.elf");
        let selftest = copy(vmtest::image("toro-selftest", "selftest"), "selftest.elf");
        let kernel_only = copy(vmtest::kernel_only(), "kernel-only.elf");
        let pi = copy(vmtest::image("pi", "pi"), "pi.elf");
        let jacobi = copy(vmtest::image("jacobi", "jacobi"), "jacobi.elf");
        let suite = copy(vmtest::image("mpi-suite", "mpi-suite"), "mpi-suite.elf");
        for img in [&hello, &selftest, &pi, &jacobi, &suite] {
            toro_image::check_file(img.as_ref()).unwrap();
        }
        Images { hello, selftest, kernel_only, pi, jacobi, suite }
    })
}


/// A job: its id, private TMPDIR, and the launcher command.
struct Job {
    id: String,
    tmp: TempDir,
    cmd: Command,
}

impl Job {
    fn new(accel: Accel, args: &[&str]) -> Job {
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!("vt{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let tmp = TempDir::new(&format!("vm-{id}"));
        let mut cmd = Command::new(BIN);
        cmd.args(["--accel", accel_name(accel)])
            .args(args)
            .env("TORO_JOB_ID", &id)
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Job { id, tmp, cmd }
    }

    fn start(mut self) -> Running {
        let child = self.cmd.spawn().unwrap();
        Running { job: self, child: Some(child), started: Instant::now() }
    }

    /// Runs to the end within `limit`.
    fn run(self, limit: Duration) -> Finished {
        let mut r = self.start();
        let mut stdout = r.child.as_mut().unwrap().stdout.take().unwrap();
        let mut stderr = r.child.as_mut().unwrap().stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let status = r.wait(limit);
        let took = r.started.elapsed();
        Finished { status, stdout: out.join().unwrap(), stderr: err.join().unwrap(), took }
    }
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Finished {
    fn context(&self) -> String {
        format!("status {:?} after {:?}\n--- stdout\n{}--- stderr\n{}", self.status, self.took, self.stdout, self.stderr)
    }
    fn assert_code(&self, code: i32) {
        assert_eq!(self.status.code(), Some(code), "{}", self.context());
    }
    fn assert_stdout_has(&self, needle: &str) {
        assert!(self.stdout.lines().any(|l| l.contains(needle)), "no {needle:?} in:\n{}", self.context());
    }
    /// The launcher's own last line on stderr.
    fn verdict(&self) -> &str {
        self.stderr.lines().rev().find(|l| l.starts_with("toro-mpirun: ")).unwrap_or("")
    }
}

/// A started launcher; dropping it kills it and everything of its job.
struct Running {
    job: Job,
    child: Option<Child>,
    started: Instant,
}

impl Running {
    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Waits for the launcher to end; past `limit` kills it and fails.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                self.assert_clean();
                return st;
            }
            if t.elapsed() > limit {
                self.kill_all();
                panic!("job {}: toro-mpirun still running after {limit:?} (killed)", self.job.id);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Nothing of the job is left: no process, no temp file.
    fn assert_clean(&self) {
        // Processes of a job that just ended may take a moment to be reaped by us.
        let t = Instant::now();
        let mut left = job_processes(&self.job.id);
        while !left.is_empty() && t.elapsed() < Duration::from_millis(200) {
            std::thread::sleep(Duration::from_millis(10));
            left = job_processes(&self.job.id);
        }
        assert!(left.is_empty(), "job {}: processes left: {left:?}", self.job.id);
        let files: Vec<_> = std::fs::read_dir(self.job.tmp.path()).unwrap().collect();
        assert!(files.is_empty(), "job {}: temp files left: {files:?}", self.job.id);
    }

    fn kill_all(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (pid, _) in job_processes(&self.job.id) {
            signal(pid, libc::SIGKILL);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill_all();
    }
}




/// Starts a job whose ranks keep running, and waits until `ready` lines
/// containing `needle` were printed; returns the job and the stderr reader.
fn start_until(job: Job, needle: &'static str, ready: usize, limit: Duration) -> (Running, mpsc::Receiver<String>) {
    let mut r = job.start();
    let stdout = r.child.as_mut().unwrap().stdout.take().unwrap();
    let mut stderr = r.child.as_mut().unwrap().stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = 0;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(needle) {
                seen += 1;
                if seen == ready {
                    let _ = tx.send(());
                }
            }
        }
    });
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        let _ = etx.send(s);
    });
    if rx.recv_timeout(limit).is_err() {
        r.kill_all();
        panic!("job {}: {ready} lines {needle:?} not seen within {limit:?}: {}", r.job.id,
               erx.recv_timeout(Duration::from_secs(2)).unwrap_or_default());
    }
    (r, erx)
}

/// Generous bound for a job that should end by itself.
fn limit(accel: Accel) -> Duration {
    match accel {
        Accel::Tcg => Duration::from_secs(60),
        Accel::Kvm => Duration::from_secs(30),
    }
}

/// hello and the selftest ring on one layout; checks every rank's lines.
fn layout(args: &[&str], world: u32, vms: u32, cpus: u32) {
    let img = images();
    for accel in vmtest::accels() {
        let _one = serial();
        let mut all: Vec<&str> = args.to_vec();
        all.push(&img.hello);
        let f = Job::new(accel, &all).run(limit(accel));
        f.assert_code(0);
        // Nothing on stderr but QEMU's warnings (e.g. more vCPUs than KVM recommends).
        assert!(f.stderr.lines().all(|l| l.starts_with("[vm ") && l.contains(": warning: ")), "{}", f.context());
        for r in 0..world {
            // hello: one line per core of the rank's VM, every one exact.
            for c in 0..cpus {
                f.assert_stdout_has(&format!("[rank {r}] hello from core {c} of {cpus}: fp"));
            }
        }
        assert!(!f.stdout.contains("WRONG"), "{}", f.context());
        for k in 0..vms {
            f.assert_stdout_has(&format!("[vm {k}] toro: exit 0"));
        }

        let mut all: Vec<&str> = args.to_vec();
        all.extend([img.selftest.as_str(), "ring", "20"]);
        let f = Job::new(accel, &all).run(limit(accel));
        f.assert_code(0);
        let per_vm = world / vms;
        for r in 0..world {
            f.assert_stdout_has(&format!(
                "[rank {r}] ring: 20 rounds through {per_vm} ranks of vm {} (world {world}) on core {}",
                r / per_vm,
                (r % per_vm) % cpus
            ));
        }
        eprintln!("{accel:?} {args:?}: hello and ring ok, last job took {:?}", f.took);
    }
}

#[test]
fn one_vm_four_ranks() {
    layout(&["-np", "4", "--cpus-per-vm", "4"], 4, 1, 4);
}

#[test]
fn two_vms_two_ranks() {
    layout(&["-np", "4", "--vms", "2", "--cpus-per-vm", "2"], 4, 2, 2);
}

#[test]
fn four_vms_two_ranks() {
    layout(&["-np", "8", "--vms", "4", "--cpus-per-vm", "2"], 8, 4, 2);
}

#[test]
fn one_vm_eight_ranks_on_two_vcpus() {
    layout(&["-np", "8", "--cpus-per-vm", "2"], 8, 1, 2);
}

/// MPI programs in one VM: 4 ranks on 4 vCPUs, and 8 ranks as cooperative
/// threads on 2 vCPUs; each checks its answer against a sequential run.
#[test]
fn mpi_programs_in_one_vm() {
    let img = images();
    for accel in vmtest::accels() {
        let _one = serial();
        for (args, image, pass) in [
            (["-np", "4", "--cpus-per-vm", "4"], &img.pi, "[rank 0] pi: 4 ranks,"),
            (["-np", "8", "--cpus-per-vm", "2"], &img.pi, "[rank 0] pi: 8 ranks,"),
            (["-np", "4", "--cpus-per-vm", "4"], &img.jacobi, "ranks,"),
            (["-np", "8", "--cpus-per-vm", "2"], &img.jacobi, "8 ranks,"),
        ] {
            let mut all: Vec<&str> = args.to_vec();
            all.push(image);
            let f = Job::new(accel, &all).run(limit(accel));
            f.assert_code(0);
            let line = f.stdout.lines().find(|l| l.contains(pass) && l.ends_with(": PASS"));
            assert!(line.is_some(), "{accel:?} {args:?}: no PASS line\n{}", f.context());
            eprintln!("{accel:?} {args:?}: {}", line.unwrap());
        }
    }
}

/// An MPI program across VMs: 2 VMs × 2 ranks, MPI over virtio-bus inside
/// each VM and over TCP (inter-net) between them; with 2 vCPUs per VM, and with the
/// default on a small host (the vCPUs fit the host's cores: on 2 cores, one per VM,
/// its two ranks as threads on it).
#[test]
fn mpi_program_across_vms() {
    let img = images();
    for (accel, cpus) in vmtest::accels().into_iter().flat_map(|a| [(a, "2"), (a, "")]) {
        let _one = serial();
        let mut args = vec!["-np", "4", "--vms", "2"];
        if !cpus.is_empty() {
            args.extend_from_slice(&["--cpus-per-vm", cpus]);
        }
        args.push(&img.pi);
        let f = Job::new(accel, &args).run(limit(accel));
        f.assert_code(0);
        let line = f.stdout.lines().find(|l| l.contains("[rank 0] pi: 4 ranks,") && l.ends_with(": PASS"));
        assert!(line.is_some(), "{accel:?}: no PASS line\n{}", f.context());
        for k in 0..2 {
            f.assert_stdout_has(&format!("[vm {k}] toro: exit 0"));
        }
    }
}

/// The whole MPI suite across VMs (`small`: messages up to 40 KB, so TCP under TCG
/// stays quick): every collective takes the hierarchical path (inside each VM, then
/// between the VMs' leaders, then inside each VM). 2 VMs × 2 ranks in blocks, and
/// 2 VMs × 3 ranks placed cyclically (each VM's ranks are not consecutive: rank-ordered
/// reductions with non-commutative operations must stay flat there).
#[test]
fn mpi_suite_across_vms_with_hierarchical_collectives() {
    let img = images();
    for accel in vmtest::accels() {
        // The last run takes the other network path, QEMU's datagram sockets.
        for (np, layout) in [("4", &["--vms", "2", "--cpus-per-vm", "2"][..]), ("6", &["--vms", "2", "--cpus-per-vm", "2", "--map-by", "cyclic"][..]),
                             ("4", &["--vms", "2", "--cpus-per-vm", "2", "--net-backend", "dgram"][..])] {
            let _one = serial();
            let mut args = vec!["-np", np];
            args.extend_from_slice(layout);
            args.extend_from_slice(&[&img.suite, "small"]);
            let f = Job::new(accel, &args).run(2 * limit(accel));
            f.assert_code(0);
            f.assert_stdout_has(&format!("[rank 0] suite: {np} ranks in 2 VMs: hierarchical collectives"));
            f.assert_stdout_has("[rank 0] suite: derived struct datatype");
            f.assert_stdout_has("[rank 0] suite: all passed");
            for k in 0..2 {
                f.assert_stdout_has(&format!("[vm {k}] toro: exit 0"));
            }
            eprintln!("{accel:?} {args:?}: suite took {:?}", f.took);
        }
    }
}

/// The MPI suite (`small`) across 2 VMs × 2 ranks on q35, whose NIC is virtio-pci:
/// point-to-point, collectives (hierarchical), derived datatypes, each checked, with
/// `TORO_STATS=1`. Under KVM the waiting ranks halt on the NIC's MSI-X interrupt; under
/// TCG (vhost-user) they poll (`toro_launcher::qemu::msix_crashes_qemu`).
#[test]
fn mpi_suite_across_vms_on_q35() {
    let img = images();
    for accel in vmtest::accels() {
        let _one = serial();
        let args = ["--machine", "q35", "-np", "4", "--vms", "2", "--cpus-per-vm", "2", "-x", "TORO_STATS=1", &img.suite, "small"];
        let f = Job::new(accel, &args).run(2 * limit(accel));
        f.assert_code(0);
        f.assert_stdout_has("[rank 0] suite: 4 ranks in 2 VMs: hierarchical collectives");
        f.assert_stdout_has("[rank 0] suite: derived struct datatype");
        f.assert_stdout_has("[rank 0] suite: all passed");
        for k in 0..2 {
            f.assert_stdout_has(&format!("[vm {k}] toro: exit 0"));
            f.assert_stdout_has(&format!("toro: vm {k} stats: "));
        }
        eprintln!("{accel:?} q35: suite took {:?}", f.took);
        for line in f.stdout.lines().filter(|l| l.contains(" stats: ")) {
            eprintln!("  {line}");
            if accel == Accel::Kvm {
                // Ranks that wait on the network halt until the MSI-X interrupt (or the
                // timer) wakes them; a VM that fell back to polling would halt never.
                let halts: u64 = line
                    .split(" timed halts")
                    .next()
                    .and_then(|before| before.rsplit(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("no timed halts count in {line:?}"));
                assert!(halts > 0, "the ranks never halted on the network under KVM: {line}");
            }
        }
    }
}

/// The MPI suite across 4 VMs × 2 ranks (2 VMs: the test above): point-to-point in
/// every form and every collective, each checked against a local sequential result;
/// virtio-bus inside each VM, inter-net between them; `small` (messages up to 40 KB,
/// still above inter-net's 16 KiB eager limit). Under TCG only: on the loaded 2-core
/// host (18:51 UTC, load ~11) it took 154 s under TCG and 219 s under KVM (8 vCPUs
/// spinning while they wait for the network on 2 host cores, each PVM exit costly).
#[test]
fn mpi_suite_across_four_vms_of_two_ranks() {
    let img = images();
    let accel = Accel::Tcg;
    let _one = serial();
    let f = Job::new(accel, &["-np", "8", "--vms", "4", "--cpus-per-vm", "2", img.suite.as_str(), "small"]).run(Duration::from_secs(480));
    f.assert_code(0);
    f.assert_stdout_has("[rank 0] suite: 8 ranks on 2 cores");
    f.assert_stdout_has("[rank 0] suite: 8 ranks in 4 VMs: hierarchical collectives");
    for check in ["send/receive forms", "tags out of order", "any source, non-overtaking", "probe and matched probe",
                  "outstanding immediate sends/receives", "barrier x100", "broadcast, reduce, allreduce", "bit-identical float allreduce",
                  "derived struct datatype"] {
        assert!(f.stdout.lines().any(|l| l.starts_with("[rank 0] suite: ") && l.contains(check) && l.ends_with(" ok")), "{accel:?}: no {check:?}:\n{}", f.context());
    }
    f.assert_stdout_has("[rank 0] suite: all passed");
    for k in 0..4 {
        f.assert_stdout_has(&format!("[vm {k}] toro: exit 0"));
    }
    eprintln!("{accel:?} suite, 8 ranks on 4 VMs: {:?}", f.took);
}

/// A rank that computes for 3 s without any MPI call (its VM then polls no NIC and
/// acknowledges nothing) while rank 0, in the other VM, streams it 8 MiB and waits in a
/// collective: the peer must not be declared lost (it once was after 1.5 s of silence).
#[test]
fn rank_computing_3s_without_mpi_calls_keeps_its_peer() {
    let img = images();
    for accel in vmtest::accels() {
        let _one = serial();
        let f = Job::new(accel, &["-np", "2", "--vms", "2", &img.suite, "compute", "3000"]).run(limit(accel) * 2);
        f.assert_code(0);
        f.assert_stdout_has("[rank 0] suite: compute 3000 ok");
        assert!(f.took >= Duration::from_secs(3), "{}", f.context());
        eprintln!("{accel:?}: compute 3 s between collectives across 2 VMs: {:?}", f.took);
    }
}

#[test]
fn panicking_rank_is_named_and_ends_the_job() {
    let img = images();
    for accel in vmtest::accels() {
        let _one = serial();
        // Rank 3 (VM 1, core 1) panics; every other rank keeps running.
        let f = Job::new(accel, &["-np", "4", "--vms", "2", "--cpus-per-vm", "2", &img.selftest, "panic-rank", "3"]).run(limit(accel));
        f.assert_code(101);
        let v = f.verdict();
        assert!(
            v.starts_with("toro-mpirun: rank 3 (vm 1, core 1) failed: panic (status 101): panic on core 1, rank 3, at ")
                && v.ends_with(": deliberate panic in rank 3"),
            "{}",
            f.context()
        );
        f.assert_stdout_has("[vm 1] toro: panic on core 1, rank 3, at ");
        // A main that returns non-zero: the status and the rank that returned it.
        let f = Job::new(accel, &["-np", "2", &img.selftest, "exit-code", "7"]).run(limit(accel));
        f.assert_code(7);
        assert!(f.verdict().ends_with("failed: application exit status (status 7)"), "{}", f.context());
        assert!(f.verdict().starts_with("toro-mpirun: rank "), "{}", f.context());
    }
}

#[test]
fn bad_image_is_refused_before_anything_starts() {
    let img = images();
    let _one = serial();
    let f = Job::new(Accel::Tcg, &["-np", "1", &img.kernel_only]).run(Duration::from_secs(10));
    f.assert_code(2);
    assert_eq!(f.stderr.lines().count(), 1, "{}", f.context());
    assert!(f.stderr.starts_with("toro-mpirun: error: image ") && f.stderr.contains("not a Toro application image"),
            "{}", f.context());
}

#[test]
fn killed_qemu_ends_the_job_within_2s() {
    let img = images();
    for accel in vmtest::accels() {
        let _one = serial();
        let job = Job::new(accel, &["-np", "4", "--vms", "2", &img.selftest, "sleep", "60"]);
        let id = job.id.clone();
        let (mut r, err) = start_until(job, "selftest: sleeping", 4, limit(accel));
        let victim = qemu_of(&id, 1).expect("the QEMU of vm 1");
        assert!(qemu_of(&id, 0).is_some());
        signal(victim, libc::SIGKILL);
        let t = Instant::now();
        let st = r.wait(Duration::from_secs(5));
        let took = t.elapsed();
        let err = err.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!(st.code(), Some(125), "{err}");
        assert!(took < Duration::from_secs(2), "took {took:?}: {err}");
        assert_eq!(err.lines().last().unwrap_or(""), "toro-mpirun: vm 1 (ranks 2-3) died: QEMU killed by signal 9 (SIGKILL)",
                   "{err}");
        eprintln!("{accel:?}: launcher ended {took:?} after QEMU was killed");
    }
}

#[test]
fn timeout_stops_every_vm() {
    let img = images();
    for accel in vmtest::accels() {
        let _one = serial();
        let f = Job::new(accel, &["-np", "4", "--vms", "2", "--timeout", "3", &img.selftest, "sleep", "60"])
            .run(Duration::from_secs(20));
        f.assert_code(124);
        assert_eq!(f.verdict(), "toro-mpirun: timeout after 3s: stopped vm 0 (ranks 0-1), vm 1 (ranks 2-3)", "{}", f.context());
        // Both VMs were up and running their ranks when the time ran out.
        for r in 0..4 {
            f.assert_stdout_has(&format!("[rank {r}] selftest: sleeping 60 s"));
        }
        assert!(f.took >= Duration::from_secs(3) && f.took < Duration::from_secs(5), "{}", f.context());
    }
}

#[test]
fn sigint_stops_every_vm() {
    let img = images();
    for accel in vmtest::accels() {
        let _one = serial();
        let job = Job::new(accel, &["-np", "4", "--vms", "2", &img.selftest, "sleep", "60"]);
        let (mut r, err) = start_until(job, "selftest: sleeping", 4, limit(accel));
        signal(r.pid(), libc::SIGINT);
        let t = Instant::now();
        let st = r.wait(Duration::from_secs(5));
        let took = t.elapsed();
        let err = err.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!(st.code(), Some(130), "{err}");
        assert!(took < Duration::from_secs(2), "took {took:?}: {err}");
        assert!(err.lines().last().unwrap_or("").starts_with("toro-mpirun: SIGINT received: stopped every VM of job "), "{err}");
    }
}
