//! Toro images: one ELF holding the ring-0 kernel and a ring-3
//! application, bootable by QEMU's `-kernel` through the PVH note.
//!
//! The kernel (built for `x86_64-unknown-none`, SSE-free) and the app
//! (built for `x86_64-unknown-linux-gnu`, `no_std`, hard-float) are linked
//! separately, at disjoint fixed addresses, then [`pack`]ed together.
//! [`check`] validates any file the way the launcher needs.

pub mod build;
pub mod elf;
pub mod vmtest;

pub use build::{build_app, BuildError, BuildOptions};

use elf::{Elf, Phdr, PT_LOAD, PT_NOTE};
use toro_abi::layout::{APP_BASE, APP_LIMIT, KERNEL_BASE};
use toro_abi::{AppHeader, ABI_VERSION, APP_MAGIC};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageError {
    NotElf,
    NotX86_64,
    Truncated(&'static str),
    NoPvhNote,
    NoAppHeader,
    AbiMismatch { found: u32 },
    BadHeader(&'static str),
    Overlap(&'static str),
}

impl std::fmt::Display for ImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageError::NotElf => write!(f, "not an ELF file"),
            ImageError::NotX86_64 => write!(f, "not a 64-bit x86-64 ELF file"),
            ImageError::Truncated(what) => write!(f, "truncated or corrupt ELF ({what} out of bounds)"),
            ImageError::NoPvhNote => write!(f, "not bootable: no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)"),
            ImageError::NoAppHeader => write!(f, "not a Toro application image: no Toro header at {APP_BASE:#x} (build it with toro-build)"),
            ImageError::AbiMismatch { found } => {
                write!(f, "built for Toro ABI {found}, this Toro speaks ABI {ABI_VERSION}: rebuild the image")
            }
            ImageError::BadHeader(why) => write!(f, "corrupt Toro application header: {why}"),
            ImageError::Overlap(why) => write!(f, "segments in the wrong place: {why}"),
        }
    }
}

impl std::error::Error for ImageError {}

/// What `check` learned about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub pvh_entry: u64,
    pub app_entry: u64,
    pub app_end: u64,
    pub abi_version: u32,
}

fn read_header(elf: &Elf) -> Result<AppHeader, ImageError> {
    let size = std::mem::size_of::<AppHeader>();
    let raw = elf.read_at(APP_BASE, size).ok_or(ImageError::NoAppHeader)?;
    let field = |at: usize| u64::from_le_bytes(raw[at..at + 8].try_into().unwrap());
    let h = AppHeader {
        magic: raw[..8].try_into().unwrap(),
        abi_version: u32::from_le_bytes(raw[8..12].try_into().unwrap()),
        header_size: u32::from_le_bytes(raw[12..16].try_into().unwrap()),
        entry: field(16),
        boot_info: field(24),
        image_end: field(32),
    };
    if h.magic != APP_MAGIC {
        return Err(ImageError::NoAppHeader);
    }
    if h.abi_version != ABI_VERSION {
        return Err(ImageError::AbiMismatch { found: h.abi_version });
    }
    let inside = |a: u64| (APP_BASE..APP_LIMIT).contains(&a);
    if h.header_size as usize != size {
        return Err(ImageError::BadHeader("header size"));
    }
    if !inside(h.entry) || !inside(h.boot_info) || h.image_end > APP_LIMIT || h.image_end <= APP_BASE {
        return Err(ImageError::BadHeader("addresses outside the application region"));
    }
    Ok(h)
}

/// The 32-bit PVH entry address from the image's Xen note.
fn pvh_entry(elf: &Elf) -> Result<u64, ImageError> {
    let desc = *elf.notes(b"Xen", 18).first().ok_or(ImageError::NoPvhNote)?;
    match desc.len() {
        4 => Ok(u32::from_le_bytes(desc.try_into().unwrap()) as u64),
        8 => Ok(u64::from_le_bytes(desc.try_into().unwrap())),
        _ => Err(ImageError::NoPvhNote),
    }
}

/// Validates a complete Toro image.
pub fn check(bytes: &[u8]) -> Result<ImageInfo, ImageError> {
    let elf = Elf::parse(bytes)?;
    let pvh_entry = pvh_entry(&elf)?;
    let h = read_header(&elf)?;
    Ok(ImageInfo { pvh_entry, app_entry: h.entry, app_end: h.image_end, abi_version: h.abi_version })
}

/// Checks that a file is a Toro image, for tools: a one-line error otherwise.
pub fn check_file(path: &std::path::Path) -> Result<ImageInfo, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    check(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Combines a kernel ELF and an application ELF into one image.
pub fn pack(kernel: &[u8], app: &[u8]) -> Result<Vec<u8>, ImageError> {
    let k = Elf::parse(kernel)?;
    let a = Elf::parse(app)?;
    pvh_entry(&k)?;
    read_header(&a)?;
    let mut segments: Vec<(Phdr, &[u8])> = Vec::new();
    for p in k.loads() {
        if p.paddr < KERNEL_BASE || p.paddr + p.memsz > APP_BASE {
            return Err(ImageError::Overlap("kernel segment outside [0x100000, 0x400000)"));
        }
        segments.push((*p, k.data(p)));
    }
    for p in a.loads() {
        if p.paddr < APP_BASE || p.paddr + p.memsz > APP_LIMIT {
            return Err(ImageError::Overlap("application segment outside [0x400000, 0x1000000)"));
        }
        segments.push((*p, a.data(p)));
    }
    for p in k.phdrs.iter().filter(|p| p.kind == PT_NOTE) {
        segments.push((*p, k.data(p)));
    }
    let image = elf::write(k.entry, &segments);
    check(&image)?;
    Ok(image)
}

#[cfg(test)]
mod tests;

#[doc(hidden)]
pub mod testing {
    //! Tiny synthetic images for tests of this crate and the launcher.
    use super::*;

    pub fn note(owner: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(owner.len() as u32 + 1).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(owner);
        n.push(0);
        while n.len() % 4 != 0 {
            n.push(0);
        }
        n.extend_from_slice(desc);
        n
    }

    pub fn load(addr: u64, memsz: u64) -> Phdr {
        Phdr { kind: PT_LOAD, flags: 5, offset: 0, vaddr: addr, paddr: addr, filesz: 0, memsz, align: 4096 }
    }

    pub fn header(abi: u32, entry: u64, boot_info: u64, end: u64) -> Vec<u8> {
        let mut h = APP_MAGIC.to_vec();
        h.extend_from_slice(&abi.to_le_bytes());
        h.extend_from_slice(&40u32.to_le_bytes());
        for v in [entry, boot_info, end] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h
    }

    /// A kernel-like ELF: code at 0x100000 and a PVH note.
    pub fn kernel() -> Vec<u8> {
        let code = vec![0xf4u8; 64];
        let n = note(b"Xen", 18, &0x100000u64.to_le_bytes());
        let note_phdr = Phdr { kind: PT_NOTE, flags: 4, offset: 0, vaddr: 0, paddr: 0, filesz: 0, memsz: 0, align: 4 };
        elf::write(0x100000, &[(load(0x100000, 0x2000), &code), (note_phdr, &n)])
    }

    /// An app-like ELF: a Toro header at 0x400000.
    pub fn app(header: &[u8]) -> Vec<u8> {
        elf::write(0x400000, &[(load(0x400000, 0x10000), header)])
    }
}
