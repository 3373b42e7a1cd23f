//! A full disk never stops the recorder (issue 10). As root, each test mounts a small tmpfs
//! for the archive and drives `zcap record --listen` over loopback with two concurrent
//! senders:
//!
//! - with `--max-bytes`: more than the tmpfs holds; retention deletes the oldest segments to
//!   make room, the recorder exits 0 after SIGTERM and the archive verifies;
//! - without retention: the disk fills, the recorder pauses with backpressure, the test frees
//!   space (a ballast file), the recorder resumes, and every stream is byte-exact;
//! - `--min-free`: free space never drops below the floor by more than 64 KiB (manifest lines
//!   and the last page of a file, which the floor does not gate).
//!
//! Bounds are generous timeouts only: no timing assertions.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A tmpfs mounted on a fresh directory, unmounted when dropped (also when a test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = common::tempdir();
        common::run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path()),
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a recorder killed by a failing test may still hold files open.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Free bytes on the file system of `p`, as an unprivileged user sees them.
fn free(p: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: statvfs fills the struct; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

struct Recorder {
    child: Child,
    port: u16,
    log: Arc<Mutex<String>>,
    stats: Arc<Mutex<Vec<serde_json::Value>>>,
}

fn start(arch: &Path, extra: &[&str]) -> Recorder {
    let mut child = common::zcap()
        .args(["record", "--listen", "127.0.0.1:0", "--stats-json"])
        .args(["--stats-interval", "100ms", "-o"])
        .arg(arch)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start zcap record");
    let log = Arc::new(Mutex::new(String::new()));
    let stats = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    let l = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("zcap: listening on ") {
                let _ = tx.send(a.rsplit(':').next().unwrap().parse::<u16>().unwrap());
            }
            let mut g = l.lock().unwrap();
            g.push_str(&line);
            g.push('\n');
        }
    });
    let out = child.stdout.take().unwrap();
    let s = Arc::clone(&stats);
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                s.lock().unwrap().push(v);
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("no `listening on` line:\n{}", log.lock().unwrap())
        });
    Recorder {
        child,
        port,
        log,
        stats,
    }
}

