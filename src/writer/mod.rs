//! The writer: takes [`Event`]s from the receive backends, frames each stream's chunks,
//! cuts zstd frames at record boundaries, persists them into segments and only then drops
//! the chunks (which returns their buffers to the backend). Rotation, finalization, the
//! manifest and retention happen here too. It never touches sockets or the kernel rings.
//!
//! Per chunk the hot path is: run the framer over the chunk's bytes (headers only, no
//! copies), and when a frame is due, hand the borrowed area slices to the encoder in one
//! go. Nothing is allocated per packet.
//!
//! **The area has owners.** Every chunk a stream holds is charged to it in area granules
//! (the buffer or page a piece keeps from reuse, however few bytes it holds). A stream may
//! hold at most its share: the area divided among the open streams. Over its share, or while
//! the area is under pressure, the writer first persists the complete records it holds; what
//! is left is one incomplete record or block, which it copies out of the area into the
//! stream's own buffer (bounded in total by the copy budget, counted) so that the buffers go
//! back. A stream that would exceed the copy budget, holds an incomplete unit without a new
//! byte for the stall timeout, or (network streams) sends nothing or only a header for too
//! long is *cut*: everything complete is kept, the rest is counted as not archived, and the
//! backend closes the connection. So no sender can hold the area from the others.

pub mod hash;
pub mod pool;
pub mod segment;
pub mod space;

use crate::archive::index::{FrameEntry, FRAME_HAS_IDB};
use crate::archive::manifest::{self, Entry, SegmentEntry};
use crate::archive::{self, retention};
use crate::area::{Area, Chunk, StreamId};
use crate::flow::FlowTable;
use crate::rx::Event;
use crate::stream::{Format, Framer, UnitKind};
use hash::Lane;
use pool::{Part, Parts, Pool, Slot, Source};
pub use segment::Compress;
use segment::{Encoder, SegmentFile};
pub use space::MinFree;
use space::Step;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    /// Rotate when the stored segment reaches this many bytes.
    pub segment_size: u64,
    /// Rotate when a segment has been open this long.
    pub segment_time: Option<Duration>,
    /// With `segment_time`: rotate at wall-clock multiples of it instead (`-G 10m --align`
    /// cuts on :00, :10, …), for every stream at once.
    pub segment_align: bool,
    /// Cut every open segment when this counter changes (SIGHUP).
    pub rotate: Option<Arc<AtomicU64>>,
    /// Cut a data frame at the first record boundary past this many raw bytes.
    pub frame_size: u64,
    pub compress: Compress,
    /// Cut the open frame of a stream that has been quiet this long, so its data is on disk
    /// and its buffers go back.
    pub idle_flush: Duration,
    pub max_bytes: Option<u64>,
    pub max_age: Option<Duration>,
    /// Cut a stream that holds an incomplete record or block this long without a new byte.
    pub stall_timeout: Duration,
    /// Cut a network stream that sent nothing this long after it connected.
    pub idle_timeout: Option<Duration>,
    /// Cut a network stream that sent its header but no packet for this long.
    pub header_timeout: Option<Duration>,
    /// Bytes of incomplete units that may be copied out of the area at once, across all
    /// streams; `None`: half the area.
    pub copy_budget: Option<u64>,
    /// Threads of the compress pool shared by all writers (zstd); 0 compresses on the
    /// writer threads themselves.
    pub compress_threads: usize,
    /// Keep at least this much free on the archive's file system (statvfs): below it the
    /// writer behaves as on a full disk.
    pub min_free: Option<MinFree>,
    /// Sign every manifest line (`--sign-key`).
    pub sign: Option<crate::archive::sign::Signer>,
    /// The archive is being uploaded (`--upload`): retention evicts confirmed local copies
    /// only ([`retention::Offload`]).
    pub offload: Option<Arc<retention::Offload>>,
    /// Keep a flow index: every packet's headers are read as it is framed, and each
    /// segment gets a sidecar with one row per flow (docs/ARCHIVE.md, "Flow index").
    pub flow_index: bool,
    /// `--flow-cutoff`: store at most this much of each IP flow (needs `flow_index`).
    pub flow_cutoff: Option<Cutoff>,
}

/// Keep at most `bytes` captured bytes of each IP flow (both directions): the packet that
/// crosses the limit is kept whole, later ones are cut — dropped, or with `keep_headers`
/// truncated to their headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoff {
    pub bytes: u64,
    pub keep_headers: bool,
}

impl Config {
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            dir: dir.into(),
            segment_size: 256 << 20,
            segment_time: None,
            segment_align: false,
            rotate: None,
            frame_size: 1 << 20,
            compress: Compress::Zstd(1),
            idle_flush: Duration::from_secs(1),
            max_bytes: None,
            max_age: None,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            header_timeout: Some(DEFAULT_HEADER_TIMEOUT),
            copy_budget: None,
            compress_threads: 0,
            min_free: None,
            sign: None,
            offload: None,
            flow_index: true,
            flow_cutoff: None,
        }
    }
}

pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(3600);

/// Live counters (read by the stats line from another thread).
#[derive(Debug, Default)]
pub struct WriterStats {
    pub packets: AtomicU64,
    pub raw_bytes: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub frames: AtomicU64,
    pub segments: AtomicU64,
    pub streams_active: AtomicU64,
    pub stream_errors: AtomicU64,
    pub deleted_segments: AtomicU64,
    /// Streams the writer cut (over the copy budget, stalled, idle, header only).
    pub streams_cut: AtomicU64,
    /// Bytes received and not archived: after a cut or a framing error, or an incomplete
    /// unit at a stream's end. Each such stream names them in a log line.
    pub discarded_bytes: AtomicU64,
    /// Bytes of incomplete units copied out of the area, in total.
    pub copied_bytes: AtomicU64,
    /// Bytes copied out of the area and still held (against the copy budget).
    pub copy_in_use: AtomicU64,
    /// Segments retention left in place: their files did not match their manifest entries.
    pub retention_refused: AtomicU64,
    /// Steps that hit a full disk (ENOSPC, EDQUOT, EIO on a segment, the --min-free floor).
    pub disk_full_events: AtomicU64,
    /// Segments retention deleted to make room (also counted in `deleted_segments`).
    pub deleted_for_space: AtomicU64,
    /// Time writers spent between a full-disk fault and its end, in nanoseconds.
    pub blocked_ns: AtomicU64,
    /// Bytes received that could not be written: the disk was still full at shutdown.
    pub unwritten_bytes: AtomicU64,
    /// Steps given up at shutdown with the disk still full.
    pub gave_up: AtomicU64,
    /// Segments cut on demand (SIGHUP) or at a wall-clock boundary (`--align`).
    pub rotations: AtomicU64,
    /// Flow-index sidecars that could not be written (their segments are complete).
    pub index_errors: AtomicU64,
    /// Packets `--flow-cutoff` cut (dropped or truncated), and their bytes not stored.
    pub cut_packets: AtomicU64,
    pub cut_bytes: AtomicU64,
    /// How long finalizing a segment took (trailer, fsync, rename, manifest line).
    pub finalize: Latency,
    /// The streams being written, by name, with their own counters.
    pub open: Mutex<std::collections::BTreeMap<String, Arc<StreamCounters>>>,
}

/// One open stream's counters (bytes and packets as persisted).
#[derive(Debug, Default)]
pub struct StreamCounters {
    pub packets: AtomicU64,
    pub raw_bytes: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub frames: AtomicU64,
    pub segments: AtomicU64,
}

impl StreamCounters {
    /// What a persisted frame adds to: packets, raw bytes, stored bytes, frames.
    fn frame_fields(&self) -> [&AtomicU64; 4] {
        [
            &self.packets,
            &self.raw_bytes,
            &self.stored_bytes,
            &self.frames,
        ]
    }
}

/// A latency histogram of fixed buckets, lock-free, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct Latency {
    /// Observations at or below each bound of [`Latency::BOUNDS`]; the last counts all.
    pub buckets: [AtomicU64; 10],
    pub sum_ns: AtomicU64,
}

impl Latency {
    /// Upper bounds in seconds; the tenth bucket is +Inf.
    pub const BOUNDS: [f64; 9] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = Self::BOUNDS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(Self::BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// How one stream ended, for the final summary and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamReport {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    pub segments: u64,
    pub error: Option<String>,
    pub warnings: crate::stream::Warnings,
    /// Bytes the backend delivered for this stream.
    pub received: u64,
    /// Of those, bytes not in the archive (after a cut or error, or a truncated last unit).
    pub discarded: u64,
    /// The writer cut the stream (the reason is in `error`).
    pub cut: bool,
}

/// Errors that stop the writer (not a single stream): the archive cannot be written.
/// `Io` names the archive and keeps the OS error as its source, so `{:#}` (main) prints
/// the cause once, after the name; the cause is not repeated in its own text.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("archive {dir}")]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("archive {0} is in use by another zcap recorder (its .lock is held)")]
    Locked(PathBuf),
    #[error("{0}")]
    Config(String),
}

struct Held {
    /// Shared with the frames in flight that hold some of its bytes: the buffer goes back
    /// when the last of them is persisted. A held piece is `len` bytes at `off` in it: the
    /// whole chunk of a byte-stream backend, or one record of an [`Event::Records`] block
    /// (every record of the block shares the one `Arc`, so nothing is allocated per record).
    chunk: Arc<Chunk>,
    off: usize,
    len: usize,
    start: u64,
    /// Area granules this chunk is charged for: those it touches that the chunk before it
    /// in the stream does not.
    charge: u64,
}

impl Held {
    fn end(&self) -> u64 {
        self.start + self.len as u64
    }

    fn bytes(&self) -> &[u8] {
        &self.chunk.bytes()[self.off..self.off + self.len]
    }

    /// Offset of the piece's first byte in the area.
    fn area_off(&self) -> usize {
        self.chunk.offset() + self.off
    }
}

/// The frame being accumulated for one stream: stream bytes `start..end`, always whole units.
#[derive(Debug, Clone, Copy)]
struct OpenFrame {
    start: u64,
    end: u64,
    packets: u32,
    min_ns: i64,
    max_ns: i64,
    flags: u32,
}

