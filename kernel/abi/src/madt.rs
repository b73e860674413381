//! ACPI: find the MADT from the RSDP and list the enabled local APIC ids;
//! find PCI Express's configuration space (ECAM) in the MCFG.
//! The kernel hands in byte slices of physical memory; all checks live here.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiError {
    BadRsdp,
    BadTable,
}

fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The root table named by an RSDP: `(address, is_xsdt)`.
pub fn root_table(rsdp: &[u8]) -> Result<(u64, bool), AcpiError> {
    if rsdp.len() < 20 || &rsdp[..8] != b"RSD PTR " || !checksum_ok(&rsdp[..20]) {
        return Err(AcpiError::BadRsdp);
    }
    if rsdp[15] >= 2 && rsdp.len() >= 36 {
        if let Some(x) = u64_at(rsdp, 24).filter(|x| *x != 0) {
            return Ok((x, true));
        }
    }
    Ok((u32_at(rsdp, 16).ok_or(AcpiError::BadRsdp)? as u64, false))
}

/// Length of an SDT from its 36-byte header, after checking the signature.
pub fn table_len(header: &[u8], signature: &[u8; 4]) -> Result<usize, AcpiError> {
    if header.len() < 36 || &header[..4] != signature {
        return Err(AcpiError::BadTable);
    }
    let len = u32_at(header, 4).ok_or(AcpiError::BadTable)? as usize;
    if len < 36 { Err(AcpiError::BadTable) } else { Ok(len) }
}

/// The addresses of the tables a whole RSDT/XSDT lists.
pub fn root_entries(root: &[u8], is_xsdt: bool) -> Result<impl Iterator<Item = u64> + '_, AcpiError> {
    if !checksum_ok(root) {
        return Err(AcpiError::BadTable);
    }
    let width = if is_xsdt { 8 } else { 4 };
    Ok(root[36..].chunks_exact(width).map(move |c| {
        if is_xsdt { u64::from_le_bytes(c.try_into().unwrap()) } else { u32::from_le_bytes(c.try_into().unwrap()) as u64 }
    }))
}

/// APIC ids of the usable processors in a whole MADT, in table order.
pub fn madt_apic_ids(madt: &[u8]) -> Result<impl Iterator<Item = u32> + '_, AcpiError> {
    if table_len(madt, b"APIC")? != madt.len() || !checksum_ok(madt) || madt.len() < 44 {
        return Err(AcpiError::BadTable);
    }
    let mut at = 44;
    Ok(core::iter::from_fn(move || loop {
        let kind = *madt.get(at)?;
        let len = *madt.get(at + 1)? as usize;
        if len < 2 || at + len > madt.len() {
            return None;
        }
        let entry = &madt[at..at + len];
        at += len;
        // Enabled (bit 0) or online-capable (bit 1).
        match kind {
            0 if len >= 8 && u32_at(entry, 4)? & 3 != 0 => return Some(entry[3] as u32),
            9 if len >= 16 && u32_at(entry, 8)? & 3 != 0 => return u32_at(entry, 4),
            _ => continue,
        }
    }))
}

/// PCI Express's memory-mapped configuration space (ECAM) of PCI segment 0: bus
/// `b`'s starts at `base + (b << 20)`, for `start_bus..=end_bus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ecam {
    pub base: u64,
    pub start_bus: u8,
    pub end_bus: u8,
}

impl Ecam {
    /// The bytes of configuration space the listed buses take.
    pub fn range(&self) -> (u64, u64) {
        let start = self.base + ((self.start_bus as u64) << 20);
        (start, ((self.end_bus as u64 - self.start_bus as u64) + 1) << 20)
    }
}

