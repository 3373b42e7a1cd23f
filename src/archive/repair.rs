//! `zcap verify --repair`: brings an archive back to consistency after a crash
//! (docs/ARCHIVE.md, "Crash recovery"). It drops a torn last manifest line, recovers each
//! `.partial` segment (the header frame and every following data frame that is whole,
//! decompresses and parses as whole records; the rest is cut off), finalizes segments that
//! were renamed but never logged, rebuilds flow-index sidecars that are missing or damaged
//! (and indexes the segments it finalized) from their segments through
//! [`super::flows::index_segment`], and records that interrupted streams ended. Every change is
//! logged in the manifest. It never rewrites a manifest line that belongs to the chain and
//! never touches a segment the manifest already finalized. The caller holds the archive lock.
//! An archive whose manifest names paths that break the naming rule ([`super::path`]) is
//! not crash debris: it is left unchanged. Files are never opened through symbolic links,
//! and every I/O error names its path.

use super::catalog::{scan_disk, Catalog, DiskSegment};
use super::index::{FrameEntry, Trailer, FLAG_CONT, FRAME_HAS_IDB};
use super::manifest::{self, ChainError, Entry, SegmentEntry};
use super::segment::{summarize_frame, Decoder, Parser, Segment};
use super::verify::{scan_segment, sha256_file};
use crate::stream::Format;
use anyhow::Context;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::SystemTime;
use zstd::zstd_safe;

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Reads a whole file, never through a symbolic link.
fn read_nofollow(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    super::path::open_nofollow(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes)
}

