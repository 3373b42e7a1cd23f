//! The refill ring: the shared memory through which user space gives area buffers back to
//! the kernel (or to the emulator standing in for it). This file owns that memory and all
//! the `unsafe` in the zcrx backend; everything else sees [`RefillRing::push`] and
//! [`RefillConsumer::consume`].
//!
//! Protocol (io_uring/zcrx.c, `io_zcrx_ring_refill`): a single-producer, single-consumer
//! ring of `io_uring_zcrx_rqe`. The producer (us) writes the entry at `tail & mask`, then
//! publishes `tail + 1` with a Release store; it sees free slots by reading `head` with
//! Acquire. The consumer (the kernel) reads `tail` with Acquire, takes the entries between
//! its cached head and that tail (at most `entries`), and publishes its new head with a
//! Release store. Head and tail are free-running u32 counters.

use super::sys::{io_uring_zcrx_rqe, rqe_for, NIOV_SIZE};
use std::io;
use std::mem::{align_of, size_of};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Bytes reserved before the entries: the kernel puts `struct io_uring {head; tail}` at the
/// start and the entries at `ALIGN(8, L1_CACHE_BYTES)`; a whole page leaves room for any
/// cache-line size, as liburing's example does.
const HEADER: usize = NIOV_SIZE;

/// Size of the user-provided region for `entries` refill entries: a multiple of the real
/// page size, as `io_create_region` requires (64 KiB on some arm64 hosts; a 4 KiB multiple
/// there is EINVAL).
pub fn region_size(entries: u32) -> usize {
    region_size_for(entries, crate::area::page_size())
}

/// [`region_size`] for a host whose pages are `page` bytes.
pub fn region_size_for(entries: u32, page: usize) -> usize {
    let entries = entries
        .clamp(1, super::sys::RQ_MAX_ENTRIES)
        .next_power_of_two() as usize;
    let page = page.max(1);
    (HEADER + entries * size_of::<io_uring_zcrx_rqe>()).div_ceil(page) * page
}

/// Memory for the refill ring, allocated by user space and registered as an
/// `IORING_MEM_REGION_TYPE_USER` region. Page aligned and zeroed (head = tail = 0).
pub struct RqRegion {
    map: memmap2::MmapMut,
}

impl RqRegion {
    pub fn new(entries: u32) -> io::Result<Arc<RqRegion>> {
        let map = memmap2::MmapOptions::new()
            .len(region_size(entries))
            .populate()
            .map_anon()?;
        Ok(Arc::new(RqRegion { map }))
    }

    pub fn addr(&self) -> u64 {
        self.map.as_ptr() as u64
    }

    pub fn size(&self) -> usize {
        self.map.len()
    }

    fn base(&self) -> *mut u8 {
        self.map.as_ptr() as *mut u8
    }
}

/// Where the kernel placed head, tail and entries in the region (`reg.offsets`), and how
/// many entries the ring has after rounding (`reg.rq_entries`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    pub head: u32,
    pub tail: u32,
    pub rqes: u32,
    pub entries: u32,
}

impl RingLayout {
    /// The layout io_uring/zcrx.c writes back: head and tail are the first two u32 of
    /// `struct io_uring`, entries start at the next cache line.
    pub fn kernel_default(entries: u32) -> RingLayout {
        RingLayout {
            head: 0,
            tail: 4,
            rqes: 64,
            entries: entries
                .clamp(1, super::sys::RQ_MAX_ENTRIES)
                .next_power_of_two(),
        }
    }

    /// Checks what the kernel wrote before we build pointers from it.
    fn check(&self, region: &RqRegion) -> io::Result<()> {
        let bad = |what: &str| {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "zcrx refill ring layout {self:?} in a {}-byte region: {what}",
                    region.size()
                ),
            ))
        };
        if self.entries == 0 || !self.entries.is_power_of_two() {
            return bad("entries is not a power of two");
        }
        let size = region.size() as u64;
        for (off, align) in [(self.head, 4), (self.tail, 4)] {
            if off % align != 0 || u64::from(off) + 4 > size {
                return bad("head/tail misaligned or outside the region");
            }
        }
        let end = u64::from(self.rqes) + u64::from(self.entries) * 16;
        if self.rqes as usize % align_of::<io_uring_zcrx_rqe>() != 0 || end > size {
            return bad("entries misaligned or outside the region");
        }
        let in_rqes = |o: u32| o + 4 > self.rqes && u64::from(o) < end;
        if self.head.abs_diff(self.tail) < 4 || in_rqes(self.head) || in_rqes(self.tail) {
            return bad("head, tail and entries overlap");
        }
        Ok(())
    }
}

