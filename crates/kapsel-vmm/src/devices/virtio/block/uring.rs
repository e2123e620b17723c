//! The fast path of virtio-blk on raw images: reads, writes and flushes
//! submitted through io_uring, many in flight, the data moving straight
//! between the disk file and guest memory (no bounce copy).
//!
//! The ring signals completions through an eventfd that the I/O thread
//! polls (see [`VirtioDevice::host_event_fds`](super::super::VirtioDevice));
//! the device then reaps them, in whatever order the kernel finished them,
//! and puts them on the used ring.
//!
//! Memory safety rests on one rule: every buffer handed to the kernel stays
//! mapped until its completion is reaped. The buffers are guest memory,
//! which lives as long as the VM; the device drains the ring on reset and
//! when it is dropped, and if draining ever fails it leaks the guest
//! memory mapping (and the ring) rather than unmap memory the kernel may
//! still write.

use super::request::{Request, RequestKind, SECTOR_SHIFT};
use crate::memory::GuestMem;
use io_uring::register::Restriction;
use io_uring::{opcode, squeue, types, IoUring};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The guest-memory pieces of one request, as the kernel reads them.
struct IoVecs {
    _array: Vec<libc::iovec>,
}

// SAFETY: the pointers are addresses in guest memory, which is mapped
// shared for the VM's lifetime and accessed from any thread; an `IoVecs`
// only carries them to the kernel and is never dereferenced in Rust.
unsafe impl Send for IoVecs {}

/// A request the kernel is working on.
pub(super) struct InFlight {
    /// Head of its descriptor chain (its used-ring id).
    pub head: u16,
    /// Where its status byte goes.
    pub status: GuestAddress,
    /// The checked request, kept to redo it on the slow path after a short
    /// transfer.
    pub request: Request,
    /// Must outlive the submission: the kernel may read the array when it
    /// starts the operation, not only when it is submitted.
    _iovecs: IoVecs,
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Every byte was transferred (or the flush succeeded).
    Done,
    /// Fewer bytes than asked, or a transient error: redo it synchronously.
    Retry,
    /// The operation failed.
    Failed(i32),
}

/// At most this many kernel worker threads serve the blocking requests of
/// the thread that submits to the ring (the kernel keeps one pool per
/// submitting thread; QEMU's thread pool allows 64 per I/O context).
const MAX_WORKERS: u32 = 16;

/// An io_uring instance serving one disk file.
pub(super) struct UringDisk {
    ring: IoUring,
    file: File,
    /// O_DIRECT's alignment of offsets, lengths and buffers, if open so.
    direct_align: Option<u64>,
    event: EventFd,
    slots: Vec<Option<InFlight>>,
    free: Vec<u32>,
    unsubmitted: usize,
    /// Completions being taken (kept to reuse its memory).
    cqes: Vec<(u64, i32)>,
}