/// Runs every repair and returns what it did, one sentence each. Damage that is not crash
/// debris (an altered line or segment) is left for `verify` to report.
pub fn repair(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    let path = dir.join(manifest::FILE);
    let text = read_nofollow(&path)?;
    let text = String::from_utf8_lossy(&text).into_owned();
    let bad = Catalog::parse(dir, &text).bad_paths;
    if !bad.is_empty() {
        for e in &bad {
            eprintln!("zcap: verify --repair: {e}");
        }
        eprintln!(
            "zcap: verify --repair: the manifest names paths outside the archive's naming rule: that is damage or tampering, not crash debris, so nothing was changed"
        );
        return Ok(done);
    }
    let mut dropped = None;
    match manifest::parse(&text) {
        Ok(_) => {}
        Err(ChainError::Torn {
            line,
            reason,
            last: true,
        }) => {
            let keep: usize = text
                .split_inclusive('\n')
                .take(line - 1)
                .map(str::len)
                .sum();
            let tmp = dir.join(format!("{}.repair-tmp", manifest::FILE));
            super::path::replace_file(&tmp, &path, &text.as_bytes()[..keep])
                .context("dropping the torn line")?;
            sync_dir(dir)?;
            dropped = Some(format!(
                "dropped torn manifest line {line} ({reason}; {} bytes)",
                text.len() - keep
            ));
        }
        Err(e) => {
            // Not crash debris: leave the evidence for verify to report.
            eprintln!(
                "zcap: verify --repair: {e}; the chain cannot be repaired without rewriting history, so nothing was changed"
            );
            return Ok(done);
        }
    }
    let mut w = manifest::Writer::open(dir, super::create_entry)?;
    if let Some(what) = dropped {
        w.append(&Entry::Repair { what: what.clone() })?;
        done.push(what);
    }

    let cat = Catalog::load(dir)?;
    let mut dec = Decoder::new();
    let disk = scan_disk(dir)?;
    // Segments finalized here: their recorder's flow table died with it.
    let mut finalized = Vec::new();
    for e in &disk.refused {
        eprintln!("zcap: verify --repair: leaving {e} alone");
    }
    for d in disk.segments {
        let ended = cat.stream_ends.iter().find(|e| e.stream == d.stream);
        if let (Some(end), false) = (ended, cat.knows(&d.rel) || cat.deleted.contains(&d.rel)) {
            // A crash leaves debris only in a stream still being written; a file that turns up
            // in a stream whose end is recorded came from elsewhere.
            eprintln!(
                "zcap: verify --repair: not adopting {}: stream {} ended on manifest line {}, so this file is foreign, not crash debris (left in place)",
                d.rel, d.stream, end.line
            );
            continue;
        }
        if d.partial {
            let (what, kept) = recover_partial(dir, &cat, &d, &mut dec, &mut w)?;
            finalized.extend(kept);
            done.push(what);
        } else if cat.deleted.contains(&d.rel) {
            let path = dir.join(&d.rel);
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            sync_dir(path.parent().expect("segments live in stream directories"))?;
            let what = format!("removed {}: the manifest had recorded its deletion", d.rel);
            w.append(&Entry::Repair { what: what.clone() })?;
            done.push(what);
        } else if !cat.knows(&d.rel) {
            if let Some(what) = finalize_orphan(dir, &d, &mut dec, &mut w)? {
                finalized.push(d.rel.clone());
                done.push(what);
            }
        }
    }
    let cat = Catalog::load(dir)?;
    done.extend(repair_flows(dir, &cat, &finalized, &mut w)?);
    // Flow indexes of deleted segments (a crash between retention's two removals).
    let named: std::collections::HashSet<String> =
        cat.flows.keys().map(|p| super::sidecar_name(p)).collect();
    for s in &disk.sidecars {
        let deleted = cat.deleted.iter().any(|p| super::sidecar_name(p) == *s);
        if named.contains(s) || !deleted {
            continue;
        }
        let path = dir.join(s);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        sync_dir(path.parent().expect("sidecars live in stream directories"))?;
        let what = format!("removed {s}: the flow index of a deleted segment");
        w.append(&Entry::Repair { what: what.clone() })?;
        done.push(what);
    }

    // Streams whose recorder died never got their `end` entry.
    let cat = Catalog::load(dir)?;
    for s in cat.stream_names() {
        if cat.stream_ends.iter().any(|e| e.stream == s) {
            continue;
        }
        let segs = cat.stream_segments(&s);
        let packets = segs.iter().map(|e| e.packets).sum();
        let bytes = segs.last().map_or(0, |e| {
            super::checked_path(dir, &e.path)
                .map_err(|e| e.to_string())
                .and_then(|p| Segment::open(&p).map_err(|e| e.to_string()))
                .map(|seg| {
                    seg.trailer.stream_off
                        + seg
                            .trailer
                            .frames
                            .iter()
                            .map(|f| f.raw_len as u64)
                            .sum::<u64>()
                })
                .unwrap_or(0)
        });
        w.append(&Entry::Stream {
            stream: s.clone(),
            event: "end".into(),
            packets,
            bytes,
            error: Some(
                "recording was interrupted: the recorder stopped without closing the stream; recovered by zcap verify --repair".into(),
            ),
            warnings: serde_json::Map::new(),
        })?;
        let what = format!("recorded the end of interrupted stream {s}");
        w.append(&Entry::Repair { what: what.clone() })?;
        done.push(what);
    }
    Ok(done)
}

/// Rebuilds from its segment every sidecar a `flows` line names that is missing or does not
/// check out (the new line supersedes the old one), and indexes the segments this repair
/// finalized. A segment that cannot be read is left for `verify` to report.
fn repair_flows(
    dir: &Path,
    cat: &Catalog,
    finalized: &[String],
    w: &mut manifest::Writer,
) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    let mut table = crate::flow::FlowTable::new();
    let mut dec = Decoder::new();
    for l in &cat.segments {
        let e = &l.entry;
        let rel = super::sidecar_name(&e.path);
        let why = match cat.flows.get(&e.path) {
            None if finalized.contains(&e.path) => "it had none".to_string(),
            None => continue,
            Some((line, f)) => match super::flows::read_sidecar(&dir.join(&rel)) {
                Ok(None) => format!("{rel} was missing"),
                Err(err) => {
                    eprintln!("zcap: verify --repair: leaving {rel} alone: {err}");
                    continue;
                }
                Ok(Some(bytes)) => match super::flows::check_sidecar(&bytes, *line, f, e) {
                    Ok(_) => continue,
                    Err(bad) => format!("{rel} was damaged: {bad}"),
                },
            },
        };
        match super::flows::index_segment(dir, e, &mut table, &mut dec) {
            Ok(f) => {
                let flows = f.flows;
                w.append(&Entry::Flows(f))?;
                let what = format!(
                    "rebuilt the flow index of {} ({flows} flows) from the segment: {why}",
                    e.path
                );
                w.append(&Entry::Repair { what: what.clone() })?;
                done.push(what);
            }
            Err(err) => eprintln!("zcap: verify --repair: not indexing {}: {err:#}", e.path),
        }
    }
    Ok(done)
}

