//! Counts the CPUs the MADT lists (all parsing in toro_abi::madt).

use toro_abi::madt;

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

/// How many usable CPUs the MADT lists; `None` without ACPI.
pub fn madt_cpu_count(rsdp_paddr: u64) -> Option<usize> {
    let rsdp = if rsdp_paddr != 0 { rsdp_paddr } else { find_rsdp()? };
    let (root, xsdt) = madt::root_table(phys(rsdp, 36)).ok()?;
    let len = madt::table_len(phys(root, 36), if xsdt { b"XSDT" } else { b"RSDT" }).ok()?;
    let entries = madt::root_entries(phys(root, len), xsdt).ok()?;
    for table in entries {
        if let Ok(len) = madt::table_len(phys(table, 36), b"APIC") {
            return Some(madt::madt_apic_ids(phys(table, len)).ok()?.count());
        }
    }
    None
}