impl Recorder {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits (up to `limit`) until `cond(log)` holds, panicking if the recorder exits.
    fn wait_log(&mut self, limit: Duration, what: &str, cond: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + limit;
        while !cond(&self.log()) {
            assert!(
                self.alive(),
                "the recorder exited waiting for {what}:\n{}",
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "no {what} in {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the manifest records `n` stream ends: everything sent was persisted.
    fn wait_stream_ends(&mut self, arch: &Path, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let m = std::fs::read_to_string(arch.join("manifest.jsonl")).unwrap_or_default();
            if m.matches("\"op\":\"stream\"").count() >= n {
                return;
            }
            assert!(self.alive(), "the recorder exited:\n{}", self.log());
            assert!(
                Instant::now() < deadline,
                "streams did not end:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status and the whole log.
    fn term(mut self) -> (ExitStatus, String) {
        // SAFETY: signalling the child we started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100)); // let the log reader finish
                return (s, self.log());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the recorder did not stop after SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replay(file: &Path, to: &str) -> Child {
    common::zcap()
        .arg("replay")
        .arg(file)
        .args(["--to", to, "--topspeed"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start zcap replay")
}

fn finish(senders: Vec<Child>) {
    for mut s in senders {
        let st = s.wait().unwrap();
        assert!(st.success(), "a sender failed: {st}");
    }
}

/// Two distinct captures of about `size` each, with random payloads (they do not compress),
/// written outside the tmpfs.
fn inputs(dir: &Path, size: &str) -> Vec<(PathBuf, Vec<u8>)> {
    (0..2)
        .map(|i| {
            let p = dir.join(format!("in-{i}.pcap"));
            let seed = (11 + i).to_string();
            common::gen(
                &["--bytes", size, "--payload", "random", "--seed", &seed],
                &p,
            );
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

/// Stream name → `zcap cat --stream` of it.
fn streams(arch: &Path) -> Vec<Vec<u8>> {
    let out = common::run_ok(common::zcap().arg("ls").arg(arch).arg("--json"));
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["stream"].as_str().map(String::from))
        .collect();
    names.sort();
    names.dedup();
    names
        .iter()
        .map(|n| common::run_ok(common::zcap().arg("cat").arg(arch).args(["--stream", n])).stdout)
        .collect()
}

fn assert_verifies(arch: &Path, log: &str) {
    let v = common::zcap().arg("verify").arg(arch).output().unwrap();
    assert!(
        v.status.success(),
        "zcap verify:\n{}\n{}\nrecorder:\n{log}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
}

fn deletes(arch: &Path, reason: &str) -> usize {
    std::fs::read_to_string(arch.join("manifest.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| {
            l.contains("\"op\":\"delete\"") && l.contains(&format!("\"reason\":\"{reason}\""))
        })
        .count()
}

fn ready() -> bool {
    common::need_root() && common::need_tool("python3")
}

#[test]
fn with_max_bytes_a_full_disk_deletes_the_oldest_and_recording_goes_on() {
    if !ready() {
        return;
    }
    let t = common::tempdir();
    let fs = Tmpfs::mount("24m");
    // Ballast: 18 MiB free is less than --max-bytes 20MiB, so the disk fills before the
    // budget does, whatever the interleaving.
    std::fs::write(fs.path().join("ballast"), vec![7u8; 6 << 20]).unwrap();
    let arch = fs.path().join("arch");
    let ins = inputs(t.path(), "16M");
    let mut rec = start(
        &arch,
        &[
            "--max-bytes",
            "20MiB",
            "-C",
            "2MiB",
            "--frame-size",
            "256KiB",
        ],
    );
    finish(ins.iter().map(|(p, _)| replay(p, &rec.addr())).collect());
    rec.wait_stream_ends(&arch, 2);
    assert!(rec.alive());
    let (st, log) = rec.term();
    assert!(st.success(), "exit 0 after SIGTERM: {st}\n{log}");
    assert!(
        log.contains("zcap: disk full on ") && log.contains("oldest segment(s)"),
        "the deletions are logged:\n{log}"
    );
    assert!(deletes(&arch, "disk-full") > 0, "{log}");
    assert!(log.contains("disk full "), "the summary counts it:\n{log}");
    assert_verifies(&arch, &log);
    // The ring buffer kept each stream's newest records, intact and in order.
    let got = streams(&arch);
    assert_eq!(got.len(), 2, "{log}");
    for g in &got {
        assert!(g.len() > 24, "each stream keeps its newest segment");
        assert!(
            ins.iter()
                .any(|(_, b)| b[..24] == g[..24] && b.ends_with(&g[24..])),
            "a recorded stream is not the tail of an input\n{log}"
        );
    }
    let kept: usize = got.iter().map(Vec::len).sum();
    let sent: usize = ins.iter().map(|(_, b)| b.len()).sum();
    assert!(
        kept < sent,
        "the oldest were deleted: kept {kept} of {sent}"
    );
}

#[test]
fn without_retention_a_full_disk_pauses_with_backpressure_and_loses_nothing() {
    if !ready() {
        return;
    }
    let t = common::tempdir();
    let fs = Tmpfs::mount("48m");
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![7u8; 40 << 20]).unwrap();
    let arch = fs.path().join("arch");
    // 2 × 20 MiB into about 8 MiB of room, through a 2 MiB receive area.
    let ins = inputs(t.path(), "20M");
    let mut rec = start(
        &arch,
        &[
            "-C",
            "4MiB",
            "--frame-size",
            "256KiB",
            "--compress",
            "none",
            "--area-size",
            "2MiB",
            "--buf-size",
            "64KiB",
        ],
    );
    let senders: Vec<Child> = ins.iter().map(|(p, _)| replay(p, &rec.addr())).collect();
    rec.wait_log(Duration::from_secs(120), "a DISK FULL line", |l| {
        l.contains("zcap: DISK FULL: ")
    });
    let log = rec.log();
    assert!(
        log.contains("No space left on device") && log.contains("senders are slowed"),
        "the fault says what and what to do:\n{log}"
    );
    // Paused, not dead, and holding the receive area: that is the backpressure.
    let t0 = rec.stats.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let full = rec.stats.lock().unwrap()[t0..].iter().any(|v| {
            v["area_in_use"].as_u64().unwrap_or(0) * 2 >= v["area_size"].as_u64().unwrap_or(1)
        });
        if full {
            break;
        }
        assert!(rec.alive(), "{}", rec.log());
        assert!(
            Instant::now() < deadline,
            "the area did not fill:\n{}",
            rec.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(rec.alive(), "the recorder keeps running:\n{}", rec.log());
    let seen = rec.log().len();
    std::fs::remove_file(&ballast).unwrap();
    rec.wait_log(Duration::from_secs(60), "the resume line", |l| {
        l[seen..].contains(" is back after ")
    });
    finish(senders);
    rec.wait_stream_ends(&arch, 2);
    let (st, log) = rec.term();
    assert!(st.success(), "exit 0 after SIGTERM: {st}\n{log}");
    assert_verifies(&arch, &log);
    let mut got = streams(&arch);
    let mut want: Vec<Vec<u8>> = ins.into_iter().map(|(_, b)| b).collect();
    got.sort();
    want.sort();
    assert_eq!(got.len(), 2, "{log}");
    for (g, w) in got.iter().zip(&want) {
        assert!(
            g == w,
            "recorded {} bytes of {}: first difference at {:?}\n{log}",
            g.len(),
            w.len(),
            g.iter().zip(w).position(|(a, b)| a != b)
        );
    }
    assert!(
        log.contains("; disk full "),
        "the summary counts the fault:\n{log}"
    );
}

#[test]
fn min_free_keeps_the_floor_by_deleting_the_oldest() {
    if !ready() {
        return;
    }
    let t = common::tempdir();
    let fs = Tmpfs::mount("24m");
    let arch = fs.path().join("arch");
    const FLOOR: u64 = 8 << 20;
    const SLACK: u64 = 64 << 10;
    let ins = inputs(t.path(), "16M");
    // Sample free space while the recorder runs.
    let low = Arc::new(AtomicU64::new(u64::MAX));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (low, done, dir) = (Arc::clone(&low), Arc::clone(&done), fs.path().to_path_buf());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                low.fetch_min(free(&dir), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let mut rec = start(
        &arch,
        &[
            "--min-free",
            "8MiB",
            "--max-bytes",
            "1GiB",
            "-C",
            "2MiB",
            "--frame-size",
            "128KiB",
        ],
    );
    finish(ins.iter().map(|(p, _)| replay(p, &rec.addr())).collect());
    rec.wait_stream_ends(&arch, 2);
    let (st, log) = rec.term();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert!(st.success(), "{st}\n{log}");
    let low = low.load(Ordering::Relaxed);
    eprintln!("lowest free space seen: {low} bytes; floor {FLOOR}");
    assert!(
        low + SLACK >= FLOOR,
        "free space fell to {low} bytes, more than {SLACK} below the floor {FLOOR}\n{log}"
    );
    assert!(
        deletes(&arch, "min-free") > 0,
        "the floor made room:\n{log}"
    );
    assert_verifies(&arch, &log);
}

#[test]
fn a_segment_larger_than_the_budget_is_refused_at_start() {
    let t = common::tempdir();
    let out = common::zcap()
        .args([
            "record",
            "-C",
            "256MiB",
            "--max-bytes",
            "100MiB",
            "-r",
            "-",
            "-o",
        ])
        .arg(t.path().join("a"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("-C 256.0 MiB is not smaller than --max-bytes 100.0 MiB"),
        "{err}"
    );
}

#[test]
fn sigterm_while_the_disk_stays_full_ends_the_recorder_and_says_what_was_lost() {
    if !ready() {
        return;
    }
    let t = common::tempdir();
    let fs = Tmpfs::mount("24m");
    std::fs::write(fs.path().join("ballast"), vec![7u8; 16 << 20]).unwrap();
    let arch = fs.path().join("arch");
    let ins = inputs(t.path(), "12M");
    let mut rec = start(
        &arch,
        &["-C", "4MiB", "--frame-size", "256KiB", "--compress", "none"],
    );
    let senders: Vec<Child> = ins.iter().map(|(p, _)| replay(p, &rec.addr())).collect();
    rec.wait_log(Duration::from_secs(120), "a DISK FULL line", |l| {
        l.contains("zcap: DISK FULL: ")
    });
    let (st, log) = rec.term();
    for mut s in senders {
        let _ = s.kill();
        let _ = s.wait();
    }
    assert_eq!(st.code(), Some(2), "non-zero when data was lost:\n{log}");
    assert!(
        log.contains("stayed full through the shutdown") && log.contains("could not be written"),
        "says what could not be written:\n{log}"
    );
    // What was written is kept: repair records it, then the archive verifies.
    common::run_ok(common::zcap().arg("verify").arg("--repair").arg(&arch));
    assert_verifies(&arch, &log);
    let kept: usize = streams(&arch).iter().map(Vec::len).sum();
    assert!(kept > 0, "{log}");
}
