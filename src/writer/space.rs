//! Disk space: what the writer does when the archive's file system is full — a segment
//! write, create or finalize, or a manifest append, failing with ENOSPC or EDQUOT (or EIO on
//! a segment) — or when its free space is below the `--min-free` floor.
//!
//! No such fault ends the recorder. [`persist`] runs the step and, on a fault:
//!
//! 1. with retention configured (`--max-bytes`/`--max-age`), deletes the oldest finalized
//!    segments through retention (each deletion recorded in the manifest) and retries;
//! 2. otherwise, or when nothing can be deleted, it waits: the writer keeps every chunk it
//!    holds, so the receive area fills, the backends stop reading and TCP flow control slows
//!    the senders — the design's backpressure; nothing received is dropped. It logs once per
//!    fault, retries with back-off (100 ms doubling to 5 s) and resumes when space is back.
//!
//! Once a stop (SIGINT/SIGTERM) has been requested and the backends' drain period has
//! passed, a step still failing gives up with an [`Abandoned`] error: the stream that owns
//! it keeps what is written, counts what is not, and the recorder exits non-zero.
//!
//! The floor is checked before a segment is created or grown, against an estimate: the last
//! statvfs(2) minus what the writers have reserved since. statvfs runs again at most every
//! 100 ms or 16 MiB while free space is more than 16 MiB above the floor, and before every
//! frame nearer to it. Each frame reserves its encoded size's upper bound before it is
//! written, so the writers' data never takes free space below the floor; only the trailer,
//! manifest lines and directory entries (a few KiB per segment) can.

use super::Ctx;
use crate::archive::retention;
use crate::units::{human_bytes, parse_size};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// `--min-free`: free space to keep on the archive's file system.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    /// Percent of the file system's size (0 < p < 100).
    Percent(f64),
    Bytes(u64),
}

impl MinFree {
    /// The floor in bytes on a file system of `total` bytes.
    pub fn floor(&self, total: u64) -> u64 {
        match *self {
            MinFree::Percent(p) => (total as f64 * p / 100.0) as u64,
            MinFree::Bytes(b) => b,
        }
    }
}

impl std::fmt::Display for MinFree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MinFree::Percent(p) => write!(f, "{p}%"),
            MinFree::Bytes(b) => write!(f, "{}", human_bytes(*b)),
        }
    }
}

impl std::str::FromStr for MinFree {
    type Err = String;
    fn from_str(s: &str) -> Result<MinFree, String> {
        if let Some(p) = s.trim().strip_suffix('%') {
            return match p.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p < 100.0 => Ok(MinFree::Percent(p)),
                _ => Err(format!(
                    "`{s}`: a percentage of the file system between 0 and 100, e.g. 5%"
                )),
            };
        }
        parse_size(s).map(MinFree::Bytes)
    }
}

/// Free and total bytes of the file system holding `dir` (statvfs: blocks available to an
/// unprivileged user, times the fragment size).
pub fn statvfs(dir: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: statvfs writes one struct statvfs through the pointer; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("statvfs {}: {e}", dir.display()),
        ));
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
}

