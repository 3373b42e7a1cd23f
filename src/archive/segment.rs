//! Reading one finalized segment: its index trailer, its header frame and any data frame on
//! its own (docs/ARCHIVE.md), and walking the records or blocks of a decompressed frame with
//! the same [`Framer`] the writer used, as ranges into the frame buffer (nothing is copied
//! or allocated per record). `cat`, `verify` and `replay` read segments through this module;
//! it never writes to the archive.

use super::index::{read_trailer, FrameEntry, Trailer};
use crate::remote::Client;
use crate::stream::{Format, FrameError, Framer, UnitKind};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use zstd::zstd_safe::{self, DCtx};

/// What went wrong reading a segment, naming the file (and frame) involved.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The OS error is part of the text and not a `source()`: verify prints these as one
    /// line, and an anyhow chain would otherwise print the cause twice.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path}: {what}")]
    Damaged { path: PathBuf, what: String },
    /// A remote object could not be read; the error says why in words.
    #[error("{error}")]
    Remote { path: PathBuf, error: String },
}

impl SegmentError {
    fn damaged(path: &Path, what: impl Into<String>) -> SegmentError {
        SegmentError::Damaged {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}

/// Counters of the work a reader did; `cat --stats` prints them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadStats {
    /// Data frames decompressed (header frames are counted apart).
    pub frames_decompressed: u64,
    /// Header frames decompressed (one per segment read).
    pub header_frames: u64,
    /// Decompressed bytes produced.
    pub raw_bytes: u64,
    /// Segments opened.
    pub segments: u64,
    /// Data frames a filtered read did not decompress because the flow index showed that no
    /// packet in them can match (of those the time window selected).
    pub index_skipped: u64,
    /// Flow-index sidecars read and used.
    pub sidecars: u64,
    /// Segments a filtered read found no usable sidecar for (none, or one that does not match
    /// its manifest line): all their frames in the window were decompressed.
    pub unindexed: u64,
    /// Packets a filter was checked on, and those it matched.
    pub packets_checked: u64,
    pub packets_matched: u64,
}

/// Decompresses frames with one reusable zstd context and input buffer, counting its work.
pub struct Decoder {
    dctx: DCtx<'static>,
    comp: Vec<u8>,
    pub stats: ReadStats,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            dctx: DCtx::create(),
            comp: Vec::new(),
            stats: ReadStats::default(),
        }
    }

    /// Decompresses the single zstd frame at `range` of `seg` into `out` (replacing its
    /// contents) and checks that it yields exactly `raw_len` bytes. zstd checks the frame's
    /// content checksum when it has one.
    fn frame(
        &mut self,
        seg: &Segment,
        offset: u64,
        comp_len: u32,
        raw_len: u32,
        what: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), SegmentError> {
        let end = offset + comp_len as u64;
        if end > seg.data_end {
            return Err(SegmentError::damaged(
                &seg.path,
                format!(
                    "{what} at offset {offset} (+{comp_len}) runs past the data ({} bytes)",
                    seg.data_end
                ),
            ));
        }
        self.comp.resize(comp_len as usize, 0);
        seg.read_exact_at(&mut self.comp, offset)?;
        match zstd_safe::find_frame_compressed_size(&self.comp) {
            Ok(n) if n == comp_len as usize => {}
            Ok(n) => {
                return Err(SegmentError::damaged(
                    &seg.path,
                    format!("{what} at offset {offset}: the index says {comp_len} compressed bytes, the zstd frame has {n}"),
                ))
            }
            Err(code) => {
                return Err(SegmentError::damaged(
                    &seg.path,
                    format!(
                        "{what} at offset {offset} is not a whole zstd frame ({})",
                        zstd_safe::get_error_name(code)
                    ),
                ))
            }
        }
        out.clear();
        out.reserve(raw_len as usize);
        self.dctx
            .reset(zstd_safe::ResetDirective::SessionOnly)
            .map_err(|code| {
                SegmentError::damaged(
                    &seg.path,
                    format!("zstd: {}", zstd_safe::get_error_name(code)),
                )
            })?;
        match self.dctx.decompress(out, &self.comp) {
            Ok(n) if n == raw_len as usize => {}
            Ok(n) => {
                return Err(SegmentError::damaged(
                    &seg.path,
                    format!(
                    "{what} at offset {offset} decompresses to {n} bytes, the index says {raw_len}"
                ),
                ))
            }
            Err(code) => {
                return Err(SegmentError::damaged(
                    &seg.path,
                    format!(
                        "{what} at offset {offset} does not decompress ({})",
                        zstd_safe::get_error_name(code)
                    ),
                ))
            }
        }
        self.stats.raw_bytes += raw_len as u64;
        Ok(())
    }
}

