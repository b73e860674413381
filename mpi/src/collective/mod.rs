//! Collective communication (rsmpi's `collective` module): `CommunicatorCollectives`
//! for operations without a root, `Root` for those with one.

pub(crate) mod internal;
mod hierarchical;
pub(crate) mod selection;
mod operation;
pub(crate) mod shm;
pub(crate) mod topology;

pub use operation::{Operation, SystemOperation, UserOperation};

/// Overrides of the algorithm choice, for measurements (see `selection`).
pub mod tuning {
    pub use super::selection::{force_all_reduce, force_broadcast, AllReduce, Broadcast};
    pub use super::topology::force_flat;
    pub use super::force_messages;
}

/// Set: small collectives never use the VM's shared memory (`tuning`).
static FORCED_MESSAGES: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Makes every collective of this process travel as messages, even the small ones of
/// communicators inside one VM that would go through shared memory (`false`: back to
/// the default). For measuring the message algorithms; all ranks of a job must agree.
pub fn force_messages(messages: bool) {
    FORCED_MESSAGES.store(messages, core::sync::atomic::Ordering::Relaxed);
}

/// The communicator's shared-memory path for a collective of `len` bytes, if it has one.
///
/// A collective too large for it on a communicator that has one is announced there
/// first, so that counts straddling the limit are an error rather than a hang.
fn shm_path(comm: &CommState, len: usize, compare: shm::Compare) -> MpiResult<Option<&shm::ShmComm>> {
    if FORCED_MESSAGES.load(core::sync::atomic::Ordering::Relaxed) {
        return Ok(None);
    }
    match comm.shm() {
        Some(shm) if len > shm::SHM_BYTES => shm.announce(comm, len, compare).map(|()| None),
        shm => Ok(shm),
    }
}

use alloc::format;

use crate::communicator::{CommState, Communicator};
use crate::datatype::{partition_ranges, Buffer, BufferMut, DatatypeRef, Partition, PartitionMut, Token};
use crate::error::{fail, ErrorClass, MpiResult};
use crate::point_to_point::Process;
use crate::Rank;
use internal::Group;
use topology::Plan;

fn check_len(what: &str, actual: usize, expected: usize) -> MpiResult<()> {
    if actual != expected {
        return fail(ErrorClass::Count, format!("{}: buffer of {} bytes, {} expected", what, actual, expected));
    }
    Ok(())
}

fn check_reduction(send: DatatypeRef, receive: DatatypeRef, op: &dyn Operation) -> MpiResult<()> {
    if send != receive {
        return fail(ErrorClass::Type, "send and receive buffers of a reduction have different datatypes");
    }
    op.check_applicable(send, Token(()))
}

/// Every rank's data is whole values.
fn check_divisible(what: &str, len: usize, parts: usize) -> MpiResult<usize> {
    if parts == 0 || len % parts != 0 {
        return fail(ErrorClass::Count, format!("{}: {} bytes do not split into {} equal parts", what, len, parts));
    }
    Ok(len / parts)
}

/// Runs a collective body through the communicator's error handler.
fn run<T>(comm: &CommState, body: impl FnOnce() -> MpiResult<T>) -> T {
    comm.check(body())
}

/// Collective operations of a whole communicator.
pub trait CommunicatorCollectives: Communicator {
    /// `MPI_Barrier`.
    fn barrier(&self) {
        let comm = self.comm_state();
        run(comm, || {
            if let Some(shm) = shm_path(comm, 0, shm::Compare::Everyone)? {
                return shm.barrier(comm);
            }
            let group = Group::new(comm, DatatypeRef::primitive(crate::datatype::Primitive::U8));
            match topology::plan(comm) {
                Plan::Flat => internal::barrier(&group),
                Plan::Hierarchical(topology) => hierarchical::barrier(&group, topology),
            }
        })
    }

