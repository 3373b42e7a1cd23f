//! The manifest: an append-only JSON-lines log in which every line carries the SHA-256 of
//! everything before its own `hash` field and the previous line's hash (docs/ARCHIVE.md).
//! This module is the only writer and the only chain checker. The manifest is never read or
//! appended to through a symbolic link (`O_NOFOLLOW`).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const FILE: &str = "manifest.jsonl";
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_SEP: &str = ",\"hash\":\"";

/// One manifest operation. Field names are the on-disk names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Entry {
    Create {
        format: u32,
        zcap: String,
        host: String,
        created: String,
    },
    Segment(SegmentEntry),
    /// The flow index of a segment: its sidecar, at [`super::sidecar_name`] of the segment's
    /// path, written after the segment line by the recorder, or later by `zcap index` and
    /// `verify --repair` for segments that lack one.
    Flows(FlowsEntry),
    Stream {
        stream: String,
        event: String,
        packets: u64,
        bytes: u64,
        error: Option<String>,
        #[serde(default)]
        warnings: serde_json::Map<String, serde_json::Value>,
    },
    Delete {
        path: String,
        reason: String,
    },
    Repair {
        what: String,
    },
    /// The local copy of an uploaded segment was removed (`--keep-local`, or `--max-bytes`
    /// and friends while uploading): the segment lives on in the remote archive at `url`.
    Evict {
        path: String,
        reason: String,
        url: String,
    },
    /// The recorder's signature over the chain head `head` (the previous line's hash): see
    /// [`super::sign`]. `key` is the public key's 32 bytes in hex, `sig` the 64-byte Ed25519
    /// signature of the head's hex text, in hex.
    Sign {
        head: String,
        key: String,
        sig: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentEntry {
    pub stream: String,
    pub seq: u64,
    pub path: String,
    pub format: String,
    pub linktypes: Vec<u32>,
    #[serde(default)]
    pub nanos: bool,
    pub bytes: u64,
    pub raw: u64,
    pub packets: u64,
    pub frames: u64,
    pub first_ns: Option<i64>,
    pub last_ns: Option<i64>,
    pub stream_off: u64,
    #[serde(default)]
    pub cont: bool,
    pub sha256: String,
    pub time: String,
    #[serde(default)]
    pub repaired: bool,
    /// Live capture: packets the kernel dropped while the segment was open (absent for
    /// sources that cannot drop, and in archives from before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drops: Option<u64>,
}

/// A segment's flow-index sidecar (docs/ARCHIVE.md, "Flow index").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowsEntry {
    /// The segment's path, as its segment line names it.
    pub segment: String,
    pub bytes: u64,
    pub sha256: String,
    /// Rows (flows) in the sidecar.
    pub flows: u64,
    /// Packets `--flow-cutoff` dropped or truncated in the segment, and their bytes that were
    /// not stored.
    #[serde(default)]
    pub cut_packets: u64,
    #[serde(default)]
    pub cut_bytes: u64,
}

/// A parsed manifest line with its chain fields.
#[derive(Debug, Clone)]
pub struct Line {
    pub number: usize,
    pub entry: Entry,
    pub prev: String,
    pub hash: String,
}

