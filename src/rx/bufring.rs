//! The provided-buffer ring (`IORING_REGISTER_PBUF_RING`) shared with the kernel: an array
//! of `io_uring_buf {addr, len, bid, resv}` entries whose first entry's `resv` field is the
//! tail we publish. The kernel takes buffers at its private head; we add them at the tail.
//!
//! This module owns that shared memory and is the only place that writes it. The buffers
//! themselves are slices of the [`crate::area::Area`]; which buffer is where (in the ring,
//! lent as chunks, partly filled) is tracked by [`super::bufs::Bufs`], not here.
//!
//! With `IOU_PBUF_RING_INC` (Linux 6.12+) the kernel consumes a buffer incrementally: it
//! advances the entry's `addr` and shrinks its `len` in place, and retires the buffer (moves
//! its head) only when the buffer is used up. Each CQE then reports a piece of a buffer and
//! `IORING_CQE_F_BUF_MORE` says the kernel will write more of it.

use io_uring::types::BufRingEntry;
use io_uring::IoUring;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

/// `IOU_PBUF_RING_INC` from `include/uapi/linux/io_uring.h` (the crate's `sys` is private).
pub const IOU_PBUF_RING_INC: u16 = 2;

/// One registered buffer ring of `entries` (a power of two, at most 32768) entries.
pub struct BufRing {
    map: memmap2::MmapMut,
    entries: u16,
    bgid: u16,
    /// Our copy of the tail: entries added, published with [`BufRing::publish`].
    tail: u16,
    incremental: bool,
}

impl BufRing {
    /// Maps the ring memory and registers it with `ring` as buffer group `bgid`, asking for
    /// incremental consumption first and falling back to whole-buffer mode where the kernel
    /// refuses it (EINVAL before 6.12).
    pub fn register(ring: &IoUring, entries: u16, bgid: u16) -> io::Result<BufRing> {
        assert!(entries.is_power_of_two() && entries <= 32768);
        let len = entries as usize * std::mem::size_of::<BufRingEntry>();
        let map = memmap2::MmapOptions::new()
            .len(len.max(crate::area::page_size()))
            .map_anon()?;
        let mut r = BufRing {
            map,
            entries,
            bgid,
            tail: 0,
            incremental: true,
        };
        let addr = r.map.as_mut_ptr() as u64;
        // SAFETY: `map` is page aligned (mmap), at least `entries` entries long, zeroed (so the
        // tail starts at 0), and lives in `self`, which unregisters it before unmapping (Drop).
        let first = unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(addr, entries, bgid, IOU_PBUF_RING_INC)
        };
        if let Err(e) = first {
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
            r.incremental = false;
            // SAFETY: as above.
            unsafe {
                ring.submitter()
                    .register_buf_ring_with_flags(addr, entries, bgid, 0)?
            };
        }
        Ok(r)
    }

    pub fn incremental(&self) -> bool {
        self.incremental
    }

    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    fn base(&self) -> *mut BufRingEntry {
        self.map.as_ptr() as *mut BufRingEntry
    }

    /// Writes buffer `bid` (`len` bytes at `addr`) into the next free slot. It is invisible to
    /// the kernel until [`BufRing::publish`]. The caller guarantees that no more than
    /// `entries` buffers are ever in the ring at once (each buffer id is added once and only
    /// again after the kernel handed it out and its chunks came back).
    pub fn push(&mut self, bid: u16, addr: *const u8, len: u32) {
        let slot = (self.tail & (self.entries - 1)) as usize;
        // SAFETY: `slot < entries`, so the entry is inside the mapping. The kernel reads only
        // the slots between its head and the published tail; this one is past the published
        // tail (the ring never holds more than `entries` buffers), so nobody reads it now.
        // Writing the fields one by one leaves the first entry's `resv` (the tail) alone.
        unsafe {
            let e = &mut *self.base().add(slot);
            e.set_addr(addr as u64);
            e.set_len(len);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every pushed entry visible to the kernel (one store-release of the tail).
    pub fn publish(&mut self) {
        // SAFETY: the tail is the u16 `resv` field of entry 0, inside the mapping and 2-byte
        // aligned; the kernel reads it with an acquire load, and this release store orders the
        // entry writes above before it, as io_uring_buf_ring_advance() does in liburing.
        let tail = unsafe { &*(BufRingEntry::tail(self.base()) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }
}

// The ring memory is unmapped when `map` drops; the engine drops the IoUring (which
// unregisters every buffer group and stops all requests) before the BufRing, see ring.rs.

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_layout_matches_the_kernel_io_uring_buf() {
        // struct io_uring_buf { __u64 addr; __u32 len; __u16 bid; __u16 resv; }
        assert_eq!(std::mem::size_of::<BufRingEntry>(), 16);
        assert_eq!(std::mem::align_of::<BufRingEntry>(), 8);
        let mut e = [0u64; 2];
        let p = e.as_mut_ptr() as *mut BufRingEntry;
        // SAFETY: `e` is 16 bytes, 8-aligned, and lives for the whole block.
        unsafe {
            (*p).set_addr(0x1122_3344_5566_7788);
            (*p).set_len(0xaabb_ccdd);
            (*p).set_bid(0x0102);
            let tail = BufRingEntry::tail(p) as usize - p as usize;
            assert_eq!(tail, 14, "the tail is the first entry's resv at offset 14");
        }
        let bytes: Vec<u8> = e.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(&bytes[0..8], &0x1122_3344_5566_7788u64.to_ne_bytes());
        assert_eq!(&bytes[8..12], &0xaabb_ccddu32.to_ne_bytes());
        assert_eq!(&bytes[12..14], &0x0102u16.to_ne_bytes());
    }

    #[test]
    fn push_fills_slots_in_order_and_publish_sets_the_tail() {
        let Ok(ring) = IoUring::new(8) else {
            eprintln!("SKIP push_fills_slots_in_order: io_uring unavailable here");
            return;
        };
        let mut r = BufRing::register(&ring, 4, 7).expect("register a 4-entry buffer ring");
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut v = release.split(|c: char| !c.is_ascii_digit());
        let (maj, min): (u32, u32) = (
            v.next().and_then(|x| x.parse().ok()).unwrap_or(0),
            v.next().and_then(|x| x.parse().ok()).unwrap_or(0),
        );
        if (maj, min) >= (6, 12) {
            assert!(r.incremental(), "IOU_PBUF_RING_INC exists since 6.12");
        }
        for i in 0..4u16 {
            r.push(
                i + 10,
                (0x1000 * (i as usize + 1)) as *const u8,
                100 + i as u32,
            );
        }
        r.publish();
        // SAFETY: reading back our own mapping in a test; the kernel does not write entries
        // before a request consumes them, and none is submitted here.
        unsafe {
            for i in 0..4usize {
                let e = &*r.base().add(i);
                assert_eq!(e.bid(), i as u16 + 10);
                assert_eq!(e.addr(), 0x1000 * (i as u64 + 1));
                assert_eq!(e.len(), 100 + i as u32);
            }
            assert_eq!(*BufRingEntry::tail(r.base()), 4);
        }
    }
}
