//! `zcap verify`: checks an archive end to end — the manifest's hash chain, every live
//! segment's SHA-256, trailer, frames (each decompresses, zstd checksums included, and parses
//! as whole records agreeing with the index), every flow-index sidecar a `flows` line names
//! ([`super::flows::check_sidecar`]) — and finds what a crash leaves behind
//! (`.partial` segments, a torn manifest line, a finalized segment the manifest never heard
//! of). `--repair` hands those to [`super::repair`] under the archive lock, then checks again.
//! Altered data is reported, never "repaired". A manifest line whose path breaks the naming
//! rule ([`super::path`]) is damage, and the file it names is not read.

use super::catalog::{scan_disk, Catalog, LiveSegment};
use super::index::{FLAG_CONT, FRAME_HAS_IDB};
use super::location::Location;
use super::manifest::{self, ChainError};
use super::segment::{summarize_frame, Decoder, Segment};
use crate::stream::Format;
use crate::units::human_bytes;
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// What `zcap verify` does.
#[derive(Debug, Clone)]
pub struct Options {
    pub loc: Location,
    /// Run [`super::repair`] first (under the archive lock).
    pub repair: bool,
    /// Print the report as one JSON object.
    pub json: bool,
    /// Check the manifest's signatures against this Ed25519 public key (PEM): every line
    /// must be covered by a valid signature.
    pub key: Option<PathBuf>,
    /// A manifest head kept elsewhere earlier (as `verify` prints it): the manifest must
    /// still hold that line, so lines cut off the end since then are found.
    pub head: Option<String>,
}

/// One thing wrong with the archive. `what` names the file (or manifest line).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub what: String,
    /// `verify --repair` can fix it (crash debris); otherwise it is damage or tampering.
    pub repairable: bool,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub manifest_lines: usize,
    pub chain_ok: bool,
    pub head: Option<String>,
    pub segments: usize,
    pub frames: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Sidecars (flow indexes) checked, and the flows they hold.
    pub sidecars: usize,
    pub flows: u64,
    pub problems: Vec<Problem>,
    pub notes: Vec<String>,
}

impl Report {
    fn problem(&mut self, what: String, repairable: bool) {
        self.problems.push(Problem { what, repairable });
    }

    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What a full parse of a finalized segment found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub format: &'static str,
    pub nanos: bool,
    pub linktypes: Vec<u32>,
    pub frames: u64,
    pub packets: u64,
    pub raw: u64,
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
    pub stream_off: u64,
    pub cont: bool,
    pub header_raw_len: u64,
}

/// Reads every frame of a finalized segment and checks it against the segment's own index:
/// frames lie end to end, decompress to their indexed length (checksums verified), hold
/// whole records, and their packet counts, time ranges and IDB flags match.
pub fn scan_segment(path: &Path, dec: &mut Decoder) -> Result<Scan, String> {
    let seg = Segment::open(path).map_err(|e| e.to_string())?;
    scan_open(&seg, dec)
}