impl OpenFrame {
    fn at(pos: u64) -> OpenFrame {
        OpenFrame {
            start: pos,
            end: pos,
            packets: 0,
            min_ns: i64::MAX,
            max_ns: i64::MIN,
            flags: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// What every writer thread of one archive shares: the manifest and the retention books.
struct Shared {
    manifest: manifest::Writer,
    retention: retention::Live,
}

fn lock_shared(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The parts of the writer every stream shares.
struct Ctx<'a> {
    cfg: &'a Config,
    shared: &'a Mutex<Shared>,
    enc: &'a mut Encoder,
    stats: &'a WriterStats,
    /// Bytes of chunks held in open frames across this writer's streams (not those queued).
    held_total: &'a mut u64,
    /// The compress pool (zstd with `--compress-threads` > 0).
    pool: Option<&'a Pool>,
    /// This writer's hash lane (`--compress-threads` > 0): segment SHA-256s off this thread.
    lane: Option<&'a Lane>,
    /// Frames of this writer handed to the persist step and not yet persisted, and the
    /// order they were cut in (stream, frame number).
    inflight: &'a mut usize,
    order: &'a mut VecDeque<(StreamId, u64)>,
    /// Writer threads sharing the receive area; each may hold its share of it.
    writers: usize,
    /// Free space: the `--min-free` books and this writer's full-disk state.
    disk: &'a mut space::Disk,
}

struct StreamState {
    id: StreamId,
    name: String,
    dir: PathBuf,
    framer: Framer,
    held: VecDeque<Held>,
    frame: OpenFrame,
    seg: Option<SegmentFile>,
    seq: u64,
    /// The next segment repeats the stream's header (a rotation) rather than starting the
    /// stream or a new pcapng section.
    cont: bool,
    failed: Option<String>,
    last_data: Instant,
    opened: Instant,
    /// Connections are subject to the idle and header timeouts; files are not.
    network: bool,
    area: Arc<Area>,
    /// Bytes delivered, including any dropped after the stream failed.
    received: u64,
    /// Area granules charged for the held chunks.
    charge: u64,
    /// Bytes of the incomplete unit copied out of the area: stream bytes
    /// `spill_start..spill_start + spill.len()`; the held chunks follow them.
    spill: Vec<u8>,
    spill_start: u64,
    /// Stream offset up to which everything is archived, frozen when the stream failed.
    archived_upto: Option<u64>,
    cut: bool,
    segments: u64,
    /// Segments finalized since the current pcapng section began.
    section_segments: u64,
    /// Link types declared in the open segment (its section's, as of its last IDB).
    seg_linktypes: Arc<[u32]>,
    /// The area's kernel drop count when the previous segment was finalized (live capture):
    /// each segment records the drops since, so a stream's segments add up to all of them.
    seg_drops_from: u64,
    /// Set when the disk was still full at shutdown: bytes received and not written.
    unwritten: Option<u64>,
    /// Work for the persist step, in stream order: frames (compressing in the pool or to be
    /// encoded here), section ends, age checks.
    ops: VecDeque<Op>,
    /// The segment header as of the open frame's first unit (a segment that this frame
    /// opens starts with it), and the cache it is taken from.
    frame_header: Option<Arc<[u8]>>,
    frame_linktypes: Option<Arc<[u32]>>,
    header_cache: Option<(u64, usize, Arc<[u8]>)>,
    linktypes_cache: Option<(u64, usize, Arc<[u32]>)>,
    /// Sections begun so far (the caches' key).
    section_no: u64,
    /// Bytes this stream needs to copy out of the area and the copy budget has no room for.
    wants_copy: u64,
    /// Frames handed to the persist step, and frames persisted.
    submitted: u64,
    persisted: u64,
    /// With `--align`: the wall-clock end (ns) of the period the open segment belongs to.
    period_end: Option<i64>,
    counters: Arc<StreamCounters>,
    /// The flow index ([`Config::flow_index`]).
    flows: Option<Box<Flows>>,
    /// `--flow-cutoff`: the open frame's cut packets, in stream order; the truncated
    /// records that replace some of them; and how many bytes shorter than the received
    /// stream the archived one is before the open frame (segments record their offsets in
    /// the archived stream, which stays one valid capture).
    edits: Vec<Edit>,
    patch: Vec<u8>,
    shrunk: u64,
    /// Packets `--flow-cutoff` cut, and those of them dropped whole.
    cut_packets: u64,
    dropped: u64,
}

/// A stream's flow index: the open frame's flows (framing side), the open segment's
/// (persist side: each persisted frame's table is absorbed into it under the frame's index
/// in the segment), and frame tables kept for reuse, so that steady state allocates nothing.
#[derive(Default)]
struct Flows {
    frame: FlowTable,
    segment: FlowTable,
    spare: Vec<FlowTable>,
    /// Copy of a packet's first bytes when they straddle two held pieces.
    scratch: Vec<u8>,
    /// `--flow-cutoff`: what each flow stored so far, and a packet's record header when it
    /// straddles two pieces.
    budget: crate::flow::Budget,
    head: Vec<u8>,
}

/// A packet `--flow-cutoff` cut from the open frame: stream bytes `start..end` are left
/// out, and `patch` (a range of [`StreamState::patch`]) takes their place: the record
/// truncated to its headers, or nothing.
#[derive(Debug, Clone, Copy)]
struct Edit {
    start: u64,
    end: u64,
    patch: (usize, usize),
}

/// Bytes of a packet's head copied when it straddles two pieces; re-read up to
/// [`HEAD_COPY_MAX`] when its headers run past them.
const HEAD_COPY: usize = 192;
const HEAD_COPY_MAX: usize = 2048;

impl Flows {
    /// The open frame's table, handed to its [`FrameOp`]; a fresh (reused) one takes over.
    fn take_frame(&mut self) -> FlowTable {
        let next = self.spare.pop().unwrap_or_default();
        std::mem::replace(&mut self.frame, next)
    }

    fn recycle(&mut self, mut t: FlowTable) {
        t.clear();
        if self.spare.len() < 8 {
            self.spare.push(t);
        }
    }
}

/// Now, as nanoseconds since the epoch.
fn wall_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The first multiple of `period` after `now`.
fn next_multiple(now: i64, period: i64) -> i64 {
    (now.div_euclid(period) + 1) * period
}

/// A step for the persist side, kept in stream order.
enum Op {
    Frame(Box<FrameOp>),
    /// Finalize the open segment now (SIGHUP, a wall-clock boundary with `--align`).
    Rotate,
    /// A new pcapng section began: finalize the segment (keeping a section that had no data
    /// as a header-only segment).
    Section {
        prev_header: Arc<[u8]>,
        prev_linktypes: Arc<[u32]>,
        at: u64,
    },
    /// Rotate the open segment if `-G` says it is old.
    RotateIfOld,
    /// The flows of a frame whose every packet `--flow-cutoff` cut: counted, not stored.
    Cut(FlowTable),
}

struct FrameOp {
    parts: Arc<Parts>,
    /// Where the pool leaves the compressed frame; `None`: encode while persisting (no pool,
    /// or `--compress none`, whose frames are written straight from the parts).
    slot: Option<Arc<Slot>>,
    encoded: Option<Vec<u8>>,
    entry: FrameEntry,
    raw: u64,
    /// Stream offset of its first byte.
    start: u64,
    /// The header of a segment that this frame opens.
    header: Arc<[u8]>,
    /// The section's link types after this frame.
    linktypes: Arc<[u32]>,
    format: Option<Format>,
    /// The frame's flows (with the flow index).
    flows: Option<FlowTable>,
}

/// How long [`StreamState::pump`] waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Persist what is ready, wait for nothing.
    Ready,
    /// Wait until frame number `n` (counted from 0) is persisted.
    Frame(u64),
    /// Persist everything.
    All,
}

/// Stream bytes `at..at + len` as one slice, when one piece holds them all: the copied-out
/// bytes (`spill`, from its stream offset) or a held piece.
fn contiguous<'a>(
    held: &'a VecDeque<Held>,
    spill: (u64, &'a [u8]),
    at: u64,
    len: usize,
) -> Option<&'a [u8]> {
    let end = at + len as u64;
    let (s0, sb) = spill;
    if at >= s0 && end <= s0 + sb.len() as u64 {
        return Some(&sb[(at - s0) as usize..(end - s0) as usize]);
    }
    // The packet just completed: it is in the newest pieces.
    let h = held
        .iter()
        .rev()
        .take_while(|h| h.end() >= at)
        .find(|h| h.start <= at && end <= h.end())?;
    Some(&h.bytes()[(at - h.start) as usize..(end - h.start) as usize])
}

/// Copies stream bytes `at..at + len` from the pieces that hold them into `out`; returns
/// how many it copied (fewer only if the pieces end first). The copied-out bytes come
/// before every held piece (copying out releases all of them).
fn gather(
    held: &VecDeque<Held>,
    spill: (u64, &[u8]),
    at: u64,
    len: usize,
    out: &mut Vec<u8>,
) -> usize {
    out.clear();
    let end = at + len as u64;
    let (s0, sb) = spill;
    let pieces = std::iter::once((s0, sb)).chain(held.iter().map(|h| (h.start, h.bytes())));
    for (p0, bytes) in pieces {
        let p1 = p0 + bytes.len() as u64;
        let want = at + out.len() as u64;
        if want >= end {
            break;
        }
        if p0 <= want && want < p1 {
            let upto = p1.min(end);
            out.extend_from_slice(&bytes[(want - p0) as usize..(upto - p0) as usize]);
        }
    }
    out.len()
}

/// The record or block header of the unit at stream offset `at` (its first `len` bytes),
/// in place or copied into `out`.
fn head_of<'a>(
    held: &'a VecDeque<Held>,
    spill: (u64, &'a [u8]),
    at: u64,
    len: usize,
    out: &'a mut Vec<u8>,
) -> &'a [u8] {
    match contiguous(held, spill, at, len) {
        Some(h) => h,
        None => {
            let n = gather(held, spill, at, len, out);
            &out[..n]
        }
    }
}

