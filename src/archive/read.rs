//! The archive readers behind `zcap ls` and `zcap cat` (docs/ARCHIVE.md, "Reading").
//!
//! `cat` of one stream writes that stream's own bytes: header frames and data frames are
//! copied as they decompress, and with a time window only the frames the index says overlap
//! it are decompressed, then only records inside it are kept. Several streams are merged by
//! timestamp into one pcap (all pcap with one link type) or pcapng (one interface per stream
//! and interface). With a filter ([`Filter`]) every packet read is checked by libpcap's
//! program, and a segment's flow index ([`super::flowlist`]) narrows the frames read to those
//! that can hold a match; frames declaring pcapng interfaces are read whatever the index says.
//! Nothing here writes to the archive. An archive whose manifest names a
//! path that breaks the naming rule ([`super::path`]) is refused whole, before anything in
//! it is read.

use super::catalog::{scan_disk, Catalog};
use super::flowlist;
use super::index::FRAME_HAS_IDB;
use super::location::Location;
use super::manifest::{FlowsEntry, SegmentEntry};
use super::segment::{Decoder, Parser, ReadStats, Rec, Segment};
use crate::flow::filter::FlowFilter;
use crate::rx::afpacket::OfflineFilters;
use crate::stream::{pcap, pcapng, Format, UnitKind};
use crate::units::human_bytes;
use anyhow::{bail, Context};
use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

const OUT_BUF: usize = 1 << 20;

pub(crate) fn rfc3339(ns: Option<i64>) -> String {
    match ns {
        None => "-".into(),
        Some(ns) => {
            let t = if ns >= 0 {
                UNIX_EPOCH + Duration::from_nanos(ns as u64)
            } else {
                UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
            };
            humantime::format_rfc3339_micros(t).to_string()
        }
    }
}

fn ratio(raw: u64, stored: u64) -> f64 {
    if stored == 0 {
        0.0
    } else {
        raw as f64 / stored as f64
    }
}

pub(crate) fn warn_chain(c: &Catalog) {
    if let Err(e) = &c.chain {
        eprintln!("zcap: warning: {e}; run `zcap verify {}`", c.dir.display());
    }
}

/// A local copy with segments evicted after their upload says where the rest is.
fn note_evicted(c: &Catalog) {
    if let Some((_, url)) = c.evicted.first() {
        eprintln!(
            "zcap: note: {} segment(s) of {} are kept only in {url} (evicted after upload); read them with `zcap cat {url}`",
            c.evicted.len(),
            c.dir.display()
        );
    }
}

/// One row of `zcap ls`.
struct Row {
    stream: String,
    seq: Option<u64>,
    path: String,
    first: Option<i64>,
    last: Option<i64>,
    packets: Option<u64>,
    stored: u64,
    raw: Option<u64>,
    /// Kernel drops while the segment was open (live capture only).
    drops: Option<u64>,
    /// Packets `--flow-cutoff` cut in the segment and their bytes not stored (from its
    /// `flows` line; None without one).
    cut: Option<(u64, u64)>,
    status: String,
    json: serde_json::Value,
}

/// The `ls` row of a segment: `status` for the table, `json_status` (and the archive that
/// holds an evicted segment) for `--json`; `flows` is its flow-index line, if any.
fn segment_row(
    e: &SegmentEntry,
    flows: Option<&FlowsEntry>,
    status: String,
    json_status: &str,
    url: Option<&str>,
) -> Row {
    let mut json = serde_json::json!({
        "stream": e.stream,
        "seq": e.seq,
        "path": e.path,
        "format": e.format,
        "linktypes": e.linktypes,
        "nanos": e.nanos,
        "first": e.first_ns.map(|n| rfc3339(Some(n))),
        "last": e.last_ns.map(|n| rfc3339(Some(n))),
        "first_ns": e.first_ns,
        "last_ns": e.last_ns,
        "packets": e.packets,
        "frames": e.frames,
        "bytes": e.bytes,
        "raw": e.raw,
        "ratio": ratio(e.raw, e.bytes),
        "sha256": e.sha256,
        "drops": e.drops,
        "flows": flows.map(|f| f.flows),
        "cut_packets": flows.map(|f| f.cut_packets),
        "cut_bytes": flows.map(|f| f.cut_bytes),
        "status": json_status,
    });
    if let Some(u) = url {
        json["url"] = u.into();
    }
    Row {
        stream: e.stream.clone(),
        seq: Some(e.seq),
        path: e.path.clone(),
        first: e.first_ns,
        last: e.last_ns,
        packets: Some(e.packets),
        stored: e.bytes,
        raw: Some(e.raw),
        drops: e.drops,
        cut: flows.map(|f| (f.cut_packets, f.cut_bytes)),
        status,
        json,
    }
}

