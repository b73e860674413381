//! Datatypes: which Rust types travel in messages (`Equivalence`), how buffers expose
//! their bytes (`Buffer`, `BufferMut`), and partitioned buffers for varcount collectives.

use alloc::vec::Vec;
use core::any::TypeId;
use core::borrow::Borrow;
use core::mem::size_of;

use crate::error::{fail, ErrorClass, MpiResult};
use crate::raw;
use crate::Count;

/// The primitive element types MPI reductions understand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Primitive {
    I8, I16, I32, I64, I128, Isize,
    U8, U16, U32, U64, U128, Usize,
    F32, F64,
    Bool,
}

impl Primitive {
    pub fn size(self) -> usize {
        use Primitive::*;
        match self {
            I8 | U8 | Bool => 1,
            I16 | U16 => 2,
            I32 | U32 | F32 => 4,
            I64 | U64 | F64 => 8,
            I128 | U128 => 16,
            Isize | Usize => size_of::<usize>(),
        }
    }
}

/// One element of a datatype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Element {
    Primitive(Primitive),
    /// A (value, location) pair for MINLOC / MAXLOC (`MinMaxLoc`).
    Loc { value: Primitive, location: Primitive },
    /// A user type made of plain data; only user-defined operations can reduce it.
    /// `check` validates received bytes when the type has invalid patterns (a `bool`
    /// field of a derived struct).
    Opaque { size: usize, type_id: TypeId, check: Option<ByteCheck> },
}

/// Validity check of one value's bytes. Compares equal to every other check: the
/// `type_id` beside it already tells types apart.
#[derive(Clone, Copy)]
pub struct ByteCheck(fn(&[u8]) -> bool);

impl PartialEq for ByteCheck {
    fn eq(&self, _: &ByteCheck) -> bool {
        true
    }
}
impl Eq for ByteCheck {}
impl core::hash::Hash for ByteCheck {
    fn hash<H: core::hash::Hasher>(&self, _: &mut H) {}
}
impl core::fmt::Debug for ByteCheck {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ByteCheck")
    }
}

impl Element {
    pub fn size(&self) -> usize {
        match *self {
            Element::Primitive(p) => p.size(),
            Element::Loc { value, location } => value.size() + location.size(),
            Element::Opaque { size, .. } => size,
        }
    }
}

/// A contiguous datatype: `multiplicity` elements of one kind (arrays multiply it).
/// The analogue of rsmpi's `DatatypeRef`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DatatypeRef {
    element: Element,
    multiplicity: usize,
}

impl DatatypeRef {
    pub const fn primitive(p: Primitive) -> DatatypeRef {
        DatatypeRef { element: Element::Primitive(p), multiplicity: 1 }
    }

    pub(crate) const fn loc(value: Primitive, location: Primitive) -> DatatypeRef {
        DatatypeRef { element: Element::Loc { value, location }, multiplicity: 1 }
    }

    /// The datatype of a user-defined plain-data type `T` (see `Equivalence`).
    pub fn opaque<T: 'static>() -> DatatypeRef {
        DatatypeRef { element: Element::Opaque { size: size_of::<T>(), type_id: TypeId::of::<T>(), check: None }, multiplicity: 1 }
    }

    /// The datatype of a struct whose fields are all `Equivalence` (what
    /// `#[derive(Equivalence)]` returns): opaque to system operations, with its
    /// received bytes checked when a field has invalid patterns.
    pub fn structure<T: Equivalence>() -> DatatypeRef {
        let check = T::HAS_INVALID_BYTES.then_some(ByteCheck(T::is_valid_bytes));
        DatatypeRef { element: Element::Opaque { size: size_of::<T>(), type_id: TypeId::of::<T>(), check }, multiplicity: 1 }
    }

    /// `n` consecutive values of this datatype.
    pub const fn contiguous(self, n: usize) -> DatatypeRef {
        DatatypeRef { element: self.element, multiplicity: self.multiplicity * n }
    }

    pub fn element(&self) -> Element {
        self.element
    }

    /// Element count per value (1 for scalars, N for `[T; N]`).
    pub fn multiplicity(&self) -> usize {
        self.multiplicity
    }

    /// Size of one value in bytes.
    pub fn size(&self) -> usize {
        self.element.size() * self.multiplicity
    }

    /// Whether some byte patterns are not values of this datatype (it holds `bool`s).
    pub(crate) fn contains_bool(&self) -> bool {
        matches!(self.element, Element::Primitive(Primitive::Bool))
            || matches!(self.element, Element::Loc { value: Primitive::Bool, .. })
            || matches!(self.element, Element::Opaque { check: Some(_), .. })
    }
}