    /// `MPI_Allgather`: rank i's `sendbuf` lands in the i-th part of every `recvbuf`.
    fn all_gather_into<S: ?Sized + Buffer, R: ?Sized + BufferMut>(&self, sendbuf: &S, recvbuf: &mut R) {
        let comm = self.comm_state();
        run(comm, || {
            let group = Group::new(comm, recvbuf.buffer_datatype());
            let output = recvbuf.bytes_mut(Token(()));
            let block = sendbuf.bytes().len();
            check_len("all_gather_into receive buffer", output.len(), block * group.size)?;
            let ranges: alloc::vec::Vec<_> = (0..group.size).map(|i| i * block..(i + 1) * block).collect();
            output[ranges[group.rank].clone()].copy_from_slice(sendbuf.bytes());
            match topology::plan(comm) {
                Plan::Flat => internal::all_gather_ring(&group, output, &ranges),
                Plan::Hierarchical(topology) => hierarchical::all_gather(&group, topology, output, block),
            }
        })
    }

    /// `MPI_Allgatherv`.
    fn all_gather_varcount_into<S: ?Sized + Buffer, R: ?Sized + BufferMut>(&self, sendbuf: &S, recvbuf: &mut PartitionMut<'_, R>) {
        let comm = self.comm_state();
        run(comm, || {
            let datatype = recvbuf.buffer.buffer_datatype();
            let group = Group::new(comm, datatype);
            let output = recvbuf.buffer.bytes_mut(Token(()));
            let ranges = partition_ranges(&recvbuf.counts, &recvbuf.displs, group.size, datatype.size(), output.len())?;
            check_len("all_gather_varcount_into own part", sendbuf.bytes().len(), ranges[group.rank].len())?;
            output[ranges[group.rank].clone()].copy_from_slice(sendbuf.bytes());
            internal::all_gather_ring(&group, output, &ranges)
        })
    }

    /// `MPI_Alltoall`: part j of rank i's `sendbuf` lands in part i of rank j's `recvbuf`.
    fn all_to_all_into<S: ?Sized + Buffer, R: ?Sized + BufferMut>(&self, sendbuf: &S, recvbuf: &mut R) {
        let comm = self.comm_state();
        run(comm, || {
            let group = Group::new(comm, recvbuf.buffer_datatype());
            let output = recvbuf.bytes_mut(Token(()));
            let input = sendbuf.bytes();
            check_len("all_to_all_into receive buffer", output.len(), input.len())?;
            let block = check_divisible("all_to_all_into", input.len(), group.size)?;
            let ranges: alloc::vec::Vec<_> = (0..group.size).map(|i| i * block..(i + 1) * block).collect();
            internal::all_to_all_pairwise(&group, input, &ranges, output, &ranges)
        })
    }

    /// `MPI_Alltoallv`.
    fn all_to_all_varcount_into<S: ?Sized + Buffer, R: ?Sized + BufferMut>(&self, sendbuf: &Partition<'_, S>, recvbuf: &mut PartitionMut<'_, R>) {
        let comm = self.comm_state();
        run(comm, || {
            let datatype = recvbuf.buffer.buffer_datatype();
            let group = Group::new(comm, datatype);
            let input = sendbuf.buffer.bytes();
            let send_size = sendbuf.buffer.buffer_datatype().size();
            let send = partition_ranges(&sendbuf.counts, &sendbuf.displs, group.size, send_size, input.len())?;
            let output = recvbuf.buffer.bytes_mut(Token(()));
            let receive = partition_ranges(&recvbuf.counts, &recvbuf.displs, group.size, datatype.size(), output.len())?;
            internal::all_to_all_pairwise(&group, input, &send, output, &receive)
        })
    }

    /// `MPI_Allreduce`; the result is bit-identical on every rank.
    fn all_reduce_into<S: ?Sized + Buffer, R: ?Sized + BufferMut, O: Operation>(&self, sendbuf: &S, recvbuf: &mut R, op: O) {
        let comm = self.comm_state();
        run(comm, || {
            let datatype = recvbuf.buffer_datatype();
            check_reduction(sendbuf.buffer_datatype(), datatype, &op)?;
            let output = recvbuf.bytes_mut(Token(()));
            check_len("all_reduce_into receive buffer", output.len(), sendbuf.bytes().len())?;
            if let Some(shm) = shm_path(comm, output.len(), shm::Compare::Everyone)? {
                return shm.reduce(comm, sendbuf.bytes(), Some(output), &op, datatype);
            }
            let group = Group::new(comm, datatype);
            match topology::plan(comm) {
                Plan::Hierarchical(topology) if op.is_commutative() || topology.blocks_in_rank_order => {
                    hierarchical::all_reduce(&group, topology, sendbuf.bytes(), output, &op)
                }
                _ => internal::all_reduce(&group, sendbuf.bytes(), output, &op),
            }
        })
    }