/// What `zcap ls` lists.
#[derive(Debug, Clone)]
pub struct LsOptions {
    pub loc: Location,
    /// One JSON object per row instead of the table.
    pub json: bool,
}

/// `zcap ls DIR [--json]`.
pub fn ls(a: &LsOptions) -> anyhow::Result<bool> {
    let c = a.loc.catalog()?;
    c.trusted()?;
    warn_chain(&c);
    // A directory may hold `.partial` segments being written; a remote archive never does.
    let disk = match a.loc.dir() {
        Some(dir) => {
            let disk = scan_disk(dir)?;
            for e in &disk.refused {
                eprintln!("zcap: warning: {}: not listed: {e}", dir.display());
            }
            disk.segments
        }
        None => Vec::new(),
    };
    let dir = a.loc.label();
    let mut rows = Vec::new();
    let flows_of = |path: &str| c.flows.get(path).map(|(_, f)| f);
    for name in c.stream_names() {
        for e in c.stream_segments(&name) {
            let status = if e.repaired { "repaired" } else { "ok" };
            rows.push(segment_row(
                e,
                flows_of(&e.path),
                status.into(),
                status,
                None,
            ));
        }
    }
    for (l, url) in &c.evicted {
        rows.push(segment_row(
            &l.entry,
            flows_of(&l.entry.path),
            format!("evicted: in {url}"),
            "evicted",
            Some(url),
        ));
    }
    for d in disk.iter().filter(|d| d.partial) {
        let size = std::fs::metadata(dir.join(&d.rel))
            .map(|m| m.len())
            .unwrap_or(0);
        rows.push(Row {
            stream: d.stream.clone(),
            seq: Some(d.seq),
            path: d.rel.clone(),
            first: None,
            last: None,
            packets: None,
            stored: size,
            raw: None,
            drops: None,
            cut: None,
            status: "partial".into(),
            json: serde_json::json!({
                "stream": d.stream,
                "seq": d.seq,
                "path": d.rel,
                "format": if d.pcapng { "pcapng" } else { "pcap" },
                "bytes": size,
                "status": "partial",
            }),
        });
    }
    for e in c.stream_ends.iter().filter(|e| e.error.is_some()) {
        let err = e.error.clone().unwrap_or_default();
        rows.push(Row {
            stream: e.stream.clone(),
            seq: None,
            path: String::new(),
            first: None,
            last: None,
            packets: Some(e.packets),
            stored: 0,
            raw: None,
            drops: None,
            cut: None,
            status: format!("error: {err}"),
            json: serde_json::json!({
                "stream": e.stream,
                "status": "error",
                "error": err,
                "packets": e.packets,
                "stream_bytes": e.bytes,
            }),
        });
    }

    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if a.json {
        for r in &rows {
            serde_json::to_writer(&mut out, &r.json)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        return Ok(true);
    }
    // Live-capture archives get a DROPS column (kernel drops while each segment was open),
    // and archives recorded with --flow-cutoff a CUT column (packets cut in each segment), so
    // that a cut archive is never taken for a complete one.
    let drops = rows.iter().any(|r| r.drops.is_some());
    let cut = rows.iter().any(|r| r.cut.is_some_and(|(p, _)| p > 0));
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut c = vec![
                r.stream.clone(),
                r.seq.map_or("-".into(), |s| s.to_string()),
                rfc3339(r.first),
                rfc3339(r.last),
                r.packets.map_or("-".into(), |p| p.to_string()),
                if r.path.is_empty() {
                    "-".into()
                } else {
                    human_bytes(r.stored)
                },
                r.raw.map_or("-".into(), human_bytes),
                match (r.raw, r.seq) {
                    (Some(raw), Some(_)) => format!("{:.2}", ratio(raw, r.stored)),
                    _ => "-".into(),
                },
                r.status.clone(),
            ];
            if cut {
                c.insert(8, r.cut.map_or("-".into(), |(p, _)| p.to_string()));
            }
            if drops {
                c.insert(8, r.drops.map_or("-".into(), |d| d.to_string()));
            }
            c
        })
        .collect();
    let mut head = vec![
        "STREAM", "SEQ", "FIRST", "LAST", "PACKETS", "STORED", "RAW", "RATIO", "STATUS",
    ];
    if cut {
        head.insert(8, "CUT");
    }
    if drops {
        head.insert(8, "DROPS");
    }
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            w[i] = w[i].max(s.len());
        }
    }
    let line = |out: &mut BufWriter<_>, c: &[&str]| -> io::Result<()> {
        let mut s = String::new();
        for (i, cell) in c.iter().enumerate() {
            // The counts, DROPS and CUT included, are right-aligned; STATUS is last.
            let right = matches!(i, 1 | 4 | 5 | 6 | 7) || (i >= 8 && i + 1 < c.len());
            if i + 1 == c.len() {
                s.push_str(cell);
            } else if right {
                s.push_str(&format!("{cell:>width$}  ", width = w[i]));
            } else {
                s.push_str(&format!("{cell:<width$}  ", width = w[i]));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(&mut out, &head)?;
    for c in &cells {
        let refs: Vec<&str> = c.iter().map(String::as_str).collect();
        line(&mut out, &refs)?;
    }
    let live = &c.segments;
    let (packets, stored, raw) = live.iter().fold((0, 0, 0), |(p, s, r), l| {
        (p + l.entry.packets, s + l.entry.bytes, r + l.entry.raw)
    });
    let partials = disk.iter().filter(|d| d.partial).count();
    let errors = c.stream_ends.iter().filter(|e| e.error.is_some()).count();
    writeln!(
        out,
        "total: {} segment(s) in {} stream(s), {packets} packets, {} stored, {} raw, ratio {:.2}{}{}{}{}{}{}",
        live.len(),
        c.stream_names().len(),
        human_bytes(stored),
        human_bytes(raw),
        ratio(raw, stored),
        if partials > 0 {
            format!(", {partials} partial (run `zcap verify --repair` if no recorder is running)")
        } else {
            String::new()
        },
        if errors > 0 {
            format!(", {errors} stream(s) ended with an error")
        } else {
            String::new()
        },
        match live.iter().filter_map(|l| l.entry.drops).reduce(|a, b| a + b) {
            Some(d) => format!(", {d} dropped by the kernel while capturing"),
            None => String::new(),
        },
        match c.evicted.first() {
            Some((_, url)) => format!(
                ", {} more evicted after upload (in {url})",
                c.evicted.len()
            ),
            None => String::new(),
        },
        match live.iter().filter(|l| !c.flows.contains_key(&l.entry.path)).count() {
            0 => String::new(),
            n => format!(", {n} without a flow index (`zcap index` builds it)"),
        },
        {
            let (p, b) = live
                .iter()
                .filter_map(|l| c.flows.get(&l.entry.path))
                .fold((0u64, 0u64), |(p, b), (_, f)| {
                    (p.saturating_add(f.cut_packets), b.saturating_add(f.cut_bytes))
                });
            if p > 0 {
                format!("\nflow cutoff: {p} packets cut, {b} bytes not stored (the archive does not hold every packet in full)")
            } else {
                String::new()
            }
        },
    )?;
    out.flush()?;
    Ok(true)
}

/// What `cat` selects: streams and an inclusive time window in nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Stream names; empty selects every stream.
    pub streams: Vec<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl Selection {
    pub(crate) fn windowed(&self) -> bool {
        self.from.is_some() || self.to.is_some()
    }
    pub(crate) fn lo(&self) -> i64 {
        self.from.unwrap_or(i64::MIN)
    }
    pub(crate) fn hi(&self) -> i64 {
        self.to.unwrap_or(i64::MAX)
    }
    pub(crate) fn contains(&self, ts: i64) -> bool {
        ts >= self.lo() && ts <= self.hi()
    }
    pub(crate) fn segment_overlaps(&self, e: &SegmentEntry) -> bool {
        match (e.first_ns, e.last_ns) {
            (Some(a), Some(b)) => b >= self.lo() && a <= self.hi(),
            _ => !self.windowed(),
        }
    }
}

/// What `zcap cat` writes, and where.
#[derive(Debug, Clone)]
pub struct CatOptions {
    pub loc: Location,
    pub sel: Selection,
    /// Only packets this tcpdump filter expression accepts (None: every packet).
    pub filter: Option<String>,
    /// Write to this file instead of stdout.
    pub write: Option<PathBuf>,
    /// Print to stderr how much was decompressed.
    pub stats: bool,
}

/// `zcap cat`: writes the selection to stdout (or `-w FILE`).
pub fn cat(a: &CatOptions) -> anyhow::Result<bool> {
    let sel = &a.sel;
    if let (Some(f), Some(t)) = (sel.from, sel.to) {
        if f > t {
            bail!("--from is after --to: the window is empty");
        }
    }
    // Both halves of a filter are made before anything is read or written: a syntax error
    // or a missing libpcap ends the command with no output.
    let filter = a.filter.as_deref().map(Filter::new).transpose()?;
    let stats = match &a.write {
        Some(path) => {
            let f = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut w = BufWriter::with_capacity(OUT_BUF, f);
            let s = cat_filtered(&a.loc, sel, filter, &mut w)?;
            w.flush()
                .with_context(|| format!("writing {}", path.display()))?;
            s
        }
        None => {
            let stdout = io::stdout();
            let mut w = BufWriter::with_capacity(OUT_BUF, stdout.lock());
            let s = cat_filtered(&a.loc, sel, filter, &mut w)?;
            w.flush().context("writing to stdout")?;
            s
        }
    };
    if a.stats {
        eprintln!("frames decompressed: {}", stats.frames_decompressed);
        eprintln!("header frames decompressed: {}", stats.header_frames);
        eprintln!("segments read: {}", stats.segments);
        eprintln!("bytes decompressed: {}", stats.raw_bytes);
        if a.filter.is_some() {
            eprintln!("frames skipped by the flow index: {}", stats.index_skipped);
            eprintln!("sidecars read: {}", stats.sidecars);
            eprintln!("segments without a usable flow index: {}", stats.unindexed);
            eprintln!("packets checked by the filter: {}", stats.packets_checked);
            eprintln!("packets matched: {}", stats.packets_matched);
        }
        if let Some(c) = a.loc.client() {
            use std::sync::atomic::Ordering::Relaxed;
            eprintln!("range requests: {}", c.fetched.requests.load(Relaxed));
            eprintln!("bytes fetched: {}", c.fetched.bytes.load(Relaxed));
        }
    }
    Ok(true)
}

/// Writes the selected packets of the archive at `dir` to `out` and returns how much work it
/// took. One stream: its own format, byte for byte; several: merged by timestamp.
pub fn cat_to<W: Write>(loc: &Location, sel: &Selection, out: &mut W) -> anyhow::Result<ReadStats> {
    cat_filtered(loc, sel, None, out)
}

/// The two halves of a filtered read: the pruner that the flow index is asked with, and
/// libpcap's program (per link type) that decides each packet read.
pub struct Filter {
    pub prune: FlowFilter,
    exact: OfflineFilters,
}

impl Filter {
    /// Parses `expr` for the pruner (a syntax error names its position) and loads libpcap
    /// (its absence is an error saying how to install it). Nothing is compiled yet: each link
    /// type is when the archive's segments are known ([`Filter::compile_for`]).
    pub fn new(expr: &str) -> anyhow::Result<Filter> {
        let prune = FlowFilter::parse(expr)?;
        let exact = OfflineFilters::new("filtered cat", expr, pcap::MAX_CAPLEN)
            .map_err(anyhow::Error::msg)?;
        Ok(Filter { prune, exact })
    }

    /// Compiles the program for every link type the segments declare, so that a filter that
    /// does not apply to one of them (`vlan` on raw IP) fails before anything is written.
    fn compile_for(&mut self, segs: &[&SegmentEntry]) -> anyhow::Result<()> {
        for e in segs {
            for &lt in &e.linktypes {
                self.exact.get(lt).map_err(anyhow::Error::msg)?;
            }
        }
        Ok(())
    }

    /// Whether the packet unit `bytes` (parsed by `p`) passes the program.
    fn matches(
        &mut self,
        p: &Parser,
        bytes: &[u8],
        ts_ns: i64,
        stats: &mut ReadStats,
    ) -> anyhow::Result<bool> {
        let fmt = p
            .format()
            .ok_or_else(|| anyhow::anyhow!("a packet before the header"))?;
        let pkt = packet_fields(fmt, bytes)?;
        let linktype = match fmt {
            Format::Pcap(fh) => fh.linktype,
            Format::PcapNg { .. } => match p.framer().interfaces().get(pkt.iface as usize) {
                Some(i) => u32::from(i.linktype),
                None => bail!(
                    "a packet block on interface {}, which no interface block declared",
                    pkt.iface
                ),
            },
        };
        let caplen = pkt.data.len() as u32;
        let ok = self
            .exact
            .matches(linktype, caplen, pkt.origlen, ts_ns, pkt.data)
            .map_err(anyhow::Error::msg)?;
        stats.packets_checked += 1;
        stats.packets_matched += u64::from(ok);
        Ok(ok)
    }
}

/// What a read shares across streams and segments.
struct Ctx<'a> {
    loc: &'a Location,
    c: &'a Catalog,
    sel: &'a Selection,
    dec: Decoder,
    filter: Option<Filter>,
}

impl Ctx<'_> {
    /// Whether a packet unit is written: inside the window and, with a filter, accepted by it.
    fn keep(&mut self, p: &Parser, bytes: &[u8], ts_ns: i64) -> anyhow::Result<bool> {
        if !self.sel.contains(ts_ns) {
            return Ok(false);
        }
        match self.filter.as_mut() {
            None => Ok(true),
            Some(f) => f.matches(p, bytes, ts_ns, &mut self.dec.stats),
        }
    }
}