/// Starts writing back the dirty pages of `f` in `off..off + len` without waiting for them
/// (sync_file_range, SYNC_FILE_RANGE_WRITE): a segment's pages go to the device while it is
/// being written, so the fsync at finalize finds little left and does not stall the writer.
/// Advisory: an error here shows again at that fsync, which is what reports it.
pub fn start_writeback(f: &std::fs::File, off: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range takes a descriptor and a byte range and touches no memory of
    // ours; `f` is an open file for the duration of the call.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            off as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// statvfs at most this often while far above the floor...
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// ...or after this many bytes reserved, and before every frame when nearer than this.
const PROBE_BYTES: u64 = 16 << 20;
/// A file's last page: a write can take this much more than its length.
const PAGE: u64 = 4096;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Probe {
    at: Option<Instant>,
    avail: u64,
    total: u64,
    /// Bytes the writers wrote (upper bounds) since `at`: not yet in `avail`.
    reserved: u64,
    /// Bytes admitted and being written now: perhaps not yet in `avail` even after a new
    /// statvfs, so they survive it.
    inflight: u64,
}

/// What every writer thread of one archive shares about its space.
#[derive(Debug)]
pub struct Space {
    dir: PathBuf,
    min_free: Option<MinFree>,
    probe: Mutex<Probe>,
    /// Writers waiting for space right now: the first logs the fault, the last its end.
    waiting: AtomicUsize,
    stop: OnceLock<Arc<AtomicBool>>,
}

impl Space {
    pub fn new(dir: &Path, min_free: Option<MinFree>) -> Space {
        Space {
            dir: dir.to_path_buf(),
            min_free,
            probe: Mutex::new(Probe::default()),
            waiting: AtomicUsize::new(0),
            stop: OnceLock::new(),
        }
    }

    /// The flag SIGINT/SIGTERM set: waiting for space ends after the drain once it is set.
    pub fn stop_on(&self, flag: Arc<AtomicBool>) {
        let _ = self.stop.set(flag);
    }

    fn stopping(&self) -> bool {
        self.stop.get().is_some_and(|s| s.load(Ordering::Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Probe> {
        self.probe.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refresh(&self, p: &mut Probe) -> io::Result<()> {
        let (avail, total) = statvfs(&self.dir)?;
        *p = Probe {
            at: Some(Instant::now()),
            avail,
            total,
            reserved: 0,
            inflight: p.inflight,
        };
        Ok(())
    }

    /// Reserves room for `bytes` about to be written (plus a page for the file's rounding),
    /// or fails (as ENOSPC does) when that would take free space below the `--min-free`
    /// floor. Every admitted reservation is ended with [`Space::done`].
    pub fn admit(&self, bytes: u64) -> io::Result<()> {
        let Some(min) = self.min_free else {
            return Ok(());
        };
        let bytes = bytes + PAGE;
        let mut p = self.lock();
        let floor = min.floor(p.total);
        let est = p.avail.saturating_sub(p.reserved + p.inflight);
        if p.at.is_none_or(|t| t.elapsed() >= PROBE_EVERY)
            || p.reserved >= PROBE_BYTES
            || est < floor + bytes + PROBE_BYTES
        {
            self.refresh(&mut p)?;
        }
        let floor = min.floor(p.total);
        let est = p.avail.saturating_sub(p.reserved + p.inflight);
        if est < floor.saturating_add(bytes) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                BelowFloor(format!(
                    "{}: free space {} is below --min-free {min} ({}) with the next {} written",
                    self.dir.display(),
                    human_bytes(est),
                    human_bytes(floor),
                    human_bytes(bytes)
                )),
            ));
        }
        p.inflight += bytes;
        Ok(())
    }

    /// The write admitted for `bytes` is over (written or failed and rolled back).
    pub fn done(&self, bytes: u64) {
        if self.min_free.is_some() {
            let bytes = bytes + PAGE;
            let mut p = self.lock();
            p.inflight = p.inflight.saturating_sub(bytes);
            p.reserved += bytes;
        }
    }

    /// Free bytes above the floor right now (a fresh statvfs), or `None` if that fails.
    fn room(&self) -> Option<u64> {
        let mut p = self.lock();
        self.refresh(&mut p).ok()?;
        let floor = self.min_free.map_or(0, |m| m.floor(p.total));
        Some(p.avail.saturating_sub(floor))
    }
}

/// The `--min-free` floor refused a write (reported with kind `StorageFull`, like ENOSPC).
#[derive(Debug)]
pub struct BelowFloor(String);

impl std::fmt::Display for BelowFloor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BelowFloor {}

/// The upper bound of a frame's encoded size for `raw` content bytes (zstd's bound, which
/// also covers a frame of raw blocks, plus the frame header and checksum).
pub fn frame_bound(raw: u64) -> u64 {
    zstd::zstd_safe::compress_bound(raw as usize) as u64 + 64
}

/// One writer thread's side: the shared books and whether it has given up.
#[derive(Debug)]
pub struct Disk {
    pub space: Arc<Space>,
    /// The stop came and the drain passed while the disk was full: every further step that
    /// hits a full disk fails at once instead of waiting.
    pub gave_up: bool,
}

impl Disk {
    pub fn new(space: Arc<Space>) -> Disk {
        Disk {
            space,
            gave_up: false,
        }
    }
}

/// What is being persisted: EIO is retried on a segment (the device may come back), not on
/// the manifest or a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Segment,
    Manifest,
}

/// A full disk (ENOSPC, EDQUOT, the `--min-free` floor) or, on a segment, EIO.
pub fn is_fault(e: &io::Error, step: Step) -> bool {
    retention::is_out_of_space(e)
        || matches!(
            super::segment::errno(e),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        )
        || (step == Step::Segment && super::segment::errno(e) == Some(libc::EIO))
}

/// A step that still failed after the stop and the drain: the writer stopped retrying.
#[derive(Debug)]
pub struct Abandoned {
    pub source: io::Error,
}

impl std::fmt::Display for Abandoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (gave up at shutdown)", self.source)
    }
}

