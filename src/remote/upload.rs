//! The uploader: copies a local archive to its remote one, on a thread of its own, so the
//! receive path never waits for the network (docs/ARCHIVE.md, "Object storage").
//!
//! It follows the local manifest. Segments go up in manifest order, each after its
//! finalization (its SHA-256 is known): a whole PUT up to `--upload-part-size`, a multipart
//! upload above. The bytes read for the upload must hash to the manifest's SHA-256; the store
//! checks each request's Content-MD5; the object's ETag and size are then checked against
//! the MD5s of what was sent (or, for a store whose ETags are not MD5s, the object is read
//! back and hashed). Only then is the segment *confirmed*: journaled in `DIR/.uploads` and
//! handed to retention, which may evict its local copy. The remote manifest is the longest
//! prefix of the local one whose segments are all confirmed, so a reader never sees a line
//! naming an object that is not there.
//!
//! A store that is down (or refusing) makes the uploader retry with back-off while the
//! local disk buffers the archive; it says loudly when uploads stop and when they resume. A
//! multipart upload is journaled before its first part: one cut short by a crash is aborted
//! on the next start, then the segment is uploaded again whole. Uploads are idempotent
//! (same key, same bytes), so nothing is duplicated.

use super::{etag_is_md5, expected_etag, Client, Kind, RemoteError, S3Url, Settings};
use crate::archive::manifest::{self, Entry, SegmentEntry};
use crate::archive::retention::{Books, Offload};
use crate::archive::sidecar_name;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// An object to upload: a segment, or the flow-index sidecar a `flows` line names (its
/// path derived from its segment's). Segments and sidecars go up alike, in manifest order.
struct Object {
    path: String,
    bytes: u64,
    sha256: String,
    /// The segment whose path was checked, for a sidecar.
    of_segment: Option<String>,
}

impl Object {
    fn of(entry: &Entry) -> Option<Object> {
        match entry {
            Entry::Segment(s) => Some(Object {
                path: s.path.clone(),
                bytes: s.bytes,
                sha256: s.sha256.clone(),
                of_segment: None,
            }),
            Entry::Flows(f) => Some(Object {
                path: sidecar_name(&f.segment),
                bytes: f.bytes,
                sha256: f.sha256.clone(),
                of_segment: Some(f.segment.clone()),
            }),
            _ => None,
        }
    }

    /// The segment this object is or belongs to.
    fn segment(&self) -> &str {
        self.of_segment.as_deref().unwrap_or(&self.path)
    }
}

/// The journal of uploads, beside the manifest.
pub const JOURNAL: &str = ".uploads";
/// Back-off between attempts while the store fails: doubling from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A part uploaded: its MD5 and the ETag the store gave it.
type PartDone = ([u8; 16], String);

/// Parts of one multipart upload sent at once (each holds a part-sized buffer).
const PARTS_IN_FLIGHT: usize = 4;
/// How often the manifest is looked at for new lines when nothing wakes the uploader.
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct Config {
    pub url: S3Url,
    pub settings: Settings,
    /// Objects larger than this go up in parts of this size (S3 wants at least 5 MiB).
    pub part_size: u64,
    /// Delete remote segments older than this (by finalization time), never the newest.
    pub remote_max_age: Option<Duration>,
    /// After [`Uploader::finish`], how long a failing store is retried before the uploader
    /// gives up (uploads that progress go on to the end).
    pub drain: Duration,
}

/// Live counters (the stats line, metrics).
#[derive(Debug, Default)]
pub struct UploadStats {
    pub segments: AtomicU64,
    pub bytes: AtomicU64,
    /// Segments in the local manifest not confirmed yet.
    pub queued: AtomicU64,
    /// Failed attempts (each retried).
    pub failures: AtomicU64,
    /// Finalization time (Unix seconds) of the oldest segment not uploaded yet; 0: none.
    pub oldest_pending: AtomicU64,
    pub remote_deleted: AtomicU64,
}

/// What [`Uploader::finish`] reports.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub uploaded: u64,
    pub bytes: u64,
    /// Segments still not uploaded when the uploader stopped.
    pub left: u64,
    /// The last failure, if the store was failing at the end.
    pub error: Option<String>,
    /// Segments that could not be uploaded at all (local copy gone or changed).
    pub lost: u64,
}

struct Ctl {
    finishing: AtomicBool,
    /// Set by the thread when it stops.
    finishing_done: AtomicBool,
    wake: (Mutex<bool>, Condvar),
}

impl Ctl {
    fn wake(&self) {
        *self.wake.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.1.notify_all();
    }