/// The last live segment of a stream before `seq`, with its header bytes and header length
/// if its file can be read.
fn previous(
    dir: &Path,
    cat: &Catalog,
    stream: &str,
    seq: u64,
    dec: &mut Decoder,
) -> Option<(SegmentEntry, Option<Vec<u8>>, Option<u64>)> {
    let e = cat
        .stream_segments(stream)
        .into_iter()
        .rev()
        .find(|e| e.seq < seq)?
        .clone();
    let mut hdr = Vec::new();
    let seg = super::checked_path(dir, &e.path)
        .map_err(|e| e.to_string())
        .and_then(|p| Segment::open(&p).map_err(|e| e.to_string()));
    match seg {
        Ok(seg) => {
            let ok = seg.read_header(dec, &mut hdr).is_ok();
            let hlen = seg.trailer.header_raw_len as u64;
            Some((e, ok.then_some(hdr), Some(hlen)))
        }
        Err(_) => Some((e, None, None)),
    }
}

/// Recovers one `.partial` segment, or removes it when no data frame is complete. Returns
/// what was done and the recovered segment's path.
fn recover_partial(
    dir: &Path,
    cat: &Catalog,
    d: &DiskSegment,
    dec: &mut Decoder,
    w: &mut manifest::Writer,
) -> anyhow::Result<(String, Option<String>)> {
    let path = dir.join(&d.rel);
    let bytes = read_nofollow(&path)?;
    let remove =
        |w: &mut manifest::Writer, why: &str| -> anyhow::Result<(String, Option<String>)> {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            sync_dir(path.parent().expect("segments live in stream directories"))?;
            let what = format!("removed {}: {why}", d.rel);
            w.append(&Entry::Repair { what: what.clone() })?;
            Ok((what, None))
        };

    // The header frame.
    let Ok(hlen) = zstd_safe::find_frame_compressed_size(&bytes) else {
        return remove(w, "its header frame is incomplete");
    };
    let Ok(header) = zstd::stream::decode_all(&bytes[..hlen]) else {
        return remove(w, "its header frame does not decompress");
    };
    let Ok(mut parser) = Parser::from_header(&header) else {
        return remove(w, "its header frame is not a pcap or pcapng header");
    };

    // Whole data frames, in order, up to the first that is torn or bad.
    let mut frames = Vec::new();
    let mut off = hlen;
    let mut stop_reason = "the file ends on a frame boundary";
    while off < bytes.len() {
        let rest = &bytes[off..];
        let Ok(n) = zstd_safe::find_frame_compressed_size(rest) else {
            stop_reason = "a torn frame at its end";
            break;
        };
        if rest.len() >= 4
            && u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) & 0xFFFF_FFF0
                == 0x184D_2A50
        {
            stop_reason = "a skippable frame where data was expected";
            break;
        }
        let Ok(data) = zstd::stream::decode_all(&rest[..n]) else {
            stop_reason = "a frame that does not decompress";
            break;
        };
        let Ok(s) = summarize_frame(&mut parser, &data) else {
            stop_reason = "a frame that does not hold whole records";
            break;
        };
        frames.push(FrameEntry {
            offset: off as u64,
            comp_len: n as u32,
            raw_len: data.len() as u32,
            min_ns: s.min_ns,
            max_ns: s.max_ns,
            packets: s.packets,
            flags: if s.has_idb { FRAME_HAS_IDB } else { 0 },
        });
        off += n;
    }
    if frames.is_empty() {
        return remove(w, "no complete data frame");
    }

    // Where the segment sits in its stream. A rotation repeats the previous segment's header
    // (plus interfaces declared since); anything else starts the stream or a pcapng section.
    let pcapng = matches!(parser.format(), Some(Format::PcapNg { .. }));
    let prev = previous(dir, cat, &d.stream, d.seq, dec);
    let cont = d.seq > 1
        && (!pcapng
            || prev
                .as_ref()
                .and_then(|p| p.1.as_ref())
                .is_none_or(|ph| header.starts_with(ph)));
    let prev_end = prev
        .as_ref()
        .map(|(e, _, hlen)| e.stream_off + e.raw - hlen.unwrap_or(header.len() as u64).min(e.raw));
    let stream_off = match (prev_end, cont) {
        (Some(end), true) => end,
        (Some(end), false) => end + header.len() as u64,
        (None, _) => header.len() as u64,
    };
    let trailer = Trailer {
        flags: if cont { FLAG_CONT } else { 0 },
        header_comp_len: hlen as u32,
        header_raw_len: header.len() as u32,
        stream_off,
        frames,
    };
    let tail = trailer.encode();
    let dropped = bytes.len() - off;
    {
        use std::io::Seek;
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .and_then(|mut f| {
                f.set_len(off as u64)?;
                f.seek(io::SeekFrom::End(0))?;
                f.write_all(&tail)?;
                f.sync_all()
            })
            .with_context(|| {
                format!(
                    "cutting {} to its last whole frame and writing its trailer",
                    path.display()
                )
            })?;
    }
    let final_rel = d
        .rel
        .strip_suffix(super::PARTIAL_SUFFIX)
        .expect("a .partial name")
        .to_string();
    let final_path = dir.join(&final_rel);
    if final_path.exists() {
        anyhow::bail!(
            "cannot finalize {}: {} already exists",
            d.rel,
            final_path.display()
        );
    }
    std::fs::rename(&path, &final_path)
        .with_context(|| format!("renaming {} to {}", path.display(), final_path.display()))?;
    sync_dir(
        final_path
            .parent()
            .expect("segments live in stream directories"),
    )?;
    append_segment(dir, &d.stream, d.seq, &final_rel, dec, w, true)
        .map_err(|why| anyhow::anyhow!("{final_rel} does not check out after recovery: {why}"))?;
    let what = format!(
        "recovered {final_rel} from its .partial: {} data frame(s), {} packets kept; {dropped} trailing byte(s) cut ({stop_reason})",
        trailer.frames.len(),
        trailer.packets()
    );
    w.append(&Entry::Repair { what: what.clone() })?;
    Ok((what, Some(final_rel)))
}

