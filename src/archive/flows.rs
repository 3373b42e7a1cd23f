//! The flow index of segments already in an archive (docs/ARCHIVE.md, "Flow index"):
//! [`index_segment`] reads a finalized segment's packets, sums them into a
//! [`FlowTable`], writes the sidecar beside the segment ([`write_sidecar`]: temporary name,
//! fsync, rename, fsync the directory) and returns its `flows` entry for the caller to append.
//! The recorder does the same at finalize with its own table: [`sidecar::encode`], then
//! [`write_sidecar`], and [`flows_entry`] for the line. `zcap index` ([`run`]) does it for
//! every live segment without a `flows` line, under the archive lock; `verify` checks sidecars with [`check_sidecar`] and `verify --repair`
//! rebuilds the missing and damaged ones with [`index_segment`]. Paths come from the manifest
//! and pass [`super::path`]'s rule first; the sidecar's path is derived from the segment's
//! ([`super::sidecar_name`]) and nothing is opened through a symbolic link.

use super::catalog::Catalog;
use super::manifest::{self, Entry, FlowsEntry, SegmentEntry};
use super::segment::{Decoder, Segment};
use crate::flow::sidecar::{self, Meta, Row};
use crate::flow::{self, FlowTable};
use crate::stream::{pcap, pcapng, Format, UnitKind};
use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What `zcap index` does.
#[derive(Debug, Clone)]
pub struct Options {
    /// The archive directory.
    pub dir: PathBuf,
}

/// One packet unit of a decompressed frame (a pcap record, a pcapng EPB/OPB/SPB): its
/// interface, wire length and captured bytes.
pub fn packet(fmt: Format, rec: &[u8]) -> Result<(u32, u32, &[u8]), String> {
    match fmt {
        Format::Pcap(fh) => {
            let r = pcap::Record::new_checked(rec, &fh).ok_or("a short pcap record")?;
            let data = rec
                .get(pcap::RECORD_HEADER_LEN..r.total_len())
                .ok_or("a short pcap record")?;
            Ok((0, r.origlen(), data))
        }
        Format::PcapNg { big_endian } => {
            let b = pcapng::Block::new_checked(rec, big_endian)?;
            let caplen = b.check_packet()? as usize;
            let rd = |o: usize| rec.get(o..o + 4).map(|b| pcap::rd32(b, big_endian));
            let (origlen, at) = match b.block_type() {
                pcapng::SPB => (rd(8), 12),
                _ => (rd(24), 28),
            };
            let data = rec.get(at..at + caplen).ok_or("a short packet block")?;
            Ok((b.interface(), origlen.ok_or("a short packet block")?, data))
        }
    }
}

/// The flows of the finalized segment at `path`: every packet of every data frame, keyed by
/// its headers and counted with its frame index. `table` is cleared first and holds the
/// flows afterwards. Errors name the file and frame.
pub fn segment_flows(path: &Path, table: &mut FlowTable, dec: &mut Decoder) -> Result<(), String> {
    table.clear();
    let seg = Segment::open(path).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut parser = seg.parser(dec, &mut buf).map_err(|e| e.to_string())?;
    for i in 0..seg.trailer.frames.len() {
        seg.read_frame(i, dec, &mut buf)
            .map_err(|e| e.to_string())?;
        let frame = u32::try_from(i).map_err(|_| format!("{}: too many frames", path.display()))?;
        let mut off = 0;
        loop {
            let rec = parser.next(&buf, &mut off).map_err(|e| {
                format!(
                    "{}: data frame {i}: at byte {} of the frame: {}",
                    path.display(),
                    e.offset,
                    e.reason
                )
            })?;
            let Some(rec) = rec else { break };
            let UnitKind::Packet { ts_ns } = rec.kind else {
                continue;
            };
            let fmt = parser.format().ok_or_else(|| {
                format!(
                    "{}: data frame {i}: a packet before the header",
                    path.display()
                )
            })?;
            let bytes = &buf[rec.range.clone()];
            let (iface, wire, data) = packet(fmt, bytes).map_err(|why| {
                format!(
                    "{}: data frame {i}: at byte {} of the frame: {why}",
                    path.display(),
                    rec.range.start
                )
            })?;
            let linktype = match fmt {
                Format::Pcap(fh) => fh.linktype,
                Format::PcapNg { .. } => {
                    let ifs = parser.framer().interfaces();
                    let Some(ifc) = ifs.get(iface as usize) else {
                        return Err(format!(
                            "{}: data frame {i}: a packet on interface {iface}, which the section does not declare",
                            path.display()
                        ));
                    };
                    u32::from(ifc.linktype)
                }
            };
            table.add(&flow::parse(linktype, data), ts_ns, wire, frame);
        }
    }
    Ok(())
}