/// [`cat_to`] with a filter: only the packets it accepts, in the same formats.
pub fn cat_filtered<W: Write>(
    loc: &Location,
    sel: &Selection,
    filter: Option<Filter>,
    out: &mut W,
) -> anyhow::Result<ReadStats> {
    let c = loc.catalog()?;
    c.trusted()?;
    warn_chain(&c);
    note_evicted(&c);
    let dir = &c.dir;
    let streams = selected_streams(&c, sel)?;
    let mut cx = Ctx {
        loc,
        c: &c,
        sel,
        dec: Decoder::new(),
        filter,
    };
    if let Some(f) = cx.filter.as_mut() {
        let segs: Vec<&SegmentEntry> = streams
            .iter()
            .flat_map(|s| c.stream_segments(s))
            .filter(|e| sel.segment_overlaps(e))
            .collect();
        f.compile_for(&segs)?;
    }
    match streams.len() {
        0 => {
            eprintln!("zcap: {} holds no segments", dir.display());
        }
        1 => cat_one(&mut cx, &streams[0], out)?,
        _ => cat_merged(&mut cx, &streams, out)?,
    }
    Ok(cx.dec.stats)
}

/// The streams a selection names (all that have segments when it names none); a name the
/// archive does not know is an error listing the ones it does.
pub(crate) fn selected_streams(c: &Catalog, sel: &Selection) -> anyhow::Result<Vec<String>> {
    let known = c.stream_names();
    if sel.streams.is_empty() {
        return Ok(known
            .iter()
            .filter(|n| !c.stream_segments(n).is_empty())
            .cloned()
            .collect());
    }
    for s in &sel.streams {
        if !known.contains(s) {
            bail!(
                "no stream named `{s}` in {}; its streams are: {}",
                c.dir.display(),
                if known.is_empty() {
                    "(none)".to_string()
                } else {
                    known.join(", ")
                }
            );
        }
    }
    let mut v = sel.streams.clone();
    v.dedup();
    Ok(v)
}

