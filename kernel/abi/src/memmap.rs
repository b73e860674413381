//! The PVH memory map (`hvm_memmap_table_entry`, type 1 = RAM).

use crate::layout::{KERNEL_BASE, MIN_RAM, RAM_MAP_LIMIT};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
    pub reserved: u32,
}

pub const RAM: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemmapError {
    /// No RAM region covers the fixed layout (kernel, app, stacks, a minimal heap).
    TooLittleRam { found_end: u64 },
}

/// End of the RAM region that holds the kernel and everything above it,
/// clipped to what the page tables map. Zero-size entries (microvm ends
/// its map with one) and non-RAM entries are skipped.
pub fn ram_end(entries: &[MemmapEntry]) -> Result<u64, MemmapError> {
    let region = entries
        .iter()
        .filter(|e| e.kind == RAM && e.size != 0)
        .find(|e| e.addr <= KERNEL_BASE && KERNEL_BASE < e.addr.saturating_add(e.size));
    let end = region.map_or(0, |e| e.addr.saturating_add(e.size).min(RAM_MAP_LIMIT));
    if end < MIN_RAM {
        return Err(MemmapError::TooLittleRam { found_end: end });
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(addr: u64, size: u64, kind: u32) -> MemmapEntry {
        MemmapEntry { addr, size, kind, reserved: 0 }
    }

    #[test]
    fn microvm_like_map() {
        let m = [e(0, 0x9fc00, RAM), e(0x9fc00, 0x400, 2), e(0xf0000, 0x10000, 2),
                 e(0x100000, (256 << 20) - 0x100000, RAM), e(0x1_0000_0000, 0, RAM)];
        assert_eq!(ram_end(&m), Ok(256 << 20));
    }

    #[test]
    fn clipped_to_mapped_limit() {
        let m = [e(0, 5 << 30, RAM)];
        assert_eq!(ram_end(&m), Ok(RAM_MAP_LIMIT));
    }

    #[test]
    fn too_small_or_missing() {
        assert_eq!(ram_end(&[e(0x100000, 1 << 20, RAM)]),
                   Err(MemmapError::TooLittleRam { found_end: 2 << 20 }));
        assert_eq!(ram_end(&[]), Err(MemmapError::TooLittleRam { found_end: 0 }));
        assert!(ram_end(&[e(0, 1 << 30, 2)]).is_err());
    }
}
