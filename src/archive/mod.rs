//! The archive format (docs/ARCHIVE.md): directory layout and naming, the manifest, the
//! segment index trailer. The writer produces archives through these types; readers,
//! `verify` and retention consume them. Nothing here touches the receive path. Archives
//! are untrusted input: every path one names about itself passes [`path::checked_path`].

pub mod catalog;
pub mod flowlist;
pub mod flows;
pub mod index;
pub mod location;
pub mod manifest;
pub mod path;
pub mod read;
pub mod repair;
pub mod retention;
pub mod segment;
pub mod sign;
pub mod verify;

pub use path::{checked_path, PathError};
use std::path::{Path, PathBuf};

/// Format version written to the manifest's `create` line.
pub const FORMAT_VERSION: u32 = 1;

/// File name of segment `seq` of a stream in the given container format.
pub fn segment_name(seq: u64, pcapng: bool) -> String {
    format!("{seq:06}.{}.zst", if pcapng { "pcapng" } else { "pcap" })
}

/// The flow-index sidecar of the segment at `segment` (`STREAM/000001.pcap.zst` →
/// `STREAM/000001.flows.parquet`): derived from the segment's path, never named freely, so a
/// manifest cannot point a reader anywhere else.
pub fn sidecar_name(segment: &str) -> String {
    let (dir, file) = match segment.rsplit_once('/') {
        Some((d, f)) => (Some(d), f),
        None => (None, segment),
    };
    let seq = file.split('.').next().unwrap_or(file);
    match dir {
        Some(d) => format!("{d}/{seq}{SIDECAR_SUFFIX}"),
        None => format!("{seq}{SIDECAR_SUFFIX}"),
    }
}

pub const SIDECAR_SUFFIX: &str = ".flows.parquet";

pub const PARTIAL_SUFFIX: &str = ".partial";

/// Path of a stream's directory inside the archive.
pub fn stream_dir(archive: &Path, stream: &str) -> PathBuf {
    archive.join(stream)
}

/// Makes a stream-name-safe string: `[A-Za-z0-9._-]`, everything else becomes `_`.
pub fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_start_matches('.');
    if s.is_empty() {
        "stream".into()
    } else {
        s.into()
    }
}

/// UTC time as `YYYYmmddTHHMMSSZ`, for stream names.
pub fn compact_time(t: std::time::SystemTime) -> String {
    let s = humantime::format_rfc3339_seconds(t).to_string(); // 2026-11-25T08:15:30Z
    s.replace(['-', ':'], "")
}

/// Host name for the manifest's `create` line.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into our local buffer.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The `create` entry for a new archive.
pub fn create_entry() -> manifest::Entry {
    manifest::Entry::Create {
        format: FORMAT_VERSION,
        zcap: env!("CARGO_PKG_VERSION").into(),
        host: hostname(),
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    }
}

/// Refuses a directory that holds no manifest: not a zcap archive.
pub fn existing(dir: &Path) -> anyhow::Result<()> {
    if !dir.join(manifest::FILE).is_file() {
        anyhow::bail!(
            "{}: no {} here: not a zcap archive",
            dir.display(),
            manifest::FILE
        );
    }
    Ok(())
}

/// An existing archive's lock, for a command that writes it offline; while a recorder holds
/// the lock, an error: "a recorder is writing DIR (it holds DIR/.lock)" and `then`.
pub fn lock_offline(dir: &Path, then: &str) -> anyhow::Result<std::fs::File> {
    existing(dir)?;
    match lock(dir)? {
        Some(l) => Ok(l),
        None => anyhow::bail!(
            "a recorder is writing {} (it holds {}/.lock){then}",
            dir.display(),
            dir.display()
        ),
    }
}

/// Takes the archive's writer lock (`.lock`, flock exclusive, non-blocking). `None` when
/// another recorder holds it. Errors name the lock file; a link there is refused.
pub fn lock(dir: &Path) -> std::io::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(".lock");
    let named =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(named)?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(Some(f))
    } else {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(named(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(segment_name(7, false), "000007.pcap.zst");
        assert_eq!(segment_name(1234567, true), "1234567.pcapng.zst");
        assert_eq!(sanitize("10.0.0.1:5000/x y"), "10.0.0.1_5000_x_y");
        assert_eq!(sanitize("../.."), "_..");
        assert_eq!(compact_time(std::time::UNIX_EPOCH), "19700101T000000Z");
    }
}