/// Opens a segment and decides which data frames will be decompressed: those overlapping
/// the window (with a filter, of those only the ones the flow index says can hold a match),
/// and in pcapng those declaring interfaces, whatever they hold, so that the interface table
/// stays whole. A remote segment fetches just these. Returns the segment and, per data
/// frame, whether it is read.
fn open_segment(cx: &mut Ctx, e: &SegmentEntry) -> anyhow::Result<(Segment, Vec<bool>)> {
    cx.dec.stats.segments += 1;
    let mut seg = cx.loc.open(e)?;
    let pcapng = e.format == "pcapng";
    let sel = cx.sel;
    let (lo, hi, windowed) = (sel.lo(), sel.hi(), sel.windowed());
    let frames = &seg.trailer.frames;
    // The flow index, when there is a filter and the segment has a usable one.
    let index = match cx.filter.as_ref() {
        None => None,
        Some(f) => match flowlist::load(cx.loc, cx.c, e) {
            flowlist::Index::Rows(rows) => {
                cx.dec.stats.sidecars += 1;
                let want = flowlist::frames_that_may_match(&rows, frames.len(), &f.prune);
                if want.is_none() {
                    eprintln!(
                        "zcap: warning: {}: its flow index names frames the segment does not have; reading all of them",
                        seg.path().display()
                    );
                    cx.dec.stats.unindexed += 1;
                }
                want
            }
            flowlist::Index::Missing | flowlist::Index::Unusable => {
                cx.dec.stats.unindexed += 1;
                None
            }
        },
    };
    let mut read = Vec::with_capacity(frames.len());
    for (i, f) in frames.iter().enumerate() {
        let window = !windowed || f.overlaps(lo, hi);
        let indexed = index.as_ref().is_none_or(|x| x[i]);
        let idb = pcapng && f.flags & FRAME_HAS_IDB != 0;
        if window && !indexed && !idb {
            cx.dec.stats.index_skipped += 1;
        }
        read.push((window && indexed) || idb);
    }
    seg.plan(|i, _| read[i]);
    Ok((seg, read))
}

