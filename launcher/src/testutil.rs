//! Helpers for the launcher's tests: fake images and temporary directories.
//! Public so the integration tests in `tests/` can use them too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use toro_abi::layout::APP_BASE;
use toro_abi::ABI_VERSION;

/// A small ELF64 that passes (or, with a field changed, fails) the image
/// check, built with `toro_image`'s own writer and test pieces: a kernel-like
/// PT_LOAD at 1 MiB, a PT_NOTE with the PVH entry and an app PT_LOAD at
/// [`APP_BASE`] that starts with an `AppHeader`. It cannot boot.
#[derive(Clone, Debug)]
pub struct FakeImage {
    /// ELF class byte (2 = ELF64).
    pub class: u8,
    /// e_machine (62 = x86-64).
    pub machine: u16,
    pub pvh_note: bool,
    /// The `TOROAPP` magic at [`APP_BASE`] (else other bytes).
    pub app_header: bool,
    pub abi_version: u32,
    /// The header's ring-3 entry address.
    pub app_entry: u64,
}

impl Default for FakeImage {
    fn default() -> Self {
        FakeImage { class: 2, machine: 62, pvh_note: true, app_header: true, abi_version: ABI_VERSION,
                    app_entry: APP_BASE + 0x40 }
    }
}

impl FakeImage {
    pub fn bytes(&self) -> Vec<u8> {
        use toro_image::elf::{write, Phdr, PT_NOTE};
        use toro_image::testing::{header, load, note};
        let code = vec![0xf4u8; 64];
        let note = note(b"Xen", if self.pvh_note { 18 } else { 17 }, &0x100000u64.to_le_bytes());
        let note_phdr = Phdr { kind: PT_NOTE, flags: 4, offset: 0, vaddr: 0, paddr: 0, filesz: 0, memsz: 0, align: 4 };
        let mut app = header(self.abi_version, self.app_entry, APP_BASE + 0x1000, APP_BASE + 0x2000);
        if !self.app_header {
            app[..8].copy_from_slice(b"NOTTORO\0");
        }
        app.resize(0x80, 0xcc);
        let mut b = write(0x100000, &[(load(0x100000, 0x2000), &code), (note_phdr, &note), (load(APP_BASE, 0x2000), &app)]);
        b[4] = self.class;
        b[18..20].copy_from_slice(&self.machine.to_le_bytes());
        b
    }

    /// Writes the image to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.bytes()).unwrap();
    }
}

/// A directory removed (with its contents) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("toro-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes an executable shell script.
pub fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
