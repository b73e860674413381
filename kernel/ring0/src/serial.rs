//! COM1 output for the kernel's own messages and the console trap. Every
//! byte is a VM exit; callers hand over whole lines, one CPU at a time.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::cpu::outb;

const COM1: u16 = 0x3F8;

static LOCK: AtomicBool = AtomicBool::new(false);

pub struct Guard;

pub fn lock() -> Guard {
    while LOCK.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        core::hint::spin_loop();
    }
    Guard
}

impl Drop for Guard {
    fn drop(&mut self) {
        LOCK.store(false, Ordering::Release);
    }
}

impl Guard {
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        // SAFETY: `rep outsb` reads `bytes` (valid for its length) and writes COM1.
        unsafe {
            core::arch::asm!("rep outsb", inout("rsi") bytes.as_ptr() => _, inout("rcx") bytes.len() => _,
                             in("dx") COM1, options(nostack, preserves_flags));
        }
    }
}

impl fmt::Write for Guard {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Prints one line from the kernel, prefixed `toro: `.
#[macro_export]
macro_rules! kprintln {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut g = $crate::serial::lock();
        let _ = g.write_str("toro: ");
        let _ = g.write_fmt(format_args!($($arg)*));
        let _ = g.write_str("\n");
    }};
}

#[allow(dead_code)]
pub fn putc(b: u8) {
    outb(COM1, b);
}
