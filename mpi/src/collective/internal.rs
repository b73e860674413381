//! Collective algorithms on bytes, over point-to-point messages in the communicator's
//! collective context (so they never match user messages).
//!
//! Every reduction combines contributions in a fixed order that depends only on the
//! rank count (never on timing), so results are reproducible, and all-reduce results
//! are bit-identical on every rank: each partial is computed once, or computed by both
//! partners from the same operands in the same order (lower ranks first).

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

use super::operation::Operation;
use super::selection::{self, AllReduce, Broadcast};
use crate::communicator::CommState;
use crate::datatype::{DatatypeRef, Primitive, Token};
use crate::engine::Pattern;
use crate::error::{fail, ErrorClass, MpiResult};
use crate::raw::AlignedBytes;
use crate::Rank;

/// Tags inside the collective context, one per algorithm (FIFO order per pair keeps
/// consecutive collectives apart).
mod tag {
    pub const BARRIER: i32 = 1;
    pub const BROADCAST: i32 = 2;
    pub const REDUCE: i32 = 3;
    pub const ALL_REDUCE: i32 = 4;
    pub const GATHER: i32 = 5;
    pub const SCATTER: i32 = 6;
    pub const ALL_GATHER: i32 = 7;
    pub const ALL_TO_ALL: i32 = 8;
    pub const SCAN: i32 = 9;
}

/// A communicator, or a subset of its ranks, seen by a collective algorithm: `rank`
/// and `size` are positions in `members` (the communicator's ranks, in order) when the
/// group is a subset (hierarchical collectives: the ranks of one VM, or one leader per
/// VM), else in the communicator itself.
pub(crate) struct Group<'c> {
    comm: &'c CommState,
    pub(crate) rank: usize,
    pub(crate) size: usize,
    pub(crate) datatype: DatatypeRef,
    members: Option<Vec<Rank>>,
}

impl<'c> Group<'c> {
    pub(crate) fn new(comm: &'c CommState, datatype: DatatypeRef) -> Group<'c> {
        Group { comm, rank: comm.rank() as usize, size: comm.size() as usize, datatype, members: None }
    }

    /// The ranks `members` (communicator ranks, ascending or in the order the algorithm
    /// wants; the calling rank must be one of them).
    pub(crate) fn subset(&self, members: Vec<Rank>) -> Group<'c> {
        let me = self.comm.rank();
        let rank = members.iter().position(|&m| m == me).expect("the calling rank belongs to its subset");
        Group { comm: self.comm, rank, size: members.len(), datatype: self.datatype, members: Some(members) }
    }

    pub(crate) fn comm(&self) -> &'c CommState {
        self.comm
    }

    /// The communicator rank of group member `index`.
    fn comm_rank(&self, index: usize) -> Rank {
        match &self.members {
            Some(members) => members[index],
            None => index as Rank,
        }
    }

    fn send(&self, to: usize, tag: i32, payload: &[u8]) -> MpiResult<()> {
        let dest = self.comm.world_rank_of(self.comm_rank(to));
        let context = self.comm.collective_context();
        let mut engine = self.comm.engine.borrow_mut();
        let handle = engine.start_send(dest, context, tag, false, payload)?;
        engine.wait_send(handle);
        Ok(())
    }

    /// Receives exactly `into.len()` bytes; any other length means the ranks disagree on
    /// counts.
    fn receive(&self, from: usize, tag: i32, into: &mut [u8]) -> MpiResult<()> {
        let pattern = Pattern {
            context: self.comm.collective_context(),
            source: Some(self.comm.world_rank_of(self.comm_rank(from))),
            tag: Some(tag),
        };
        let header = self.comm.engine.borrow_mut().receive_into(pattern, into, self.datatype)?;
        if header.len != into.len() {
            return fail(
                ErrorClass::Count,
                format!(
                    "collective: rank {} sent {} bytes, {} expected (counts differ between ranks)",
                    self.comm_rank(from),
                    header.len,
                    into.len()
                ),
            );
        }
        Ok(())
    }

    /// Sends and receives at once, so exchanges cannot deadlock on rendezvous transports.
    fn exchange(&self, to: usize, payload: &[u8], from: usize, into: &mut [u8], tag: i32) -> MpiResult<()> {
        let dest = self.comm.world_rank_of(self.comm_rank(to));
        let context = self.comm.collective_context();
        let handle = self.comm.engine.borrow_mut().start_send(dest, context, tag, false, payload)?;
        let received = self.receive(from, tag, into);
        self.comm.engine.borrow_mut().wait_send(handle);
        received
    }
}