    fn sleep(&self, d: Duration) {
        let g = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
        let (mut g, _) = self
            .wake
            .1
            .wait_timeout_while(g, d, |woken| !*woken)
            .unwrap_or_else(|p| p.into_inner());
        *g = false;
    }
}

/// The uploader thread of one archive.
pub struct Uploader {
    thread: std::thread::JoinHandle<Summary>,
    ctl: Arc<Ctl>,
    pub stats: Arc<UploadStats>,
}

impl Uploader {
    /// Starts uploading the archive at `dir` (its manifest must exist). `offload` is shared
    /// with retention; `books` is how remote retention records its deletions and how a
    /// confirmed upload lets retention run.
    pub fn start(
        dir: &Path,
        cfg: Config,
        offload: Arc<Offload>,
        books: Arc<dyn Books>,
    ) -> anyhow::Result<Uploader> {
        let client = Client::new(&cfg.url, &cfg.settings).map_err(anyhow::Error::msg)?;
        let journal = Journal::open(dir, &cfg.url.to_string())?;
        let ctl = Arc::new(Ctl {
            finishing: AtomicBool::new(false),
            finishing_done: AtomicBool::new(false),
            wake: (Mutex::new(false), Condvar::new()),
        });
        let stats = Arc::new(UploadStats::default());
        let mut job = Job {
            dir: dir.to_path_buf(),
            cfg,
            client,
            journal,
            offload,
            books,
            stats: Arc::clone(&stats),
            ctl: Arc::clone(&ctl),
            listed: false,
            uploaded_manifest: None,
            failing: None,
            lost: HashSet::new(),
            listing: None,
            idle: None,
        };
        let thread = std::thread::Builder::new()
            .name("zcap-upload".into())
            .spawn(move || {
                let s = job.run();
                job.ctl.finishing_done.store(true, Ordering::Relaxed);
                s
            })?;
        Ok(Uploader { thread, ctl, stats })
    }

    /// Asks the uploader to look at the manifest now.
    pub fn wake(&self) {
        self.ctl.wake();
    }

    /// Uploads what is left (for at most the configured drain time) and stops.
    pub fn finish(self) -> Summary {
        let queued = self.stats.queued.load(Ordering::Relaxed);
        if queued > 0 {
            eprintln!("zcap: upload: finishing: {queued} segment(s) still to upload");
        }
        self.ctl.finishing.store(true, Ordering::Relaxed);
        self.ctl.wake();
        self.thread.join().unwrap_or_else(|_| Summary {
            error: Some("the uploader thread panicked".into()),
            ..Summary::default()
        })
    }
}

/// The uploads journal (`DIR/.uploads`, JSON lines): what is confirmed in which remote
/// archive, and multipart uploads begun and not yet ended. Lines for another URL are kept
/// and ignored.
struct Journal {
    file: std::fs::File,
    url: String,
    /// Confirmed segments: path → (size, ETag).
    confirmed: HashMap<String, (u64, String)>,
    /// Multipart uploads begun and not ended: (path, upload id).
    open: Vec<(String, String)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct JournalLine {
    url: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    confirmed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    begin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    end: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    upload_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    removed: Option<String>,
}

impl JournalLine {
    fn new(url: &str) -> JournalLine {
        JournalLine {
            url: url.into(),
            confirmed: None,
            bytes: None,
            etag: None,
            begin: None,
            end: None,
            upload_id: None,
            removed: None,
        }
    }
}

impl Journal {
    fn open(dir: &Path, url: &str) -> anyhow::Result<Journal> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(JOURNAL);
        let named = |e: io::Error| anyhow::anyhow!("{}: {e}", path.display());
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(named(e)),
        };
        let mut j = Journal {
            file: std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(named)?,
            url: url.into(),
            confirmed: HashMap::new(),
            open: Vec::new(),
        };
        // A torn last line (a crash mid-append) is ignored: what it would have said is
        // found out again.
        for l in text.lines() {
            let Ok(l) = serde_json::from_str::<JournalLine>(l) else {
                continue;
            };
            if l.url != url {
                continue;
            }
            if let (Some(p), Some(b), Some(e)) = (l.confirmed, l.bytes, l.etag) {
                j.confirmed.insert(p, (b, e));
            } else if let (Some(p), Some(id)) = (l.begin, l.upload_id.clone()) {
                j.open.push((p, id));
            } else if let (Some(_), Some(id)) = (l.end, l.upload_id) {
                j.open.retain(|(_, i)| *i != id);
            } else if let Some(p) = l.removed {
                j.confirmed.remove(&p);
            }
        }
        Ok(j)
    }

    fn append(&mut self, l: &JournalLine) -> io::Result<()> {
        let mut text = serde_json::to_string(l).map_err(io::Error::other)?;
        text.push('\n');
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()
    }

    fn confirm(&mut self, path: &str, size: u64, etag: &str) -> io::Result<()> {
        let mut l = JournalLine::new(&self.url);
        l.confirmed = Some(path.into());
        l.bytes = Some(size);
        l.etag = Some(etag.into());
        self.append(&l)?;
        self.confirmed.insert(path.into(), (size, etag.into()));
        Ok(())
    }

    fn begin(&mut self, path: &str, id: &str) -> io::Result<()> {
        let mut l = JournalLine::new(&self.url);
        l.begin = Some(path.into());
        l.upload_id = Some(id.into());
        self.append(&l)?;
        self.open.push((path.into(), id.into()));
        Ok(())
    }

    fn end(&mut self, path: &str, id: &str) -> io::Result<()> {
        let mut l = JournalLine::new(&self.url);
        l.end = Some(path.into());
        l.upload_id = Some(id.into());
        self.append(&l)?;
        self.open.retain(|(_, i)| i != id);
        Ok(())
    }

    fn removed(&mut self, path: &str) -> io::Result<()> {
        let mut l = JournalLine::new(&self.url);
        l.removed = Some(path.into());
        self.append(&l)?;
        self.confirmed.remove(path);
        Ok(())
    }
}