    /// `MPI_Reduce_scatter_block`: the reduction of all `sendbuf`s, part i to rank i.
    fn reduce_scatter_block_into<S: ?Sized + Buffer, R: ?Sized + BufferMut, O: Operation>(&self, sendbuf: &S, recvbuf: &mut R, op: O) {
        let comm = self.comm_state();
        run(comm, || {
            let datatype = recvbuf.buffer_datatype();
            check_reduction(sendbuf.buffer_datatype(), datatype, &op)?;
            let group = Group::new(comm, datatype);
            let output = recvbuf.bytes_mut(Token(()));
            check_len("reduce_scatter_block_into send buffer", sendbuf.bytes().len(), output.len() * group.size)?;
            let mut reduced = (group.rank == 0).then(|| alloc::vec![0u8; sendbuf.bytes().len()]);
            reduce(&group, 0, sendbuf.bytes(), reduced.as_deref_mut(), &op)?;
            internal::scatter(&group, 0, reduced.as_deref(), output)
        })
    }

    /// `MPI_Scan`: rank i gets the reduction of ranks 0..=i.
    fn scan_into<S: ?Sized + Buffer, R: ?Sized + BufferMut, O: Operation>(&self, sendbuf: &S, recvbuf: &mut R, op: O) {
        scan(self.comm_state(), sendbuf, recvbuf, &op, false)
    }

    /// `MPI_Exscan`: rank i gets the reduction of ranks 0..i; rank 0's buffer is untouched.
    fn exclusive_scan_into<S: ?Sized + Buffer, R: ?Sized + BufferMut, O: Operation>(&self, sendbuf: &S, recvbuf: &mut R, op: O) {
        scan(self.comm_state(), sendbuf, recvbuf, &op, true)
    }
}

fn scan<S: ?Sized + Buffer, R: ?Sized + BufferMut>(comm: &CommState, sendbuf: &S, recvbuf: &mut R, op: &dyn Operation, exclusive: bool) {
    run(comm, || {
        let datatype = recvbuf.buffer_datatype();
        check_reduction(sendbuf.buffer_datatype(), datatype, op)?;
        let output = recvbuf.bytes_mut(Token(()));
        check_len("scan receive buffer", output.len(), sendbuf.bytes().len())?;
        internal::scan(&Group::new(comm, datatype), sendbuf.bytes(), output, op, exclusive)
    })
}

impl<C: Communicator> CommunicatorCollectives for C {}

/// `MPI_Reduce` on the plan's path: hierarchical only where it keeps the rank order a
/// non-commutative operation needs.
fn reduce(group: &Group, root: usize, input: &[u8], output: Option<&mut [u8]>, op: &dyn Operation) -> MpiResult<()> {
    match topology::plan(group.comm()) {
        Plan::Hierarchical(topology) if op.is_commutative() || topology.blocks_in_rank_order => {
            hierarchical::reduce(group, topology, root, input, output, op)
        }
        _ => internal::reduce(group, root, input, output, op),
    }
}