/// Appends to `out` the record whose header is `head` cut to its first captured bytes
/// `data` (the wire length stays): a pcap record, or a pcapng EPB without its options.
/// Returns false, appending nothing, for other blocks (an SPB cannot say it was cut).
fn truncated_record(format: Option<Format>, head: &[u8], data: &[u8], out: &mut Vec<u8>) -> bool {
    let put = |out: &mut Vec<u8>, v: u32, be: bool| {
        out.extend_from_slice(&if be { v.to_be_bytes() } else { v.to_le_bytes() })
    };
    match format {
        Some(Format::Pcap(fh)) if head.len() == crate::stream::pcap::RECORD_HEADER_LEN => {
            out.extend_from_slice(&head[..8]);
            put(out, data.len() as u32, fh.big_endian);
            out.extend_from_slice(&head[12..16]);
            out.extend_from_slice(data);
            true
        }
        Some(Format::PcapNg { big_endian: be })
            if head.len() == 28
                && crate::stream::pcap::rd32(head, be) == crate::stream::pcapng::EPB =>
        {
            let padded = data.len().div_ceil(4) * 4;
            let total = (32 + padded) as u32;
            out.extend_from_slice(&head[..4]);
            put(out, total, be);
            out.extend_from_slice(&head[8..20]);
            put(out, data.len() as u32, be);
            out.extend_from_slice(&head[24..28]);
            out.extend_from_slice(data);
            out.resize(out.len() + padded - data.len(), 0);
            put(out, total, be);
            true
        }
        _ => false,
    }
}

/// Builds a frame's parts from its pieces in stream order, leaving out the ranges the
/// frame's [`Edit`]s cut and putting each one's patch in its place.
struct Pieces<'a> {
    parts: &'a mut Parts,
    edits: std::iter::Peekable<std::slice::Iter<'a, Edit>>,
    /// The frame's patches, shared by its parts (taken on the first one).
    patch: &'a mut Vec<u8>,
    patches: Option<Arc<Vec<u8>>>,
    /// The next edit's patch is in already (the edit spans pieces).
    patched: bool,
}

impl<'a> Pieces<'a> {
    fn new(parts: &'a mut Parts, edits: &'a [Edit], patch: &'a mut Vec<u8>) -> Pieces<'a> {
        Pieces {
            parts,
            edits: edits.iter().peekable(),
            patch,
            patches: None,
            patched: false,
        }
    }

    /// Adds stream bytes `at..at + len`, which are `len` bytes at `off` of `src`.
    fn add(&mut self, src: Source, at: u64, off: usize, len: usize) {
        let end = at + len as u64;
        let mut s = at;
        while s < end {
            let Some(&&e) = self.edits.peek().filter(|e| e.start < end) else {
                self.push(&src, off + (s - at) as usize, (end - s) as usize);
                return;
            };
            if e.start > s {
                self.push(&src, off + (s - at) as usize, (e.start - s) as usize);
            }
            if !self.patched && e.patch.1 > 0 {
                let p = Arc::clone(
                    self.patches
                        .get_or_insert_with(|| Arc::new(std::mem::take(self.patch))),
                );
                self.parts.0.push(Part {
                    src: Source::Copied(p),
                    off: e.patch.0,
                    len: e.patch.1,
                });
            }
            self.patched = true;
            s = e.end.min(end);
            if e.end <= end {
                self.edits.next();
                self.patched = false;
            }
        }
    }

    fn push(&mut self, src: &Source, off: usize, len: usize) {
        let src = match src {
            Source::Chunk(c) => Source::Chunk(Arc::clone(c)),
            Source::Copied(v) => Source::Copied(Arc::clone(v)),
        };
        self.parts.0.push(Part { src, off, len });
    }
}

impl StreamState {
    fn push(&mut self, chunk: Chunk, cx: &mut Ctx) -> io::Result<()> {
        let len = chunk.len();
        self.push_piece(Arc::new(chunk), 0, len, cx)
    }

    /// Frames `len` bytes at `off` of `chunk` as the stream's next bytes.
    fn push_piece(
        &mut self,
        chunk: Arc<Chunk>,
        off: usize,
        len: usize,
        cx: &mut Ctx,
    ) -> io::Result<()> {
        self.received += len as u64;
        if self.failed.is_some() {
            // Dropping the chunk releases it; its bytes are counted, not archived.
            cx.stats
                .discarded_bytes
                .fetch_add(len as u64, Ordering::Relaxed);
            return Ok(());
        }
        self.last_data = Instant::now();
        self.check_align(cx)?;
        let start = self.framer.position();
        crate::area::prefetch(&chunk.bytes()[off..off + len]);
        let charge = self.charge_of(chunk.offset() + off, len);
        self.charge += charge;
        self.held.push_back(Held {
            chunk,
            off,
            len,
            start,
            charge,
        });
        *cx.held_total += len as u64;
        let mut pos = 0;
        while pos < len {
            // The chunk stays the newest held one: cuts only release chunks wholly before the
            // open frame, and this one still has unframed bytes.
            let newest = self.held.back().expect("pushed above");
            let step = self.framer.step(&newest.bytes()[pos..]);
            let (n, unit) = match step {
                Ok(r) => r,
                Err(e) => {
                    let unframed = (len - pos) as u64;
                    self.fail(&format!("closed: {e}"), unframed, cx)?;
                    self.area.abort(self.id);
                    return Ok(());
                }
            };
            pos += n;
            if let Some(u) = unit {
                let mut dropped = false;
                if let UnitKind::Packet { ts_ns } = u.kind {
                    dropped = self.count_flow(u, ts_ns, cx);
                }
                self.on_unit(u, dropped, cx)?;
            }
        }
        // Backpressure valve: when open frames hold half the area, the backend could run dry
        // with nothing left to release; persist what this stream has, even if the frame is
        // small, so its buffers go back.
        if *cx.held_total as usize > self.area.len() / (2 * cx.writers) {
            self.cut(cx)?;
        }
        if self.charge > self.share(cx) {
            self.make_room(cx)?;
        }
        Ok(())
    }

    /// Counts the packet the framer just completed into the open frame's flows, and applies
    /// `--flow-cutoff` to it; returns whether it is left out whole. Its headers are read
    /// where they lie in the held pieces (or the copied-out bytes); only a head that
    /// straddles two pieces is copied, and only its first bytes.
    fn count_flow(&mut self, u: crate::stream::Unit, ts_ns: i64, cx: &Ctx) -> bool {
        let Some(fl) = self.flows.as_deref_mut() else {
            return false;
        };
        let p = self.framer.packet();
        let at = u.start + u64::from(p.data_off);
        let caplen = p.caplen as usize;
        let (held, spill) = (&self.held, (self.spill_start, &self.spill[..]));
        let (mut h, data) = match contiguous(held, spill, at, caplen) {
            Some(data) => (crate::flow::parse(p.linktype, data), data),
            None => {
                let mut n = gather(held, spill, at, caplen.min(HEAD_COPY), &mut fl.scratch);
                let mut h = crate::flow::parse(p.linktype, &fl.scratch[..n]);
                if h.truncated && caplen > n {
                    n = gather(held, spill, at, caplen.min(HEAD_COPY_MAX), &mut fl.scratch);
                    h = crate::flow::parse(p.linktype, &fl.scratch[..n]);
                }
                (h, &fl.scratch[..n])
            }
        };
        if h.truncated && data.len() < caplen {
            // Headers longer than what was read: the row must not claim to know them.
            h.malformed = true;
        }
        let cutoff = cx.cfg.flow_cutoff.filter(|_| {
            !h.malformed
                && matches!(
                    h.l3,
                    crate::flow::L3::V4 { .. } | crate::flow::L3::V6 { .. }
                )
        });
        let Some(c) = cutoff else {
            fl.frame.add(&h, ts_ns, p.wire_len, 0);
            return false;
        };
        let (key, reverse) = crate::flow::FlowKey::of(&h);
        if fl.budget.admit(&key, caplen as u64, c.bytes) {
            fl.frame.add_keyed(key, reverse, ts_ns, p.wire_len, 0);
            return false;
        }
        // Cut. With `keep_headers`, a pcap record or an EPB is kept truncated to its headers.
        let keep = crate::flow::parse::headers_len(&h, data).min(caplen);
        let patch_at = self.patch.len();
        let truncated = c.keep_headers
            && truncated_record(
                self.framer.format(),
                head_of(held, spill, u.start, p.data_off as usize, &mut fl.head),
                &data[..keep.min(data.len())],
                &mut self.patch,
            );
        let stored = self.patch.len() - patch_at;
        self.edits.push(Edit {
            start: u.start,
            end: u.end(),
            patch: (patch_at, stored),
        });
        let frame = truncated.then_some(0);
        self.cut_packets += 1;
        self.dropped += u64::from(!truncated);
        fl.frame.add_cut(
            (key, reverse),
            ts_ns,
            p.wire_len,
            (u.len as usize - stored) as u32,
            frame,
        );
        cx.stats.cut_packets.fetch_add(1, Ordering::Relaxed);
        cx.stats
            .cut_bytes
            .fetch_add(u.len - stored as u64, Ordering::Relaxed);
        !truncated
    }

    /// Granules a piece of `len` bytes at area offset `off` adds to what the stream holds
    /// (see [`Held::charge`]).
    fn charge_of(&self, off: usize, len: usize) -> u64 {
        if len == 0 {
            return 0;
        }
        let g = self.area.granule();
        let (first, last) = (off / g, (off + len - 1) / g);
        let shared = self
            .held
            .back()
            .is_some_and(|h| h.len > 0 && (h.area_off() + h.len - 1) / g == first);
        (last - first + 1) as u64 - u64::from(shared)
    }

    /// The most area this stream may hold, in granules: its part of the area among the open
    /// streams, never less than four granules.
    fn share(&self, cx: &Ctx) -> u64 {
        let granules = (self.area.len() / self.area.granule()) as u64;
        let open = cx.stats.streams_active.load(Ordering::Relaxed).max(1);
        (granules / open).max(4)
    }