/// One stream in its own format.
fn cat_one<W: Write>(cx: &mut Ctx, stream: &str, out: &mut W) -> anyhow::Result<()> {
    let (c, sel) = (cx.c, cx.sel);
    let all = c.stream_segments(stream);
    let segs: Vec<&SegmentEntry> = all
        .iter()
        .copied()
        .filter(|e| sel.segment_overlaps(e))
        .collect();
    let mut buf = Vec::new();
    if segs.is_empty() {
        // Nothing in the window: still a valid, empty capture.
        if let Some(e) = all.first() {
            cx.dec.stats.segments += 1;
            let mut seg = cx.loc.open(e)?;
            seg.plan(|_, _| false);
            seg.read_header(&mut cx.dec, &mut buf)?;
            out.write_all(&buf).context("writing output")?;
        }
        return Ok(());
    }
    // Whole frames are copied unless records must be picked out of them.
    let whole = !sel.windowed() && cx.filter.is_none();
    let filtered = cx.filter.is_some();
    let mut prev_seq: Option<u64> = None;
    for e in segs {
        let (seg, read) = open_segment(cx, e)?;
        let pcapng = e.format == "pcapng";
        let mut parser = seg.parser(&mut cx.dec, &mut buf)?;
        let gap = prev_seq.is_some_and(|p| p + 1 != e.seq);
        // pcap has one header; a pcapng header frame starts a section, which must be
        // repeated when the section changes or segments in between were skipped.
        let emit_header = prev_seq.is_none() || (pcapng && (!e.cont || gap));
        if emit_header {
            out.write_all(&buf).context("writing output")?;
        }
        prev_seq = Some(e.seq);
        for (i, f) in seg.trailer.frames.iter().enumerate() {
            if !read[i] {
                continue;
            }
            let overlap = !sel.windowed() || f.overlaps(sel.lo(), sel.hi());
            seg.read_frame(i, &mut cx.dec, &mut buf)?;
            if whole {
                out.write_all(&buf).context("writing output")?;
                continue;
            }
            let mut off = 0;
            while let Some(r) = parser
                .next(&buf, &mut off)
                .map_err(|e| anyhow::anyhow!("{}: data frame {i}: {e}", seg.path().display()))?
            {
                let keep = match r.kind {
                    UnitKind::Packet { ts_ns } => {
                        overlap
                            && cx
                                .keep(&parser, &buf[r.range.clone()], ts_ns)
                                .map_err(|e| {
                                    anyhow::anyhow!("{}: data frame {i}: {e}", seg.path().display())
                                })?
                    }
                    UnitKind::Header | UnitKind::LateInterface => true,
                    // Statistics, name resolution and other blocks belong to packets a
                    // filter may have left out: a filtered read keeps packets and interfaces.
                    UnitKind::Other => overlap && !filtered,
                    UnitKind::Section => bail!(
                        "{}: data frame {i} holds a section header block",
                        seg.path().display()
                    ),
                };
                if keep {
                    out.write_all(&buf[r.range]).context("writing output")?;
                }
            }
        }
    }
    Ok(())
}