/// Collective operations with a root process (rsmpi's `Root`), for `Process`.
/// The root calls the `*_root` variant, every other rank the plain one.
pub trait Root {
    fn root_rank(&self) -> Rank;
    /// `MPI_Bcast`.
    fn broadcast_into<B: ?Sized + BufferMut>(&self, buffer: &mut B);
    /// `MPI_Gather`, non-root side.
    fn gather_into<S: ?Sized + Buffer>(&self, sendbuf: &S);
    /// `MPI_Gather`, root side: rank i's data in part i of `recvbuf`.
    fn gather_into_root<S: ?Sized + Buffer, R: ?Sized + BufferMut>(&self, sendbuf: &S, recvbuf: &mut R);
    /// `MPI_Gatherv`, non-root side.
    fn gather_varcount_into<S: ?Sized + Buffer>(&self, sendbuf: &S);
    /// `MPI_Gatherv`, root side.
    fn gather_varcount_into_root<S: ?Sized + Buffer, R: ?Sized + BufferMut>(&self, sendbuf: &S, recvbuf: &mut PartitionMut<'_, R>);
    /// `MPI_Scatter`, non-root side.
    fn scatter_into<R: ?Sized + BufferMut>(&self, recvbuf: &mut R);
    /// `MPI_Scatter`, root side: part i of `sendbuf` goes to rank i.
    fn scatter_into_root<S: ?Sized + Buffer, R: ?Sized + BufferMut>(&self, sendbuf: &S, recvbuf: &mut R);
    /// `MPI_Scatterv`, non-root side.
    fn scatter_varcount_into<R: ?Sized + BufferMut>(&self, recvbuf: &mut R);
    /// `MPI_Scatterv`, root side.
    fn scatter_varcount_into_root<S: ?Sized + Buffer, R: ?Sized + BufferMut>(&self, sendbuf: &Partition<'_, S>, recvbuf: &mut R);
    /// `MPI_Reduce`, non-root side.
    fn reduce_into<S: ?Sized + Buffer, O: Operation>(&self, sendbuf: &S, op: O);
    /// `MPI_Reduce`, root side.
    fn reduce_into_root<S: ?Sized + Buffer, R: ?Sized + BufferMut, O: Operation>(&self, sendbuf: &S, recvbuf: &mut R, op: O);
}

impl Process<'_> {
    /// Validates the root and whether this rank called the right variant.
    fn root_for(&self, caller_is_root: bool) -> MpiResult<usize> {
        self.comm.check_rank(self.rank, ErrorClass::Root)?;
        let is_root = self.rank == self.comm.rank();
        if is_root != caller_is_root {
            let detail = if is_root { "the root must call the *_root variant" } else { "only the root may call the *_root variant" };
            return fail(ErrorClass::Root, detail);
        }
        Ok(self.rank as usize)
    }
}

impl Root for Process<'_> {
    fn root_rank(&self) -> Rank {
        self.rank
    }

    fn broadcast_into<B: ?Sized + BufferMut>(&self, buffer: &mut B) {
        run(self.comm, || {
            self.comm.check_rank(self.rank, ErrorClass::Root)?;
            let group = Group::new(self.comm, buffer.buffer_datatype());
            let (root, buffer) = (self.rank as usize, buffer.bytes_mut(Token(())));
            if let Some(shm) = shm_path(self.comm, buffer.len(), shm::Compare::Root(root))? {
                return shm.broadcast(self.comm, root, buffer);
            }
            match topology::plan(self.comm) {
                Plan::Flat => internal::broadcast(&group, root, buffer),
                Plan::Hierarchical(topology) => hierarchical::broadcast(&group, topology, root, buffer),
            }
        })
    }

    fn gather_into<S: ?Sized + Buffer>(&self, sendbuf: &S) {
        run(self.comm, || {
            let root = self.root_for(false)?;
            if let Some(shm) = shm_path(self.comm, sendbuf.bytes().len(), shm::Compare::Nobody)? {
                return shm.gather(self.comm, root, sendbuf.bytes(), None);
            }
            internal::gather(&Group::new(self.comm, sendbuf.buffer_datatype()), root, sendbuf.bytes(), None)
        })
    }

    fn gather_into_root<S: ?Sized + Buffer, R: ?Sized + BufferMut>(&self, sendbuf: &S, recvbuf: &mut R) {
        run(self.comm, || {
            let root = self.root_for(true)?;
            let group = Group::new(self.comm, recvbuf.buffer_datatype());
            let output = recvbuf.bytes_mut(Token(()));
            check_len("gather_into_root receive buffer", output.len(), sendbuf.bytes().len() * group.size)?;
            if let Some(shm) = shm_path(self.comm, sendbuf.bytes().len(), shm::Compare::Everyone)? {
                return shm.gather(self.comm, root, sendbuf.bytes(), Some(output));
            }
            internal::gather(&group, root, sendbuf.bytes(), Some(output))
        })
    }

    fn gather_varcount_into<S: ?Sized + Buffer>(&self, sendbuf: &S) {
        run(self.comm, || {
            let root = self.root_for(false)?;
            internal::gather_varcount(&Group::new(self.comm, sendbuf.buffer_datatype()), root, sendbuf.bytes(), None)
        })
    }