/// Appends the `segment` line of the finalized segment at `rel`, every field read back from
/// the file itself. `Err` in words when the segment does not check out (nothing appended).
fn append_segment(
    dir: &Path,
    stream: &str,
    seq: u64,
    rel: &str,
    dec: &mut Decoder,
    w: &mut manifest::Writer,
    repaired: bool,
) -> Result<(), String> {
    let path = dir.join(rel);
    let scan = scan_segment(&path, dec)?;
    let (sha256, bytes) = sha256_file(&path).map_err(|e| e.to_string())?;
    w.append(&Entry::Segment(SegmentEntry {
        stream: stream.into(),
        seq,
        path: rel.into(),
        format: scan.format.into(),
        linktypes: scan.linktypes,
        nanos: scan.nanos,
        bytes,
        raw: scan.raw,
        packets: scan.packets,
        frames: scan.frames,
        first_ns: scan.first_ns,
        last_ns: scan.last_ns,
        stream_off: scan.stream_off,
        cont: scan.cont,
        sha256,
        time: now(),
        repaired,
        drops: None,
    }))
    .map_err(|e| e.to_string())
}

/// Adds the manifest line of a finalized segment whose append was lost. A segment that does
/// not check out is left alone (verify reports it).
fn finalize_orphan(
    dir: &Path,
    d: &DiskSegment,
    dec: &mut Decoder,
    w: &mut manifest::Writer,
) -> anyhow::Result<Option<String>> {
    if let Err(why) = append_segment(dir, &d.stream, d.seq, &d.rel, dec, w, false) {
        eprintln!(
            "zcap: verify --repair: not adding {} to the manifest: {why}",
            d.rel
        );
        return Ok(None);
    }
    let what = format!(
        "added the missing manifest line of finalized segment {}",
        d.rel
    );
    w.append(&Entry::Repair { what: what.clone() })?;
    Ok(Some(what))
}
