//! Checks that a file is a bootable Toro application image before any VM
//! is started. The checking itself is [`toro_image::check`] — the same
//! checker the image builder runs after packing — so the launcher and
//! `toro-build` can never disagree on what an image is. This module only
//! reads the file and words the errors in the launcher's one-line style:
//! `image PATH: REASON`.

use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

pub use toro_image::ImageInfo;

#[derive(Debug, PartialEq, Eq)]
pub enum ImageError {
    Missing(PathBuf),
    Unreadable(PathBuf, String),
    /// Read, but `toro_image::check` rejected it.
    Invalid(PathBuf, toro_image::ImageError),
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Missing(p) => write!(f, "image {}: no such file", p.display()),
            ImageError::Unreadable(p, e) => write!(f, "image {}: cannot read it: {e}", p.display()),
            ImageError::Invalid(p, e) => write!(f, "image {}: {e}", p.display()),
        }
    }
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
    toro_image::check(b).map_err(|e| ImageError::Invalid(path.into(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::FakeImage;
    use toro_abi::layout::APP_BASE;
    use toro_image::ImageError as E;

    fn check(img: &FakeImage) -> Result<ImageInfo, ImageError> {
        check_bytes(Path::new("app.elf"), &img.bytes())
    }

    fn invalid(e: E) -> Result<ImageInfo, ImageError> {
        Err(ImageError::Invalid(PathBuf::from("app.elf"), e))
    }

    #[test]
    fn accepts_a_toro_image() {
        let info = check(&FakeImage::default()).unwrap();
        assert_eq!(info.pvh_entry, 0x100000);
        assert_eq!(info.app_entry, APP_BASE + 0x40);
        assert_eq!(info.abi_version, toro_abi::ABI_VERSION);
    }

    #[test]
    fn rejects_each_kind_of_bad_image() {
        let p = || PathBuf::from("app.elf");
        assert_eq!(check_bytes(&p(), b"#!/bin/sh\n"), invalid(E::NotElf));
        assert_eq!(check_bytes(&p(), b""), invalid(E::NotElf));
        let img = FakeImage { class: 1, ..Default::default() };
        assert_eq!(check(&img), invalid(E::NotX86_64));
        let img = FakeImage { machine: 183, ..Default::default() };
        assert_eq!(check(&img), invalid(E::NotX86_64));
        let img = FakeImage { pvh_note: false, ..Default::default() };
        assert_eq!(check(&img), invalid(E::NoPvhNote));
        let img = FakeImage { app_header: false, ..Default::default() };
        assert_eq!(check(&img), invalid(E::NoAppHeader));
        let img = FakeImage { abi_version: 99, ..Default::default() };
        assert_eq!(check(&img), invalid(E::AbiMismatch { found: 99 }));
        let img = FakeImage { app_entry: 0x1000, ..Default::default() };
        assert!(matches!(check(&img), Err(ImageError::Invalid(_, E::BadHeader(_)))));
        // Truncated inside the program headers.
        let bytes = FakeImage::default().bytes();
        assert!(matches!(check_bytes(&p(), &bytes[..80]), Err(ImageError::Invalid(_, E::Truncated(_)))));
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
    fn messages_are_one_line_and_name_the_file() {
        let p = PathBuf::from("x.elf");
        for e in [
            ImageError::Missing(p.clone()),
            ImageError::Unreadable(p.clone(), "permission denied".into()),
            ImageError::Invalid(p.clone(), E::NotElf),
            ImageError::Invalid(p.clone(), E::NoPvhNote),
            ImageError::Invalid(p.clone(), E::NoAppHeader),
            ImageError::Invalid(p.clone(), E::AbiMismatch { found: 3 }),
        ] {
            let s = e.to_string();
            assert!(!s.contains('\n'), "{s}");
            assert!(s.starts_with("image x.elf: "), "{s}");
        }
    }
}
