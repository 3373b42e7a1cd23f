//! The one rule for paths an archive names about itself (docs/ARCHIVE.md, "Untrusted
//! archives"). An archive is input like any other: a manifest line may name any string as a
//! path and a directory may hold links. Every path taken from a manifest, and every segment
//! file found on disk, passes [`checked_path`] (or [`check_name`] where nothing is on disk
//! yet) before anything reads, writes or deletes it: exactly `STREAM/SEGMENT`, the stream
//! directory named as [`super::sanitize`] names streams, the segment named as
//! [`super::segment_name`] names segments, and neither a symbolic link. Files are then opened
//! with [`open_nofollow`], so a link swapped in after the check is refused too.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a path is not one the archive may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    Empty,
    Absolute,
    /// A `.` or `..` component.
    Dots,
    /// An empty component (`a//b`, a trailing `/`).
    EmptyComponent,
    /// Not two components.
    Shape(usize),
    /// The stream directory's name is not a stream name.
    Stream(String),
    /// The file name is not a segment name.
    Segment(String),
    /// A `.partial` named where only finalized segments may be.
    Partial,
    /// This part of the path (named in words) is a symbolic link.
    Symlink(String),
    /// This part of the path is not a directory (the stream) or not a regular file (the
    /// segment).
    Kind(String, &'static str),
    /// The stream's directory or the segment could not be examined.
    Io(String, String),
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Empty => write!(f, "the path is empty"),
            Why::Absolute => write!(f, "an absolute path reaches outside the archive"),
            Why::Dots => write!(
                f,
                "a `.` or `..` component: paths name STREAM/SEGMENT inside the archive"
            ),
            Why::EmptyComponent => write!(f, "an empty path component"),
            Why::Shape(n) => write!(
                f,
                "{n} component(s): a segment path is exactly STREAM/SEGMENT"
            ),
            Why::Stream(s) => write!(
                f,
                "`{s}` is not a stream directory name (made of [A-Za-z0-9._-], not starting with a dot)"
            ),
            Why::Segment(s) => write!(
                f,
                "`{s}` is not a segment file name (six or more digits, then .pcap.zst or .pcapng.zst)"
            ),
            Why::Partial => write!(
                f,
                "a .partial segment is never finalized under that name"
            ),
            Why::Symlink(p) => write!(
                f,
                "{p} is a symbolic link, which could lead outside the archive; zcap never makes links"
            ),
            Why::Kind(p, what) => write!(f, "{p} is not {what}"),
            Why::Io(p, e) => write!(f, "cannot examine {p}: {e}"),
        }
    }
}

/// A path an archive names that breaks the rule: which manifest line (when it came from
/// one), the path as written, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PathError {
    pub line: Option<usize>,
    pub path: String,
    pub why: Why,
}

impl PathError {
    /// The same error, attributed to manifest line `line`.
    pub fn at(mut self, line: usize) -> PathError {
        self.line = Some(line);
        self
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = self.line {
            write!(f, "manifest line {l}: ")?;
        }
        write!(f, "path {:?}: {}", self.path, self.why)
    }
}

/// An archive whose manifest names paths that break the rule: readers refuse it whole
/// (`zcap verify` reports each line as damage).
#[derive(Debug, Clone, thiserror::Error)]
pub struct Untrusted {
    pub dir: PathBuf,
    pub errors: Vec<PathError>,
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: not reading this archive: its manifest names {} path(s) outside the archive's naming rule (damage or tampering): ",
            self.dir.display(),
            self.errors.len()
        )?;
        for (i, e) in self.errors.iter().enumerate() {
            write!(f, "{}{e}", if i > 0 { "; " } else { "" })?;
        }
        Ok(())
    }
}

/// Whether `s` is a stream directory name: what [`super::sanitize`] makes, unchanged by it.
pub fn is_stream_name(s: &str) -> bool {
    !s.is_empty() && super::sanitize(s) == s
}