    fn gather_varcount_into_root<S: ?Sized + Buffer, R: ?Sized + BufferMut>(&self, sendbuf: &S, recvbuf: &mut PartitionMut<'_, R>) {
        run(self.comm, || {
            let root = self.root_for(true)?;
            let datatype = recvbuf.buffer.buffer_datatype();
            let group = Group::new(self.comm, datatype);
            let output = recvbuf.buffer.bytes_mut(Token(()));
            let ranges = partition_ranges(&recvbuf.counts, &recvbuf.displs, group.size, datatype.size(), output.len())?;
            internal::gather_varcount(&group, root, sendbuf.bytes(), Some((output, &ranges)))
        })
    }

    fn scatter_into<R: ?Sized + BufferMut>(&self, recvbuf: &mut R) {
        run(self.comm, || {
            let root = self.root_for(false)?;
            let group = Group::new(self.comm, recvbuf.buffer_datatype());
            let output = recvbuf.bytes_mut(Token(()));
            if let Some(shm) = shm_path(self.comm, output.len() * group.size, shm::Compare::Root(root))? {
                return shm.scatter(self.comm, root, None, output);
            }
            internal::scatter(&group, root, None, output)
        })
    }

    fn scatter_into_root<S: ?Sized + Buffer, R: ?Sized + BufferMut>(&self, sendbuf: &S, recvbuf: &mut R) {
        run(self.comm, || {
            let root = self.root_for(true)?;
            let group = Group::new(self.comm, recvbuf.buffer_datatype());
            let output = recvbuf.bytes_mut(Token(()));
            check_len("scatter_into_root send buffer", sendbuf.bytes().len(), output.len() * group.size)?;
            if let Some(shm) = shm_path(self.comm, sendbuf.bytes().len(), shm::Compare::Root(root))? {
                return shm.scatter(self.comm, root, Some(sendbuf.bytes()), output);
            }
            internal::scatter(&group, root, Some(sendbuf.bytes()), output)
        })
    }

    fn scatter_varcount_into<R: ?Sized + BufferMut>(&self, recvbuf: &mut R) {
        run(self.comm, || {
            let root = self.root_for(false)?;
            let group = Group::new(self.comm, recvbuf.buffer_datatype());
            internal::scatter_varcount(&group, root, None, recvbuf.bytes_mut(Token(())))
        })
    }

    fn scatter_varcount_into_root<S: ?Sized + Buffer, R: ?Sized + BufferMut>(&self, sendbuf: &Partition<'_, S>, recvbuf: &mut R) {
        run(self.comm, || {
            let root = self.root_for(true)?;
            let group = Group::new(self.comm, recvbuf.buffer_datatype());
            let input = sendbuf.buffer.bytes();
            let value_size = sendbuf.buffer.buffer_datatype().size();
            let ranges = partition_ranges(&sendbuf.counts, &sendbuf.displs, group.size, value_size, input.len())?;
            internal::scatter_varcount(&group, root, Some((input, &ranges)), recvbuf.bytes_mut(Token(())))
        })
    }

    fn reduce_into<S: ?Sized + Buffer, O: Operation>(&self, sendbuf: &S, op: O) {
        run(self.comm, || {
            let root = self.root_for(false)?;
            let datatype = sendbuf.buffer_datatype();
            check_reduction(datatype, datatype, &op)?;
            if let Some(shm) = shm_path(self.comm, sendbuf.bytes().len(), shm::Compare::Nobody)? {
                return shm.reduce(self.comm, sendbuf.bytes(), None, &op, datatype);
            }
            reduce(&Group::new(self.comm, datatype), root, sendbuf.bytes(), None, &op)
        })
    }

    fn reduce_into_root<S: ?Sized + Buffer, R: ?Sized + BufferMut, O: Operation>(&self, sendbuf: &S, recvbuf: &mut R, op: O) {
        run(self.comm, || {
            let root = self.root_for(true)?;
            let datatype = recvbuf.buffer_datatype();
            check_reduction(sendbuf.buffer_datatype(), datatype, &op)?;
            let output = recvbuf.bytes_mut(Token(()));
            check_len("reduce_into_root receive buffer", output.len(), sendbuf.bytes().len())?;
            if let Some(shm) = shm_path(self.comm, output.len(), shm::Compare::Everyone)? {
                return shm.reduce(self.comm, sendbuf.bytes(), Some(output), &op, datatype);
            }
            reduce(&Group::new(self.comm, datatype), root, sendbuf.bytes(), Some(output), &op)
        })
    }
}
