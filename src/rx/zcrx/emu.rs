//! An emulation of the kernel's half of zcrx, for machines without a capable NIC (all of
//! ours). It implements [`ZcrxKernel`] so the *same* backend code runs against it, and it
//! keeps the kernel's buffer economy as io_uring/zcrx.c does — including *when* buffers come
//! back, which is where a backend that works against a generous model fails on hardware.
//!
//! Every niov of the area is in exactly one place (see [`Place`]): the area freelist, the
//! queue's page-pool cache, a posted descriptor of the NIC's rx ring, or user space (with a
//! user reference count). The rules, each mirroring one kernel function (names are stable
//! across 6.15, 6.18 and the current development tree):
//!
//! 1. **NIC reserve** (`io_pp_zc_alloc_netmems` filling the driver's rx ring at queue
//!    start): [`EmuConfig::nic_reserve`] niovs sit in the NIC's rx ring, posted for DMA and
//!    out of user space's reach, before a byte arrives. The ring is topped up after every
//!    packet. The pool takes niovs from the freelist 64 at a time (`io_zcrx_refill_slow`),
//!    so up to 63 more wait in its cache.
//! 2. **Refill ring read only on allocation** (`io_pp_zc_alloc_netmems` →
//!    `io_zcrx_ring_refill`, 6.15+): the refill ring is read only when the pool cache is
//!    empty and the NIC needs a descriptor, and at most `PP_ALLOC_CACHE_REFILL` = 64 entries
//!    per call ([`EmuConfig::refill_batch`], clamped to 64). Only after that does the pool
//!    take niovs from the freelist (`io_zcrx_refill_slow`). The NIC allocates only while a
//!    steered flow has packets for the queue: with only unsteered traffic the queue is idle
//!    and the refill ring is never read.
//! 3. **Returned zero-copy niovs go to the pool cache** (`io_zcrx_ring_refill` →
//!    `net_mp_netmem_place_in_cache`), not to the freelist; niovs that the copy fallback
//!    took (no page pool) go back to the freelist (`io_zcrx_return_niov`).
//! 4. **Copy fallback from the freelist only** (`io_zcrx_copy_chunk` →
//!    `io_zcrx_alloc_fallback`, 6.15+): an unsteered flow's bytes are copied into niovs
//!    taken from the freelist, one whole niov per copied chunk at offset 0 (even for a few
//!    bytes), never from the pool cache or the NIC ring; with the freelist empty the request
//!    ends with `-ENOMEM` (when nothing was copied in that call).
//! 5. **FLUSH_RQ** (`io_zcrx_ctrl` → `zcrx_flush_rq`, IORING_REGISTER_ZCRX_CTRL, 6.19+):
//!    reads the whole refill ring at once (in batches of `ZCRX_FLUSH_BATCH` = 32), returning
//!    copy niovs to the freelist and zero-copy niovs to the pool; on older kernels the
//!    register opcode is unknown and the call fails with `EINVAL` ([`EmuConfig::kernel`]).
//! 6. **niov size** (`rx_buf_len`, `ZCRX_FEATURE_RX_PAGE_SIZE`, 6.19+): niovs of
//!    [`EmuConfig::rx_buf_len`] bytes (a power of two ≥ 4 KiB); a non-zero value on an older
//!    kernel is `EINVAL`, as the reserved field was checked to be zero.
//! 7. **Registered ranges over 1 GiB** are `EFAULT` on kernels up to 6.18
//!    (`io_import_umem`), as the hosts we checked report.
//!
//! Completions are `{res: len, flags: F_MORE, off: niov_off | area_id << 48}`, each taking a
//! user reference — optionally two per zero-copy niov, as page-pool fragments share a niov
//! on real NICs. A final completion ends a request: `0` at EOF, `-ENOSPC` when the
//! completion queue has no room, `-ENOMEM` (rule 4), `-ECANCELED` on cancel, `-errno` on a
//! socket error. The refill ring is parsed as `io_parse_rqe` does; where the kernel silently
//! skips a bad entry — wrong area token, offset outside the area, non-zero `__pad`, niov
//! without a user reference — the emulator also records a protocol error, and tests fail on
//! any.
//!
//! On top of the kernel's checks it poisons every niov whose last user reference comes back
//! (fills it with 0xDB), verifies the poison is intact when the niov is handed out again (a
//! write after release), and checks no niov is handed out while a user reference is held.
//! [`Emulator::shutdown`] reports leaked niovs.

use super::backend::ZcrxKernel;
use super::rings::{RefillConsumer, RefillRing, RingLayout, RqRegion};
use super::sys::{
    io_uring_zcrx_rqe, KernelVersion, ZcrxCompletion, AREA_LIMIT_TO_6_18, IORING_CQE_F_MORE,
    IORING_ZCRX_AREA_MASK, IORING_ZCRX_AREA_SHIFT, NIOV_SIZE, RQ_MAX_ENTRIES,
};
use crate::area::Area;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