/// Renders `entry` as one manifest line (with newline) chained to `prev`; returns the line and
/// its hash.
pub fn render(entry: &Entry, prev: &str) -> (String, String) {
    let mut v = serde_json::to_value(entry).expect("manifest entries serialize");
    v.as_object_mut()
        .expect("entries are objects")
        .insert("prev".into(), prev.into());
    let body = serde_json::to_string(&v).expect("serialize");
    let body = &body[..body.len() - 1]; // drop the closing brace
    let hash = hex(&Sha256::digest(body.as_bytes()));
    (format!("{body}{HASH_SEP}{hash}\"}}\n"), hash)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Appends chained entries to an archive's manifest. Its I/O errors name the manifest.
pub struct Writer {
    file: File,
    path: PathBuf,
    head: String,
    /// The manifest's length before an append that failed and could not be undone: the
    /// next append cuts the file back to it first.
    torn_at: Option<u64>,
    /// Follows every line with its signature (`record --sign-key`).
    signer: Option<super::sign::Signer>,
}

fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl Writer {
    /// Opens the manifest of `dir` for appending, creating it (with its `create` line) if
    /// missing. A torn last line is an error: run `zcap verify --repair` first.
    pub fn open(dir: &Path, create: impl FnOnce() -> Entry) -> io::Result<Writer> {
        Writer::open_signed(dir, create, None)
    }

    /// As [`Writer::open`]; with a signer, every line appended from now on (the `create`
    /// line of a new manifest included) is followed by its `sign` line.
    pub fn open_signed(
        dir: &Path,
        create: impl FnOnce() -> Entry,
        signer: Option<super::sign::Signer>,
    ) -> io::Result<Writer> {
        let path = dir.join(FILE);
        let existing = read_nofollow(&path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .or_else(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Ok(String::new())
                } else {
                    Err(named(&path, e))
                }
            })?;
        let head = match parse(&existing) {
            Ok(lines) => lines.last().map(|l| l.hash.clone()),
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: {e}; run `zcap verify --repair {}`",
                        path.display(),
                        dir.display()
                    ),
                ))
            }
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| named(&path, e))?;
        let mut w = Writer {
            file,
            path,
            head: head.clone().unwrap_or_else(|| GENESIS.to_string()),
            torn_at: None,
            signer,
        };
        if head.is_none() {
            w.append(&create())?;
        }
        Ok(w)
    }

    /// Appends one entry and fsyncs the manifest. All or nothing: when the write or the
    /// fsync fails (a full disk), the file is cut back to its length before the line, so a
    /// retry appends the same line again and no torn line is left for `verify --repair`.
    pub fn append(&mut self, entry: &Entry) -> io::Result<()> {
        if let Some(len) = self.torn_at {
            self.file.set_len(len)?;
            self.torn_at = None;
        }
        let before = self.file.metadata()?.len();
        let (mut line, mut hash) = render(entry, &self.head);
        if let Some(s) = &self.signer {
            // The line and its signature go in one write: both or neither.
            let (sig_line, sig_hash) = render(&s.sign(&hash), &hash);
            line += &sig_line;
            hash = sig_hash;
        }
        let r = self
            .file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data());
        if let Err(e) = r {
            if self.file.set_len(before).is_err() {
                self.torn_at = Some(before);
            }
            return Err(io::Error::new(
                e.kind(),
                AppendError {
                    path: self.path.clone(),
                    source: e,
                },
            ));
        }
        self.head = hash;
        Ok(())
    }

    pub fn head(&self) -> &str {
        &self.head
    }
}

/// A failed manifest append: names the file and keeps the OS error.
#[derive(Debug)]
pub struct AppendError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "appending to {}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for AppendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Why a manifest does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("manifest line {line} is torn or not valid JSON ({reason})")]
    Torn {
        line: usize,
        reason: String,
        last: bool,
    },
    #[error("manifest line {line} was altered: its hash does not match its contents")]
    Hash { line: usize },
    #[error("manifest line {line} does not chain to line {}: an entry was altered, removed or inserted", line - 1)]
    Chain { line: usize },
}