/// Why one step failed: the store (retry later) or the local copy (nothing to retry).
enum Failure {
    Store(RemoteError),
    Local(String),
}

impl From<RemoteError> for Failure {
    fn from(e: RemoteError) -> Failure {
        Failure::Store(e)
    }
}

fn local(e: impl std::fmt::Display) -> Failure {
    Failure::Local(e.to_string())
}

/// One manifest line as the uploader needs it.
struct Line {
    /// Byte offset just past the line's newline.
    end: usize,
    entry: Entry,
}

/// The complete lines of the local manifest (a torn last line is left for later).
fn manifest_lines(text: &str) -> Vec<Line> {
    let mut out = Vec::new();
    let mut at = 0;
    for raw in text.split_inclusive('\n') {
        if !raw.ends_with('\n') {
            break;
        }
        at += raw.len();
        match serde_json::from_str::<Entry>(raw.trim_end()) {
            Ok(entry) => out.push(Line { end: at, entry }),
            // Unreadable: stop here; `verify` says what is wrong with it.
            Err(_) => break,
        }
    }
    out
}

struct Job {
    dir: PathBuf,
    cfg: Config,
    client: Client,
    journal: Journal,
    offload: Arc<Offload>,
    books: Arc<dyn Books>,
    stats: Arc<UploadStats>,
    ctl: Arc<Ctl>,
    /// The journal was checked against a listing of the bucket.
    listed: bool,
    /// Length of the manifest prefix uploaded last.
    uploaded_manifest: Option<usize>,
    /// The failure uploads are stuck on, and since when.
    failing: Option<(String, Instant)>,
    /// Segments that cannot be uploaded (their local copy is gone or changed), reported once.
    lost: HashSet<String>,
    /// The bucket's objects as listed at the first pass, until each is looked at.
    listing: Option<HashMap<String, (u64, String)>>,
    /// The manifest's length when a pass last found everything up to date, and when.
    idle: Option<(u64, Instant)>,
}