/// Rejects bytes that are not valid values of `datatype` (only `bool` has invalid
/// patterns among the types we accept), so received bytes never create invalid values.
pub(crate) fn validate(datatype: DatatypeRef, bytes: &[u8]) -> MpiResult<()> {
    if let Element::Opaque { size, check: Some(ByteCheck(check)), .. } = datatype.element {
        if bytes.len() % size.max(1) != 0 || !bytes.chunks(size.max(1)).all(check) {
            return fail(ErrorClass::Type, "received bytes are not valid values of the struct (a bool field holds neither 0 nor 1)");
        }
    } else if datatype.contains_bool() {
        let stride = datatype.element.size();
        if bytes.chunks(stride).any(|element| element[0] > 1) {
            return fail(ErrorClass::Type, "received bytes are not valid bool values");
        }
    }
    Ok(())
}

pub use crate::raw::Equivalence;

/// A (value, location) pair for `SystemOperation::min_loc()` / `max_loc()` — MPI's
/// `MPI_2INT`, `MPI_FLOAT_INT`, `MPI_DOUBLE_INT`… Value and location have the same
/// width so the pair has no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Default)]
pub struct MinMaxLoc<V, L> {
    pub value: V,
    pub location: L,
}

impl<V, L> MinMaxLoc<V, L> {
    pub fn new(value: V, location: L) -> Self {
        MinMaxLoc { value, location }
    }
}

mod sealed {
    /// Proof of being inside this crate: keeps the mutable byte view out of safe user
    /// code, which could otherwise write invalid `bool`s through it.
    pub struct Token(pub(crate) ());
}
pub(crate) use sealed::Token;

/// A buffer that can be sent: contiguous values of one datatype.
pub trait Buffer {
    #[doc(hidden)]
    fn bytes(&self) -> &[u8];
    /// Number of values of `buffer_datatype()`.
    fn count(&self) -> Count;
    fn buffer_datatype(&self) -> DatatypeRef;
}

/// A buffer that can be received into.
pub trait BufferMut: Buffer {
    #[doc(hidden)]
    fn bytes_mut(&mut self, token: sealed::Token) -> &mut [u8];
}

impl<T: Equivalence> Buffer for T {
    fn bytes(&self) -> &[u8] {
        raw::bytes_of(core::slice::from_ref(self))
    }
    fn count(&self) -> Count {
        1
    }
    fn buffer_datatype(&self) -> DatatypeRef {
        T::equivalent_datatype()
    }
}
impl<T: Equivalence> BufferMut for T {
    fn bytes_mut(&mut self, _: Token) -> &mut [u8] {
        raw::bytes_of_mut(core::slice::from_mut(self))
    }
}
impl<T: Equivalence> Buffer for [T] {
    fn bytes(&self) -> &[u8] {
        raw::bytes_of(self)
    }
    fn count(&self) -> Count {
        self.len() as Count
    }
    fn buffer_datatype(&self) -> DatatypeRef {
        T::equivalent_datatype()
    }
}
impl<T: Equivalence> BufferMut for [T] {
    fn bytes_mut(&mut self, _: Token) -> &mut [u8] {
        raw::bytes_of_mut(self)
    }
}
impl<T: Equivalence> Buffer for Vec<T> {
    fn bytes(&self) -> &[u8] {
        raw::bytes_of(self)
    }
    fn count(&self) -> Count {
        self.len() as Count
    }
    fn buffer_datatype(&self) -> DatatypeRef {
        T::equivalent_datatype()
    }
}
impl<T: Equivalence> BufferMut for Vec<T> {
    fn bytes_mut(&mut self, _: Token) -> &mut [u8] {
        raw::bytes_of_mut(self)
    }
}

/// A buffer split into per-rank parts (`counts[i]` values at `displs[i]`), for the
/// `*_varcount_*` collectives. Shaped like rsmpi's `Partition`.
pub struct Partition<'b, B: ?Sized + Buffer> {
    pub(crate) buffer: &'b B,
    pub(crate) counts: Vec<Count>,
    pub(crate) displs: Vec<Count>,
}