/// The lexical rule: `rel` is `STREAM/SEGMENT` with a stream name and a segment file name
/// (`.partial` only when `partial_ok`). Returns the two parts.
pub fn check_name(rel: &str, partial_ok: bool) -> Result<(&str, &str), PathError> {
    let err = |why| PathError {
        line: None,
        path: rel.to_string(),
        why,
    };
    if rel.is_empty() {
        return Err(err(Why::Empty));
    }
    if rel.starts_with('/') {
        return Err(err(Why::Absolute));
    }
    let parts: Vec<&str> = rel.split('/').collect();
    if parts.iter().any(|p| matches!(*p, "." | "..")) {
        return Err(err(Why::Dots));
    }
    if parts.iter().any(|p| p.is_empty()) {
        return Err(err(Why::EmptyComponent));
    }
    let [stream, name] = parts[..] else {
        return Err(err(Why::Shape(parts.len())));
    };
    if !is_stream_name(stream) {
        return Err(err(Why::Stream(stream.into())));
    }
    match super::catalog::parse_segment_name(name) {
        None => Err(err(Why::Segment(name.into()))),
        Some((_, _, true)) if !partial_ok => Err(err(Why::Partial)),
        Some(_) => Ok((stream, name)),
    }
}

/// Checks a finalized segment's path `rel` (as a manifest names it) against the archive at
/// `dir` and returns the file's path. The lexical rule ([`check_name`]), then: the stream
/// directory, if it exists, is a directory and not a link; the segment, if it exists, is a
/// regular file and not a link. A missing file passes (the caller reports it missing).
pub fn checked_path(dir: &Path, rel: &str) -> Result<PathBuf, PathError> {
    check_parts(dir, rel, false)
}

/// [`checked_path`] for a segment file found on disk, `.partial` allowed.
pub fn checked_disk_path(dir: &Path, rel: &str) -> Result<PathBuf, PathError> {
    check_parts(dir, rel, true)
}

fn check_parts(dir: &Path, rel: &str, partial_ok: bool) -> Result<PathBuf, PathError> {
    let (stream, name) = check_name(rel, partial_ok)?;
    let err = |why| PathError {
        line: None,
        path: rel.to_string(),
        why,
    };
    let sdir = super::stream_dir(dir, stream);
    let file = sdir.join(name);
    let sname = format!("its stream directory {stream}");
    for (p, shown, dir_expected) in [
        (&sdir, sname.as_str(), true),
        (&file, "the segment file", false),
    ] {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => return Err(err(Why::Symlink(shown.into()))),
            Ok(m) if dir_expected && !m.is_dir() => {
                return Err(err(Why::Kind(shown.into(), "a directory")))
            }
            Ok(m) if !dir_expected && !m.is_file() => {
                return Err(err(Why::Kind(shown.into(), "a regular file")))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(err(Why::Io(p.display().to_string(), e.to_string()))),
        }
    }
    Ok(file)
}

