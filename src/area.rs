//! The receive area: one page-aligned mmap'd region that a receive backend lends out in
//! pieces, the [`Chunk`]s that name those pieces, and the way back for them.
//!
//! Ownership contract (DESIGN.md, "data flow"): a backend that fills part of the area (the
//! kernel through zcrx or a provided-buffer ring, or our own `read(2)`) turns it into a
//! [`Chunk`]. From then on nobody writes those bytes until the chunk is dropped. Dropping a
//! chunk queues its [`ReleaseToken`] on the area's return queue and, if the queue was empty,
//! wakes the backend through an eventfd; the backend drains the queue and hands the buffers
//! back to whoever refills them. The writer drops a chunk only after the frame holding its
//! last byte has been written to the segment file.
//!
//! This module owns the raw memory and is one of the few places with `unsafe`; everything
//! outside sees `&[u8]` views that live no longer than the chunk that proves ownership.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Identifies one stream (one connection, one input file) across the engine and writer.
pub type StreamId = u64;

/// What a backend needs to give a buffer back. Its meaning belongs to the backend that
/// minted it: a provided-buffer id, an area offset for the zcrx refill ring, a free-list slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReleaseToken {
    pub id: u64,
    pub len: u32,
}

/// One mmap'd, page-aligned region plus its return queue.
pub struct Area {
    map: memmap2::MmapMut,
    ptr: *mut u8,
    returns: Mutex<Returns>,
    wake: OwnedFd,
    lent: AtomicUsize,
    /// The most one lent piece can keep from reuse: a whole receive buffer (ring, recv,
    /// file) or page (zcrx), however few of its bytes the piece holds. Set by the backend.
    granule: AtomicUsize,
    /// The backend found no free buffer for a receive and is holding senders back.
    starving: AtomicBool,
    /// Packets the kernel dropped before they reached the area (live capture), counted by
    /// the backend; `has_drops` says the source counts them at all.
    drops: AtomicU64,
    has_drops: AtomicBool,
}

#[derive(Default)]
struct Returns {
    tokens: Vec<ReleaseToken>,
    aborts: Vec<StreamId>,
}

// SAFETY: the raw pointer is the base of `map`, which lives as long as the Area. Shared access
// to byte ranges is governed by the chunk contract above: a range is either lent out as a
// Chunk (read-only for everyone) or owned by the backend (written only by it or the kernel).
unsafe impl Send for Area {}
// SAFETY: see `Send`; the return queue is behind a Mutex and the counter is atomic.
unsafe impl Sync for Area {}