/// [`scan_segment`] of a segment already open.
fn scan_open(seg: &Segment, dec: &mut Decoder) -> Result<Scan, String> {
    let path = seg.path();
    let mut buf = Vec::new();
    let mut parser = seg.parser(dec, &mut buf).map_err(|e| e.to_string())?;
    let t = &seg.trailer;
    let name = path.display();
    let mut expect = t.header_comp_len as u64;
    let mut raw = t.header_raw_len as u64;
    for (i, f) in t.frames.iter().enumerate() {
        if f.offset != expect {
            return Err(format!(
                "{name}: the index puts data frame {i} at offset {}, but the frame before it ends at {expect}",
                f.offset
            ));
        }
        expect += f.comp_len as u64;
        seg.read_frame(i, dec, &mut buf)
            .map_err(|e| e.to_string())?;
        let s = summarize_frame(&mut parser, &buf).map_err(|e| {
            format!(
                "{name}: data frame {i} (file offset {}): at byte {} of the frame: {}",
                f.offset, e.offset, e.reason
            )
        })?;
        if s.packets != f.packets {
            return Err(format!(
                "{name}: data frame {i} holds {} packets, the index says {}",
                s.packets, f.packets
            ));
        }
        if s.packets > 0 && !s.has_spb && (s.min_ns, s.max_ns) != (f.min_ns, f.max_ns) {
            return Err(format!(
                "{name}: data frame {i} spans {}..{} ns, the index says {}..{}",
                s.min_ns, s.max_ns, f.min_ns, f.max_ns
            ));
        }
        if s.has_idb != (f.flags & FRAME_HAS_IDB != 0) {
            return Err(format!(
                "{name}: data frame {i} {} an interface description, but its index flag says otherwise",
                if s.has_idb { "holds" } else { "holds no" }
            ));
        }
        raw += f.raw_len as u64;
    }
    if expect != seg.data_end {
        return Err(format!(
            "{name}: the frames end at offset {expect}, but the index trailer begins at {}",
            seg.data_end
        ));
    }
    let range = t.time_range();
    let (format, nanos) = match parser.format() {
        Some(Format::Pcap(fh)) => ("pcap", fh.nanos),
        _ => ("pcapng", false),
    };
    Ok(Scan {
        format,
        nanos,
        linktypes: parser.framer().linktypes(),
        frames: t.frames.len() as u64,
        packets: t.packets(),
        raw,
        first_ns: range.map(|r| r.0),
        last_ns: range.map(|r| r.1),
        stream_off: t.stream_off,
        cont: t.flags & FLAG_CONT != 0,
        header_raw_len: t.header_raw_len as u64,
    })
}

/// SHA-256 (lowercase hex) and length of a file, never read through a symbolic link.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    sha256_of(&mut super::path::open_nofollow(path)?)
}

/// SHA-256 (lowercase hex) and length of what `f` reads to its end.
fn sha256_of(f: &mut impl Read) -> io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n_total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        n_total += n as u64;
    }
    Ok((manifest::hex(&h.finalize()), n_total))
}

/// A remote object downloaded for checking: an unnamed temporary file (`O_TMPFILE`), gone
/// when closed. `None` when the object does not exist.
fn download(c: &crate::remote::Client, rel: &str) -> anyhow::Result<Option<std::fs::File>> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = std::env::temp_dir();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(&tmp)
        .map_err(|e| {
            anyhow::anyhow!(
                "a temporary file in {} to check {}: {e}",
                tmp.display(),
                c.show(rel)
            )
        })?;
    let mut w = io::BufWriter::with_capacity(1 << 20, &mut f);
    if c.get_to(rel, &mut w)?.is_none() {
        return Ok(None);
    }
    w.flush()?;
    drop(w);
    f.seek(SeekFrom::Start(0))?;
    Ok(Some(f))
}

