//! The only module with `unsafe` code: byte views of `Equivalence` data, aligned
//! scratch buffers, and the global platform pointer.
//!
//! Everything else in the crate is `#![deny(unsafe_code)]` and goes through the safe
//! functions here. The soundness argument rests on the `Equivalence` contract: a type
//! is plain data with no padding, no pointers, no invariants beyond its bytes — except
//! `bool`, whose bytes the library validates before they reach a `bool` slot.
#![allow(unsafe_code)]

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::mem::{align_of, size_of};
use core::sync::atomic::{AtomicPtr, Ordering};

use crate::datatype::{DatatypeRef, MinMaxLoc, Primitive};
use crate::environment::Platform;

/// Bytes of a slice of `Equivalence` values.
pub(crate) fn bytes_of<T: Equivalence>(values: &[T]) -> &[u8] {
    // SAFETY: `Equivalence` types have no padding bytes (type contract), so every byte
    // of the slice is initialized; u8 has alignment 1; the length is the slice's size.
    unsafe { core::slice::from_raw_parts(values.as_ptr().cast::<u8>(), size_of::<T>() * values.len()) }
}

/// Mutable bytes of a slice of `Equivalence` values. Crate-private: callers write only
/// bytes that form valid values of `T` (bytes produced by a sender of the same
/// datatype, with `bool` bytes checked by `datatype::validate`).
pub(crate) fn bytes_of_mut<T: Equivalence>(values: &mut [T]) -> &mut [u8] {
    // SAFETY: as `bytes_of`; exclusive borrow is carried over. Writes are restricted to
    // valid bit patterns by the callers (see above), so `T`'s validity is preserved.
    unsafe { core::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), size_of::<T>() * values.len()) }
}

/// Views bytes as `&[T]` if they are aligned for `T` and a whole number of `T`.
pub(crate) fn cast_slice<T: Equivalence>(bytes: &[u8]) -> Option<&[T]> {
    let size = size_of::<T>();
    if size == 0 || bytes.len() % size != 0 || (bytes.as_ptr() as usize) % align_of::<T>() != 0 {
        return None;
    }
    // SAFETY: alignment and length checked above; the bytes hold values of T produced by
    // this library from `T`-typed buffers (the caller checked the datatype matches).
    Some(unsafe { core::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}

/// Mutable version of `cast_slice`.
pub(crate) fn cast_slice_mut<T: Equivalence>(bytes: &mut [u8]) -> Option<&mut [T]> {
    let size = size_of::<T>();
    if size == 0 || bytes.len() % size != 0 || (bytes.as_ptr() as usize) % align_of::<T>() != 0 {
        return None;
    }
    // SAFETY: as `cast_slice`, with the exclusive borrow carried over.
    Some(unsafe { core::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<T>(), bytes.len() / size) })
}

/// Builds a `Vec<T>` from bytes (any alignment). `bytes.len()` must be a multiple of
/// `size_of::<T>()` and the bytes valid values of `T` (validated by the caller).
pub(crate) fn vec_from_bytes<T: Equivalence>(bytes: &[u8]) -> Vec<T> {
    let size = size_of::<T>().max(1);
    let count = bytes.len() / size;
    let mut values: Vec<T> = Vec::with_capacity(count);
    // SAFETY: the capacity holds `count` values; we copy exactly `count * size_of::<T>()`
    // bytes (≤ bytes.len()) into it, byte-wise so source alignment does not matter, and
    // only then set the length; the bytes are valid `T`s by the caller's contract.
    unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), values.as_mut_ptr().cast::<u8>(), count * size_of::<T>());
        values.set_len(count);
    }
    values
}

/// A byte buffer aligned for every `Equivalence` type (16 bytes), so user-defined
/// operations can view reduction scratch space as typed slices.
#[derive(Clone, Default)]
pub(crate) struct AlignedBytes {
    words: Words,
    len: usize,
}

/// Words of [`INLINE_WORDS`] or fewer live inside the value: the 8-byte reductions and
/// exchanges of small collectives then never touch the allocator.
const INLINE_WORDS: usize = 4;

