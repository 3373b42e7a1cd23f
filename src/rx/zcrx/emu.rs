//! An emulation of the kernel's half of zcrx, for machines without a capable NIC (all of
//! ours). It implements [`ZcrxKernel`] so the *same* backend code runs against it, and it
//! keeps the kernel's books the way io_uring/zcrx.c does:
//!
//! - the area is cut into 4 KiB niovs with a freelist and a per-page user reference count;
//! - bytes come from real sockets (recv with MSG_DONTWAIT), are written into free pages, and
//!   each piece is posted as a completion `{res: len, flags: F_MORE, off: page_off | area_id
//!   << 48}` taking one user reference — optionally two pieces per page, as page-pool
//!   fragments share a niov on real NICs;
//! - a final completion ends a request: `0` at EOF, `-ENOSPC` when the completion queue has
//!   no room (the kernel's CQ-overflow case), `-ENOMEM` when the copy path finds no free page
//!   (with [`OnEmpty::Enomem`]; [`OnEmpty::Backpressure`] instead stops reading, as a NIC
//!   whose page pool is empty does), `-ECANCELED` on cancel, `-errno` on a socket error;
//! - the refill ring is consumed like `io_zcrx_ring_refill`: entries between the cached head
//!   and the user's tail (Acquire), masked, at most a page-pool refill batch at a time, head
//!   published with Release. Where the kernel silently skips a bad entry — wrong area token,
//!   offset outside the area, non-zero `__pad`, page without a user reference — the
//!   emulator also records a protocol error, and tests fail on any.
//!
//! On top of the kernel's checks it poisons every page whose last user reference comes back
//! (fills it with 0xDB), verifies the poison is intact when the page is handed out again (a
//! write after release), and checks no page is handed out while a user reference is held.
//! [`Emulator::shutdown`] reports leaked pages.

use super::backend::ZcrxKernel;
use super::rings::{RefillConsumer, RefillRing, RingLayout, RqRegion};
use super::sys::{
    io_uring_zcrx_rqe, ZcrxCompletion, IORING_CQE_F_MORE, IORING_ZCRX_AREA_MASK,
    IORING_ZCRX_AREA_SHIFT, NIOV_SIZE, RQ_MAX_ENTRIES,
};
use crate::area::Area;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

pub const POISON: u8 = 0xDB;

/// What the emulated kernel does when a socket has data and no area page is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnEmpty {
    /// Leave the data in the socket until pages come back (a NIC with an empty page pool
    /// drops, and TCP flow control slows the sender).
    Backpressure,
    /// End the request with `-ENOMEM`, as the kernel's copy fallback does.
    Enomem,
}

#[derive(Debug, Clone)]
pub struct EmuConfig {
    /// Refill ring entries asked for (rounded up to a power of two, as the kernel does).
    pub rq_entries: u32,
    /// Completions the CQ holds before a request ends with `-ENOSPC`.
    pub cq_entries: usize,
    /// Pages one socket may fill per wait (the kernel's per-call skb limit plays this role).
    pub pages_per_step: usize,
    /// Refill entries consumed per refill (the page pool's `PP_ALLOC_CACHE_REFILL` is 64).
    pub refill_batch: u32,
    /// Post most pages as two completions at different offsets of the same page.
    pub split_pages: bool,
    pub on_empty: OnEmpty,
    /// Area id the completions carry. Kernels 6.15–6.18 always use 0; a non-zero id here
    /// proves the backend masks it off and puts the registration token back.
    pub area_id: u16,
}

impl Default for EmuConfig {
    fn default() -> Self {
        EmuConfig {
            rq_entries: 4096,
            cq_entries: 8192,
            pages_per_step: 64,
            refill_batch: 64,
            split_pages: true,
            on_empty: OnEmpty::Backpressure,
            area_id: 1,
        }
    }
}