impl<'b, B: ?Sized + Buffer> Partition<'b, B> {
    pub fn new<C: Borrow<[Count]>, D: Borrow<[Count]>>(buffer: &'b B, counts: C, displs: D) -> Self {
        Partition { buffer, counts: counts.borrow().to_vec(), displs: displs.borrow().to_vec() }
    }
    pub fn counts(&self) -> &[Count] {
        &self.counts
    }
    pub fn displs(&self) -> &[Count] {
        &self.displs
    }
}

/// Mutable version of `Partition`.
pub struct PartitionMut<'b, B: ?Sized + BufferMut> {
    pub(crate) buffer: &'b mut B,
    pub(crate) counts: Vec<Count>,
    pub(crate) displs: Vec<Count>,
}

impl<'b, B: ?Sized + BufferMut> PartitionMut<'b, B> {
    pub fn new<C: Borrow<[Count]>, D: Borrow<[Count]>>(buffer: &'b mut B, counts: C, displs: D) -> Self {
        PartitionMut { buffer, counts: counts.borrow().to_vec(), displs: displs.borrow().to_vec() }
    }
    pub fn counts(&self) -> &[Count] {
        &self.counts
    }
    pub fn displs(&self) -> &[Count] {
        &self.displs
    }
}

/// Byte ranges of each rank's part, checked against the buffer and the rank count.
pub(crate) fn partition_ranges(
    counts: &[Count],
    displs: &[Count],
    ranks: usize,
    value_size: usize,
    buffer_len: usize,
) -> MpiResult<Vec<core::ops::Range<usize>>> {
    if counts.len() != ranks || displs.len() != ranks {
        return fail(ErrorClass::Count, "partition needs one count and one displacement per rank");
    }
    let mut ranges = Vec::with_capacity(ranks);
    for (&count, &displ) in counts.iter().zip(displs) {
        if count < 0 || displ < 0 {
            return fail(ErrorClass::Count, "negative count or displacement in partition");
        }
        let start = displ as usize * value_size;
        let end = start + count as usize * value_size;
        if end > buffer_len {
            return fail(ErrorClass::Count, "partition part lies outside its buffer");
        }
        ranges.push(start..end);
    }
    Ok(ranges)
}

/// An immutable dynamically-typed buffer handed to user-defined operations.
pub struct DynBuffer<'a> {
    bytes: &'a [u8],
    datatype: DatatypeRef,
}

impl<'a> DynBuffer<'a> {
    pub(crate) fn from_bytes(bytes: &'a [u8], datatype: DatatypeRef) -> Self {
        DynBuffer { bytes, datatype }
    }
    pub fn new<T: Equivalence>(values: &'a [T]) -> Self {
        DynBuffer { bytes: raw::bytes_of(values), datatype: T::equivalent_datatype() }
    }
    /// Whether the values are `T`s (or `T` is the element type of an array datatype).
    pub fn is<T: Equivalence>(&self) -> bool {
        datatype_views_as::<T>(self.datatype)
    }
    pub fn downcast<T: Equivalence>(self) -> Option<&'a [T]> {
        if self.is::<T>() { raw::cast_slice(self.bytes) } else { None }
    }
    pub fn len(&self) -> usize {
        self.bytes.len() / self.datatype.size().max(1)
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// A mutable dynamically-typed buffer handed to user-defined operations.
pub struct DynBufferMut<'a> {
    bytes: &'a mut [u8],
    datatype: DatatypeRef,
}

impl<'a> DynBufferMut<'a> {
    pub(crate) fn from_bytes(bytes: &'a mut [u8], datatype: DatatypeRef) -> Self {
        DynBufferMut { bytes, datatype }
    }
    pub fn new<T: Equivalence>(values: &'a mut [T]) -> Self {
        DynBufferMut { bytes: raw::bytes_of_mut(values), datatype: T::equivalent_datatype() }
    }
    pub fn is<T: Equivalence>(&self) -> bool {
        datatype_views_as::<T>(self.datatype)
    }
    pub fn downcast<T: Equivalence>(self) -> Option<&'a mut [T]> {
        if self.is::<T>() { raw::cast_slice_mut(self.bytes) } else { None }
    }
    pub fn len(&self) -> usize {
        self.bytes.len() / self.datatype.size().max(1)
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

fn datatype_views_as<T: Equivalence>(datatype: DatatypeRef) -> bool {
    let wanted = T::equivalent_datatype();
    wanted.element == datatype.element && datatype.multiplicity % wanted.multiplicity == 0
}