/// Writes `bytes` as the sidecar of segment `segment` (a path that passed the naming rule)
/// in the archive at `dir`: to a temporary name in the stream's directory, fsynced, renamed
/// over the sidecar's name (a link there is replaced, never followed), and the directory
/// fsynced. Returns the sidecar's path relative to the archive.
pub fn write_sidecar(dir: &Path, segment: &str, bytes: &[u8]) -> io::Result<String> {
    let rel = super::sidecar_name(segment);
    let path = dir.join(&rel);
    let tmp = dir.join(format!("{rel}.tmp"));
    super::path::replace_file(&tmp, &path, bytes)?;
    crate::writer::segment::sync_dir(path.parent().unwrap_or(dir))?;
    Ok(rel)
}

/// Why a segment was not indexed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The segment cannot be read (missing, damaged, a link): it stays unindexed, and
    /// `verify` says why.
    #[error("{0}")]
    Segment(String),
    #[error("the flow index of {segment}: {error}")]
    Encode {
        segment: String,
        error: sidecar::SidecarError,
    },
    /// Writing the sidecar failed (the error names the file).
    #[error("{0}")]
    Write(#[from] io::Error),
}

/// Builds and writes the sidecar of the live segment `seg` of the archive at `dir`, and
/// returns the `flows` entry that names it (not appended: the caller holds the manifest).
/// The segment must hash to its line's SHA-256 first.
pub fn index_segment(
    dir: &Path,
    seg: &SegmentEntry,
    table: &mut FlowTable,
    dec: &mut Decoder,
) -> Result<FlowsEntry, IndexError> {
    let path =
        super::checked_path(dir, &seg.path).map_err(|e| IndexError::Segment(e.to_string()))?;
    // An index of altered data would look as good as any: the segment must be the one its
    // line finalized.
    let (sha, len) = super::verify::sha256_file(&path)
        .map_err(|e| IndexError::Segment(format!("{}: {e}", path.display())))?;
    if sha != seg.sha256 || len != seg.bytes {
        return Err(IndexError::Segment(format!(
            "{}: not the segment its manifest line finalized (SHA-256 or size differs): an index is not built from altered data",
            path.display()
        )));
    }
    segment_flows(&path, table, dec).map_err(IndexError::Segment)?;
    let meta = Meta {
        stream: &seg.stream,
        segment: &seg.path,
        seq: seg.seq,
    };
    let bytes = sidecar::encode(&meta, table.rows()).map_err(|error| IndexError::Encode {
        segment: seg.path.clone(),
        error,
    })?;
    write_sidecar(dir, &seg.path, &bytes)?;
    Ok(flows_entry(&seg.path, &bytes, table))
}

/// The `flows` line of the sidecar `bytes` that [`sidecar::encode`] made of `table`'s rows
/// for the segment at `segment`: its size, SHA-256, rows and cut sums.
pub fn flows_entry(segment: &str, bytes: &[u8], table: &FlowTable) -> FlowsEntry {
    let (cut_packets, cut_bytes) = table.rows().fold((0u64, 0u64), |(p, b), r| {
        (
            p.saturating_add(r.cut_packets),
            b.saturating_add(r.cut_bytes),
        )
    });
    FlowsEntry {
        segment: segment.to_string(),
        bytes: bytes.len() as u64,
        sha256: manifest::hex(&Sha256::digest(bytes)),
        flows: table.len() as u64,
        cut_packets,
        cut_bytes,
    }
}

/// Reads a sidecar file whole, never through a symbolic link. `Ok(None)` when it is not
/// there.
pub fn read_sidecar(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    match super::path::open_nofollow(path).and_then(|mut f| f.read_to_end(&mut bytes)) {
        Ok(_) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(io::Error::new(
            e.kind(),
            "a symbolic link, which could lead outside the archive; zcap never makes links",
        )),
        Err(e) => Err(e),
    }
}

