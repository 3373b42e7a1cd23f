//! The writer: takes [`Event`]s from the receive backends, frames each stream's chunks,
//! cuts zstd frames at record boundaries, persists them into segments and only then drops
//! the chunks (which returns their buffers to the backend). Rotation, finalization, the
//! manifest and retention happen here too. It never touches sockets or the kernel rings.
//!
//! Per chunk the hot path is: run the framer over the chunk's bytes (headers only, no
//! copies), and when a frame is due, hand the borrowed area slices to the encoder in one
//! go. Nothing is allocated per packet.

pub mod segment;

use crate::archive::index::{FrameEntry, FRAME_HAS_IDB};
use crate::archive::manifest::{self, Entry, SegmentEntry};
use crate::archive::{self, retention};
use crate::area::{Chunk, StreamId};
use crate::rx::Event;
use crate::stream::{Format, FrameError, Framer, UnitKind};
pub use segment::Compress;
use segment::{Encoder, SegmentFile};
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
    /// Cut a data frame at the first record boundary past this many raw bytes.
    pub frame_size: u64,
    pub compress: Compress,
    /// Cut the open frame of a stream that has been quiet this long, so its data is on disk
    /// and its buffers go back.
    pub idle_flush: Duration,
    pub max_bytes: Option<u64>,
    pub max_age: Option<Duration>,
}

impl Config {
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            dir: dir.into(),
            segment_size: 256 << 20,
            segment_time: None,
            frame_size: 1 << 20,
            compress: Compress::Zstd(1),
            idle_flush: Duration::from_secs(1),
            max_bytes: None,
            max_age: None,
        }
    }
}

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
}

struct Held {
    chunk: Chunk,
    start: u64,
}

impl Held {
    fn end(&self) -> u64 {
        self.start + self.chunk.len() as u64
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
    /// Writer threads sharing the receive area; each may hold its share of it.
    writers: usize,
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
    segments: u64,
    /// Segments finalized since the current pcapng section began.
    section_segments: u64,
    /// Link types declared in the open segment (its section's, as of its last IDB).
    seg_linktypes: Vec<u32>,
}

impl StreamState {
    fn push(&mut self, chunk: Chunk, cx: &mut Ctx) -> io::Result<()> {
        if self.failed.is_some() {
            return Ok(()); // dropping the chunk releases it
        }
        self.last_data = Instant::now();
        let start = self.framer.position();
        let len = chunk.len();
        let area = Arc::clone(chunk.area());
        self.held.push_back(Held { chunk, start });
        *cx.held_total += len as u64;
        let mut pos = 0;
        while pos < len {
            // The chunk stays the newest held one: cuts only release chunks wholly before the
            // open frame, and this one still has unframed bytes.
            let newest = &self.held.back().expect("pushed above").chunk;
            let step = self.framer.step(&newest.bytes()[pos..]);
            let (n, unit) = match step {
                Ok(r) => r,
                Err(e) => {
                    self.fail(e, cx)?;
                    area.abort(self.id);
                    return Ok(());
                }
            };
            pos += n;
            if let Some(u) = unit {
                self.on_unit(u, cx)?;
            }
        }
        // Backpressure valve: when open frames hold half the area, the backend could run dry
        // with nothing left to release; persist what this stream has, even if the frame is
        // small, so its buffers go back.
        if *cx.held_total as usize > area.len() / (2 * cx.writers) {
            self.cut(cx)?;
        }
        let held_bytes = self
            .held
            .back()
            .map_or(0, |h| h.end())
            .saturating_sub(self.frame.end);
        if held_bytes as usize > area.len() / 2 {
            let at = self.frame.end;
            self.fail(
                FrameError {
                    offset: at,
                    reason: format!(
                        "a single record or block is larger than half the receive area ({} bytes held); \
                         raise --area-size",
                        held_bytes
                    ),
                },
                cx,
            )?;
            area.abort(self.id);
        }
        Ok(())
    }

