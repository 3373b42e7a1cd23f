//! Retention: the archive as a ring buffer. `--max-bytes` and `--max-age` delete the oldest
//! finalized segments first (finalization order), never the newest one, and record each
//! deletion in the manifest.
//!
//! It deletes only files that match their manifest entry: the path passes the archive's
//! naming rule ([`super::path`]), the file is a regular file (not a link) and has the
//! entry's size. Anything else is left in place, logged (`zcap: retention: not deleting
//! PATH: why`), counted in [`Live::refused`] and dropped from the books, and retention
//! moves on to the next segment.
//!
//! An archive that is being uploaded ([`Offload`]) is a local copy of the remote one: then
//! retention *evicts* instead — it removes only local copies whose upload is confirmed and
//! records an `evict` line (the segment lives on remotely), it keeps `--keep-local` on top of
//! the limits, and it never removes a segment that is not uploaded yet, saying so loudly
//! when that keeps the archive over `--max-bytes` or `--max-age`.

use super::manifest::{self, Entry};
use std::collections::{HashSet, VecDeque};
use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Which segments of an archive being uploaded are safely in the remote archive: the
/// uploader confirms them (uploaded, checksum checked), retention may then evict them.
#[derive(Debug)]
pub struct Offload {
    /// The remote archive, for the `evict` lines.
    pub url: String,
    /// How much to keep locally of what is uploaded (`--keep-local`): bytes, age.
    pub keep_bytes: Option<u64>,
    pub keep_age: Option<Duration>,
    confirmed: Mutex<HashSet<String>>,
}

impl Offload {
    pub fn new(url: String, keep_bytes: Option<u64>, keep_age: Option<Duration>) -> Offload {
        Offload {
            url,
            keep_bytes,
            keep_age,
            confirmed: Mutex::new(HashSet::new()),
        }
    }

    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.confirmed.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn confirm(&self, path: &str) {
        self.set().insert(path.to_string());
    }

    pub fn forget(&self, path: &str) {
        self.set().remove(path);
    }

    pub fn is_confirmed(&self, path: &str) -> bool {
        self.set().contains(path)
    }
}

/// What the uploader asks of whoever holds the archive's manifest writer and retention
/// books (the recorder's writer, or `zcap upload` itself).
pub trait Books: Send + Sync {
    /// Applies local retention now (a confirmed upload may let a local copy go).
    fn enforce(&self) -> io::Result<()>;
    /// Remote retention removed `path`: records a `delete` line (reason `remote-max-age`)
    /// and removes the local copy if there still is one. The object itself is deleted
    /// only after a manifest holding that line is uploaded.
    fn remote_delete(&self, path: &str) -> io::Result<()>;
}

/// The finalized, not yet deleted segments, oldest first.
#[derive(Debug, Default)]
pub struct Live {
    segs: VecDeque<(String, u64, SystemTime)>,
    total: u64,
    refused: u64,
    /// Set while the archive is uploaded: retention evicts confirmed copies only.
    pub offload: Option<std::sync::Arc<Offload>>,
    /// Segments already named in a "not uploaded yet" warning.
    warned: HashSet<String>,
}

fn refuse(path: &str, why: impl std::fmt::Display) {
    eprintln!("zcap: retention: not deleting {path}: {why}");
}

