//! Runs a planned job: the network (more than one VM: the vhost-user back-end, or
//! the datagram socket pairs and hub), one QEMU process
//! group per VM, live console streaming, the job's exit status, and the
//! guarantee that nothing (process, socket, thread, temp dir) outlives the job.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM};
use toro_abi::status;

use crate::cli::Options;
use crate::plan::{rank_list, Plan, VmPlan};
use crate::hub::{Hub, QEMU_NET_FD};
use crate::qemu::{qemu_args, NetBackend, QemuSetup};
use crate::vhost_user::VhostNet;

/// Launcher exit codes besides the VMs' own statuses.
pub const EXIT_BAD_INPUT: i32 = 2;
pub const EXIT_TIMEOUT: i32 = 124;
pub const EXIT_VM_DIED: i32 = 125;

/// How long a stopped VM gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_millis(700);
/// How long to wait for a VM's last console lines after its QEMU exited.
const DRAIN: Duration = Duration::from_millis(300);
/// After a VM failed, how long the others may still end on their own before they are
/// stopped: a guest whose peer noticed it going (its connection closed) is often still
/// writing its exit line, one VM exit per byte under PVM.
const FAILURE_GRACE: Duration = Duration::from_millis(250);
const POLL: Duration = Duration::from_millis(20);

/// The job's private directory (0700): it reserves the job id on this host (a
/// second job with the same id is refused, so `job=ID` names one job's QEMUs).
/// It holds the vhost-user sockets (`vm-K.vhost`) the QEMUs connect to; the datagram
/// network needs nothing in it (socket pairs). Removed on drop.
pub struct JobDir(PathBuf);

impl JobDir {
    pub fn path_for(job_id: &str) -> PathBuf {
        std::env::temp_dir().join(format!("toro-mpirun-{job_id}"))
    }
    pub fn create(job_id: &str) -> Result<JobDir, String> {
        use std::os::unix::fs::DirBuilderExt;
        let p = Self::path_for(job_id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&p)
            .map_err(|e| format!("cannot create the job directory {}: {e}", p.display()))?;
        Ok(JobDir(p))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

enum Event {
    Out(usize, String),
    Err(usize, String),
    Eof(usize),
    Signal(i32),
    /// SIGCHLD: a child ended; wakes the loop to reap it at once rather
    /// than at the next poll.
    ChildEnded,
}

struct VmRun {
    child: Option<Child>,
    pid: i32,
    status: Option<ExitStatus>,
    exited_at: Option<Instant>,
    open_streams: u8,
    done: bool,
    said: GuestReport,
    qemu_error: Option<String>,
    /// QEMU could not start its vhost-user NIC (it would run on without a network).
    network_error: Option<String>,
    log: Option<File>,
}

/// What a guest said about how it ends, from its `toro: ` system lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GuestReport {
    /// The kernel's last line, `toro: exit S`, printed right before it
    /// writes S to isa-debug-exit: the only proof that QEMU's exit code 1
    /// means status 0 and not a QEMU error.
    pub exit: Option<u8>,
    /// The first `toro: rank R returned S` lines (a main that returned
    /// non-zero; the VM's status is the first such S).
    pub returned: Vec<String>,
    /// The last other system line (panic, CPU exception, boot failure).
    pub last_sys: Option<String>,
}

impl GuestReport {
    const MAX_RETURNED: usize = 64;

    /// Takes note of one console line.
    pub fn note(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("toro: ") else { return };
        if let Some(s) = rest.strip_prefix("exit ").and_then(|s| s.parse::<u8>().ok()) {
            self.exit = Some(s);
        } else if rest.starts_with("rank ") && rest.contains(" returned ") {
            if self.returned.len() < Self::MAX_RETURNED {
                self.returned.push(line.to_string());
            }
        } else {
            self.last_sys = Some(line.to_string());
        }
    }

    /// The system line that explains status `s`.
    pub fn reason(&self, s: u8) -> Option<&str> {
        let suffix = format!(" returned {s}");
        self.returned
            .iter()
            .find(|l| l.ends_with(&suffix))
            .or(self.last_sys.as_ref())
            .map(String::as_str)
    }
}

/// Why the job ended badly: the one line to print and the exit code.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: i32,
    pub line: String,
}

/// Puts the child in its own process group (so the terminal's SIGINT reaches
/// only the launcher, and stopping a VM stops everything it started) and
/// has the kernel kill it if the launcher dies.
#[allow(unsafe_code)]
fn own_group(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        });
    }
}

