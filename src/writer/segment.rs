//! One segment file being written: the header frame, data frames encoded from borrowed area
//! slices (zstd, or zstd "raw" blocks written with writev straight from the area), a running
//! SHA-256, and atomic finalization (trailer, fsync, rename, fsync directory).

use crate::archive::index::{FrameEntry, Trailer};
use crate::archive::PARTIAL_SUFFIX;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::path::{Path, PathBuf};
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
    block_heads: Vec<[u8; 3]>,
}

impl Encoder {
    pub fn new(mode: Compress) -> io::Result<Encoder> {
        let cctx = match mode {
            Compress::Zstd(level) => {
                let mut c = CCtx::create();
                let e =
                    |code| io::Error::other(format!("zstd: {}", zstd_safe::get_error_name(code)));
                c.set_parameter(CParameter::CompressionLevel(level))
                    .map_err(e)?;
                c.set_parameter(CParameter::ChecksumFlag(true)).map_err(e)?;
                Some(c)
            }
            Compress::None => None,
        };
        Ok(Encoder {
            mode,
            cctx,
            out: Vec::new(),
            block_heads: Vec::new(),
        })
    }

    pub fn mode(&self) -> Compress {
        self.mode
    }

    /// Writes one frame whose content is `parts` concatenated; returns its encoded length.
    pub fn frame(&mut self, parts: &[&[u8]], seg: &mut SegmentFile) -> io::Result<u64> {
        let raw: usize = parts.iter().map(|p| p.len()).sum();
        match self.cctx.as_mut() {
            Some(cctx) => {
                let zerr =
                    |code| io::Error::other(format!("zstd: {}", zstd_safe::get_error_name(code)));
                cctx.reset(ResetDirective::SessionOnly).map_err(zerr)?;
                self.out.clear();
                self.out.reserve(zstd_safe::compress_bound(raw) + 64);
                let mut ob = OutBuffer::around_pos(&mut self.out, 0);
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
                seg.write(&[&self.out])?;
                Ok(self.out.len() as u64)
            }
            None => {
                // A zstd frame of raw blocks (RFC 8878 3.1.1): magic, a descriptor with the
                // single-segment flag and an 8-byte content size, then blocks of at most 128 KiB.
                let mut head = [0u8; 13];
                head[..4].copy_from_slice(&ZSTD_MAGIC.to_le_bytes());
                head[4] = 0xE0;
                head[5..].copy_from_slice(&(raw as u64).to_le_bytes());
                let nblocks = raw.div_ceil(RAW_BLOCK_MAX).max(1);
                self.block_heads.clear();
                for b in 0..nblocks {
                    let size = (raw - b * RAW_BLOCK_MAX).min(RAW_BLOCK_MAX) as u32;
                    let last = (b + 1 == nblocks) as u32;
                    let h = (size << 3) | last;
                    self.block_heads
                        .push([h as u8, (h >> 8) as u8, (h >> 16) as u8]);
                }
                let mut iov: Vec<&[u8]> = Vec::with_capacity(parts.len() + 2 * nblocks + 1);
                iov.push(&head);
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
                if raw == 0 {
                    iov.push(&self.block_heads[0]);
                }
                seg.write(&iov)?;
                Ok((13 + 3 * nblocks + raw) as u64)
            }
        }
    }
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
    hasher: Sha256,
}

impl SegmentFile {
    /// Creates `dir/NAME.partial` and writes the header frame.
    pub fn create(
        dir: &Path,
        name: &str,
        seq: u64,
        header: &[u8],
        cont: bool,
        stream_off: u64,
        enc: &mut Encoder,
    ) -> io::Result<SegmentFile> {
        let final_path = dir.join(name);
        let partial = dir.join(format!("{name}{PARTIAL_SUFFIX}"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", partial.display())))?;
        let mut seg = SegmentFile {
            file,
            partial,
            final_path,
            seq,
            len: 0,
            raw: header.len() as u64,
            opened: Instant::now(),
            trailer: Trailer {
                flags: if cont {
                    crate::archive::index::FLAG_CONT
                } else {
                    0
                },
                header_raw_len: header.len() as u32,
                stream_off,
                ..Trailer::default()
            },
            hasher: Sha256::new(),
        };
        let n = enc.frame(&[header], &mut seg)?;
        seg.trailer.header_comp_len = n as u32;
        Ok(seg)
    }

    /// Writes all of `parts` (one writev where possible) and hashes them.
    fn write(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = match self.file.write_vectored(&rest[..rest.len().min(1024)]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{}: {e}", self.partial.display()),
                    ))
                }
            };
            IoSlice::advance_slices(&mut rest, n);
        }
        for p in parts {
            self.hasher.update(p);
            self.len += p.len() as u64;
        }
        Ok(())
    }

    /// Appends one data frame holding `parts`, described by `entry` (offset and lengths are
    /// filled in here).
    pub fn push_frame(
        &mut self,
        parts: &[&[u8]],
        mut entry: FrameEntry,
        enc: &mut Encoder,
    ) -> io::Result<()> {
        entry.offset = self.len;
        entry.raw_len = parts.iter().map(|p| p.len() as u32).sum();
        entry.comp_len = enc.frame(parts, self)? as u32;
        self.raw += entry.raw_len as u64;
        self.trailer.frames.push(entry);
        Ok(())
    }

    /// Writes the trailer, fsyncs, renames to the final name and fsyncs the directory.
    /// Returns the final path, size and SHA-256.
    pub fn finalize(mut self) -> io::Result<(PathBuf, u64, String)> {
        let t = self.trailer.encode();
        self.write(&[&t])?;
        self.file.sync_all()?;
        std::fs::rename(&self.partial, &self.final_path)?;
        sync_dir(self.final_path.parent().expect("segment has a directory"))?;
        let sha = crate::archive::manifest::hex(&self.hasher.finalize());
        Ok((self.final_path, self.len, sha))
    }
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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
            )
            .unwrap();
            seg.push_frame(
                &[&big[..1000], &big[1000..]],
                FrameEntry::default(),
                &mut enc,
            )
            .unwrap();
            seg.push_frame(&[b"tail"], FrameEntry::default(), &mut enc)
                .unwrap();
            seg.push_frame(&[], FrameEntry::default(), &mut enc)
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
