//! The little of ELF64 we read and write: header, program headers, notes.

use crate::ImageError;

pub const PT_LOAD: u32 = 1;
pub const PT_NOTE: u32 = 4;
pub const EHDR_SIZE: usize = 64;
pub const PHDR_SIZE: usize = 56;
const EM_X86_64: u16 = 62;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phdr {
    pub kind: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

pub struct Elf<'a> {
    pub bytes: &'a [u8],
    pub entry: u64,
    pub phdrs: Vec<Phdr>,
}

impl<'a> Elf<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ImageError> {
        if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
            return Err(ImageError::NotElf);
        }
        if bytes.len() < EHDR_SIZE || bytes[4] != 2 || bytes[5] != 1 || u16_at(bytes, 18) != EM_X86_64 {
            return Err(ImageError::NotX86_64);
        }
        let phoff = u64_at(bytes, 32) as usize;
        let phentsize = u16_at(bytes, 54) as usize;
        let phnum = u16_at(bytes, 56) as usize;
        if phentsize != PHDR_SIZE || phoff.checked_add(phnum * PHDR_SIZE).is_none_or(|e| e > bytes.len()) {
            return Err(ImageError::Truncated("program headers"));
        }
        let phdrs = (0..phnum)
            .map(|i| {
                let p = &bytes[phoff + i * PHDR_SIZE..];
                Phdr {
                    kind: u32_at(p, 0),
                    flags: u32_at(p, 4),
                    offset: u64_at(p, 8),
                    vaddr: u64_at(p, 16),
                    paddr: u64_at(p, 24),
                    filesz: u64_at(p, 32),
                    memsz: u64_at(p, 40),
                    align: u64_at(p, 48),
                }
            })
            .collect::<Vec<_>>();
        for p in &phdrs {
            if p.offset.checked_add(p.filesz).is_none_or(|e| e > bytes.len() as u64) || p.filesz > p.memsz && p.kind == PT_LOAD {
                return Err(ImageError::Truncated("segment"));
            }
        }
        Ok(Elf { bytes, entry: u64_at(bytes, 24), phdrs })
    }

    pub fn loads(&self) -> impl Iterator<Item = &Phdr> {
        self.phdrs.iter().filter(|p| p.kind == PT_LOAD && p.memsz > 0)
    }

    pub fn data(&self, p: &Phdr) -> &'a [u8] {
        &self.bytes[p.offset as usize..(p.offset + p.filesz) as usize]
    }

    /// Bytes at guest-physical `addr`, from the PT_LOAD holding them in the file.
    pub fn read_at(&self, addr: u64, len: usize) -> Option<&'a [u8]> {
        let p = self.loads().find(|p| p.paddr <= addr && addr + len as u64 <= p.paddr + p.filesz)?;
        let start = (p.offset + addr - p.paddr) as usize;
        Some(&self.bytes[start..start + len])
    }

    /// Descriptors of the notes with this owner and type.
    pub fn notes(&self, owner: &[u8], kind: u32) -> Vec<&'a [u8]> {
        let mut found = Vec::new();
        for p in self.phdrs.iter().filter(|p| p.kind == PT_NOTE) {
            let mut n = self.data(p);
            while n.len() >= 12 {
                let (namesz, descsz, t) = (u32_at(n, 0) as usize, u32_at(n, 4) as usize, u32_at(n, 8));
                let name_end = 12 + namesz.div_ceil(4) * 4;
                let desc_end = name_end + descsz.div_ceil(4) * 4;
                if desc_end > n.len() {
                    break;
                }
                if t == kind && n[12..12 + namesz].strip_suffix(b"\0").unwrap_or(&n[12..12 + namesz]) == owner {
                    found.push(&n[name_end..name_end + descsz]);
                }
                n = &n[desc_end..];
            }
        }
        found
    }
}

/// Writes an ELF64 executable from segments; each segment's bytes are placed
/// at a file offset congruent to its address modulo 4 KiB.
pub fn write(entry: u64, segments: &[(Phdr, &[u8])]) -> Vec<u8> {
    let mut out = vec![0u8; EHDR_SIZE + segments.len() * PHDR_SIZE];
    let mut phdrs = Vec::new();
    for (p, data) in segments {
        let mut offset = out.len() as u64;
        if p.kind == PT_LOAD {
            offset += (p.vaddr % 4096 + 4096 - offset % 4096) % 4096;
        }
        out.resize(offset as usize, 0);
        out.extend_from_slice(data);
        phdrs.push(Phdr { offset, filesz: data.len() as u64, ..*p });
    }
    let mut h = Vec::with_capacity(EHDR_SIZE);
    h.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    h.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    h.extend_from_slice(&EM_X86_64.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&entry.to_le_bytes());
    h.extend_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // phoff
    h.extend_from_slice(&0u64.to_le_bytes()); // shoff
    h.extend_from_slice(&0u32.to_le_bytes()); // flags
    h.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    h.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    h.extend_from_slice(&(phdrs.len() as u16).to_le_bytes());
    h.extend_from_slice(&[0; 6]); // no sections
    out[..EHDR_SIZE].copy_from_slice(&h);
    for (i, p) in phdrs.iter().enumerate() {
        let at = EHDR_SIZE + i * PHDR_SIZE;
        let fields = [p.kind.to_le_bytes().to_vec(), p.flags.to_le_bytes().to_vec(), p.offset.to_le_bytes().to_vec(),
                      p.vaddr.to_le_bytes().to_vec(), p.paddr.to_le_bytes().to_vec(), p.filesz.to_le_bytes().to_vec(),
                      p.memsz.to_le_bytes().to_vec(), p.align.to_le_bytes().to_vec()];
        out[at..at + PHDR_SIZE].copy_from_slice(&fields.concat());
    }
    out
}
