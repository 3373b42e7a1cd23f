//! One segment file being written: the header frame, data frames encoded from borrowed area
//! slices (zstd, or zstd "raw" blocks written with writev straight from the area), a running
//! SHA-256, and atomic finalization (trailer, fsync, rename, fsync directory).
//!
//! Every step can fail (a full disk) and be retried: a frame write that stopped half way
//! leaves the segment *torn*; the next write or finalize first truncates the file back to
//! `len`, the length before that frame. `len`, `raw`, the trailer's frame list and the
//! SHA-256 change only once a whole frame is written, so a retried frame — encoded again from
//! the same area slices — gives the file it would have been without the fault, byte for byte.
//! Finalization goes in stages and a retry resumes at the stage that failed.

use super::hash::{Feed, Lane};
use super::pool::Parts;
use crate::archive::index::{FrameEntry, Trailer};
use crate::archive::PARTIAL_SUFFIX;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;
use zstd::zstd_safe::{self, CCtx, CParameter, InBuffer, OutBuffer, ResetDirective};

/// How data frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    Zstd(i32),
    /// zstd frames of raw (stored) blocks: no compression, written with writev from the area.
    None,
}

impl std::str::FromStr for Compress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Compress::None),
            "zstd" => Ok(Compress::Zstd(1)),
            _ => match s.strip_prefix("zstd:").map(str::parse::<i32>) {
                Some(Ok(l)) if (-7..=19).contains(&l) => Ok(Compress::Zstd(l)),
                _ => Err(format!(
                    "unknown compression `{s}`: use zstd, zstd:LEVEL (-7..19) or none"
                )),
            },
        }
    }
}

const ZSTD_MAGIC: u32 = 0xFD2F_B528;
const RAW_BLOCK_MAX: usize = 128 << 10;

/// Encodes frames; holds the reusable zstd context and output buffer.
pub struct Encoder {
    mode: Compress,
    cctx: Option<CCtx<'static>>,
    out: Vec<u8>,
    raw: RawFrame,
}

/// The frame size the writer cuts at by default (`writer::Config::frame_size`).
pub const DEFAULT_FRAME_SIZE: u64 = 1 << 20;

/// The zstd window for frames of `frame_size` at `level`: zstd's own choice for large
/// inputs at the fast levels (1 and below: 512 KiB; 2: 1 MiB) is smaller than a 1 MiB frame,
/// so the frame's input wraps around the context's buffer and half its blocks take zstd's
/// slower external-dictionary path. A window that holds the whole frame (at most 8 MiB)
/// compresses the same input about 7% faster to the same size. From level 3 up zstd's
/// window is 2 MiB or more already, and it is left alone.
fn window_log(level: i32, frame_size: u64) -> Option<u32> {
    let want = frame_size
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
        .clamp(19, 23);
    let zstd_own = if level <= 1 { 19 } else { 20 };
    (level <= 2 && want > zstd_own).then_some(want)
}

impl Encoder {
    /// An encoder for frames of about [`DEFAULT_FRAME_SIZE`].
    pub fn new(mode: Compress) -> io::Result<Encoder> {
        Encoder::for_frames(mode, DEFAULT_FRAME_SIZE)
    }

    /// An encoder tuned for frames of about `frame_size` raw bytes. The zstd parameters
    /// depend only on `mode` and `frame_size`, so every encoder of a recorder (writer or
    /// pool worker) makes the same bytes from the same frame.
    pub fn for_frames(mode: Compress, frame_size: u64) -> io::Result<Encoder> {
        let cctx = match mode {
            Compress::Zstd(level) => {
                let mut c = CCtx::create();
                let e =
                    |code| io::Error::other(format!("zstd: {}", zstd_safe::get_error_name(code)));
                c.set_parameter(CParameter::CompressionLevel(level))
                    .map_err(e)?;
                c.set_parameter(CParameter::ChecksumFlag(true)).map_err(e)?;
                if let Some(w) = window_log(level, frame_size) {
                    c.set_parameter(CParameter::WindowLog(w)).map_err(e)?;
                }
                Some(c)
            }
            Compress::None => None,
        };
        Ok(Encoder {
            mode,
            cctx,
            out: Vec::new(),
            raw: RawFrame::default(),
        })
    }