/// Where a segment's bytes are read from.
enum Blob {
    File(File),
    Remote(RemoteBlob),
}

/// An object of a remote archive, read by range GETs: the byte ranges a reader announced
/// with [`Segment::plan`] are fetched in coalesced runs, anything else exactly as asked.
struct RemoteBlob {
    client: Arc<Client>,
    rel: String,
    runs: Vec<Range<u64>>,
    /// The run fetched last: its start and its bytes.
    cache: Mutex<(u64, Vec<u8>)>,
}

/// Longest run of neighbouring frames fetched in one GET.
const MAX_RUN: u64 = 16 << 20;

/// An open finalized segment and its index.
pub struct Segment {
    blob: Blob,
    path: PathBuf,
    pub trailer: Trailer,
    /// File size.
    pub len: u64,
    /// Where the trailer begins (the end of the frames).
    pub data_end: u64,
}

/// Bytes of the trailer frame of a segment with `frames` data frames: the 8-byte skippable
/// header, then 32 + 40 per frame + 12 bytes of payload.
pub fn trailer_len(frames: u64) -> u64 {
    52 + 40 * frames
}

impl Segment {
    /// Opens a finalized segment (never through a symbolic link: `O_NOFOLLOW`) and reads its
    /// index trailer.
    pub fn open(path: &Path) -> Result<Segment, SegmentError> {
        let file = super::path::open_nofollow(path).map_err(|error| SegmentError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_file(file, path)
    }

    /// A segment read from an open file; errors name it `shown`.
    pub fn from_file(file: File, shown: &Path) -> Result<Segment, SegmentError> {
        let io_err = |error| SegmentError::Io {
            path: shown.to_path_buf(),
            error,
        };
        let len = file.metadata().map_err(io_err)?.len();
        let trailer = read_trailer(&file).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
                SegmentError::damaged(shown, e.to_string())
            }
            _ => io_err(e),
        })?;
        let data_end = len - trailer_len(trailer.frames.len() as u64);
        Ok(Segment {
            blob: Blob::File(file),
            path: shown.to_path_buf(),
            trailer,
            len,
            data_end,
        })
    }

    /// Opens object `rel` of a remote archive as its manifest entry describes it (`bytes`
    /// long, `frames` data frames): one range GET of exactly the trailer. Nothing else is
    /// fetched until frames are read.
    pub fn open_remote(
        client: &Arc<Client>,
        rel: &str,
        bytes: u64,
        frames: u64,
    ) -> Result<Segment, SegmentError> {
        let shown = PathBuf::from(client.show(rel));
        let tlen = trailer_len(frames);
        if tlen > bytes {
            return Err(SegmentError::damaged(
                &shown,
                format!(
                    "the manifest says {bytes} bytes, too short for a trailer of {frames} frames"
                ),
            ));
        }
        let tail = client
            .get_range(rel, bytes - tlen, tlen)
            .map_err(|e| SegmentError::Remote {
                path: shown.clone(),
                error: e.to_string(),
            })?;
        let trailer =
            Trailer::decode(&tail).map_err(|e| SegmentError::damaged(&shown, e.to_string()))?;
        Ok(Segment {
            blob: Blob::Remote(RemoteBlob {
                client: Arc::clone(client),
                rel: rel.to_string(),
                runs: Vec::new(),
                cache: Mutex::new((0, Vec::new())),
            }),
            path: shown,
            trailer,
            len: bytes,
            data_end: bytes - tlen,
        })
    }

    /// Announces which data frames will be read (`wanted` is asked with each one's index and
    /// entry; the header frame always is), so that a
    /// remote segment fetches them in as few GETs as possible: neighbouring frames are one
    /// range, up to 16 MiB. A local segment ignores it.
    pub fn plan(&mut self, wanted: impl Fn(usize, &FrameEntry) -> bool) {
        let Blob::Remote(r) = &mut self.blob else {
            return;
        };
        let mut runs: Vec<Range<u64>> = Vec::new();
        runs.push(0..self.trailer.header_comp_len as u64);
        let frames = self.trailer.frames.iter().enumerate();
        for (_, f) in frames.filter(|(i, f)| wanted(*i, f)) {
            let (a, b) = (f.offset, f.offset + f.comp_len as u64);
            match runs.last_mut() {
                Some(last) if last.end == a && b - last.start <= MAX_RUN => last.end = b,
                _ => runs.push(a..b),
            }
        }
        r.runs = runs;
    }

    /// Reads `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), SegmentError> {
        let r = match &self.blob {
            Blob::File(f) => {
                return f
                    .read_exact_at(buf, offset)
                    .map_err(|error| SegmentError::Io {
                        path: self.path.clone(),
                        error,
                    })
            }
            Blob::Remote(r) => r,
        };
        let end = offset + buf.len() as u64;
        let mut cache = r.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (start, bytes) = &*cache;
        if !(offset >= *start && end <= *start + bytes.len() as u64) {
            let run = r
                .runs
                .iter()
                .find(|run| run.start <= offset && end <= run.end)
                .cloned()
                .unwrap_or(offset..end);
            let got = r
                .client
                .get_range(&r.rel, run.start, run.end - run.start)
                .map_err(|e| SegmentError::Remote {
                    path: self.path.clone(),
                    error: e.to_string(),
                })?;
            *cache = (run.start, got);
        }
        let (start, bytes) = &*cache;
        let at = (offset - start) as usize;
        buf.copy_from_slice(&bytes[at..at + buf.len()]);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decompresses the header frame into `out`.
    pub fn read_header(&self, dec: &mut Decoder, out: &mut Vec<u8>) -> Result<(), SegmentError> {
        let t = &self.trailer;
        dec.frame(
            self,
            0,
            t.header_comp_len,
            t.header_raw_len,
            "header frame",
            out,
        )?;
        dec.stats.header_frames += 1;
        Ok(())
    }

    /// Decompresses data frame `i` (an index into `trailer.frames`) into `out`.
    pub fn read_frame(
        &self,
        i: usize,
        dec: &mut Decoder,
        out: &mut Vec<u8>,
    ) -> Result<(), SegmentError> {
        let f: FrameEntry = self.trailer.frames[i];
        dec.frame(
            self,
            f.offset,
            f.comp_len,
            f.raw_len,
            &format!("data frame {i}"),
            out,
        )?;
        dec.stats.frames_decompressed += 1;
        Ok(())
    }

    /// Starts a [`Parser`] from this segment's header frame (decompressed into `buf`).
    pub fn parser(&self, dec: &mut Decoder, buf: &mut Vec<u8>) -> Result<Parser, SegmentError> {
        self.read_header(dec, buf)?;
        Parser::from_header(buf)
            .map_err(|e| SegmentError::damaged(&self.path, format!("header frame: {e}")))
    }
}