impl Job {
    fn run(&mut self) -> Summary {
        let mut backoff = BACKOFF_FIRST;
        let mut failing_since: Option<Instant> = None;
        loop {
            let finishing = self.ctl.finishing.load(Ordering::Relaxed);
            match self.pass() {
                Ok(done) => {
                    if self.failing.take().is_some() {
                        eprintln!(
                            "zcap: upload: {} answers again; uploads resume",
                            self.cfg.url
                        );
                    }
                    failing_since = None;
                    backoff = BACKOFF_FIRST;
                    if done && finishing {
                        break;
                    }
                    if done {
                        self.ctl.sleep(POLL);
                    }
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    let msg = e.to_string();
                    let new = self
                        .failing
                        .as_ref()
                        .is_none_or(|(m, at)| *m != msg || at.elapsed() > Duration::from_secs(60));
                    if new {
                        eprintln!(
                            "zcap: upload: WARNING: {msg}; the local archive keeps everything, retrying{}",
                            if e.transient() { "" } else { " (fix the cause: this will not go away by itself)" }
                        );
                        self.failing = Some((msg, Instant::now()));
                    }
                    // Once asked to finish, give a failing store `drain` more time.
                    if finishing && since.elapsed() >= self.cfg.drain {
                        break;
                    }
                    self.ctl.sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        let left = self.stats.queued.load(Ordering::Relaxed);
        let error = self.failing.as_ref().map(|(m, _)| m.clone());
        if left > 0 {
            eprintln!(
                "zcap: upload: WARNING: {left} segment(s) of {} are not uploaded to {} yet{}; they are safe there: `zcap upload {} {}` finishes the job",
                self.dir.display(),
                self.cfg.url,
                error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default(),
                self.dir.display(),
                self.cfg.url
            );
        }
        Summary {
            uploaded: self.stats.segments.load(Ordering::Relaxed),
            bytes: self.stats.bytes.load(Ordering::Relaxed),
            left,
            error,
            lost: self.lost.len() as u64,
        }
    }

    /// One look at the manifest: uploads what is due, in order, then the manifest prefix,
    /// then applies remote retention. Ok(true) when everything is up to date.
    fn pass(&mut self) -> Result<bool, RemoteError> {
        if !self.listed {
            self.reconcile()?;
            self.listed = true;
        }
        // Up to date, and the manifest has not grown since: nothing to read again (remote
        // retention, which is about time, still looks once a second).
        let len = std::fs::metadata(self.dir.join(manifest::FILE)).map(|m| m.len());
        if let (Some((done_len, at)), Ok(len)) = (self.idle, &len) {
            let retention_due =
                self.cfg.remote_max_age.is_some() && at.elapsed() >= Duration::from_secs(1);
            if done_len == *len && !retention_due {
                return Ok(true);
            }
        }
        self.idle = None;
        let text = match manifest::read_text(&self.dir) {
            Ok(t) => t,
            Err(e) => {
                return Err(RemoteError {
                    kind: Kind::Refused,
                    msg: format!("reading {}: {e}", self.dir.join(manifest::FILE).display()),
                })
            }
        };
        let lines = manifest_lines(&text);
        let deleted: HashSet<&str> = lines
            .iter()
            .filter_map(|l| match &l.entry {
                Entry::Delete { path, .. } => Some(path.as_str()),
                _ => None,
            })
            .collect();
        let evicted: HashSet<&str> = lines
            .iter()
            .filter_map(|l| match &l.entry {
                Entry::Evict { path, .. } => Some(path.as_str()),
                _ => None,
            })
            .collect();
        // Upload in manifest order; the manifest prefix ends before the first segment
        // that is not up yet.
        let mut prefix = 0;
        let mut blocked = false;
        let mut queued = 0u64;
        let mut result = Ok(());
        let up = |j: &Journal, lost: &HashSet<String>, p: &str| {
            j.confirmed.contains_key(p) || deleted.contains(p) || lost.contains(p)
        };
        // What is left to do, counted down as segments go up (progress, metrics).
        let due = |j: &Journal, lost: &HashSet<String>, o: &Object| {
            !up(j, lost, &o.path) && !deleted.contains(o.segment())
        };
        let todo = lines
            .iter()
            .filter_map(|l| Object::of(&l.entry))
            .filter(|o| due(&self.journal, &self.lost, o))
            .count() as u64;
        self.stats.queued.store(todo, Ordering::Relaxed);
        // Upload lag: when the oldest segment not up yet was finalized.
        let oldest = lines.iter().find_map(|l| match &l.entry {
            Entry::Segment(s) if !up(&self.journal, &self.lost, &s.path) => {
                humantime::parse_rfc3339(&s.time).ok()
            }
            _ => None,
        });
        self.stats.oldest_pending.store(
            oldest
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
            Ordering::Relaxed,
        );
        for l in &lines {
            if let Some(s) = Object::of(&l.entry) {
                if due(&self.journal, &self.lost, &s) {
                    if blocked || result.is_err() {
                        queued += 1;
                        blocked = true;
                        continue;
                    }
                    // A sidecar outlives its evicted segment until its own upload.
                    let gone = evicted.contains(s.segment())
                        && !(s.of_segment.is_some() && self.dir.join(&s.path).exists());
                    match self.upload_segment(&s, gone) {
                        Ok(()) => {
                            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                        }
                        Err(Failure::Local(why)) => {
                            eprintln!(
                                "zcap: upload: ERROR: {} cannot be uploaded: {why}; the remote archive will lack it as the local one does (`zcap verify {}` says more)",
                                s.path,
                                self.dir.display()
                            );
                            self.lost.insert(s.path.clone());
                        }
                        Err(Failure::Store(e)) => {
                            queued += 1;
                            blocked = true;
                            result = Err(e);
                            continue;
                        }
                    }
                    if let Err(e) = self.books.enforce() {
                        eprintln!("zcap: upload: retention after an upload: {e}");
                    }
                }
            }
            if !blocked {
                prefix = l.end;
            }
        }
        self.stats.queued.store(queued, Ordering::Relaxed);
        if self.uploaded_manifest != Some(prefix) && prefix > 0 {
            self.client
                .put(manifest::FILE, &text.as_bytes()[..prefix])?;
            self.uploaded_manifest = Some(prefix);
        }
        // Objects whose deletion the uploaded manifest records can go now.
        let covered = &lines[..lines.iter().take_while(|l| l.end <= prefix).count()];
        for l in covered {
            if let Entry::Delete { path, .. } = &l.entry {
                if self.journal.confirmed.contains_key(path) {
                    self.client.delete(path)?;
                    self.journal
                        .removed(path)
                        .map_err(|e| self.journal_err(e))?;
                    self.offload.forget(path);
                    self.stats.remote_deleted.fetch_add(1, Ordering::Relaxed);
                }
                // Its flow index goes with it.
                let sidecar = sidecar_name(path);
                if self.journal.confirmed.contains_key(&sidecar) {
                    self.client.delete(&sidecar)?;
                    self.journal
                        .removed(&sidecar)
                        .map_err(|e| self.journal_err(e))?;
                }
            }
        }
        result?;
        self.remote_retention(covered, &deleted);
        // Lines appended meanwhile (evictions after these uploads, new segments) make
        // another pass due at once.
        let grown = std::fs::metadata(self.dir.join(manifest::FILE))
            .map(|m| m.len() as usize != text.len())
            .unwrap_or(false);
        let done = !grown && !blocked && prefix == lines.last().map_or(0, |l| l.end);
        if done {
            self.idle = Some((text.len() as u64, Instant::now()));
        }
        Ok(done)
    }

    fn journal_err(&self, e: io::Error) -> RemoteError {
        RemoteError {
            kind: Kind::Refused,
            msg: format!("writing {}: {e}", self.dir.join(JOURNAL).display()),
        }
    }

    /// `--remote-max-age`: records the deletion of remote segments older than the limit
    /// (never the newest); the objects go once a manifest holding those lines is up.
    fn remote_retention(&mut self, covered: &[Line], deleted: &HashSet<&str>) {
        let Some(max) = self.cfg.remote_max_age else {
            return;
        };
        let live: Vec<&SegmentEntry> = covered
            .iter()
            .filter_map(|l| match &l.entry {
                Entry::Segment(s) if !deleted.contains(s.path.as_str()) => Some(s),
                _ => None,
            })
            .filter(|s| self.journal.confirmed.contains_key(&s.path))
            .collect();
        let now = SystemTime::now();
        for s in live.iter().take(live.len().saturating_sub(1)) {
            let t = humantime::parse_rfc3339(&s.time).unwrap_or(SystemTime::UNIX_EPOCH);
            if now.duration_since(t).unwrap_or_default() <= max {
                break;
            }
            if let Err(e) = self.books.remote_delete(&s.path) {
                eprintln!(
                    "zcap: upload: recording the remote deletion of {}: {e}",
                    s.path
                );
                return;
            }
        }
    }

    /// At the first pass: aborts multipart uploads a crash cut short, and checks what the
    /// journal says is confirmed against the bucket itself.
    fn reconcile(&mut self) -> Result<(), RemoteError> {
        self.client.probe()?;
        for (path, id) in self.journal.open.clone() {
            self.client.abort_multipart(&path, &id)?;
            self.journal
                .end(&path, &id)
                .map_err(|e| self.journal_err(e))?;
            eprintln!(
                "zcap: upload: aborted the multipart upload of {path} that an earlier run left unfinished; it is uploaded again"
            );
        }
        let listing: HashMap<String, (u64, String)> = self
            .client
            .list()?
            .into_iter()
            .map(|o| (o.rel, (o.size, o.etag)))
            .collect();
        let mut gone = Vec::new();
        for (path, (size, etag)) in &self.journal.confirmed {
            match listing.get(path) {
                Some((s, e)) if s == size && self.etag(path, e)? == *etag => {
                    self.offload.confirm(path)
                }
                Some(_) => gone.push((path.clone(), "was rewritten behind zcap's back")),
                None => gone.push((
                    path.clone(),
                    "is gone from the bucket (deleted behind zcap's back?)",
                )),
            }
        }
        for (path, why) in gone {
            eprintln!(
                "zcap: upload: WARNING: {} {why}: uploading it again if the local copy is still there",
                self.client.show(&path)
            );
            self.journal.confirmed.remove(&path);
        }
        // Segments up already though the journal does not say so (its file was lost, or
        // `zcap upload` runs again): confirmed without a second upload when their ETag is
        // what this copy would get.
        self.listing = Some(listing);
        Ok(())
    }

    /// The ETag a listing gave, or a HEAD's when the listing gave none (some stores omit it).
    fn etag(&self, rel: &str, listed: &str) -> Result<String, RemoteError> {
        if !listed.is_empty() {
            return Ok(listed.to_string());
        }
        Ok(self.client.head(rel)?.map(|o| o.etag).unwrap_or_default())
    }

    /// Uploads one finalized segment and confirms it (see the module's documentation).
    fn upload_segment(&mut self, s: &Object, evicted: bool) -> Result<(), Failure> {
        use std::io::{Seek, SeekFrom};
        if evicted {
            // Evicted only after a confirmed upload: with the journal lost, the bucket's
            // object of the right size is taken as that upload (`verify s3://…` checks its
            // SHA-256); without one there is nothing left to upload.
            let listed = self.listing.as_mut().and_then(|l| l.remove(&s.path));
            return match listed {
                Some((size, etag)) if size == s.bytes => {
                    let etag = self.etag(&s.path, &etag)?;
                    self.confirmed(&s.path, size, &etag)
                }
                _ => Err(local(
                    "its local copy was evicted after an upload, and the bucket does not hold it",
                )),
            };
        }
        let seg = crate::archive::checked_path(&self.dir, s.segment()).map_err(local)?;
        let path = match &s.of_segment {
            None => seg,
            Some(_) => self.dir.join(&s.path),
        };
        let mut f = match crate::archive::path::open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(local("its local file is gone"))
            }
            Err(e) => return Err(local(format!("{}: {e}", path.display()))),
        };
        let size = f.metadata().map_err(local)?.len();
        if size != s.bytes {
            return Err(local(format!(
                "its local file has {size} bytes, its manifest line says {}: it changed after it was finalized",
                s.bytes
            )));
        }
        let part = self.cfg.part_size.max(1);
        let multipart = size > part;
        let changed = || {
            local("its local file no longer has the SHA-256 its manifest line records: it changed after it was finalized")
        };
        // Up already (an earlier run whose journal is lost, or `zcap upload` again)?
        if let Some((osize, oetag)) = self.listing.as_mut().and_then(|l| l.remove(&s.path)) {
            let oetag = if osize == size {
                self.etag(&s.path, &oetag)?
            } else {
                oetag
            };
            if osize == size && etag_is_md5(&oetag) {
                let (sha, md5s) = digest(&mut f, part).map_err(local)?;
                if sha != s.sha256 {
                    return Err(changed());
                }
                if oetag == expected_etag(&md5s, multipart) {
                    return self.confirmed(&s.path, size, &oetag);
                }
                f.seek(SeekFrom::Start(0)).map_err(local)?;
            }
        }
        let mut sha = Sha256::new();
        let mut md5s: Vec<[u8; 16]> = Vec::new();
        let mut buf = Vec::new();
        let etag = if !multipart {
            buf.resize(size as usize, 0);
            f.read_exact(&mut buf).map_err(local)?;
            sha.update(&buf);
            if manifest::hex(&sha.finalize()) != s.sha256 {
                return Err(changed());
            }
            let m = super::md5(&buf);
            md5s.push(m);
            self.client.put_md5(&s.path, &buf, &m)?
        } else {
            let id = self.client.create_multipart(&s.path)?;
            self.journal
                .begin(&s.path, &id)
                .map_err(|e| Failure::Store(self.journal_err(e)))?;
            let done = self.parts(&mut f, s, &id, size, &mut sha, &mut md5s, &mut buf);
            let done = done.and_then(|etags| {
                if manifest::hex(&sha.finalize()) != s.sha256 {
                    return Err(changed());
                }
                Ok(self.client.complete_multipart(&s.path, &id, &etags)?)
            });
            match done {
                Ok(etag) => {
                    self.journal
                        .end(&s.path, &id)
                        .map_err(|e| Failure::Store(self.journal_err(e)))?;
                    etag
                }
                Err(e) => {
                    // Best effort; a failed abort stays in the journal for the next start.
                    if self.client.abort_multipart(&s.path, &id).is_ok() {
                        let _ = self.journal.end(&s.path, &id);
                    }
                    return Err(e);
                }
            }
        };
        let want = expected_etag(&md5s, multipart);
        let mismatch = |what: String| {
            Failure::Store(RemoteError {
                kind: Kind::Checksum,
                msg: format!(
                    "{}: checksum mismatch after upload: {what}",
                    self.client.show(&s.path)
                ),
            })
        };
        if etag_is_md5(&etag) && etag != want {
            return Err(mismatch(format!(
                "the store's ETag {etag} is not the MD5 of what was sent ({want})"
            )));
        }
        // The object as the store now holds it.
        let Some(head) = self.client.head(&s.path)? else {
            return Err(mismatch(
                "the object is not there right after its upload".into(),
            ));
        };
        if head.size != size {
            return Err(mismatch(format!(
                "the object has {} bytes, {size} were sent",
                head.size
            )));
        }
        if etag_is_md5(&head.etag) {
            if head.etag != want {
                return Err(mismatch(format!(
                    "its ETag is {}, the MD5 of what was sent is {want}",
                    head.etag
                )));
            }
        } else {
            // ETags that are not MD5s (SSE-KMS): read the object back and hash it.
            let mut h = Sha256::new(); // sha2's hashers are `io::Write`
            self.client.get_to(&s.path, &mut h)?;
            let got = manifest::hex(&h.finalize());
            if got != s.sha256 {
                return Err(mismatch(format!(
                    "read back, it has SHA-256 {got}, the manifest records {}",
                    s.sha256
                )));
            }
        }
        self.stats.bytes.fetch_add(size, Ordering::Relaxed);
        if s.of_segment.is_none() {
            self.stats.segments.fetch_add(1, Ordering::Relaxed);
        }
        self.confirmed(&s.path, size, &head.etag)?;
        if s.of_segment.is_some() && !self.dir.join(s.segment()).exists() {
            // Its segment was evicted while this went up: the sidecar follows it.
            let _ = std::fs::remove_file(&path);
        }
        Ok(())
    }

    /// Journals a confirmed segment and tells retention.
    fn confirmed(&mut self, path: &str, size: u64, etag: &str) -> Result<(), Failure> {
        self.journal
            .confirm(path, size, etag)
            .map_err(|e| Failure::Store(self.journal_err(e)))?;
        self.offload.confirm(path);
        Ok(())
    }

    /// Uploads the parts of a multipart upload, [`PARTS_IN_FLIGHT`] at a time: this thread
    /// reads the file in order (and hashes it), workers take each part's MD5, send it and
    /// check the store's ETag. Returns the parts' ETags in order.
    #[allow(clippy::too_many_arguments)]
    fn parts(
        &self,
        f: &mut std::fs::File,
        s: &Object,
        id: &str,
        size: u64,
        sha: &mut Sha256,
        md5s: &mut Vec<[u8; 16]>,
        buf: &mut Vec<u8>,
    ) -> Result<Vec<String>, Failure> {
        use std::sync::mpsc::{channel, sync_channel};
        let part = self.cfg.part_size;
        let count = size.div_ceil(part);
        if count > u16::MAX as u64 {
            return Err(local("more than 65535 parts: raise --upload-part-size"));
        }
        let client = &self.client;
        let done: Mutex<Vec<Option<PartDone>>> = Mutex::new(vec![None; count as usize]);
        let failed: Mutex<Option<Failure>> = Mutex::new(None);
        let stop = AtomicBool::new(false);
        // Buffers go round: PARTS_IN_FLIGHT + 1 of them bound the memory.
        let (free_tx, free_rx) = channel::<Vec<u8>>();
        free_tx.send(std::mem::take(buf)).expect("receiver alive");
        for _ in 0..PARTS_IN_FLIGHT {
            free_tx.send(Vec::new()).expect("receiver alive");
        }
        let (work_tx, work_rx) = sync_channel::<(u16, Vec<u8>)>(0);
        let work_rx = Mutex::new(work_rx);
        let fail = |e: Failure| {
            stop.store(true, Ordering::Relaxed);
            failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(e);
        };
        std::thread::scope(|scope| {
            for _ in 0..PARTS_IN_FLIGHT.min(count as usize) {
                let (work_rx, free_tx, done, fail, stop) =
                    (&work_rx, free_tx.clone(), &done, &fail, &stop);
                scope.spawn(move || loop {
                    let next = work_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok((n, body)) = next else { break };
                    if !stop.load(Ordering::Relaxed) {
                        let m = super::md5(&body);
                        match client.upload_part(&s.path, id, n, &body, &m) {
                            Ok(etag) if etag_is_md5(&etag) && etag != manifest::hex(&m) => {
                                fail(Failure::Store(RemoteError {
                                    kind: Kind::Checksum,
                                    msg: format!(
                                        "{} part {n}: checksum mismatch: the store's ETag {etag} is not the MD5 of what was sent",
                                        client.show(&s.path)
                                    ),
                                }))
                            }
                            Ok(etag) => {
                                done.lock().unwrap_or_else(|p| p.into_inner())[n as usize - 1] =
                                    Some((m, etag))
                            }
                            Err(e) => fail(e.into()),
                        }
                    }
                    let _ = free_tx.send(body);
                });
            }
            let mut left = size;
            for n in 1..=count as u16 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut b = free_rx.recv().expect("a worker keeps a sender");
                let len = left.min(part);
                b.resize(len as usize, 0);
                if let Err(e) = f.read_exact(&mut b) {
                    fail(local(e));
                    break;
                }
                sha.update(&b);
                left -= len;
                if work_tx.send((n, b)).is_err() {
                    break;
                }
            }
            drop(work_tx);
        });
        if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        let mut etags = Vec::with_capacity(count as usize);
        for (m, etag) in done
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .into_iter()
            .flatten()
        {
            md5s.push(m);
            etags.push(etag);
        }
        if etags.len() as u64 != count {
            return Err(local("a part was not uploaded"));
        }
        Ok(etags)
    }
}

