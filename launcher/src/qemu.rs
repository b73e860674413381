//! Everything about QEMU: finding it, choosing the accelerator, and the one
//! function that spells a VM's command line.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::plan::{Plan, VmPlan};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// Minimal machine, boots in tens of ms (virtio-mmio devices).
    Microvm,
    /// PC with PCI (virtio-pci devices); boots in seconds under PVM.
    Q35,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when /dev/kvm can create a VM, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl Machine {
    pub fn name(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        }
    }
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// How the VMs of a job reach each other (more than one VM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetBackend {
    /// QEMU's `-netdev dgram` on Unix datagram sockets: one socket pair between two
    /// VMs, the launcher's hub with more (`hub`).
    Dgram,
    /// The launcher is every VM's vhost-user-net back-end and copies frames from ring
    /// to ring (`vhost_user`); guest RAM is a shared memfd.
    VhostUser,
}

impl NetBackend {
    pub fn name(self) -> &'static str {
        match self {
            NetBackend::Dgram => "dgram",
            NetBackend::VhostUser => "vhost-user",
        }
    }
}

pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";
/// Tests and unusual hosts may point the KVM probe elsewhere.
pub const KVM_DEVICE_ENV: &str = "TORO_KVM_DEVICE";

/// Finds an executable: a path with a `/` as is, else through `PATH`.
pub fn find_executable(name: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let ok = |p: &Path| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if name.as_os_str().to_string_lossy().contains('/') {
        return ok(name).then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| ok(p))
}

pub fn find_qemu(user: Option<&Path>) -> Result<PathBuf, String> {
    let name = user.unwrap_or(Path::new(DEFAULT_QEMU));
    find_executable(name).ok_or_else(|| match user {
        Some(p) => format!("QEMU binary {} not found or not executable", p.display()),
        None => format!("{DEFAULT_QEMU} not found in PATH (install it: apt-get install qemu-system-x86)"),
    })
}

/// qboot, QEMU's minimal firmware, where this QEMU ships it (`<prefix>/share/qemu`):
/// it starts our PVH image on q35 in 0.1 s, where SeaBIOS, emulated instruction by
/// instruction under KVM PVM, takes 3 s (BENCHMARKS.md, inter-net).
pub fn q35_fast_firmware(qemu: &Path) -> Option<PathBuf> {
    let binary = std::fs::canonicalize(qemu).ok()?;
    let firmware = binary.parent()?.parent()?.join("share/qemu/qboot.rom");
    firmware.is_file().then_some(firmware)
}

/// Whether `/dev/kvm` (or `$TORO_KVM_DEVICE`) can create a VM. Opening the
/// device is not enough: under nested or PVM setups the node may exist
/// while `KVM_CREATE_VM` fails, so the probe creates (and drops) one.
pub fn kvm_usable() -> Result<(), String> {
    let dev = std::env::var_os(KVM_DEVICE_ENV).map(PathBuf::from).unwrap_or_else(|| "/dev/kvm".into());
    probe_kvm(&dev).map_err(|e| format!("{}: {e}", dev.display()))
}

