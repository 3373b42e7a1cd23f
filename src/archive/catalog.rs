//! What an archive holds, as its readers see it: the manifest read leniently (a torn last
//! line or a broken chain is reported, not fatal, so `ls` and `cat` still work after a crash
//! and `verify` can say what is wrong), the live segments (finalized and not deleted), how
//! streams ended, and the segment files actually on disk. Read-only.

use super::manifest::{self, ChainError, Entry, SegmentEntry};
use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

/// A live segment and the manifest line that finalized it.
#[derive(Debug, Clone)]
pub struct LiveSegment {
    pub line: usize,
    pub entry: SegmentEntry,
}

/// A `stream` entry: how a stream ended.
#[derive(Debug, Clone)]
pub struct StreamEnd {
    pub line: usize,
    pub stream: String,
    pub packets: u64,
    pub bytes: u64,
    pub error: Option<String>,
}

#[derive(Debug)]
pub struct Catalog {
    pub dir: PathBuf,
    /// Lines in the manifest (a torn last line included).
    pub lines: usize,
    /// Whether the hash chain holds, and if not, where it breaks.
    pub chain: Result<(), ChainError>,
    /// Hash of the last line that belongs to the chain (after the chain's last good line).
    pub head: Option<String>,
    /// Finalized, not deleted segments, in manifest order.
    pub segments: Vec<LiveSegment>,
    /// Paths that `delete` entries removed.
    pub deleted: HashSet<String>,
    pub stream_ends: Vec<StreamEnd>,
    /// Lines that are not valid entries: (line number, reason).
    pub unreadable: Vec<(usize, String)>,
}

impl Catalog {
    /// Reads an archive's manifest. Fails only when there is no manifest to read.
    pub fn load(dir: &Path) -> io::Result<Catalog> {
        let text = manifest::read_text(dir)?;
        Ok(Self::parse(dir, &text))
    }

    pub fn parse(dir: &Path, text: &str) -> Catalog {
        let chain = manifest::parse(text).map(|_| ());
        let mut c = Catalog {
            dir: dir.to_path_buf(),
            lines: text.split_inclusive('\n').count(),
            chain,
            head: None,
            segments: Vec::new(),
            deleted: HashSet::new(),
            stream_ends: Vec::new(),
            unreadable: Vec::new(),
        };
        let good_lines = match &c.chain {
            Ok(()) => c.lines,
            Err(ChainError::Torn { line, .. })
            | Err(ChainError::Hash { line })
            | Err(ChainError::Chain { line }) => line - 1,
        };
        for (i, raw) in text.split_inclusive('\n').enumerate() {
            let number = i + 1;
            let v: serde_json::Value = match serde_json::from_str(raw.trim_end_matches('\n')) {
                Ok(v) => v,
                Err(e) => {
                    c.unreadable.push((number, e.to_string()));
                    continue;
                }
            };
            if number <= good_lines {
                c.head = v.get("hash").and_then(|h| h.as_str()).map(String::from);
            }
            let entry: Entry = match serde_json::from_value(v) {
                Ok(e) => e,
                Err(e) => {
                    c.unreadable.push((number, e.to_string()));
                    continue;
                }
            };
            match entry {
                Entry::Segment(s) => {
                    c.deleted.remove(&s.path);
                    c.segments.push(LiveSegment {
                        line: number,
                        entry: s,
                    })
                }
                Entry::Delete { path, .. } => {
                    c.segments.retain(|s| s.entry.path != path);
                    c.deleted.insert(path);
                }
                Entry::Stream {
                    stream,
                    packets,
                    bytes,
                    error,
                    ..
                } => c.stream_ends.push(StreamEnd {
                    line: number,
                    stream,
                    packets,
                    bytes,
                    error,
                }),
                Entry::Create { .. } | Entry::Repair { .. } => {}
            }
        }
        c
    }