/// The refill ring was full: the entry was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Pointers into a region for one side of the ring.
struct Shared {
    _region: Arc<RqRegion>,
    head: *const AtomicU32,
    tail: *const AtomicU32,
    rqes: *mut io_uring_zcrx_rqe,
    entries: u32,
}

impl Shared {
    fn new(region: Arc<RqRegion>, layout: RingLayout) -> io::Result<Shared> {
        layout.check(&region)?;
        let base = region.base();
        // SAFETY: `check` proved every offset (plus the object at it) lies inside the mapping
        // and is aligned for its type; the mapping lives as long as `region`, which we hold.
        let (head, tail, rqes) = unsafe {
            (
                base.add(layout.head as usize) as *const AtomicU32,
                base.add(layout.tail as usize) as *const AtomicU32,
                base.add(layout.rqes as usize) as *mut io_uring_zcrx_rqe,
            )
        };
        Ok(Shared {
            _region: region,
            head,
            tail,
            rqes,
            entries: layout.entries,
        })
    }

    fn head(&self) -> &AtomicU32 {
        // SAFETY: `head` points at an aligned u32 inside the region we keep alive; the other
        // side accesses it only atomically (the kernel with READ_ONCE/smp_store_release).
        unsafe { &*self.head }
    }

    fn tail(&self) -> &AtomicU32 {
        // SAFETY: as for `head`.
        unsafe { &*self.tail }
    }
}

/// The producer side: what the backend uses to return buffers.
pub struct RefillRing {
    sh: Shared,
    mask: u32,
    /// Our copy of the tail; only we write the shared one.
    tail: u32,
    area_token: u64,
}

// SAFETY: the raw pointers point into `sh.region`, owned through an Arc and freed only when
// the last side is dropped; head/tail are atomics and entries are handed over by the
// Release/Acquire pair on tail/head, so moving the producer to another thread is sound.
unsafe impl Send for RefillRing {}

impl RefillRing {
    /// `area_token` is `rq_area_token` as the kernel returned it at registration.
    pub fn new(region: Arc<RqRegion>, layout: RingLayout, area_token: u64) -> io::Result<Self> {
        let sh = Shared::new(region, layout)?;
        let tail = sh.tail().load(Ordering::Relaxed);
        Ok(RefillRing {
            mask: sh.entries - 1,
            sh,
            tail,
            area_token,
        })
    }

    pub fn entries(&self) -> u32 {
        self.sh.entries
    }

    pub fn area_token(&self) -> u64 {
        self.area_token
    }

    /// The kernel's head: how far it has read (moves only when it takes entries).
    pub fn kernel_head(&self) -> u32 {
        self.sh.head().load(Ordering::Acquire)
    }

    /// Entries written but not yet consumed by the kernel.
    pub fn queued(&self) -> u32 {
        self.tail
            .wrapping_sub(self.sh.head().load(Ordering::Acquire))
    }

    /// Returns the buffer at `area_off` (the masked offset from its completion, `len` bytes)
    /// to the kernel. `Err(Full)` when every slot still waits for the kernel: keep the buffer
    /// and try again later — it must never be dropped.
    pub fn push(&mut self, area_off: u64, len: u32) -> Result<(), Full> {
        if self.queued() >= self.sh.entries {
            return Err(Full);
        }
        let slot = (self.tail & self.mask) as usize;
        // SAFETY: slot < entries, so the entry lies inside the region (checked layout). The
        // kernel reads slots only between its head and the published tail; this slot is at
        // our unpublished tail and head is at least tail - entries + 1 (checked above with
        // Acquire, which also orders the kernel's earlier reads of this slot before our write).
        unsafe {
            self.sh
                .rqes
                .add(slot)
                .write(rqe_for(area_off, len, self.area_token))
        };
        self.tail = self.tail.wrapping_add(1);
        self.sh.tail().store(self.tail, Ordering::Release);
        Ok(())
    }
}

/// The consumer side, as the kernel runs it; used by the emulator.
pub struct RefillConsumer {
    sh: Shared,
    mask: u32,
    cached_head: u32,
}

// SAFETY: see `RefillRing`'s Send.
unsafe impl Send for RefillConsumer {}

impl RefillConsumer {
    pub fn new(region: Arc<RqRegion>, layout: RingLayout) -> io::Result<Self> {
        let sh = Shared::new(region, layout)?;
        let cached_head = sh.head().load(Ordering::Relaxed);
        Ok(RefillConsumer {
            mask: sh.entries - 1,
            sh,
            cached_head,
        })
    }