/// Reads one stream's packets in order, for the merge.
struct Cursor<'a> {
    /// Index of the stream in the selection (its rank in ties).
    index: usize,
    name: String,
    segs: Vec<&'a SegmentEntry>,
    next_seg: usize,
    seg: Option<Segment>,
    /// Per data frame of `seg`, whether it is read.
    read: Vec<bool>,
    parser: Option<Parser>,
    /// pcapng sections seen so far (a non-continuation segment starts one).
    section: u32,
    next_frame: usize,
    buf: Vec<u8>,
    off: usize,
    /// The current packet, in `buf`.
    cur: Option<Rec>,
}

impl Cursor<'_> {
    /// Moves to the next packet inside the window (and accepted by the filter); false at the
    /// end of the stream.
    fn advance(&mut self, cx: &mut Ctx) -> anyhow::Result<bool> {
        loop {
            if let (Some(p), Some(seg)) = (self.parser.as_mut(), self.seg.as_ref()) {
                let frame = self.next_frame.saturating_sub(1);
                let named = |e: &dyn std::fmt::Display| {
                    anyhow::anyhow!("{}: data frame {frame}: {e}", seg.path().display())
                };
                let rec = p.next(&self.buf, &mut self.off).map_err(|e| named(&e))?;
                if let Some(r) = rec {
                    match r.kind {
                        UnitKind::Packet { ts_ns }
                            if cx
                                .keep(p, &self.buf[r.range.clone()], ts_ns)
                                .map_err(|e| named(&e))? =>
                        {
                            self.cur = Some(r);
                            return Ok(true);
                        }
                        UnitKind::Section => bail!(
                            "{}: a data frame holds a section header block",
                            seg.path().display()
                        ),
                        _ => continue,
                    }
                }
                // The frame is used up: load the next one to be read.
                let mut loaded = false;
                while self.next_frame < self.read.len() && !loaded {
                    let i = self.next_frame;
                    self.next_frame += 1;
                    if self.read[i] {
                        seg.read_frame(i, &mut cx.dec, &mut self.buf)?;
                        self.off = 0;
                        loaded = true;
                    }
                }
                if loaded {
                    continue;
                }
                self.seg = None;
                self.parser = None;
            }
            let Some(e) = self.segs.get(self.next_seg).copied() else {
                self.cur = None;
                return Ok(false);
            };
            self.next_seg += 1;
            if !e.cont {
                self.section += 1;
            }
            let (seg, read) = open_segment(cx, e)?;
            let parser = seg.parser(&mut cx.dec, &mut self.buf)?;
            self.off = self.buf.len();
            self.next_frame = 0;
            self.seg = Some(seg);
            self.read = read;
            self.parser = Some(parser);
        }
    }

    fn bytes(&self) -> &[u8] {
        let r = self.cur.as_ref().expect("a current packet");
        &self.buf[r.range.clone()]
    }

    fn ts(&self) -> i64 {
        self.cur.as_ref().and_then(Rec::ts_ns).unwrap_or(0)
    }
}