/// Checks one live segment against its manifest line; returns its scan when it could be read.
fn check_live(loc: &Location, l: &LiveSegment, dec: &mut Decoder, r: &mut Report) -> Option<Scan> {
    let e = &l.entry;
    let missing = |r: &mut Report, how: &str| {
        r.problem(
            format!(
                "{}: missing{how}: manifest line {} finalized it and no delete entry removed it",
                e.path, l.line
            ),
            false,
        )
    };
    let (mut file, shown) = match loc {
        Location::Dir(dir) => {
            let path = match super::checked_path(dir, &e.path) {
                Ok(p) => p,
                Err(err) => {
                    r.problem(err.at(l.line).to_string(), false);
                    return None;
                }
            };
            match super::path::open_nofollow(&path) {
                Ok(f) => (f, path),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    missing(r, "");
                    return None;
                }
                Err(err) => {
                    r.problem(format!("{}: cannot read it: {err}", e.path), false);
                    return None;
                }
            }
        }
        Location::Remote(c) => {
            if let Err(err) = super::path::check_name(&e.path, false) {
                r.problem(err.at(l.line).to_string(), false);
                return None;
            }
            match download(c, &e.path) {
                Ok(Some(f)) => (f, PathBuf::from(c.show(&e.path))),
                Ok(None) => {
                    missing(r, " from the bucket (deleted behind zcap's back?)");
                    return None;
                }
                Err(err) => {
                    r.problem(format!("{}: cannot read it: {err:#}", e.path), false);
                    return None;
                }
            }
        }
    };
    let (sha, len) = match sha256_of(&mut file) {
        Ok(x) => x,
        Err(err) => {
            r.problem(format!("{}: cannot read it: {err}", e.path), false);
            return None;
        }
    };
    if sha != e.sha256 {
        r.problem(
            format!(
                "{}: SHA-256 {sha} does not match the {} recorded on manifest line {}: the file changed after it was finalized",
                e.path, e.sha256, l.line
            ),
            false,
        );
    }
    if len != e.bytes {
        r.problem(
            format!(
                "{}: {len} bytes, manifest line {} says {}",
                e.path, l.line, e.bytes
            ),
            false,
        );
    }
    let scan = match Segment::from_file(file, &shown)
        .map_err(|e| e.to_string())
        .and_then(|seg| scan_open(&seg, dec))
    {
        Err(what) => {
            r.problem(format!("{}: {what}", e.path), false);
            None
        }
        Ok(s) => {
            let mut diffs = Vec::new();
            if s.packets != e.packets {
                diffs.push(format!("{} packets (manifest: {})", s.packets, e.packets));
            }
            if s.frames != e.frames {
                diffs.push(format!("{} frames (manifest: {})", s.frames, e.frames));
            }
            if s.raw != e.raw {
                diffs.push(format!("{} raw bytes (manifest: {})", s.raw, e.raw));
            }
            if (s.first_ns, s.last_ns) != (e.first_ns, e.last_ns) {
                diffs.push("a different time range".into());
            }
            if s.format != e.format {
                diffs.push(format!("format {} (manifest: {})", s.format, e.format));
            }
            if s.linktypes != e.linktypes {
                diffs.push(format!(
                    "link types {:?} (manifest: {:?})",
                    s.linktypes, e.linktypes
                ));
            }
            if s.cont != e.cont || s.stream_off != e.stream_off {
                diffs.push("a different stream position".into());
            }
            if !diffs.is_empty() {
                r.problem(
                    format!(
                        "{}: its index disagrees with manifest line {}: {}",
                        e.path,
                        l.line,
                        diffs.join(", ")
                    ),
                    false,
                );
            }
            r.frames += s.frames;
            r.packets += s.packets;
            Some(s)
        }
    };
    r.segments += 1;
    r.bytes += len;
    scan
}

/// The sequence number a segment's file name carries (`000042.pcap.zst`).
fn seq_of(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    name.split('.').next()?.parse().ok()
}