fn reduce_into(op: &dyn Operation, input: &[u8], inout: &mut [u8], datatype: DatatypeRef) -> MpiResult<()> {
    op.reduce(input, inout, datatype, Token(()))
}

// ---- synchronization and data movement ----

/// Dissemination barrier: ⌈log2 n⌉ rounds, in round k every rank signals rank + 2^k.
pub(crate) fn barrier(group: &Group) -> MpiResult<()> {
    let (r, n) = (group.rank, group.size);
    let mut distance = 1;
    while distance < n {
        group.exchange((r + distance) % n, &[], (r + n - distance) % n, &mut [], tag::BARRIER)?;
        distance <<= 1;
    }
    Ok(())
}

/// Broadcast with the algorithm `selection` picks for this size and rank count.
pub(crate) fn broadcast(group: &Group, root: usize, buffer: &mut [u8]) -> MpiResult<()> {
    let count = buffer.len() / group.datatype.size().max(1);
    match selection::broadcast(buffer.len(), count, group.size) {
        Broadcast::Binomial => broadcast_binomial(group, root, buffer),
        Broadcast::ScatterAllGather => broadcast_scatter_all_gather(group, root, buffer),
    }
}

/// Binomial-tree broadcast.
pub(crate) fn broadcast_binomial(group: &Group, root: usize, buffer: &mut [u8]) -> MpiResult<()> {
    let n = group.size;
    let relative = (group.rank + n - root) % n;
    let mut mask = 1;
    while mask < n {
        if relative & mask != 0 {
            group.receive((relative - mask + root) % n, tag::BROADCAST, buffer)?;
            break;
        }
        mask <<= 1;
    }
    mask >>= 1;
    while mask > 0 {
        if relative + mask < n {
            group.send((relative + mask + root) % n, tag::BROADCAST, buffer)?;
        }
        mask >>= 1;
    }
    Ok(())
}

/// Van de Geijn's broadcast for long messages: the root scatters the buffer in n
/// nearly equal chunks down a binomial tree (chunk i to the i-th rank after the root),
/// then a ring all-gather completes every copy. Each rank sends and receives about
/// 2·(n−1)/n of the buffer, against log2(n) whole copies on the binomial tree's root.
pub(crate) fn broadcast_scatter_all_gather(group: &Group, root: usize, buffer: &mut [u8]) -> MpiResult<()> {
    let n = group.size;
    let relative = (group.rank + n - root) % n;
    let chunks = chunk_ranges(buffer.len(), group.datatype.size(), n);
    // Bytes of chunks first..end (relative indices), contiguous in the buffer.
    let span = |first: usize, end: usize| chunks[first].start..chunks[end - 1].end;
    let subtree = subtree_size(relative, n);
    if relative != 0 {
        let lowbit = relative & relative.wrapping_neg();
        group.receive((relative - lowbit + root) % n, tag::BROADCAST, &mut buffer[span(relative, relative + subtree)])?;
    }
    let mut mask = if relative == 0 { n.next_power_of_two() >> 1 } else { (relative & relative.wrapping_neg()) >> 1 };
    while mask > 0 {
        if mask < subtree {
            let end = (2 * mask).min(subtree);
            group.send((relative + mask + root) % n, tag::BROADCAST, &buffer[span(relative + mask, relative + end)])?;
        }
        mask >>= 1;
    }
    // Rank q holds chunk (q − root) mod n.
    let by_rank: Vec<Range<usize>> = (0..n).map(|q| chunks[(q + n - root) % n].clone()).collect();
    all_gather_ring_tagged(group, buffer, &by_rank, tag::BROADCAST)
}

