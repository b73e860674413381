//! Helpers for the launcher's tests: fake images and temporary directories.
//! Public so the integration tests in `tests/` can use them too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use toro_abi::layout::APP_BASE;
use toro_abi::{ABI_VERSION, APP_MAGIC};

/// A minimal ELF64 that passes (or, with a field changed, fails) the image
/// check: a PT_NOTE with the PVH entry and a PT_LOAD at [`APP_BASE`] that
/// starts with an `AppHeader`. It cannot boot.
#[derive(Clone, Debug)]
pub struct FakeImage {
    pub class: u8,
    pub machine: u16,
    pub pvh_note: bool,
    pub app_header: bool,
    pub abi_version: u32,
}

impl Default for FakeImage {
    fn default() -> Self {
        FakeImage { class: 2, machine: 62, pvh_note: true, app_header: true, abi_version: ABI_VERSION }
    }
}

impl FakeImage {
    pub fn bytes(&self) -> Vec<u8> {
        const NOTE_OFF: u64 = 0x100;
        const LOAD_OFF: u64 = 0x1000;
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&8u32.to_le_bytes());
        note.extend_from_slice(&(if self.pvh_note { 18u32 } else { 17 }).to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&0x100000u64.to_le_bytes());

        let mut app = Vec::new();
        app.extend_from_slice(if self.app_header { &APP_MAGIC } else { b"NOTTORO\0" });
        app.extend_from_slice(&self.abi_version.to_le_bytes());
        app.extend_from_slice(&40u32.to_le_bytes());
        app.extend_from_slice(&(APP_BASE + 0x40).to_le_bytes());
        app.extend_from_slice(&(APP_BASE + 0x1000).to_le_bytes());
        app.extend_from_slice(&(APP_BASE + 0x2000).to_le_bytes());
        app.resize(0x80, 0xcc);

        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = self.class;
        b[5] = 1; // little-endian
        b[6] = 1; // version
        b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        b[18..20].copy_from_slice(&self.machine.to_le_bytes());
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&0x100000u64.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        b[56..58].copy_from_slice(&2u16.to_le_bytes()); // e_phnum
        let phdr = |kind: u32, off: u64, vaddr: u64, size: u64, align: u64| {
            let mut p = Vec::new();
            p.extend_from_slice(&kind.to_le_bytes());
            p.extend_from_slice(&4u32.to_le_bytes());
            for v in [off, vaddr, vaddr, size, size, align] {
                p.extend_from_slice(&v.to_le_bytes());
            }
            p
        };
        b.extend(phdr(4, NOTE_OFF, 0, note.len() as u64, 4));
        b.extend(phdr(1, LOAD_OFF, APP_BASE, app.len() as u64, 0x1000));
        b.resize(NOTE_OFF as usize, 0);
        b.extend(&note);
        b.resize(LOAD_OFF as usize, 0);
        b.extend(&app);
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