/// The emulator's books at shutdown.
#[derive(Debug, Default, Clone)]
pub struct EmuReport {
    pub pages: usize,
    pub completions: u64,
    pub bytes: u64,
    pub eof: u64,
    pub enospc: u64,
    pub enomem: u64,
    pub cancelled: u64,
    pub refill_consumed: u64,
    /// Pages whose last user reference came back (poisoned and freed).
    pub pages_recycled: u64,
    /// Refill entries the kernel would have skipped, and other protocol breaches, in words.
    pub protocol_errors: Vec<String>,
    pub protocol_error_count: u64,
    /// A page was about to be handed out while a user reference was held, or its poison
    /// was overwritten after release.
    pub reuse_violations: u64,
    /// Pages still referenced by user space (or lost) at shutdown.
    pub leaked_pages: Vec<u32>,
    /// Requests still armed at shutdown.
    pub armed_at_shutdown: usize,
}

impl EmuReport {
    /// Whether the backend kept the protocol: no errors, no reuse, no leaks.
    pub fn clean(&self) -> bool {
        self.protocol_error_count == 0 && self.reuse_violations == 0 && self.leaked_pages.is_empty()
    }
}

struct Req {
    fd: RawFd,
    user_data: u64,
}

/// Page books: the kernel's freelist and user references plus our poison marks.
struct Pages {
    area: Arc<Area>,
    area_token: u64,
    free: Vec<u32>,
    on_free: Vec<bool>,
    urefs: Vec<u32>,
    poisoned: Vec<bool>,
    report: EmuReport,
}

impl Pages {
    fn error(&mut self, msg: String) {
        self.report.protocol_error_count += 1;
        if self.report.protocol_errors.len() < 100 {
            self.report.protocol_errors.push(msg);
        }
    }

    fn alloc(&mut self) -> Option<u32> {
        let p = self.free.pop()?;
        self.on_free[p as usize] = false;
        if self.urefs[p as usize] != 0 {
            self.report.reuse_violations += 1;
            self.error(format!(
                "page {p} handed out while user space holds a reference"
            ));
        }
        if self.poisoned[p as usize] {
            // SAFETY: page `p` was just taken off the freelist: no user reference, no chunk
            // (in a correct backend), and the emulator is the only writer.
            let page = unsafe { self.area.fill_slice(p as usize * NIOV_SIZE, NIOV_SIZE) };
            let word = u64::from_ne_bytes([POISON; 8]);
            let intact = page
                .chunks_exact(8)
                .all(|w| u64::from_ne_bytes(w.try_into().unwrap()) == word);
            if !intact {
                self.report.reuse_violations += 1;
                self.error(format!("page {p} was written after its release"));
            }
            self.poisoned[p as usize] = false;
        }
        Some(p)
    }

    /// Puts back a page that was taken but not filled.
    fn unalloc(&mut self, p: u32) {
        self.on_free[p as usize] = true;
        self.free.push(p);
    }

    /// One refill entry, checked as io_zcrx_ring_refill checks it.
    fn give_back(&mut self, rqe: io_uring_zcrx_rqe) {
        if rqe.__pad != 0 {
            return self.error(format!(
                "refill entry {:#x} has __pad {}",
                rqe.off, rqe.__pad
            ));
        }
        if rqe.off & IORING_ZCRX_AREA_MASK != self.area_token {
            return self.error(format!(
                "refill entry {:#x} carries area token {:#x}, registration gave {:#x}",
                rqe.off,
                rqe.off & IORING_ZCRX_AREA_MASK,
                self.area_token
            ));
        }
        let off = rqe.off & !IORING_ZCRX_AREA_MASK;
        let p = (off / NIOV_SIZE as u64) as usize;
        if p >= self.urefs.len() {
            return self.error(format!(
                "refill entry offset {off:#x} is outside the {}-byte area",
                self.area.len()
            ));
        }
        if self.urefs[p] == 0 {
            return self.error(format!(
                "refill entry for page {p} (offset {off:#x}) without a user reference: returned twice?"
            ));
        }
        self.urefs[p] -= 1;
        if self.urefs[p] == 0 {
            // SAFETY: the last user reference on page `p` just came back, so (in a correct
            // backend) no chunk points into it; the poison is what exposes one that does.
            unsafe { self.area.fill_slice(p * NIOV_SIZE, NIOV_SIZE) }.fill(POISON);
            self.poisoned[p] = true;
            self.on_free[p] = true;
            self.free.push(p as u32);
            self.report.pages_recycled += 1;
        }
    }
}