pub const POISON: u8 = 0xDB;
/// `PP_ALLOC_CACHE_REFILL` (include/net/page_pool/types.h): the most refill entries one
/// page-pool allocation takes.
pub const PP_ALLOC_CACHE_REFILL: u32 = 64;
/// `ZCRX_FLUSH_BATCH` (io_uring/zcrx.c): entries `zcrx_flush_rq` parses per step.
const ZCRX_FLUSH_BATCH: u32 = 32;

/// Which flows the emulated NIC steers to the zcrx queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    /// Every flow lands on the zcrx queue: zero-copy into NIC descriptors.
    Steered,
    /// No flow does: every byte goes through the copy fallback (rule 4), and the zcrx
    /// queue stays idle (the docs tell users to keep it out of RSS).
    Unsteered,
    /// Streams with an odd request id are steered, the others copied.
    Alternate,
}

#[derive(Debug, Clone)]
pub struct EmuConfig {
    /// Refill ring entries asked for (rounded up to a power of two, as the kernel does).
    pub rq_entries: u32,
    /// Completions the CQ holds before a request ends with `-ENOSPC`.
    pub cq_entries: usize,
    /// niovs one socket may fill per wait (the kernel's per-call skb limit plays this role).
    pub pages_per_step: usize,
    /// Refill entries one page-pool allocation consumes (rule 2), at most
    /// [`PP_ALLOC_CACHE_REFILL`].
    pub refill_batch: u32,
    /// Post most zero-copy niovs as two completions at different offsets of the same niov.
    pub split_pages: bool,
    /// Area id the completions carry. Kernels 6.15–6.18 always use 0; a non-zero id here
    /// proves the backend masks it off and puts the registration token back.
    pub area_id: u16,
    /// niovs the NIC's rx ring keeps posted, out of user space's reach (rule 1). At least
    /// one while any flow is steered.
    pub nic_reserve: usize,
    /// The emulated kernel: decides FLUSH_RQ (rule 5), `rx_buf_len` (rule 6) and the area
    /// limit (rule 7).
    pub kernel: KernelVersion,
    pub steering: Steering,
    /// niov size in bytes (`rx_buf_len`); 0 means one 4 KiB page (rule 6).
    pub rx_buf_len: usize,
    /// End each request at its first zero-copy niov with a final completion that carries
    /// the data (`res > 0`, no F_MORE), as only a length-limited RECV_ZC does: zcap never
    /// sets a limit, so this checks it does not quietly re-arm what it did not ask for.
    pub final_with_data: bool,
}

impl Default for EmuConfig {
    fn default() -> Self {
        EmuConfig {
            rq_entries: 4096,
            cq_entries: 8192,
            pages_per_step: 64,
            refill_batch: PP_ALLOC_CACHE_REFILL,
            split_pages: true,
            area_id: 1,
            nic_reserve: 256,
            kernel: KernelVersion::new(6, 18),
            steering: Steering::Steered,
            rx_buf_len: 0,
            final_with_data: false,
        }
    }
}

/// The environment variable that configures the emulation behind `record --rx
/// zcrx-emulated` (tests and benchmarks): comma-separated `steered` | `unsteered` |
/// `alternate`, `kernel=6.19`, `reserve=N` (niovs), `rx-buf-len=N` (bytes), `rq=N`,
/// `starve=SECONDS` (the backend's wait for buffers before "not steered").
pub const EMU_ENV: &str = "ZCAP_ZCRX_EMU";

/// What [`EMU_ENV`] asks for: the emulated kernel and, optionally, the backend's starve
/// timeout.
#[derive(Debug, Clone, Default)]
pub struct EmuSpec {
    pub cfg: EmuConfig,
    pub starve_timeout: Option<Duration>,
}

impl EmuSpec {
    pub fn parse(spec: &str) -> Result<EmuSpec, String> {
        let mut out = EmuSpec::default();
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, val) = item.split_once('=').unwrap_or((item, ""));
            let num = || {
                val.parse::<u64>()
                    .map_err(|_| format!("{EMU_ENV}: {key}={val} is not a number"))
            };
            match key {
                "steered" => out.cfg.steering = Steering::Steered,
                "unsteered" => out.cfg.steering = Steering::Unsteered,
                "alternate" => out.cfg.steering = Steering::Alternate,
                "kernel" => {
                    out.cfg.kernel = KernelVersion::parse(val)
                        .ok_or_else(|| format!("{EMU_ENV}: kernel={val} is not like 6.19"))?
                }
                "reserve" => out.cfg.nic_reserve = num()? as usize,
                "rx-buf-len" => out.cfg.rx_buf_len = num()? as usize,
                "rq" => out.cfg.rq_entries = num()? as u32,
                "starve" => out.starve_timeout = Some(Duration::from_secs(num()?)),
                _ => return Err(format!("{EMU_ENV}: unknown setting {item:?}")),
            }
        }
        Ok(out)
    }

    /// [`EMU_ENV`], or the defaults when it is unset.
    pub fn from_env() -> Result<EmuSpec, String> {
        match std::env::var(EMU_ENV) {
            Ok(s) => Self::parse(&s),
            Err(_) => Ok(EmuSpec::default()),
        }
    }
}