/// A packet's fields, whatever container it came from.
struct Pkt<'b> {
    iface: u32,
    origlen: u32,
    data: &'b [u8],
}

fn packet_fields<'b>(fmt: Format, bytes: &'b [u8]) -> anyhow::Result<Pkt<'b>> {
    match fmt {
        Format::Pcap(fh) => {
            let r = pcap::Record::new_checked(bytes, &fh)
                .ok_or_else(|| anyhow::anyhow!("short pcap record"))?;
            let origlen = r.origlen();
            let data = bytes
                .get(pcap::RECORD_HEADER_LEN..r.total_len())
                .ok_or_else(|| anyhow::anyhow!("short pcap record"))?;
            Ok(Pkt {
                iface: 0,
                origlen,
                data,
            })
        }
        Format::PcapNg { big_endian } => {
            let b = pcapng::Block::new_checked(bytes, big_endian).map_err(anyhow::Error::msg)?;
            let caplen = b.check_packet().map_err(anyhow::Error::msg)? as usize;
            let rd = |o: usize| pcap::rd32(&bytes[o..o + 4], big_endian);
            let (origlen, at) = match b.block_type() {
                pcapng::SPB => (rd(8), 12),
                _ => (rd(24), 28),
            };
            Ok(Pkt {
                iface: b.interface(),
                origlen,
                data: &bytes[at..at + caplen],
            })
        }
    }
}

fn pcap_err(e: pcap_file::PcapError) -> anyhow::Error {
    match e {
        pcap_file::PcapError::IoError(io) => anyhow::Error::new(io).context("writing output"),
        other => anyhow::Error::new(other),
    }
}