/// Binomial-tree gather of equal blocks into the root's rank-ordered `output`.
///
/// A leaf sends its block as it is; the root receives each subtree's blocks straight into
/// `output` where they lie there in one piece (always when the root is rank 0), so only
/// inner ranks, and a subtree whose ranks wrap past the last, go through a staging buffer.
/// `output` is `Some` exactly on the root (it decides who receives).
pub(crate) fn gather(group: &Group, root: usize, block: &[u8], output: Option<&mut [u8]>) -> MpiResult<()> {
    let (n, size) = (group.size, block.len());
    let relative = (group.rank + n - root) % n;
    if let Some(output) = output {
        output[root * size..(root + 1) * size].copy_from_slice(block);
        let mut mask = 1;
        while mask < n {
            let blocks = mask.min(n - mask);
            let from = (mask + root) % n;
            if from + blocks <= n {
                group.receive(from, tag::GATHER, &mut output[from * size..(from + blocks) * size])?;
            } else {
                // Relative ranks mask..mask+blocks wrap past rank n−1.
                let mut staged = AlignedBytes::zeroed(blocks * size);
                let staged = staged.as_mut();
                group.receive(from, tag::GATHER, staged)?;
                let (head, tail) = staged.split_at((n - from) * size);
                output[from * size..].copy_from_slice(head);
                output[..tail.len()].copy_from_slice(tail);
            }
            mask <<= 1;
        }
        return Ok(());
    }
    let subtree = subtree_size(relative, n);
    let parent = |mask: usize| (relative - mask + root) % n;
    if subtree == 1 {
        // A leaf: its parent is reached through its lowest set bit.
        return group.send(parent(relative & relative.wrapping_neg()), tag::GATHER, block);
    }
    // Blocks of ranks relative..relative+subtree, in relative order.
    let mut gathered = AlignedBytes::zeroed(subtree * size);
    let gathered = gathered.as_mut();
    gathered[..size].copy_from_slice(block);
    let mut have = 1;
    let mut mask = 1;
    while mask < n {
        if relative & mask != 0 {
            return group.send(parent(mask), tag::GATHER, &gathered[..have * size]);
        }
        if relative + mask < n {
            let blocks = mask.min(n - relative - mask);
            group.receive((relative + mask + root) % n, tag::GATHER, &mut gathered[have * size..(have + blocks) * size])?;
            have += blocks;
        }
        mask <<= 1;
    }
    Ok(())
}

/// Ranks in the binomial subtree rooted at `relative` (relative to the root).
fn subtree_size(relative: usize, n: usize) -> usize {
    if relative == 0 { n } else { (relative & relative.wrapping_neg()).min(n - relative) }
}

/// Binomial-tree scatter of equal blocks from the root's rank-ordered `input`.
///
/// The root sends each subtree's blocks straight from `input` where they lie there in one
/// piece (always when the root is rank 0), and a leaf receives its block straight into
/// `output`, so only inner ranks, and a subtree whose ranks wrap past the last, go
/// through a staging buffer. `input` is `Some` exactly on the root (it decides who sends).
pub(crate) fn scatter(group: &Group, root: usize, input: Option<&[u8]>, output: &mut [u8]) -> MpiResult<()> {
    let (n, size) = (group.size, output.len());
    let relative = (group.rank + n - root) % n;
    if let Some(input) = input {
        let mut mask = n.next_power_of_two() >> 1;
        while mask > 0 {
            if mask < n {
                let blocks = mask.min(n - mask);
                let to = (mask + root) % n;
                if to + blocks <= n {
                    group.send(to, tag::SCATTER, &input[to * size..(to + blocks) * size])?;
                } else {
                    // Relative ranks mask..mask+blocks wrap past rank n−1.
                    let mut staged = AlignedBytes::zeroed(blocks * size);
                    let staged = staged.as_mut();
                    let (head, tail) = staged.split_at_mut((n - to) * size);
                    head.copy_from_slice(&input[to * size..]);
                    tail.copy_from_slice(&input[..tail.len()]);
                    group.send(to, tag::SCATTER, staged)?;
                }
            }
            mask >>= 1;
        }
        output.copy_from_slice(&input[root * size..(root + 1) * size]);
        return Ok(());
    }
    let subtree = subtree_size(relative, n);
    let lowbit = relative & relative.wrapping_neg();
    let parent = (relative - lowbit + root) % n;
    if subtree == 1 {
        return group.receive(parent, tag::SCATTER, output);
    }
    // Blocks of ranks relative..relative+subtree, in relative order.
    let mut blocks = AlignedBytes::zeroed(subtree * size);
    let blocks = blocks.as_mut();
    group.receive(parent, tag::SCATTER, blocks)?;
    let mut mask = lowbit >> 1;
    while mask > 0 {
        if mask < subtree {
            let end = (2 * mask).min(subtree);
            group.send((relative + mask + root) % n, tag::SCATTER, &blocks[mask * size..end * size])?;
        }
        mask >>= 1;
    }
    output.copy_from_slice(&blocks[..size]);
    Ok(())
}