    pub fn mode(&self) -> Compress {
        self.mode
    }

    /// Compresses `parts` concatenated into one zstd frame in `out` (replacing its
    /// contents). zstd modes only: `none` frames are written straight from the parts.
    pub fn compress(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) -> io::Result<()> {
        let raw: usize = parts.iter().map(|p| p.len()).sum();
        let cctx = self.cctx.as_mut().expect("compress is for the zstd modes");
        let zerr = |code| io::Error::other(format!("zstd: {}", zstd_safe::get_error_name(code)));
        cctx.reset(ResetDirective::SessionOnly).map_err(zerr)?;
        out.clear();
        out.reserve(zstd_safe::compress_bound(raw) + 64);
        let mut ob = OutBuffer::around_pos(out, 0);
        for p in parts {
            let mut ib = InBuffer::around(p);
            while ib.pos() < p.len() {
                cctx.compress_stream2(
                    &mut ob,
                    &mut ib,
                    zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_continue,
                )
                .map_err(zerr)?;
            }
        }
        loop {
            let mut empty = InBuffer::around(&[]);
            let left = cctx
                .compress_stream2(
                    &mut ob,
                    &mut empty,
                    zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_end,
                )
                .map_err(zerr)?;
            if left == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Writes one frame whose content is `parts` concatenated; returns its encoded length.
    /// `keep` holds the same bytes as `parts` when the caller can lend them to the hash
    /// lane (a `none` data frame); otherwise the lane gets a copy.
    pub fn frame(
        &mut self,
        parts: &[&[u8]],
        keep: Option<&Arc<Parts>>,
        seg: &mut SegmentFile,
    ) -> io::Result<u64> {
        match self.mode {
            Compress::Zstd(_) => {
                let mut out = std::mem::take(&mut self.out);
                let r = self
                    .compress(parts, &mut out)
                    .and_then(|()| seg.write(&[&out], Then::Copy));
                let n = out.len() as u64;
                self.out = out;
                r.map(|()| n)
            }
            Compress::None => {
                let n = self.raw.layout(parts.iter().map(|p| p.len()).sum());
                let iov = self.raw.iov(parts);
                seg.write(&iov, keep.map_or(Then::Copy, Then::Raw))?;
                Ok(n as u64)
            }
        }
    }
}

/// The layout of a `none` frame: a zstd frame of raw blocks (RFC 8878 3.1.1) — magic, a
/// descriptor with the single-segment flag and an 8-byte content size, then blocks of at
/// most 128 KiB, each behind its 3-byte header. The content is written from the parts
/// themselves; only the headers are made here.
#[derive(Default)]
pub struct RawFrame {
    head: [u8; 13],
    raw: usize,
    block_heads: Vec<[u8; 3]>,
}

impl RawFrame {
    /// Lays out a frame of `raw` content bytes; returns its encoded length.
    pub fn layout(&mut self, raw: usize) -> usize {
        self.head[..4].copy_from_slice(&ZSTD_MAGIC.to_le_bytes());
        self.head[4] = 0xE0;
        self.head[5..].copy_from_slice(&(raw as u64).to_le_bytes());
        self.raw = raw;
        let nblocks = raw.div_ceil(RAW_BLOCK_MAX).max(1);
        self.block_heads.clear();
        for b in 0..nblocks {
            let size = (raw - b * RAW_BLOCK_MAX).min(RAW_BLOCK_MAX) as u32;
            let last = (b + 1 == nblocks) as u32;
            let h = (size << 3) | last;
            self.block_heads
                .push([h as u8, (h >> 8) as u8, (h >> 16) as u8]);
        }
        13 + 3 * nblocks + raw
    }

    /// The frame as slices, in file order: the headers laid out last and `parts` (whose
    /// lengths add up to the laid-out size) between them.
    pub fn iov<'a>(&'a self, parts: &[&'a [u8]]) -> Vec<&'a [u8]> {
        debug_assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), self.raw);
        let mut iov: Vec<&[u8]> = Vec::with_capacity(parts.len() + 2 * self.block_heads.len() + 1);
        iov.push(&self.head);
        let (mut block, mut in_block) = (0, RAW_BLOCK_MAX);
        for p in parts {
            let mut p: &[u8] = p;
            while !p.is_empty() {
                if in_block == RAW_BLOCK_MAX {
                    iov.push(&self.block_heads[block]);
                    block += 1;
                    in_block = 0;
                }
                let n = p.len().min(RAW_BLOCK_MAX - in_block);
                iov.push(&p[..n]);
                in_block += n;
                p = &p[n..];
            }
        }
        if self.raw == 0 {
            iov.push(&self.block_heads[0]);
        }
        iov
    }
}

/// An I/O error that names the file it happened on and keeps the OS error (errno), so the
/// writer can tell a full disk from other failures after the path was added.
#[derive(Debug)]
pub struct PathError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for PathError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// `e` with `path` in its message; the kind and the errno stay reachable ([`errno`]).
pub fn at_path(path: &Path, e: io::Error) -> io::Error {
    if e.get_ref().is_some_and(|r| r.is::<PathError>()) {
        return e;
    }
    io::Error::new(
        e.kind(),
        PathError {
            path: path.to_path_buf(),
            source: e,
        },
    )
}

/// The OS error number of `e`, looking through the errors wrapped in it ([`at_path`],
/// the manifest's append error).
pub fn errno(e: &io::Error) -> Option<i32> {
    if let Some(n) = e.raw_os_error() {
        return Some(n);
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> =
        e.get_ref().map(|r| r as &(dyn std::error::Error + 'static));
    while let Some(c) = cur {
        if let Some(n) = c
            .downcast_ref::<io::Error>()
            .and_then(|io| io.raw_os_error())
        {
            return Some(n);
        }
        cur = c.source();
    }
    None
}

/// How far [`SegmentFile::finalize`] got; a retry resumes here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Open,
    TrailerWritten,
    Synced,
    Renamed,
}

/// Where a segment's SHA-256 is computed.
enum Hash {
    /// On the writing thread, as each piece is written.
    Here(Sha256),
    /// On the writer's hash lane (see [`super::hash`]): each piece is handed over once
    /// written.
    Lane(Feed),
}

/// What the hash lane gets of a piece just written (the writing thread hashes the slices
/// themselves).
pub enum Then<'a> {
    /// A copy of the slices: headers, trailers, anything small.
    Copy,
    /// These parts, laid out as a `none` frame ([`RawFrame`]).
    Raw(&'a Arc<Parts>),
    /// Nothing yet: the caller hands the buffer it wrote over with
    /// [`SegmentFile::hand_over`].
    Later,
}

/// A segment being written under its `.partial` name.
pub struct SegmentFile {
    file: File,
    partial: PathBuf,
    final_path: PathBuf,
    pub seq: u64,
    pub len: u64,
    pub raw: u64,
    pub opened: Instant,
    pub trailer: Trailer,
    hash: Hash,
    /// The lane's answer once asked for, and the digest once known (finalize may be retried).
    digest_rx: Option<Receiver<[u8; 32]>>,
    digest: Option<String>,
    /// Bytes whose writeback has been started (see [`super::space::start_writeback`]).
    written_back: u64,
    /// A write failed after some of its bytes may have reached the file: they lie past `len`
    /// and are cut off before anything else is written.
    torn: bool,
    stage: Stage,
}

/// Start writeback each time this much more of a segment is written.
const WRITEBACK_EVERY: u64 = 8 << 20;

impl SegmentFile {
    /// Creates `dir/NAME.partial` and writes the header frame; its hash is computed on
    /// `lane`, or on this thread without one.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        dir: &Path,
        name: &str,
        seq: u64,
        header: &[u8],
        cont: bool,
        stream_off: u64,
        enc: &mut Encoder,
        lane: Option<&Lane>,
    ) -> io::Result<SegmentFile> {
        Self::create_with(
            dir,
            name,
            seq,
            header.len(),
            cont,
            stream_off,
            lane,
            |seg| enc.frame(&[header], None, seg),
        )
    }

    /// As [`SegmentFile::create`], with the header frame already encoded (by the pool).
    #[allow(clippy::too_many_arguments)]
    pub fn create_encoded(
        dir: &Path,
        name: &str,
        seq: u64,
        header_len: usize,
        encoded: &[u8],
        cont: bool,
        stream_off: u64,
        lane: Option<&Lane>,
    ) -> io::Result<SegmentFile> {
        Self::create_with(dir, name, seq, header_len, cont, stream_off, lane, |seg| {
            seg.write(&[encoded], Then::Copy)
                .map(|()| encoded.len() as u64)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn create_with(
        dir: &Path,
        name: &str,
        seq: u64,
        header_len: usize,
        cont: bool,
        stream_off: u64,
        lane: Option<&Lane>,
        write_header: impl FnOnce(&mut SegmentFile) -> io::Result<u64>,
    ) -> io::Result<SegmentFile> {
        let final_path = dir.join(name);
        let partial = dir.join(format!("{name}{PARTIAL_SUFFIX}"));
        let hash = match lane {
            Some(l) => Hash::Lane(l.begin()?),
            None => Hash::Here(Sha256::new()),
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(|e| at_path(&partial, e))?;
        let mut seg = SegmentFile {
            file,
            partial,
            final_path,
            seq,
            len: 0,
            raw: header_len as u64,
            opened: Instant::now(),
            trailer: Trailer {
                flags: if cont {
                    crate::archive::index::FLAG_CONT
                } else {
                    0
                },
                header_raw_len: header_len as u32,
                stream_off,
                ..Trailer::default()
            },
            hash,
            digest_rx: None,
            digest: None,
            written_back: 0,
            torn: false,
            stage: Stage::Open,
        };
        match write_header(&mut seg) {
            Ok(n) => {
                seg.trailer.header_comp_len = n as u32;
                Ok(seg)
            }
            Err(e) => {
                // Leave nothing behind, so that a retry can create the file again.
                let _ = std::fs::remove_file(&seg.partial);
                Err(e)
            }
        }
    }

    /// Gives the segment up as it is: cuts off a torn write, so the `.partial` ends on a
    /// frame boundary for `zcap verify --repair`.
    pub fn abandon(&mut self) {
        let _ = self.rollback();
    }

    /// The `.partial` path being written.
    pub fn path(&self) -> &Path {
        &self.partial
    }

    /// Cuts off whatever a failed write left past `len` and puts the file position back.
    fn rollback(&mut self) -> io::Result<()> {
        if self.torn {
            self.file
                .set_len(self.len)
                .and_then(|()| self.file.seek(SeekFrom::Start(self.len)).map(drop))
                .map_err(|e| at_path(&self.partial, e))?;
            self.torn = false;
        }
        Ok(())
    }

    /// Writes all of `parts` (one writev where possible) and hashes them (or hands them to
    /// the hash lane as `then` says). On failure the segment is torn: `len` and the hash
    /// still describe the file before this write.
    fn write(&mut self, parts: &[&[u8]], then: Then<'_>) -> io::Result<()> {
        self.rollback()?;
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let r = fault::write_vectored(&mut self.file, &rest[..rest.len().min(1024)]);
            let n = match r {
                Ok(0) => {
                    self.torn = true;
                    return Err(at_path(&self.partial, io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.torn = true;
                    return Err(at_path(&self.partial, e));
                }
            };
            IoSlice::advance_slices(&mut rest, n);
        }
        self.len += parts.iter().map(|p| p.len() as u64).sum::<u64>();
        if self.len - self.written_back >= WRITEBACK_EVERY {
            super::space::start_writeback(
                &self.file,
                self.written_back,
                self.len - self.written_back,
            );
            self.written_back = self.len;
        }
        match (&mut self.hash, then) {
            (Hash::Here(h), _) => parts.iter().for_each(|p| h.update(p)),
            (Hash::Lane(f), Then::Copy) => f.bytes(parts.concat())?,
            (Hash::Lane(f), Then::Raw(p)) => f.raw(Arc::clone(p))?,
            (Hash::Lane(_), Then::Later) => {}
        }
        Ok(())
    }

    /// Appends one data frame holding `parts`, described by `entry` (offset and lengths are
    /// filled in here). `keep` holds the same bytes, for the hash lane (see
    /// [`Encoder::frame`]).
    pub fn push_frame(
        &mut self,
        parts: &[&[u8]],
        keep: Option<&Arc<Parts>>,
        mut entry: FrameEntry,
        enc: &mut Encoder,
    ) -> io::Result<()> {
        entry.offset = self.len;
        entry.raw_len = parts.iter().map(|p| p.len() as u32).sum();
        entry.comp_len = enc.frame(parts, keep, self)? as u32;
        self.raw += entry.raw_len as u64;
        self.trailer.frames.push(entry);
        Ok(())
    }

    /// Appends one data frame already encoded (by the compress pool) from `raw_len` bytes.
    /// Once it returns `Ok`, the buffer goes to [`SegmentFile::hand_over`].
    pub fn push_encoded(
        &mut self,
        encoded: &[u8],
        raw_len: u32,
        mut entry: FrameEntry,
    ) -> io::Result<()> {
        entry.offset = self.len;
        entry.raw_len = raw_len;
        entry.comp_len = encoded.len() as u32;
        self.write(&[encoded], Then::Later)?;
        self.raw += u64::from(raw_len);
        self.trailer.frames.push(entry);
        Ok(())
    }

    /// Hands the buffer of the frame [`SegmentFile::push_encoded`] just wrote to the hash
    /// lane, which recycles it into the pool; without a lane it is hashed here and given
    /// back for the caller to recycle.
    pub fn hand_over(&mut self, encoded: Vec<u8>) -> io::Result<Option<Vec<u8>>> {
        match &mut self.hash {
            Hash::Here(h) => {
                h.update(&encoded);
                Ok(Some(encoded))
            }
            Hash::Lane(f) => f.encoded(encoded).map(|()| None),
        }
    }

    /// Writes the trailer, fsyncs, renames to the final name and fsyncs the directory.
    /// Returns the final path, size and SHA-256. After an error it can be called again: it
    /// resumes at the step that failed (a torn trailer is cut off and written again). With a
    /// hash lane, the lane finishes the digest while this thread fsyncs.
    ///
    /// A failed fsync is retried as asked; on Linux the pages it could not write may already
    /// be marked clean, so a later successful fsync does not prove they reached the device.
    /// ENOSPC and EDQUOT are reported by `write` on the file systems we run on (ext4, xfs and
    /// tmpfs reserve space at write time), where this does not arise.
    pub fn finalize(&mut self) -> io::Result<(PathBuf, u64, String)> {
        if self.stage == Stage::Open {
            let t = self.trailer.encode();
            self.write(&[&t], Then::Copy)?;
            self.stage = Stage::TrailerWritten;
        }
        if self.digest.is_none() && self.digest_rx.is_none() {
            match &mut self.hash {
                Hash::Here(h) => {
                    self.digest = Some(crate::archive::manifest::hex(&h.clone().finalize()))
                }
                Hash::Lane(f) => self.digest_rx = Some(f.finish()?),
            }
        }
        if self.stage == Stage::TrailerWritten {
            self.file
                .sync_all()
                .map_err(|e| at_path(&self.partial, e))?;
            self.stage = Stage::Synced;
        }
        if self.stage == Stage::Synced {
            std::fs::rename(&self.partial, &self.final_path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    PathError {
                        path: self.final_path.clone(),
                        source: io::Error::new(
                            e.kind(),
                            format!("renaming {} to it: {e}", self.partial.display()),
                        ),
                    },
                )
            })?;
            self.stage = Stage::Renamed;
        }
        sync_dir(self.final_path.parent().expect("segment has a directory"))?;
        if let Some(rx) = self.digest_rx.take() {
            let d = rx
                .recv()
                .map_err(|_| io::Error::other("the hash thread stopped"))?;
            self.digest = Some(crate::archive::manifest::hex(&d));
        }
        let sha = self.digest.clone().expect("digest computed above");
        Ok((self.final_path.clone(), self.len, sha))
    }
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| at_path(dir, e))
}

/// Test-only fault injection: make a segment write on this thread stop half way with
/// ENOSPC, as a full file system does. Outside tests `write_vectored` is the file's own.
#[cfg(not(test))]
mod fault {
    use std::fs::File;
    use std::io::{self, IoSlice, Write};

    #[inline]
    pub fn write_vectored(f: &mut File, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        f.write_vectored(bufs)
    }
}

#[cfg(test)]
pub(crate) mod fault {
    use std::cell::Cell;
    use std::fs::File;
    use std::io::{self, IoSlice, Write};

    thread_local! {
        /// Bytes this thread may still write to segments before the injected failure.
        static BUDGET: Cell<Option<u64>> = const { Cell::new(None) };
    }

    /// After `bytes` more segment bytes, the write in progress writes what fits and the
    /// next call fails with ENOSPC, once. (A write that fills the disk exactly returns a
    /// short count; the next one gets ENOSPC.)
    pub fn enospc_after(bytes: u64) {
        BUDGET.with(|b| b.set(Some(bytes)));
    }

    /// No fault pending.
    pub fn clear() {
        BUDGET.with(|b| b.set(None));
    }

    pub fn write_vectored(f: &mut File, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        let allow = match BUDGET.with(|b| b.get()) {
            None => want,
            Some(0) => {
                BUDGET.with(|b| b.set(None));
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            Some(left) => want.min(left as usize),
        };
        let n = if allow == want {
            f.write_vectored(bufs)?
        } else {
            // Write only the first `allow` bytes of the slices.
            let mut left = allow;
            let mut part = Vec::new();
            for b in bufs {
                let k = b.len().min(left);
                part.extend_from_slice(&b[..k]);
                left -= k;
            }
            f.write(&part)?
        };
        if let Some(left) = BUDGET.with(|b| b.get()) {
            BUDGET.with(|b| b.set(Some(left - n as u64)));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(path: &Path) -> Vec<u8> {
        zstd::stream::decode_all(File::open(path).unwrap()).unwrap()
    }

    #[test]
    fn both_encoders_produce_frames_zstd_decodes() {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for mode in [Compress::Zstd(1), Compress::None] {
            let dir = tempfile::tempdir().unwrap();
            let mut enc = Encoder::new(mode).unwrap();
            let mut seg = SegmentFile::create(
                dir.path(),
                "000001.pcap.zst",
                1,
                b"HEADER",
                false,
                6,
                &mut enc,
                None,
            )
            .unwrap();
            seg.push_frame(
                &[&big[..1000], &big[1000..]],
                None,
                FrameEntry::default(),
                &mut enc,
            )
            .unwrap();
            seg.push_frame(&[b"tail"], None, FrameEntry::default(), &mut enc)
                .unwrap();
            seg.push_frame(&[], None, FrameEntry::default(), &mut enc)
                .unwrap();
            let (path, len, sha) = seg.finalize().unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len() as u64, len);
            assert_eq!(sha, crate::archive::manifest::hex(&Sha256::digest(&bytes)));
            let mut want = b"HEADER".to_vec();
            want.extend(&big);
            want.extend(b"tail");
            assert_eq!(decode(&path), want, "{mode:?}");
            let t = crate::archive::index::read_trailer(&File::open(&path).unwrap()).unwrap();
            assert_eq!(t.frames.len(), 3);
            assert_eq!(t.frames[0].raw_len, 300_000);
            let f = t.frames[1];
            let one = zstd::stream::decode_all(
                &bytes[f.offset as usize..(f.offset + f.comp_len as u64) as usize],
            )
            .unwrap();
            assert_eq!(one, b"tail", "each frame decodes on its own");
        }
    }

    /// Writes `frames` into a segment, failing once with ENOSPC after `fault_at` bytes (if
    /// given) and retrying the step that failed, as the writer does. Returns the file, its
    /// SHA-256 as finalize reported it, and how many faults were seen.
    fn write_with_fault(
        dir: &Path,
        mode: Compress,
        frames: &[Vec<u8>],
        fault_at: Option<u64>,
    ) -> (Vec<u8>, String, u32) {
        if let Some(b) = fault_at {
            fault::enospc_after(b);
        }
        let mut faults = 0;
        let mut check = |e: io::Error| {
            assert_eq!(errno(&e), Some(libc::ENOSPC), "{e}");
            assert!(
                e.to_string().contains("000001.pcap.zst"),
                "names the file: {e}"
            );
            assert!(e.to_string().contains("No space left on device"), "{e}");
            faults += 1;
        };
        let mut enc = Encoder::new(mode).unwrap();
        let mut seg = loop {
            match SegmentFile::create(
                dir,
                "000001.pcap.zst",
                1,
                b"HEADER",
                true,
                6,
                &mut enc,
                None,
            ) {
                Ok(s) => break s,
                Err(e) => check(e),
            }
        };
        for (i, f) in frames.iter().enumerate() {
            let (a, b) = f.split_at(f.len() / 3);
            let entry = FrameEntry {
                min_ns: i as i64,
                max_ns: 2 * i as i64,
                packets: i as u32,
                ..FrameEntry::default()
            };
            while let Err(e) = seg.push_frame(&[a, b], None, entry, &mut enc) {
                check(e);
            }
        }
        let (path, len, sha) = loop {
            match seg.finalize() {
                Ok(r) => break r,
                Err(e) => check(e),
            }
        };
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, len);
        assert!(!dir.join("000001.pcap.zst.partial").exists());
        (bytes, sha, faults)
    }

    #[test]
    fn a_write_that_fails_half_way_and_is_retried_leaves_the_same_segment() {
        let frames: Vec<Vec<u8>> = (0..5u32)
            .map(|k| {
                (0..(900 + 700 * k))
                    .map(|i| ((i * (k + 3)) % 251) as u8)
                    .collect()
            })
            .collect();
        for mode in [Compress::Zstd(3), Compress::None] {
            let clean_dir = tempfile::tempdir().unwrap();
            let (clean, clean_sha, faults) =
                write_with_fault(clean_dir.path(), mode, &frames, None);
            assert_eq!(faults, 0);
            assert_eq!(
                clean_sha,
                crate::archive::manifest::hex(&Sha256::digest(&clean))
            );
            // A fault at every byte of the file: in the header frame, in each data frame,
            // between slices of one writev, in the trailer.
            let step = if mode == Compress::None { 5 } else { 1 };
            for at in (0..clean.len() as u64).step_by(step) {
                let dir = tempfile::tempdir().unwrap();
                let (got, sha, faults) = write_with_fault(dir.path(), mode, &frames, Some(at));
                assert_eq!(faults, 1, "{mode:?}: the fault at byte {at} was hit once");
                assert!(
                    got == clean,
                    "{mode:?}: fault at byte {at} changed the segment"
                );
                assert_eq!(sha, clean_sha, "{mode:?}: fault at byte {at}");
            }
            let dir = tempfile::tempdir().unwrap();
            let (_, _, faults) =
                write_with_fault(dir.path(), mode, &frames, Some(clean.len() as u64 + 1));
            assert_eq!(faults, 0, "no fault past the end of the file");
            fault::clear();
        }
    }

    #[test]
    fn an_abandoned_segment_ends_on_a_frame_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let mut enc = Encoder::new(Compress::None).unwrap();
        let mut seg = SegmentFile::create(
            dir.path(),
            "000001.pcap.zst",
            1,
            b"HDR",
            false,
            3,
            &mut enc,
            None,
        )
        .unwrap();
        seg.push_frame(&[&[1u8; 5000]], None, FrameEntry::default(), &mut enc)
            .unwrap();
        let good = seg.len;
        fault::enospc_after(2000);
        let e = seg
            .push_frame(&[&[2u8; 5000]], None, FrameEntry::default(), &mut enc)
            .unwrap_err();
        assert_eq!(errno(&e), Some(libc::ENOSPC));
        let partial = dir.path().join("000001.pcap.zst.partial");
        assert_eq!(std::fs::metadata(&partial).unwrap().len(), good + 2000);
        seg.abandon();
        assert_eq!(
            std::fs::metadata(&partial).unwrap().len(),
            good,
            "the torn frame is cut off"
        );
        assert_eq!(seg.len, good);
        assert_eq!(seg.trailer.frames.len(), 1);
    }

    #[test]
    fn compress_spec_parses() {
        assert_eq!("zstd:3".parse::<Compress>(), Ok(Compress::Zstd(3)));
        assert_eq!("none".parse::<Compress>(), Ok(Compress::None));
        assert!("lz4"
            .parse::<Compress>()
            .unwrap_err()
            .contains("unknown compression"));
    }
}