impl UringDisk {
    /// A ring of `depth` entries over `file` (opened with O_DIRECT when
    /// `direct_align` is given: then every offset, buffer and length must be
    /// aligned to it). Fails
    /// where io_uring is unavailable (old kernel, disabled by sysctl, or
    /// forbidden by a seccomp filter).
    pub fn new(file: File, direct_align: Option<u64>, depth: u16) -> io::Result<Self> {
        // The ring starts disabled so that it can be restricted first to
        // the three operations the device submits: io_uring operations run
        // in the kernel, past any seccomp filter of the thread, so a
        // compromised VMM thread must not be able to open or send files
        // through the ring. No register operation is allowed afterwards.
        let ring = IoUring::builder()
            .setup_r_disabled()
            .build(u32::from(depth))?;
        let event = EventFd::new(EFD_NONBLOCK)?;
        let submitter = ring.submitter();
        // Requests the kernel cannot start without blocking (buffered I/O
        // that misses the page cache, files and devices without NOWAIT
        // support) go to kernel worker threads, by default up to the ring's
        // size per VMM thread: a guest keeping 256 requests in flight must
        // not get 256 host threads.
        submitter.register_iowq_max_workers(&mut [MAX_WORKERS, MAX_WORKERS])?;
        submitter.register_eventfd(event.as_raw_fd())?;
        submitter.register_restrictions(&mut [
            Restriction::sqe_op(opcode::Readv::CODE),
            Restriction::sqe_op(opcode::Writev::CODE),
            Restriction::sqe_op(opcode::Fsync::CODE),
        ])?;
        submitter.register_enable_rings()?;
        Ok(UringDisk {
            ring,
            file,
            direct_align,
            event,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..u32::from(depth)).rev().collect(),
            unsubmitted: 0,
            cqes: Vec::with_capacity(usize::from(depth)),
        })
    }

    /// The eventfd written for every completion.
    pub fn event_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// How many more requests can be taken (the in-flight bound).
    pub fn room(&self) -> usize {
        self.free.len()
    }

    /// Requests the kernel has not completed yet.
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Queues `request` (chain `head`, status byte at `status`) if it suits
    /// the fast path; gives it back otherwise (a kind the ring does not
    /// serve, a write to the guarded first bytes, a buffer that crosses a
    /// memory region or is not aligned for O_DIRECT). Submission happens in
    /// [`Self::submit`].
    pub fn start(
        &mut self,
        mem: &GuestMem,
        head: u16,
        status: GuestAddress,
        request: Request,
    ) -> Result<(), Request> {
        let Some(&slot) = self.free.last() else {
            return Err(request);
        };
        let fd = types::Fd(self.file.as_raw_fd());
        let (entry, iovecs) = match request.kind {
            RequestKind::Flush => (
                opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
                Vec::new(),
            ),
            RequestKind::Read | RequestKind::Write => {
                // The backend checks writes at the start of the disk (a
                // probed raw image must not get a qcow2 magic).
                if request.kind == RequestKind::Write
                    && (request.sector << SECTOR_SHIFT) < kapsel_image::RAW_GUARDED_BYTES
                {
                    return Err(request);
                }
                // The parser checked sector + length against the capacity,
                // itself a file size: no overflow.
                let offset = request.sector << SECTOR_SHIFT;
                if self.direct_align.is_some_and(|a| !offset.is_multiple_of(a)) {
                    return Err(request);
                }
                let Some(iovecs) = self.iovecs(mem, &request) else {
                    return Err(request);
                };
                let Ok(count) = u32::try_from(iovecs.len()) else {
                    return Err(request);
                };
                let entry = if request.kind == RequestKind::Read {
                    opcode::Readv::new(fd, iovecs.as_ptr(), count)
                        .offset(offset)
                        .build()
                } else {
                    opcode::Writev::new(fd, iovecs.as_ptr(), count)
                        .offset(offset)
                        .build()
                };
                (entry, iovecs)
            }
            _ => return Err(request),
        };
        let entry: squeue::Entry = entry.user_data(u64::from(slot));
        if self.ring.submission().is_full() && self.submit().is_err() {
            return Err(request);
        }
        // SAFETY: the entry's buffers are guest memory (mapped until this
        // completion is reaped, see the module comment) described by
        // `iovecs`, whose heap array moves into the slot below and stays
        // there until the completion is reaped; the fd is `self.file`,
        // open as long as the ring.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            return Err(request);
        }
        self.free.pop();
        self.unsubmitted += 1;
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = Some(InFlight {
                head,
                status,
                request,
                _iovecs: IoVecs { _array: iovecs },
            });
        }
        Ok(())
    }

    /// Host addresses of the request's buffers, or None when a buffer is
    /// not one piece of host memory, or not aligned as O_DIRECT needs.
    fn iovecs(&self, mem: &GuestMem, request: &Request) -> Option<Vec<libc::iovec>> {
        let mut iovecs = Vec::with_capacity(request.data.len());
        for seg in &request.data {
            let len = usize::try_from(seg.len).ok()?;
            // Checked against the memory map again: fails for a buffer
            // that crosses from one region into another.
            let slice = mem.get_slice(seg.addr, len).ok()?;
            // No dirty-page bitmap on guest memory (GuestMem has `()`), so
            // the guard has nothing to record when the kernel writes.
            let base = slice.ptr_guard_mut().as_ptr();
            if self.direct_align.is_some_and(|a| {
                !(base as u64).is_multiple_of(a) || !u64::from(seg.len).is_multiple_of(a)
            }) {
                return None;
            }
            iovecs.push(libc::iovec {
                iov_base: base.cast(),
                iov_len: slice.len(),
            });
        }
        Some(iovecs)
    }

    /// Hands every queued operation to the kernel.
    pub fn submit(&mut self) -> io::Result<()> {
        while self.unsubmitted > 0 {
            match self.ring.submit() {
                // The kernel fails a bad entry through its completion; taking
                // none at all would loop here forever.
                Ok(0) => return Err(io::Error::other("io_uring took no submission")),
                Ok(n) => self.unsubmitted = self.unsubmitted.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Takes every completion the kernel posted: the requests and how they
    /// ended, in completion order.
    pub fn reap(&mut self, out: &mut Vec<(InFlight, Outcome)>) {
        // The counter only wakes the I/O thread; the ring says what is done.
        let _ = self.event.read();
        let mut done = std::mem::take(&mut self.cqes);
        done.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for (slot, result) in done.drain(..) {
            let Some(req) = usize::try_from(slot)
                .ok()
                .and_then(|i| self.slots.get_mut(i))
                .and_then(Option::take)
            else {
                continue;
            };
            self.free.push(slot as u32);
            let outcome = if result < 0 {
                match -result {
                    libc::EINTR | libc::EAGAIN => Outcome::Retry,
                    errno => Outcome::Failed(errno),
                }
            } else if req.request.kind == RequestKind::Flush
                || u64::try_from(result).ok() == Some(req.request.data_len)
            {
                Outcome::Done
            } else {
                Outcome::Retry
            };
            out.push((req, outcome));
        }
        self.cqes = done;
    }

    /// Hands every queued operation to the kernel, waits until at least
    /// one completes (nothing to wait for when none is in flight), and
    /// takes the completions as [`Self::reap`] does.
    pub fn wait(&mut self, out: &mut Vec<(InFlight, Outcome)>) -> io::Result<()> {
        self.submit()?;
        if self.in_flight() > 0 {
            loop {
                match self.ring.submit_and_wait(1) {
                    Ok(_) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.reap(out);
        Ok(())
    }

    /// Waits until the kernel is done with every request, and forgets
    /// them (a reset: their used-ring entries must not be written). Returns
    /// false if the ring failed, in which case requests may still be in
    /// flight.
    pub fn drain(&mut self) -> bool {
        let mut out = Vec::new();
        while self.in_flight() > 0 {
            if let Err(e) = self.submit() {
                tracing::error!("virtio-blk: cannot submit while draining: {e}");
                return false;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::error!("virtio-blk: cannot wait for in-flight requests: {e}");
                    return false;
                }
            }
            self.reap(&mut out);
            out.clear();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_refuses_operations_the_device_does_not_use() {
        let file = tempfile::tempfile().unwrap();
        let Ok(mut ring) = UringDisk::new(file, None, 8) else {
            eprintln!("SKIP: io_uring unavailable on this kernel");
            return;
        };
        // A no-op (or an open, a send...) is refused by the restrictions.
        let nop = opcode::Nop::new().build().user_data(7);
        // SAFETY: a no-op names no buffer and no file.
        unsafe { ring.ring.submission().push(&nop) }.unwrap();
        ring.ring.submit_and_wait(1).unwrap();
        let cqe = ring.ring.completion().next().unwrap();
        assert_eq!((cqe.user_data(), cqe.result()), (7, -libc::EACCES));
        // Registering anything more is refused too.
        let e = ring.ring.submitter().register_eventfd(ring.event_fd());
        assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::EACCES));
    }

    #[test]
    fn wait_returns_the_completion_of_a_read() {
        use crate::devices::virtio::testing::guest_memory;
        use std::os::unix::fs::FileExt;
        use vm_memory::Bytes;

        let file = tempfile::tempfile().unwrap();
        let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        file.write_all_at(&pattern, 0).unwrap();
        let Ok(mut ring) = UringDisk::new(file, None, 4) else {
            eprintln!("SKIP: io_uring unavailable on this kernel");
            return;
        };
        let mem = guest_memory();
        let mut out = Vec::new();
        // Nothing in flight: nothing to wait for.
        ring.wait(&mut out).unwrap();
        assert!(out.is_empty());
        let request = Request {
            kind: RequestKind::Read,
            sector: 1,
            data: vec![super::super::request::Segment {
                addr: GuestAddress(0x1000),
                len: 1024,
            }],
            data_len: 1024,
            ranges: Vec::new(),
        };
        ring.start(&mem, 3, GuestAddress(0x40), request).unwrap();
        while out.is_empty() {
            ring.wait(&mut out).unwrap();
        }
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].0.head, out[0].1), (3, Outcome::Done));
        let mut got = vec![0u8; 1024];
        mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        assert_eq!(got, pattern[512..1536]);
        assert_eq!(ring.in_flight(), 0);
    }
}