/// Linear gather of parts of different sizes (`ranges[i]` of the root's output).
pub(crate) fn gather_varcount(group: &Group, root: usize, block: &[u8], output: Option<(&mut [u8], &[Range<usize>])>) -> MpiResult<()> {
    match output {
        None => group.send(root, tag::GATHER, block),
        Some((output, ranges)) => {
            for (rank, range) in ranges.iter().enumerate() {
                if rank == group.rank {
                    if block.len() != range.len() {
                        return fail(ErrorClass::Count, "root's own part differs from its send count");
                    }
                    output[range.clone()].copy_from_slice(block);
                } else {
                    group.receive(rank, tag::GATHER, &mut output[range.clone()])?;
                }
            }
            Ok(())
        }
    }
}

/// Linear scatter of parts of different sizes.
pub(crate) fn scatter_varcount(group: &Group, root: usize, input: Option<(&[u8], &[Range<usize>])>, output: &mut [u8]) -> MpiResult<()> {
    match input {
        None => group.receive(root, tag::SCATTER, output),
        Some((input, ranges)) => {
            for (rank, range) in ranges.iter().enumerate() {
                if rank == group.rank {
                    if output.len() != range.len() {
                        return fail(ErrorClass::Count, "root's receive buffer differs from its own part");
                    }
                    output.copy_from_slice(&input[range.clone()]);
                } else {
                    group.send(rank, tag::SCATTER, &input[range.clone()])?;
                }
            }
            Ok(())
        }
    }
}

/// Ring all-gather: n-1 steps, each rank forwards the block it received last.
/// `ranges[i]` is rank i's part of `output`; the own part must already be in place.
pub(crate) fn all_gather_ring(group: &Group, output: &mut [u8], ranges: &[Range<usize>]) -> MpiResult<()> {
    all_gather_ring_tagged(group, output, ranges, tag::ALL_GATHER)
}

fn all_gather_ring_tagged(group: &Group, output: &mut [u8], ranges: &[Range<usize>], tag: i32) -> MpiResult<()> {
    let (r, n) = (group.rank, group.size);
    let (right, left) = ((r + 1) % n, (r + n - 1) % n);
    let mut outgoing = Vec::new();
    for step in 0..n.saturating_sub(1) {
        let send_block = (r + n - step) % n;
        let receive_block = (r + 2 * n - step - 1) % n;
        let (send, receive) = (ranges[send_block].clone(), ranges[receive_block].clone());
        if send.end <= receive.start || receive.end <= send.start {
            let (send, receive) = split_disjoint(output, send, receive);
            group.exchange(right, send, left, receive, tag)?;
        } else {
            // Overlapping parts (allowed by a varcount layout): send a copy.
            outgoing.clear();
            outgoing.extend_from_slice(&output[send]);
            group.exchange(right, &outgoing, left, &mut output[receive], tag)?;
        }
    }
    Ok(())
}

