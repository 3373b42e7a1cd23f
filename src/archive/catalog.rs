//! What an archive holds, as its readers see it: the manifest read leniently (a torn last
//! line or a broken chain is reported, not fatal, so `ls` and `cat` still work after a crash
//! and `verify` can say what is wrong), the live segments (finalized and not deleted), how
//! streams ended, and the segment files actually on disk. Read-only. Every path a manifest
//! line names and every segment file on disk passes [`super::path`]'s rule first; what
//! breaks it is set aside with its reason ([`Catalog::bad_paths`], [`Disk::refused`]) and is
//! never listed as a segment, so no reader opens it.

use super::manifest::{self, ChainError, Entry, FlowsEntry, SegmentEntry};
use super::path::{self, PathError, Untrusted, Why};
use std::collections::{HashMap, HashSet};
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
    /// Segment and delete lines whose path breaks the naming rule, in line order. Their
    /// entries are left out of `segments` and `deleted`.
    pub bad_paths: Vec<PathError>,
    /// Every line, parsed, when the whole chain holds (empty otherwise): for checking
    /// signatures ([`super::sign::check`]).
    pub chained: Vec<manifest::Line>,
    /// `sign` lines.
    pub signatures: usize,
    /// Segments whose local copies were evicted after their upload (the local view only;
    /// the remote view keeps them live), with the archive URL that holds them.
    pub evicted: Vec<(LiveSegment, String)>,
    /// The flow index: each indexed segment's path → its `flows` line (the last one, should
    /// a segment have been indexed twice) and that line's number.
    pub flows: HashMap<String, (usize, FlowsEntry)>,
    /// `flows` lines that name no segment line before them: (line number, segment path).
    pub stray_flows: Vec<(usize, String)>,
}

/// Which copy of an archive a manifest is read for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// A directory: `evict` lines take segments out of the live set, and every path is
    /// checked against the disk (no links).
    Local,
    /// An object-store archive: evicted segments are still there; paths are checked by
    /// the naming rule alone.
    Remote,
}

impl Catalog {
    /// Reads an archive's manifest. Fails only when there is no manifest to read.
    pub fn load(dir: &Path) -> io::Result<Catalog> {
        let text = manifest::read_text(dir)?;
        Ok(Self::parse(dir, &text))
    }

    pub fn parse(dir: &Path, text: &str) -> Catalog {
        Self::parse_view(dir, text, View::Local)
    }