/// One unit of a decompressed frame: what it is and where it lies in the frame buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub kind: UnitKind,
    pub range: Range<usize>,
}

impl Rec {
    /// Timestamp of a packet unit.
    pub fn ts_ns(&self) -> Option<i64> {
        match self.kind {
            UnitKind::Packet { ts_ns } => Some(ts_ns),
            _ => None,
        }
    }
}

/// Walks the units of a segment's frames: fed the header frame first, then any data frames
/// of the same segment, each of which must hold whole units. Skipping frames is fine: only
/// the interfaces (IDBs) carry state from one frame to the next, and frames holding IDBs are
/// flagged in the index so a reader can feed them.
#[derive(Debug)]
pub struct Parser {
    framer: Framer,
}

impl Parser {
    /// Parses a header frame's contents (a pcap file header, or an SHB and its IDBs).
    pub fn from_header(header: &[u8]) -> Result<Parser, FrameError> {
        let mut p = Parser {
            framer: Framer::new(),
        };
        let mut off = 0;
        while let Some(r) = p.next(header, &mut off)? {
            if r.kind != UnitKind::Header {
                return Err(FrameError {
                    offset: r.range.start as u64,
                    reason: format!("the header frame holds a {:?} unit", r.kind),
                });
            }
        }
        p.framer.finish()?;
        Ok(p)
    }