/// Gives the child `fd` as its descriptor `QEMU_NET_FD` (the hub's socket for its NIC).
#[allow(unsafe_code)]
fn pass_network(cmd: &mut Command, fd: RawFd) {
    // SAFETY: dup2 and fcntl are async-signal-safe and touch only descriptors; nothing
    // else runs between fork and exec. dup2 onto itself would keep FD_CLOEXEC, hence
    // the fcntl for that case.
    unsafe {
        cmd.pre_exec(move || {
            let ok = if fd == QEMU_NET_FD {
                libc::fcntl(fd, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, QEMU_NET_FD) == QEMU_NET_FD
            };
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

#[allow(unsafe_code)]
fn kill_group(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: sends a signal to a process group we created; no memory involved.
        unsafe { libc::kill(-pid, sig) };
    }
}

/// Stops children: SIGTERM to each process group, SIGKILL after the grace period.
fn stop(children: &mut [(&mut Option<Child>, i32)]) {
    for (c, pid) in children.iter_mut() {
        if c.is_some() {
            kill_group(*pid, libc::SIGTERM);
        }
    }
    let until = Instant::now() + TERM_GRACE;
    loop {
        let mut alive = false;
        for (c, _) in children.iter_mut() {
            if let Some(ch) = c.as_mut() {
                match ch.try_wait() {
                    Ok(None) => alive = true,
                    _ => **c = None,
                }
            }
        }
        if !alive || Instant::now() >= until {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for (c, pid) in children.iter_mut() {
        // Also reaches anything the process left in its group.
        kill_group(*pid, libc::SIGKILL);
        if let Some(mut ch) = c.take() {
            let _ = ch.wait();
        }
    }
}

/// Notes the VMs whose QEMU has exited.
fn reap(vms: &mut [VmRun], now: Instant) {
    for v in vms.iter_mut() {
        if let Some(c) = v.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                v.status = Some(st);
                v.exited_at = Some(now);
                v.child = None;
            }
        }
    }
}

fn spawn_reader(vm: usize, stream: impl Read + Send + 'static, tx: Sender<Event>, is_err: bool) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while matches!(buf.last(), Some(b'\n' | b'\r')) {
                        buf.pop();
                    }
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    let ev = if is_err { Event::Err(vm, line) } else { Event::Out(vm, line) };
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Event::Eof(vm));
    });
}

/// `[rank N] ` at the start of an application line.
fn rank_prefix(line: &str) -> Option<(u32, usize)> {
    let rest = line.strip_prefix("[rank ")?;
    let close = rest.find("] ")?;
    let n = rest[..close].parse().ok()?;
    Some((n, 6 + close + 2))
}

/// The console line as the user sees it.
pub fn format_line(vm: u32, line: &str, tag: bool) -> String {
    match (rank_prefix(line), tag) {
        (Some(_), true) => line.to_string(),
        (Some((_, at)), false) => line[at..].to_string(),
        (None, true) => format!("[vm {vm}] {line}"),
        (None, false) => line.to_string(),
    }
}