impl Live {
    /// Rebuilds the list from an archive's manifest (empty if there is none yet).
    pub fn load(dir: &Path) -> io::Result<Live> {
        let mut live = Live::default();
        let text = match std::fs::read_to_string(dir.join(manifest::FILE)) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(live),
            Err(e) => return Err(e),
        };
        let lines = manifest::parse(&text)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        for l in lines {
            match l.entry {
                Entry::Segment(s) => {
                    if let Err(e) = super::checked_path(dir, &s.path) {
                        refuse(&s.path, e.at(l.number));
                        live.refused += 1;
                        continue;
                    }
                    let t = humantime::parse_rfc3339(&s.time).unwrap_or(SystemTime::UNIX_EPOCH);
                    live.add(s.path, s.bytes, t);
                }
                Entry::Delete { path, .. } | Entry::Evict { path, .. } => live.remove(&path),
                _ => {}
            }
        }
        Ok(live)
    }

    pub fn add(&mut self, path: String, bytes: u64, time: SystemTime) {
        self.total += bytes;
        self.segs.push_back((path, bytes, time));
    }

    fn remove(&mut self, path: &str) {
        if let Some(i) = self.segs.iter().position(|s| s.0 == path) {
            let (_, b, _) = self.segs.remove(i).expect("index from position");
            self.total -= b;
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Segments retention refused to delete (or to take on from the manifest) since this
    /// list was loaded.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Why the file of an entry (`path`, `bytes`) must not be deleted, if it must not. A
    /// file already gone passes: its deletion is still recorded.
    fn check_deletable(dir: &Path, path: &str, bytes: u64) -> Result<(), String> {
        let p = super::checked_path(dir, path).map_err(|e| e.to_string())?;
        match std::fs::symlink_metadata(&p) {
            Ok(m) if !m.file_type().is_file() => Err("not a regular file".into()),
            Ok(m) if m.len() != bytes => Err(format!(
                "{} bytes, but its manifest entry says {bytes}: not the file the manifest finalized",
                m.len()
            )),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot examine {}: {e}", p.display())),
        }
    }

    /// Deletes oldest segments until the limits hold (keeping the newest), logging each in
    /// the manifest. Returns how many were deleted. While uploading, evicts instead (see the
    /// module's documentation): the newest may go too, it is safe remotely.
    pub fn enforce(
        &mut self,
        dir: &Path,
        manifest: &mut manifest::Writer,
        max_bytes: Option<u64>,
        max_age: Option<Duration>,
    ) -> io::Result<u64> {
        let now = SystemTime::now();
        let old = |t: SystemTime, a: Duration| now.duration_since(t).unwrap_or_default() > a;
        let mut deleted = 0;
        let offload = self.offload.clone();
        let keep_last = if offload.is_some() { 0 } else { 1 };
        while self.segs.len() > keep_last {
            let (path, _, time) = self.segs.front().expect("non-empty").clone();
            let hard = if max_bytes.is_some_and(|m| self.total > m) {
                Some("max-bytes")
            } else if max_age.is_some_and(|a| old(time, a)) {
                Some("max-age")
            } else {
                None
            };
            let Some(o) = offload.as_deref() else {
                let Some(reason) = hard else { break };
                if self.delete_oldest(dir, manifest, reason)?.is_some() {
                    deleted += 1;
                }
                continue;
            };
            let keep = o.keep_bytes.is_some_and(|k| self.total > k)
                || o.keep_age.is_some_and(|a| old(time, a));
            let Some(reason) = hard.or(keep.then_some("keep-local")) else {
                break;
            };
            if !o.is_confirmed(&path) {
                if hard.is_some() && self.warned.insert(path.clone()) {
                    eprintln!(
                        "zcap: retention: WARNING: {} is over --{reason} but {path} is not uploaded to {} yet: keeping it (and everything newer) until its upload is confirmed",
                        dir.display(),
                        o.url
                    );
                }
                break;
            }
            if self.evict_oldest(dir, manifest, reason, &o.url)?.is_some() {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Deletes oldest segments (never the newest) for a full disk or the `--min-free`
    /// floor, until `enough(bytes freed so far)` holds or only the newest is left. Counts
    /// into `freed` (segments, bytes) as it goes, so the count survives an error.
    pub fn free_oldest(
        &mut self,
        dir: &Path,
        manifest: &mut manifest::Writer,
        reason: &str,
        freed: &mut (u64, u64),
        mut enough: impl FnMut(u64) -> bool,
    ) -> io::Result<()> {
        while self.segs.len() > 1 && !enough(freed.1) {
            if let Some(o) = self.offload.clone() {
                let path = self.segs.front().expect("non-empty").0.clone();
                if !o.is_confirmed(&path) {
                    if self.warned.insert(path.clone()) {
                        eprintln!(
                            "zcap: retention: WARNING: {} is full but {path} is not uploaded to {} yet: not deleting it",
                            dir.display(),
                            o.url
                        );
                    }
                    break;
                }
                if let Some(bytes) = self.evict_oldest(dir, manifest, reason, &o.url)? {
                    freed.0 += 1;
                    freed.1 += bytes;
                }
                continue;
            }
            if let Some(bytes) = self.delete_oldest(dir, manifest, reason)? {
                freed.0 += 1;
                freed.1 += bytes;
            }
        }
        Ok(())
    }

    /// Finalized segments that retention could delete now (all but the newest).
    pub fn deletable(&self) -> usize {
        self.segs.len().saturating_sub(1)
    }

    /// Deletes the oldest segment: records the deletion in the manifest, then removes the
    /// file. Returns the segment's size, or `None` when the file does not match its entry:
    /// then it is left in place, logged and counted, and leaves the books.
    ///
    /// Record first: a crash between the two leaves a deleted segment's file behind, which
    /// `verify --repair` removes, rather than a live segment with no file. Only when the disk
    /// is too full for the manifest line is the file removed first (that frees the room for
    /// the line); the segment leaves the books only once its line is written, so a retry
    /// writes the same line.
    fn delete_oldest(
        &mut self,
        dir: &Path,
        manifest: &mut manifest::Writer,
        reason: &str,
    ) -> io::Result<Option<u64>> {
        let path = self.segs.front().expect("a segment to delete").0.clone();
        let entry = Entry::Delete {
            path: path.clone(),
            reason: reason.into(),
        };
        self.remove_recorded(dir, manifest, 0, entry)
    }

    /// Evicts the oldest segment's local copy (its upload is confirmed): an `evict` line,
    /// then the file, as [`Live::delete_oldest`] does.
    fn evict_oldest(
        &mut self,
        dir: &Path,
        manifest: &mut manifest::Writer,
        reason: &str,
        url: &str,
    ) -> io::Result<Option<u64>> {
        let path = self.segs.front().expect("a segment to evict").0.clone();
        let entry = Entry::Evict {
            path: path.clone(),
            reason: reason.into(),
            url: url.into(),
        };
        self.remove_recorded(dir, manifest, 0, entry)
    }

    /// Records that remote retention deleted `path` and removes its local copy, if any is
    /// still on the books. The `delete` line is written either way.
    pub fn delete_remote(
        &mut self,
        dir: &Path,
        manifest: &mut manifest::Writer,
        path: &str,
    ) -> io::Result<()> {
        let entry = Entry::Delete {
            path: path.to_string(),
            reason: "remote-max-age".into(),
        };
        match self.segs.iter().position(|s| s.0 == path) {
            Some(i) => self.remove_recorded(dir, manifest, i, entry).map(|_| ()),
            None => manifest.append(&entry),
        }
    }

    /// Records `entry` (a deletion or eviction of segment `i` on the books), then removes
    /// the file. Returns the segment's size, or `None` when the file does not match its
    /// entry: then it is left in place, logged and counted, and leaves the books.
    fn remove_recorded(
        &mut self,
        dir: &Path,
        manifest: &mut manifest::Writer,
        i: usize,
        entry: Entry,
    ) -> io::Result<Option<u64>> {
        let (path, bytes, _) = self.segs[i].clone();
        if let Err(why) = Self::check_deletable(dir, &path, bytes) {
            refuse(&path, why);
            self.refused += 1;
            self.segs.remove(i);
            self.total -= bytes;
            return Ok(None);
        }
        // The segment's flow-index sidecar goes with it: always with a deletion, and with an
        // eviction once its own upload is confirmed (else the uploader removes it after).
        let sidecar = Some(super::sidecar_name(&path)).filter(|sc| match &entry {
            Entry::Evict { .. } => self.offload.as_ref().is_some_and(|o| o.is_confirmed(sc)),
            _ => true,
        });
        let remove = || {
            for p in std::iter::once(&path).chain(sidecar.as_ref()) {
                match std::fs::remove_file(dir.join(p)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("deleting {}: {e}", dir.join(p).display()),
                        ))
                    }
                }
            }
            Ok(())
        };
        match manifest.append(&entry) {
            Ok(()) => remove()?,
            Err(e) if is_out_of_space(&e) => {
                remove()?;
                manifest.append(&entry)?;
            }
            Err(e) => return Err(e),
        }
        self.segs.remove(i);
        self.total -= bytes;
        Ok(Some(bytes))
    }
}

/// ENOSPC or EDQUOT: the file system (or the user's quota) is full.
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletes_oldest_first_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manifest::Writer::open(dir.path(), crate::archive::create_entry).unwrap();
        let mut live = Live::default();
        let old = SystemTime::now() - Duration::from_secs(3600);
        for (i, t) in [(1, old), (2, old), (3, SystemTime::now())] {
            let p = format!("s/{i:06}.pcap.zst");
            std::fs::create_dir_all(dir.path().join("s")).unwrap();
            std::fs::write(dir.path().join(&p), vec![0u8; 100]).unwrap();
            std::fs::write(dir.path().join(crate::archive::sidecar_name(&p)), b"PAR1").unwrap();
            live.add(p, 100, t);
        }
        assert_eq!(
            live.enforce(dir.path(), &mut m, Some(250), None).unwrap(),
            1
        );
        assert!(!dir.path().join("s/000001.pcap.zst").exists());
        assert!(
            !dir.path().join("s/000001.flows.parquet").exists(),
            "the flow index goes with its segment"
        );
        assert!(dir.path().join("s/000003.flows.parquet").exists());
        assert_eq!(
            live.enforce(dir.path(), &mut m, None, Some(Duration::from_secs(60)))
                .unwrap(),
            1
        );
        assert!(!dir.path().join("s/000002.pcap.zst").exists());
        assert_eq!(
            live.enforce(dir.path(), &mut m, Some(1), None).unwrap(),
            0,
            "the newest stays"
        );
        let again = Live::load(dir.path()).unwrap();
        assert_eq!(
            again.segs.len(),
            0,
            "manifest has deletes but no segment lines here"
        );
        let text = std::fs::read_to_string(dir.path().join(manifest::FILE)).unwrap();
        assert_eq!(text.matches("\"op\":\"delete\"").count(), 2);
    }

    #[test]
    fn leaves_files_that_do_not_match_their_entry() {
        use std::os::unix::fs::symlink;
        let t = tempfile::tempdir().unwrap();
        let (dir, out) = (t.path().join("a"), t.path().join("out"));
        std::fs::create_dir_all(dir.join("s")).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        let sentinel = out.join("000001.pcap.zst");
        std::fs::write(&sentinel, vec![1u8; 100]).unwrap();
        let mut m = manifest::Writer::open(&dir, crate::archive::create_entry).unwrap();
        let mut live = Live::default();
        let old = SystemTime::now() - Duration::from_secs(3600);
        // Outside the archive, a link, a file of another size, a good one, the newest.
        live.add("../out/000001.pcap.zst".into(), 100, old);
        symlink(&sentinel, dir.join("s/000002.pcap.zst")).unwrap();
        live.add("s/000002.pcap.zst".into(), 100, old);
        std::fs::write(dir.join("s/000003.pcap.zst"), vec![0u8; 99]).unwrap();
        live.add("s/000003.pcap.zst".into(), 100, old);
        std::fs::write(dir.join("s/000004.pcap.zst"), vec![0u8; 100]).unwrap();
        live.add("s/000004.pcap.zst".into(), 100, old);
        std::fs::write(dir.join("s/000005.pcap.zst"), vec![0u8; 100]).unwrap();
        live.add("s/000005.pcap.zst".into(), 100, SystemTime::now());

        assert_eq!(live.enforce(&dir, &mut m, Some(1), None).unwrap(), 1);
        assert_eq!(live.refused(), 3);
        assert_eq!(std::fs::read(&sentinel).unwrap(), vec![1u8; 100]);
        assert!(dir.join("s/000002.pcap.zst").symlink_metadata().is_ok());
        assert!(dir.join("s/000003.pcap.zst").exists());
        assert!(!dir.join("s/000004.pcap.zst").exists());
        assert!(dir.join("s/000005.pcap.zst").exists(), "the newest stays");
        assert_eq!(live.total_bytes(), 100);
        let text = std::fs::read_to_string(dir.join(manifest::FILE)).unwrap();
        assert_eq!(text.matches("\"op\":\"delete\"").count(), 1);
        assert!(text.contains("s/000004.pcap.zst"));
    }

    #[test]
    fn freeing_space_deletes_oldest_until_enough_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = manifest::Writer::open(dir.path(), crate::archive::create_entry).unwrap();
        let mut live = Live::default();
        std::fs::create_dir_all(dir.path().join("s")).unwrap();
        for i in 1..=4 {
            let p = format!("s/{i:06}.pcap.zst");
            std::fs::write(dir.path().join(&p), vec![0u8; 100 * i]).unwrap();
            live.add(p, 100 * i as u64, SystemTime::now());
        }
        let mut freed = (0, 0);
        live.free_oldest(dir.path(), &mut m, "disk-full", &mut freed, |b| b >= 250)
            .unwrap();
        assert_eq!(freed, (2, 300), "the two oldest: 100 + 200 bytes");
        assert!(!dir.path().join("s/000002.pcap.zst").exists());
        assert!(dir.path().join("s/000003.pcap.zst").exists());
        assert_eq!(live.deletable(), 1);
        live.free_oldest(dir.path(), &mut m, "disk-full", &mut freed, |_| false)
            .unwrap();
        assert_eq!(freed, (3, 600), "never the newest");
        assert!(dir.path().join("s/000004.pcap.zst").exists());
        let lines = manifest::read(dir.path()).unwrap().unwrap();
        let reasons: Vec<_> = lines
            .iter()
            .filter_map(|l| match &l.entry {
                Entry::Delete { reason, .. } => Some(reason.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(reasons, ["disk-full"; 3]);
    }
}
