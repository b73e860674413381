//! Console output. Each thread collects its text until a newline, then the
//! whole line (with its `[rank N] ` prefix) goes to the kernel in one trap,
//! which writes it under a lock: lines from different cores never mix.

use alloc::string::String;
use core::fmt::Write;

use crate::sched::{self, Thread};

fn line_of(t: &Thread) -> &mut String {
    // SAFETY: a thread's line buffer is touched only by the thread itself
    // (and by flush_line as it exits, on the same thread).
    unsafe { &mut *t.line.get() }
}

#[doc(hidden)]
pub fn _print(args: core::fmt::Arguments) {
    let t = sched::current();
    let line = line_of(t);
    let _ = line.write_fmt(args);
    while let Some(end) = line.find('\n') {
        let rest = line.split_off(end + 1);
        emit(t, line);
        *line = rest;
    }
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
    crate::arch::console_write(out.as_bytes());
}

/// Sends the calling thread's unfinished line, if any.
pub fn flush() {
    flush_line(sched::current());
}

pub(crate) fn flush_line(t: &Thread) {
    let line = line_of(t);
    if !line.is_empty() {
        let text = core::mem::take(line);
        emit(t, &text);
    }
}

/// Writes one line without a rank prefix and without allocating (panics,
/// system messages). Long text is cut at 512 bytes.
pub(crate) fn system_line(args: core::fmt::Arguments) {
    struct Buf {
        bytes: [u8; 512],
        len: usize,
    }
    impl Write for Buf {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            // One line: embedded newlines (multi-line panic messages) become "; ".
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
    crate::arch::console_write(&b.bytes[..=b.len]);
}