/// Several streams merged by timestamp.
fn cat_merged<W: Write>(cx: &mut Ctx, streams: &[String], out: &mut W) -> anyhow::Result<()> {
    let (c, sel) = (cx.c, cx.sel);
    let mut all_pcap = true;
    let mut linktypes: Vec<u32> = Vec::new();
    let mut nanos = false;
    for s in streams {
        for e in c.stream_segments(s) {
            all_pcap &= e.format == "pcap";
            nanos |= e.nanos;
            for &l in &e.linktypes {
                if !linktypes.contains(&l) {
                    linktypes.push(l);
                }
            }
        }
    }
    let as_pcap = all_pcap && linktypes.len() <= 1;

    let mut cursors: Vec<Cursor> = streams
        .iter()
        .enumerate()
        .map(|(index, s)| Cursor {
            index,
            name: s.clone(),
            segs: c
                .stream_segments(s)
                .into_iter()
                .filter(|e| sel.segment_overlaps(e))
                .collect(),
            next_seg: 0,
            seg: None,
            read: Vec::new(),
            parser: None,
            section: 0,
            next_frame: 0,
            buf: Vec::new(),
            off: 0,
            cur: None,
        })
        .collect();
    let mut heap = BinaryHeap::new();
    for cur in cursors.iter_mut() {
        if cur.advance(cx)? {
            heap.push(Reverse((cur.ts(), cur.index)));
        }
    }

    if as_pcap {
        let snaplen = cursors
            .iter()
            .filter_map(|c| match c.parser.as_ref()?.format()? {
                Format::Pcap(fh) => Some(fh.snaplen),
                _ => None,
            })
            .max()
            .unwrap_or(pcap::MAX_CAPLEN);
        let mut h = Vec::with_capacity(24);
        h.extend(
            if nanos {
                pcap::MAGIC_NANOS
            } else {
                pcap::MAGIC_MICROS
            }
            .to_le_bytes(),
        );
        h.extend(2u16.to_le_bytes());
        h.extend(4u16.to_le_bytes());
        h.extend([0u8; 8]);
        h.extend(snaplen.to_le_bytes());
        h.extend(linktypes.first().copied().unwrap_or(1).to_le_bytes());
        out.write_all(&h).context("writing output")?;
        while let Some(Reverse((ts, i))) = heap.pop() {
            let cur = &mut cursors[i];
            let fmt = cur
                .parser
                .as_ref()
                .and_then(Parser::format)
                .expect("a packet came from a parsed segment");
            let p = packet_fields(fmt, cur.bytes())?;
            let sec = ts.div_euclid(1_000_000_000);
            let frac = ts.rem_euclid(1_000_000_000);
            let frac = if nanos { frac } else { frac / 1000 };
            let mut rh = [0u8; 16];
            rh[0..4].copy_from_slice(&(sec as u32).to_le_bytes());
            rh[4..8].copy_from_slice(&(frac as u32).to_le_bytes());
            rh[8..12].copy_from_slice(&(p.data.len() as u32).to_le_bytes());
            rh[12..16].copy_from_slice(&p.origlen.to_le_bytes());
            out.write_all(&rh).context("writing output")?;
            out.write_all(p.data).context("writing output")?;
            if cur.advance(cx)? {
                heap.push(Reverse((cur.ts(), i)));
            }
        }
        return Ok(());
    }

    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::{
        InterfaceDescriptionBlock, InterfaceDescriptionOption,
    };
    // One section, little-endian like the merged pcap, whatever the inputs' byte orders (the
    // packet bytes are copied; only the headers written here are encoded).
    let mut w =
        pcap_file::pcapng::PcapNgWriter::with_endianness(&mut *out, pcap_file::Endianness::Little)
            .map_err(pcap_err)?;
    let mut ifaces: HashMap<(usize, u32, u32), u32> = HashMap::new();
    while let Some(Reverse((ts, i))) = heap.pop() {
        let cur = &mut cursors[i];
        let parser = cur
            .parser
            .as_ref()
            .expect("a packet came from a parsed segment");
        let fmt = parser.format().expect("a parsed segment has a format");
        let p = packet_fields(fmt, cur.bytes())?;
        let key = (cur.index, cur.section, p.iface);
        let id = match ifaces.get(&key) {
            Some(&id) => id,
            None => {
                let (linktype, snaplen) = match fmt {
                    Format::Pcap(fh) => (fh.linktype, fh.snaplen),
                    Format::PcapNg { .. } => {
                        let ifc = parser.framer().interfaces()[p.iface as usize];
                        (ifc.linktype as u32, ifc.snaplen)
                    }
                };
                let idb = InterfaceDescriptionBlock {
                    linktype: pcap_file::DataLink::from(linktype),
                    snaplen,
                    options: vec![
                        InterfaceDescriptionOption::IfName(Cow::Owned(format!(
                            "{}#{}",
                            cur.name, p.iface
                        ))),
                        InterfaceDescriptionOption::IfTsResol(9),
                    ],
                };
                w.write_pcapng_block(idb).map_err(pcap_err)?;
                let id = ifaces.len() as u32;
                ifaces.insert(key, id);
                id
            }
        };
        let epb = EnhancedPacketBlock {
            interface_id: id,
            timestamp: Duration::from_nanos(ts.max(0) as u64),
            original_len: p.origlen,
            data: Cow::Borrowed(p.data),
            options: Vec::new(),
        };
        w.write_pcapng_block(epb).map_err(pcap_err)?;
        if cur.advance(cx)? {
            heap.push(Reverse((cur.ts(), i)));
        }
    }
    Ok(())
}