/// Segment 0's ECAM in a whole MCFG (header, 8 reserved bytes, then 16-byte
/// entries: base address, segment, start bus, end bus, 4 reserved).
pub fn mcfg_ecam(mcfg: &[u8]) -> Result<Option<Ecam>, AcpiError> {
    if table_len(mcfg, b"MCFG")? != mcfg.len() || !checksum_ok(mcfg) || mcfg.len() < 44 {
        return Err(AcpiError::BadTable);
    }
    for entry in mcfg[44..].chunks_exact(16) {
        let base = u64_at(entry, 0).ok_or(AcpiError::BadTable)?;
        let segment = u16::from_le_bytes([entry[8], entry[9]]);
        let (start_bus, end_bus) = (entry[10], entry[11]);
        if segment == 0 && start_bus <= end_bus && base != 0 {
            return Ok(Some(Ecam { base, start_bus, end_bus }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix_checksum(t: &mut [u8], at: usize) {
        t[at] = 0;
        let s = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        t[at] = 0u8.wrapping_sub(s);
    }

    fn madt(entries: &[&[u8]]) -> Vec<u8> {
        let mut t = vec![0u8; 44];
        t[..4].copy_from_slice(b"APIC");
        for e in entries {
            t.extend_from_slice(e);
        }
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut t, 9);
        t
    }

    #[test]
    fn lists_enabled_cpus() {
        let t = madt(&[
            &[0, 8, 0, 0, 1, 0, 0, 0],
            &[1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0], // IOAPIC, skipped
            &[0, 8, 1, 5, 0, 0, 0, 0],                    // disabled
            &[0, 8, 2, 2, 2, 0, 0, 0],                    // online-capable
            &[9, 16, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
        ]);
        assert_eq!(madt_apic_ids(&t).unwrap().collect::<Vec<_>>(), vec![0, 2, 256]);
    }

    #[test]
    fn rejects_corrupt_tables() {
        let mut t = madt(&[&[0, 8, 0, 0, 1, 0, 0, 0]]);
        t[44 + 3] = 9;
        assert!(madt_apic_ids(&t).is_err());
        let t = madt(&[&[0, 0, 0, 0]]);
        assert_eq!(madt_apic_ids(&t).unwrap().count(), 0, "a zero-length entry ends the walk");
        assert!(madt_apic_ids(&t[..40]).is_err());
    }

    #[test]
    fn rsdp_versions() {
        let mut r = vec![0u8; 36];
        r[..8].copy_from_slice(b"RSD PTR ");
        r[16..20].copy_from_slice(&0x1234u32.to_le_bytes());
        fix_checksum(&mut r[..20], 8);
        assert_eq!(root_table(&r), Ok((0x1234, false)));
        r[15] = 2;
        r[24..32].copy_from_slice(&0x5678u64.to_le_bytes());
        fix_checksum(&mut r[..20], 8);
        assert_eq!(root_table(&r), Ok((0x5678, true)));
        r[0] = b'X';
        assert_eq!(root_table(&r), Err(AcpiError::BadRsdp));
    }

    #[test]
    fn root_lists() {
        let mut t = vec![0u8; 36];
        t[..4].copy_from_slice(b"XSDT");
        t.extend_from_slice(&0x1000u64.to_le_bytes());
        t.extend_from_slice(&0x2000u64.to_le_bytes());
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut t, 9);
        assert_eq!(table_len(&t, b"XSDT"), Ok(52));
        assert_eq!(root_entries(&t, true).unwrap().collect::<Vec<_>>(), vec![0x1000, 0x2000]);
        assert_eq!(table_len(&t, b"RSDT"), Err(AcpiError::BadTable));
    }

    fn mcfg(entries: &[(u64, u16, u8, u8)]) -> Vec<u8> {
        let mut t = vec![0u8; 44];
        t[..4].copy_from_slice(b"MCFG");
        for (base, segment, start, end) in entries {
            t.extend_from_slice(&base.to_le_bytes());
            t.extend_from_slice(&segment.to_le_bytes());
            t.extend_from_slice(&[*start, *end, 0, 0, 0, 0]);
        }
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut t, 9);
        t
    }

    #[test]
    fn finds_segment_0s_ecam() {
        // q35: one entry, 0xB0000000, buses 0..=255.
        let t = mcfg(&[(0xB000_0000, 0, 0, 255)]);
        let ecam = mcfg_ecam(&t).unwrap().unwrap();
        assert_eq!(ecam, Ecam { base: 0xB000_0000, start_bus: 0, end_bus: 255 });
        assert_eq!(ecam.range(), (0xB000_0000, 256 << 20));
        // Another segment first, and a partial bus range.
        let t = mcfg(&[(0xC000_0000, 1, 0, 255), (0xE000_0000, 0, 2, 3)]);
        let ecam = mcfg_ecam(&t).unwrap().unwrap();
        assert_eq!(ecam.range(), (0xE000_0000 + (2 << 20), 2 << 20));
        assert_eq!(mcfg_ecam(&mcfg(&[])).unwrap(), None);
    }

    #[test]
    fn rejects_a_corrupt_mcfg() {
        let mut t = mcfg(&[(0xB000_0000, 0, 0, 255)]);
        t[44] ^= 1;
        assert!(mcfg_ecam(&t).is_err(), "checksum");
        assert!(mcfg_ecam(&mcfg(&[(0xB000_0000, 0, 0, 255)])[..50]).is_err(), "truncated");
        let mut t = mcfg(&[]);
        t[..4].copy_from_slice(b"APIC");
        assert!(mcfg_ecam(&t).is_err(), "signature");
    }
}