/// What the chain alone cannot show: that each stream's segments follow one another. Per
/// stream directory, in sequence order: numbers rise by one except where a `delete` line
/// removed the ones between; each segment's first data byte is where the one before it
/// ended (a rotation repeats the header, a new pcapng section adds its own); a stream that
/// begins in the archive begins at its header; and a stream's end line counts the packets
/// its segments hold, when none was deleted and it ended without an error.
fn check_continuity(c: &Catalog, live: &[(&LiveSegment, Scan)], r: &mut Report) {
    use std::collections::{BTreeMap, HashSet};
    let dir_of = |p: &str| p.rsplit_once('/').map_or("", |(d, _)| d).to_string();
    // Segments evicted from a local copy after their upload leave holes as deleted ones do.
    let deleted: HashSet<(String, u64)> = c
        .deleted
        .iter()
        .chain(c.evicted.iter().map(|(s, _)| &s.entry.path))
        .filter_map(|p| Some((dir_of(p), seq_of(p)?)))
        .collect();
    let mut by_dir: BTreeMap<String, Vec<&(&LiveSegment, Scan)>> = BTreeMap::new();
    for x in live {
        by_dir.entry(dir_of(&x.0.entry.path)).or_default().push(x);
    }
    for (dir, mut segs) in by_dir {
        // A segment that could not be read is reported already; its stream's order is not
        // checked around the hole it leaves.
        let live_here = c
            .segments
            .iter()
            .filter(|l| dir_of(&l.entry.path) == dir)
            .count();
        if live_here != segs.len() {
            continue;
        }
        segs.sort_by_key(|(l, _)| l.entry.seq);
        let stream = &segs[0].0.entry.stream;
        let first = segs[0];
        if first.0.entry.seq == 1 && (first.1.cont || first.1.stream_off != first.1.header_raw_len)
        {
            r.problem(
                format!(
                    "{}: the first segment of stream {stream} does not start at the stream's beginning",
                    first.0.entry.path
                ),
                false,
            );
        }
        let mut any_deleted = (1..first.0.entry.seq).any(|q| deleted.contains(&(dir.clone(), q)));
        for w in segs.windows(2) {
            let ((a, sa), (b, sb)) = (w[0], w[1]);
            let gap = a.entry.seq + 1..b.entry.seq;
            if gap.clone().any(|q| !deleted.contains(&(dir.clone(), q))) {
                r.problem(
                    format!(
                        "{}: stream {stream} jumps from segment {} to {} and no delete line removed the ones between",
                        b.entry.path, a.entry.seq, b.entry.seq
                    ),
                    false,
                );
                continue;
            }
            if !gap.is_empty() {
                any_deleted = true;
                continue;
            }
            let end = sa.stream_off + sa.raw - sa.header_raw_len;
            let want = if sb.cont {
                end
            } else {
                end + sb.header_raw_len
            };
            if sb.stream_off != want {
                r.problem(
                    format!(
                        "{}: its data starts at stream byte {}, but segment {} ({}) ends at {end}: bytes are missing or were added between them",
                        b.entry.path, sb.stream_off, a.entry.seq, a.entry.path
                    ),
                    false,
                );
            }
        }
        if let Some(e) = c.stream_ends.iter().find(|e| e.stream == *stream) {
            let held: u64 = segs.iter().map(|(_, s)| s.packets).sum();
            // A stream that ended in an error (a full disk at shutdown among them) counts
            // what it framed, not only what reached the disk; its line says what was lost.
            if !any_deleted && first.0.entry.seq == 1 && e.error.is_none() && held != e.packets {
                r.problem(
                    format!(
                        "stream {stream}: its end line ({}) counts {} packets, its segments hold {held}",
                        e.line, e.packets
                    ),
                    false,
                );
            }
        }
    }
}

/// Checks the whole archive. `recorder_running`: a recorder holds the lock, so `.partial`
/// files are in progress rather than debris.
pub fn check(
    dir: &Path,
    recorder_running: bool,
    key: Option<&ed25519_dalek::VerifyingKey>,
    head: Option<&str>,
) -> anyhow::Result<Report> {
    check_at(
        &Location::Dir(dir.to_path_buf()),
        recorder_running,
        key,
        head,
    )
}

/// [`check`] of an archive wherever it is. A remote one is downloaded segment by segment
/// (each to an unnamed temporary file) and checked the same way; objects its manifest does
/// not name are noted, not damage: an uploader puts segments before the manifest line that
/// names them, and readers never read what the manifest does not name.
pub fn check_at(
    loc: &Location,
    recorder_running: bool,
    key: Option<&ed25519_dalek::VerifyingKey>,
    head: Option<&str>,
) -> anyhow::Result<Report> {
    let c = loc.catalog()?;
    let mut r = Report {
        manifest_lines: c.lines,
        chain_ok: c.chain.is_ok(),
        head: c.head.clone(),
        ..Report::default()
    };
    // `--repair` leaves an archive with bad manifest paths alone, crash debris included.
    let fixable = c.bad_paths.is_empty();
    match &c.chain {
        Ok(()) => {}
        Err(e @ ChainError::Torn { last: true, .. }) => r.problem(
            format!("{}: {e}: an append interrupted by a crash", manifest::FILE),
            fixable,
        ),
        Err(e) => r.problem(format!("{}: {e}", manifest::FILE), false),
    }
    if c.lines == 0 {
        r.problem(format!("{}: empty", manifest::FILE), false);
    }
    for e in &c.bad_paths {
        r.problem(format!("{e}; the file it names was not read"), false);
    }
    let mut dec = Decoder::new();
    let mut scanned = Vec::new();
    for l in &c.segments {
        if let Some(s) = check_live(loc, l, &mut dec, &mut r) {
            scanned.push((l, s));
        }
    }
    check_continuity(&c, &scanned, &mut r);
    check_flows(loc, &c, fixable, &mut r);
    match loc {
        Location::Dir(dir) => check_disk(dir, &c, recorder_running, fixable, &mut r)?,
        Location::Remote(client) => {
            for (d, _) in Location::remote_segments(client)? {
                if c.deleted.contains(&d.rel) {
                    r.notes.push(format!(
                        "{}: deleted by the manifest, still in the bucket (remote retention was interrupted; the next upload removes it)",
                        client.show(&d.rel)
                    ));
                } else if !c.knows(&d.rel) {
                    r.notes.push(format!(
                        "{}: not named by the manifest (uploaded ahead of its manifest line, or put there by someone else): not read",
                        client.show(&d.rel)
                    ));
                }
            }
        }
    }
    check_signatures(&c, key, &mut r);
    if let Some(h) = head {
        check_kept_head(&c, h, &mut r);
    }
    for s in c.stream_names() {
        if !c.stream_ends.iter().any(|e| e.stream == s) {
            r.notes.push(format!(
                "stream {s} has no end entry: {}",
                if recorder_running {
                    "still being recorded"
                } else {
                    "its recorder was interrupted (`zcap verify --repair` records that)"
                }
            ));
        }
    }
    Ok(r)
}