    /// [`Catalog::parse`] for the given copy; `dir` only names it in messages when remote.
    pub fn parse_view(dir: &Path, text: &str, view: View) -> Catalog {
        let (chain, chained) = match manifest::parse(text) {
            Ok(lines) => (Ok(()), lines),
            Err(e) => (Err(e), Vec::new()),
        };
        let mut c = Catalog {
            dir: dir.to_path_buf(),
            lines: text.split_inclusive('\n').count(),
            chain,
            head: None,
            segments: Vec::new(),
            deleted: HashSet::new(),
            stream_ends: Vec::new(),
            unreadable: Vec::new(),
            bad_paths: Vec::new(),
            chained,
            signatures: 0,
            evicted: Vec::new(),
            flows: HashMap::new(),
            stray_flows: Vec::new(),
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
                    let checked = match view {
                        View::Local => path::checked_path(dir, &s.path).map(|_| ()),
                        View::Remote => path::check_name(&s.path, false).map(|_| ()),
                    };
                    if let Err(e) = checked {
                        c.bad_paths.push(e.at(number));
                        continue;
                    }
                    c.deleted.remove(&s.path);
                    c.segments.push(LiveSegment {
                        line: number,
                        entry: s,
                    })
                }
                Entry::Delete { path, .. } => {
                    if let Err(e) = path::check_name(&path, false) {
                        c.bad_paths.push(e.at(number));
                        continue;
                    }
                    c.segments.retain(|s| s.entry.path != path);
                    c.flows.remove(&path);
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
                Entry::Evict { path, url, .. } => {
                    if let Err(e) = path::check_name(&path, false) {
                        c.bad_paths.push(e.at(number));
                        continue;
                    }
                    if view == View::Local {
                        if let Some(i) = c.segments.iter().position(|s| s.entry.path == path) {
                            c.evicted.push((c.segments.remove(i), url));
                        }
                    }
                }
                Entry::Flows(f) => {
                    let named = c.segments.iter().any(|s| s.entry.path == f.segment)
                        || c.evicted.iter().any(|(s, _)| s.entry.path == f.segment);
                    if named {
                        c.flows.insert(f.segment.clone(), (number, f));
                    } else if !c.deleted.contains(&f.segment) {
                        c.stray_flows.push((number, f.segment));
                    }
                }
                Entry::Sign { .. } => c.signatures += 1,
                Entry::Create { .. } | Entry::Repair { .. } => {}
            }
        }
        c
    }

    /// Refuses the archive when a manifest line names a path that breaks the rule.
    pub fn trusted(&self) -> Result<(), Untrusted> {
        if self.bad_paths.is_empty() {
            Ok(())
        } else {
            Err(Untrusted {
                dir: self.dir.clone(),
                errors: self.bad_paths.clone(),
            })
        }
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

    /// Whether `path` (relative to the archive) is named by a segment, delete or evict entry.
    pub fn knows(&self, path: &str) -> bool {
        self.deleted.contains(path)
            || self.segments.iter().any(|s| s.entry.path == path)
            || self.evicted.iter().any(|(s, _)| s.entry.path == path)
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

/// Whether `name` is a sidecar's file name (`000001.flows.parquet`, what
/// [`super::sidecar_name`] makes of a segment's).
pub fn is_sidecar_name(name: &str) -> bool {
    name.strip_suffix(super::SIDECAR_SUFFIX)
        .is_some_and(|d| d.len() >= 6 && d.bytes().all(|b| b.is_ascii_digit()))
}

/// What [`scan_disk`] found.
#[derive(Debug, Default)]
pub struct Disk {
    /// Segment files that pass the naming rule, sorted by stream and sequence number.
    pub segments: Vec<DiskSegment>,
    /// Flow-index sidecars (`STREAM/000001.flows.parquet`, regular files), sorted. They are
    /// not segments: [`Disk::segments`] never lists them.
    pub sidecars: Vec<String>,
    /// Links in the archive's top directory and segment files that break the rule.
    pub refused: Vec<PathError>,
}

/// Every segment file (finalized or `.partial`) and sidecar in the archive's stream
/// directories. A symbolic link is never followed: one in the archive's top directory, or a
/// segment- or sidecar-named file that is one, is refused. Errors name the directory that could not be read.
pub fn scan_disk(dir: &Path) -> io::Result<Disk> {
    let named = |p: &Path, e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
    let mut out = Disk::default();
    for d in std::fs::read_dir(dir).map_err(|e| named(dir, e))? {
        let d = d.map_err(|e| named(dir, e))?;
        let stream = d.file_name().to_string_lossy().into_owned();
        let kind = d.file_type().map_err(|e| named(&d.path(), e))?;
        if kind.is_symlink() {
            out.refused.push(PathError {
                line: None,
                path: stream,
                why: Why::Symlink("it".into()),
            });
            continue;
        }
        if !kind.is_dir() {
            continue;
        }
        let sdir = d.path();
        for f in std::fs::read_dir(&sdir).map_err(|e| named(&sdir, e))? {
            let f = f.map_err(|e| named(&sdir, e))?;
            let name = f.file_name().to_string_lossy().into_owned();
            let rel = format!("{stream}/{name}");
            if is_sidecar_name(&name) && path::is_stream_name(&stream) {
                match f.file_type() {
                    Ok(t) if t.is_symlink() => out.refused.push(PathError {
                        line: None,
                        path: rel,
                        why: Why::Symlink("the sidecar file".into()),
                    }),
                    Ok(t) if t.is_file() => out.sidecars.push(rel),
                    Ok(_) => out.refused.push(PathError {
                        line: None,
                        path: rel,
                        why: Why::Kind("the sidecar file".into(), "a regular file"),
                    }),
                    Err(e) => return Err(named(&f.path(), e)),
                }
                continue;
            }
            let Some((seq, pcapng, partial)) = parse_segment_name(&name) else {
                continue;
            };
            match path::checked_disk_path(dir, &rel) {
                Ok(_) => out.segments.push(DiskSegment {
                    rel,
                    stream: stream.clone(),
                    seq,
                    pcapng,
                    partial,
                }),
                Err(e) => out.refused.push(e),
            }
        }
    }
    out.segments
        .sort_by(|a, b| (&a.stream, a.seq, a.partial).cmp(&(&b.stream, b.seq, b.partial)));
    out.sidecars.sort();
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

    #[test]
    fn lines_naming_bad_paths_are_set_aside_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = manifest::Writer::open(dir.path(), crate::archive::create_entry).unwrap();
        let seg = |path: &str| {
            Entry::Segment(SegmentEntry {
                stream: "s".into(),
                seq: 1,
                path: path.into(),
                format: "pcap".into(),
                linktypes: vec![1],
                nanos: false,
                bytes: 1,
                raw: 1,
                packets: 0,
                frames: 0,
                first_ns: None,
                last_ns: None,
                stream_off: 24,
                cont: false,
                sha256: String::new(),
                time: String::new(),
                repaired: false,
                drops: None,
            })
        };
        w.append(&seg("s/000001.pcap.zst")).unwrap();
        w.append(&seg("../outside/000001.pcap.zst")).unwrap();
        w.append(&Entry::Delete {
            path: "/etc/passwd".into(),
            reason: "max-bytes".into(),
        })
        .unwrap();
        drop(w);
        let c = Catalog::load(dir.path()).unwrap();
        assert!(c.chain.is_ok());
        assert_eq!(c.segments.len(), 1);
        assert_eq!(c.segments[0].entry.path, "s/000001.pcap.zst");
        assert!(c.deleted.is_empty());
        let lines: Vec<_> = c
            .bad_paths
            .iter()
            .map(|e| (e.line, e.path.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                (Some(3), "../outside/000001.pcap.zst"),
                (Some(4), "/etc/passwd")
            ]
        );
        let msg = c.trusted().unwrap_err().to_string();
        assert!(
            msg.contains("manifest line 3: path \"../outside/000001.pcap.zst\""),
            "{msg}"
        );
        assert!(
            msg.contains("manifest line 4: path \"/etc/passwd\": an absolute path"),
            "{msg}"
        );
    }

    #[test]
    fn scan_disk_refuses_links() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let (dir, out) = (t.path().join("a"), t.path().join("out"));
        std::fs::create_dir_all(dir.join("s")).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("000001.pcap.zst"), b"x").unwrap();
        std::fs::write(dir.join("s/000001.pcap.zst"), b"x").unwrap();
        std::fs::write(dir.join("s/000002.pcap.zst.partial"), b"x").unwrap();
        std::fs::write(dir.join("s/000001.flows.parquet"), b"x").unwrap();
        symlink(out.join("000001.pcap.zst"), dir.join("s/000003.pcap.zst")).unwrap();
        symlink(
            out.join("000001.pcap.zst"),
            dir.join("s/000003.flows.parquet"),
        )
        .unwrap();
        symlink(&out, dir.join("t")).unwrap();
        let d = scan_disk(&dir).unwrap();
        let found: Vec<_> = d.segments.iter().map(|s| s.rel.as_str()).collect();
        assert_eq!(found, ["s/000001.pcap.zst", "s/000002.pcap.zst.partial"]);
        assert_eq!(d.sidecars, ["s/000001.flows.parquet"]);
        let mut refused: Vec<_> = d.refused.iter().map(|e| e.path.as_str()).collect();
        refused.sort();
        assert_eq!(
            refused,
            ["s/000003.flows.parquet", "s/000003.pcap.zst", "t"]
        );
    }
}
