//! Point-to-point communication: processes as sources and destinations, statuses,
//! matched-probe messages (rsmpi's `point_to_point` module).

use alloc::format;
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::mem::size_of;

use crate::communicator::CommState;
use crate::datatype::{validate, Buffer, BufferMut, DatatypeRef, Equivalence, Token};
use crate::engine::{deliver, Arrived, Pattern};
use crate::error::{fail, ErrorClass, MpiResult};
use crate::raw;
use crate::request::{Request, Scope};
use crate::transport::Header;
use crate::{Count, Rank, Tag, ANY_TAG};

/// The envelope of a received message (`MPI_Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    source: Rank,
    tag: Tag,
    bytes: usize,
}

impl Status {
    pub(crate) fn from_header(comm: &CommState, header: &Header) -> Status {
        Status { source: comm.local_rank_of(header.source), tag: header.tag, bytes: header.len }
    }
    pub(crate) fn empty() -> Status {
        Status { source: crate::ANY_SOURCE, tag: ANY_TAG, bytes: 0 }
    }
    /// Rank of the sender in the communicator.
    pub fn source_rank(&self) -> Rank {
        self.source
    }
    pub fn tag(&self) -> Tag {
        self.tag
    }
    /// Number of whole values of `datatype` in the message (`MPI_Get_count`).
    pub fn count(&self, datatype: DatatypeRef) -> Count {
        (self.bytes / datatype.size().max(1)) as Count
    }
}

/// One rank of a communicator, as a source or destination (or collective root).
#[derive(Clone, Copy)]
pub struct Process<'a> {
    pub(crate) comm: &'a Rc<CommState>,
    pub(crate) rank: Rank,
}

impl<'a> Process<'a> {
    pub(crate) fn new(comm: &'a Rc<CommState>, rank: Rank) -> Process<'a> {
        Process { comm, rank }
    }
    pub fn rank(&self) -> Rank {
        self.rank
    }
    pub fn is_self(&self) -> bool {
        self.rank == self.comm.rank()
    }
}

/// Any rank of a communicator, as a source (`MPI_ANY_SOURCE`).
#[derive(Clone, Copy)]
pub struct AnyProcess<'a> {
    pub(crate) comm: &'a Rc<CommState>,
}

impl<'a> AnyProcess<'a> {
    pub(crate) fn new(comm: &'a Rc<CommState>) -> AnyProcess<'a> {
        AnyProcess { comm }
    }
}

mod sealed {
    pub trait SourceTarget {
        fn source_comm(&self) -> &alloc::rc::Rc<super::CommState>;
        /// `None` for any source.
        fn source_rank(&self) -> Option<super::Rank>;
    }
}
use sealed::SourceTarget;

impl SourceTarget for Process<'_> {
    fn source_comm(&self) -> &Rc<CommState> {
        self.comm
    }
    fn source_rank(&self) -> Option<Rank> {
        Some(self.rank)
    }
}
impl SourceTarget for AnyProcess<'_> {
    fn source_comm(&self) -> &Rc<CommState> {
        self.comm
    }
    fn source_rank(&self) -> Option<Rank> {
        None
    }
}

fn pattern(comm: &CommState, source: Option<Rank>, tag: Tag) -> MpiResult<Pattern> {
    if tag != ANY_TAG {
        CommState::check_tag(tag)?;
    }
    let source = match source {
        Some(rank) => {
            comm.check_rank(rank, ErrorClass::Rank)?;
            Some(comm.world_rank_of(rank))
        }
        None => None,
    };
    Ok(Pattern { context: comm.p2p_context(), source, tag: (tag != ANY_TAG).then_some(tag) })
}

fn values_from<M: Equivalence>(payload: &[u8]) -> MpiResult<Vec<M>> {
    let size = size_of::<M>();
    if size == 0 || payload.len() % size != 0 {
        return fail(ErrorClass::Count, format!("message of {} bytes is not a whole number of {}-byte values", payload.len(), size));
    }
    validate(M::equivalent_datatype(), payload)?;
    Ok(raw::vec_from_bytes(payload))
}

fn single_value<M: Equivalence>(payload: &[u8]) -> MpiResult<M> {
    let size = size_of::<M>();
    if payload.len() > size {
        return fail(ErrorClass::Truncate, format!("message of {} bytes into one {}-byte value", payload.len(), size));
    }
    if payload.len() < size {
        return fail(ErrorClass::Count, format!("message of {} bytes is shorter than one {}-byte value", payload.len(), size));
    }
    Ok(values_from::<M>(payload)?[0])
}

