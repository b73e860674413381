use super::testing::*;
use super::*;

fn good_header() -> Vec<u8> {
    header(ABI_VERSION, 0x401000, 0x402000, 0x410000)
}

#[test]
fn pack_then_check() {
    let image = pack(&kernel(), &app(&good_header())).unwrap();
    let info = check(&image).unwrap();
    assert_eq!(info.pvh_entry, 0x100000);
    assert_eq!(info.app_entry, 0x401000);
    assert_eq!(info.app_end, 0x410000);
    let elf = Elf::parse(&image).unwrap();
    assert_eq!(elf.loads().count(), 2);
    for p in elf.loads() {
        assert_eq!(p.offset % 4096, p.vaddr % 4096, "segments must be page-congruent");
    }
}

#[test]
fn rejects_what_is_not_an_image() {
    assert_eq!(check(b""), Err(ImageError::NotElf));
    assert_eq!(check(b"#!/bin/sh\necho hi\n"), Err(ImageError::NotElf));
    let mut elf32 = kernel();
    elf32[4] = 1;
    assert_eq!(check(&elf32), Err(ImageError::NotX86_64));
    assert_eq!(check(&kernel()), Err(ImageError::NoAppHeader), "a kernel alone is not an app image");
    assert_eq!(check(&app(&good_header())), Err(ImageError::NoPvhNote));
    let mut cut = pack(&kernel(), &app(&good_header())).unwrap();
    cut.truncate(100);
    assert!(matches!(check(&cut), Err(ImageError::Truncated(_))));
}

#[test]
fn rejects_bad_headers() {
    let k = kernel();
    let mut wrong_magic = good_header();
    wrong_magic[0] = b'X';
    assert_eq!(pack(&k, &app(&wrong_magic)), Err(ImageError::NoAppHeader));
    assert_eq!(pack(&k, &app(&header(ABI_VERSION + 1, 0x401000, 0x402000, 0x410000))),
               Err(ImageError::AbiMismatch { found: ABI_VERSION + 1 }));
    assert!(matches!(pack(&k, &app(&header(ABI_VERSION, 0x100, 0x402000, 0x410000))), Err(ImageError::BadHeader(_))));
    assert!(matches!(pack(&k, &app(&header(ABI_VERSION, 0x401000, 0x402000, 0x2000000))), Err(ImageError::BadHeader(_))));
}

#[test]
fn rejects_misplaced_segments() {
    let big_app = elf::write(0x400000, &[(load(0x400000, 0x1000000), &good_header()[..])]);
    assert!(matches!(pack(&kernel(), &big_app), Err(ImageError::Overlap(_))));
    assert!(matches!(pack(&app(&good_header()), &app(&good_header())), Err(ImageError::NoPvhNote)));
}

#[test]
fn errors_read_as_one_line() {
    for e in [ImageError::NotElf, ImageError::NoPvhNote, ImageError::NoAppHeader, ImageError::AbiMismatch { found: 9 }] {
        let s = e.to_string();
        assert!(!s.contains('\n') && !s.is_empty());
    }
}