    /// Entries published by the producer and not yet taken.
    pub fn available(&self) -> u32 {
        self.sh
            .tail()
            .load(Ordering::Acquire)
            .wrapping_sub(self.cached_head)
            .min(self.sh.entries)
    }

    /// Takes up to `max` published entries exactly as `io_zcrx_ring_refill` does: reads the
    /// tail with Acquire, visits `min(tail - cached_head, entries, max)` slots, then
    /// publishes the new head with Release. Returns how many were taken.
    pub fn consume(&mut self, max: u32, mut f: impl FnMut(io_uring_zcrx_rqe)) -> u32 {
        let avail = self
            .sh
            .tail()
            .load(Ordering::Acquire)
            .wrapping_sub(self.cached_head)
            .min(self.sh.entries)
            .min(max);
        for _ in 0..avail {
            let slot = (self.cached_head & self.mask) as usize;
            // SAFETY: slot < entries (in the region); the producer wrote it before its Release
            // store of a tail we observed with Acquire, and will not rewrite it until our
            // Release store of a head past it.
            let rqe = unsafe { self.sh.rqes.add(slot).read() };
            self.cached_head = self.cached_head.wrapping_add(1);
            f(rqe);
        }
        if avail > 0 {
            self.sh.head().store(self.cached_head, Ordering::Release);
        }
        avail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rx::zcrx::sys::IORING_ZCRX_AREA_MASK;

    #[test]
    fn region_holds_header_and_entries() {
        assert_eq!(region_size(1), 8192);
        assert_eq!(region_size(256), 4096 + 4096);
        assert_eq!(region_size(257), 4096 + 512 * 16);
        assert_eq!(region_size(32768), 4096 + 32768 * 16);
        let l = RingLayout::kernel_default(5);
        assert_eq!(l.entries, 8);
    }

    #[test]
    fn region_is_a_multiple_of_the_real_page_size() {
        // 64 KiB-page arm64 hosts: a 4 KiB multiple is EINVAL in io_create_region.
        assert_eq!(region_size_for(1, 65536), 65536);
        assert_eq!(region_size_for(4096, 65536), 2 * 65536);
        assert_eq!(region_size_for(32768, 65536), 9 * 65536);
        assert_eq!(region_size_for(256, 4096), 8192);
        let page = crate::area::page_size();
        for entries in [1, 64, 4096, 32768] {
            assert_eq!(region_size(entries) % page, 0, "{entries} entries");
            assert_eq!(RqRegion::new(entries).unwrap().size() % page, 0);
        }
    }

    #[test]
    fn push_until_full_then_room_after_the_consumer_moves() {
        let region = RqRegion::new(4).unwrap();
        let layout = RingLayout::kernel_default(4);
        let mut p = RefillRing::new(Arc::clone(&region), layout, 2 << 48).unwrap();
        let mut c = RefillConsumer::new(region, layout).unwrap();
        for i in 0..4u64 {
            p.push((7 << 48) | (i * 4096 + 12), 100).unwrap();
        }
        assert_eq!(p.push(0, 1), Err(Full));
        let mut seen = Vec::new();
        assert_eq!(c.consume(3, |r| seen.push(r)), 3);
        assert_eq!(p.queued(), 1);
        for (i, r) in seen.iter().enumerate() {
            assert_eq!(
                r.off & IORING_ZCRX_AREA_MASK,
                2 << 48,
                "token replaces the area bits"
            );
            assert_eq!(r.off & !IORING_ZCRX_AREA_MASK, i as u64 * 4096 + 12);
            assert_eq!((r.len, r.__pad), (100, 0));
        }
        // Wrap around the mask many times.
        for i in 0..1000u64 {
            p.push(i * 4096, 1).unwrap();
            let mut got = None;
            c.consume(u32::MAX, |r| got = Some(r.off));
            if i == 0 {
                continue; // the first consume also drained the leftover entry
            }
            assert_eq!(got, Some((2 << 48) | (i * 4096)));
        }
    }

    #[test]
    fn a_bad_layout_is_refused() {
        let region = RqRegion::new(4).unwrap();
        let mut l = RingLayout::kernel_default(4);
        l.rqes = region.size() as u32;
        assert!(RefillRing::new(Arc::clone(&region), l, 0).is_err());
        let mut l = RingLayout::kernel_default(4);
        l.entries = 3;
        assert!(RefillRing::new(Arc::clone(&region), l, 0).is_err());
        let mut l = RingLayout::kernel_default(4);
        l.tail = 2;
        assert!(RefillRing::new(region, l, 0).is_err());
    }
}