    /// The stream holds more area than it may (or the area is under pressure): persist its
    /// complete units, then copy its incomplete one out of the area, or cut the stream when
    /// the copy budget cannot take it.
    fn make_room_as(&mut self, last_resort: bool, cx: &mut Ctx) -> io::Result<()> {
        self.wants_copy = 0;
        self.cut(cx)?;
        if self.failed.is_some() || self.charge <= 2 {
            return Ok(());
        }
        let from = if self.spill.is_empty() {
            self.frame.end
        } else {
            self.spill_start + self.spill.len() as u64
        };
        let upto = self.framer.position();
        let need = upto.saturating_sub(from);
        let budget = cx.cfg.copy_budget.unwrap_or(self.area.len() as u64 / 2);
        let in_use = cx.stats.copy_in_use.load(Ordering::Relaxed);
        if in_use + need > budget && !last_resort {
            // The writer makes room by cutting the largest holder of the budget, then asks
            // again (see `Writer::find_copy_budget`).
            self.wants_copy = need;
            return Ok(());
        }
        self.wants_copy = 0;
        if in_use + need > budget {
            let total = upto - self.frame.end;
            let reason = format!(
                "an incomplete {} of {} so far holds more than its share of the receive area, \
                 and copying it out would exceed the copy budget ({} of {} in use); raise \
                 --area-size",
                self.framer_noun(),
                crate::units::human_bytes(total),
                crate::units::human_bytes(in_use),
                crate::units::human_bytes(budget),
            );
            return self.cut_off(&reason, cx);
        }
        if self.spill.is_empty() {
            self.spill_start = from;
        }
        for h in &self.held {
            let (s, e) = (h.start.max(from), h.end().min(upto));
            if s < e {
                self.spill
                    .extend_from_slice(&h.bytes()[(s - h.start) as usize..(e - h.start) as usize]);
            }
        }
        debug_assert_eq!(self.spill_start + self.spill.len() as u64, upto);
        cx.stats.copy_in_use.fetch_add(need, Ordering::Relaxed);
        cx.stats.copied_bytes.fetch_add(need, Ordering::Relaxed);
        for h in self.held.drain(..) {
            *cx.held_total -= h.len as u64;
        }
        self.charge = 0;
        Ok(())
    }

    fn make_room(&mut self, cx: &mut Ctx) -> io::Result<()> {
        self.make_room_as(false, cx)
    }

    fn framer_noun(&self) -> &'static str {
        match self.framer.format() {
            Some(Format::Pcap(_)) => "record",
            Some(Format::PcapNg { .. }) => "block",
            None => "file header",
        }
    }

    /// Bytes of the unit in progress (received, not yet a complete unit).
    fn incomplete(&self) -> u64 {
        self.framer.position() - self.frame.end
    }

    /// With `-G --align`: once the wall clock passes the current period's end, the open
    /// segment is cut there (before the bytes that arrive after it).
    fn check_align(&mut self, cx: &mut Ctx) -> io::Result<()> {
        let Some(t) = cx.cfg.segment_time.filter(|_| cx.cfg.segment_align) else {
            return Ok(());
        };
        let period = (t.as_nanos() as i64).max(1);
        let now = wall_ns();
        let end = *self
            .period_end
            .get_or_insert_with(|| next_multiple(now, period));
        if now < end {
            return Ok(());
        }
        self.period_end = Some(next_multiple(now, period));
        self.rotate_now(cx)
    }

    /// Cuts the open frame and finalizes the open segment after it (SIGHUP, `--align`).
    fn rotate_now(&mut self, cx: &mut Ctx) -> io::Result<()> {
        if self.failed.is_some() || self.unwritten.is_some() {
            return Ok(());
        }
        self.cut(cx)?;
        if self.seg.is_some() || self.ops.iter().any(|o| matches!(o, Op::Frame(_))) {
            cx.stats.rotations.fetch_add(1, Ordering::Relaxed);
        }
        self.ops.push_back(Op::Rotate);
        self.pump(Until::All, cx)
    }

    /// Ends the stream for breaking a limit: keeps what is complete, counts the rest, and
    /// has the backend close the connection.
    fn cut_off(&mut self, reason: &str, cx: &mut Ctx) -> io::Result<()> {
        self.cut = true;
        cx.stats.streams_cut.fetch_add(1, Ordering::Relaxed);
        self.fail(&format!("cut: {reason}"), 0, cx)?;
        self.area.abort(self.id);
        Ok(())
    }

    /// Time-driven limits: idle and header-only network streams, stalled incomplete units,
    /// and an area under pressure.
    fn check_limits(&mut self, now: Instant, cx: &mut Ctx) -> io::Result<()> {
        if self.failed.is_some() {
            return Ok(());
        }
        let age = now.saturating_duration_since(self.opened);
        let quiet = now.saturating_duration_since(self.last_data);
        let secs = |d: Duration| humantime::format_duration(d).to_string();
        if self.network {
            if let Some(t) = cx
                .cfg
                .idle_timeout
                .filter(|t| self.received == 0 && age >= *t)
            {
                return self.cut_off(
                    &format!("sent nothing for {} (--idle-timeout)", secs(t)),
                    cx,
                );
            }
            if let Some(t) = cx
                .cfg
                .header_timeout
                .filter(|t| self.framer.packets() == 0 && self.received > 0 && age >= *t)
            {
                return self.cut_off(
                    &format!(
                        "sent no packet for {} after connecting (--header-timeout)",
                        secs(t)
                    ),
                    cx,
                );
            }
        }
        let stall = cx.cfg.stall_timeout;
        if self.incomplete() > 0 && quiet >= stall {
            let reason = format!(
                "held {} of an incomplete {} for {} without a new byte (--stall-timeout)",
                crate::units::human_bytes(self.incomplete()),
                self.framer_noun(),
                secs(stall)
            );
            return self.cut_off(&reason, cx);
        }
        if self.area.under_pressure() && self.charge > 2 {
            self.make_room(cx)?;
        }
        Ok(())
    }

    /// Adds a complete unit to the open frame; `dropped`: a packet `--flow-cutoff` left
    /// out whole (the frame's byte range covers it, its packets do not count it).
    fn on_unit(&mut self, u: crate::stream::Unit, dropped: bool, cx: &mut Ctx) -> io::Result<()> {
        match u.kind {
            UnitKind::Header => {
                debug_assert!(self.frame.is_empty());
                self.frame = OpenFrame::at(u.end());
                self.release(cx);
            }
            UnitKind::Section => {
                self.cut(cx)?;
                let prev_header: Arc<[u8]> = self.framer.previous_header().into();
                let prev_linktypes: Arc<[u32]> = self.framer.previous_linktypes().into();
                self.section_no += 1;
                self.ops.push_back(Op::Section {
                    prev_header,
                    prev_linktypes,
                    at: u.start - self.shrunk,
                });
                self.frame = OpenFrame::at(u.end());
                self.release(cx);
                self.pump(Until::Ready, cx)?;
            }
            kind => {
                if self.frame.is_empty() {
                    // A segment this frame opens starts with the header as of now; a late IDB
                    // that begins the frame is in its data already: keep it out.
                    let hdr = if kind == UnitKind::LateInterface {
                        let h = self.framer.header();
                        Arc::from(&h[..h.len() - u.len as usize])
                    } else {
                        self.header()
                    };
                    self.frame_header = Some(hdr);
                    self.frame_linktypes = Some(self.linktypes());
                }
                self.frame.end = u.end();
                match kind {
                    UnitKind::Packet { .. } if dropped => {}
                    UnitKind::Packet { ts_ns } => {
                        self.frame.packets += 1;
                        self.frame.min_ns = self.frame.min_ns.min(ts_ns);
                        self.frame.max_ns = self.frame.max_ns.max(ts_ns);
                    }
                    UnitKind::LateInterface => {
                        self.frame.flags |= FRAME_HAS_IDB;
                        self.frame_linktypes = Some(self.linktypes());
                    }
                    _ => {}
                }
                if self.frame.end - self.frame.start >= cx.cfg.frame_size {
                    self.cut(cx)?;
                }
            }
        }
        Ok(())
    }

    /// The framer's current header, shared (copied only when it changed).
    fn header(&mut self) -> Arc<[u8]> {
        let h = self.framer.header();
        match &self.header_cache {
            Some((sec, len, a)) if *sec == self.section_no && *len == h.len() => Arc::clone(a),
            _ => {
                let a: Arc<[u8]> = h.into();
                self.header_cache = Some((self.section_no, h.len(), Arc::clone(&a)));
                a
            }
        }
    }

    /// The current section's link types, shared (copied only when they changed).
    fn linktypes(&mut self) -> Arc<[u32]> {
        let n = self.framer.interfaces().len();
        match &self.linktypes_cache {
            Some((sec, len, a)) if *sec == self.section_no && *len == n => Arc::clone(a),
            _ => {
                let a: Arc<[u32]> = self.framer.linktypes().into();
                self.linktypes_cache = Some((self.section_no, n, Arc::clone(&a)));
                a
            }
        }
    }

    /// Opens the next segment (persist side), starting with `header`.
    fn open_segment(
        &mut self,
        header: &[u8],
        stream_off: u64,
        format: Option<Format>,
        linktypes: Arc<[u32]>,
        cx: &mut Ctx,
    ) -> io::Result<()> {
        self.seq += 1;
        self.seg_linktypes = linktypes;
        let pcapng = matches!(format, Some(Format::PcapNg { .. }));
        let name = archive::segment_name(self.seq, pcapng);
        let need = space::frame_bound(header.len() as u64);
        // With a pool, its workers compress the header too: the writer's own encoder then
        // never builds its (level-sized) tables.
        let encoded = match (cx.pool, cx.cfg.compress) {
            (Some(pool), Compress::Zstd(_)) => {
                let parts = Parts(vec![Part {
                    src: Source::Copied(Arc::new(header.to_vec())),
                    off: 0,
                    len: header.len(),
                }]);
                Some(pool.submit(Arc::new(parts)).take()?)
            }
            _ => None,
        };
        self.seg = Some(space::persist(
            cx,
            Step::Segment,
            need,
            |cx| match &encoded {
                Some(bytes) => SegmentFile::create_encoded(
                    &self.dir,
                    &name,
                    self.seq,
                    header.len(),
                    bytes,
                    self.cont,
                    stream_off,
                    cx.lane,
                ),
                None => SegmentFile::create(
                    &self.dir, &name, self.seq, header, self.cont, stream_off, cx.enc, cx.lane,
                ),
            },
        )?);
        if let (Some(pool), Some(buf)) = (cx.pool, encoded) {
            pool.recycle(buf);
        }
        Ok(())
    }