#[derive(Clone)]
enum Words {
    Inline([u128; INLINE_WORDS]),
    Heap(Vec<u128>),
}

impl Default for Words {
    fn default() -> Self {
        Words::Inline([0; INLINE_WORDS])
    }
}

impl AlignedBytes {
    pub(crate) fn zeroed(len: usize) -> AlignedBytes {
        let words = len.div_ceil(16);
        let words = if words <= INLINE_WORDS { Words::Inline([0; INLINE_WORDS]) } else { Words::Heap(alloc::vec![0u128; words]) };
        AlignedBytes { words, len }
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> AlignedBytes {
        let mut buffer = AlignedBytes::zeroed(bytes.len());
        buffer.as_mut().copy_from_slice(bytes);
        buffer
    }

    fn words(&self) -> &[u128] {
        match &self.words {
            Words::Inline(words) => words,
            Words::Heap(words) => words,
        }
    }

    fn words_mut(&mut self) -> &mut [u128] {
        match &mut self.words {
            Words::Inline(words) => words,
            Words::Heap(words) => words,
        }
    }
}

impl AsRef<[u8]> for AlignedBytes {
    fn as_ref(&self) -> &[u8] {
        let words = self.words();
        debug_assert!(words.len() * 16 >= self.len);
        // SAFETY: u128 has no padding and every bit pattern is a valid u8 sequence; the
        // words hold at least `len` bytes (`div_ceil` in `zeroed`).
        unsafe { core::slice::from_raw_parts(words.as_ptr().cast::<u8>(), self.len) }
    }
}

impl AsMut<[u8]> for AlignedBytes {
    fn as_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        let words = self.words_mut();
        debug_assert!(words.len() * 16 >= len);
        // SAFETY: as `as_ref`; any byte written leaves a valid u128.
        unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) }
    }
}

/// The installed platform (see `environment::install`): a leaked box holding a
/// `&'static dyn Platform` (a thin pointer to a fat one, so it fits an `AtomicPtr`).
static PLATFORM: AtomicPtr<&'static dyn Platform> = AtomicPtr::new(core::ptr::null_mut());

/// Installs the platform once; later calls return false and change nothing.
pub(crate) fn install_platform(platform: &'static dyn Platform) -> bool {
    let boxed = Box::into_raw(Box::new(platform));
    match PLATFORM.compare_exchange(core::ptr::null_mut(), boxed, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => true,
        Err(_) => {
            // SAFETY: `boxed` came from `Box::into_raw` just above and was never shared.
            drop(unsafe { Box::from_raw(boxed) });
            false
        }
    }
}

pub(crate) fn platform() -> Option<&'static dyn Platform> {
    let pointer = PLATFORM.load(Ordering::Acquire);
    if pointer.is_null() {
        return None;
    }
    // SAFETY: a non-null value was stored by `install_platform` from a leaked Box that is
    // never freed or overwritten (compare_exchange from null only), so it is valid forever.
    Some(unsafe { *pointer })
}

/// A Rust type with an MPI datatype: values travel as their bytes.
///
/// # Safety
/// Implement only for `Copy` plain data: no padding bytes, no pointers or references,
/// and every byte pattern a value of the same type can have is valid (no niches other
/// than `bool`, which the library checks). `equivalent_datatype().size()` must equal
/// `size_of::<Self>()`. For your own structs, `#[derive(Equivalence)]` (feature
/// `derive`) checks all this at compile time; by hand, for a `#[repr(C)]` struct
/// without padding or `bool` fields, return `DatatypeRef::opaque::<Self>()`.
pub unsafe trait Equivalence: Copy + 'static {
    fn equivalent_datatype() -> DatatypeRef;
    /// Whether some byte patterns of `size_of::<Self>()` bytes are not values (it
    /// holds a `bool`). Used by `#[derive(Equivalence)]`.
    #[doc(hidden)]
    const HAS_INVALID_BYTES: bool = false;
    /// Whether `bytes` (exactly `size_of::<Self>()`) are a value of `Self`.
    #[doc(hidden)]
    fn is_valid_bytes(_bytes: &[u8]) -> bool {
        true
    }
}