/// What a directory holds beside its live segments: links, `.partial`s, files the manifest
/// does not know or deleted.
fn check_disk(
    dir: &Path,
    c: &Catalog,
    recorder_running: bool,
    fixable: bool,
    r: &mut Report,
) -> anyhow::Result<()> {
    let disk = scan_disk(dir)?;
    for e in &disk.refused {
        // A link the manifest names is reported once, at its line.
        if !c.bad_paths.iter().any(|b| b.path == e.path) {
            r.problem(format!("{e}; it was not read"), false);
        }
    }
    let named: std::collections::HashSet<String> =
        c.flows.keys().map(|p| super::sidecar_name(p)).collect();
    for s in &disk.sidecars {
        if !named.contains(s) {
            r.notes.push(format!(
                "{s}: a flow index that no flows line names (left by an interrupted `zcap index`, or its segment was deleted): not read"
            ));
        }
    }
    for d in disk.segments {
        let ended = c.stream_ends.iter().find(|e| e.stream == d.stream);
        if let (Some(end), false) = (ended, c.knows(&d.rel) || c.deleted.contains(&d.rel)) {
            r.problem(
                format!(
                    "{}: a segment file the manifest does not know, in stream {} which ended on manifest line {}: foreign, not crash debris (`--repair` will not adopt it)",
                    d.rel, d.stream, end.line
                ),
                false,
            );
            continue;
        }
        if d.partial {
            if recorder_running {
                r.notes
                    .push(format!("{}: being written by the running recorder", d.rel));
            } else {
                r.problem(
                    format!(
                        "{}: unfinalized segment left by an interrupted recorder; `zcap verify --repair` keeps its complete frames",
                        d.rel
                    ),
                    fixable,
                );
            }
        } else if c.deleted.contains(&d.rel) {
            r.problem(
                format!(
                    "{}: the manifest records its deletion, but the file is still there (a crash during retention?); `zcap verify --repair` removes it",
                    d.rel
                ),
                fixable,
            );
        } else if !c.knows(&d.rel) {
            if recorder_running {
                r.notes.push(format!(
                    "{}: not in the manifest yet (the recorder is finalizing it?)",
                    d.rel
                ));
            } else {
                r.problem(
                    format!(
                        "{}: finalized segment missing from the manifest (a crash between rename and manifest append); `zcap verify --repair` adds it",
                        d.rel
                    ),
                    fixable,
                );
            }
        }
    }
    Ok(())
}

