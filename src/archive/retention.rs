//! Retention: the archive as a ring buffer. `--max-bytes` and `--max-age` delete the oldest
//! finalized segments first (finalization order), never the newest one, and record each
//! deletion in the manifest.

use super::manifest::{self, Entry};
use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The finalized, not yet deleted segments, oldest first.
#[derive(Debug, Default)]
pub struct Live {
    segs: VecDeque<(String, u64, SystemTime)>,
    total: u64,
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
                    let t = humantime::parse_rfc3339(&s.time).unwrap_or(SystemTime::UNIX_EPOCH);
                    live.add(s.path, s.bytes, t);
                }
                Entry::Delete { path, .. } => live.remove(&path),
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

    /// Deletes oldest segments until the limits hold (keeping the newest), logging each in
    /// the manifest. Returns how many were deleted.
    pub fn enforce(
        &mut self,
        dir: &Path,
        manifest: &mut manifest::Writer,
        max_bytes: Option<u64>,
        max_age: Option<Duration>,
    ) -> io::Result<u64> {
        let now = SystemTime::now();
        let mut deleted = 0;
        while self.segs.len() > 1 {
            let time = self.segs.front().expect("non-empty").2;
            let reason = if max_bytes.is_some_and(|m| self.total > m) {
                "max-bytes"
            } else if max_age.is_some_and(|a| now.duration_since(time).unwrap_or_default() > a) {
                "max-age"
            } else {
                break;
            };
            self.delete_oldest(dir, manifest, reason)?;
            deleted += 1;
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
            let bytes = self.delete_oldest(dir, manifest, reason)?;
            freed.0 += 1;
            freed.1 += bytes;
        }
        Ok(())
    }

    /// Finalized segments that retention could delete now (all but the newest).
    pub fn deletable(&self) -> usize {
        self.segs.len().saturating_sub(1)
    }

    /// Deletes the oldest segment: records the deletion in the manifest, then removes the
    /// file. Returns the segment's size.
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
    ) -> io::Result<u64> {
        let (path, bytes, _) = self.segs.front().cloned().expect("a segment to delete");
        let entry = Entry::Delete {
            path: path.clone(),
            reason: reason.into(),
        };
        let remove = || match std::fs::remove_file(dir.join(&path)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("deleting {}: {e}", dir.join(&path).display()),
            )),
        };
        match manifest.append(&entry) {
            Ok(()) => remove()?,
            Err(e) if is_out_of_space(&e) => {
                remove()?;
                manifest.append(&entry)?;
            }
            Err(e) => return Err(e),
        }
        self.segs.pop_front();
        self.total -= bytes;
        Ok(bytes)
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
            live.add(p, 100, t);
        }
        assert_eq!(
            live.enforce(dir.path(), &mut m, Some(250), None).unwrap(),
            1
        );
        assert!(!dir.path().join("s/000001.pcap.zst").exists());
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