/// The emulated kernel side of one zcrx interface queue.
pub struct Emulator {
    cfg: EmuConfig,
    ring: RefillRing,
    #[cfg_attr(not(test), allow(dead_code))]
    region: Arc<RqRegion>,
    consumer: RefillConsumer,
    pages: Pages,
    reqs: Vec<Req>,
    watched: Vec<RawFd>,
    cq: VecDeque<ZcrxCompletion>,
    rng: u64,
}

impl Emulator {
    /// Registers `area` with the emulated queue, as IORING_REGISTER_ZCRX_IFQ does: checks
    /// and rounds `rq_entries`, lays out the refill ring, and hands back the area token.
    pub fn new(area: &Arc<Area>, cfg: EmuConfig) -> io::Result<Emulator> {
        if cfg.rq_entries == 0 || cfg.rq_entries > RQ_MAX_ENTRIES {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        if area.len() % NIOV_SIZE != 0 || area.base() as usize % NIOV_SIZE != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let layout = RingLayout::kernel_default(cfg.rq_entries);
        let region = RqRegion::new(layout.entries)?;
        let area_token = u64::from(cfg.area_id) << IORING_ZCRX_AREA_SHIFT;
        let ring = RefillRing::new(Arc::clone(&region), layout, area_token)?;
        let consumer = RefillConsumer::new(Arc::clone(&region), layout)?;
        let n = area.len() / NIOV_SIZE;
        Ok(Emulator {
            ring,
            consumer,
            region,
            pages: Pages {
                area: Arc::clone(area),
                area_token,
                free: (0..n as u32).rev().collect(),
                on_free: vec![true; n],
                urefs: vec![0; n],
                poisoned: vec![false; n],
                report: EmuReport {
                    pages: n,
                    ..EmuReport::default()
                },
            },
            reqs: Vec::new(),
            watched: Vec::new(),
            cq: VecDeque::new(),
            rng: 0x9E37_79B9_7F4A_7C15,
            cfg,
        })
    }

    fn consume_refill(&mut self, max: u32) {
        let pages = &mut self.pages;
        let n = self.consumer.consume(max, |rqe| pages.give_back(rqe));
        pages.report.refill_consumed += u64::from(n);
    }

    fn finish(&mut self, user_data: u64, res: i32) {
        self.reqs.retain(|r| r.user_data != user_data);
        match res {
            0 => self.pages.report.eof += 1,
            r if r == -libc::ENOSPC => self.pages.report.enospc += 1,
            r if r == -libc::ENOMEM => self.pages.report.enomem += 1,
            r if r == -libc::ECANCELED => self.pages.report.cancelled += 1,
            _ => {}
        }
        // Final completions go through the overflow list: always delivered.
        self.cq.push_back(ZcrxCompletion {
            user_data,
            res,
            flags: 0,
            off: 0,
        });
    }

    fn post(&mut self, user_data: u64, page: u32, off: usize, len: usize) {
        self.pages.urefs[page as usize] += 1;
        self.pages.report.completions += 1;
        self.pages.report.bytes += len as u64;
        self.cq.push_back(ZcrxCompletion {
            user_data,
            res: len as i32,
            flags: IORING_CQE_F_MORE,
            off: (page as u64 * NIOV_SIZE as u64 + off as u64) | self.pages.area_token,
        });
    }

    fn next_rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Receives what `user_data`'s socket has, page by page, like io_zcrx_recv_skb.
    fn receive(&mut self, user_data: u64) {
        let Some(fd) = self
            .reqs
            .iter()
            .find(|r| r.user_data == user_data)
            .map(|r| r.fd)
        else {
            return;
        };
        let mut copied = false;
        for _ in 0..self.cfg.pages_per_step {
            if self.cq.len() + 2 > self.cfg.cq_entries {
                return self.finish(user_data, -libc::ENOSPC);
            }
            let page = match self.pages.alloc() {
                Some(p) => p,
                None => {
                    self.consume_refill(self.cfg.refill_batch);
                    match self.pages.alloc() {
                        Some(p) => p,
                        None if self.cfg.on_empty == OnEmpty::Enomem && !copied => {
                            return self.finish(user_data, -libc::ENOMEM)
                        }
                        None => return,
                    }
                }
            };
            // SAFETY: `page` came off the freelist: no user reference, not lent, and only the
            // emulator (the "kernel") writes free pages.
            let buf = unsafe {
                self.pages
                    .area
                    .fill_slice(page as usize * NIOV_SIZE, NIOV_SIZE)
            };
            // SAFETY: recv writes at most NIOV_SIZE bytes into `buf`, which is that long.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), NIOV_SIZE, libc::MSG_DONTWAIT) };
            if n <= 0 {
                let err = io::Error::last_os_error()
                    .raw_os_error()
                    .unwrap_or(libc::EIO);
                self.pages.unalloc(page);
                match (n, err) {
                    (0, _) => return self.finish(user_data, 0),
                    (_, libc::EAGAIN) => return,
                    (_, libc::EINTR) => continue,
                    (_, e) => return self.finish(user_data, -e),
                }
            }
            let n = n as usize;
            if self.cfg.split_pages && n > 1 {
                let cut = 1 + (self.next_rand() as usize % (n - 1));
                self.post(user_data, page, 0, cut);
                self.post(user_data, page, cut, n - cut);
            } else {
                self.post(user_data, page, 0, n);
            }
            copied = true;
        }
    }

    /// Takes what is left in the refill ring, then reports pages still held by user space
    /// (or lost) and everything counted along the way.
    pub fn shutdown(&mut self) -> EmuReport {
        self.consume_refill(u32::MAX);
        let p = &self.pages;
        let leaked: Vec<u32> = (0..p.urefs.len())
            .filter(|&i| p.urefs[i] > 0 || !p.on_free[i])
            .map(|i| i as u32)
            .collect();
        let mut r = self.pages.report.clone();
        r.leaked_pages = leaked;
        r.armed_at_shutdown = self.reqs.len();
        r
    }
}

impl ZcrxKernel for Emulator {
    fn refill(&mut self) -> &mut RefillRing {
        &mut self.ring
    }

