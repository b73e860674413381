//! The one copy of a rendezvous: from the sender's buffer into the receiver's.
//!
//! Copies longer than this core's L2 cache (and at least [`STREAM_COPY_MIN`])
//! write the destination with non-temporal stores. A copy that large does not
//! fit the L2 beside its source, so ordinary stores first read every
//! destination line in (write-allocate) and then evict other lines to make
//! room; streaming stores skip that read, but leave the destination out of
//! cache and run at the memory's write speed. Measured in a VM under KVM with
//! `copy-bench` (examples/mpi-suite; BENCHMARKS.md), plain against streamed,
//! into 32 buffers in turn / into one buffer again and again:
//! - Zen 3 EPYC, L2 512 KiB: 1 MiB 8.8–9.6 / 22.8–26.3 against 19.2–19.3 /
//!   19.9–20.1 GB/s; 512 KiB 10.1 / 19.4 against 19.6 / 19.4.
//! - Zen 5 EPYC, L2 1 MiB: 1 MiB 58.8 / 69.9 against 43.2 / 43.1 GB/s; 2 MiB
//!   37.1 / 62.3 against 43.7 / 43.7; 4 MiB 31.6 / 62.2 against 43.4 / 43.6.
//!
//! So streaming pays from about the L2's size on; exactly at it the two hosts
//! disagree (Zen 3: streaming 2× faster into cold buffers at 512 KiB; Zen 5:
//! plain 1.4–1.6× faster at 1 MiB), and the boundary follows Zen 5, this
//! project's host now: copies longer than the L2 stream. The L2 comes from
//! CPUID, read once (512 KiB where CPUID does not tell).

use core::sync::atomic::{AtomicUsize, Ordering};

/// Copies shorter than this never stream, whatever the L2.
pub const STREAM_COPY_MIN: usize = 512 << 10;

/// Copies of at least this many bytes stream (0: not read from CPUID yet).
static STREAM_FROM: AtomicUsize = AtomicUsize::new(0);

/// Copies `src` into the front of `dst` the way a rendezvous receive does: past
/// the cache when it is longer than the L2 (see the module docs). Panics if
/// `dst` is shorter.
#[inline]
pub fn copy_payload(src: &[u8], dst: &mut [u8]) {
    let dst = &mut dst[..src.len()];
    if src.len() >= STREAM_COPY_MIN && src.len() >= stream_from() {
        stream_copy(src, dst);
    } else {
        // SAFETY: both slices are `src.len()` bytes, and a `&mut` slice
        // cannot overlap a `&` one.
        unsafe { crate::virtq::copy_small(src.as_ptr(), dst.as_mut_ptr(), src.len()) };
    }
}

/// Copies `src` into the front of `dst` with streaming stores whatever its
/// length (for measuring; the bus uses [`copy_payload`]). Panics if `dst` is shorter.
pub fn copy_streamed(src: &[u8], dst: &mut [u8]) {
    stream_copy(src, &mut dst[..src.len()]);
}

/// The length from which [`copy_payload`] streams on this machine.
pub fn stream_from() -> usize {
    match STREAM_FROM.load(Ordering::Relaxed) {
        0 => {
            let from = stream_from_l2(l2_bytes());
            STREAM_FROM.store(from, Ordering::Relaxed);
            from
        }
        from => from,
    }
}

/// Streaming pays for copies longer than the L2 (`None`: unknown).
fn stream_from_l2(l2: Option<usize>) -> usize {
    l2.map_or(STREAM_COPY_MIN, |l2| l2.saturating_add(1)).max(STREAM_COPY_MIN)
}

/// This core's L2 in bytes, from CPUID leaf 0x8000_0006 (AMD and Intel alike).
#[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
fn l2_bytes() -> Option<usize> {
    use core::arch::x86_64::__cpuid;
    // SAFETY: CPUID exists on every x86_64 CPU and only reads identification
    // registers (under a hypervisor it may trap once; this runs once).
    #[allow(unused_unsafe)]
    let (max_leaf, leaf) = unsafe { (__cpuid(0x8000_0000).eax, __cpuid(0x8000_0006)) };
    let kib = (leaf.ecx >> 16) as usize;
    (max_leaf >= 0x8000_0006 && kib != 0).then_some(kib << 10)
}