impl std::error::Error for Abandoned {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

pub fn is_abandoned(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|r| r.is::<Abandoned>())
}

/// One fault, from the first failure of a step to its success (or giving up).
struct Fault {
    start: Instant,
    backoff: Duration,
    /// This writer logged the wait (and counts in `Space::waiting`).
    waiting: bool,
    said_nothing_to_delete: bool,
    stop_seen: Option<Instant>,
}

impl Fault {
    fn end(self, cx: &mut Ctx, resumed: bool) {
        let blocked = self.start.elapsed();
        cx.stats
            .blocked_ns
            .fetch_add(blocked.as_nanos() as u64, Ordering::Relaxed);
        if self.waiting {
            let last = cx.disk.space.waiting.fetch_sub(1, Ordering::Relaxed) == 1;
            if last && resumed {
                eprintln!(
                    "zcap: space on {} is back after {:.1} s: writing again",
                    cx.cfg.dir.display(),
                    blocked.as_secs_f64()
                );
            }
        }
    }
}

/// Runs `op` (a segment or manifest step that undoes itself on failure) until it succeeds,
/// freeing space or waiting on a full disk as the module comment says. `need` is the number
/// of bytes a segment step is about to add, checked against `--min-free` first (0: none).
/// Errors other than a full disk are returned at once; a full disk after the stop and the
/// drain is returned as [`Abandoned`].
pub(super) fn persist<T>(
    cx: &mut Ctx,
    step: Step,
    need: u64,
    mut op: impl FnMut(&mut Ctx) -> io::Result<T>,
) -> io::Result<T> {
    let mut fault: Option<Fault> = None;
    loop {
        let r = if need > 0 {
            cx.disk.space.admit(need).and_then(|()| {
                let r = op(cx);
                cx.disk.space.done(need);
                r
            })
        } else {
            op(cx)
        };
        let e = match r {
            Ok(v) => {
                if let Some(f) = fault.take() {
                    f.end(cx, true);
                }
                return Ok(v);
            }
            Err(e) if !is_fault(&e, step) => {
                if let Some(f) = fault.take() {
                    f.end(cx, false);
                }
                return Err(e);
            }
            Err(e) => e,
        };
        let f = fault.get_or_insert_with(|| {
            cx.stats.disk_full_events.fetch_add(1, Ordering::Relaxed);
            Fault {
                start: Instant::now(),
                backoff: BACKOFF_MIN,
                waiting: false,
                said_nothing_to_delete: false,
                stop_seen: None,
            }
        });
        let eio = super::segment::errno(&e) == Some(libc::EIO);
        let retention = cx.cfg.max_bytes.is_some() || cx.cfg.max_age.is_some();
        if retention && !eio && !cx.disk.gave_up {
            let (n, bytes) = free_space(cx, &e)?;
            if n > 0 {
                let what = if e.get_ref().is_some_and(|r| r.is::<BelowFloor>()) {
                    "free space below --min-free"
                } else {
                    "disk full"
                };
                eprintln!(
                    "zcap: {what} on {}: deleted {n} oldest segment(s) ({}) to make room",
                    cx.cfg.dir.display(),
                    human_bytes(bytes)
                );
                continue;
            }
            if !f.said_nothing_to_delete && !cx.disk.gave_up {
                f.said_nothing_to_delete = true;
                eprintln!(
                    "zcap: disk full on {}: retention has no finalized segment left to delete \
                     (the newest is always kept)",
                    cx.cfg.dir.display()
                );
            }
        }
        if cx.disk.space.stopping() {
            let seen = *f.stop_seen.get_or_insert_with(Instant::now);
            if cx.disk.gave_up || seen.elapsed() >= crate::rx::conn::DRAIN {
                cx.disk.gave_up = true;
                if let Some(f) = fault.take() {
                    f.end(cx, false);
                }
                cx.stats.gave_up.fetch_add(1, Ordering::Relaxed);
                return Err(io::Error::new(e.kind(), Abandoned { source: e }));
            }
        }
        if !f.waiting {
            f.waiting = true;
            if cx.disk.space.waiting.fetch_add(1, Ordering::Relaxed) == 0 {
                let what = if eio {
                    "the device reports I/O errors: check it (dmesg) and the file system"
                } else if retention {
                    "free space on that file system, lower --max-bytes, or raise --min-free"
                } else {
                    "free space on that file system, or record as a ring buffer with \
                     --max-bytes/--max-age"
                };
                eprintln!(
                    "zcap: DISK FULL: cannot write the archive: {e}. Recording is paused: \
                     received data is held in the receive area and the senders are slowed by \
                     TCP backpressure (nothing received is dropped). To continue, {what}; \
                     retrying every {}–{} s.",
                    BACKOFF_MIN.as_secs_f64(),
                    BACKOFF_MAX.as_secs()
                );
            }
        }
        wait(cx, f.backoff);
        f.backoff = (f.backoff * 2).min(BACKOFF_MAX);
    }
}