    fn arm(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        if self.reqs.iter().any(|r| r.user_data == user_data) {
            self.pages
                .error(format!("RECV_ZC armed twice for request {user_data}"));
        }
        self.reqs.push(Req { fd, user_data });
        Ok(())
    }

    fn cancel(&mut self, user_data: u64) -> io::Result<()> {
        if self.reqs.iter().any(|r| r.user_data == user_data) {
            self.finish(user_data, -libc::ECANCELED);
        }
        Ok(())
    }

    fn watch(&mut self, fd: RawFd) -> io::Result<()> {
        self.watched.push(fd);
        Ok(())
    }

    fn unwatch(&mut self, fd: RawFd) -> io::Result<()> {
        self.watched.retain(|&w| w != fd);
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<ZcrxCompletion>, timeout: Duration) -> io::Result<()> {
        self.consume_refill(self.cfg.refill_batch);
        if self.cq.is_empty() {
            let take = !self.pages.free.is_empty() || self.cfg.on_empty == OnEmpty::Enomem;
            let mut fds: Vec<libc::pollfd> = self
                .watched
                .iter()
                .map(|&fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let nwatched = fds.len();
            if take {
                fds.extend(self.reqs.iter().map(|r| libc::pollfd {
                    fd: r.fd,
                    events: libc::POLLIN | libc::POLLRDHUP,
                    revents: 0,
                }));
            }
            let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: `fds` is a live, correctly sized array of pollfd for the whole call.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            } else if rc > 0 {
                let ready: Vec<u64> = fds[nwatched..]
                    .iter()
                    .zip(&self.reqs)
                    .filter(|(p, _)| p.revents != 0)
                    .map(|(_, r)| r.user_data)
                    .collect();
                for ud in ready {
                    self.receive(ud);
                }
            }
        }
        out.extend(self.cq.drain(..));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn emu_with_data(bytes: &[u8]) -> (Arc<Area>, Emulator, UnixStream, Vec<ZcrxCompletion>) {
        let area = Area::new(16 * NIOV_SIZE, false).unwrap();
        let cfg = EmuConfig {
            split_pages: false,
            ..EmuConfig::default()
        };
        let mut emu = Emulator::new(&area, cfg).unwrap();
        let (mut tx, rx) = UnixStream::pair().unwrap();
        tx.write_all(bytes).unwrap();
        emu.arm(rx.as_raw_fd(), 9).unwrap();
        let mut out = Vec::new();
        emu.wait(&mut out, Duration::from_millis(100)).unwrap();
        (area, emu, rx, out)
    }

    #[test]
    fn completions_carry_the_area_id_and_take_a_user_reference() {
        let (_area, mut emu, _rx, out) = emu_with_data(&[7u8; 5000]);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out
            .iter()
            .all(|c| c.more() && c.area_id() == 1 && c.user_data == 9));
        assert_eq!(out.iter().map(|c| c.res).sum::<i32>(), 5000);
        let r = emu.shutdown();
        assert_eq!(
            r.leaked_pages.len(),
            2,
            "both pages are still held by user space"
        );
    }