    /// Closes the open frame (framing side): hands its bytes — the held chunks and any
    /// copied-out bytes that fall in it — to the pool to compress (or to the persist step to
    /// encode), then releases every held chunk that lies wholly before the next frame. The
    /// chunks stay alive through the frame until it is persisted.
    fn cut(&mut self, cx: &mut Ctx) -> io::Result<()> {
        let f = self.frame;
        if !f.is_empty() {
            let mut parts = Parts(Vec::with_capacity(
                self.held.len() + 1 + 2 * self.edits.len(),
            ));
            let mut pieces = Pieces::new(&mut parts, &self.edits, &mut self.patch);
            if !self.spill.is_empty() {
                let (a, b) = (self.spill_start, self.spill_start + self.spill.len() as u64);
                if a.max(f.start) < b.min(f.end) {
                    // The copied bytes are one unit, wholly in this frame: they go with it.
                    debug_assert!(
                        a >= f.start && b <= f.end,
                        "a copied-out unit is split by a frame"
                    );
                    let n = self.spill.len() as u64;
                    cx.stats.copy_in_use.fetch_sub(n, Ordering::Relaxed);
                    let src = Source::Copied(Arc::new(std::mem::take(&mut self.spill)));
                    pieces.add(src, a, 0, n as usize);
                }
            }
            for h in &self.held {
                let (s, e) = (h.start.max(f.start), h.end().min(f.end));
                if s < e {
                    let off = h.off + (s - h.start) as usize;
                    pieces.add(
                        Source::Chunk(Arc::clone(&h.chunk)),
                        s,
                        off,
                        (e - s) as usize,
                    );
                }
            }
            self.edits.clear();
            self.patch.clear();
            let raw = parts.raw_len();
            let start = f.start - self.shrunk;
            self.shrunk += (f.end - f.start) - raw;
            if raw == 0 {
                // Every packet of the frame was cut: nothing to store.
                self.frame_header = None;
                self.frame_linktypes = None;
                self.frame = OpenFrame::at(f.end);
                if let Some(fl) = self.flows.as_deref_mut() {
                    // Its cut counts go to the segment the frames before it go to.
                    self.ops.push_back(Op::Cut(fl.take_frame()));
                }
                self.release(cx);
                return self.pump(Until::Ready, cx);
            }
            let parts = Arc::new(parts);
            let slot = match (cx.pool, cx.cfg.compress) {
                (Some(pool), Compress::Zstd(_)) => Some(pool.submit(Arc::clone(&parts))),
                _ => None,
            };
            let header = match self.frame_header.take() {
                Some(h) => h,
                None => self.header(),
            };
            // As of the frame's last unit: at a new section the framer has moved on already.
            let linktypes = match self.frame_linktypes.take() {
                Some(l) => l,
                None => self.linktypes(),
            };
            self.ops.push_back(Op::Frame(Box::new(FrameOp {
                parts,
                slot,
                encoded: None,
                entry: FrameEntry {
                    min_ns: if f.packets > 0 { f.min_ns } else { 0 },
                    max_ns: if f.packets > 0 { f.max_ns } else { 0 },
                    packets: f.packets,
                    flags: f.flags,
                    ..FrameEntry::default()
                },
                raw,
                start,
                header,
                linktypes,
                format: self.framer.format(),
                flows: self.flows.as_deref_mut().map(Flows::take_frame),
            })));
            cx.order.push_back((self.id, self.submitted));
            self.submitted += 1;
            *cx.inflight += 1;
            self.frame = OpenFrame::at(f.end);
        }
        self.release(cx);
        self.pump(Until::Ready, cx)
    }

    /// The persist step: works through [`StreamState::ops`] in order — writes each frame
    /// once it is compressed (SHA-256, index, rotation, finalize), and only then drops its
    /// parts, which gives their buffers back. Waits as `until` says.
    fn pump(&mut self, until: Until, cx: &mut Ctx) -> io::Result<()> {
        loop {
            let wait = match until {
                Until::Ready => false,
                Until::Frame(n) => self.persisted <= n,
                Until::All => true,
            };
            let Some(op) = self.ops.front_mut() else {
                return Ok(());
            };
            match op {
                Op::Frame(f) => {
                    if f.encoded.is_none() {
                        if let Some(slot) = &f.slot {
                            let done = if wait {
                                Some(slot.take())
                            } else {
                                slot.try_take()
                            };
                            match done {
                                Some(r) => f.encoded = Some(r?),
                                None => return Ok(()),
                            }
                        }
                    }
                    let Some(Op::Frame(mut f)) = self.ops.pop_front() else {
                        unreachable!("front was a frame")
                    };
                    if let Err(e) = self.persist_frame(&mut f, cx) {
                        // Keep it first in line: a retry (or the shutdown's accounting) finds it.
                        self.ops.push_front(Op::Frame(f));
                        return Err(e);
                    }
                    drop(f); // our hold on its chunks: their buffers go back now (or once hashed)
                    self.persisted += 1;
                    *cx.inflight -= 1;
                }
                Op::Section {
                    prev_header,
                    prev_linktypes,
                    at,
                } => {
                    let (hdr, lts, at) = (Arc::clone(prev_header), Arc::clone(prev_linktypes), *at);
                    if self.seg.is_none() && self.section_segments == 0 {
                        // The section that ended had no blocks after its header: keep it.
                        self.open_segment(&hdr, at, self.framer.format(), lts, cx)?;
                    }
                    self.finish_segment(cx)?;
                    self.section_segments = 0;
                    self.cont = false;
                    self.ops.pop_front();
                }
                Op::Cut(_) => {
                    let Some(Op::Cut(t)) = self.ops.pop_front() else {
                        unreachable!("front was a cut frame")
                    };
                    if let Some(fl) = self.flows.as_deref_mut() {
                        fl.segment.absorb(&t, 0);
                        fl.recycle(t);
                    }
                }
                Op::RotateIfOld | Op::Rotate => {
                    let old = self.seg.as_ref().is_some_and(|s| {
                        matches!(op, Op::Rotate)
                            || cx.cfg.segment_time.is_some_and(|t| s.opened.elapsed() >= t)
                    });
                    if old {
                        self.finish_segment(cx)?;
                        self.cont = true;
                    }
                    self.ops.pop_front();
                }
            }
        }
    }

    /// Writes one frame into the open segment (opening one if none is), then rotates when
    /// the segment is full.
    fn persist_frame(&mut self, f: &mut FrameOp, cx: &mut Ctx) -> io::Result<()> {
        if self.seg.is_none() {
            let (header, linktypes) = (Arc::clone(&f.header), Arc::clone(&f.linktypes));
            self.open_segment(&header, f.start, f.format, linktypes, cx)?;
        }
        let seg = self.seg.as_mut().expect("opened above");
        let before = seg.len;
        // A failed write is rolled back and the frame written again from the same bytes:
        // the segment ends up as if the fault never happened.
        let need = space::frame_bound(f.raw);
        match f.encoded.take() {
            Some(bytes) => {
                let r = space::persist(cx, Step::Segment, need, |_| {
                    seg.push_encoded(&bytes, f.raw as u32, f.entry)
                });
                if let Err(e) = r {
                    f.encoded = Some(bytes);
                    return Err(e);
                }
                // Hashed on the lane, which recycles the buffer; or here.
                if let (Some(buf), Some(pool)) = (seg.hand_over(bytes)?, cx.pool) {
                    pool.recycle(buf);
                }
            }
            None => {
                let parts = f.parts.slices();
                let keep = cx.lane.map(|_| &f.parts);
                space::persist(cx, Step::Segment, need, |cx| {
                    seg.push_frame(&parts, keep, f.entry, cx.enc)
                })?
            }
        }
        self.seg_linktypes = Arc::clone(&f.linktypes);
        if let (Some(t), Some(fl)) = (f.flows.take(), self.flows.as_deref_mut()) {
            let index = seg.trailer.frames.len() as u32 - 1;
            fl.segment.absorb(&t, index);
            fl.recycle(t);
        }
        let (packets, stored) = (f.entry.packets as u64, seg.len - before);
        // The archive's totals and this stream's own (metrics) count the frame alike.
        let add = |fields: [&AtomicU64; 4]| {
            for (field, n) in fields.into_iter().zip([packets, f.raw, stored, 1]) {
                field.fetch_add(n, Ordering::Relaxed);
            }
        };
        let s = cx.stats;
        add([&s.packets, &s.raw_bytes, &s.stored_bytes, &s.frames]);
        add(self.counters.frame_fields());
        let full = seg.len >= cx.cfg.segment_size
            || (!cx.cfg.segment_align
                && cx
                    .cfg
                    .segment_time
                    .is_some_and(|t| seg.opened.elapsed() >= t));
        if full {
            self.finish_segment(cx)?;
            self.cont = true;
        }
        Ok(())
    }

    fn release(&mut self, cx: &mut Ctx) {
        while self
            .held
            .front()
            .is_some_and(|h| h.end() <= self.frame.start)
        {
            let h = self.held.pop_front().expect("checked");
            *cx.held_total -= h.len as u64;
            self.charge -= h.charge;
            if let Some(next) = self.held.front_mut() {
                // The new front no longer shares its first granule with a held chunk.
                let g = self.area.granule();
                let popped_last = (h.area_off() + h.len.max(1) - 1) / g;
                if next.len > 0 && next.area_off() / g == popped_last {
                    next.charge += 1;
                    self.charge += 1;
                }
            }
        }
        if !self.spill.is_empty() && self.spill_start + self.spill.len() as u64 <= self.frame.start
        {
            self.free_spill(cx);
        }
    }

    fn free_spill(&mut self, cx: &mut Ctx) {
        let n = self.spill.len() as u64;
        cx.stats.copy_in_use.fetch_sub(n, Ordering::Relaxed);
        self.spill = Vec::new();
    }

    fn release_all(&mut self, cx: &mut Ctx) {
        for h in self.held.drain(..) {
            *cx.held_total -= h.len as u64;
        }
        self.charge = 0;
        self.free_spill(cx);
    }

