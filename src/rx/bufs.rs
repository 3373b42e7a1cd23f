//! Who holds each receive buffer: the area is cut into `count` buffers of `size` bytes, and a
//! buffer is filled front to back in *pieces* (one recv each), each piece lent to the writer
//! as a chunk whose token names the buffer. A buffer is free again only when whoever fills
//! it is done with it (*retired*: the kernel used it up, or our recv loop moved on) and every
//! piece has come back. Both the `ring` and `recv` backends keep their books here, so a
//! short recv does not pin a whole buffer's worth of memory per few bytes received.
//!
//! Pure bookkeeping: no memory access, no syscalls.

use crate::area::ReleaseToken;

pub struct Bufs {
    size: usize,
    /// Bytes already handed out of each buffer (the next piece starts there).
    used: Vec<u32>,
    /// Pieces of each buffer lent and not yet returned.
    refs: Vec<u32>,
    retired: Vec<bool>,
}

impl Bufs {
    pub fn new(count: usize, size: usize) -> Bufs {
        assert!(size > 0 && size <= u32::MAX as usize);
        Bufs {
            size,
            used: vec![0; count],
            refs: vec![0; count],
            retired: vec![false; count],
        }
    }

    pub fn count(&self) -> usize {
        self.used.len()
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Area offset of buffer `bid`.
    pub fn offset(&self, bid: usize) -> usize {
        bid * self.size
    }

    /// Bytes of `bid` not yet handed out.
    pub fn room(&self, bid: usize) -> usize {
        self.size - self.used[bid] as usize
    }

    /// Records that the next `len` bytes of `bid` were filled and returns their area offset
    /// and the token of the chunk that lends them.
    pub fn piece(&mut self, bid: usize, len: usize) -> (usize, ReleaseToken) {
        let start = self.used[bid] as usize;
        assert!(
            len <= self.size - start,
            "a piece overruns buffer {bid}: {start}+{len} > {}",
            self.size
        );
        self.used[bid] += len as u32;
        self.refs[bid] += 1;
        (
            self.offset(bid) + start,
            ReleaseToken {
                id: bid as u64,
                len: len as u32,
            },
        )
    }

    /// The filler is done with `bid`. True when it is free now (no piece outstanding).
    pub fn retire(&mut self, bid: usize) -> bool {
        debug_assert!(!self.retired[bid], "buffer {bid} retired twice");
        self.retired[bid] = true;
        self.try_free(bid)
    }

    /// A piece came back. Returns the buffer id when that made the buffer free.
    pub fn release(&mut self, t: ReleaseToken) -> Option<usize> {
        let bid = t.id as usize;
        assert!(
            self.refs[bid] > 0,
            "token for buffer {bid} with no piece out"
        );
        self.refs[bid] -= 1;
        self.try_free(bid).then_some(bid)
    }

    fn try_free(&mut self, bid: usize) -> bool {
        if self.retired[bid] && self.refs[bid] == 0 {
            self.used[bid] = 0;
            self.retired[bid] = false;
            true
        } else {
            false
        }
    }

    /// Buffers with a piece still lent (for tests and shutdown checks).
    pub fn lent(&self) -> usize {
        self.refs.iter().filter(|&&r| r > 0).count()
    }
}

/// Buffer count for an area of `area` bytes cut in `size`-byte buffers: the largest power of
/// two that fits, at most 32768 (the kernel's limit for a provided-buffer ring).
pub fn buffer_count(area: u64, size: u64) -> usize {
    let n = (area / size.max(1)).clamp(1, 32768);
    1usize << (63 - n.leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_free_only_after_retirement_and_every_piece() {
        let mut b = Bufs::new(4, 100);
        let (o1, t1) = b.piece(2, 30);
        let (o2, t2) = b.piece(2, 50);
        assert_eq!((o1, o2), (200, 230));
        assert_eq!(b.room(2), 20);
        assert_eq!(b.release(t1), None);
        assert!(!b.retire(2), "a piece is still lent");
        assert_eq!(b.release(t2), Some(2));
        assert_eq!(b.room(2), 100, "a freed buffer starts empty");
        let (_, t3) = b.piece(2, 10);
        assert_eq!(b.release(t3), None, "not retired yet");
        assert!(b.retire(2));
        assert_eq!(b.lent(), 0);
    }

    #[test]
    #[should_panic]
    fn a_piece_cannot_overrun_its_buffer() {
        let mut b = Bufs::new(1, 10);
        b.piece(0, 8);
        b.piece(0, 3);
    }

    #[test]
    fn buffer_counts_are_powers_of_two_within_the_kernel_limit() {
        assert_eq!(buffer_count(64 << 20, 64 << 10), 1024);
        assert_eq!(buffer_count(1 << 20, 16 << 10), 64);
        assert_eq!(buffer_count(100 << 10, 16 << 10), 4);
        assert_eq!(buffer_count(1 << 40, 4096), 32768);
        assert_eq!(buffer_count(10, 4096), 1);
    }
}