    #[test]
    fn an_early_release_is_exposed_by_the_poison() {
        let (area, mut emu, _rx, out) = emu_with_data(b"payload!");
        let c = out[0];
        let off = c.area_offset() as usize;
        emu.refill().push(c.area_offset(), c.res as u32).unwrap();
        emu.wait(&mut Vec::new(), Duration::ZERO).unwrap();
        // SAFETY: test-only look at bytes the emulator owns again.
        let now = unsafe { area.fill_slice(off, 8) }.to_vec();
        assert_eq!(
            now,
            vec![POISON; 8],
            "a chunk still pointing here would see poison"
        );
        assert!(emu.shutdown().clean());
    }

    #[test]
    fn bad_refill_entries_are_protocol_errors() {
        let (_area, mut emu, _rx, out) = emu_with_data(b"x");
        let c = out[0];
        emu.refill().push(c.area_offset(), 1).unwrap();
        emu.refill().push(c.area_offset(), 1).unwrap(); // returned twice
        emu.refill().push(1 << 40, 1).unwrap(); // outside the area
                                                // Same region, wrong token: a second producer that forgot to OR in the token.
        let mut wrong = RefillRing::new(
            Arc::clone(&emu.region),
            RingLayout::kernel_default(emu.cfg.rq_entries),
            0,
        )
        .unwrap();
        // Its private tail starts where the shared one is now.
        wrong.push(c.area_offset(), 1).unwrap();
        let r = emu.shutdown();
        assert_eq!(r.protocol_error_count, 3, "{:?}", r.protocol_errors);
        assert!(r.protocol_errors[0].contains("without a user reference"));
        assert!(r.protocol_errors[1].contains("outside"));
        assert!(r.protocol_errors[2].contains("area token"));
    }
}