    /// The next unit of `buf` at or after `*off`, advancing `*off` past it. `None` at the end
    /// of the buffer; an error if the buffer ends inside a unit or holds a bad one. Offsets
    /// in errors are relative to `buf`.
    pub fn next(&mut self, buf: &[u8], off: &mut usize) -> Result<Option<Rec>, FrameError> {
        let base = self.framer.position() - *off as u64;
        let rel = |e: FrameError| FrameError {
            offset: e.offset.saturating_sub(base),
            reason: e.reason,
        };
        while *off < buf.len() {
            let (n, unit) = self.framer.step(&buf[*off..]).map_err(rel)?;
            *off += n;
            if let Some(u) = unit {
                if u.start < base {
                    return Err(FrameError {
                        offset: 0,
                        reason: "the frame begins inside a unit".into(),
                    });
                }
                let start = (u.start - base) as usize;
                return Ok(Some(Rec {
                    kind: u.kind,
                    range: start..start + u.len as usize,
                }));
            }
        }
        if let Err(e) = self.framer.finish() {
            return Err(FrameError {
                offset: e.offset.saturating_sub(base),
                reason: format!("the frame ends inside a unit ({})", e.reason),
            });
        }
        Ok(None)
    }

    pub fn format(&self) -> Option<Format> {
        self.framer.format()
    }

    /// The framer (interfaces, link types, header bytes seen so far).
    pub fn framer(&self) -> &Framer {
        &self.framer
    }
}

/// What one data frame holds, as found by parsing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSummary {
    pub packets: u32,
    pub min_ns: i64,
    pub max_ns: i64,
    /// The frame holds an IDB.
    pub has_idb: bool,
    /// The frame holds a pcapng Simple Packet Block (its timestamps are inferred).
    pub has_spb: bool,
}