/// Parses and checks the whole chain. Line numbers are 1-based.
pub fn parse(text: &str) -> Result<Vec<Line>, ChainError> {
    let mut out = Vec::new();
    let mut prev = GENESIS.to_string();
    let n_lines = text.split_inclusive('\n').count();
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let number = i + 1;
        let last = number == n_lines;
        let torn = |reason: String| ChainError::Torn {
            line: number,
            reason,
            last,
        };
        let Some(line) = raw.strip_suffix('\n') else {
            return Err(torn("no newline at its end".into()));
        };
        let Some(cut) = line.rfind(HASH_SEP) else {
            return Err(torn("no hash field".into()));
        };
        let body = &line[..cut];
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| torn(e.to_string()))?;
        let hash = v
            .get("hash")
            .and_then(|h| h.as_str())
            .unwrap_or("")
            .to_string();
        let line_prev = v
            .get("prev")
            .and_then(|h| h.as_str())
            .unwrap_or("")
            .to_string();
        if hex(&Sha256::digest(body.as_bytes())) != hash {
            return Err(ChainError::Hash { line: number });
        }
        if line_prev != prev {
            return Err(ChainError::Chain { line: number });
        }
        let entry: Entry = serde_json::from_value(v).map_err(|e| torn(e.to_string()))?;
        prev = hash.clone();
        out.push(Line {
            number,
            entry,
            prev: line_prev,
            hash,
        });
    }
    Ok(out)
}

/// The manifest text of an archive directory (invalid UTF-8 replaced: `parse` then names
/// the damaged line), with an error that says which archive was expected.
pub fn read_text(dir: &Path) -> io::Result<String> {
    let path: PathBuf = dir.join(FILE);
    let bytes = read_nofollow(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "{}: {e} (is {} a zcap archive?)",
                path.display(),
                dir.display()
            ),
        )
    })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn read_nofollow(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    super::path::open_nofollow(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads and checks the manifest of an archive directory.
pub fn read(dir: &Path) -> io::Result<Result<Vec<Line>, ChainError>> {
    Ok(parse(&read_text(dir)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create() -> Entry {
        Entry::Create {
            format: 1,
            zcap: "0.1.0".into(),
            host: "h".into(),
            created: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn chain_detects_edits_insertions_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::open(dir.path(), create).unwrap();
        w.append(&Entry::Delete {
            path: "a".into(),
            reason: "max-bytes".into(),
        })
        .unwrap();
        w.append(&Entry::Repair { what: "x".into() }).unwrap();
        drop(w);
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        let lines = parse(&text).unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].prev, GENESIS);
        assert_eq!(lines[2].prev, lines[1].hash);

        let edited = text.replacen("max-bytes", "max-age", 1);
        assert_eq!(parse(&edited).unwrap_err(), ChainError::Hash { line: 2 });

        // Re-hash the edited line so only the chain can tell.
        let mut ls: Vec<String> = edited.lines().map(String::from).collect();
        let v: serde_json::Value = serde_json::from_str(&ls[1]).unwrap();
        let e: Entry = serde_json::from_value(v.clone()).unwrap();
        ls[1] = render(&e, v["prev"].as_str().unwrap())
            .0
            .trim_end()
            .to_string();
        let rehashed = ls.join("\n") + "\n";
        assert_eq!(parse(&rehashed).unwrap_err(), ChainError::Chain { line: 3 });

        let torn = &text[..text.len() - 5];
        assert!(matches!(
            parse(torn).unwrap_err(),
            ChainError::Torn {
                line: 3,
                last: true,
                ..
            }
        ));

        // Reopening continues the chain.
        let mut w = Writer::open(dir.path(), create).unwrap();
        w.append(&Entry::Repair { what: "y".into() }).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(parse(&text).unwrap().len(), 4);
    }

    #[test]
    fn a_linked_manifest_is_neither_read_nor_appended_to() {
        let t = tempfile::tempdir().unwrap();
        let (dir, outside) = (t.path().join("a"), t.path().join("elsewhere"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(&outside, b"not yours\n").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join(FILE)).unwrap();
        let e = read_text(&dir).unwrap_err();
        assert!(
            e.to_string()
                .contains(&dir.join(FILE).display().to_string()),
            "{e}"
        );
        let e = Writer::open(&dir, create).err().expect("refused");
        assert!(
            e.to_string()
                .contains(&dir.join(FILE).display().to_string()),
            "{e}"
        );
        assert_eq!(std::fs::read(&outside).unwrap(), b"not yours\n");
    }
}
