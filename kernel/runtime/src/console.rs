//! Console output. Each thread collects its text until a newline, then the
//! whole line (with its `[rank N] ` prefix) goes out at once, so lines from
//! different cores never mix.
//!
//! With a virtio console (microvm: `-device virtio-serial-device -device
//! virtconsole`) a line costs one notify — one VM exit — and lines that
//! pile up while another core is sending go out together in one buffer.
//! Without one, each line is a trap to the kernel, which writes the serial
//! port byte by byte (every byte a VM exit: ~40 µs each under KVM PVM).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

use spin::Mutex;
use virtio_drivers::device::console::VirtIOConsole;
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::transport::DeviceType;

use crate::sched::{self, Thread};
use crate::virtio::{find_mmio, IdentityHal};

type Device = VirtIOConsole<IdentityHal, MmioTransport<'static>>;

static DEVICE: Mutex<Option<Device>> = Mutex::new(None);
static HAS_DEVICE: AtomicBool = AtomicBool::new(false);
/// Lines waiting for whoever holds DEVICE.
static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Finds the virtio console (core 0, once, before other output).
pub(crate) fn init() -> bool {
    let Some(transport) = find_mmio(DeviceType::Console, 0) else { return false };
    match Device::new(transport) {
        Ok(dev) => {
            *DEVICE.lock() = Some(dev);
            HAS_DEVICE.store(true, Ordering::Release);
            true
        }
        Err(_) => false,
    }
}

fn send(dev: &mut Device, bytes: &[u8]) {
    if dev.send_bytes(bytes).is_err() {
        crate::arch::console_write(bytes);
    }
}

fn write_line(bytes: &[u8]) {
    if !HAS_DEVICE.load(Ordering::Acquire) {
        crate::arch::console_write(bytes);
        return;
    }
    PENDING.lock().extend_from_slice(bytes);
    // Flush combining: whoever holds the device sends everything pending,
    // and looks again after letting go, so no line is left behind.
    loop {
        let Some(mut guard) = DEVICE.try_lock() else { return };
        let dev = guard.as_mut().expect("console device");
        loop {
            let batch = core::mem::take(&mut *PENDING.lock());
            if batch.is_empty() {
                break;
            }
            send(dev, &batch);
        }
        drop(guard);
        if PENDING.lock().is_empty() {
            return;
        }
    }
}

/// Sends everything pending plus `last`, then keeps the console locked
/// forever: the VM is about to end and nothing may follow (or cut) this.
pub(crate) fn final_line(last: &[u8]) {
    if !HAS_DEVICE.load(Ordering::Acquire) {
        if !last.is_empty() {
            crate::arch::console_write(last);
        }
        return;
    }
    // Bounded wait: a panic inside `send` on this very core holds the lock.
    let deadline = crate::time::now_ns() + 100_000_000;
    let mut guard = loop {
        if let Some(g) = DEVICE.try_lock() {
            break g;
        }
        if crate::time::now_ns() > deadline {
            crate::arch::console_write(last);
            return;
        }
        core::hint::spin_loop();
    };
    let dev = guard.as_mut().expect("console device");
    let pending = core::mem::take(&mut *PENDING.lock());
    if !pending.is_empty() {
        send(dev, &pending);
    }
    if !last.is_empty() {
        send(dev, last);
    }
    core::mem::forget(guard);
}

fn with_line<R>(t: &Thread, f: impl FnOnce(&mut String) -> R) -> R {
    // SAFETY: a thread's line buffer is touched only by the thread itself,
    // here, and `f` never reaches this function again (no nested printing).
    f(unsafe { &mut *t.line.get() })
}

#[doc(hidden)]
pub fn _print(args: core::fmt::Arguments) {
    let t = sched::current();
    // Format outside the buffer: formatting may itself print (a Display impl).
    let mut text = String::new();
    let _ = text.write_fmt(args);
    with_line(t, |line| {
        line.push_str(&text);
        while let Some(end) = line.find('\n') {
            let rest = line.split_off(end + 1);
            emit(t, line);
            *line = rest;
        }
    });
}

fn emit(t: &Thread, text: &str) {
    let mut out = String::with_capacity(text.len() + 16);
    if let Some(rank) = t.rank() {
        let _ = write!(out, "[rank {rank}] ");
    }
    out.push_str(text);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    write_line(out.as_bytes());
}

/// Sends the calling thread's unfinished line, if any.
pub fn flush() {
    flush_line(sched::current());
}

pub(crate) fn flush_line(t: &Thread) {
    let text = with_line(t, core::mem::take);
    if !text.is_empty() {
        emit(t, &text);
    }
}

/// Formats one system line (panics, fatal errors) without allocating,
/// embedded newlines turned into "; ", cut at 512 bytes, and hands it to
/// `out` with its newline.
pub(crate) fn system_line(args: core::fmt::Arguments, out: fn(&[u8])) {
    struct Buf {
        bytes: [u8; 512],
        len: usize,
    }
    impl Write for Buf {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            for &b in s.as_bytes() {
                let piece: &[u8] = if b == b'\n' { b"; " } else { core::slice::from_ref(&b) };
                let n = piece.len().min(self.bytes.len() - 1 - self.len);
                self.bytes[self.len..self.len + n].copy_from_slice(&piece[..n]);
                self.len += n;
            }
            Ok(())
        }
    }
    let mut b = Buf { bytes: [0; 512], len: 0 };
    let _ = b.write_fmt(args);
    b.bytes[b.len] = b'\n';
    out(&b.bytes[..=b.len]);
}

/// A system line that does not end the VM.
pub(crate) fn info_line(args: core::fmt::Arguments) {
    system_line(args, write_line);
}

/// The last line before the VM ends (see `final_line`).
pub(crate) fn fatal_line(args: core::fmt::Arguments) {
    system_line(args, final_line);
}