/// Sleeps `d`, waking early when a stop is requested.
fn wait(cx: &Ctx, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !cx.disk.space.stopping() {
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
    }
}

/// Deletes the oldest finalized segments through retention until there is room for a
/// segment's worth above the floor (or that much is freed). Returns (segments, bytes).
fn free_space(cx: &mut Ctx, e: &io::Error) -> io::Result<(u64, u64)> {
    let headroom = (2 * cx.cfg.frame_size).max(cx.cfg.segment_size.min(64 << 20));
    // A quota is not what statvfs shows: count only what was freed.
    let quota = super::segment::errno(e) == Some(libc::EDQUOT);
    let reason = if e.get_ref().is_some_and(|r| r.is::<BelowFloor>()) {
        "min-free"
    } else {
        "disk-full"
    };
    let space = Arc::clone(&cx.disk.space);
    let mut freed = (0, 0);
    let mut shared = super::lock_shared(cx.shared);
    let super::Shared {
        manifest,
        retention,
    } = &mut *shared;
    let r = retention.free_oldest(&cx.cfg.dir, manifest, reason, &mut freed, |bytes| {
        bytes >= headroom || (!quota && space.room().is_some_and(|r| r >= headroom))
    });
    drop(shared);
    cx.stats
        .deleted_segments
        .fetch_add(freed.0, Ordering::Relaxed);
    cx.stats
        .deleted_for_space
        .fetch_add(freed.0, Ordering::Relaxed);
    match r {
        Ok(()) => Ok(freed),
        // Too full even for the deletion's manifest line: count it as a wait; the next
        // round writes the same line.
        Err(e2) if is_fault(&e2, Step::Manifest) => Ok(freed),
        Err(e2) => Err(e2),
    }
}