/// Replaces `path` with `bytes` whole: written to `tmp` (created or truncated, never
/// through a link), fsynced, renamed over `path` (a link there is replaced, not followed).
/// A crash leaves the old file or the new one, never a torn one; the caller fsyncs the
/// directory. The error names the file that failed; `tmp` does not outlive a failure.
pub fn replace_file(tmp: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let named = |p: &Path, e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(|e| named(tmp, e))
        .and_then(|()| std::fs::rename(tmp, path).map_err(|e| named(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    written
}

/// Opens a file for reading without following a symbolic link in its last component
/// (`O_NOFOLLOW`: a link is refused with ELOOP).
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for (rel, parts) in [
            (
                "trace-20261125T081530Z/000001.pcap.zst",
                ("trace-20261125T081530Z", "000001.pcap.zst"),
            ),
            (
                "127.0.0.1_40312-20261125T081530Z-2/1234567.pcapng.zst",
                ("127.0.0.1_40312-20261125T081530Z-2", "1234567.pcapng.zst"),
            ),
            ("a..b/000009.pcap.zst", ("a..b", "000009.pcap.zst")),
        ] {
            assert_eq!(check_name(rel, false), Ok(parts), "{rel}");
        }
        assert!(check_name("s/000001.pcap.zst.partial", true).is_ok());
        // What the writer makes passes, whatever the source's name.
        for raw in ["10.0.0.1:5000", "../..", "", "/etc/passwd", "a/b\\c"] {
            let stream = crate::archive::sanitize(raw);
            let rel = format!("{stream}/{}", crate::archive::segment_name(1, false));
            assert!(check_name(&rel, false).is_ok(), "{raw:?} -> {rel}");
        }
    }

    #[test]
    fn each_bad_form_is_refused_with_its_reason() {
        let why = |rel: &str| check_name(rel, false).unwrap_err().why;
        assert_eq!(why(""), Why::Empty);
        assert_eq!(why("/tmp/s/000001.pcap.zst"), Why::Absolute);
        assert_eq!(why("../outside/000001.pcap.zst"), Why::Dots);
        assert_eq!(why("s/../000001.pcap.zst"), Why::Dots);
        assert_eq!(why("./000001.pcap.zst"), Why::Dots);
        assert_eq!(why("s//000001.pcap.zst"), Why::EmptyComponent);
        assert_eq!(why("s/000001.pcap.zst/"), Why::EmptyComponent);
        assert_eq!(why("000001.pcap.zst"), Why::Shape(1));
        assert_eq!(why("a/b/000001.pcap.zst"), Why::Shape(3));
        assert_eq!(
            why(".hidden/000001.pcap.zst"),
            Why::Stream(".hidden".into())
        );
        assert_eq!(why("a b/000001.pcap.zst"), Why::Stream("a b".into()));
        assert_eq!(why("a\\b/000001.pcap.zst"), Why::Stream("a\\b".into()));
        assert_eq!(
            why("s/manifest.jsonl"),
            Why::Segment("manifest.jsonl".into())
        );
        assert_eq!(why("s/01.pcap.zst"), Why::Segment("01.pcap.zst".into()));
        assert_eq!(why("s/000001.pcap.zst.partial"), Why::Partial);
        let e = check_name("../outside/x.pcap.zst", false)
            .unwrap_err()
            .at(7)
            .to_string();
        assert!(
            e.starts_with("manifest line 7: path \"../outside/x.pcap.zst\": a `.` or `..`"),
            "{e}"
        );
    }

    #[test]
    fn links_and_other_kinds_are_refused_on_disk() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let (dir, out) = (t.path().join("a"), t.path().join("out"));
        std::fs::create_dir_all(dir.join("s")).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("000001.pcap.zst"), b"x").unwrap();
        std::fs::write(dir.join("s/000001.pcap.zst"), b"x").unwrap();
        assert_eq!(
            checked_path(&dir, "s/000001.pcap.zst"),
            Ok(dir.join("s/000001.pcap.zst"))
        );
        // Missing files pass: the caller says they are missing.
        assert!(checked_path(&dir, "s/000002.pcap.zst").is_ok());
        assert!(checked_path(&dir, "nostream/000002.pcap.zst").is_ok());

        symlink(&out, dir.join("linked")).unwrap();
        assert_eq!(
            checked_path(&dir, "linked/000001.pcap.zst")
                .unwrap_err()
                .why,
            Why::Symlink("its stream directory linked".into())
        );
        symlink(out.join("000001.pcap.zst"), dir.join("s/000003.pcap.zst")).unwrap();
        assert_eq!(
            checked_path(&dir, "s/000003.pcap.zst").unwrap_err().why,
            Why::Symlink("the segment file".into())
        );
        std::fs::create_dir(dir.join("s/000004.pcap.zst")).unwrap();
        assert_eq!(
            checked_path(&dir, "s/000004.pcap.zst").unwrap_err().why,
            Why::Kind("the segment file".into(), "a regular file")
        );
        std::fs::write(dir.join("plain"), b"").unwrap();
        assert_eq!(
            checked_path(&dir, "plain/000001.pcap.zst").unwrap_err().why,
            Why::Kind("its stream directory plain".into(), "a directory")
        );
        let e = open_nofollow(&dir.join("s/000003.pcap.zst")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert!(open_nofollow(&dir.join("s/000001.pcap.zst")).is_ok());
    }
}