/// Each `flows` line's sidecar: there, as large and with the SHA-256 its line says, decodes,
/// and agrees with its segment ([`super::flows::check_sidecar`]). A damaged or missing one
/// is rebuilt from its segment by `--repair`; a `flows` line naming no segment is damage; a
/// segment without an index is a note.
fn check_flows(loc: &Location, c: &Catalog, fixable: bool, r: &mut Report) {
    let mut lines: Vec<_> = c.flows.iter().collect();
    lines.sort_by_key(|(_, (line, _))| *line);
    for (path, (line, f)) in lines {
        let Some(seg) = c.segments.iter().find(|s| s.entry.path == *path) else {
            continue; // evicted from this copy: its index went with it
        };
        let rel = super::sidecar_name(path);
        let got = match loc {
            Location::Dir(dir) => {
                super::flows::read_sidecar(&dir.join(&rel)).map_err(|e| e.to_string())
            }
            Location::Remote(client) => {
                let mut bytes = Vec::new();
                client
                    .get_to(&rel, &mut bytes)
                    .map(|found| found.map(|_| bytes))
                    .map_err(|e| format!("{e:#}"))
            }
        };
        let rebuild = if loc.dir().is_some() {
            "; `zcap verify --repair` rebuilds it from the segment"
        } else {
            ""
        };
        match got {
            Ok(None) => r.problem(
                format!(
                    "{rel}: missing: manifest line {line} names it as the flow index of {path}{rebuild}"
                ),
                fixable && loc.dir().is_some(),
            ),
            Err(e) => r.problem(format!("{rel}: cannot read it: {e}"), false),
            Ok(Some(bytes)) => match super::flows::check_sidecar(&bytes, *line, f, &seg.entry) {
                Ok(rows) => {
                    r.sidecars += 1;
                    r.flows += rows.len() as u64;
                }
                Err(why) => r.problem(
                    format!("{rel}: {why} (the flow index of {path}){rebuild}"),
                    fixable && loc.dir().is_some(),
                ),
            },
        }
    }
    for (line, path) in &c.stray_flows {
        r.problem(
            format!(
                "{} line {line}: a flows line for {path}, which no segment line before it names",
                manifest::FILE
            ),
            false,
        );
    }
    let unindexed: Vec<&str> = c
        .segments
        .iter()
        .filter(|s| !c.flows.contains_key(&s.entry.path))
        .map(|s| s.entry.path.as_str())
        .collect();
    if let Some(first) = unindexed.first() {
        r.notes.push(format!(
            "{} segment(s) have no flow index ({first}{}); `zcap index {}` builds it",
            unindexed.len(),
            if unindexed.len() > 1 { ", …" } else { "" },
            loc.label().display()
        ));
    }
}

/// The chain proves nothing about lines cut off its end; a head kept elsewhere does: the
/// manifest must still hold the line with that hash (and, with `--key`, that line is covered
/// by a signature like every other).
fn check_kept_head(c: &Catalog, head: &str, r: &mut Report) {
    match c.chained.iter().find(|l| l.hash == head) {
        Some(l) => r.notes.push(format!(
            "the head you kept is line {} of {}: nothing before it was cut off",
            l.number,
            c.chained.len()
        )),
        None => r.problem(
            format!(
                "{}: no line has the head you kept ({head}): lines were cut off the end or rewritten since it was taken",
                manifest::FILE
            ),
            false,
        ),
    }
}

/// With a key, every manifest line must be covered by a valid signature of it; without one,
/// says whether the chain is signed at all (a chain alone proves order, not authorship).
fn check_signatures(c: &Catalog, key: Option<&ed25519_dalek::VerifyingKey>, r: &mut Report) {
    let Some(key) = key else {
        r.notes.push(if c.signatures == 0 {
            "the manifest is not signed: its chain proves the order of lines, not who wrote \
             them (`record --sign-key`)"
                .to_string()
        } else {
            format!(
                "{} signature line(s), not checked: `zcap verify --key PUB` checks them",
                c.signatures
            )
        });
        return;
    };
    if c.chain.is_err() {
        r.problem(
            format!(
                "{}: signatures not checked: the hash chain is broken",
                manifest::FILE
            ),
            false,
        );
        return;
    }
    let cov = super::sign::check(&c.chained, key);
    for (line, why) in &cov.bad {
        r.notes.push(format!(
            "{} line {line}: a signature that proves nothing: {why}",
            manifest::FILE
        ));
    }
    match cov.first_uncovered() {
        None => r.notes.push(format!(
            "signed: every line ({}) is covered by a valid signature of key {}",
            cov.lines,
            super::sign::key_id(key)
        )),
        Some(first) => r.problem(
            format!(
                "{} line {first}: not covered by a valid signature of key {} ({} line(s) unsigned \
                 from there; lines {} were signed){}",
                manifest::FILE,
                super::sign::key_id(key),
                cov.lines - cov.covered,
                if cov.covered == 0 {
                    "none".to_string()
                } else {
                    format!("1–{}", cov.covered)
                },
                if cov.valid == 0 && !cov.bad.is_empty() {
                    ": no signature verifies, the manifest may have been rewritten"
                } else {
                    ""
                }
            ),
            false,
        ),
    }
}