impl super::Config {
    /// Checks the sizes against each other. `Err` refuses the configuration; `Ok` carries
    /// warnings.
    pub fn validate(&self) -> Result<Vec<String>, String> {
        let mut warnings = Vec::new();
        if let Some(max) = self.max_bytes {
            if self.segment_size >= max {
                return Err(format!(
                    "-C {} is not smaller than --max-bytes {}: the open segment alone exceeds the \
                     budget and retention can only delete finalized segments; use -C ≤ {} \
                     (--max-bytes/4)",
                    human_bytes(self.segment_size),
                    human_bytes(max),
                    human_bytes(max / 4)
                ));
            }
            if self.segment_size > max / 4 {
                warnings.push(format!(
                    "-C {} is more than a quarter of --max-bytes {}: every stream's open segment \
                     counts against the disk but not the budget, so the archive can exceed it by \
                     streams × -C; use -C ≤ {}",
                    human_bytes(self.segment_size),
                    human_bytes(max),
                    human_bytes(max / 4)
                ));
            }
        }
        if let Some(MinFree::Bytes(b)) = self.min_free {
            if let Ok((_, total)) = statvfs(&self.dir) {
                if b >= total {
                    return Err(format!(
                        "--min-free {} is not smaller than the file system of {} ({})",
                        human_bytes(b),
                        self.dir.display(),
                        human_bytes(total)
                    ));
                }
            }
        }
        Ok(warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_free_parses_percent_and_sizes() {
        assert_eq!("5%".parse::<MinFree>(), Ok(MinFree::Percent(5.0)));
        assert_eq!("2GiB".parse::<MinFree>(), Ok(MinFree::Bytes(2 << 30)));
        assert!("100%".parse::<MinFree>().is_err());
        assert!("0%".parse::<MinFree>().is_err());
        assert!("lots".parse::<MinFree>().is_err());
        assert_eq!(MinFree::Percent(10.0).floor(1000), 100);
    }

    #[test]
    fn the_floor_refuses_what_would_cross_it_and_reserves_what_it_admits() {
        let dir = tempfile::tempdir().unwrap();
        let (avail, _) = statvfs(dir.path()).unwrap();
        // A floor just under what is free now: a little fits, a lot does not.
        let s = Space::new(
            dir.path(),
            Some(MinFree::Bytes(avail.saturating_sub(8 << 20))),
        );
        let e = s.admit(64 << 20).unwrap_err();
        assert!(is_fault(&e, Step::Manifest), "{e}");
        assert!(e.to_string().contains("below --min-free"), "{e}");
        s.admit(1 << 20).unwrap();
        assert!(s.lock().inflight > 1 << 20, "admitted bytes are reserved");
        s.done(1 << 20);
        assert_eq!(s.lock().inflight, 0);
        assert!(
            s.lock().reserved > 1 << 20,
            "and count until the next statvfs"
        );
        let none = Space::new(dir.path(), None);
        none.admit(u64::MAX / 2).unwrap();
    }

    #[test]
    fn a_segment_larger_than_the_budget_is_refused() {
        let mut c = super::super::Config::new("/tmp");
        c.segment_size = 256 << 20;
        c.max_bytes = Some(100 << 20);
        let e = c.validate().unwrap_err();
        assert!(
            e.contains("-C 256.0 MiB") && e.contains("--max-bytes 100.0 MiB"),
            "{e}"
        );
        c.segment_size = 50 << 20;
        assert_eq!(c.validate().unwrap().len(), 1, "more than a quarter warns");
        c.segment_size = 25 << 20;
        assert!(c.validate().unwrap().is_empty());
    }

    #[test]
    fn faults_are_told_apart() {
        let nospc = super::super::segment::at_path(
            Path::new("/x"),
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(is_fault(&nospc, Step::Manifest));
        let eio = super::super::segment::at_path(
            Path::new("/x"),
            io::Error::from_raw_os_error(libc::EIO),
        );
        assert!(is_fault(&eio, Step::Segment));
        assert!(!is_fault(&eio, Step::Manifest));
        assert!(eio.to_string().contains("Input/output error"), "{eio}");
        let perm = io::Error::from_raw_os_error(libc::EACCES);
        assert!(!is_fault(&perm, Step::Segment));
    }
}