/// The emulator's books at shutdown.
#[derive(Debug, Default, Clone)]
pub struct EmuReport {
    /// niovs in the area.
    pub pages: usize,
    pub niov_size: usize,
    pub completions: u64,
    pub bytes: u64,
    pub eof: u64,
    pub enospc: u64,
    pub enomem: u64,
    pub cancelled: u64,
    /// Refill entries read, by page-pool allocations and flushes together.
    pub refill_consumed: u64,
    /// Page-pool allocations that read the refill ring (`io_zcrx_ring_refill` calls with
    /// entries to take), and the most entries one of them took (never above 64).
    pub refill_reads: u64,
    pub refill_read_max: u32,
    /// `ZCRX_CTRL_FLUSH_RQ` calls that succeeded, and those refused by the kernel version.
    pub flushes: u64,
    pub flushes_refused: u64,
    /// niovs filled by the NIC (zero-copy) and by the copy fallback.
    pub zero_copy_niovs: u64,
    pub copied_niovs: u64,
    /// niovs whose last user reference came back (poisoned, to the pool or the freelist).
    pub pages_recycled: u64,
    /// Refill entries the kernel would have skipped, and other protocol breaches, in words.
    pub protocol_errors: Vec<String>,
    pub protocol_error_count: u64,
    /// A niov was about to be handed out while a user reference was held, or its poison
    /// was overwritten after release.
    pub reuse_violations: u64,
    /// niovs still referenced by user space at shutdown.
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
    steered: bool,
}

/// Where a niov is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The area freelist (`area->freelist`).
    Free,
    /// The page pool's cache: the NIC's next descriptors, not the copy fallback's.
    Cache,
    /// Posted in the NIC's rx ring.
    Nic,
    /// Lent to user space: at least one user reference.
    User,
}

/// niov books: the kernel's freelist, pool cache, NIC ring and user references, plus our
/// poison marks.
struct Niovs {
    area: Arc<Area>,
    area_token: u64,
    size: usize,
    place: Vec<Place>,
    urefs: Vec<u32>,
    /// Taken by the copy fallback (no page pool): returns to the freelist.
    copy: Vec<bool>,
    poisoned: Vec<bool>,
    free: Vec<u32>,
    cache: Vec<u32>,
    nic: VecDeque<u32>,
    report: EmuReport,
}

impl Niovs {
    fn error(&mut self, msg: String) {
        self.report.protocol_error_count += 1;
        if self.report.protocol_errors.len() < 100 {
            self.report.protocol_errors.push(msg);
        }
    }

    /// The bytes of niov `p`.
    // The area hands out exclusive views by contract (see `Area::fill_slice`).
    #[allow(clippy::mut_from_ref)]
    fn bytes(&self, p: u32) -> &mut [u8] {
        // SAFETY: callers use this only for niovs the emulator (the "kernel") owns — on the
        // freelist, in the pool or the NIC ring, or whose last user reference just came
        // back — so no chunk points into it in a correct backend, and the poison check is
        // what exposes one that does.
        unsafe { self.area.fill_slice(p as usize * self.size, self.size) }
    }

    /// Checks a niov leaving the kernel's hands: no user reference, poison intact.
    fn check_out(&mut self, p: u32) {
        if self.urefs[p as usize] != 0 {
            self.report.reuse_violations += 1;
            self.error(format!(
                "niov {p} handed out while user space holds a reference"
            ));
        }
        if self.poisoned[p as usize] {
            let word = u64::from_ne_bytes([POISON; 8]);
            let intact = self
                .bytes(p)
                .chunks_exact(8)
                .all(|w| u64::from_ne_bytes(w.try_into().unwrap()) == word);
            if !intact {
                self.report.reuse_violations += 1;
                self.error(format!("niov {p} was written after its release"));
            }
            self.poisoned[p as usize] = false;
        }
    }

    /// Rule 4: `io_zcrx_alloc_fallback` takes from the freelist and nowhere else.
    fn alloc_free(&mut self) -> Option<u32> {
        let p = self.free.pop()?;
        self.check_out(p);
        Some(p)
    }

    /// Puts back a niov that was taken from the freelist but not filled.
    fn unalloc_free(&mut self, p: u32) {
        self.place[p as usize] = Place::Free;
        self.free.push(p);
    }