fn print_report(r: &Report, dir: &Path, repairs: &[String], json: bool) -> io::Result<()> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if json {
        let v = serde_json::json!({
            "archive": dir.display().to_string(),
            "ok": r.ok(),
            "repairs": repairs,
            "report": r,
        });
        serde_json::to_writer(&mut out, &v)?;
        writeln!(out)?;
        return out.flush();
    }
    for a in repairs {
        writeln!(out, "repaired: {a}")?;
    }
    writeln!(
        out,
        "manifest: {} line(s), hash chain {}",
        r.manifest_lines,
        if r.chain_ok { "intact" } else { "BROKEN" }
    )?;
    writeln!(
        out,
        "segments: {} checked, {} frames, {} packets, {}",
        r.segments,
        r.frames,
        r.packets,
        human_bytes(r.bytes)
    )?;
    if r.sidecars > 0 {
        writeln!(
            out,
            "flow index: {} sidecar(s) checked, {} flows",
            r.sidecars, r.flows
        )?;
    }
    for n in &r.notes {
        writeln!(out, "note: {n}")?;
    }
    for p in &r.problems {
        writeln!(
            out,
            "{}: {}",
            if p.repairable {
                "DAMAGE (repairable)"
            } else {
                "DAMAGE"
            },
            p.what
        )?;
    }
    if let Some(h) = &r.head {
        writeln!(
            out,
            "manifest head: {h} (keep a copy elsewhere: it proves later that nothing before it changed)"
        )?;
    }
    if r.ok() {
        writeln!(out, "verify: OK: {}", dir.display())?;
    } else {
        let fixable = r.problems.iter().filter(|p| p.repairable).count();
        writeln!(
            out,
            "verify: FAILED: {} problem(s) in {}{}",
            r.problems.len(),
            dir.display(),
            if fixable > 0 {
                format!(
                    "; {fixable} can be fixed with `zcap verify --repair {}`",
                    dir.display()
                )
            } else {
                String::new()
            }
        )?;
    }
    out.flush()
}

/// `zcap verify ARCHIVE [--repair] [--json]`. Ok(false) when damage remains.
pub fn run(a: &Options) -> anyhow::Result<bool> {
    let key = a.key.as_deref().map(super::sign::load_public).transpose()?;
    let Some(dir) = a.loc.dir() else {
        if a.repair {
            anyhow::bail!(
                "--repair works on a local archive: repair the recorder's directory, then `zcap upload` it to {} again",
                a.loc.show()
            );
        }
        let r = check_at(&a.loc, false, key.as_ref(), a.head.as_deref())?;
        print_report(&r, &a.loc.label(), &[], a.json)?;
        return Ok(r.ok());
    };
    super::existing(dir)?;
    let mut repairs = Vec::new();
    let recorder_running;
    let _lock = if a.repair {
        let lock = super::lock_offline(dir, "; stop it before `zcap verify --repair`")?;
        recorder_running = false;
        repairs = super::repair::repair(dir)?;
        Some(lock)
    } else {
        // Probing the lock tells debris from work in progress; it is released at once.
        recorder_running = matches!(super::lock(dir), Ok(None));
        None
    };
    let r = check(dir, recorder_running, key.as_ref(), a.head.as_deref())?;
    print_report(&r, dir, &repairs, a.json)?;
    Ok(r.ok())
}
