//! The one copy of a rendezvous: from the sender's buffer into the receiver's.
//!
//! From [`STREAM_COPY_MIN`] bytes up the destination is written with
//! non-temporal stores. A copy that large does not fit this core's L2 beside
//! its source, so ordinary stores first read every destination line in
//! (write-allocate) and then evict other lines to make room. Streaming stores
//! skip that read. Measured in a VM under KVM (this host's EPYC: 512 KiB L2
//! per core, 32 MiB L3; `copy-bench` in examples/mpi-suite, see BENCHMARKS.md):
//! 1 MiB copies into 32 buffers in turn 8.8–9.6 → 19.2–19.3 GB/s, into one
//! buffer copied again and again 22.8–26.3 → 19.9–20.1 GB/s; at 512 KiB 10.1 →
//! 19.6 and 19.4 → 19.4. The price is that the destination is not in cache
//! afterwards, which a message this large mostly is not anyway.

/// Copies of at least this many bytes stream their destination past the cache.
pub const STREAM_COPY_MIN: usize = 512 << 10;

/// Copies `src` into the front of `dst` the way a rendezvous receive does: past
/// the cache from [`STREAM_COPY_MIN`] bytes up. Panics if `dst` is shorter.
#[inline]
pub fn copy_payload(src: &[u8], dst: &mut [u8]) {
    let dst = &mut dst[..src.len()];
    if src.len() >= STREAM_COPY_MIN {
        stream_copy(src, dst);
    } else {
        // SAFETY: both slices are `src.len()` bytes, and a `&mut` slice
        // cannot overlap a `&` one.
        unsafe { crate::virtq::copy_small(src.as_ptr(), dst.as_mut_ptr(), src.len()) };
    }
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
    fn streamed_copies_land_whole_at_any_alignment_and_leave_the_rest_alone() {
        let source: Vec<u8> = (0..STREAM_COPY_MIN + 200).map(|i| (i * 7 + (i >> 9)) as u8).collect();
        for len in [STREAM_COPY_MIN - 1, STREAM_COPY_MIN, STREAM_COPY_MIN + 1, STREAM_COPY_MIN + 127] {
            for (src_at, dst_at) in [(0, 0), (1, 0), (0, 3), (17, 45), (63, 1)] {
                let src = &source[src_at..src_at + len];
                let mut dst = vec![0xEEu8; dst_at + len + 70];
                copy_payload(src, &mut dst[dst_at..]);
                assert!(dst[..dst_at].iter().all(|&b| b == 0xEE), "len {len} at {src_at}/{dst_at}: before");
                assert!(dst[dst_at..dst_at + len] == *src, "len {len} at {src_at}/{dst_at}: data");
                assert!(dst[dst_at + len..].iter().all(|&b| b == 0xEE), "len {len} at {src_at}/{dst_at}: after");
            }
        }
    }
}