/// Checks a sidecar's bytes against the `flows` line (`line`) that names it and the segment
/// line it indexes: size and SHA-256 as recorded, it decodes, its rows are as many as the
/// line says, its cut counts add up to the line's, its frame indices lie inside the segment
/// and, when nothing was cut, its flows hold every packet of the segment. The decoded rows,
/// or what is wrong in words (the caller names the file).
pub fn check_sidecar(
    bytes: &[u8],
    line: usize,
    f: &FlowsEntry,
    seg: &SegmentEntry,
) -> Result<Vec<Row>, String> {
    let sha = manifest::hex(&Sha256::digest(bytes));
    if sha != f.sha256 {
        return Err(format!(
            "SHA-256 {sha} does not match the {} recorded on manifest line {line}: the file changed after it was written",
            f.sha256
        ));
    }
    if bytes.len() as u64 != f.bytes {
        return Err(format!(
            "{} bytes, manifest line {line} says {}",
            bytes.len(),
            f.bytes
        ));
    }
    let rows = sidecar::decode(bytes).map_err(|e| e.to_string())?;
    if rows.len() as u64 != f.flows {
        return Err(format!(
            "{} flows, manifest line {line} says {}",
            rows.len(),
            f.flows
        ));
    }
    let sum = |g: fn(&Row) -> u64| rows.iter().map(g).fold(0u64, u64::saturating_add);
    let cut = (sum(|r| r.cut_packets), sum(|r| r.cut_bytes));
    if cut != (f.cut_packets, f.cut_bytes) {
        return Err(format!(
            "its flows count {} cut packets ({} bytes), manifest line {line} says {} ({})",
            cut.0, cut.1, f.cut_packets, f.cut_bytes
        ));
    }
    if let Some(r) = rows
        .iter()
        .find(|r| r.frames.iter().any(|&i| u64::from(i) >= seg.frames))
    {
        return Err(format!(
            "a flow lists data frame {}, the segment has {}",
            r.frames.iter().max().copied().unwrap_or(0),
            seg.frames
        ));
    }
    let packets = sum(Row::packets);
    if cut.0 == 0 && packets != seg.packets {
        return Err(format!(
            "its flows hold {packets} packets, the segment {}",
            seg.packets
        ));
    }
    Ok(rows)
}

/// What [`index_missing`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Indexed {
    pub segments: u64,
    pub flows: u64,
    /// Live segments indexed already.
    pub had: u64,
    /// Segments evicted from this copy (their index is the uploader's to carry).
    pub evicted: u64,
    /// Segments that could not be read, and why: left unindexed.
    pub unreadable: Vec<String>,
}

/// Indexes every live segment of `c` (the archive at `dir`) that has no `flows` line,
/// appending each line through `w` after its sidecar is on disk. A segment that cannot be
/// read is said on stderr and skipped; a sidecar or manifest line that cannot be written
/// ends the run. Progress goes to stderr every few seconds when there is much to do.
pub fn index_missing(dir: &Path, c: &Catalog, w: &mut manifest::Writer) -> anyhow::Result<Indexed> {
    let mut done = Indexed {
        evicted: c.evicted.len() as u64,
        ..Indexed::default()
    };
    let todo: Vec<&SegmentEntry> = c
        .segments
        .iter()
        .map(|l| &l.entry)
        .filter(|e| !c.flows.contains_key(&e.path))
        .collect();
    done.had = (c.segments.len() - todo.len()) as u64;
    let mut table = FlowTable::new();
    let mut dec = Decoder::new();
    let start = Instant::now();
    let mut said = start;
    for (i, seg) in todo.iter().enumerate() {
        if said.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "zcap: index: {i} of {} segments ({} flows so far), now {}",
                todo.len(),
                done.flows,
                seg.path
            );
            said = Instant::now();
        }
        let f = match index_segment(dir, seg, &mut table, &mut dec) {
            Ok(f) => f,
            Err(IndexError::Segment(why)) => {
                eprintln!("zcap: index: not indexing {}: {why}", seg.path);
                done.unreadable.push(why);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        done.flows += f.flows;
        w.append(&Entry::Flows(f))?;
        done.segments += 1;
    }
    Ok(done)
}