/// SHA-256 of a whole file and the MD5s of its parts of `part` bytes.
fn digest(f: &mut std::fs::File, part: u64) -> io::Result<(String, Vec<[u8; 16]>)> {
    let mut sha = Sha256::new();
    let mut md5s = Vec::new();
    let mut buf = vec![0u8; part.min(16 << 20) as usize];
    let mut m = md5::Md5::default();
    let mut in_part = 0u64;
    loop {
        let want = ((part - in_part) as usize).min(buf.len());
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        md5::Digest::update(&mut m, &buf[..n]);
        in_part += n as u64;
        if in_part == part {
            md5s.push(md5::Digest::finalize_reset(&mut m).into());
            in_part = 0;
        }
    }
    if in_part > 0 || md5s.is_empty() {
        md5s.push(md5::Digest::finalize(m).into());
    }
    Ok((manifest::hex(&sha.finalize()), md5s))
}

/// The books of an archive no recorder is writing, for `zcap upload`: its own manifest
/// writer and retention list, under the archive lock.
struct LocalBooks {
    dir: PathBuf,
    inner: Mutex<(manifest::Writer, crate::archive::retention::Live)>,
}

impl Books for LocalBooks {
    fn enforce(&self) -> io::Result<()> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (m, live) = &mut *g;
        live.enforce(&self.dir, m, None, None).map(|_| ())
    }

    fn remote_delete(&self, path: &str) -> io::Result<()> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (m, live) = &mut *g;
        live.delete_remote(&self.dir, m, path)
    }
}