/// Pairwise-exchange all-to-all: in step s rank r sends to r+s and receives from r-s.
pub(crate) fn all_to_all_pairwise(group: &Group, input: &[u8], send: &[Range<usize>], output: &mut [u8], receive: &[Range<usize>]) -> MpiResult<()> {
    let (r, n) = (group.rank, group.size);
    if send[r].len() != receive[r].len() {
        return fail(ErrorClass::Count, "own send and receive parts differ in size");
    }
    output[receive[r].clone()].copy_from_slice(&input[send[r].clone()]);
    for step in 1..n {
        let (to, from) = ((r + step) % n, (r + n - step) % n);
        group.exchange(to, &input[send[to].clone()], from, &mut output[receive[from].clone()], tag::ALL_TO_ALL)?;
    }
    Ok(())
}

// ---- reductions ----

/// Binomial-tree reduction to rank 0 in rank order, then handed to the root. `output` is
/// `Some` on the root (a root without one would leave rank 0's hand-off unreceived).
pub(crate) fn reduce(group: &Group, root: usize, input: &[u8], output: Option<&mut [u8]>, op: &dyn Operation) -> MpiResult<()> {
    let (r, n, datatype) = (group.rank, group.size, group.datatype);
    if r & 1 != 0 || r + 1 >= n {
        // No child: the own value goes up as it is, without aligned copies.
        if r != 0 {
            let lowbit = r & r.wrapping_neg();
            group.send(r - lowbit, tag::REDUCE, input)?;
            return reduce_handoff(group, root, None, output);
        }
    }
    let mut accumulated = AlignedBytes::from_bytes(input);
    let mut incoming = AlignedBytes::zeroed(input.len());
    let mut mask = 1;
    while mask < n {
        if r & mask != 0 {
            group.send(r - mask, tag::REDUCE, accumulated.as_ref())?;
            break;
        }
        if r + mask < n {
            // `accumulated` holds ranks r..r+mask, the child ranks r+mask..: lower first.
            group.receive(r + mask, tag::REDUCE, incoming.as_mut())?;
            reduce_into(op, accumulated.as_ref(), incoming.as_mut(), datatype)?;
            core::mem::swap(&mut accumulated, &mut incoming);
        }
        mask <<= 1;
    }
    reduce_handoff(group, root, (r == 0).then_some(accumulated), output)
}

/// The end of [`reduce`]: rank 0 holds the result (`result`, `None` elsewhere) and hands
/// it to the root, which receives it straight into its output.
fn reduce_handoff(group: &Group, root: usize, result: Option<AlignedBytes>, output: Option<&mut [u8]>) -> MpiResult<()> {
    let r = group.rank;
    if r == 0 {
        let result = result.expect("rank 0 holds the reduction");
        if root != 0 {
            group.send(root, tag::REDUCE, result.as_ref())?;
        }
        if let Some(output) = output {
            output.copy_from_slice(result.as_ref());
        }
    } else if r == root {
        if let Some(output) = output {
            group.receive(0, tag::REDUCE, output)?;
        }
    }
    Ok(())
}

/// All-reduce with the algorithm `selection` picks for this size and rank count.
pub(crate) fn all_reduce(group: &Group, input: &[u8], output: &mut [u8], op: &dyn Operation) -> MpiResult<()> {
    let count = input.len() / group.datatype.size().max(1);
    match selection::all_reduce(input.len(), count, group.size, op.is_commutative()) {
        AllReduce::RecursiveDoubling => all_reduce_recursive_doubling(group, input, output, op),
        AllReduce::Rabenseifner => all_reduce_rabenseifner(group, input, output, op),
        AllReduce::Ring => all_reduce_ring(group, input, output, op),
    }
}

/// The ranks below the largest power of two ≤ n take part in power-of-two algorithms;
/// the first 2·(n − 2^k) ranks pair up first (even into odd, so the odd one holds the
/// pair's data in rank order) and only the odd one of each pair takes part.
struct Fold {
    /// 2^k.
    power: usize,
    /// n − 2^k.
    extra: usize,
}