/// `zcap index DIR`: builds the missing flow indexes of a local archive. Refuses while a
/// recorder holds the archive's lock, and an archive whose manifest names paths outside the
/// naming rule. Idempotent: a second run indexes nothing. Ok(false) when a segment could not
/// be read.
pub fn run(o: &Options) -> anyhow::Result<bool> {
    let dir = &o.dir;
    let _lock = super::lock_offline(
        dir,
        " and indexes its segments itself; run `zcap index` when it has stopped",
    )?;
    let c = Catalog::load(dir)?;
    c.trusted()?;
    let mut w = manifest::Writer::open(dir, super::create_entry)?;
    let d = index_missing(dir, &c, &mut w)?;
    let mut also = vec![format!("{} already indexed", d.had)];
    if d.evicted > 0 {
        also.push(format!(
            "{} evicted after upload (not here to read)",
            d.evicted
        ));
    }
    if !d.unreadable.is_empty() {
        also.push(format!(
            "{} unreadable (`zcap verify {}` says why)",
            d.unreadable.len(),
            dir.display()
        ));
    }
    println!(
        "index: {} segments indexed ({} flows), {}: {}",
        d.segments,
        d.flows,
        also.join(", "),
        dir.display()
    );
    Ok(d.unreadable.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::parse::tests::{eth, ipv4, tcp};

    fn seg_entry(packets: u64, frames: u64) -> SegmentEntry {
        SegmentEntry {
            stream: "s".into(),
            seq: 1,
            path: "s/000001.pcap.zst".into(),
            format: "pcap".into(),
            linktypes: vec![1],
            nanos: false,
            bytes: 0,
            raw: 0,
            packets,
            frames,
            first_ns: None,
            last_ns: None,
            stream_off: 24,
            cont: false,
            sha256: String::new(),
            time: String::new(),
            repaired: false,
            drops: None,
        }
    }

    fn sidecar_of(t: &FlowTable) -> (Vec<u8>, FlowsEntry) {
        let meta = Meta {
            stream: "s",
            segment: "s/000001.pcap.zst",
            seq: 1,
        };
        let bytes = sidecar::encode(&meta, t.rows()).unwrap();
        let f = flows_entry(meta.segment, &bytes, t);
        (bytes, f)
    }

    #[test]
    fn a_sidecar_is_checked_against_its_line_and_its_segment() {
        let mut t = FlowTable::new();
        let h = flow::parse(1, &eth(&[], 0x0800, &ipv4(6, &[], 0, &tcp(1, 2))));
        t.add(&h, 10, 60, 0);
        t.add(&h, 20, 60, 1);
        let (bytes, f) = sidecar_of(&t);
        assert_eq!(
            check_sidecar(&bytes, 5, &f, &seg_entry(2, 2))
                .unwrap()
                .len(),
            1
        );
        let e = check_sidecar(&bytes, 5, &f, &seg_entry(3, 2)).unwrap_err();
        assert_eq!(e, "its flows hold 2 packets, the segment 3");
        let e = check_sidecar(&bytes, 5, &f, &seg_entry(2, 1)).unwrap_err();
        assert_eq!(e, "a flow lists data frame 1, the segment has 1");
        let more = FlowsEntry {
            flows: 2,
            ..f.clone()
        };
        let e = check_sidecar(&bytes, 5, &more, &seg_entry(2, 2)).unwrap_err();
        assert_eq!(e, "1 flows, manifest line 5 says 2");
        let mut flipped = bytes.clone();
        flipped[10] ^= 1;
        let e = check_sidecar(&flipped, 5, &f, &seg_entry(2, 2)).unwrap_err();
        assert!(e.contains("recorded on manifest line 5"), "{e}");
    }

    #[test]
    fn write_sidecar_never_writes_through_a_link() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let (dir, outside) = (t.path().join("a"), t.path().join("outside"));
        std::fs::create_dir_all(dir.join("s")).unwrap();
        std::fs::write(&outside, b"keep").unwrap();
        // A link at the temporary name: refused, nothing written outside.
        symlink(&outside, dir.join("s/000001.flows.parquet.tmp")).unwrap();
        let e = write_sidecar(&dir, "s/000001.pcap.zst", b"PAR1").unwrap_err();
        assert!(e.to_string().contains("000001.flows.parquet.tmp"), "{e}");
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        // A link at the final name is replaced, not followed.
        symlink(&outside, dir.join("s/000001.flows.parquet")).unwrap();
        let rel = write_sidecar(&dir, "s/000001.pcap.zst", b"PAR1").unwrap();
        assert_eq!(rel, "s/000001.flows.parquet");
        let m = std::fs::symlink_metadata(dir.join(&rel)).unwrap();
        assert!(m.is_file());
        assert_eq!(std::fs::read(dir.join(&rel)).unwrap(), b"PAR1");
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert!(!dir.join("s/000001.flows.parquet.tmp").exists());
        symlink(&outside, dir.join("s/000002.flows.parquet")).unwrap();
        let e = read_sidecar(&dir.join("s/000002.flows.parquet")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }
}