/// Parses a whole decompressed data frame and summarizes it. A section header inside a data
/// frame is an error: the writer starts a new segment for a new section.
pub fn summarize_frame(p: &mut Parser, buf: &[u8]) -> Result<FrameSummary, FrameError> {
    let mut s = FrameSummary {
        packets: 0,
        min_ns: i64::MAX,
        max_ns: i64::MIN,
        has_idb: false,
        has_spb: false,
    };
    let pcapng = matches!(p.format(), Some(Format::PcapNg { .. }));
    let mut off = 0;
    while let Some(r) = p.next(buf, &mut off)? {
        match r.kind {
            UnitKind::Packet { ts_ns } => {
                s.packets += 1;
                s.min_ns = s.min_ns.min(ts_ns);
                s.max_ns = s.max_ns.max(ts_ns);
                let t = &buf[r.range.start..r.range.start + 4];
                if pcapng && (t == [3, 0, 0, 0] || t == [0, 0, 0, 3]) {
                    s.has_spb = true;
                }
            }
            UnitKind::Header | UnitKind::LateInterface => s.has_idb = true,
            UnitKind::Section => {
                return Err(FrameError {
                    offset: r.range.start as u64,
                    reason: "a data frame holds a section header block".into(),
                })
            }
            UnitKind::Other => {}
        }
    }
    if s.packets == 0 {
        s.min_ns = 0;
        s.max_ns = 0;
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::index::FRAME_HAS_IDB;
    use crate::writer::segment::{Compress, Encoder, SegmentFile};

    fn pcap_header() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(0xa1b2_c3d4u32.to_le_bytes());
        v.extend([2, 0, 4, 0]);
        v.extend([0; 8]);
        v.extend(65535u32.to_le_bytes());
        v.extend(1u32.to_le_bytes());
        v
    }

    fn rec(sec: u32, usec: u32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [sec, usec, data.len() as u32, data.len() as u32] {
            v.extend(x.to_le_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn reads_frames_independently_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut enc = Encoder::new(Compress::Zstd(3)).unwrap();
        let hdr = pcap_header();
        let mut seg = SegmentFile::create(
            dir.path(),
            "000001.pcap.zst",
            1,
            &hdr,
            false,
            24,
            &mut enc,
            None,
        )
        .unwrap();
        let f1 = [rec(1, 0, b"abc"), rec(2, 5, b"defg")].concat();
        let f2 = rec(3, 7, b"xyz");
        for (f, lo, hi, n) in [
            (&f1, 1_000_000_000, 2_000_005_000, 2),
            (&f2, 3_000_007_000, 3_000_007_000, 1),
        ] {
            let e = FrameEntry {
                min_ns: lo,
                max_ns: hi,
                packets: n,
                ..FrameEntry::default()
            };
            seg.push_frame(&[f], None, e, &mut enc).unwrap();
        }
        let (path, _, _) = seg.finalize().unwrap();

        let s = Segment::open(&path).unwrap();
        assert_eq!(s.trailer.frames.len(), 2);
        let mut dec = Decoder::new();
        let mut buf = Vec::new();
        let mut p = s.parser(&mut dec, &mut buf).unwrap();
        assert_eq!(buf, hdr);
        s.read_frame(1, &mut dec, &mut buf).unwrap();
        assert_eq!(buf, f2);
        let mut off = 0;
        let r = p.next(&buf, &mut off).unwrap().unwrap();
        assert_eq!(r.ts_ns(), Some(3_000_007_000));
        assert_eq!(&buf[r.range], &f2[..]);
        assert!(p.next(&buf, &mut off).unwrap().is_none());
        s.read_frame(0, &mut dec, &mut buf).unwrap();
        let sum = summarize_frame(&mut p, &buf).unwrap();
        assert_eq!(
            (sum.packets, sum.min_ns, sum.max_ns),
            (2, 1_000_000_000, 2_000_005_000)
        );
        assert!(!sum.has_idb);
        assert_eq!(dec.stats.frames_decompressed, 2);
        assert_eq!(dec.stats.header_frames, 1);
        let _ = FRAME_HAS_IDB;
    }

    #[test]
    fn a_frame_ending_inside_a_record_is_an_error() {
        let mut p = Parser::from_header(&pcap_header()).unwrap();
        let r = rec(1, 0, b"abcdef");
        let e = summarize_frame(&mut p, &r[..r.len() - 2]).unwrap_err();
        assert!(e.reason.contains("ends inside"), "{e}");
        assert_eq!(e.offset, 0);
    }

    #[test]
    fn damaged_frames_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut enc = Encoder::new(Compress::Zstd(1)).unwrap();
        let mut seg = SegmentFile::create(
            dir.path(),
            "000001.pcap.zst",
            1,
            &pcap_header(),
            false,
            24,
            &mut enc,
            None,
        )
        .unwrap();
        let data: Vec<u8> = (0..50).flat_map(|i| rec(i, 0, &[i as u8; 100])).collect();
        seg.push_frame(&[&data], None, FrameEntry::default(), &mut enc)
            .unwrap();
        let (path, _, _) = seg.finalize().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let s = Segment::open(&path).unwrap();
        let f = s.trailer.frames[0];
        bytes[f.offset as usize + f.comp_len as usize / 2] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let s = Segment::open(&path).unwrap();
        let e = s
            .read_frame(0, &mut Decoder::new(), &mut Vec::new())
            .unwrap_err();
        assert!(e.to_string().contains("data frame 0"), "{e}");
    }
}