/// Names the rank (or VM) a failure belongs to, from the VM's last system line.
pub fn who(vm: &VmPlan, sys: Option<&str>) -> String {
    let number_after = |key: &str| -> Option<u32> {
        let s = sys?;
        let at = s.find(key)? + key.len();
        let digits: String = s[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    };
    if let Some(r) = number_after("rank ").filter(|r| vm.ranks.contains(r)) {
        let core = vm.core_of(r).unwrap_or(0);
        return format!("rank {r} (vm {}, core {core})", vm.index);
    }
    if let Some(c) = number_after("core ").filter(|c| *c < vm.cpus) {
        let on = vm.ranks_on_core(c);
        return if on.len() == 1 {
            format!("rank {} (vm {}, core {c})", on[0], vm.index)
        } else {
            format!("vm {} core {c} (ranks {})", vm.index, rank_list(&on))
        };
    }
    if vm.ranks.len() == 1 {
        format!("rank {} (vm {})", vm.ranks[0], vm.index)
    } else {
        format!("vm {} (ranks {})", vm.index, rank_list(&vm.ranks))
    }
}

/// Maps how a QEMU process ended to success or the one failure line.
///
/// isa-debug-exit makes QEMU exit with `status << 1 | 1`, so status 0 is
/// exit code 1 — which is also how QEMU reports its own errors. Status 0
/// therefore counts only with the guest's `toro: exit 0` line. Other odd
/// codes only come from isa-debug-exit (ring 3 has no port access, so only
/// the kernel writes it) and are taken as the guest's status.
pub fn classify(vm: &VmPlan, st: ExitStatus, said: &GuestReport, qemu_error: Option<&str>) -> Result<(), Failure> {
    use std::os::unix::process::ExitStatusExt;
    let died = |why: String| Failure {
        code: EXIT_VM_DIED,
        line: format!("{} died: {why}", who(vm, None)),
    };
    let code = match st.code() {
        Some(c) => c,
        None => {
            let sig = st.signal().unwrap_or(0);
            return Err(died(format!("QEMU killed by signal {sig}{}", signal_name(sig))));
        }
    };
    match status::from_qemu_exit_code(code) {
        Some(0) if said.exit == Some(0) => Ok(()),
        Some(0) => Err(died(match qemu_error {
            Some(e) => format!("QEMU failed: {e}"),
            None => "QEMU exited with code 1 before the guest reported a status (no `toro: exit` line)".to_string(),
        })),
        Some(s) => {
            let reason = said.reason(s);
            let mut line = format!("{} failed: {} (status {s})", who(vm, reason), status::describe(s));
            if let Some(sys) = reason.filter(|_| s >= status::PANIC) {
                line.push_str(": ");
                line.push_str(sys.strip_prefix("toro: ").unwrap_or(sys));
            }
            Err(Failure { code: s as i32, line })
        }
        None => Err(died(match qemu_error {
            Some(e) => format!("QEMU exited with code {code}: {e}"),
            None if code == 0 => "QEMU exited with code 0 without a Toro exit status (guest reset or triple fault?)".to_string(),
            None => format!("QEMU exited with code {code} without a Toro exit status"),
        })),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGABRT => " (SIGABRT)",
        _ => "",
    }
}

/// Starts the job and waits for it; returns the launcher's exit code.
pub fn run(plan: &Plan, setup: &QemuSetup, opts: &Options) -> Result<i32, String> {
    let job_dir = JobDir::create(&plan.job_id)?;
    let mut logs = Vec::new();
    if let Some(dir) = &opts.output_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("--output-dir {}: {e}", dir.display()))?;
        for vm in &plan.vms {
            let p = dir.join(format!("vm-{}.log", vm.index));
            logs.push(Some(File::create(&p).map_err(|e| format!("{}: {e}", p.display()))?));
        }
    } else {
        logs.resize_with(plan.vms.len(), || None);
    }

    let (tx, rx) = mpsc::channel();
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGCHLD]).map_err(|e| format!("cannot handle signals: {e}"))?;
    let sig_handle = signals.handle();
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for s in signals.forever() {
                let ev = if s == SIGCHLD { Event::ChildEnded } else { Event::Signal(s) };
                if tx.send(ev).is_err() {
                    break;
                }
            }
        });
    }

    // The network: only for more than one VM. Each QEMU gets its end of a socket
    // pair; the launcher closes its copies once the QEMUs run (`vm_ends`). Two VMs
    // share one pair (no hub) unless --net-hub asks for the hub.
    let mut vhost_net = None;
    let (hub, mut vm_ends) = if plan.vms.len() > 1 && setup.net == NetBackend::VhostUser {
        let macs: Vec<[u8; 6]> = plan.vms.iter().map(|vm| vm.mac).collect();
        match VhostNet::start(job_dir.path(), &macs) {
            Ok(net) => {
                vhost_net = Some(net);
                (None, Vec::new())
            }
            Err(e) => {
                sig_handle.close();
                return Err(e);
            }
        }
    } else if crate::hub::is_direct(plan.vms.len(), opts.net_hub) {
        match crate::hub::direct_link() {
            Ok(ends) => (None, ends.into_iter().map(Some).collect()),
            Err(e) => {
                sig_handle.close();
                return Err(e);
            }
        }
    } else if plan.vms.len() > 1 {
        let macs: Vec<[u8; 6]> = plan.vms.iter().map(|vm| vm.mac).collect();
        match Hub::start(&macs) {
            Ok((hub, ends)) => (Some(hub), ends.into_iter().map(Some).collect()),
            Err(e) => {
                sig_handle.close();
                return Err(e);
            }
        }
    } else {
        (None, Vec::new())
    };

    let mut vms: Vec<VmRun> = Vec::new();
    let mut start_error = None;
    for (k, vm) in plan.vms.iter().enumerate() {
        let mut cmd = Command::new(&setup.qemu);
        cmd.args(qemu_args(setup, plan, vm))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        own_group(&mut cmd);
        if let Some(Some(end)) = vm_ends.get(k) {
            pass_network(&mut cmd, end.as_raw_fd());
        }
        match cmd.spawn() {
            Ok(mut child) => {
                spawn_reader(k, child.stdout.take().unwrap(), tx.clone(), false);
                spawn_reader(k, child.stderr.take().unwrap(), tx.clone(), true);
                vms.push(VmRun {
                    pid: child.id() as i32,
                    child: Some(child),
                    status: None,
                    exited_at: None,
                    open_streams: 2,
                    done: false,
                    said: GuestReport::default(),
                    qemu_error: None,
                    network_error: None,
                    log: logs[k].take(),
                });
            }
            Err(e) => {
                start_error = Some(format!("cannot start {} for vm {k}: {e}", setup.qemu.display()));
                break;
            }
        }
    }
    drop(tx);
    // The QEMUs hold their ends now; when one exits, its end is really closed.
    vm_ends.clear();

    let start = Instant::now();
    let deadline = opts.timeout.map(|t| start + t);
    let mut failure: Option<Failure> = start_error.map(|e| Failure { code: EXIT_VM_DIED, line: e });
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();

    // `stopping`: the launcher is stopping the VMs, so QEMU's
    // "terminating on signal" lines are expected and not shown.
    let handle = |ev: Event, vms: &mut Vec<VmRun>, stdout: &mut std::io::Stdout, stderr: &mut std::io::Stderr, stopping: bool| -> Option<i32> {
        match ev {
            Event::Out(k, line) => {
                let v = &mut vms[k];
                if let Some(log) = v.log.as_mut() {
                    let _ = writeln!(log, "{line}");
                }
                v.said.note(&line);
                let _ = writeln!(stdout.lock(), "{}", format_line(k as u32, &line, opts.tag_output));
            }
            Event::Err(k, line) => {
                let v = &mut vms[k];
                if let Some(log) = v.log.as_mut() {
                    let _ = writeln!(log, "[qemu] {line}");
                }
                if !line.contains("warning:") && !line.trim().is_empty() {
                    v.qemu_error = Some(line.clone());
                }
                if crate::vhost_user::is_fallback_line(&line) {
                    v.network_error.get_or_insert(line.clone());
                }
                if !(stopping && line.contains("terminating on signal")) {
                    let _ = writeln!(stderr.lock(), "[vm {k}] {line}");
                }
            }
            Event::Eof(k) => vms[k].open_streams = vms[k].open_streams.saturating_sub(1),
            Event::Signal(s) => return Some(s),
            Event::ChildEnded => {}
        }
        None
    };

    let mut got_signal = None;
    let mut vm_failed = false;
    while failure.is_none() {
        let wait = deadline.map_or(POLL, |d| d.saturating_duration_since(Instant::now()).min(POLL));
        match rx.recv_timeout(wait) {
            Ok(ev) => {
                got_signal = got_signal.or(handle(ev, &mut vms, &mut stdout, &mut stderr, false));
                while let Ok(ev) = rx.try_recv() {
                    got_signal = got_signal.or(handle(ev, &mut vms, &mut stdout, &mut stderr, false));
                }
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
        }
        let now = Instant::now();
        reap(&mut vms, now);
        // Earliest exit first, once its last lines are in.
        let mut finished: Vec<usize> = (0..vms.len())
            .filter(|&k| {
                let v = &vms[k];
                !v.done && v.status.is_some() && (v.open_streams == 0 || now - v.exited_at.unwrap() >= DRAIN)
            })
            .collect();
        finished.sort_by_key(|&k| vms[k].exited_at);
        if let Some((k, line)) = vms.iter().enumerate().find_map(|(k, v)| v.network_error.as_ref().map(|l| (k, l))) {
            failure = Some(Failure {
                code: EXIT_VM_DIED,
                line: format!("vm {k}: QEMU could not start its vhost-user network ({}); try --net-backend dgram", line.trim()),
            });
            break;
        }
        for k in finished {
            let v = &mut vms[k];
            v.done = true;
            if let Err(f) = classify(&plan.vms[k], v.status.unwrap(), &v.said, v.qemu_error.as_deref()) {
                failure.get_or_insert(f);
                vm_failed = true;
            }
        }
        if failure.is_some() {
            break;
        }
        if let Some(s) = got_signal {
            let name = if s == SIGINT { "SIGINT" } else { "SIGTERM" };
            failure = Some(Failure { code: 128 + s, line: format!("{name} received: stopped every VM of job {}", plan.job_id) });
            break;
        }
        if vms.iter().all(|v| v.done) {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let running: Vec<String> = vms
                .iter()
                .zip(&plan.vms)
                .filter(|(v, _)| !v.done)
                .map(|(_, p)| format!("vm {} (ranks {})", p.index, rank_list(&p.ranks)))
                .collect();
            let t = opts.timeout.unwrap_or_default();
            failure = Some(Failure {
                code: EXIT_TIMEOUT,
                line: format!("timeout after {:?}: stopped {}", t, running.join(", ")),
            });
        }
    }

    // A VM failed: the others may be ending on their own this very moment (see
    // FAILURE_GRACE); let them, rather than cut their last lines.
    if vm_failed {
        let until = Instant::now() + FAILURE_GRACE;
        while got_signal.is_none() && vms.iter().any(|v| v.child.is_some()) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Ok(ev) = rx.recv_timeout(left.min(POLL)) {
                got_signal = handle(ev, &mut vms, &mut stdout, &mut stderr, false);
            }
            reap(&mut vms, Instant::now());
        }
    }

    // Stop whatever still runs: the VMs, then the hub.
    let mut pairs: Vec<(&mut Option<Child>, i32)> = vms.iter_mut().map(|v| (&mut v.child, v.pid)).collect();
    stop(&mut pairs);
    let hub_stats = hub.map(Hub::stop);
    let switch_stats = vhost_net.map(VhostNet::stop);
    sig_handle.close();
    // Print what the VMs said before they ended.
    let until = Instant::now() + DRAIN;
    while vms.iter().any(|v| v.open_streams > 0) {
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(ev) => {
                handle(ev, &mut vms, &mut stdout, &mut stderr, true);
            }
            Err(_) => break,
        }
    }
    let _ = stdout.flush();
    if let Some(stats) = hub_stats.filter(|s| s.unknown_source > 0) {
        let (vm, mac) = stats.first_unknown.unwrap_or_default();
        let mac: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(
            stderr,
            "toro-mpirun: warning: the network hub dropped {} frame(s) not from a planned MAC (first from vm {vm}, source {})",
            stats.unknown_source,
            mac.join(":")
        );
    }
    // Frames to a VM that is gone are expected when one dies (the launcher names it); the
    // others mean a guest sent something no VM of the job can take.
    if let Some(stats) = switch_stats.filter(|s| s.unknown_destination + s.oversized > 0) {
        let _ = writeln!(
            stderr,
            "toro-mpirun: warning: the vhost-user switch dropped {} frame(s) to a MAC no VM has and {} larger than the receiving VM's buffer",
            stats.unknown_destination, stats.oversized
        );
    }
    if let (Some(stats), Some(_)) = (switch_stats, std::env::var_os("TORO_SWITCH_STATS")) {
        let _ = writeln!(stderr, "toro-mpirun: switch {stats:?}");
    }
    drop(job_dir);
    Ok(match failure {
        None => 0,
        Some(f) => {
            let _ = writeln!(stderr, "toro-mpirun: {}", f.line);
            f.code
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn vm(ranks: Vec<u32>, cpus: u32) -> VmPlan {
        VmPlan { index: 1, ranks, cpus, mem_mib: 256, mac: [0; 6], ip: std::net::Ipv4Addr::LOCALHOST, cmdline: String::new() }
    }

    #[test]
    fn tagging() {
        assert_eq!(format_line(0, "[rank 3] hi", true), "[rank 3] hi");
        assert_eq!(format_line(0, "[rank 3] hi", false), "hi");
        assert_eq!(format_line(2, "toro: panic", true), "[vm 2] toro: panic");
        assert_eq!(format_line(2, "toro: panic", false), "toro: panic");
        assert_eq!(format_line(2, "[rank x] y", false), "[rank x] y");
    }

    #[test]
    fn naming() {
        let v = vm(vec![4, 5, 6, 7], 2);
        assert_eq!(who(&v, Some("toro: panic in rank 6 on core 0: boom")), "rank 6 (vm 1, core 0)");
        assert_eq!(who(&v, Some("toro: panic on core 1 at x: boom")), "vm 1 core 1 (ranks 5,7)");
        assert_eq!(who(&v, None), "vm 1 (ranks 4-7)");
        assert_eq!(who(&v, Some("toro: panic in rank 99")), "vm 1 (ranks 4-7)");
        let v = vm(vec![4, 5], 2);
        assert_eq!(who(&v, Some("toro: page fault on core 1 at 0x0")), "rank 5 (vm 1, core 1)");
    }

    fn said(lines: &[&str]) -> GuestReport {
        let mut r = GuestReport::default();
        for l in lines {
            r.note(l);
        }
        r
    }

    #[test]
    fn guest_report() {
        let r = said(&["[rank 1] hi", "toro: rank 3 returned 7", "toro: rank 2 returned 5", "toro: rank 1 returned 7",
                       "toro: exit 7"]);
        assert_eq!(r.exit, Some(7));
        assert_eq!(r.reason(7), Some("toro: rank 3 returned 7"));
        assert_eq!(r.reason(9), None);
        let r = said(&["toro: panic on core 1, rank 5, at a.rs:1: x", "toro: exit 101"]);
        assert_eq!(r.reason(101), Some("toro: panic on core 1, rank 5, at a.rs:1: x"));
        // The kernel's line when isa-debug-exit is missing is not an exit line.
        let r = said(&["toro: exit 0: no isa-debug-exit device (add -device ...)"]);
        assert_eq!(r.exit, None);
    }

    #[test]
    fn status_mapping() {
        let v = vm(vec![2, 3], 2);
        let code = |c: i32| ExitStatus::from_raw(c << 8);
        assert_eq!(classify(&v, code(1), &said(&["toro: exit 0"]), None), Ok(()));
        // With the guest's exit line, QEMU's stderr noise does not turn success into failure.
        assert_eq!(classify(&v, code(1), &said(&["toro: exit 0"]), Some("qemu: something odd")), Ok(()));
        // Exit code 1 without it: QEMU failed before the guest reported anything.
        let f = classify(&v, code(1), &said(&[]), None).unwrap_err();
        assert_eq!(f.code, EXIT_VM_DIED);
        assert_eq!(f.line, "vm 1 (ranks 2-3) died: QEMU exited with code 1 before the guest reported a status (no `toro: exit` line)");
        let f = classify(&v, code(1), &said(&[]), Some("qemu-system-x86_64: cannot load kernel")).unwrap_err();
        assert_eq!(f.code, EXIT_VM_DIED);
        assert_eq!(f.line, "vm 1 (ranks 2-3) died: QEMU failed: qemu-system-x86_64: cannot load kernel");

        let f = classify(&v, code(203), &said(&["toro: panic on core 1: oops", "toro: exit 101"]), None).unwrap_err();
        assert_eq!(f, Failure { code: 101, line: "rank 3 (vm 1, core 1) failed: panic (status 101): panic on core 1: oops".into() });
        let f = classify(&v, code(203), &said(&["toro: panic on core 0, rank 2, at src/main.rs:9: boom", "toro: exit 101"]), None)
            .unwrap_err();
        assert_eq!(f.line, "rank 2 (vm 1, core 0) failed: panic (status 101): panic on core 0, rank 2, at src/main.rs:9: boom");
        let f = classify(&v, code(221), &said(&["toro: core 0: page fault in the application (ring 3)", "toro: exit 110"]), None)
            .unwrap_err();
        assert_eq!(f.code, 110);
        assert!(f.line.starts_with("rank 2 (vm 1, core 0) failed: CPU exception in the application (status 110): core 0: page fault"), "{}", f.line);
        let f = classify(&v, code(7), &said(&["toro: rank 3 returned 3", "toro: exit 3"]), None).unwrap_err();
        assert_eq!(f, Failure { code: 3, line: "rank 3 (vm 1, core 1) failed: application exit status (status 3)".into() });
        let f = classify(&v, code(7), &said(&[]), None).unwrap_err();
        assert_eq!(f, Failure { code: 3, line: "vm 1 (ranks 2-3) failed: application exit status (status 3)".into() });
        let f = classify(&v, code(0), &said(&[]), None).unwrap_err();
        assert_eq!(f.code, EXIT_VM_DIED);
        assert!(f.line.contains("died") && f.line.contains("code 0"), "{}", f.line);
        let f = classify(&v, ExitStatus::from_raw(9), &said(&["toro: exit 0"]), None).unwrap_err();
        assert_eq!(f.line, "vm 1 (ranks 2-3) died: QEMU killed by signal 9 (SIGKILL)");
    }
}