impl Area {
    /// Maps `len` bytes (rounded up to a whole page) of anonymous memory, optionally backed by
    /// 2 MiB huge pages, and pre-faults it so the first receive does not stall on page faults.
    pub fn new(len: usize, hugepages: bool) -> io::Result<Arc<Area>> {
        let page = if hugepages { 2 << 20 } else { page_size() };
        let len = len.max(page).div_ceil(page) * page;
        let mut opts = memmap2::MmapOptions::new();
        opts.len(len).populate();
        if hugepages {
            opts.huge(Some(21));
        }
        let mut map = opts.map_anon().map_err(|e| {
            if hugepages {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot map a {len}-byte area on 2 MiB huge pages ({e}); reserve them with \
                         `sysctl vm.nr_hugepages=N` or drop --hugepages"
                    ),
                )
            } else {
                e
            }
        })?;
        let ptr = map.as_mut_ptr();
        Self::with_map(map, ptr)
    }

    /// Maps the `len`-byte receive ring of a kernel socket (an AF_PACKET TPACKET_V3 block
    /// ring) as the area: the kernel writes the blocks, the backend lends what it retired.
    /// The mapping keeps the socket alive until the area is dropped (it holds a reference to
    /// the file), so the backend may close its descriptor first.
    pub fn from_ring(fd: RawFd, len: usize) -> io::Result<Arc<Area>> {
        // SAFETY: a shared mapping of the socket's ring; the kernel's half of the ring protocol
        // (it writes a block only while the block's status word says it owns it) is what makes
        // it sound, and the backend that owns the socket holds to it.
        let mut map = unsafe {
            memmap2::MmapOptions::new()
                .len(len)
                .populate()
                .map_mut(fd)?
        };
        let ptr = map.as_mut_ptr();
        Self::with_map(map, ptr)
    }

    fn with_map(map: memmap2::MmapMut, ptr: *mut u8) -> io::Result<Arc<Area>> {
        // SAFETY: plain eventfd(2) call; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Arc::new(Area {
            map,
            ptr,
            returns: Mutex::new(Returns::default()),
            wake,
            lent: AtomicUsize::new(0),
            granule: AtomicUsize::new(page_size()),
            starving: AtomicBool::new(false),
            drops: AtomicU64::new(0),
            has_drops: AtomicBool::new(false),
        }))
    }

    /// The backend counts `n` more packets the kernel dropped before they reached the area
    /// (0 marks the area as one whose source drops, so its segments record 0).
    pub fn note_drops(&self, n: u64) {
        self.has_drops.store(true, Ordering::Relaxed);
        self.drops.fetch_add(n, Ordering::Relaxed);
    }

    /// Kernel drops so far, for sources that count them (live capture), else `None`.
    pub fn drops(&self) -> Option<u64> {
        self.has_drops
            .load(Ordering::Relaxed)
            .then(|| self.drops.load(Ordering::Relaxed))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Base address, for registering the area with the kernel.
    pub fn base(&self) -> *mut u8 {
        self.ptr
    }

    /// Bytes currently lent out as chunks (for stats and memory-bound tests).
    pub fn lent_bytes(&self) -> usize {
        self.lent.load(Ordering::Relaxed)
    }

    /// Bytes of area one lent piece can pin (see the field).
    pub fn granule(&self) -> usize {
        self.granule.load(Ordering::Relaxed)
    }

    /// The backend states how its buffers are cut (buffer size, or the zcrx page size).
    pub fn set_granule(&self, bytes: usize) {
        self.granule.store(bytes.max(1), Ordering::Relaxed);
    }

    /// The backend ran out of free buffers (`true`) or has some again (`false`). Wakes
    /// nobody: the writer reads it on its next chunk or tick.
    pub fn set_starving(&self, starving: bool) {
        self.starving.store(starving, Ordering::Relaxed);
    }

    /// The area is nearly used up: most bytes are lent, or the backend has no free buffer
    /// (pieces scattered over many buffers pin them although few bytes are lent). The writer
    /// then persists and copies out what it holds; the backends stop admitting connections.
    pub fn under_pressure(&self) -> bool {
        self.starving.load(Ordering::Relaxed) || self.lent_bytes() > self.len() / 4 * 3
    }

    /// The eventfd that becomes readable when tokens or aborts are queued. Backends poll it
    /// (io_uring poll, epoll) and then call [`Area::take_returns`].
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Clears the eventfd counter; call before draining so no wake-up is lost.
    pub fn clear_wake(&self) {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a local u64 from our own non-blocking eventfd.
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    /// Mutable view of a range the backend owns (not lent out), for `read(2)`-style filling.
    ///
    /// # Safety
    /// The range must be inside the area, not lent out as a chunk, not registered for the
    /// kernel to write into, and not aliased by another live slice.
    // A shared area hands out exclusive views by contract, not by borrow: that is the point.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn fill_slice(&self, off: usize, len: usize) -> &mut [u8] {
        assert!(off.checked_add(len).is_some_and(|end| end <= self.len()));
        // SAFETY: bounds asserted above; exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), len) }
    }

    /// Lends `len` bytes at `off` to the writer as a chunk of `stream`.
    ///
    /// # Safety
    /// The range must hold data the kernel (or backend) has finished writing, and nothing may
    /// write it again until the chunk's token comes back through [`Area::take_returns`].
    pub unsafe fn lend(
        self: &Arc<Self>,
        stream: StreamId,
        off: usize,
        len: usize,
        token: ReleaseToken,
    ) -> Chunk {
        assert!(off.checked_add(len).is_some_and(|end| end <= self.len()));
        self.lent.fetch_add(len, Ordering::Relaxed);
        Chunk {
            area: Arc::clone(self),
            stream,
            off,
            len,
            token,
        }
    }

    /// Moves every returned token into `out` and every aborted stream into `aborts`.
    pub fn take_returns(&self, out: &mut Vec<ReleaseToken>, aborts: &mut Vec<StreamId>) {
        let mut q = self.returns.lock().unwrap_or_else(|p| p.into_inner());
        out.append(&mut q.tokens);
        aborts.append(&mut q.aborts);
    }

    /// Asks the backend to close `stream` (the writer found it malformed).
    pub fn abort(&self, stream: StreamId) {
        let mut q = self.returns.lock().unwrap_or_else(|p| p.into_inner());
        q.aborts.push(stream);
        drop(q);
        self.wake();
    }

    fn give_back(&self, token: ReleaseToken, len: usize) {
        self.lent.fetch_sub(len, Ordering::Relaxed);
        let mut q = self.returns.lock().unwrap_or_else(|p| p.into_inner());
        let was_empty = q.tokens.is_empty() && q.aborts.is_empty();
        q.tokens.push(token);
        drop(q);
        if was_empty {
            self.wake();
        }
    }

    fn wake(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a local u64 to our own eventfd; EAGAIN (counter full)
        // still leaves it readable, which is all a wake-up needs.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

impl std::fmt::Debug for Area {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Area")
            .field("len", &self.len())
            .field("lent", &self.lent_bytes())
            .field("granule", &self.granule())
            .finish()
    }
}

/// A piece of the area holding received stream bytes. Dropping it releases the buffer.
pub struct Chunk {
    area: Arc<Area>,
    stream: StreamId,
    off: usize,
    len: usize,
    token: ReleaseToken,
}

impl Chunk {
    pub fn stream(&self) -> StreamId {
        self.stream
    }

    pub fn area(&self) -> &Arc<Area> {
        &self.area
    }

    /// Offset of the bytes inside the area.
    pub fn offset(&self) -> usize {
        self.off
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `lend` checked the bounds, and the lending contract guarantees nobody writes
        // this range while the chunk (which this borrow cannot outlive) exists.
        unsafe { std::slice::from_raw_parts(self.area.ptr.add(self.off), self.len) }
    }

    /// Asks the CPU to bring the chunk's bytes into its cache (see [`prefetch`]).
    pub fn prefetch(&self) {
        prefetch(self.bytes());
    }
}

/// Asks the CPU to bring `bytes` into its cache, every line at once. The framer reads one
/// record header every few cache lines, each position known only from the header before it:
/// without this, every header is a cache miss waited for in turn (the bytes arrived long
/// before, from the kernel's copy on another core). The compressor reads all of them next, so
/// no line is fetched for nothing. A hint: no effect on what the bytes are.
pub fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        for i in (0..bytes.len()).step_by(64) {
            // SAFETY: a prefetch reads nothing and cannot fault; the address is inside `bytes`
            // (SSE, which provides it, is part of x86_64).
            #[allow(unused_unsafe)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().wrapping_add(i).cast())
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.area.give_back(self.token, self.len);
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk")
            .field("stream", &self.stream)
            .field("off", &self.off)
            .field("len", &self.len)
            .field("token", &self.token)
            .finish()
    }
}

pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_a_chunk_queues_its_token_and_wakes() {
        let area = Area::new(8192, false).unwrap();
        assert_eq!(area.len() % page_size(), 0);
        // SAFETY: test owns the whole area; nothing else touches it.
        unsafe { area.fill_slice(100, 4).copy_from_slice(b"abcd") };
        // SAFETY: the range was just written and is not lent anywhere else.
        let c = unsafe { area.lend(7, 100, 4, ReleaseToken { id: 3, len: 4 }) };
        assert_eq!(c.bytes(), b"abcd");
        assert_eq!(area.lent_bytes(), 4);
        drop(c);
        assert_eq!(area.lent_bytes(), 0);
        let mut v = 0u64;
        // SAFETY: reading our own eventfd into a local.
        let n = unsafe { libc::read(area.wake_fd(), (&mut v as *mut u64).cast(), 8) };
        assert_eq!(n, 8, "a release must make the wake fd readable");
        let (mut t, mut a) = (Vec::new(), Vec::new());
        area.take_returns(&mut t, &mut a);
        assert_eq!(t, vec![ReleaseToken { id: 3, len: 4 }]);
        assert!(a.is_empty());
    }

    #[test]
    #[should_panic]
    fn lending_outside_the_area_panics() {
        let area = Area::new(4096, false).unwrap();
        // SAFETY: the call must panic on bounds before creating any view.
        let _ = unsafe { area.lend(0, 4000, 200, ReleaseToken { id: 0, len: 0 }) };
    }
}