    fn on_unit(&mut self, u: crate::stream::Unit, cx: &mut Ctx) -> io::Result<()> {
        match u.kind {
            UnitKind::Header => {
                debug_assert!(self.frame.is_empty());
                self.frame = OpenFrame::at(u.end());
                self.release(cx);
            }
            UnitKind::Section => {
                self.cut(cx)?;
                if self.seg.is_none() && self.section_segments == 0 {
                    // The section that just ended had no blocks after its header: keep it.
                    let hdr = self.framer.previous_header().to_vec();
                    self.open_segment(&hdr, u.start, cx)?;
                    self.seg_linktypes = self.framer.previous_linktypes();
                }
                self.finish_segment(cx)?;
                self.section_segments = 0;
                self.cont = false;
                self.frame = OpenFrame::at(u.end());
                self.release(cx);
            }
            kind => {
                if self.seg.is_none() {
                    // A late IDB that opens a segment is in its data already: keep it out of
                    // that segment's header.
                    let hdr = self.framer.header();
                    let hdr = if kind == UnitKind::LateInterface {
                        &hdr[..hdr.len() - u.len as usize]
                    } else {
                        hdr
                    };
                    let hdr = hdr.to_vec();
                    self.open_segment(&hdr, self.frame.start, cx)?;
                }
                self.frame.end = u.end();
                match kind {
                    UnitKind::Packet { ts_ns } => {
                        self.frame.packets += 1;
                        self.frame.min_ns = self.frame.min_ns.min(ts_ns);
                        self.frame.max_ns = self.frame.max_ns.max(ts_ns);
                    }
                    UnitKind::LateInterface => {
                        self.frame.flags |= FRAME_HAS_IDB;
                        self.seg_linktypes = self.framer.linktypes();
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

    fn open_segment(&mut self, header: &[u8], stream_off: u64, cx: &mut Ctx) -> io::Result<()> {
        self.seq += 1;
        let pcapng = matches!(self.framer.format(), Some(Format::PcapNg { .. }));
        self.seg_linktypes = self.framer.linktypes();
        self.seg = Some(SegmentFile::create(
            &self.dir,
            &archive::segment_name(self.seq, pcapng),
            self.seq,
            header,
            self.cont,
            stream_off,
            cx.enc,
        )?);
        Ok(())
    }

    /// Encodes and writes the open frame from the held area slices, then releases every
    /// chunk that lies wholly before the next frame. Rotates when the segment is full.
    fn cut(&mut self, cx: &mut Ctx) -> io::Result<()> {
        let f = self.frame;
        if !f.is_empty() {
            let seg = self.seg.as_mut().expect("a data unit opened the segment");
            let mut parts: Vec<&[u8]> = Vec::with_capacity(self.held.len());
            for h in &self.held {
                let (s, e) = (h.start.max(f.start), h.end().min(f.end));
                if s < e {
                    parts.push(&h.chunk.bytes()[(s - h.start) as usize..(e - h.start) as usize]);
                }
            }
            let before = seg.len;
            let entry = FrameEntry {
                min_ns: if f.packets > 0 { f.min_ns } else { 0 },
                max_ns: if f.packets > 0 { f.max_ns } else { 0 },
                packets: f.packets,
                flags: f.flags,
                ..FrameEntry::default()
            };
            seg.push_frame(&parts, entry, cx.enc)?;
            cx.stats
                .packets
                .fetch_add(f.packets as u64, Ordering::Relaxed);
            cx.stats
                .raw_bytes
                .fetch_add(f.end - f.start, Ordering::Relaxed);
            cx.stats
                .stored_bytes
                .fetch_add(seg.len - before, Ordering::Relaxed);
            cx.stats.frames.fetch_add(1, Ordering::Relaxed);
            self.frame = OpenFrame::at(f.end);
        }
        self.release(cx);
        let full = self.seg.as_ref().is_some_and(|s| {
            s.len >= cx.cfg.segment_size
                || cx.cfg.segment_time.is_some_and(|t| s.opened.elapsed() >= t)
        });
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
            *cx.held_total -= h.chunk.len() as u64;
        }
    }

    fn release_all(&mut self, cx: &mut Ctx) {
        for h in self.held.drain(..) {
            *cx.held_total -= h.chunk.len() as u64;
        }
    }

    /// Finalizes the open segment and records it in the manifest; applies retention.
    fn finish_segment(&mut self, cx: &mut Ctx) -> io::Result<()> {
        let Some(seg) = self.seg.take() else {
            return Ok(());
        };
        let (seq, raw, frames) = (seg.seq, seg.raw, seg.trailer.frames.len() as u64);
        let (packets, range, stream_off, cont) = (
            seg.trailer.packets(),
            seg.trailer.time_range(),
            seg.trailer.stream_off,
            seg.trailer.flags & crate::archive::index::FLAG_CONT != 0,
        );
        let (path, bytes, sha256) = seg.finalize()?;
        let rel = path
            .strip_prefix(&cx.cfg.dir)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        let (format, nanos) = match self.framer.format() {
            Some(Format::Pcap(fh)) => ("pcap", fh.nanos),
            _ => ("pcapng", false),
        };
        let now = SystemTime::now();
        let mut shared = lock_shared(cx.shared);
        let Shared {
            manifest,
            retention,
        } = &mut *shared;
        manifest.append(&Entry::Segment(SegmentEntry {
            stream: self.name.clone(),
            seq,
            path: rel.clone(),
            format: format.into(),
            linktypes: std::mem::take(&mut self.seg_linktypes),
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
        }))?;
        self.segments += 1;
        self.section_segments += 1;
        cx.stats.segments.fetch_add(1, Ordering::Relaxed);
        retention.add(rel, bytes, now);
        let deleted = retention.enforce(&cx.cfg.dir, manifest, cx.cfg.max_bytes, cx.cfg.max_age)?;
        drop(shared);
        cx.stats
            .deleted_segments
            .fetch_add(deleted, Ordering::Relaxed);
        Ok(())
    }

    /// Keeps every complete record before the error, finalizes, and stops taking data.
    fn fail(&mut self, e: FrameError, cx: &mut Ctx) -> io::Result<()> {
        self.cut(cx)?;
        self.finish_segment(cx)?;
        self.release_all(cx);
        cx.stats.stream_errors.fetch_add(1, Ordering::Relaxed);
        eprintln!(
            "zcap: stream {}: closed: {e}; kept {} complete packets",
            self.name,
            self.framer.packets()
        );
        self.failed = Some(e.to_string());
        Ok(())
    }

    /// The stream's source is done: check it ended on a boundary and finalize.
    fn end(mut self, transport: Option<String>, cx: &mut Ctx) -> io::Result<StreamReport> {
        let mut error = self.failed.take();
        if error.is_none() {
            if let Err(e) = self.framer.finish() {
                eprintln!(
                    "zcap: stream {}: {e}; kept {} complete packets",
                    self.name,
                    self.framer.packets()
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
        self.cut(cx)?;
        if self.section_segments == 0 && self.seg.is_none() && !self.framer.header().is_empty() {
            // A valid capture (or last section) with no packets: keep its header so `cat`
            // gives it back.
            let hdr = self.framer.header().to_vec();
            self.open_segment(&hdr, self.frame.start, cx)?;
        }
        self.finish_segment(cx)?;
        self.release_all(cx);
        let w = self.framer.warnings();
        let mut warnings = serde_json::Map::new();
        if w.caplen_over_snaplen > 0 {
            warnings.insert("caplen_over_snaplen".into(), w.caplen_over_snaplen.into());
            eprintln!(
                "zcap: stream {}: warning: {} records have a captured length above the snaplen (kept unchanged)",
                self.name, w.caplen_over_snaplen
            );
        }
        if w.unknown_blocks > 0 {
            warnings.insert("unknown_blocks".into(), w.unknown_blocks.into());
            eprintln!(
                "zcap: stream {}: warning: {} pcapng blocks of unknown type (kept unchanged)",
                self.name, w.unknown_blocks
            );
        }
        lock_shared(cx.shared).manifest.append(&Entry::Stream {
            stream: self.name.clone(),
            event: "end".into(),
            packets: self.framer.packets(),
            bytes: self.framer.position(),
            error: error.clone(),
            warnings,
        })?;
        cx.stats.streams_active.fetch_sub(1, Ordering::Relaxed);
        Ok(StreamReport {
            name: self.name,
            packets: self.framer.packets(),
            bytes: self.framer.position(),
            segments: self.segments,
            error,
            warnings: w,
        })
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
    _lock: Arc<File>,
}

macro_rules! ctx {
    ($w:expr) => {
        Ctx {
            cfg: &$w.cfg,
            shared: &$w.shared,
            enc: &mut $w.enc,
            stats: &$w.stats,
            held_total: &mut $w.held_total,
            writers: $w.writers,
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
        std::fs::create_dir_all(&cfg.dir).map_err(ioe)?;
        let lock = archive::lock(&cfg.dir).map_err(ioe)?;
        let Some(lock) = lock else {
            return Err(WriterError::Locked(cfg.dir.clone()));
        };
        let manifest = manifest::Writer::open(&cfg.dir, archive::create_entry).map_err(ioe)?;
        let retention = retention::Live::load(&cfg.dir).map_err(ioe)?;
        let enc = Encoder::new(cfg.compress).map_err(ioe)?;
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
            _lock: Arc::new(lock),
        })
    }

    /// Splits this writer into `n` writers of the same archive, one per thread: each frames,
    /// compresses and writes its own streams ([`crate::rx::Events`] sends every event of a
    /// stream to the same one) and all append to the one manifest.
    pub fn into_workers(self, n: usize) -> Result<Vec<Writer>, WriterError> {
        let n = n.max(1);
        let mut out = Vec::with_capacity(n);
        for _ in 1..n {
            out.push(Writer {
                cfg: self.cfg.clone(),
                shared: Arc::clone(&self.shared),
                enc: Encoder::new(self.cfg.compress).map_err(|e| self.ioe(e))?,
                streams: HashMap::new(),
                stats: Arc::clone(&self.stats),
                reports: Vec::new(),
                held_total: 0,
                writers: n,
                _lock: Arc::clone(&self._lock),
            });
        }
        out.push(Writer { writers: n, ..self });
        Ok(out)
    }

    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
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
            Event::Open { stream, name } => self.open_stream(stream, &name),
            Event::Data(chunk) => match self.streams.get_mut(&chunk.stream()) {
                Some(st) => st.push(chunk, &mut ctx!(self)),
                None => Ok(()), // unknown or finished stream: dropping releases the chunk
            },
            Event::End { stream, error } => match self.streams.remove(&stream) {
                Some(st) => st.end(error, &mut ctx!(self)).map(|r| self.reports.push(r)),
                None => Ok(()),
            },
        };
        r.map_err(|e| self.ioe(e))
    }

    fn open_stream(&mut self, id: StreamId, name: &str) -> io::Result<()> {
        let base = archive::sanitize(name);
        let mut name = base.clone();
        let mut n = 1;
        let dir = loop {
            let dir = archive::stream_dir(&self.cfg.dir, &name);
            match std::fs::create_dir(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    n += 1;
                    name = format!("{base}-{n}");
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
            }
        };
        segment::sync_dir(&self.cfg.dir)?;
        self.stats.streams_active.fetch_add(1, Ordering::Relaxed);
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
                segments: 0,
                section_segments: 0,
                seg_linktypes: Vec::new(),
            },
        );
        Ok(())
    }

    /// Time-driven work: flush idle streams' frames, rotate segments by age.
    pub fn tick(&mut self) -> Result<(), WriterError> {
        let now = Instant::now();
        let mut cx = ctx!(self);
        for st in self.streams.values_mut() {
            let idle = !st.frame.is_empty()
                && now.saturating_duration_since(st.last_data) >= cx.cfg.idle_flush;
            let old = st
                .seg
                .as_ref()
                .is_some_and(|s| cx.cfg.segment_time.is_some_and(|t| s.opened.elapsed() >= t));
            if idle || old {
                if let Err(e) = st.cut(&mut cx) {
                    return Err(WriterError::Io {
                        dir: cx.cfg.dir.clone(),
                        source: e,
                    });
                }
            }
        }
        Ok(())
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
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok(ev) => w.handle(ev)?,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
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
