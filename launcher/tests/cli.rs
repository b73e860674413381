//! The launcher as a user runs it: bad input, dry runs, and process
//! management with a fake QEMU (a shell script), so no VM image or KVM is
//! needed. Every test is bounded in time.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use toro_launcher::testutil::{write_script, FakeImage, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_toro-mpirun");

/// A sandbox: a valid image, a fake QEMU, a private TMPDIR.
struct Sandbox {
    dir: TempDir,
}

const FAKE_QEMU_HEAD: &str = r#"
while [ $# -gt 0 ]; do
  if [ "$1" = -append ]; then cmdline="$2"; fi
  if [ "$1" = -chardev ]; then chardevs="$chardevs $2"; fi
  shift
done
vm=${cmdline#*vm=}; vm=${vm%% *}
echo $$ >> "$SANDBOX/pids"
"#;

impl Sandbox {
    fn new(tag: &str) -> Sandbox {
        let dir = TempDir::new(tag);
        FakeImage::default().write(&dir.path().join("app.elf"));
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        let s = Sandbox { dir };
        s.qemu("exit 1");
        s
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// The fake QEMU runs `body` with `$vm` set from the command line.
    fn qemu(&self, body: &str) {
        write_script(&self.path("qemu"), &format!("{FAKE_QEMU_HEAD}{body}"));
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(["--qemu", self.path("qemu").to_str().unwrap(), "--accel", "tcg"]);
        c.args(args);
        c.env("SANDBOX", self.dir.path())
            .env("TMPDIR", self.path("tmp"))
            .env("TORO_JOB_ID", "t1")
            .stdin(Stdio::null());
        c
    }
    fn image(&self) -> String {
        self.path("app.elf").to_str().unwrap().to_string()
    }
    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path("pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
    /// Nothing of the job is left: no process it started, no temp file.
    fn assert_clean(&self) {
        for pid in self.pids() {
            assert!(!alive(pid), "process {pid} of the job is still running");
        }
        let left: Vec<_> = std::fs::read_dir(self.path("tmp")).unwrap().collect();
        assert!(left.is_empty(), "temp files left: {left:?}");
    }
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
    }
}

/// Runs to completion within `limit`, or kills and fails.
fn run(mut c: Command, limit: Duration) -> Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY-free: libc::kill on a pid we started.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid, libc::SIGKILL)
            };
            panic!("toro-mpirun did not finish within {limit:?}");
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Bad input: exit 2, one line `toro-mpirun: error: ...`, nothing started.
fn expect_bad(s: &Sandbox, args: &[&str], expect: &str) {
    expect_bad_cmd(s, s.cmd(args), expect)
}

fn expect_bad_cmd(s: &Sandbox, c: Command, expect: &str) {
    let out = run(c, Duration::from_secs(10));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(err.starts_with("toro-mpirun: error: "), "{err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.contains(expect), "{err:?} does not contain {expect:?}");
    assert!(out.stdout.is_empty());
    assert!(s.pids().is_empty(), "something was started");
    s.assert_clean();
}

#[test]
fn bad_rank_counts_and_placements() {
    let s = Sandbox::new("bad-np");
    let img = s.image();
    expect_bad(&s, &["-np", "0", &img], "at least 1");
    expect_bad(&s, &["-np", "-3", &img], "at least 1");
    expect_bad(&s, &[&img], "missing -np");
    expect_bad(&s, &["-np", "2", "--vms", "3", &img], "every VM needs at least one rank");
    expect_bad(&s, &["-np", "2", "--vms", "0", &img], "at least 1");
    expect_bad(&s, &["-np", "200", &img], "at most 128");
    expect_bad(&s, &["-np", "4", "--cpus-per-vm", "65", &img], "--cpus-per-vm");
    expect_bad(&s, &["-np", "4", "--vms", "2", "--ranks-per-vm", "2", &img], "cannot be used with");
    expect_bad(&s, &["-np", "4", "--mem", "16M", &img], "--mem");
    expect_bad(&s, &["-np", "4", "--timeout", "soon", &img], "--timeout");
    expect_bad(&s, &["-np", "4", "-x", "1BAD=2", &img], "variable name");
    expect_bad(&s, &["-np", "4", "--map-by", "diagonal", &img], "diagonal");
    expect_bad(&s, &["-np", "4", "--bogus", &img], "--bogus");
    expect_bad(&s, &["-np", "4000", "--vms", "40", "--map-by", "cyclic", &img], "command line");
}

#[test]
fn bad_images() {
    let s = Sandbox::new("bad-image");
    expect_bad(&s, &["-np", "1", &s.path("missing.elf").to_string_lossy()], "no such file");
    expect_bad(&s, &["-np", "1", &s.path("tmp").to_string_lossy()], "cannot read it");
    expect_bad(&s, &["-np", "1", &s.path("qemu").to_string_lossy()], "not an ELF file");
    let cases = [
        (FakeImage { machine: 40, ..Default::default() }, "not a 64-bit x86-64 ELF file"),
        (FakeImage { class: 1, ..Default::default() }, "not a 64-bit x86-64 ELF file"),
        (FakeImage { pvh_note: false, ..Default::default() }, "no PVH entry note"),
        (FakeImage { app_header: false, ..Default::default() }, "not a Toro application image"),
        (FakeImage { abi_version: 7, ..Default::default() }, "built for Toro ABI 7,"),
        (FakeImage { app_entry: 0x1000, ..Default::default() }, "corrupt Toro application header"),
    ];
    for (i, (img, msg)) in cases.into_iter().enumerate() {
        let p = s.path(&format!("bad{i}.elf"));
        img.write(&p);
        expect_bad(&s, &["-np", "1", p.to_str().unwrap()], msg);
    }
}

#[test]
fn missing_tools_and_kvm() {
    let s = Sandbox::new("bad-tools");
    let img = s.image();
    let mut c = Command::new(BIN);
    c.args(["-np", "1", "--accel", "tcg", &img]).env("PATH", s.path("tmp")).env("TMPDIR", s.path("tmp"));
    expect_bad_cmd(&s, c, "apt-get install qemu-system-x86");
    let mut c = Command::new(BIN);
    c.args(["-np", "1", "--accel", "tcg", "--qemu", "/nonexistent/qemu", &img]).env("TMPDIR", s.path("tmp"));
    expect_bad_cmd(&s, c, "/nonexistent/qemu not found");
    let mut c = s.cmd(&["-np", "1", "--accel", "kvm", &img]);
    c.env("TORO_KVM_DEVICE", "/dev/null");
    expect_bad_cmd(&s, c, "--accel kvm but KVM is not usable");
    // auto falls back to TCG when KVM is not usable.
    let mut c = s.cmd(&["-np", "1", "--accel", "auto", "--dry-run", &img]);
    c.env("TORO_KVM_DEVICE", "/dev/null");
    let out = run(c, Duration::from_secs(10));
    assert!(text(&out.stdout).contains("-accel tcg -cpu max"));
}

#[test]
fn bad_config() {
    let s = Sandbox::new("bad-config");
    std::fs::write(s.path("p.toml"), "np = 2\nvmz = 2\n").unwrap();
    expect_bad(&s, &["--config", s.path("p.toml").to_str().unwrap(), &s.image()], "unknown key `vmz`");
    expect_bad(&s, &["--config", s.path("none.toml").to_str().unwrap(), &s.image()], "cannot read");
}

fn dry(s: &Sandbox, args: &[&str]) -> String {
    let mut all = vec!["--dry-run"];
    all.extend_from_slice(args);
    let out = run(s.cmd(&all), Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(s.pids().is_empty(), "a dry run started something");
    s.assert_clean();
    text(&out.stdout)
}

#[test]
fn dry_run_plan_and_commands() {
    let s = Sandbox::new("dry");
    let img = s.image();
    let job_dir = s.path("tmp").join("toro-mpirun-t1");
    // By default (vhost-user): the launcher is the VMs' network back-end, guest RAM
    // shared with it (memfd), a vhost-user socket per VM in the job directory.
    let out = dry(&s, &["-np", "6", "--vms", "2", "--cpus-per-vm", "2", "--mem", "512M", &img, "a b", "-v"]);
    assert_eq!(out, dry(&s, &["-np", "6", "--vms", "2", "--cpus-per-vm", "2", "--mem", "512M", "--net-backend", "vhost-user", &img, "a b", "-v"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "job t1");
    assert_eq!(lines[1], "world 6 ranks, 2 VMs, map-by block, machine microvm, accel tcg");
    assert_eq!(lines[2], format!(
        "network: vhost-user back-end in toro-mpirun (guest RAM a shared memfd, VM K's QEMU connects to {}/vm-K.vhost; \
         frames copied from ring to ring), 169.254.1.1/16", job_dir.display()));
    assert_eq!(lines[3], "vm 0: ranks 0-2, 2 vCPUs, 512M, mac 02:74:6f:00:00:00, ip 169.254.1.1/16");
    assert_eq!(lines[4], "vm 1: ranks 3-5, 2 vCPUs, 512M, mac 02:74:6f:00:00:01, ip 169.254.1.2/16");
    assert_eq!(&lines[5..11], ["rank 0: vm 0 core 0", "rank 1: vm 0 core 1", "rank 2: vm 0 core 0",
        "rank 3: vm 1 core 0", "rank 4: vm 1 core 1", "rank 5: vm 1 core 0"]);
    assert_eq!(lines[12], format!(
        "command vm 1: {} -M microvm,acpi=off,x-option-roms=off,rtc=off,memory-backend=mem \
         -accel tcg -cpu max -smp 2 -m 512M \
         -object memory-backend-memfd,id=mem,size=512M,share=on \
         -nodefaults -no-user-config -nographic -no-reboot -chardev stdio,id=con,mux=on -serial chardev:con \
         -device virtio-serial-device -device virtconsole,chardev=con -device isa-debug-exit,iobase=0xf4,iosize=4 \
         -chardev socket,id=vhost0,path={}/vm-1.vhost -netdev vhost-user,id=net0,chardev=vhost0 \
         -device virtio-net-device,netdev=net0,mac=02:74:6f:00:00:01 \
         -kernel {img} -append 'cpus=2 world=6 ranks=3-5 vm=1 vms=2 job=t1 place=0-2@2/3-5@2 \
         mac=02:74:6f:00:00:01 ip=169.254.1.2/16 ipbase=169.254.1.1 -- a%20b -v'",
        s.path("qemu").display(), job_dir.display()));
    assert_eq!(lines.len(), 13);
    // --net-backend dgram: QEMU's datagram netdev on an inherited socket pair.
    let dg = dry(&s, &["-np", "6", "--vms", "2", "--cpus-per-vm", "2", "--mem", "512M", "--net-backend", "dgram", &img, "a b", "-v"]);
    let dg_lines: Vec<&str> = dg.lines().collect();
    assert_eq!(dg_lines[2], "network: one Unix datagram socket pair between the two QEMUs (fd 3 in each; frames up to 69632 bytes), 169.254.1.1/16");
    assert_eq!(dg_lines[3..11], lines[3..11]);
    assert_eq!(dg_lines[12], format!(
        "command vm 1: {} -M microvm,acpi=off,x-option-roms=off,rtc=off -accel tcg -cpu max -smp 2 -m 512M \
         -nodefaults -no-user-config -nographic -no-reboot -chardev stdio,id=con,mux=on -serial chardev:con \
         -device virtio-serial-device -device virtconsole,chardev=con -device isa-debug-exit,iobase=0xf4,iosize=4 \
         -netdev dgram,id=net0,local.type=fd,local.str=3 -device virtio-net-device,netdev=net0,mac=02:74:6f:00:00:01 \
         -kernel {img} -append 'cpus=2 world=6 ranks=3-5 vm=1 vms=2 job=t1 place=0-2@2/3-5@2 \
         mac=02:74:6f:00:00:01 ip=169.254.1.2/16 ipbase=169.254.1.1 -- a%20b -v'",
        s.path("qemu").display()));
    assert_eq!(dg_lines.len(), 13);
    // --net-hub: the datagram path (without --net-backend too) through the launcher's hub,
    // the same VMs and commands.
    let hub = dry(&s, &["-np", "6", "--vms", "2", "--cpus-per-vm", "2", "--mem", "512M", "--net-hub", &img, "a b", "-v"]);
    let hub_lines: Vec<&str> = hub.lines().collect();
    assert_eq!(hub_lines[2], "network: L2 hub in toro-mpirun (a Unix datagram socket pair per VM, fd 3 in QEMU; frames up to 69632 bytes), 169.254.1.1/16");
    assert_eq!(hub_lines[3..], dg_lines[3..]);
    // Three VMs: the same vhost-user back-end by default, or the hub (dgram).
    let three = dry(&s, &["-np", "3", "--vms", "3", &img]);
    assert!(three.contains("network: vhost-user back-end") && three.contains("vm-2.vhost"), "{three}");
    let three = dry(&s, &["-np", "3", "--vms", "3", "--net-backend", "dgram", &img]);
    assert!(three.contains("network: L2 hub in toro-mpirun"), "{three}");
    // A single VM has no network, whatever the back-end.
    let one = dry(&s, &["-np", "2", &img]);
    assert!(one.contains("network: none (one VM)") && !one.contains("memfd") && !one.contains("vhost"), "{one}");
    // The hub is part of the datagram path.
    let out = run(s.cmd(&["-np", "2", "--vms", "2", "--net-hub", "--net-backend", "vhost-user", "--dry-run", &img]), Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stderr), "toro-mpirun: error: --net-hub goes with --net-backend dgram\n");
}

#[test]
fn dry_run_single_vm_cyclic_q35_env() {
    let s = Sandbox::new("dry2");
    let img = s.image();
    let out = dry(&s, &["-n", "3", "--machine", "q35", "-x", "A=x y", "--spin", "900", &img]);
    assert!(out.contains("network: none (one VM)"), "{out}");
    assert!(!out.contains("-netdev") && !out.contains("L2 hub"), "{out}");
    assert!(out.contains("-M q35 "), "{out}");
    assert!(out.contains("place=0-2@"), "{out}");
    assert!(out.contains(" spin=900 env.A=x%20y'"), "{out}");
    let out = dry(&s, &["-np", "4", "--vms", "2", "--map-by", "cyclic", "--machine", "q35", &img]);
    assert!(out.contains("vm 0: ranks 0,2,"), "{out}");
    assert!(out.contains("rank 1: vm 1 core 0"), "{out}");
    assert!(out.contains("virtio-net-pci,romfile=,netdev=net0"), "{out}");
    let out = dry(&s, &["-np", "5", "--ranks-per-vm", "2", &img]);
    assert!(out.contains("world 5 ranks, 3 VMs"), "{out}");
    assert!(out.contains("vm 2: ranks 4, 1 vCPU,"), "{out}");
}

/// q35 starts with qboot when the QEMU binary's prefix has `share/qemu/qboot.rom`
/// (Debian's does), SeaBIOS (no `-bios`) otherwise; microvm never gets `-bios`.
#[test]
fn dry_run_q35_uses_qboot_beside_qemu() {
    let s = Sandbox::new("qboot");
    let img = s.image();
    std::fs::create_dir_all(s.path("prefix/bin")).unwrap();
    write_script(&s.path("prefix/bin/qemu-system-x86_64"), "exit 1");
    let with_qemu = |machine: &str| {
        let mut c = Command::new(BIN);
        let qemu = s.path("prefix/bin/qemu-system-x86_64");
        c.args(["--qemu", qemu.to_str().unwrap(), "--accel", "tcg", "--dry-run", "-np", "2", "--vms", "2", "--machine", machine, &img]);
        c.env("TMPDIR", s.path("tmp")).env("TORO_JOB_ID", "t1").stdin(Stdio::null());
        let out = run(c, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let out = with_qemu("q35");
    assert!(out.contains("-M q35") && !out.contains("-bios"), "no qboot.rom: SeaBIOS\n{out}");
    std::fs::create_dir_all(s.path("prefix/share/qemu")).unwrap();
    std::fs::write(s.path("prefix/share/qemu/qboot.rom"), b"rom").unwrap();
    let rom = std::fs::canonicalize(s.path("prefix/share/qemu/qboot.rom")).unwrap();
    let out = with_qemu("q35");
    assert_eq!(out.matches(&format!("-bios {}", rom.display())).count(), 2, "both VMs start with qboot\n{out}");
    let out = with_qemu("microvm");
    assert!(!out.contains("-bios"), "microvm keeps its own firmware\n{out}");
}

/// q35 under TCG with vhost-user: the guest's ranks poll the NIC (`netwait=spin`, a
/// key, before the application's arguments), since QEMU 7.2 crashes when the guest
/// unmasks the NIC's MSI-X entry there; not with the datagram back-end.
#[test]
fn dry_run_q35_tcg_vhost_user_waits_by_polling() {
    let s = Sandbox::new("dry-q35-spin");
    let img = s.image();
    let out = dry(&s, &["-np", "2", "--vms", "2", "--machine", "q35", "--accel", "tcg", &img, "small"]);
    assert!(out.contains(" netwait=spin -- small'"), "{out}");
    let out = dry(&s, &["-np", "2", "--vms", "2", "--machine", "q35", "--accel", "tcg", &img]);
    assert!(out.contains(" netwait=spin'"), "{out}");
    let out = dry(&s, &["-np", "2", "--vms", "2", "--machine", "q35", "--accel", "tcg", "--net-backend", "dgram", &img, "small"]);
    assert!(!out.contains("netwait"), "{out}");
    let out = dry(&s, &["-np", "2", "--vms", "2", "--accel", "tcg", &img, "small"]);
    assert!(!out.contains("netwait"), "{out}");
}

#[test]
fn config_profile_and_overrides() {
    let s = Sandbox::new("config");
    std::fs::write(s.path("p.toml"), "np = 4\nvms = 2\nmem = \"300M\"\nmachine = \"q35\"\n[env]\nB = \"2\"\n").unwrap();
    let cfg = s.path("p.toml");
    let out = dry(&s, &["--config", cfg.to_str().unwrap(), &s.image()]);
    assert!(out.contains("world 4 ranks, 2 VMs") && out.contains("-m 300M") && out.contains("-M q35"), "{out}");
    assert!(out.contains("env.B=2"), "{out}");
    let out = dry(&s, &["--config", cfg.to_str().unwrap(), "-np", "6", "--ranks-per-vm", "6", "--mem", "1G", &s.image()]);
    assert!(out.contains("world 6 ranks, 1 VM,") && out.contains("-m 1024M"), "{out}");
    // The shipped profiles are valid.
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/4vms.toml");
    let out = dry(&s, &["--config", configs.to_str().unwrap(), &s.image()]);
    assert!(out.contains("world 8 ranks, 4 VMs"), "{out}");
}

/// A job run to the end, with its output.
fn job(s: &Sandbox, args: &[&str], limit: Duration) -> (Option<i32>, String, String, Duration) {
    let t = Instant::now();
    let out = run(s.cmd(args), limit);
    let took = t.elapsed();
    s.assert_clean();
    (out.status.code(), text(&out.stdout), text(&out.stderr), took)
}

#[test]
fn each_vm_gets_its_own_network_socket_as_fd_3() {
    let s = Sandbox::new("netfd");
    // The fake QEMU names its fd 3 (a socket, one per VM) and checks that it holds no
    // other VM's socket (no descriptor but 0-3 and the shell's own above 9).
    s.qemu(r#"
echo "[rank $vm] fd3 $(readlink /proc/$$/fd/3 | sed 's/:.*//')"
ls /proc/$$/fd > "$SANDBOX/fds.$vm"
echo "[rank $vm] other descriptors $(awk '$1 > 3 && $1 < 10' "$SANDBOX/fds.$vm" | wc -l)"
echo "toro: exit 0"
exit 1"#);
    let img = s.image();
    let (code, out, err, _) = job(&s, &["-np", "3", "--vms", "3", "--net-backend", "dgram", &img], Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    for vm in 0..3 {
        assert!(out.contains(&format!("[rank {vm}] fd3 socket\n")), "{out}");
        assert!(out.contains(&format!("[rank {vm}] other descriptors 0\n")), "{out}");
    }
    // One VM: no network, no socket at fd 3 (the shell may put a pipe there).
    let (code, out, err, _) = job(&s, &["-np", "1", &img], Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("[rank 0] fd3 ") && !out.contains("fd3 socket"), "{out}");
}

#[test]
fn each_vm_gets_its_own_vhost_user_socket_and_no_inherited_one() {
    let s = Sandbox::new("vhostfd");
    // The fake QEMU checks that the socket its -chardev names is there (the launcher
    // listens on it before starting QEMU) and that it inherited no socket at fd 3.
    s.qemu(r#"
path=${chardevs##*path=}; path=${path%% *}
if [ -S "$path" ]; then echo "[rank $vm] listening ${path##*/}"; fi
echo "[rank $vm] fd3 $(readlink /proc/$$/fd/3 | sed 's/:.*//')"
echo "toro: exit 0"
exit 1"#);
    let img = s.image();
    let (code, out, err, took) = job(&s, &["-np", "3", "--vms", "3", "--net-backend", "vhost-user", &img], Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    for vm in 0..3 {
        assert!(out.contains(&format!("[rank {vm}] listening vm-{vm}.vhost\n")), "{out}");
        assert!(!out.contains(&format!("[rank {vm}] fd3 socket")), "{out}");
    }
    // Nobody connected: the back-end's threads still end at once.
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn success_streams_tagged_whole_lines() {
    let s = Sandbox::new("ok");
    s.qemu(r#"
echo "toro: vm $vm up"
if [ "$vm" = 0 ]; then printf '[rank 0] par'; sleep 0.2; echo 'tial'; else sleep 0.1; echo "[rank 1] hello"; fi
echo "toro: exit 0"
exit 1"#);
    let img = s.image();
    let (code, out, err, _) = job(&s, &["-np", "2", "--vms", "2", "--output-dir", s.path("logs").to_str().unwrap(), &img], Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, ["[rank 0] partial", "[rank 1] hello", "[vm 0] toro: exit 0", "[vm 0] toro: vm 0 up",
                       "[vm 1] toro: exit 0", "[vm 1] toro: vm 1 up"]);
    assert_eq!(err, "");
    assert_eq!(std::fs::read_to_string(s.path("logs/vm-1.log")).unwrap(), "toro: vm 1 up\n[rank 1] hello\ntoro: exit 0\n");
    assert_eq!(s.pids().len(), 2, "2 VMs");

    let (code, out, _, _) = job(&s, &["-np", "2", "--vms", "2", "--no-tag-output", &img], Duration::from_secs(10));
    assert_eq!(code, Some(0));
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, ["hello", "partial", "toro: exit 0", "toro: exit 0", "toro: vm 0 up", "toro: vm 1 up"]);
}

#[test]
fn panic_names_the_rank_and_stops_the_others() {
    let s = Sandbox::new("panic");
    s.qemu(r#"
if [ "$vm" = 1 ]; then
  sleep 0.3; echo "[rank 3] about to fail"; echo "toro: panic on core 1 at app.rs:7: boom"; echo "toro: exit 101"; exit 203
fi
sleep 30"#);
    let (code, out, err, took) = job(&s, &["-np", "4", "--vms", "2", "--cpus-per-vm", "2", &s.image()], Duration::from_secs(10));
    assert_eq!(code, Some(101), "{err}");
    assert!(out.contains("[rank 3] about to fail"), "{out}");
    assert_eq!(err.trim_end(), "toro-mpirun: rank 3 (vm 1, core 1) failed: panic (status 101): panic on core 1 at app.rs:7: boom");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn app_status_and_qemu_errors() {
    let s = Sandbox::new("status");
    s.qemu("exit 7");
    let (code, _, err, _) = job(&s, &["-np", "1", &s.image()], Duration::from_secs(10));
    assert_eq!(code, Some(3));
    assert_eq!(err.trim_end(), "toro-mpirun: rank 0 (vm 0) failed: application exit status (status 3)");
    s.qemu("echo 'qemu-system-x86_64: cannot load the kernel' >&2; exit 1");
    let (code, _, err, _) = job(&s, &["-np", "2", &s.image()], Duration::from_secs(10));
    assert_eq!(code, Some(125));
    assert!(err.contains("[vm 0] qemu-system-x86_64: cannot load the kernel"), "{err}");
    assert!(err.trim_end().ends_with("toro-mpirun: vm 0 (ranks 0-1) died: QEMU failed: qemu-system-x86_64: cannot load the kernel"), "{err}");
    s.qemu("exit 0");
    let (code, _, err, _) = job(&s, &["-np", "1", &s.image()], Duration::from_secs(10));
    assert_eq!(code, Some(125));
    assert!(err.contains("died: QEMU exited with code 0"), "{err}");
    // Exit code 1 is status 0 only with the guest's `toro: exit 0` line ...
    s.qemu("exit 1");
    let (code, _, err, _) = job(&s, &["-np", "1", &s.image()], Duration::from_secs(10));
    assert_eq!(code, Some(125), "{err}");
    assert_eq!(err.trim_end(), "toro-mpirun: rank 0 (vm 0) died: QEMU exited with code 1 before the guest reported a status (no `toro: exit` line)");
    // ... and with it, QEMU's chatter on stderr does not make it a failure.
    s.qemu("echo 'toro: exit 0'; echo 'qemu-system-x86_64: terminating on signal 15' >&2; exit 1");
    let (code, _, err, _) = job(&s, &["-np", "1", &s.image()], Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    // The status comes with the rank that returned it.
    s.qemu("echo 'toro: rank 1 returned 4'; echo 'toro: rank 0 returned 9'; echo 'toro: exit 4'; exit 9");
    let (code, _, err, _) = job(&s, &["-np", "2", "--cpus-per-vm", "2", &s.image()], Duration::from_secs(10));
    assert_eq!(code, Some(4), "{err}");
    assert_eq!(err.trim_end(), "toro-mpirun: rank 1 (vm 0, core 1) failed: application exit status (status 4)");
}

#[test]
fn killed_vm_ends_the_job_within_2s() {
    let s = Sandbox::new("died");
    s.qemu(r#"
sleep 30 &
echo $! >> "$SANDBOX/pids"
if [ "$vm" = 1 ]; then sleep 0.3; kill -9 $$; fi
wait"#);
    let (code, _, err, took) = job(&s, &["-np", "4", "--vms", "2", &s.image()], Duration::from_secs(10));
    assert_eq!(code, Some(125), "{err}");
    assert_eq!(err.trim_end(), "toro-mpirun: vm 1 (ranks 2-3) died: QEMU killed by signal 9 (SIGKILL)");
    assert!(took < Duration::from_millis(2300), "took {took:?}");
    assert_eq!(s.pids().len(), 4);
}

#[test]
fn timeout_stops_everything() {
    let s = Sandbox::new("timeout");
    s.qemu("trap '' TERM; sleep 30 & echo $! >> \"$SANDBOX/pids\"; while :; do sleep 1; done");
    let (code, _, err, took) = job(&s, &["-np", "2", "--vms", "2", "--timeout", "0.5", &s.image()], Duration::from_secs(10));
    assert_eq!(code, Some(124), "{err}");
    assert!(err.starts_with("toro-mpirun: timeout after 500ms: stopped vm 0 (ranks 0), vm 1 (ranks 1)"), "{err}");
    // 0.5 s, then SIGTERM is ignored, SIGKILL within the 2 s budget.
    assert!(took < Duration::from_millis(2500), "took {took:?}");
}

fn signal_test(sig: i32, code: i32, name: &str) {
    let s = Sandbox::new(name);
    s.qemu(r#"sleep 30 & echo $! >> "$SANDBOX/pids"; echo "[rank $vm] ready"; wait"#);
    let mut c = s.cmd(&["-np", "2", "--vms", "2", &s.image()]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = 0;
        let mut line = String::new();
        while out.read_line(&mut line).unwrap_or(0) > 0 {
            if line.contains("ready") {
                seen += 1;
                if seen == 2 {
                    let _ = tx.send(());
                }
            }
            line.clear();
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(10));
    #[allow(unsafe_code)]
    // SAFETY: signals a process this test started.
    unsafe {
        libc::kill(child.id() as i32, if ready.is_ok() { sig } else { libc::SIGKILL })
    };
    ready.expect("the VMs' lines were streamed live");
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "launcher did not stop");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(code), "{err}");
    assert!(err.contains(&format!("toro-mpirun: {name} received")), "{err}");
    s.assert_clean();
    assert_eq!(s.pids().len(), 4);
}

#[test]
fn sigint_stops_the_job() {
    signal_test(libc::SIGINT, 130, "SIGINT");
}

#[test]
fn sigterm_stops_the_job() {
    signal_test(libc::SIGTERM, 143, "SIGTERM");
}

#[test]
fn help_has_examples() {
    let out = run({ let mut c = Command::new(BIN); c.arg("--help"); c }, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0));
    let t = text(&out.stdout);
    assert!(t.contains("Examples:") && t.contains("toro-mpirun -np 32 --vms 4 app.elf"), "{t}");
}