/// Receiving (rsmpi's `Source`), for `Process` and `AnyProcess`.
pub trait Source: SourceTarget {
    /// Receives one value with any tag.
    fn receive<M: Equivalence>(&self) -> (M, Status) {
        self.receive_with_tag(ANY_TAG)
    }
    fn receive_with_tag<M: Equivalence>(&self, tag: Tag) -> (M, Status) {
        let comm = self.source_comm();
        let result = pattern(comm, self.source_rank(), tag).and_then(|pattern| {
            let arrived = comm.engine.borrow_mut().receive_message(pattern);
            Ok((single_value::<M>(&arrived.payload)?, Status::from_header(comm, &arrived.header)))
        });
        comm.check(result)
    }
    /// Receives into `buffer`; a longer message is an error of class TRUNCATE.
    fn receive_into<B: ?Sized + BufferMut>(&self, buffer: &mut B) -> Status {
        self.receive_into_with_tag(buffer, ANY_TAG)
    }
    fn receive_into_with_tag<B: ?Sized + BufferMut>(&self, buffer: &mut B, tag: Tag) -> Status {
        let comm = self.source_comm();
        let datatype = buffer.buffer_datatype();
        let result = pattern(comm, self.source_rank(), tag).and_then(|pattern| {
            let header = comm.engine.borrow_mut().receive_into(pattern, buffer.bytes_mut(Token(())), datatype)?;
            Ok(Status::from_header(comm, &header))
        });
        comm.check(result)
    }
    /// Receives a message of any length as a vector.
    fn receive_vec<M: Equivalence>(&self) -> (Vec<M>, Status) {
        self.receive_vec_with_tag(ANY_TAG)
    }
    fn receive_vec_with_tag<M: Equivalence>(&self, tag: Tag) -> (Vec<M>, Status) {
        let comm = self.source_comm();
        let result = pattern(comm, self.source_rank(), tag).and_then(|pattern| {
            let arrived = comm.engine.borrow_mut().receive_message(pattern);
            Ok((values_from::<M>(&arrived.payload)?, Status::from_header(comm, &arrived.header)))
        });
        comm.check(result)
    }
    /// Waits for a matching message without receiving it (`MPI_Probe`).
    fn probe(&self) -> Status {
        self.probe_with_tag(ANY_TAG)
    }
    fn probe_with_tag(&self, tag: Tag) -> Status {
        let comm = self.source_comm();
        let result = pattern(comm, self.source_rank(), tag).map(|pattern| {
            let header = comm.engine.borrow_mut().probe(pattern);
            Status::from_header(comm, &header)
        });
        comm.check(result)
    }
    /// `MPI_Iprobe`: the status of a matching message if one is there now.
    fn immediate_probe(&self) -> Option<Status> {
        self.immediate_probe_with_tag(ANY_TAG)
    }
    fn immediate_probe_with_tag(&self, tag: Tag) -> Option<Status> {
        let comm = self.source_comm();
        let result = pattern(comm, self.source_rank(), tag).map(|pattern| {
            let mut engine = comm.engine.borrow_mut();
            let header = engine.probe_once(&pattern);
            if header.is_none() {
                // The caller may poll in a loop: let the other ranks of this core run.
                engine.env.yield_now();
            }
            header.map(|header| Status::from_header(comm, &header))
        });
        comm.check(result)
    }
    /// Matches a message and takes it off the queue for a later `matched_receive*`
    /// (`MPI_Mprobe`), so no other receive can steal it.
    fn matched_probe(&self) -> (Message, Status) {
        self.matched_probe_with_tag(ANY_TAG)
    }
    fn matched_probe_with_tag(&self, tag: Tag) -> (Message, Status) {
        let comm = self.source_comm();
        let result = pattern(comm, self.source_rank(), tag).map(|pattern| {
            let arrived = comm.engine.borrow_mut().matched_probe(pattern);
            let status = Status::from_header(comm, &arrived.header);
            (Message { comm: comm.clone(), arrived }, status)
        });
        comm.check(result)
    }
    /// Starts a receive into `buffer`, completed by the returned request.
    fn immediate_receive_into<'a, S: Scope<'a>, B: ?Sized + BufferMut>(&self, scope: S, buffer: &'a mut B) -> Request<'a, B, S> {
        self.immediate_receive_into_with_tag(scope, buffer, ANY_TAG)
    }
    fn immediate_receive_into_with_tag<'a, S: Scope<'a>, B: ?Sized + BufferMut>(
        &self,
        scope: S,
        buffer: &'a mut B,
        tag: Tag,
    ) -> Request<'a, B, S> {
        let comm = self.source_comm();
        let pattern = comm.check(pattern(comm, self.source_rank(), tag));
        let datatype = buffer.buffer_datatype();
        Request::receive(comm.clone(), scope, pattern, buffer.bytes_mut(Token(())), datatype)
    }
}