    /// Stream names in order of first appearance (segments and stream entries).
    pub fn stream_names(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let names = self
            .segments
            .iter()
            .map(|s| (s.line, &s.entry.stream))
            .chain(self.stream_ends.iter().map(|e| (e.line, &e.stream)));
        let mut names: Vec<_> = names.collect();
        names.sort_by_key(|(line, _)| *line);
        for (_, n) in names {
            if seen.insert(n.clone()) {
                out.push(n.clone());
            }
        }
        out
    }

    /// The live segments of one stream, by sequence number.
    pub fn stream_segments(&self, stream: &str) -> Vec<&SegmentEntry> {
        let mut v: Vec<&SegmentEntry> = self
            .segments
            .iter()
            .map(|s| &s.entry)
            .filter(|e| e.stream == stream)
            .collect();
        v.sort_by_key(|e| e.seq);
        v
    }

    /// Whether `path` (relative to the archive) is named by a segment or delete entry.
    pub fn knows(&self, path: &str) -> bool {
        self.deleted.contains(path) || self.segments.iter().any(|s| s.entry.path == path)
    }
}

/// A segment file found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSegment {
    /// Path relative to the archive (`STREAM/000001.pcap.zst[.partial]`).
    pub rel: String,
    pub stream: String,
    pub seq: u64,
    pub pcapng: bool,
    pub partial: bool,
}

/// Parses a segment file name: `000001.pcap.zst`, `000002.pcapng.zst.partial`.
pub fn parse_segment_name(name: &str) -> Option<(u64, bool, bool)> {
    let (name, partial) = match name.strip_suffix(super::PARTIAL_SUFFIX) {
        Some(n) => (n, true),
        None => (name, false),
    };
    let (digits, pcapng) = if let Some(d) = name.strip_suffix(".pcapng.zst") {
        (d, true)
    } else {
        (name.strip_suffix(".pcap.zst")?, false)
    };
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, pcapng, partial))
}

/// Every segment file (finalized or `.partial`) in the archive's stream directories, sorted
/// by stream and sequence number.
pub fn scan_disk(dir: &Path) -> io::Result<Vec<DiskSegment>> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(dir)? {
        let d = d?;
        if !d.file_type()?.is_dir() {
            continue;
        }
        let stream = d.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(d.path())? {
            let f = f?;
            let name = f.file_name().to_string_lossy().into_owned();
            if let Some((seq, pcapng, partial)) = parse_segment_name(&name) {
                out.push(DiskSegment {
                    rel: format!("{stream}/{name}"),
                    stream: stream.clone(),
                    seq,
                    pcapng,
                    partial,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.stream, a.seq, a.partial).cmp(&(&b.stream, b.seq, b.partial)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names() {
        assert_eq!(
            parse_segment_name("000001.pcap.zst"),
            Some((1, false, false))
        );
        assert_eq!(
            parse_segment_name("1234567.pcapng.zst.partial"),
            Some((1234567, true, true))
        );
        assert_eq!(parse_segment_name("01.pcap.zst"), None);
        assert_eq!(parse_segment_name("000001.pcap"), None);
        assert_eq!(parse_segment_name("00000x.pcap.zst"), None);
    }

    #[test]
    fn lenient_parse_keeps_entries_before_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = manifest::Writer::open(dir.path(), crate::archive::create_entry).unwrap();
        w.append(&Entry::Delete {
            path: "s/000001.pcap.zst".into(),
            reason: "max-bytes".into(),
        })
        .unwrap();
        let head = w.head().to_string();
        drop(w);
        let mut text = std::fs::read_to_string(dir.path().join(manifest::FILE)).unwrap();
        text.push_str("{\"op\":\"repa");
        let c = Catalog::parse(dir.path(), &text);
        assert_eq!(c.lines, 3);
        assert!(matches!(c.chain, Err(ChainError::Torn { line: 3, .. })));
        assert_eq!(c.head.as_deref(), Some(head.as_str()));
        assert!(c.knows("s/000001.pcap.zst"));
        assert_eq!(c.unreadable.len(), 1);
    }
}