    /// One refill entry, parsed as `io_parse_rqe` does and returned as `io_zcrx_ring_refill`
    /// / `zcrx_return_buffers` do (rule 3).
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
        let p = (off / self.size as u64) as usize;
        if p >= self.urefs.len() {
            return self.error(format!(
                "refill entry offset {off:#x} is outside the {}-byte area",
                self.area.len()
            ));
        }
        if self.urefs[p] == 0 {
            return self.error(format!(
                "refill entry for niov {p} (offset {off:#x}) without a user reference: returned twice?"
            ));
        }
        self.urefs[p] -= 1;
        if self.urefs[p] == 0 {
            self.bytes(p as u32).fill(POISON);
            self.poisoned[p] = true;
            self.report.pages_recycled += 1;
            if self.copy[p] {
                self.place[p] = Place::Free;
                self.free.push(p as u32);
            } else {
                self.place[p] = Place::Cache;
                self.cache.push(p as u32);
            }
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
    niovs: Niovs,
    reqs: Vec<Req>,
    watched: Vec<RawFd>,
    cq: VecDeque<ZcrxCompletion>,
    rng: u64,
}

impl Emulator {
    /// Registers `area` with the emulated queue, as IORING_REGISTER_ZCRX_IFQ does: checks
    /// and rounds `rq_entries`, checks the niov size and the area against the emulated
    /// kernel, lays out the refill ring, hands back the area token, and starts the queue
    /// (the NIC posts its reserve).
    pub fn new(area: &Arc<Area>, cfg: EmuConfig) -> io::Result<Emulator> {
        let einval = || Err(io::Error::from_raw_os_error(libc::EINVAL));
        if cfg.rq_entries == 0 || cfg.rq_entries > RQ_MAX_ENTRIES {
            return einval();
        }
        let size = match cfg.rx_buf_len {
            0 => NIOV_SIZE,
            _ if !cfg.kernel.has_rx_buf_len() => return einval(),
            n if n < NIOV_SIZE || !n.is_power_of_two() => return einval(),
            n => n,
        };
        if area.len() % size != 0 || area.base() as usize % NIOV_SIZE != 0 || area.is_empty() {
            return einval();
        }
        if area.len() > AREA_LIMIT_TO_6_18 && cfg.kernel.limits_area_to_1gib() {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        let layout = RingLayout::kernel_default(cfg.rq_entries);
        let region = RqRegion::new(layout.entries)?;
        let area_token = u64::from(cfg.area_id) << IORING_ZCRX_AREA_SHIFT;
        let ring = RefillRing::new(Arc::clone(&region), layout, area_token)?;
        let consumer = RefillConsumer::new(Arc::clone(&region), layout)?;
        let n = area.len() / size;
        let mut emu = Emulator {
            ring,
            consumer,
            region,
            niovs: Niovs {
                area: Arc::clone(area),
                area_token,
                size,
                place: vec![Place::Free; n],
                urefs: vec![0; n],
                copy: vec![false; n],
                poisoned: vec![false; n],
                free: (0..n as u32).rev().collect(),
                cache: Vec::new(),
                nic: VecDeque::new(),
                report: EmuReport {
                    pages: n,
                    niov_size: size,
                    ..EmuReport::default()
                },
            },
            reqs: Vec::new(),
            watched: Vec::new(),
            cq: VecDeque::new(),
            rng: 0x9E37_79B9_7F4A_7C15,
            cfg,
        };
        emu.nic_top_up();
        Ok(emu)
    }

    /// The niovs the NIC ring holds now (rule 1), for tests.
    pub fn nic_posted(&self) -> usize {
        self.niovs.nic.len()
    }

    /// niovs on the freelist now, for tests.
    pub fn free_niovs(&self) -> usize {
        self.niovs.free.len()
    }

    fn reserve(&self) -> usize {
        self.cfg.nic_reserve.clamp(1, self.niovs.place.len())
    }

    /// Rule 2: `io_zcrx_ring_refill`, at most 64 entries, into the pool cache.
    fn ring_refill(&mut self) {
        let max = self.cfg.refill_batch.clamp(1, PP_ALLOC_CACHE_REFILL);
        let niovs = &mut self.niovs;
        let n = self.consumer.consume(max, |rqe| niovs.give_back(rqe));
        if n > 0 {
            niovs.report.refill_reads += 1;
            niovs.report.refill_read_max = niovs.report.refill_read_max.max(n);
            niovs.report.refill_consumed += u64::from(n);
        }
    }

    /// One page-pool allocation for the NIC (`io_pp_zc_alloc_netmems`): the cache, else
    /// the refill ring (rule 2), else up to 64 niovs from the freelist
    /// (`io_zcrx_refill_slow`).
    fn pool_alloc(&mut self) -> Option<u32> {
        if self.niovs.cache.is_empty() {
            self.ring_refill();
        }
        if self.niovs.cache.is_empty() {
            for _ in 0..PP_ALLOC_CACHE_REFILL {
                let Some(p) = self.niovs.alloc_free() else {
                    break;
                };
                self.niovs.place[p as usize] = Place::Cache;
                self.niovs.cache.push(p);
            }
        }
        let p = self.niovs.cache.pop()?;
        self.niovs.check_out(p);
        self.niovs.copy[p as usize] = false;
        Some(p)
    }

    /// The driver refills its rx ring descriptors up to the reserve (rule 1).
    fn nic_top_up(&mut self) {
        while self.niovs.nic.len() < self.reserve() {
            match self.pool_alloc() {
                Some(p) => {
                    self.niovs.place[p as usize] = Place::Nic;
                    self.niovs.nic.push_back(p);
                }
                None => break,
            }
        }
    }

    /// Whether a steered receive could get a descriptor now.
    fn nic_can_receive(&self) -> bool {
        !self.niovs.nic.is_empty()
            || !self.niovs.cache.is_empty()
            || !self.niovs.free.is_empty()
            || self.consumer.available() > 0
    }

    /// Rule 5: `zcrx_flush_rq` reads the whole ring, 32 entries at a time.
    fn flush(&mut self) {
        let entries = self.ring.entries();
        let mut total = 0u32;
        loop {
            let niovs = &mut self.niovs;
            let n = self
                .consumer
                .consume(ZCRX_FLUSH_BATCH, |rqe| niovs.give_back(rqe));
            niovs.report.refill_consumed += u64::from(n);
            total += n;
            if n < ZCRX_FLUSH_BATCH || total >= entries {
                break;
            }
        }
    }

    fn finish(&mut self, user_data: u64, res: i32) {
        self.reqs.retain(|r| r.user_data != user_data);
        let r = &mut self.niovs.report;
        match res {
            0 => r.eof += 1,
            r2 if r2 == -libc::ENOSPC => r.enospc += 1,
            r2 if r2 == -libc::ENOMEM => r.enomem += 1,
            r2 if r2 == -libc::ECANCELED => r.cancelled += 1,
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

    fn post(&mut self, user_data: u64, niov: u32, off: usize, len: usize) {
        let b = &mut self.niovs;
        b.urefs[niov as usize] += 1;
        b.place[niov as usize] = Place::User;
        b.report.completions += 1;
        b.report.bytes += len as u64;
        self.cq.push_back(ZcrxCompletion {
            user_data,
            res: len as i32,
            flags: IORING_CQE_F_MORE,
            off: (niov as u64 * b.size as u64 + off as u64) | b.area_token,
        });
    }

    fn next_rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// recv into niov `p`: `Ok(n > 0)` bytes, or `Err(final res)` / `Err(None)` for "no
    /// data now".
    fn recv_into(&mut self, fd: RawFd, p: u32) -> Result<usize, Option<i32>> {
        loop {
            let buf = self.niovs.bytes(p);
            // SAFETY: recv writes at most `buf.len()` bytes into `buf`, which is that long and
            // owned by the emulator (the niov is off every list while it is filled).
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n > 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            return match (n, err) {
                (0, _) => Err(Some(0)),
                (_, libc::EAGAIN) => Err(None),
                (_, libc::EINTR) => continue,
                (_, e) => Err(Some(-e)),
            };
        }
    }

    /// Zero-copy receive into NIC descriptors (`io_zcrx_recv_frag`), one niov per packet.
    fn receive_steered(&mut self, user_data: u64, fd: RawFd) {
        for _ in 0..self.cfg.pages_per_step {
            if self.cq.len() + 2 > self.cfg.cq_entries {
                return self.finish(user_data, -libc::ENOSPC);
            }
            if self.niovs.nic.is_empty() {
                self.nic_top_up();
            }
            // No descriptor: the NIC drops, TCP retransmits; the data waits in the socket.
            let Some(p) = self.niovs.nic.pop_front() else {
                return;
            };
            let n = match self.recv_into(fd, p) {
                Ok(n) => n,
                Err(res) => {
                    self.niovs.nic.push_front(p);
                    if let Some(r) = res {
                        self.finish(user_data, r);
                    }
                    return;
                }
            };
            self.niovs.report.zero_copy_niovs += 1;
            if self.cfg.split_pages && n > 1 {
                let cut = 1 + (self.next_rand() as usize % (n - 1));
                self.post(user_data, p, 0, cut);
                self.post(user_data, p, cut, n - cut);
            } else {
                self.post(user_data, p, 0, n);
            }
            self.nic_top_up();
            if self.cfg.final_with_data {
                if let Some(last) = self.cq.back_mut() {
                    last.flags &= !IORING_CQE_F_MORE;
                }
                self.reqs.retain(|r| r.user_data != user_data);
                return;
            }
        }
    }

    /// Copy fallback (`io_zcrx_copy_chunk`, rule 4).
    fn receive_copy(&mut self, user_data: u64, fd: RawFd) {
        let mut copied = false;
        for _ in 0..self.cfg.pages_per_step {
            if self.cq.len() + 2 > self.cfg.cq_entries {
                return self.finish(user_data, -libc::ENOSPC);
            }
            let Some(p) = self.niovs.alloc_free() else {
                if !copied {
                    self.finish(user_data, -libc::ENOMEM);
                }
                return;
            };
            let n = match self.recv_into(fd, p) {
                Ok(n) => n,
                Err(res) => {
                    self.niovs.unalloc_free(p);
                    if let Some(r) = res {
                        self.finish(user_data, r);
                    }
                    return;
                }
            };
            self.niovs.copy[p as usize] = true;
            self.niovs.report.copied_niovs += 1;
            self.post(user_data, p, 0, n);
            copied = true;
        }
    }

    fn receive(&mut self, user_data: u64) {
        let Some((fd, steered)) = self
            .reqs
            .iter()
            .find(|r| r.user_data == user_data)
            .map(|r| (r.fd, r.steered))
        else {
            return;
        };
        if steered {
            self.receive_steered(user_data, fd)
        } else {
            self.receive_copy(user_data, fd)
        }
    }

    /// The queue's teardown (`io_zcrx_scrub`) drops the user references of buffers user
    /// space still holds; `held` names the ones the backend released but could not put into
    /// the refill ring ([`super::ZcrxReport::held_at_exit`]). Each is checked like a refill
    /// entry, so a buffer named twice, or one never lent, is still a protocol error; a
    /// niov nobody names stays a leak.
    pub fn teardown(&mut self, held: &[crate::area::ReleaseToken]) {
        for t in held {
            let rqe = super::sys::rqe_for(t.id, t.len, self.niovs.area_token);
            self.niovs.give_back(rqe);
        }
    }

    /// Tears the queue down as unregistering does: takes what is left in the refill ring,
    /// then reports niovs still held by user space and everything counted along the way.
    pub fn shutdown(&mut self) -> EmuReport {
        while self.consumer.available() > 0 {
            let niovs = &mut self.niovs;
            let n = self.consumer.consume(u32::MAX, |rqe| niovs.give_back(rqe));
            niovs.report.refill_consumed += u64::from(n);
        }
        let b = &self.niovs;
        let leaked: Vec<u32> = (0..b.place.len())
            .filter(|&i| b.place[i] == Place::User || b.urefs[i] > 0)
            .map(|i| i as u32)
            .collect();
        let mut r = self.niovs.report.clone();
        r.leaked_pages = leaked;
        r.armed_at_shutdown = self.reqs.len();
        r
    }
}

impl ZcrxKernel for Emulator {
    fn refill(&mut self) -> &mut RefillRing {
        &mut self.ring
    }

    fn niov_size(&self) -> usize {
        self.niovs.size
    }

    fn can_flush_rq(&self) -> bool {
        self.cfg.kernel.has_flush_rq()
    }

    fn flush_rq(&mut self) -> io::Result<()> {
        if !self.cfg.kernel.has_flush_rq() {
            self.niovs.report.flushes_refused += 1;
            // Kernels before IORING_REGISTER_ZCRX_CTRL: unknown register opcode.
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.niovs.report.flushes += 1;
        self.flush();
        Ok(())
    }

    fn arm(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        if self.reqs.iter().any(|r| r.user_data == user_data) {
            self.niovs
                .error(format!("RECV_ZC armed twice for request {user_data}"));
        }
        let steered = match self.cfg.steering {
            Steering::Steered => true,
            Steering::Unsteered => false,
            Steering::Alternate => user_data % 2 == 1,
        };
        self.reqs.push(Req {
            fd,
            user_data,
            steered,
        });
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
        if self.cq.is_empty() {
            let nic_ok = self.nic_can_receive();
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
            // A steered socket with no descriptor to land in is not polled (the NIC would
            // drop); a copied one always is (it ends with -ENOMEM when the freelist is empty).
            let polled: Vec<u64> = self
                .reqs
                .iter()
                .filter(|r| !r.steered || nic_ok)
                .map(|r| r.user_data)
                .collect();
            fds.extend(
                self.reqs
                    .iter()
                    .filter(|r| !r.steered || nic_ok)
                    .map(|r| libc::pollfd {
                        fd: r.fd,
                        events: libc::POLLIN | libc::POLLRDHUP,
                        revents: 0,
                    }),
            );
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
                    .zip(&polled)
                    .filter(|(p, _)| p.revents != 0)
                    .map(|(_, &ud)| ud)
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

    struct Rig {
        area: Arc<Area>,
        emu: Emulator,
        tx: UnixStream,
        _rx: UnixStream,
    }

    fn rig(niovs: usize, cfg: EmuConfig) -> Rig {
        let size = if cfg.rx_buf_len == 0 {
            NIOV_SIZE
        } else {
            cfg.rx_buf_len
        };
        let area = Area::new(niovs * size, false).unwrap();
        let mut emu = Emulator::new(&area, cfg).unwrap();
        let (tx, rx) = UnixStream::pair().unwrap();
        emu.arm(rx.as_raw_fd(), 9).unwrap();
        Rig {
            area,
            emu,
            tx,
            _rx: rx,
        }
    }

    fn steered() -> EmuConfig {
        EmuConfig {
            split_pages: false,
            nic_reserve: 4,
            ..EmuConfig::default()
        }
    }

    fn unsteered(kernel: KernelVersion) -> EmuConfig {
        EmuConfig {
            steering: Steering::Unsteered,
            kernel,
            ..steered()
        }
    }

    fn recv(r: &mut Rig, bytes: &[u8]) -> Vec<ZcrxCompletion> {
        r.tx.write_all(bytes).unwrap();
        let mut out = Vec::new();
        r.emu.wait(&mut out, Duration::from_millis(100)).unwrap();
        out
    }

    fn give_back(r: &mut Rig, out: &[ZcrxCompletion]) {
        for c in out.iter().filter(|c| c.res > 0) {
            r.emu.refill().push(c.area_offset(), c.res as u32).unwrap();
        }
    }

    #[test]
    fn completions_carry_the_area_id_and_take_a_user_reference() {
        let mut r = rig(16, steered());
        let out = recv(&mut r, &[7u8; 5000]);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out
            .iter()
            .all(|c| c.more() && c.area_id() == 1 && c.user_data == 9));
        assert_eq!(out.iter().map(|c| c.res).sum::<i32>(), 5000);
        let rep = r.emu.shutdown();
        assert_eq!(rep.leaked_pages.len(), 2, "both niovs are still held");
    }

    #[test]
    fn the_nic_reserve_is_posted_out_of_reach_from_the_start() {
        let r = rig(16, steered());
        assert_eq!(r.emu.nic_posted(), 4);
        // io_zcrx_refill_slow fills the pool cache 64 at a time: all 16 are out of reach.
        assert_eq!(r.emu.free_niovs(), 0);
        let r = rig(100, steered());
        assert_eq!((r.emu.nic_posted(), r.emu.free_niovs()), (4, 36));
    }

    #[test]
    fn the_refill_ring_is_read_only_when_the_pool_allocates() {
        let mut r = rig(16, steered());
        let out = recv(&mut r, &[1u8; 4096]);
        give_back(&mut r, &out);
        // No packet, no allocation: waiting does not read the ring.
        r.emu.wait(&mut Vec::new(), Duration::ZERO).unwrap();
        assert_eq!(r.emu.refill().queued(), 1);
        let rep = r.emu.shutdown();
        assert_eq!(rep.refill_reads, 0, "{rep:?}");
        assert!(rep.clean());
    }

    #[test]
    fn a_steered_packet_reads_at_most_64_refill_entries() {
        let cfg = EmuConfig {
            nic_reserve: 1,
            rq_entries: 256,
            ..steered()
        };
        let mut r = rig(300, cfg);
        let mut all = Vec::new();
        while all.len() < 200 {
            all.extend(recv(&mut r, &[2u8; 4096 * 50]));
        }
        give_back(&mut r, &all);
        assert_eq!(r.emu.refill().queued(), all.len() as u32);
        assert_eq!(r.emu.niovs.report.refill_reads, 0);
        // The pool cache drains first, then one allocation reads the ring.
        for _ in 0..100 {
            if r.emu.niovs.report.refill_reads > 0 {
                break;
            }
            recv(&mut r, &[3u8; 4096 * 8]);
        }
        assert_eq!(r.emu.niovs.report.refill_reads, 1);
        assert_eq!(r.emu.refill().queued(), all.len() as u32 - 64);
        let rep = r.emu.shutdown();
        assert!(rep.refill_reads > 0);
        assert!(rep.refill_read_max <= PP_ALLOC_CACHE_REFILL, "{rep:?}");
        // The last 56 niovs are still held by this test; nothing else is amiss.
        assert_eq!((rep.protocol_error_count, rep.reuse_violations), (0, 0));
    }

    #[test]
    fn returned_zero_copy_niovs_go_to_the_pool_not_the_freelist() {
        let mut r = rig(
            100,
            EmuConfig {
                kernel: KernelVersion::new(6, 19),
                ..steered()
            },
        );
        let free = r.emu.free_niovs();
        let out = recv(&mut r, &[4u8; 4096 * 2]);
        give_back(&mut r, &out);
        r.emu.flush_rq().unwrap();
        assert_eq!(
            r.emu.free_niovs(),
            free,
            "flushed zero-copy niovs stay in the pool"
        );
        assert!(r.emu.shutdown().clean());
    }

    #[test]
    fn copy_fallback_takes_whole_niovs_from_the_freelist_then_enomem() {
        let mut r = rig(80, unsteered(KernelVersion::new(6, 18)));
        let free = r.emu.free_niovs();
        assert_eq!(
            free, 16,
            "the NIC reserve and the pool's batch are not free"
        );
        let mut out = Vec::new();
        for _ in 0..free {
            out.extend(recv(&mut r, b"tiny"));
        }
        assert_eq!(out.len(), free, "{out:?}");
        assert!(out
            .iter()
            .all(|c| c.res == 4 && c.area_offset() % NIOV_SIZE as u64 == 0));
        let fin = recv(&mut r, b"more");
        assert_eq!(fin.len(), 1);
        assert_eq!((fin[0].res, fin[0].more()), (-libc::ENOMEM, false));
        // Returned buffers are not read back: the zcrx queue is idle, no FLUSH_RQ on 6.18.
        give_back(&mut r, &out);
        assert_eq!(
            r.emu.flush_rq().unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
        r.emu.arm(r._rx.as_raw_fd(), 9).unwrap();
        let again = recv(&mut r, b"");
        assert_eq!(again[0].res, -libc::ENOMEM, "{again:?}");
        let rep = r.emu.shutdown();
        assert_eq!(rep.refill_reads, 0);
        assert!(rep.clean(), "{rep:?}");
    }

    #[test]
    fn flush_rq_gives_copy_niovs_back_to_the_freelist_on_new_kernels() {
        let mut r = rig(80, unsteered(KernelVersion::new(6, 19)));
        let free = r.emu.free_niovs();
        let mut out = Vec::new();
        for _ in 0..free {
            out.extend(recv(&mut r, b"x"));
        }
        assert_eq!(r.emu.free_niovs(), 0);
        give_back(&mut r, &out);
        r.emu.flush_rq().unwrap();
        assert_eq!(r.emu.free_niovs(), free);
        assert_eq!(r.emu.refill().queued(), 0);
        assert!(r.emu.shutdown().clean());
    }

    #[test]
    fn an_early_release_is_exposed_by_the_poison() {
        let mut r = rig(80, unsteered(KernelVersion::new(6, 19)));
        let out = recv(&mut r, b"payload!");
        let off = out[0].area_offset() as usize;
        give_back(&mut r, &out);
        r.emu.flush_rq().unwrap();
        // SAFETY: test-only look at bytes the emulator owns again.
        let now = unsafe { r.area.fill_slice(off, 8) }.to_vec();
        assert_eq!(
            now,
            vec![POISON; 8],
            "a chunk still pointing here would see poison"
        );
        assert!(r.emu.shutdown().clean());
    }

    #[test]
    fn rx_buf_len_needs_a_new_kernel_and_sets_the_niov_size() {
        let area = Area::new(4 * 16384, false).unwrap();
        let old = EmuConfig {
            rx_buf_len: 16384,
            ..steered()
        };
        assert_eq!(
            Emulator::new(&area, old)
                .err()
                .and_then(|e| e.raw_os_error()),
            Some(libc::EINVAL)
        );
        let cfg = EmuConfig {
            rx_buf_len: 16384,
            kernel: KernelVersion::new(6, 19),
            nic_reserve: 1,
            ..steered()
        };
        let mut r = rig(4, cfg);
        let out = recv(&mut r, &[5u8; 16384]);
        assert_eq!(out.len(), 1, "one niov holds 16 KiB: {out:?}");
        assert_eq!(out[0].res, 16384);
        assert_eq!(r.emu.niov_size(), 16384);
    }

    #[test]
    fn the_environment_spec_sets_the_knobs() {
        let s =
            EmuSpec::parse("unsteered, kernel=6.19,reserve=512,rx-buf-len=16384,starve=2").unwrap();
        assert_eq!(s.cfg.steering, Steering::Unsteered);
        assert_eq!(s.cfg.kernel, KernelVersion::new(6, 19));
        assert_eq!((s.cfg.nic_reserve, s.cfg.rx_buf_len), (512, 16384));
        assert_eq!(s.starve_timeout, Some(Duration::from_secs(2)));
        assert!(EmuSpec::parse("bogus").is_err());
        assert!(EmuSpec::parse("kernel=x").is_err());
        assert_eq!(EmuSpec::parse("").unwrap().cfg.steering, Steering::Steered);
    }

    #[test]
    fn bad_refill_entries_are_protocol_errors() {
        let mut r = rig(16, steered());
        let out = recv(&mut r, b"x");
        let c = out[0];
        r.emu.refill().push(c.area_offset(), 1).unwrap();
        r.emu.refill().push(c.area_offset(), 1).unwrap(); // returned twice
        r.emu.refill().push(1 << 40, 1).unwrap(); // outside the area
                                                  // Same region, wrong token: a second producer that forgot to OR in the token.
        let mut wrong = RefillRing::new(
            Arc::clone(&r.emu.region),
            RingLayout::kernel_default(r.emu.cfg.rq_entries),
            0,
        )
        .unwrap();
        wrong.push(c.area_offset(), 1).unwrap();
        let rep = r.emu.shutdown();
        assert_eq!(rep.protocol_error_count, 3, "{:?}", rep.protocol_errors);
        assert!(rep.protocol_errors[0].contains("without a user reference"));
        assert!(rep.protocol_errors[1].contains("outside"));
        assert!(rep.protocol_errors[2].contains("area token"));
    }
}