impl Source for Process<'_> {}
impl Source for AnyProcess<'_> {}

/// A message taken by `matched_probe`, to be received with one of its methods.
pub struct Message {
    comm: Rc<CommState>,
    arrived: Arrived,
}

impl Message {
    pub fn matched_receive<M: Equivalence>(self) -> (M, Status) {
        let status = Status::from_header(&self.comm, &self.arrived.header);
        (self.comm.check(single_value::<M>(&self.arrived.payload)), status)
    }
    pub fn matched_receive_into<B: ?Sized + BufferMut>(self, buffer: &mut B) -> Status {
        let datatype = buffer.buffer_datatype();
        let header = deliver(&self.arrived.header, &self.arrived.payload, buffer.bytes_mut(Token(())), datatype);
        Status::from_header(&self.comm, &self.comm.check(header))
    }
    pub fn matched_receive_vec<M: Equivalence>(self) -> (Vec<M>, Status) {
        let status = Status::from_header(&self.comm, &self.arrived.header);
        (self.comm.check(values_from::<M>(&self.arrived.payload)), status)
    }
}

/// Sending (rsmpi's `Destination`), for `Process`.
pub trait Destination {
    /// Standard-mode send with tag 0.
    fn send<B: ?Sized + Buffer>(&self, buffer: &B) {
        self.send_with_tag(buffer, 0)
    }
    fn send_with_tag<B: ?Sized + Buffer>(&self, buffer: &B, tag: Tag);
    /// Returns only once a receive has matched the message (`MPI_Ssend`).
    fn synchronous_send<B: ?Sized + Buffer>(&self, buffer: &B) {
        self.synchronous_send_with_tag(buffer, 0)
    }
    fn synchronous_send_with_tag<B: ?Sized + Buffer>(&self, buffer: &B, tag: Tag);
    fn immediate_send<'a, S: Scope<'a>, B: ?Sized + Buffer>(&self, scope: S, buffer: &'a B) -> Request<'a, B, S> {
        self.immediate_send_with_tag(scope, buffer, 0)
    }
    fn immediate_send_with_tag<'a, S: Scope<'a>, B: ?Sized + Buffer>(&self, scope: S, buffer: &'a B, tag: Tag) -> Request<'a, B, S>;
    fn immediate_synchronous_send<'a, S: Scope<'a>, B: ?Sized + Buffer>(&self, scope: S, buffer: &'a B) -> Request<'a, B, S> {
        self.immediate_synchronous_send_with_tag(scope, buffer, 0)
    }
    fn immediate_synchronous_send_with_tag<'a, S: Scope<'a>, B: ?Sized + Buffer>(
        &self,
        scope: S,
        buffer: &'a B,
        tag: Tag,
    ) -> Request<'a, B, S>;
}

impl Process<'_> {
    fn start(&self, payload: &[u8], tag: Tag, synchronous: bool) -> MpiResult<crate::engine::SendHandle> {
        self.comm.check_rank(self.rank, ErrorClass::Rank)?;
        CommState::check_tag(tag)?;
        let dest = self.comm.world_rank_of(self.rank);
        let context = self.comm.p2p_context();
        self.comm.engine.borrow_mut().start_send(dest, context, tag, synchronous, payload)
    }

    fn blocking_send(&self, payload: &[u8], tag: Tag, synchronous: bool) {
        let handle = self.comm.check(self.start(payload, tag, synchronous));
        self.comm.engine.borrow_mut().wait_send(handle);
    }
}

impl Destination for Process<'_> {
    fn send_with_tag<B: ?Sized + Buffer>(&self, buffer: &B, tag: Tag) {
        self.blocking_send(buffer.bytes(), tag, false)
    }
    fn synchronous_send_with_tag<B: ?Sized + Buffer>(&self, buffer: &B, tag: Tag) {
        self.blocking_send(buffer.bytes(), tag, true)
    }
    fn immediate_send_with_tag<'a, S: Scope<'a>, B: ?Sized + Buffer>(&self, scope: S, buffer: &'a B, tag: Tag) -> Request<'a, B, S> {
        let handle = self.comm.check(self.start(buffer.bytes(), tag, false));
        Request::send(self.comm.clone(), scope, handle, buffer.bytes())
    }
    fn immediate_synchronous_send_with_tag<'a, S: Scope<'a>, B: ?Sized + Buffer>(
        &self,
        scope: S,
        buffer: &'a B,
        tag: Tag,
    ) -> Request<'a, B, S> {
        let handle = self.comm.check(self.start(buffer.bytes(), tag, true));
        Request::send(self.comm.clone(), scope, handle, buffer.bytes())
    }
}
