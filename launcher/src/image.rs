//! Checks that a file is a bootable Toro application image before any VM
//! is started: an x86-64 ELF64 with a PVH entry note (what QEMU's `-kernel`
//! needs) and a [`toro_abi::AppHeader`] at [`toro_abi::layout::APP_BASE`].
//!
//! TODO(toro-image): switch to the `toro-image` crate's checker once it
//! exists, keeping these error messages.

use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use toro_abi::layout::APP_BASE;
use toro_abi::{ABI_VERSION, APP_MAGIC};

const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EM_X86_64: u16 = 62;
/// XEN_ELFNOTE_PHYS32_ENTRY: the PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Size of the fields of `AppHeader` the launcher reads.
const APP_HEADER_LEN: usize = 40;

/// What the launcher learned from a valid image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    pub pvh_entry: u64,
    pub app_entry: u64,
    pub image_end: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ImageError {
    Missing(PathBuf),
    Unreadable(PathBuf, String),
    NotElf(PathBuf),
    NotX86_64(PathBuf),
    Corrupt(PathBuf, &'static str),
    NoPvhNote(PathBuf),
    NoAppHeader(PathBuf),
    AbiMismatch(PathBuf, u32),
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Missing(p) => write!(f, "image {}: no such file", p.display()),
            ImageError::Unreadable(p, e) => write!(f, "image {}: cannot read it: {e}", p.display()),
            ImageError::NotElf(p) => write!(f, "image {}: not an ELF file", p.display()),
            ImageError::NotX86_64(p) => {
                write!(f, "image {}: not an x86-64 ELF64 (little-endian) executable", p.display())
            }
            ImageError::Corrupt(p, what) => write!(f, "image {}: corrupt ELF: {what}", p.display()),
            ImageError::NoPvhNote(p) => write!(
                f,
                "image {}: no PVH entry note (Xen ELF note type 18): QEMU cannot boot it with -kernel",
                p.display()
            ),
            ImageError::NoAppHeader(p) => write!(
                f,
                "image {}: no Toro application header (TOROAPP) at {APP_BASE:#x}: not a Toro MPI application",
                p.display()
            ),
            ImageError::AbiMismatch(p, v) => write!(
                f,
                "image {}: built for Toro ABI version {v}, this launcher speaks version {ABI_VERSION}: rebuild the app",
                p.display()
            ),
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

struct Phdr {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// Reads and checks the image at `path`.
pub fn check_image(path: &Path) -> Result<ImageInfo, ImageError> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => ImageError::Missing(path.into()),
        _ => ImageError::Unreadable(path.into(), io_reason(&e)),
    })?;
    check_bytes(path, &bytes)
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::PermissionDenied => "permission denied".into(),
        ErrorKind::IsADirectory => "is a directory".into(),
        _ => {
            // Drop the " (os error N)" tail.
            let s = e.to_string();
            s.split(" (os error").next().unwrap_or(&s).to_lowercase()
        }
    }
}

/// Checks image bytes; `path` is only used in messages.
pub fn check_bytes(path: &Path, b: &[u8]) -> Result<ImageInfo, ImageError> {
    let p = || path.to_path_buf();
    if b.len() < 4 || &b[..4] != b"\x7fELF" {
        return Err(ImageError::NotElf(p()));
    }
    if b.len() < 64 || b[4] != 2 || b[5] != 1 || u16_at(b, 18) != Some(EM_X86_64) {
        return Err(ImageError::NotX86_64(p()));
    }
    let phoff = u64_at(b, 32).unwrap_or(0);
    let phentsize = u16_at(b, 54).unwrap_or(0) as u64;
    let phnum = u16_at(b, 56).unwrap_or(0) as u64;
    if phnum == 0 {
        return Err(ImageError::Corrupt(p(), "no program headers"));
    }
    if phentsize < 56 {
        return Err(ImageError::Corrupt(p(), "program header size too small"));
    }
    let mut phdrs = Vec::new();
    for i in 0..phnum {
        let at = phoff
            .checked_add(i * phentsize)
            .and_then(|a| usize::try_from(a).ok())
            .ok_or(ImageError::Corrupt(p(), "program headers out of the file"))?;
        let ph = (|| {
            Some(Phdr {
                kind: u32_at(b, at)?,
                offset: u64_at(b, at + 8)?,
                vaddr: u64_at(b, at + 16)?,
                filesz: u64_at(b, at + 32)?,
            })
        })()
        .ok_or(ImageError::Corrupt(p(), "program headers out of the file"))?;
        phdrs.push(ph);
    }
    let segment = |ph: &Phdr| -> Result<&[u8], ImageError> {
        let start = usize::try_from(ph.offset).ok();
        let end = ph.offset.checked_add(ph.filesz).and_then(|e| usize::try_from(e).ok());
        match (start, end) {
            (Some(s), Some(e)) if e <= b.len() => Ok(&b[s..e]),
            _ => Err(ImageError::Corrupt(p(), "segment out of the file")),
        }
    };

    let mut pvh_entry = None;
    for ph in phdrs.iter().filter(|ph| ph.kind == PT_NOTE) {
        if let Some(entry) = find_pvh_note(segment(ph)?) {
            pvh_entry = Some(entry);
            break;
        }
    }
    let pvh_entry = pvh_entry.ok_or(ImageError::NoPvhNote(p()))?;

    let load = phdrs
        .iter()
        .filter(|ph| ph.kind == PT_LOAD)
        .find(|ph| ph.vaddr <= APP_BASE && APP_BASE - ph.vaddr < ph.filesz)
        .ok_or(ImageError::NoAppHeader(p()))?;
    let seg = segment(load)?;
    let at = (APP_BASE - load.vaddr) as usize;
    let hdr = seg.get(at..at + APP_HEADER_LEN).ok_or(ImageError::NoAppHeader(p()))?;
    if hdr[..8] != APP_MAGIC {
        return Err(ImageError::NoAppHeader(p()));
    }
    let version = u32_at(hdr, 8).unwrap_or(0);
    if version != ABI_VERSION {
        return Err(ImageError::AbiMismatch(p(), version));
    }
    Ok(ImageInfo {
        pvh_entry,
        app_entry: u64_at(hdr, 16).unwrap_or(0),
        image_end: u64_at(hdr, 32).unwrap_or(0),
    })
}