#[allow(unsafe_code)]
fn probe_kvm(dev: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(dev).map_err(|e| {
        match e.kind() {
            std::io::ErrorKind::NotFound => "no such device".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied (are you in group kvm?)".to_string(),
            _ => e.to_string(),
        }
    })?;
    // SAFETY: plain ioctls on a file descriptor we own; no pointers passed.
    let version = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if version != 12 {
        return Err("not a KVM device (KVM_GET_API_VERSION failed)".into());
    }
    // SAFETY: as above; the returned descriptor is closed right away.
    let vm = unsafe { libc::ioctl(f.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm < 0 {
        return Err(format!("KVM_CREATE_VM failed: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `vm` is a descriptor the kernel just gave us and nobody else holds.
    unsafe { libc::close(vm) };
    Ok(())
}

/// Resolves `auto`; `kvm` must be usable.
pub fn resolve_accel(a: Accel) -> Result<Accel, String> {
    match a {
        Accel::Tcg => Ok(Accel::Tcg),
        Accel::Auto => Ok(if kvm_usable().is_ok() { Accel::Kvm } else { Accel::Tcg }),
        Accel::Kvm => kvm_usable()
            .map(|_| Accel::Kvm)
            .map_err(|e| format!("--accel kvm but KVM is not usable: {e} (use --accel tcg or auto)")),
    }
}

/// How the VMs of a job are started.
#[derive(Clone, Debug)]
pub struct QemuSetup {
    pub qemu: PathBuf,
    pub machine: Machine,
    /// Resolved: never `Auto`.
    pub accel: Accel,
    pub image: PathBuf,
    pub net: NetBackend,
}

/// The full QEMU argument list of one VM. The network device is only added for a
/// job with more than one VM: its netdev is a socket QEMU inherits as fd
/// `hub::QEMU_NET_FD`, whose other end is the other VM's QEMU (2 VMs) or the
/// launcher's hub (see `hub`).
pub fn qemu_args(setup: &QemuSetup, plan: &Plan, vm: &VmPlan) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    // microvm without ACPI tables, option ROMs and RTC starts ~45 ms sooner
    // under TCG; the kernel learns the CPU count from `cpus=` instead of the MADT.
    let machine = match setup.machine {
        Machine::Microvm => "microvm,acpi=off,x-option-roms=off,rtc=off",
        Machine::Q35 => "q35",
    };
    let vhost_user = plan.vms.len() > 1 && setup.net == NetBackend::VhostUser;
    if vhost_user {
        push(&["-M", &format!("{machine},memory-backend=mem")]);
    } else {
        push(&["-M", machine]);
    }
    match setup.accel {
        // Without -arch-capabilities QEMU 7.2 aborts under KVM PVM on AMD hosts
        // ("failed to set MSR 0x10a"); the guest never reads that MSR.
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host,-arch-capabilities"]),
        _ => push(&["-accel", "tcg", "-cpu", "max"]),
    }
    push(&["-smp", &vm.cpus.to_string(), "-m", &format!("{}M", vm.mem_mib)]);
    if setup.machine == Machine::Q35 {
        if let Some(firmware) = q35_fast_firmware(&setup.qemu) {
            push(&["-bios", &firmware.to_string_lossy()]);
        }
    }
    if vhost_user {
        // The back-end (the launcher) maps the guest's RAM to reach its rings and buffers.
        push(&["-object", &format!("memory-backend-memfd,id=mem,size={}M,share=on", vm.mem_mib)]);
    }
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    match setup.machine {
        // The app's lines go through a virtio console (one VM exit a line
        // instead of one a byte); the kernel's own lines through the serial
        // port; both share stdout.
        Machine::Microvm => push(&["-chardev", "stdio,id=con,mux=on", "-serial", "chardev:con",
                                   "-device", "virtio-serial-device", "-device", "virtconsole,chardev=con"]),
        Machine::Q35 => push(&["-serial", "stdio"]),
    }
    push(&["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]);
    if plan.vms.len() > 1 {
        let nic = match setup.machine {
            Machine::Microvm => "virtio-net-device",
            // No option ROM: the guest never boots from the NIC, and SeaBIOS would
            // load and start iPXE for it (≈0.5 s or more of a q35 boot under KVM here).
            Machine::Q35 => "virtio-net-pci,romfile=",
        };
        if vhost_user {
            let socket = crate::vhost_user::socket_path(&crate::run::JobDir::path_for(&plan.job_id), vm.index as usize);
            a.push("-chardev".into());
            a.push(format!("socket,id=vhost0,path={}", socket.display()).into());
            a.push("-netdev".into());
            a.push("vhost-user,id=net0,chardev=vhost0".into());
        } else {
            // `dgram` on an inherited socket: one datagram per frame, frames up to QEMU's
            // NET_BUFSIZE (QEMU 7.2 has it; `vde` and `socket` are not needed).
            a.push("-netdev".into());
            a.push(format!("dgram,id=net0,local.type=fd,local.str={}", crate::hub::QEMU_NET_FD).into());
        }
        a.push("-device".into());
        a.push(format!("{nic},netdev=net0,mac={}", vm.mac_string()).into());
    }
    a.push("-kernel".into());
    a.push(setup.image.clone().into());
    a.push("-append".into());
    if msix_crashes_qemu(setup, plan) {
        // A key, so before the application's arguments (` -- `, the first one: keys and
        // arguments are escaped); the last `netwait=` wins.
        let (keys, args) = vm.cmdline.split_once(" -- ").map_or((vm.cmdline.as_str(), None), |(k, a)| (k, Some(a)));
        let line = match args {
            Some(args) => format!("{keys}{POLL_NIC_KEY} -- {args}"),
            None => format!("{keys}{POLL_NIC_KEY}"),
        };
        a.push(line.into());
    } else {
        a.push(vm.cmdline.clone().into());
    }
    a
}

/// The kernel command line key (with its separator) that has the ranks poll the NIC
/// instead of halting on its interrupt; `Plan` leaves room for it.
pub const POLL_NIC_KEY: &str = " netwait=spin";

/// QEMU 7.2 under TCG with a vhost-user back-end crashes (SIGSEGV in its vCPU thread)
/// when the guest unmasks the virtio-pci NIC's MSI-X entry, which a q35 guest does to
/// take the receive interrupt before halting: such jobs wait by polling (`netwait=spin`).
/// Under KVM, and with `--net-backend dgram`, the interrupt works.
pub fn msix_crashes_qemu(setup: &QemuSetup, plan: &Plan) -> bool {
    setup.machine == Machine::Q35 && setup.accel == Accel::Tcg && setup.net == NetBackend::VhostUser && plan.vms.len() > 1
}

/// Quotes a word for display in a shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=./,:@%+".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

pub fn display_command(program: &Path, args: &[OsString]) -> String {
    let mut words = vec![shell_quote(&program.to_string_lossy())];
    words.extend(args.iter().map(|a| shell_quote(&a.to_string_lossy())));
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("a=b,c"), "a=b,c");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn q35_starts_with_qboot_where_qemu_ships_it() {
        let prefix = crate::testutil::TempDir::new("qboot");
        std::fs::create_dir_all(prefix.path().join("bin")).unwrap();
        let qemu = prefix.path().join("bin/qemu-system-x86_64");
        crate::testutil::write_script(&qemu, "exit 0");
        assert_eq!(q35_fast_firmware(&qemu), None, "no qboot.rom: SeaBIOS, QEMU's default");
        std::fs::create_dir_all(prefix.path().join("share/qemu")).unwrap();
        std::fs::write(prefix.path().join("share/qemu/qboot.rom"), b"rom").unwrap();
        let found = q35_fast_firmware(&qemu).expect("qboot.rom beside the binary's prefix");
        assert_eq!(found, std::fs::canonicalize(prefix.path()).unwrap().join("share/qemu/qboot.rom"));
    }

    #[test]
    fn kvm_probe_on_a_non_kvm_device() {
        assert!(probe_kvm(Path::new("/dev/null")).unwrap_err().contains("not a KVM device"));
        assert!(probe_kvm(Path::new("/nonexistent/kvm")).unwrap_err().contains("no such device"));
    }
}