#[cfg(not(all(target_arch = "x86_64", not(miri), not(loom))))]
fn l2_bytes() -> Option<usize> {
    None
}

#[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
fn stream_copy(src: &[u8], dst: &mut [u8]) {
    use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    const BLOCK: usize = 64;
    let len = src.len();
    // Up to the destination's first cache line boundary with plain stores.
    let head = dst.as_ptr().align_offset(BLOCK).min(len);
    dst[..head].copy_from_slice(&src[..head]);
    let blocks = (len - head) / BLOCK;
    let body = head + blocks * BLOCK;
    // SAFETY: SSE2 is part of x86_64. Every load reads 16 bytes inside
    // `src[head..body]` and every store writes 16 bytes inside
    // `dst[head..body]`, whose start is 64-byte aligned (as `_mm_stream_si128`
    // needs 16). The sfence orders the streaming stores before anything this
    // core stores next, such as the release that tells the sender we are done.
    unsafe {
        let (s, d) = (src.as_ptr().add(head), dst.as_mut_ptr().add(head));
        for block in 0..blocks {
            let at = block * BLOCK;
            let from = s.add(at).cast::<__m128i>();
            let to = d.add(at).cast::<__m128i>();
            let (a, b) = (_mm_loadu_si128(from), _mm_loadu_si128(from.add(1)));
            let (c, e) = (_mm_loadu_si128(from.add(2)), _mm_loadu_si128(from.add(3)));
            _mm_stream_si128(to, a);
            _mm_stream_si128(to.add(1), b);
            _mm_stream_si128(to.add(2), c);
            _mm_stream_si128(to.add(3), e);
        }
        _mm_sfence();
    }
    dst[body..].copy_from_slice(&src[body..]);
}

#[cfg(not(all(target_arch = "x86_64", not(miri), not(loom))))]
fn stream_copy(src: &[u8], dst: &mut [u8]) {
    dst.copy_from_slice(src);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn streaming_starts_past_the_l2_and_never_below_the_minimum() {
        assert_eq!(stream_from_l2(None), STREAM_COPY_MIN);
        assert_eq!(stream_from_l2(Some(256 << 10)), STREAM_COPY_MIN);
        assert_eq!(stream_from_l2(Some(1 << 20)), (1 << 20) + 1);
        assert_eq!(stream_from_l2(Some(usize::MAX)), usize::MAX);
        assert!(stream_from() >= STREAM_COPY_MIN);
        assert_eq!(stream_from(), stream_from(), "read once, then kept");
    }

    #[test]
    fn copies_land_whole_at_any_alignment_and_leave_the_rest_alone() {
        let from = stream_from();
        let source: Vec<u8> = (0..from + 200).map(|i| (i * 7 + (i >> 9)) as u8).collect();
        type Copy = fn(&[u8], &mut [u8]);
        let copies: [(&str, Copy); 2] = [("copy_payload", copy_payload), ("copy_streamed", copy_streamed)];
        for len in [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 20, 31, 32, 33, 63, 4096 + 5, STREAM_COPY_MIN - 1, STREAM_COPY_MIN, STREAM_COPY_MIN + 1, from - 1, from, from + 127] {
            for ((src_at, dst_at), (name, copy)) in [(0, 0), (1, 0), (0, 3), (17, 45), (63, 1)].into_iter().flat_map(|at| copies.map(|c| (at, c))) {
                let src = &source[src_at..src_at + len];
                let mut dst = vec![0xEEu8; dst_at + len + 70];
                copy(src, &mut dst[dst_at..]);
                assert!(dst[..dst_at].iter().all(|&b| b == 0xEE), "{name} len {len} at {src_at}/{dst_at}: before");
                assert!(dst[dst_at..dst_at + len] == *src, "{name} len {len} at {src_at}/{dst_at}: data");
                assert!(dst[dst_at + len..].iter().all(|&b| b == 0xEE), "{name} len {len} at {src_at}/{dst_at}: after");
            }
        }
    }
}
