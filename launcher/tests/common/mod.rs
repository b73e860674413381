//! Helpers shared by the launcher's VM test files: one job at a time, and
//! finding (and killing) the processes of a job through /proc.
#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard};

use toro_image::vmtest::Accel;

/// One VM job at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn accel_name(a: Accel) -> &'static str {
    match a {
        Accel::Tcg => "tcg",
        Accel::Kvm => "kvm",
    }
}

#[allow(unsafe_code)]
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: a plain kill(2) to a process this test started.
    unsafe { libc::kill(pid, sig) };
}

/// Live processes of job `id`: QEMUs (`job=ID` on their kernel command
/// line), and anything naming the job's private directory.
pub fn job_processes(id: &str) -> Vec<(i32, String)> {
    let word = format!("job={id}");
    let dir = format!("toro-mpirun-{id}/");
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        // A zombie has an empty cmdline; a vanished process an error.
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<String> = raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let ours = args.iter().any(|a| a.split(' ').any(|w| w == word) || a.contains(&dir));
        if ours {
            found.push((pid, args.join(" ")));
        }
    }
    found
}

/// The QEMU process of VM `vm` of job `id`.
pub fn qemu_of(id: &str, vm: u32) -> Option<i32> {
    let want = format!("vm={vm}");
    job_processes(id)
        .into_iter()
        .find(|(_, cmd)| cmd.contains("qemu") && cmd.split(' ').any(|w| w == want))
        .map(|(pid, _)| pid)
}
