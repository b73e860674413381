//! Booting real VMs from tests (this crate's and other crates'): images
//! built once per test process, QEMU runs with a hard timeout, nothing left
//! running afterwards.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{build_app, BuildOptions};

pub fn root() -> PathBuf {
    crate::build::default_root()
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Builds (once per test process) the image of an app package.
pub fn image(package: &str, bin: &str) -> PathBuf {
    static BUILT: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let _serial = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = BUILT.lock().unwrap().iter().find(|(b, _)| b == bin) {
        return p.clone();
    }
    let out = root().join(format!("target/toro/test-{bin}.elf"));
    let opts = BuildOptions { root: root(), package: package.into(), bin: Some(bin.into()), output: Some(out) };
    let path = build_app(&opts).unwrap_or_else(|e| panic!("building {package}: {e}"));
    BUILT.lock().unwrap().push((bin.into(), path.clone()));
    path
}

/// The kernel alone (no application): for the bad-image test.
pub fn kernel_only() -> PathBuf {
    image("hello", "hello");
    root().join("target/toro/x86_64-unknown-none/toro/toro-kernel")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    fn args(self) -> [&'static str; 4] {
        match self {
            Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
            // QEMU 7.2 cannot set IA32_ARCH_CAPABILITIES under KVM PVM.
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host,-arch-capabilities"],
        }
    }

    pub fn timeout(self) -> Duration {
        match self {
            Accel::Tcg => Duration::from_secs(120),
            Accel::Kvm => Duration::from_secs(60),
        }
    }
}

/// TCG always; KVM too when /dev/kvm can run a VM here. TORO_TEST_ACCEL=tcg
/// or kvm narrows the list.
pub fn accels() -> Vec<Accel> {
    static KVM: OnceLock<bool> = OnceLock::new();
    let want = std::env::var("TORO_TEST_ACCEL").unwrap_or_default();
    let kvm = *KVM.get_or_init(|| {
        if !Path::new("/dev/kvm").exists() || want == "tcg" {
            return false;
        }
        // A VM that boots the kernel alone and stops at the missing app header.
        let run = Vm::new(&kernel_only(), Accel::Kvm).timeout(Duration::from_secs(30)).run();
        let ok = run.status == Some(toro_abi::status::BAD_IMAGE);
        if !ok {
            eprintln!("KVM cannot run a VM here, testing under TCG only:\n{}", run.output);
        }
        ok
    });
    let mut v = Vec::new();
    if want != "kvm" {
        v.push(Accel::Tcg);
    }
    if kvm {
        v.push(Accel::Kvm);
    }
    v
}

pub struct Vm {
    image: PathBuf,
    accel: Accel,
    machine: &'static str,
    smp: usize,
    mem: &'static str,
    append: String,
    timeout: Duration,
    virtio_console: bool,
}

/// Console devices: on microvm a virtio console (one VM exit per line) that
/// shares stdio with the serial port the kernel writes; elsewhere the serial port.
pub fn console_args(machine: &str, virtio: bool) -> Vec<&'static str> {
    if virtio && machine.starts_with("microvm") {
        vec!["-chardev", "stdio,id=con,mux=on", "-serial", "chardev:con",
             "-device", "virtio-serial-device", "-device", "virtconsole,chardev=con"]
    } else {
        vec!["-serial", "stdio"]
    }
}

pub struct Run {
    /// The guest's exit status (isa-debug-exit), None if QEMU ended otherwise.
    pub status: Option<u8>,
    pub output: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn assert_line(&self, needle: &str) -> &str {
        self.output
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line containing {needle:?} in:\n{}", self.output))
    }

    pub fn assert_status(&self, want: u8) {
        assert_eq!(self.status, Some(want), "exit status; output:\n{}", self.output);
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Vm {
    pub fn new(image: &Path, accel: Accel) -> Vm {
        Vm { image: image.into(), accel, machine: "microvm", smp: 1, mem: "128M", append: String::new(),
             timeout: accel.timeout(), virtio_console: true }
    }

    pub fn smp(mut self, n: usize) -> Self {
        self.smp = n;
        self
    }
    pub fn machine(mut self, m: &'static str) -> Self {
        self.machine = m;
        self
    }
    pub fn mem(mut self, m: &'static str) -> Self {
        self.mem = m;
        self
    }
    pub fn append(mut self, a: &str) -> Self {
        self.append = a.into();
        self
    }
    /// Without the virtio console: the runtime falls back to the kernel's serial port.
    pub fn serial_console(mut self) -> Self {
        self.virtio_console = false;
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn run(&self) -> Run {
        let start = Instant::now();
        let child = Command::new("qemu-system-x86_64")
            .args(["-M", self.machine])
            .args(self.accel.args())
            .args(["-smp", &self.smp.to_string(), "-m", self.mem])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .args(console_args(self.machine, self.virtio_console))
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel"])
            .arg(&self.image)
            .args(["-append", &self.append])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64 must be installed (apt-get install qemu-system-x86)");
        let mut child = KillOnDrop(child);
        let mut stdout = child.0.stdout.take().unwrap();
        let mut stderr = child.0.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            let mut e = String::new();
            let _ = stderr.read_to_string(&mut e);
            s + &e
        });
        let code = loop {
            if let Some(st) = child.0.try_wait().unwrap() {
                break st.code();
            }
            if start.elapsed() > self.timeout {
                drop(child);
                let output = reader.join().unwrap();
                panic!("VM still running after {:?} (killed); output:\n{output}", self.timeout);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let output = reader.join().unwrap();
        // QEMU's own failures exit 1 too: trust a status only with the guest's exit line.
        let status = code
            .and_then(toro_abi::status::from_qemu_exit_code)
            .filter(|s| output.lines().any(|l| l == format!("toro: exit {s}")));
        Run { status, output, elapsed: start.elapsed() }
    }
}