    /// Finalizes the open segment and records it in the manifest; applies retention.
    fn finish_segment(&mut self, cx: &mut Ctx) -> io::Result<()> {
        let Some(seg) = self.seg.as_mut() else {
            return Ok(());
        };
        let (seq, raw, frames) = (seg.seq, seg.raw, seg.trailer.frames.len() as u64);
        let (packets, range, stream_off, cont) = (
            seg.trailer.packets(),
            seg.trailer.time_range(),
            seg.trailer.stream_off,
            seg.trailer.flags & crate::archive::index::FLAG_CONT != 0,
        );
        let need = 64 + 40 * frames;
        let begun = Instant::now();
        let (path, bytes, sha256) = space::persist(cx, Step::Segment, need, |_| seg.finalize())?;
        self.seg = None;
        let rel = path
            .strip_prefix(&cx.cfg.dir)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        let (format, nanos) = match self.framer.format() {
            Some(Format::Pcap(fh)) => ("pcap", fh.nanos),
            _ => ("pcapng", false),
        };
        let flows = self.write_flows(&rel, seq, cx);
        let now = SystemTime::now();
        let drops_now = self.area.drops();
        let entry = Entry::Segment(SegmentEntry {
            stream: self.name.clone(),
            seq,
            path: rel.clone(),
            format: format.into(),
            linktypes: self.seg_linktypes.to_vec(),
            nanos,
            bytes,
            raw,
            packets,
            frames,
            first_ns: range.map(|r| r.0),
            last_ns: range.map(|r| r.1),
            stream_off,
            cont,
            sha256,
            time: humantime::format_rfc3339_seconds(now).to_string(),
            repaired: false,
            drops: drops_now.map(|d| d.saturating_sub(self.seg_drops_from)),
        });
        self.seg_drops_from = drops_now.unwrap_or(0);
        let appended = space::persist(cx, Step::Manifest, 0, |cx| {
            lock_shared(cx.shared).manifest.append(&entry)
        });
        if let Err(e) = appended {
            if space::is_abandoned(&e) {
                eprintln!(
                    "zcap: stream {}: segment {rel} is complete but its manifest line could not be written; `zcap verify --repair {}` records it",
                    self.name,
                    cx.cfg.dir.display()
                );
            }
            return Err(e);
        }
        if let Some(f) = flows {
            let entry = Entry::Flows(f);
            space::persist(cx, Step::Manifest, 0, |cx| {
                lock_shared(cx.shared).manifest.append(&entry)
            })?;
        }
        self.segments += 1;
        self.section_segments += 1;
        cx.stats.segments.fetch_add(1, Ordering::Relaxed);
        cx.stats.finalize.observe(begun.elapsed());
        self.counters.segments.fetch_add(1, Ordering::Relaxed);
        lock_shared(cx.shared).retention.add(rel, bytes, now);
        let refused = lock_shared(cx.shared).retention.refused();
        let deleted = space::persist(cx, Step::Manifest, 0, |cx| {
            let mut shared = lock_shared(cx.shared);
            let Shared {
                manifest,
                retention,
            } = &mut *shared;
            retention.enforce(&cx.cfg.dir, manifest, cx.cfg.max_bytes, cx.cfg.max_age)
        })?;
        let refused = lock_shared(cx.shared).retention.refused() - refused;
        cx.stats
            .retention_refused
            .fetch_add(refused, Ordering::Relaxed);
        cx.stats
            .deleted_segments
            .fetch_add(deleted, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the sidecar of the segment just finalized at `rel` from the flows its frames
    /// held, and readies the table for the next segment. Returns its manifest entry; `None`
    /// without a flow index, or when the sidecar could not be written (said on stderr: the
    /// segment is complete either way, and `zcap index` builds what is missing).
    fn write_flows(&mut self, rel: &str, seq: u64, cx: &mut Ctx) -> Option<manifest::FlowsEntry> {
        let fl = self.flows.as_deref_mut()?;
        let meta = crate::flow::sidecar::Meta {
            stream: &self.name,
            segment: rel,
            seq,
        };
        let written = crate::flow::sidecar::encode(&meta, fl.segment.rows())
            .map_err(|e| io::Error::other(e.to_string()))
            .and_then(|bytes| {
                space::persist(cx, Step::Segment, bytes.len() as u64, |cx| {
                    archive::flows::write_sidecar(&cx.cfg.dir, rel, &bytes)
                })
                .map(|_| archive::flows::flows_entry(rel, &bytes, &fl.segment))
            });
        fl.segment.clear();
        match written {
            Ok(entry) => Some(entry),
            Err(e) => {
                eprintln!(
                    "zcap: stream {}: the flow index of {rel} was not written ({e}); the segment is complete, and `zcap index {}` builds its index",
                    self.name,
                    cx.cfg.dir.display()
                );
                cx.stats.index_errors.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Keeps every complete unit, finalizes, and stops taking data. `what` says why (logged
    /// and recorded); `unframed` bytes of the newest chunk were never framed.
    fn fail(&mut self, what: &str, unframed: u64, cx: &mut Ctx) -> io::Result<()> {
        self.cut(cx)?;
        self.pump(Until::All, cx)?;
        self.finish_segment(cx)?;
        self.release_all(cx);
        let upto = self.frame.end;
        self.archived_upto = Some(upto);
        let lost = self.received - upto;
        debug_assert!(lost >= unframed);
        cx.stats.stream_errors.fetch_add(1, Ordering::Relaxed);
        cx.stats.discarded_bytes.fetch_add(lost, Ordering::Relaxed);
        eprintln!(
            "zcap: stream {}: {what}; kept {} complete packets ({} bytes), {lost} received bytes not archived",
            self.name,
            self.framer.packets(),
            upto,
        );
        self.failed = Some(what.strip_prefix("closed: ").unwrap_or(what).to_string());
        Ok(())
    }

    /// `e` from a step of this stream: a step given up at shutdown (the disk still full) ends
    /// the stream's recording here ([`Self::give_up`]); anything else is the caller's.
    fn absorb(&mut self, e: io::Error, cx: &mut Ctx) -> io::Result<()> {
        if space::is_abandoned(&e) {
            self.give_up(e, cx);
            Ok(())
        } else {
            Err(e)
        }
    }

    /// The disk stayed full through the shutdown: keep what is written (finalizing the open
    /// segment if the disk takes its trailer, else leaving it as a `.partial` that ends on a
    /// frame boundary), count what is held and whatever still arrives as unwritten, and take
    /// no more data.
    fn give_up(&mut self, e: io::Error, cx: &mut Ctx) {
        let held_end = self.held.back().map_or(0, |h| h.end());
        // Frames not yet written are given up too (their chunks go back as they drop).
        let mut first = self.frame.start;
        for op in self.ops.drain(..) {
            if let Op::Frame(f) = op {
                first = first.min(f.start);
                *cx.inflight -= 1;
                self.persisted += 1;
            }
        }
        let lost = held_end.max(self.frame.start).saturating_sub(first);
        if self.seg.is_some() && self.finish_segment(cx).is_err() {
            if let Some(mut seg) = self.seg.take() {
                seg.abandon();
                eprintln!(
                    "zcap: stream {}: {} could not be finalized; its complete frames stay there for `zcap verify --repair {}`",
                    self.name,
                    seg.path().display(),
                    cx.cfg.dir.display()
                );
            }
        }
        self.release_all(cx);
        self.frame = OpenFrame::at(held_end.max(self.frame.start));
        *self.unwritten.get_or_insert(0) += lost;
        cx.stats.unwritten_bytes.fetch_add(lost, Ordering::Relaxed);
        eprintln!(
            "zcap: stream {}: stopped with the disk still full at shutdown: {lost} bytes received from stream byte {first} on could not be written ({e})",
            self.name,
        );
        self.failed = Some(format!(
            "disk full at shutdown: received bytes from stream byte {first} on were not written: {e}",
        ));
    }

    /// The stream's source is done: check it ended on a boundary and finalize.
    fn end(mut self, transport: Option<String>, cx: &mut Ctx) -> io::Result<StreamReport> {
        let mut error = self.failed.take();
        if error.is_none() {
            if let Err(e) = self.framer.finish() {
                eprintln!(
                    "zcap: stream {}: {e}; kept {} complete packets, {} received bytes not archived",
                    self.name,
                    self.framer.packets(),
                    self.incomplete(),
                );
                cx.stats.stream_errors.fetch_add(1, Ordering::Relaxed);
                error = Some(e.to_string());
            }
        }
        if let Some(t) = &transport {
            eprintln!("zcap: stream {}: {t}", self.name);
            error = Some(match error {
                Some(e) => format!("{t}; {e}"),
                None => t.clone(),
            });
        }
        if let Err(e) = self.cut(cx).and_then(|()| self.pump(Until::All, cx)) {
            self.absorb(e, cx)?;
        }
        if self.unwritten.is_none()
            && self.section_segments == 0
            && self.seg.is_none()
            && !self.framer.header().is_empty()
        {
            // A valid capture (or last section) with no packets: keep its header so `cat`
            // gives it back.
            let hdr = self.framer.header().to_vec();
            let format = self.framer.format();
            let lts = self.framer.linktypes();
            if let Err(e) = self.open_segment(&hdr, self.frame.start, format, lts.into(), cx) {
                self.absorb(e, cx)?;
            }
        }
        if let Err(e) = self.finish_segment(cx) {
            self.absorb(e, cx)?;
        }
        self.release_all(cx);
        let archived = match self.archived_upto {
            Some(upto) => upto,
            None => {
                let upto = self.frame.end;
                let lost = self.received - upto;
                cx.stats.discarded_bytes.fetch_add(lost, Ordering::Relaxed);
                upto
            }
        };
        let discarded = self.received - archived;
        if self.unwritten.is_some() {
            let lost = self.failed.take().unwrap_or_default();
            error = Some(match error {
                Some(e) => format!("{e}; {lost}"),
                None => lost,
            });
        }
        let w = self.framer.warnings();
        let mut warnings = serde_json::Map::new();
        if discarded > 0 {
            warnings.insert("bytes_not_archived".into(), discarded.into());
        }
        if self.cut {
            warnings.insert("cut".into(), true.into());
        }
        if w.caplen_over_snaplen > 0 {
            warnings.insert("caplen_over_snaplen".into(), w.caplen_over_snaplen.into());
            eprintln!(
                "zcap: stream {}: warning: {} records have a captured length above the snaplen (kept unchanged)",
                self.name, w.caplen_over_snaplen
            );
        }
        if self.cut_packets > 0 {
            // Not an error: the packets and bytes below are what the archive holds.
            warnings.insert("flow_cutoff_packets".into(), self.cut_packets.into());
            warnings.insert("flow_cutoff_dropped".into(), self.dropped.into());
            warnings.insert("flow_cutoff_bytes".into(), self.shrunk.into());
        }
        if w.unknown_blocks > 0 {
            warnings.insert("unknown_blocks".into(), w.unknown_blocks.into());
            eprintln!(
                "zcap: stream {}: warning: {} pcapng blocks of unknown type (kept unchanged)",
                self.name, w.unknown_blocks
            );
        }
        let entry = Entry::Stream {
            stream: self.name.clone(),
            event: "end".into(),
            packets: self.framer.packets() - self.dropped,
            bytes: self.framer.position() - self.shrunk,
            error: error.clone(),
            warnings,
        };
        let appended = space::persist(cx, Step::Manifest, 0, |cx| {
            lock_shared(cx.shared).manifest.append(&entry)
        });
        match appended {
            Err(e) if space::is_abandoned(&e) => eprintln!(
                "zcap: stream {}: its end could not be recorded in the manifest: {e}",
                self.name
            ),
            r => r?,
        }
        cx.stats.streams_active.fetch_sub(1, Ordering::Relaxed);
        cx.stats
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
        Ok(StreamReport {
            name: self.name,
            packets: self.framer.packets(),
            bytes: self.framer.position(),
            segments: self.segments,
            error,
            warnings: w,
            received: self.received,
            discarded,
            cut: self.cut,
        })
    }
}

/// [`Writer::books`]: the uploader's way to the writer's manifest and retention.
struct WriterBooks {
    shared: Arc<Mutex<Shared>>,
    dir: PathBuf,
    max_bytes: Option<u64>,
    max_age: Option<Duration>,
    stats: Arc<WriterStats>,
}

impl retention::Books for WriterBooks {
    fn enforce(&self) -> io::Result<()> {
        let mut shared = lock_shared(&self.shared);
        let Shared {
            manifest,
            retention,
        } = &mut *shared;
        let n = retention.enforce(&self.dir, manifest, self.max_bytes, self.max_age)?;
        self.stats.deleted_segments.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    fn remote_delete(&self, path: &str) -> io::Result<()> {
        let mut shared = lock_shared(&self.shared);
        let Shared {
            manifest,
            retention,
        } = &mut *shared;
        retention.delete_remote(&self.dir, manifest, path)
    }
}

/// The writer's state. Drive it with [`Writer::handle`] and [`Writer::tick`], or run the
/// whole loop with [`run`].
pub struct Writer {
    cfg: Config,
    shared: Arc<Mutex<Shared>>,
    enc: Encoder,
    streams: HashMap<StreamId, StreamState>,
    stats: Arc<WriterStats>,
    reports: Vec<StreamReport>,
    held_total: u64,
    writers: usize,
    disk: space::Disk,
    /// Disk-full events seen by the last tick.
    disk_faults_seen: u64,
    /// The compress pool, shared by every writer of the archive.
    pool: Option<Pool>,
    /// This writer's hash lane (it holds a handle of the pool, to recycle buffers).
    lane: Option<Lane>,
    /// Frames handed to the persist step and not yet persisted, and (stream, frame number)
    /// of each in the order they were cut, to wait for the oldest.
    inflight: usize,
    order: VecDeque<(StreamId, u64)>,
    /// The rotation counter as last seen ([`Config::rotate`]).
    rotate_seen: u64,
    _lock: Arc<File>,
}

/// Frames in flight per writer beyond which it waits for the oldest to be persisted: enough
/// to keep every worker busy, few enough to bound memory (each holds its area slices and,
/// once compressed, an output buffer).
fn max_inflight(pool: Option<&Pool>) -> usize {
    pool.map_or(0, |p| 2 * p.threads() + 2)
}

/// A hash lane for writer `i` when there is a pool of threads to work beside (any mode with
/// `--compress-threads` > 0); the single-thread writer hashes on its own thread.
fn start_lane(cfg: &Config, i: usize, pool: Option<&Pool>) -> io::Result<Option<Lane>> {
    if cfg.compress_threads == 0 {
        return Ok(None);
    }
    Lane::start(format!("zcap-hash-{i}"), pool.cloned()).map(Some)
}

macro_rules! ctx {
    ($w:expr) => {
        Ctx {
            cfg: &$w.cfg,
            shared: &$w.shared,
            enc: &mut $w.enc,
            stats: &$w.stats,
            held_total: &mut $w.held_total,
            pool: $w.pool.as_ref(),
            lane: $w.lane.as_ref(),
            inflight: &mut $w.inflight,
            order: &mut $w.order,
            writers: $w.writers,
            disk: &mut $w.disk,
        }
    };
}

impl Writer {
    /// Opens (creating if needed) the archive directory, takes its lock and opens the
    /// manifest for appending.
    pub fn open(cfg: Config, stats: Arc<WriterStats>) -> Result<Writer, WriterError> {
        let ioe = |source| WriterError::Io {
            dir: cfg.dir.clone(),
            source,
        };
        for w in cfg.validate().map_err(WriterError::Config)? {
            eprintln!("zcap: warning: {w}");
        }
        std::fs::create_dir_all(&cfg.dir).map_err(ioe)?;
        let lock = archive::lock(&cfg.dir).map_err(ioe)?;
        let Some(lock) = lock else {
            return Err(WriterError::Locked(cfg.dir.clone()));
        };
        let manifest =
            manifest::Writer::open_signed(&cfg.dir, archive::create_entry, cfg.sign.clone())
                .map_err(ioe)?;
        let mut retention = retention::Live::load(&cfg.dir).map_err(ioe)?;
        retention.offload = cfg.offload.clone();
        stats
            .retention_refused
            .fetch_add(retention.refused(), Ordering::Relaxed);
        let enc = Encoder::for_frames(cfg.compress, cfg.frame_size).map_err(ioe)?;
        let disk = space::Disk::new(Arc::new(space::Space::new(&cfg.dir, cfg.min_free)));
        let pool = match cfg.compress {
            Compress::Zstd(_) if cfg.compress_threads > 0 => {
                Some(Pool::start(cfg.compress_threads, cfg.compress, cfg.frame_size).map_err(ioe)?)
            }
            _ => None,
        };
        let lane = start_lane(&cfg, 0, pool.as_ref()).map_err(ioe)?;
        Ok(Writer {
            cfg,
            shared: Arc::new(Mutex::new(Shared {
                manifest,
                retention,
            })),
            enc,
            streams: HashMap::new(),
            stats,
            reports: Vec::new(),
            held_total: 0,
            writers: 1,
            disk,
            disk_faults_seen: 0,
            pool,
            lane,
            inflight: 0,
            order: VecDeque::new(),
            rotate_seen: 0,
            _lock: Arc::new(lock),
        })
    }

    /// Splits this writer into `n` writers of the same archive, one per thread: each frames,
    /// compresses and writes its own streams ([`crate::rx::Events`] sends every event of a
    /// stream to the same one) and all append to the one manifest.
    pub fn into_workers(self, n: usize) -> Result<Vec<Writer>, WriterError> {
        let n = n.max(1);
        let mut out = Vec::with_capacity(n);
        for i in 1..n {
            out.push(Writer {
                cfg: self.cfg.clone(),
                shared: Arc::clone(&self.shared),
                enc: Encoder::for_frames(self.cfg.compress, self.cfg.frame_size)
                    .map_err(|e| self.ioe(e))?,
                streams: HashMap::new(),
                stats: Arc::clone(&self.stats),
                reports: Vec::new(),
                held_total: 0,
                writers: n,
                disk: space::Disk::new(Arc::clone(&self.disk.space)),
                disk_faults_seen: 0,
                pool: self.pool.clone(),
                lane: start_lane(&self.cfg, i, self.pool.as_ref()).map_err(|e| self.ioe(e))?,
                inflight: 0,
                order: VecDeque::new(),
                rotate_seen: self.rotate_seen,
                _lock: Arc::clone(&self._lock),
            });
        }
        out.push(Writer { writers: n, ..self });
        Ok(out)
    }

    /// While the disk is full the writer waits for space; once `flag` is set (SIGINT,
    /// SIGTERM) and the backends' drain has passed, it stops waiting, keeps what is written
    /// and counts the rest in [`WriterStats::unwritten_bytes`]. Shared by all workers.
    pub fn stop_on(&self, flag: Arc<std::sync::atomic::AtomicBool>) {
        self.disk.space.stop_on(flag);
    }

    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }

    /// The archive's manifest and retention books, for the uploader ([`retention::Books`]).
    pub fn books(&self) -> Arc<dyn retention::Books> {
        Arc::new(WriterBooks {
            shared: Arc::clone(&self.shared),
            dir: self.cfg.dir.clone(),
            max_bytes: self.cfg.max_bytes,
            max_age: self.cfg.max_age,
            stats: Arc::clone(&self.stats),
        })
    }

    fn ioe(&self, source: io::Error) -> WriterError {
        WriterError::Io {
            dir: self.cfg.dir.clone(),
            source,
        }
    }

    /// Handles one event. An `Err` means the archive itself failed; stream errors are
    /// logged, recorded in the manifest and reported, and do not stop the writer.
    pub fn handle(&mut self, ev: Event) -> Result<(), WriterError> {
        let r = match ev {
            Event::Open {
                stream,
                name,
                area,
                network,
            } => self.open_stream(stream, &name, area, network),
            Event::Data(chunk) => match self.streams.get_mut(&chunk.stream()) {
                Some(st) if st.unwritten.is_some() => {
                    // Given up at shutdown: what still arrives cannot be written either.
                    let n = chunk.len() as u64;
                    *st.unwritten.get_or_insert(0) += n;
                    self.stats.unwritten_bytes.fetch_add(n, Ordering::Relaxed);
                    Ok(()) // dropping releases the chunk
                }
                Some(st) => {
                    let mut cx = ctx!(self);
                    match st.push(chunk, &mut cx) {
                        Err(e) => st.absorb(e, &mut cx),
                        ok => ok,
                    }
                    .and_then(|()| self.find_copy_budget())
                    .and_then(|()| self.persist_ready(true))
                }
                None => Ok(()), // unknown or finished stream: dropping releases the chunk
            },
            Event::Records { block, spans } => match self.streams.get_mut(&block.stream()) {
                Some(st) if st.unwritten.is_some() => {
                    let n: u64 = spans.iter().map(|s| s.len as u64).sum();
                    *st.unwritten.get_or_insert(0) += n;
                    self.stats.unwritten_bytes.fetch_add(n, Ordering::Relaxed);
                    Ok(()) // dropping releases the block
                }
                Some(st) => {
                    let mut cx = ctx!(self);
                    let block = Arc::new(block);
                    let mut r = Ok(());
                    for s in &spans {
                        r = st.push_piece(
                            Arc::clone(&block),
                            s.off as usize,
                            s.len as usize,
                            &mut cx,
                        );
                        if r.is_err() {
                            break;
                        }
                    }
                    // A capture ring the writer holds too much of makes the kernel drop:
                    // hand the open frame on now rather than at its full size.
                    if r.is_ok() && st.failed.is_none() && st.area.under_pressure() {
                        r = st.cut(&mut cx);
                    }
                    match r {
                        Err(e) => st.absorb(e, &mut cx),
                        ok => ok,
                    }
                    .and_then(|()| self.find_copy_budget())
                    .and_then(|()| self.persist_ready(true))
                }
                None => Ok(()),
            },
            Event::End { stream, error } => match self.streams.remove(&stream) {
                Some(st) => st.end(error, &mut ctx!(self)).map(|r| self.reports.push(r)),
                None => Ok(()),
            },
        };
        r.map_err(|e| self.ioe(e))
    }

    /// Persists the frames whose compression is done, oldest first, across this writer's
    /// streams; with `bound`, also waits for the oldest while more than the in-flight limit
    /// are out.
    fn persist_ready(&mut self, bound: bool) -> io::Result<()> {
        let limit = max_inflight(self.pool.as_ref());
        while let Some(&(id, n)) = self.order.front() {
            let mut cx = ctx!(self);
            let Some(st) = self.streams.get_mut(&id) else {
                cx.order.pop_front(); // ended: everything of it is persisted
                continue;
            };
            if st.persisted > n {
                cx.order.pop_front();
                continue;
            }
            let until = if bound && *cx.inflight > limit {
                Until::Frame(n)
            } else {
                Until::Ready
            };
            if let Err(e) = st.pump(until, &mut cx) {
                st.absorb(e, &mut cx)?;
            }
            if st.persisted > n {
                cx.order.pop_front();
            } else if until == Until::Ready {
                break; // the oldest is still compressing
            }
        }
        Ok(())
    }

    /// A stream needs to copy its incomplete unit out of the area and the copy budget is
    /// used up: cut the stream of this writer that holds the most of it (counting what the
    /// asker wants on top of what it holds) and let the asker try again; when that is the
    /// asker itself, or nobody else holds any, cut the asker.
    fn find_copy_budget(&mut self) -> io::Result<()> {
        loop {
            let Some((&id, _)) = self.streams.iter().find(|(_, s)| s.wants_copy > 0) else {
                return Ok(());
            };
            let victim = self
                .streams
                .iter()
                .filter(|(_, s)| s.failed.is_none() && !s.spill.is_empty())
                .max_by_key(|(_, s)| s.spill.len() + s.wants_copy as usize)
                .map(|(&k, _)| k)
                .filter(|&k| k != id); // the asker holding most is the one to cut
            let mut cx = ctx!(self);
            if let Some(v) = victim {
                let requester = self.streams[&id].name.clone();
                let st = self.streams.get_mut(&v).expect("found above");
                let reason = format!(
                    "its incomplete {} ({} copied out of the area) was the largest hold on the \
                     copy budget when stream {requester} needed room",
                    st.framer_noun(),
                    crate::units::human_bytes(st.spill.len() as u64),
                );
                st.cut_off(&reason, &mut cx)?;
                let st = self.streams.get_mut(&id).expect("found above");
                st.make_room(&mut cx)?;
            } else {
                let st = self.streams.get_mut(&id).expect("found above");
                st.make_room_as(true, &mut cx)?;
            }
        }
    }

    /// The compress pool, if there is one.
    pub fn pool(&self) -> Option<&Pool> {
        self.pool.as_ref()
    }

    /// Frames handed to the persist step and not yet persisted.
    pub fn in_flight(&self) -> usize {
        self.inflight
    }

    fn open_stream(
        &mut self,
        id: StreamId,
        name: &str,
        area: Arc<Area>,
        network: bool,
    ) -> io::Result<()> {
        let base = archive::sanitize(name);
        let mut name = base.clone();
        let mut n = 1;
        let dir = space::persist(&mut ctx!(self), Step::Manifest, 0, |cx| loop {
            let dir = archive::stream_dir(&cx.cfg.dir, &name);
            match std::fs::create_dir(&dir) {
                Ok(()) => break segment::sync_dir(&cx.cfg.dir).map(|()| dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    n += 1;
                    name = format!("{base}-{n}");
                }
                Err(e) => break Err(segment::at_path(&dir, e)),
            }
        })?;
        self.stats.streams_active.fetch_add(1, Ordering::Relaxed);
        let counters = Arc::new(StreamCounters::default());
        self.stats
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), Arc::clone(&counters));
        self.streams.insert(
            id,
            StreamState {
                id,
                name,
                dir,
                framer: Framer::new(),
                held: VecDeque::new(),
                frame: OpenFrame::at(0),
                seg: None,
                seq: 0,
                cont: false,
                failed: None,
                last_data: Instant::now(),
                opened: Instant::now(),
                network,
                area,
                received: 0,
                charge: 0,
                spill: Vec::new(),
                spill_start: 0,
                archived_upto: None,
                cut: false,
                ops: VecDeque::new(),
                frame_header: None,
                frame_linktypes: None,
                header_cache: None,
                linktypes_cache: None,
                section_no: 0,
                wants_copy: 0,
                submitted: 0,
                persisted: 0,
                segments: 0,
                section_segments: 0,
                seg_linktypes: Arc::from([]),
                seg_drops_from: 0,
                unwritten: None,
                period_end: None,
                counters,
                flows: self.cfg.flow_index.then(Box::default),
                edits: Vec::new(),
                patch: Vec::new(),
                shrunk: 0,
                cut_packets: 0,
                dropped: 0,
            },
        );
        Ok(())
    }

    /// Time-driven work: flush idle streams' frames, rotate segments by age.
    pub fn tick(&mut self) -> Result<(), WriterError> {
        let now = Instant::now();
        // A stream cannot progress while the writer waits for disk space: the timeouts start
        // over after every such wait.
        let faults = self.stats.disk_full_events.load(Ordering::Relaxed);
        if faults != self.disk_faults_seen {
            self.disk_faults_seen = faults;
            for st in self.streams.values_mut() {
                st.last_data = now;
                st.opened = now;
            }
        }
        let gen = self.cfg.rotate.as_ref().map(|g| g.load(Ordering::Relaxed));
        let rotate_all = gen.is_some_and(|g| g != self.rotate_seen);
        if let Some(g) = gen {
            self.rotate_seen = g;
        }
        let mut cx = ctx!(self);
        for st in self.streams.values_mut() {
            let r = if rotate_all {
                st.rotate_now(&mut cx)
            } else {
                st.check_align(&mut cx)
            };
            if let Err(e) = r.or_else(|e| st.absorb(e, &mut cx)) {
                return Err(WriterError::Io {
                    dir: cx.cfg.dir.clone(),
                    source: e,
                });
            }
            let idle = !st.frame.is_empty()
                && now.saturating_duration_since(st.last_data) >= cx.cfg.idle_flush;
            let old = !cx.cfg.segment_align
                && st
                    .seg
                    .as_ref()
                    .is_some_and(|s| cx.cfg.segment_time.is_some_and(|t| s.opened.elapsed() >= t));
            let r = if (idle || old) && st.unwritten.is_none() {
                if old {
                    st.ops.push_back(Op::RotateIfOld);
                }
                st.cut(&mut cx).or_else(|e| st.absorb(e, &mut cx))
            } else {
                Ok(())
            };
            let r = r
                .and_then(|()| {
                    if st.unwritten.is_some() {
                        return Ok(());
                    }
                    st.check_limits(now, &mut cx)?;
                    if st.area.under_pressure() {
                        // Every frame in flight holds buffers: get them back now.
                        st.pump(Until::All, &mut cx)?;
                    }
                    Ok(())
                })
                .or_else(|e| st.absorb(e, &mut cx));
            if let Err(e) = r {
                return Err(WriterError::Io {
                    dir: cx.cfg.dir.clone(),
                    source: e,
                });
            }
        }
        self.find_copy_budget().map_err(|e| self.ioe(e))
    }

    /// Ends every stream still open (their sources stopped without an End) and returns the
    /// reports of all streams.
    pub fn close(mut self) -> Result<Vec<StreamReport>, WriterError> {
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in ids {
            self.handle(Event::End {
                stream: id,
                error: Some("recorder stopped before the stream ended".into()),
            })?;
        }
        Ok(self.reports)
    }

    pub fn manifest_head(&self) -> String {
        lock_shared(&self.shared).manifest.head().to_string()
    }

    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }
}

/// The writer thread's loop: handle events until every sender is gone, ticking every
/// 100 ms, then close.
pub fn run(mut w: Writer, events: Receiver<Event>) -> Result<Vec<StreamReport>, WriterError> {
    let mut last_tick = Instant::now();
    loop {
        // Frames in flight are persisted as soon as the pool is done with them.
        let wait = if w.inflight > 0 { 1 } else { 100 };
        match events.recv_timeout(Duration::from_millis(wait)) {
            Ok(ev) => w.handle(ev)?,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if w.inflight > 0 {
            w.persist_ready(false).map_err(|e| w.ioe(e))?;
        }
        if last_tick.elapsed() >= Duration::from_millis(100) {
            w.tick()?;
            last_tick = Instant::now();
        }
    }
    w.close()
}

#[cfg(test)]
mod tests;