impl Fold {
    fn of(n: usize) -> Fold {
        let power = if n.is_power_of_two() { n } else { n.next_power_of_two() >> 1 };
        Fold { power, extra: n - power }
    }
    /// Position among the 2^k participants, or None for the even rank of a pair.
    fn virtual_rank(&self, rank: usize) -> Option<usize> {
        if rank < 2 * self.extra {
            (rank % 2 == 1).then_some(rank / 2)
        } else {
            Some(rank - self.extra)
        }
    }
    fn real_rank(&self, virtual_rank: usize) -> usize {
        if virtual_rank < self.extra { 2 * virtual_rank + 1 } else { virtual_rank + self.extra }
    }
    /// Step in: the even rank of a pair hands its data to the odd one, which combines
    /// (lower rank first). Returns the participant's virtual rank.
    fn fold_in(&self, group: &Group, accumulated: &mut AlignedBytes, incoming: &mut AlignedBytes, op: &dyn Operation, tag: i32) -> MpiResult<Option<usize>> {
        let r = group.rank;
        if r < 2 * self.extra {
            if r % 2 == 0 {
                group.send(r + 1, tag, accumulated.as_ref())?;
            } else {
                group.receive(r - 1, tag, incoming.as_mut())?;
                reduce_into(op, incoming.as_ref(), accumulated.as_mut(), group.datatype)?;
            }
        }
        Ok(self.virtual_rank(r))
    }
    /// Step out: the odd rank of a pair hands the result back to the even one.
    fn fold_out(&self, group: &Group, result: &mut [u8], tag: i32) -> MpiResult<()> {
        let r = group.rank;
        if r < 2 * self.extra {
            if r % 2 == 1 {
                group.send(r - 1, tag, result)?;
            } else {
                group.receive(r + 1, tag, result)?;
            }
        }
        Ok(())
    }
}

/// Recursive doubling (after the `Fold` step in). Partners combine lower-rank data
/// first, so both compute bit-identical results, and the bracketing is the rank-ordered
/// binary tree ((r0 r1)(r2 r3))…, the same as `all_reduce_rabenseifner`'s.
pub(crate) fn all_reduce_recursive_doubling(group: &Group, input: &[u8], output: &mut [u8], op: &dyn Operation) -> MpiResult<()> {
    let datatype = group.datatype;
    let mut accumulated = AlignedBytes::from_bytes(input);
    let mut incoming = AlignedBytes::zeroed(input.len());
    let fold = Fold::of(group.size);
    if let Some(virtual_rank) = fold.fold_in(group, &mut accumulated, &mut incoming, op, tag::ALL_REDUCE)? {
        let mut mask = 1;
        while mask < fold.power {
            let partner = virtual_rank ^ mask;
            let real = fold.real_rank(partner);
            group.exchange(real, accumulated.as_ref(), real, incoming.as_mut(), tag::ALL_REDUCE)?;
            if partner < virtual_rank {
                reduce_into(op, incoming.as_ref(), accumulated.as_mut(), datatype)?;
            } else {
                reduce_into(op, accumulated.as_ref(), incoming.as_mut(), datatype)?;
                core::mem::swap(&mut accumulated, &mut incoming);
            }
            mask <<= 1;
        }
    }
    fold.fold_out(group, accumulated.as_mut(), tag::ALL_REDUCE)?;
    output.copy_from_slice(accumulated.as_ref());
    Ok(())
}