/// Walks the notes of one PT_NOTE segment for owner "Xen", type 18.
fn find_pvh_note(mut notes: &[u8]) -> Option<u64> {
    let align4 = |n: u32| (n as usize).checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let namesz = u32_at(notes, 0)?;
        let descsz = u32_at(notes, 4)?;
        let kind = u32_at(notes, 8)?;
        let name_end = 12usize.checked_add(align4(namesz)?)?;
        let desc_end = name_end.checked_add(align4(descsz)?)?;
        let name = notes.get(12..12 + namesz as usize)?;
        let desc = notes.get(name_end..name_end + descsz as usize)?;
        if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY {
            return match desc.len() {
                4 => u32_at(desc, 0).map(u64::from),
                8 => u64_at(desc, 0),
                _ => None,
            };
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::FakeImage;

    fn check(img: &FakeImage) -> Result<ImageInfo, ImageError> {
        check_bytes(Path::new("app.elf"), &img.bytes())
    }

    #[test]
    fn accepts_a_toro_image() {
        let info = check(&FakeImage::default()).unwrap();
        assert_eq!(info.pvh_entry, 0x100000);
        assert_eq!(info.app_entry, APP_BASE + 0x40);
    }

    #[test]
    fn rejects_each_kind_of_bad_image() {
        let p = || PathBuf::from("app.elf");
        assert_eq!(check_bytes(&p(), b"#!/bin/sh\n"), Err(ImageError::NotElf(p())));
        assert_eq!(check_bytes(&p(), b""), Err(ImageError::NotElf(p())));
        let img = FakeImage { class: 1, ..Default::default() };
        assert_eq!(check(&img), Err(ImageError::NotX86_64(p())));
        let img = FakeImage { machine: 183, ..Default::default() };
        assert_eq!(check(&img), Err(ImageError::NotX86_64(p())));
        let img = FakeImage { pvh_note: false, ..Default::default() };
        assert_eq!(check(&img), Err(ImageError::NoPvhNote(p())));
        let img = FakeImage { app_header: false, ..Default::default() };
        assert_eq!(check(&img), Err(ImageError::NoAppHeader(p())));
        let img = FakeImage { abi_version: 99, ..Default::default() };
        assert_eq!(check(&img), Err(ImageError::AbiMismatch(p(), 99)));
        // Truncated inside the program headers.
        let bytes = FakeImage::default().bytes();
        assert!(matches!(check_bytes(&p(), &bytes[..80]), Err(ImageError::Corrupt(..))));
    }

    #[test]
    fn file_errors() {
        let dir = crate::testutil::TempDir::new("image");
        let missing = dir.path().join("nope.elf");
        assert_eq!(check_image(&missing), Err(ImageError::Missing(missing.clone())));
        let e = check_image(dir.path()).unwrap_err();
        assert!(matches!(e, ImageError::Unreadable(..)), "{e}");
        assert!(e.to_string().contains("directory"), "{e}");
    }

    #[test]
    fn messages_are_one_line() {
        let p = PathBuf::from("x");
        for e in [
            ImageError::Missing(p.clone()),
            ImageError::NotElf(p.clone()),
            ImageError::NoPvhNote(p.clone()),
            ImageError::NoAppHeader(p.clone()),
        ] {
            assert!(!e.to_string().contains('\n'));
        }
    }
}
