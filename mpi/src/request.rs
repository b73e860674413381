//! Immediate (non-blocking) operations: requests and the scopes that bound them.
//!
//! A `Request` borrows its buffer for the scope's lifetime `'a`, so the buffer outlives
//! the operation even if the request is leaked. Dropping an unfinished request waits
//! for it (the transport may still be reading or writing the buffer); a request leaked
//! with `mem::forget` inside `scope` makes `scope` panic at its end.

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::Cell;
use core::marker::PhantomData;

use crate::communicator::CommState;
use crate::datatype::DatatypeRef;
use crate::engine::{deliver, Landing, Matched, ReceiveId, SendHandle};
use crate::error::MpiResult;
use crate::point_to_point::Status;

mod sealed {
    pub trait Registry {
        fn register(&self);
        fn unregister(&self);
    }
}

/// Bounds the lifetime of the buffers of immediate operations (rsmpi's `Scope`).
pub trait Scope<'a>: sealed::Registry {}

/// The scope of the whole program: buffers must be `'static`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StaticScope;

impl sealed::Registry for StaticScope {
    fn register(&self) {}
    fn unregister(&self) {}
}
impl Scope<'static> for StaticScope {}

/// A scope created by `scope`; counts its outstanding requests.
pub struct LocalScope<'a> {
    outstanding: Cell<usize>,
    // Invariant in 'a, like rsmpi: the scope cannot be shortened or lengthened.
    _lifetime: PhantomData<Cell<&'a ()>>,
}

impl sealed::Registry for &LocalScope<'_> {
    fn register(&self) {
        self.outstanding.set(self.outstanding.get() + 1);
    }
    fn unregister(&self) {
        self.outstanding.set(self.outstanding.get() - 1);
    }
}
impl<'a> Scope<'a> for &LocalScope<'a> {}

/// Runs `f` with a scope for immediate operations; every request made in it must be
/// completed (`wait`, `test`, `wait_all`, `wait_any`, or dropped) before it ends.
pub fn scope<'a, F, R>(f: F) -> R
where
    F: FnOnce(&LocalScope<'a>) -> R,
{
    let scope = LocalScope { outstanding: Cell::new(0), _lifetime: PhantomData };
    let result = f(&scope);
    if scope.outstanding.get() != 0 {
        // A leaked receive request's buffer may still be written by the engine: the
        // program must not go on (a panic would unwind and free it), so abort.
        let _abort = AbortOnUnwind;
        panic!("mpi::request::scope ended with a request never completed (leaked?)");
    }
    result
}

/// Turns the unwind that passes it into an abort (a panic while panicking aborts).
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        panic!("aborting: a leaked request's buffer may still be written");
    }
}

enum Pending<'a> {
    Send { handle: SendHandle, _payload: &'a [u8] },
    /// The destination is held as the raw pointer the engine also holds (it may copy
    /// a message into it at any progress call until the request completes); the
    /// request's `'a` keeps the `&'a mut` borrow it came from alive.
    Receive { id: ReceiveId, landing: Landing },
}

/// An immediate operation in flight (`MPI_Request`), borrowing a `D` buffer for `'a`.
#[must_use = "a request must be completed with wait or test"]
pub struct Request<'a, D: ?Sized, S: Scope<'a> = StaticScope> {
    pending: Option<Pending<'a>>,
    comm: Rc<CommState>,
    scope: S,
    _buffer: PhantomData<&'a D>,
}

impl<'a, D: ?Sized, S: Scope<'a>> Request<'a, D, S> {
    pub(crate) fn send(comm: Rc<CommState>, scope: S, handle: SendHandle, payload: &'a [u8]) -> Self {
        scope.register();
        Request { pending: Some(Pending::Send { handle, _payload: payload }), comm, scope, _buffer: PhantomData }
    }

    /// Posts an immediate receive into `destination`.
    pub(crate) fn receive(
        comm: Rc<CommState>,
        scope: S,
        pattern: crate::engine::Pattern,
        destination: &'a mut [u8],
        datatype: DatatypeRef,
    ) -> Self {
        // `destination` is mutably borrowed for 'a and from now on reached only through
        // `landing`; the request completes (`take_matched` returns Some) before it is
        // dropped — Drop waits for it — and `scope` aborts the program if a request is
        // leaked, so the buffer outlives every write the engine makes.
        let landing = Landing::new(destination, datatype);
        let id = comm.engine.borrow_mut().post_receive(pattern, landing);
        scope.register();
        Request { pending: Some(Pending::Receive { id, landing }), comm, scope, _buffer: PhantomData }
    }

    /// One completion attempt: `Some` once the operation is done (the request is then
    /// finished and unregistered).
    fn poll(&mut self) -> Option<MpiResult<Status>> {
        let mut engine = self.comm.engine.borrow_mut();
        let result = match self.pending.as_mut()? {
            Pending::Send { handle, .. } => {
                if !engine.send_finished(handle) {
                    engine.progress();
                    if !engine.send_finished(handle) {
                        return None;
                    }
                }
                Ok(Status::empty())
            }
            Pending::Receive { id, landing } => match engine.take_matched(*id)? {
                Matched::InPlace(header) => Ok(Status::from_header(&self.comm, &header)),
                Matched::Queued(arrived) => {
                    // The engine no longer holds the buffer: the request is completing.
                    deliver(&arrived.header, &arrived.payload, landing.bytes_mut(), landing.datatype)
                        .map(|header| Status::from_header(&self.comm, &header))
                }
            },
        };
        drop(engine);
        self.pending = None;
        self.scope.unregister();
        Some(result)
    }

    fn complete(&mut self) -> MpiResult<Status> {
        loop {
            if let Some(result) = self.poll() {
                return result;
            }
            self.comm.engine.borrow().env.relax();
        }
    }

    /// Waits for completion (`MPI_Wait`).
    pub fn wait(mut self) -> Status {
        let result = self.complete();
        self.comm.check(result)
    }

    /// `MPI_Test`: the status if complete, else the request back (after letting the
    /// other rank threads of this core run: a caller may poll `test` in a loop).
    pub fn test(mut self) -> Result<Status, Self> {
        match self.poll() {
            Some(result) => Ok(self.comm.check(result)),
            None => {
                self.comm.engine.borrow().env.yield_now();
                Err(self)
            }
        }
    }
}

impl<'a, D: ?Sized, S: Scope<'a>> Drop for Request<'a, D, S> {
    fn drop(&mut self) {
        if self.pending.is_some() {
            // The buffer must not be released while the operation may still touch it.
            let _ = self.complete();
        }
    }
}

/// `MPI_Waitall`: waits for every request, returning their statuses in order.
pub fn wait_all<'a, D: ?Sized, S: Scope<'a>>(requests: Vec<Request<'a, D, S>>) -> Vec<Status> {
    requests.into_iter().map(Request::wait).collect()
}

/// `MPI_Waitany`: waits for one request to complete, removes it from `requests` and
/// returns its index and status; `None` if `requests` is empty.
pub fn wait_any<'a, D: ?Sized, S: Scope<'a>>(requests: &mut Vec<Request<'a, D, S>>) -> Option<(usize, Status)> {
    if requests.is_empty() {
        return None;
    }
    loop {
        for index in 0..requests.len() {
            if let Some(result) = requests[index].poll() {
                let request = requests.remove(index);
                return Some((index, request.comm.check(result)));
            }
        }
        let comm = requests[0].comm.clone();
        let mut engine = comm.engine.borrow_mut();
        if !engine.progress() {
            engine.env.relax();
        }
    }
}