/// Rabenseifner's all-reduce: after the `Fold` step in, a reduce-scatter by recursive
/// halving (partner at distance 1, 2, 4…; each keeps one half of its current window
/// of chunks and reduces the partner's copy of it into its own, lower rank first),
/// then an all-gather by recursive doubling that retraces the halving backwards.
/// Each chunk is reduced on exactly one rank, in the bracketing of recursive doubling,
/// and only copied afterwards: every rank gets the same bits.
pub(crate) fn all_reduce_rabenseifner(group: &Group, input: &[u8], output: &mut [u8], op: &dyn Operation) -> MpiResult<()> {
    let datatype = group.datatype;
    let mut accumulated = AlignedBytes::from_bytes(input);
    let mut incoming = AlignedBytes::zeroed(input.len());
    let fold = Fold::of(group.size);
    if let Some(virtual_rank) = fold.fold_in(group, &mut accumulated, &mut incoming, op, tag::ALL_REDUCE)? {
        let chunks = chunk_ranges(input.len(), datatype.size(), fold.power);
        let bytes = |window: Range<usize>| if window.is_empty() { 0..0 } else { chunks[window.start].start..chunks[window.end - 1].end };
        // Windows of chunk indices kept at each step, to retrace in the all-gather.
        let mut kept: Vec<(Range<usize>, Range<usize>)> = Vec::new();
        let mut window = 0..fold.power;
        let mut mask = 1;
        while mask < fold.power {
            let partner = virtual_rank ^ mask;
            let real = fold.real_rank(partner);
            let middle = window.start + window.len() / 2;
            let (mine, theirs) = if virtual_rank & mask == 0 { (window.start..middle, middle..window.end) } else { (middle..window.end, window.start..middle) };
            let (keep, give) = (bytes(mine.clone()), bytes(theirs.clone()));
            group.exchange(real, &accumulated.as_ref()[give.clone()], real, &mut incoming.as_mut()[keep.clone()], tag::ALL_REDUCE)?;
            if partner < virtual_rank {
                reduce_into(op, &incoming.as_ref()[keep.clone()], &mut accumulated.as_mut()[keep], datatype)?;
            } else {
                reduce_into(op, &accumulated.as_ref()[keep.clone()], &mut incoming.as_mut()[keep.clone()], datatype)?;
                accumulated.as_mut()[keep.clone()].copy_from_slice(&incoming.as_ref()[keep]);
            }
            kept.push((mine.clone(), theirs));
            window = mine;
            mask <<= 1;
        }
        // All-gather: undo the halving, largest distance first.
        while let Some((mine, theirs)) = kept.pop() {
            mask >>= 1;
            let real = fold.real_rank(virtual_rank ^ mask);
            let (send, receive) = split_disjoint(accumulated.as_mut(), bytes(mine), bytes(theirs));
            group.exchange(real, send, real, receive, tag::ALL_REDUCE)?;
        }
    }
    fold.fold_out(group, accumulated.as_mut(), tag::ALL_REDUCE)?;
    output.copy_from_slice(accumulated.as_ref());
    Ok(())
}

/// Two disjoint ranges of one buffer: the first to read, the second to write.
fn split_disjoint(buffer: &mut [u8], read: Range<usize>, write: Range<usize>) -> (&[u8], &mut [u8]) {
    if read.end <= write.start {
        let (low, high) = buffer.split_at_mut(write.start);
        (&low[read], &mut high[..write.len()])
    } else {
        let (low, high) = buffer.split_at_mut(read.start);
        (&high[..read.len()], &mut low[write])
    }
}

/// Element ranges (in bytes) of n nearly equal chunks.
fn chunk_ranges(len: usize, element: usize, n: usize) -> Vec<Range<usize>> {
    let count = len / element;
    (0..n).map(|i| (i * count / n) * element..((i + 1) * count / n) * element).collect()
}