/// What `zcap upload DIR URL` does.
#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub cfg: Config,
    pub keep_bytes: Option<u64>,
    pub keep_age: Option<Duration>,
    pub sign: Option<crate::archive::sign::Signer>,
}

/// `zcap upload`: uploads everything the archive's manifest names that is not up yet,
/// reporting progress every few seconds, and returns once the remote manifest matches the
/// local one (Ok(false) when the store kept failing or a segment could not be uploaded).
pub fn run(o: &Options) -> anyhow::Result<bool> {
    let dir = &o.dir;
    let _lock = crate::archive::lock_offline(
        dir,
        &format!(": give the recorder `--upload {}` instead", o.cfg.url),
    )?;
    let manifest =
        manifest::Writer::open_signed(dir, crate::archive::create_entry, o.sign.clone())?;
    let mut live = crate::archive::retention::Live::load(dir)?;
    let offload = Arc::new(Offload::new(
        o.cfg.url.to_string(),
        o.keep_bytes,
        o.keep_age,
    ));
    live.offload = Some(Arc::clone(&offload));
    let books = Arc::new(LocalBooks {
        dir: dir.clone(),
        inner: Mutex::new((manifest, live)),
    });
    let started = Instant::now();
    let up = Uploader::start(dir, o.cfg.clone(), offload, books)?;
    let stats = Arc::clone(&up.stats);
    let ctl = Arc::clone(&up.ctl);
    ctl.finishing.store(true, Ordering::Relaxed);
    let progress = {
        let stats = Arc::clone(&stats);
        let url = o.cfg.url.to_string();
        std::thread::spawn(move || {
            let mut last = Instant::now();
            while !ctl.finishing_done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() >= Duration::from_secs(5) {
                    last = Instant::now();
                    eprintln!(
                        "zcap: upload: {} segment(s), {} to {url} so far, {} to go",
                        stats.segments.load(Ordering::Relaxed),
                        crate::units::human_bytes(stats.bytes.load(Ordering::Relaxed)),
                        stats.queued.load(Ordering::Relaxed)
                    );
                }
            }
        })
    };
    let s = up.finish();
    let _ = progress.join();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "zcap: upload: {} segment(s), {} uploaded to {} in {secs:.1} s ({:.1} MB/s){}",
        s.uploaded,
        crate::units::human_bytes(s.bytes),
        o.cfg.url,
        s.bytes as f64 / secs.max(1e-9) / 1e6,
        if s.left == 0 {
            "; the remote manifest is up to date"
        } else {
            ""
        }
    );
    Ok(s.left == 0 && s.lost == 0)
}
