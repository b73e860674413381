//! Counts the CPUs the MADT lists and finds PCI Express's configuration space in
//! the MCFG (all parsing in toro_abi::madt).

use toro_abi::madt::{self, Ecam};

use crate::paging;

/// A view of physical memory, mapped for ring 0 first if needed.
fn phys(addr: u64, len: usize) -> &'static [u8] {
    paging::map_kernel_range(addr, len as u64);
    // SAFETY: the range is identity mapped now; firmware tables are never written.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

fn find_rsdp() -> Option<u64> {
    (0xE0000u64..0x100000).step_by(16).find(|a| phys(*a, 8) == b"RSD PTR ")
}

/// The whole table with `signature` the RSDP's root table lists, if any.
fn find_table(rsdp: u64, signature: &[u8; 4]) -> Option<&'static [u8]> {
    let (root, xsdt) = madt::root_table(phys(rsdp, 36)).ok()?;
    let len = madt::table_len(phys(root, 36), if xsdt { b"XSDT" } else { b"RSDT" }).ok()?;
    let entries = madt::root_entries(phys(root, len), xsdt).ok()?;
    for table in entries {
        if let Ok(len) = madt::table_len(phys(table, 36), signature) {
            return Some(phys(table, len));
        }
    }
    None
}

/// How many usable CPUs the MADT lists; `None` without ACPI.
pub fn madt_cpu_count(rsdp_paddr: u64) -> Option<usize> {
    let rsdp = if rsdp_paddr != 0 { rsdp_paddr } else { find_rsdp()? };
    Some(madt::madt_apic_ids(find_table(rsdp, b"APIC")?).ok()?.count())
}

/// PCI segment 0's ECAM, from the MCFG of the RSDP the PVH loader handed over
/// (q35's firmware does; microvm's loader passes none, and it has no PCI: no scan
/// for an RSDP then, which would cost its boot ~8,000 emulated reads under PVM).
pub fn pci_ecam(rsdp_paddr: u64) -> Option<Ecam> {
    if rsdp_paddr == 0 {
        return None;
    }
    madt::mcfg_ecam(find_table(rsdp_paddr, b"MCFG")?).ok()?
}