/// Ring all-reduce: reduce-scatter then all-gather around the ring. Each chunk is
/// reduced by exactly one chain of ranks, then copied, so all ranks agree bit for bit.
pub(crate) fn all_reduce_ring(group: &Group, input: &[u8], output: &mut [u8], op: &dyn Operation) -> MpiResult<()> {
    let (r, n, datatype) = (group.rank, group.size, group.datatype);
    let ranges = chunk_ranges(input.len(), datatype.size(), n);
    let (right, left) = ((r + 1) % n, (r + n - 1) % n);
    let mut accumulated = AlignedBytes::from_bytes(input);
    let largest = ranges.iter().map(|range| range.len()).max().unwrap_or(0);
    let mut incoming = AlignedBytes::zeroed(largest);
    for step in 0..n - 1 {
        let send_chunk = ranges[(r + n - step) % n].clone();
        let receive_chunk = ranges[(r + 2 * n - step - 1) % n].clone();
        let length = receive_chunk.len();
        group.exchange(right, &accumulated.as_ref()[send_chunk], left, &mut incoming.as_mut()[..length], tag::ALL_REDUCE)?;
        reduce_into(op, &incoming.as_ref()[..length], &mut accumulated.as_mut()[receive_chunk], datatype)?;
    }
    // Rank r now owns the finished chunk r+1; circulate the finished chunks.
    output.copy_from_slice(accumulated.as_ref());
    let mut outgoing = Vec::with_capacity(largest);
    for step in 0..n - 1 {
        let send_chunk = ranges[(r + 1 + n - step) % n].clone();
        let receive_chunk = ranges[(r + n - step) % n].clone();
        outgoing.clear();
        outgoing.extend_from_slice(&output[send_chunk]);
        group.exchange(right, &outgoing, left, &mut output[receive_chunk], tag::ALL_REDUCE)?;
    }
    Ok(())
}

/// Inclusive (or exclusive) prefix reduction by recursive doubling, in rank order.
/// Exclusive: rank 0's `output` is left untouched (undefined in MPI).
pub(crate) fn scan(group: &Group, input: &[u8], output: &mut [u8], op: &dyn Operation, exclusive: bool) -> MpiResult<()> {
    let (r, n, datatype) = (group.rank, group.size, group.datatype);
    // `window`: reduction of the ranks of my aligned block; `prefix`: of ranks below me
    // (plus mine when inclusive).
    let mut window = AlignedBytes::from_bytes(input);
    let mut prefix: Option<AlignedBytes> = (!exclusive).then(|| AlignedBytes::from_bytes(input));
    let mut incoming = AlignedBytes::zeroed(input.len());
    let mut mask = 1;
    while mask < n {
        let partner = r ^ mask;
        if partner < n {
            group.exchange(partner, window.as_ref(), partner, incoming.as_mut(), tag::SCAN)?;
            if partner < r {
                match prefix.as_mut() {
                    Some(prefix) => reduce_into(op, incoming.as_ref(), prefix.as_mut(), datatype)?,
                    None => prefix = Some(incoming.clone()),
                }
                reduce_into(op, incoming.as_ref(), window.as_mut(), datatype)?;
            } else {
                reduce_into(op, window.as_ref(), incoming.as_mut(), datatype)?;
                core::mem::swap(&mut window, &mut incoming);
            }
        }
        mask <<= 1;
    }
    if let Some(prefix) = prefix {
        output.copy_from_slice(prefix.as_ref());
    }
    Ok(())
}

// ---- helpers for communicator management ----

/// All-reduce of one u32 with MAX (agreeing on communicator ids).
pub(crate) fn all_reduce_max_u32(comm: &CommState, value: u32) -> MpiResult<u32> {
    let group = Group::new(comm, DatatypeRef::primitive(Primitive::U32));
    let mut output = [0u8; 4];
    all_reduce(&group, &value.to_ne_bytes(), &mut output, &super::SystemOperation::max())?;
    Ok(u32::from_ne_bytes(output))
}

/// All-gather of one (color, key) pair per rank.
pub(crate) fn all_gather_pairs(comm: &CommState, pair: [i32; 2]) -> MpiResult<Vec<[i32; 2]>> {
    let group = Group::new(comm, DatatypeRef::primitive(Primitive::I32).contiguous(2));
    let n = group.size;
    let mut output = vec![0u8; 8 * n];
    output[8 * group.rank..8 * group.rank + 8].copy_from_slice(&[pair[0].to_ne_bytes(), pair[1].to_ne_bytes()].concat());
    let ranges: Vec<_> = (0..n).map(|i| 8 * i..8 * i + 8).collect();
    all_gather_ring(&group, &mut output, &ranges)?;
    Ok(output
        .chunks(8)
        .map(|c| [i32::from_ne_bytes(c[..4].try_into().expect("4 bytes")), i32::from_ne_bytes(c[4..].try_into().expect("4 bytes"))])
        .collect())
}