macro_rules! primitive_equivalence {
    ($($t:ty => $p:ident),* $(,)?) => {$(
        // SAFETY: primitive numeric types and bool are plain data without padding.
        unsafe impl Equivalence for $t {
            fn equivalent_datatype() -> DatatypeRef { DatatypeRef::primitive(Primitive::$p) }
        }
    )*};
}
primitive_equivalence!(
    i8 => I8, i16 => I16, i32 => I32, i64 => I64, i128 => I128, isize => Isize,
    u8 => U8, u16 => U16, u32 => U32, u64 => U64, u128 => U128, usize => Usize,
    f32 => F32, f64 => F64,
);

// SAFETY: bool is one byte without padding; the library checks received bytes are 0
// or 1 (`HAS_INVALID_BYTES`, `datatype::validate`).
unsafe impl Equivalence for bool {
    fn equivalent_datatype() -> DatatypeRef {
        DatatypeRef::primitive(Primitive::Bool)
    }
    const HAS_INVALID_BYTES: bool = true;
    fn is_valid_bytes(bytes: &[u8]) -> bool {
        bytes.iter().all(|&byte| byte <= 1)
    }
}

// SAFETY: an array of plain data is plain data with no padding between elements.
unsafe impl<T: Equivalence, const N: usize> Equivalence for [T; N] {
    fn equivalent_datatype() -> DatatypeRef {
        T::equivalent_datatype().contiguous(N)
    }
    const HAS_INVALID_BYTES: bool = T::HAS_INVALID_BYTES;
    fn is_valid_bytes(bytes: &[u8]) -> bool {
        bytes.chunks(size_of::<T>().max(1)).all(T::is_valid_bytes)
    }
}

macro_rules! loc_equivalence {
    ($($v:ty, $vp:ident, $l:ty, $lp:ident);* $(;)?) => {$(
        // SAFETY: repr(C) pair of two primitives of equal size: no padding.
        unsafe impl Equivalence for MinMaxLoc<$v, $l> {
            fn equivalent_datatype() -> DatatypeRef {
                DatatypeRef::loc(Primitive::$vp, Primitive::$lp)
            }
        }
    )*};
}
loc_equivalence!(
    i32, I32, i32, I32; u32, U32, i32, I32; f32, F32, i32, I32;
    i64, I64, i64, I64; u64, U64, i64, I64; f64, F64, i64, I64;
    i16, I16, i16, I16; i8, I8, i8, I8;
);


/// The buffer of a posted immediate receive, as raw parts: the engine copies a
/// matching message straight into it (one copy, no staging vector), at any
/// progress call until the request completes.
///
/// Contract (crate-private): made by `request::Request::receive` from a
/// `&'a mut [u8]` the request keeps borrowed for `'a` and never touches directly;
/// `bytes_mut` is called only by the engine while the receive is posted and by the
/// request once `take_matched` handed the message over, never both at once (one
/// rank, one thread). A request completes before it is dropped and `scope` aborts
/// on a leaked one, so the memory outlives every use.
#[derive(Clone, Copy)]
pub(crate) struct Landing {
    at: *mut u8,
    len: usize,
    pub(crate) datatype: DatatypeRef,
}

impl Landing {
    pub(crate) fn new(buffer: &mut [u8], datatype: DatatypeRef) -> Landing {
        Landing { at: buffer.as_mut_ptr(), len: buffer.len(), datatype }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The buffer (see the type's contract).
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn bytes_mut(&self) -> &mut [u8] {
        // SAFETY: `at`/`len` came from a live `&mut [u8]` that nothing else uses
        // while a `Landing` refers to it, and only one `bytes_mut` slice exists at a
        // time (the type's contract).
        unsafe { core::slice::from_raw_parts_mut(self.at, self.len) }
    }
}
