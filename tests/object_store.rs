//! Archives on object storage, against a real S3-compatible server: s3s-fs (crates.io; it
//! checks SigV4 signatures, Content-MD5 and S3's part-size rules), which `.ci/run` installs
//! with `cargo install` and every test here starts on loopback with its own root. Nothing
//! here mocks S3.
//!
//! - `record --upload`, then `ls`/`cat`/`verify`/`replay` of the bucket equal the local
//!   archive's; a 1% window fetches at most its frames plus 2 (the `bytes fetched` counter);
//! - the server stops mid-run: recording goes on, `--keep-local 0` keeps what is not
//!   confirmed, uploads resume when it is back, nothing is lost or duplicated;
//! - kill -9 in the middle of a multipart upload: the bucket stays consistent, and the next
//!   run aborts the cut upload and finishes;
//! - an object rewritten or deleted in the bucket fails `verify s3://…`, naming it;
//! - `--remote-max-age` deletes old remote segments and records it;
//! - wrong credentials, a missing bucket and a dead endpoint are errors in words.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "zcaptestkey";
const SECRET: &str = "zcaptestsecret";
const BUCKET: &str = "zcap-test";

/// An s3s-fs server on 127.0.0.1 with its own root directory and one bucket.
struct Server {
    bin: PathBuf,
    root: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Server {
    fn start(bin: PathBuf) -> Server {
        let root = tempdir();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let mut s = Server {
            bin,
            root,
            port: free_port(),
            child: None,
        };
        s.resume();
        s
    }

    /// (Re)starts the server on its port and root.
    fn resume(&mut self) {
        let child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", KEY, "--secret-key", SECRET])
            .arg(self.root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The file s3s-fs keeps an object in.
    fn object_file(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }

    /// Multipart uploads s3s-fs holds open. It has no ListMultipartUploads; it keeps one
    /// `.upload-ID.json` record per upload in its root until the upload completes or is
    /// aborted (the `.upload_id-ID.part-N` files beside it are the parts received so far).
    fn open_uploads(&self) -> usize {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                let name = name.to_string_lossy();
                name.starts_with(".upload-") && name.ends_with(".json")
            })
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// zcap with the test server's credentials.
fn zcap_s3() -> Command {
    let mut c = zcap();
    c.env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT_URL");
    c
}

fn url(prefix: &str) -> String {
    format!("s3://{BUCKET}/{prefix}")
}

fn out(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run zcap")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A frame entry of a segment's index trailer (docs/ARCHIVE.md).
#[derive(Debug, Clone, Copy)]
struct Frame {
    comp: u64,
    min: i64,
    max: i64,
}

/// The header frame length, trailer length and frames of a local segment file.
fn trailer(path: &Path) -> (u64, u64, Vec<Frame>) {
    let b = std::fs::read(path).unwrap();
    let n = b.len();
    assert_eq!(&b[n - 8..], b"ZCAPEND1");
    let plen = u32::from_le_bytes(b[n - 12..n - 8].try_into().unwrap()) as usize;
    let t = &b[n - plen - 8..];
    let u32_at = |o: usize| u32::from_le_bytes(t[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(t[o..o + 8].try_into().unwrap());
    let frames = (0..u32_at(28) as usize)
        .map(|i| {
            let o = 40 + 40 * i;
            Frame {
                comp: u32_at(o + 8) as u64,
                min: u64_at(o + 16) as i64,
                max: u64_at(o + 24) as i64,
            }
        })
        .collect();
    (u32_at(20) as u64, plen as u64 + 8, frames)
}

/// Local segment files of an archive, by manifest order.
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let m = std::fs::read_to_string(dir.join("manifest.jsonl")).unwrap();
    m.lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["op"] == "segment").then(|| dir.join(v["path"].as_str().unwrap()))
        })
        .collect()
}

/// The flow-index sidecars the manifest's `flows` lines name (beside their segments).
fn sidecar_files(dir: &Path) -> Vec<PathBuf> {
    let m = std::fs::read_to_string(dir.join("manifest.jsonl")).unwrap();
    m.lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let seg = v["segment"].as_str()?;
            (v["op"] == "flows").then(|| {
                let (stream, file) = seg.split_once('/').unwrap();
                let seq = file.split('.').next().unwrap();
                dir.join(format!("{stream}/{seq}.flows.parquet"))
            })
        })
        .collect()
}

fn stat(stderr: &str, name: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no `{name}` in:\n{stderr}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn an_uploaded_archive_reads_the_same_from_the_bucket() {
    let Some(bin) = need_s3s_fs() else { return };
    let s = Server::start(bin);
    let t = tempdir();
    let pcap = t.path().join("in.pcap");
    // ~600 frames of 8 KiB over 16 segments: a 1% window is a few frames.
    gen(&["--bytes", "5M", "--rate", "2000", "--seed", "5"], &pcap);
    let dir = t.path().join("a");
    let o = out(zcap_s3()
        .args(["record", "-r"])
        .arg(&pcap)
        .arg("-o")
        .arg(&dir)
        .args(["-C", "320KiB", "--frame-size", "8KiB"])
        .args(["--upload", &url("rec"), "--s3-endpoint", &s.endpoint()]));
    let log = text(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("the remote manifest is up to date"), "{log}");
    assert_eq!(
        std::fs::read(dir.join("manifest.jsonl")).unwrap(),
        std::fs::read(s.object_file("rec/manifest.jsonl")).unwrap(),
        "the remote manifest is the local one"
    );
    // Every segment's flow index went up beside it.
    let sidecars = sidecar_files(&dir);
    assert_eq!(sidecars.len(), segment_files(&dir).len());
    for p in &sidecars {
        let rel = p.strip_prefix(&dir).unwrap().to_str().unwrap();
        assert_eq!(
            std::fs::read(p).unwrap(),
            std::fs::read(s.object_file(&format!("rec/{rel}"))).unwrap(),
            "{rel}"
        );
    }
    let local = dir.to_str().unwrap().to_string();
    let remote = url("rec");
    let ep = s.endpoint();
    let both = |args: &[&str]| -> (Output, Output) {
        let l = out(zcap_s3().args(args).arg(&local));
        let r = out(zcap_s3()
            .args(args)
            .arg(&remote)
            .args(["--s3-endpoint", &ep]));
        (l, r)
    };
    for args in [&["ls"][..], &["ls", "--json"], &["cat"]] {
        let (l, r) = both(args);
        assert!(
            l.status.success() && r.status.success(),
            "{args:?}: {}",
            text(&r.stderr)
        );
        assert!(
            l.stdout == r.stdout,
            "{args:?}: the bucket reads differently"
        );
    }
    let (l, r) = both(&["verify"]);
    assert!(
        l.status.success() && r.status.success(),
        "{}",
        text(&r.stdout)
    );
    // Identical but for the last line, which names the archive.
    let report = |o: &Output, name: &str| text(&o.stdout).replace(name, "ARCHIVE");
    assert_eq!(report(&l, &local), report(&r, &remote));

    // A 1% window: the frames overlapping it, plus at most 2 frames' worth, plus each
    // touched segment's trailer and header frame, plus the manifest.
    let segs = segment_files(&dir);
    assert!(segs.len() >= 10, "{} segments", segs.len());
    let all: Vec<(u64, u64, Vec<Frame>)> = segs.iter().map(|p| trailer(p)).collect();
    let frames: usize = all.iter().map(|s| s.2.len()).sum();
    assert!(frames >= 200, "{frames} frames");
    let lo = all.iter().flat_map(|s| &s.2).map(|f| f.min).min().unwrap();
    let hi = all.iter().flat_map(|s| &s.2).map(|f| f.max).max().unwrap();
    let from = lo + (hi - lo) / 2;
    let to = from + (hi - lo) / 100;
    let mut want = std::fs::metadata(dir.join("manifest.jsonl")).unwrap().len();
    let mut overlapping = 0;
    let biggest = all.iter().flat_map(|s| &s.2).map(|f| f.comp).max().unwrap();
    for (head, tlen, fr) in &all {
        let hit: Vec<&Frame> = fr.iter().filter(|f| f.max >= from && f.min <= to).collect();
        if !hit.is_empty() {
            want += head + tlen + hit.iter().map(|f| f.comp).sum::<u64>();
            overlapping += hit.len();
        }
    }
    assert!(
        overlapping > 0 && overlapping * 50 < frames,
        "{overlapping} of {frames}"
    );
    let window = |loc: &str| {
        let mut c = zcap_s3();
        c.args(["cat", loc, "--stats"])
            .args(["--from", &format!("{}", from as f64 / 1e9)])
            .args(["--to", &format!("{}", to as f64 / 1e9)])
            .args(["--s3-endpoint", &ep]);
        out(&mut c)
    };
    let (l, r) = (window(&local), window(&remote));
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(
        !l.stdout.is_empty() && l.stdout == r.stdout,
        "the window reads differently"
    );
    let fetched = stat(&text(&r.stderr), "bytes fetched");
    assert!(
        fetched <= want + 2 * biggest,
        "fetched {fetched} bytes for {overlapping} overlapping frames; at most {} allowed",
        want + 2 * biggest
    );

    // replay from the bucket sends what cat gives.
    let rx = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = rx.local_addr().unwrap().port();
    let reader = std::thread::spawn(move || {
        let (mut c, _) = rx.accept().unwrap();
        let mut v = Vec::new();
        c.read_to_end(&mut v).unwrap();
        v
    });
    run_ok(
        zcap_s3()
            .args(["replay", &remote, "--to", &format!("127.0.0.1:{port}")])
            .args(["--s3-endpoint", &ep]),
    );
    let whole = out(zcap_s3().arg("cat").arg(&local)).stdout;
    assert!(
        reader.join().unwrap() == whole,
        "replay from the bucket differs"
    );
}

/// Segments the upload journal confirms (sidecars are journaled too: not counted).
fn journal_confirmed(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join(".uploads"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"confirmed\"") && !l.contains(".flows.parquet"))
        .count()
}

#[test]
fn a_store_that_goes_away_stalls_nothing_and_loses_nothing() {
    let Some(bin) = need_s3s_fs() else { return };
    let mut s = Server::start(bin);
    let t = tempdir();
    let pcap_path = t.path().join("in.pcap");
    gen(&["--bytes", "3M", "--seed", "9"], &pcap_path);
    let pcap = std::fs::read(&pcap_path).unwrap();
    let dir = t.path().join("a");
    let mut rec = zcap_s3()
        .args(["record", "-r", "-", "--stream-name", "s", "-o"])
        .arg(&dir)
        .args(["-C", "128KiB", "--frame-size", "16KiB", "--keep-local", "0"])
        .args(["--max-bytes", "512KiB"])
        .args(["--upload", &url("down"), "--s3-endpoint", &s.endpoint()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = rec.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::BufReader::new(err).read_to_string(&mut s);
        s
    });
    let third = pcap.len() / 3;
    // A third with the store up, a third with it down, the rest with it back.
    let mut stdin = rec.stdin.take().unwrap();
    stdin.write_all(&pcap[..third]).unwrap();
    stdin.flush().unwrap();
    wait_until("first uploads", Duration::from_secs(60), || {
        journal_confirmed(&dir) >= 2
    });
    s.stop();
    let before = journal_confirmed(&dir);
    for c in pcap[third..2 * third].chunks(64 << 10) {
        stdin.write_all(c).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    // Recording went on: segments were finalized locally while nothing could be confirmed,
    // and --keep-local 0 kept every one of them.
    let finalized = || {
        std::fs::read_to_string(dir.join("manifest.jsonl"))
            .unwrap()
            .matches("\"op\":\"segment\"")
            .count()
    };
    wait_until(
        "segments while the store is down",
        Duration::from_secs(60),
        || finalized() >= before + 4,
    );
    let confirmed_while_down = journal_confirmed(&dir);
    let evicted = std::fs::read_to_string(dir.join("manifest.jsonl"))
        .unwrap()
        .matches("\"op\":\"evict\"")
        .count();
    assert!(
        evicted <= confirmed_while_down,
        "an unconfirmed segment was evicted"
    );
    let local_files = std::fs::read_dir(dir.join("s"))
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".partial")
        })
        .count();
    assert!(
        local_files >= finalized() - confirmed_while_down,
        "{local_files} local segment files, {} finalized, {confirmed_while_down} confirmed",
        finalized()
    );
    s.resume();
    stdin.write_all(&pcap[2 * third..]).unwrap();
    drop(stdin);
    let status = rec.wait().unwrap();
    let log = log.join().unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("cannot reach the object store"), "{log}");
    assert!(log.contains("uploads resume"), "{log}");
    assert!(log.contains("the remote manifest is up to date"), "{log}");
    // --max-bytes could not be kept while the store was away, and said so.
    assert!(log.contains("is over --max-bytes but"), "{log}");
    // Everything is in the bucket exactly once, and the local copy kept nothing.
    let remote = out(zcap_s3().args(["cat", &url("down"), "--s3-endpoint", &s.endpoint()])).stdout;
    assert!(
        remote == pcap,
        "the bucket does not hold the stream byte for byte"
    );
    let v = out(zcap_s3().args(["verify", &url("down"), "--s3-endpoint", &s.endpoint()]));
    assert!(v.status.success(), "{}", text(&v.stdout));
    let v = out(zcap().arg("verify").arg(&dir));
    assert!(v.status.success(), "{}", text(&v.stdout));
    let left: Vec<_> = std::fs::read_dir(dir.join("s")).unwrap().collect();
    assert!(
        left.is_empty(),
        "--keep-local 0 left {} file(s)",
        left.len()
    );
    // The local listing says where the segments went.
    let ls = text(&out(zcap().arg("ls").arg(&dir)).stdout);
    assert!(ls.contains(&format!("evicted: in {}", url("down"))), "{ls}");
    assert!(ls.contains("more evicted after upload"), "{ls}");
}

/// A TCP relay to the server, standing in for the network: it stops forwarding requests
/// once `limit` bytes went up, until released (a link gone slow, to kill a recorder in the
/// middle of an upload), and can flip one byte at upstream offset `flip` (counted over all
/// connections), once (a link that corrupts).
struct Relay {
    port: u16,
    up: Arc<AtomicU64>,
    release: Arc<AtomicBool>,
}

#[derive(Clone)]
struct Gate {
    up: Arc<AtomicU64>,
    release: Arc<AtomicBool>,
    limit: u64,
    flip: Option<u64>,
}

impl Relay {
    fn start(to: u16, limit: u64, flip: Option<u64>) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let gate = Gate {
            up: Arc::new(AtomicU64::new(0)),
            release: Arc::new(AtomicBool::new(false)),
            limit,
            flip,
        };
        let (up, release) = (Arc::clone(&gate.up), Arc::clone(&gate.release));
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { break };
                let Ok(s) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let (c2, s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
                let g = gate.clone();
                std::thread::spawn(move || pipe(c, s, Some(g)));
                std::thread::spawn(move || pipe(s2, c2, None));
            }
        });
        Relay { port, up, release }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, gate: Option<Gate>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(g) = &gate {
            while g.up.load(Ordering::Relaxed) >= g.limit && !g.release.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let at = g.up.fetch_add(n as u64, Ordering::Relaxed);
            if let Some(f) = g.flip {
                if (at..at + n as u64).contains(&f) {
                    buf[(f - at) as usize] ^= 0x01;
                }
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

#[test]
fn bytes_corrupted_on_the_way_are_caught_and_sent_again() {
    let Some(bin) = need_s3s_fs() else { return };
    let s = Server::start(bin);
    let t = tempdir();
    // A whole PUT (the store checks its Content-MD5) and a multipart upload (zcap checks
    // each part's ETag), each corrupted once in transit.
    let small = t.path().join("small");
    run_ok(
        zcap()
            .args(["record", "-r"])
            .arg(fixture("demo.pcap"))
            .arg("-o")
            .arg(&small)
            .args(["-C", "64KiB", "--frame-size", "8KiB"]),
    );
    let pcap = t.path().join("big.pcap");
    gen(
        &["--bytes", "13M", "--payload", "random", "--seed", "2"],
        &pcap,
    );
    let big = t.path().join("big");
    run_ok(
        zcap()
            .args(["record", "-r"])
            .arg(&pcap)
            .arg("-o")
            .arg(&big)
            .args(["-C", "12MiB"]),
    );
    for (dir, prefix, flip, said) in [
        (
            &small,
            "flip-put",
            32 << 10,
            "received other bytes than were sent",
        ),
        (&big, "flip-part", 1 << 20, "checksum mismatch"),
    ] {
        let relay = Relay::start(s.port, u64::MAX, Some(flip));
        let o = out(zcap_s3().arg("upload").arg(dir).arg(url(prefix)).args([
            "--s3-endpoint",
            &relay.endpoint(),
            "--upload-part-size",
            "5MiB",
        ]));
        let log = text(&o.stderr);
        assert!(o.status.success(), "{log}");
        assert!(
            log.contains(said),
            "{prefix}: the corruption went unnoticed:\n{log}"
        );
        assert!(log.contains("uploads resume"), "{log}");
        assert!(relay.up.load(Ordering::Relaxed) > flip);
        let v = out(zcap_s3().args(["verify", &url(prefix), "--s3-endpoint", &s.endpoint()]));
        assert!(v.status.success(), "{prefix}: {}", text(&v.stdout));
        assert_eq!(
            s.open_uploads(),
            0,
            "the corrupted multipart upload was aborted"
        );
    }
}

#[test]
fn kill_9_in_the_middle_of_a_multipart_upload_leaves_the_bucket_consistent() {
    let Some(bin) = need_s3s_fs() else { return };
    if !need_tool("kill") {
        return;
    }
    let s = Server::start(bin);
    let t = tempdir();
    let pcap = t.path().join("in.pcap");
    // Random payloads: a 12 MiB segment stays 12 MiB, three 5 MiB parts.
    gen(
        &["--bytes", "14M", "--payload", "random", "--seed", "4"],
        &pcap,
    );
    let dir = t.path().join("a");
    // A first segment goes up whole; the second stalls after its first part.
    let throttle = Relay::start(s.port, 9 << 20, None);
    let mut rec = zcap_s3()
        .args(["record", "-r"])
        .arg(&pcap)
        .arg("-o")
        .arg(&dir)
        .args(["-C", "12MiB", "--upload-part-size", "5MiB"])
        .args(["--upload", &url("cut")])
        .args([
            "--s3-endpoint",
            &format!("http://127.0.0.1:{}", throttle.port),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(
        "a multipart upload in flight",
        Duration::from_secs(120),
        || {
            let j = std::fs::read_to_string(dir.join(".uploads")).unwrap_or_default();
            j.contains("\"begin\"") && throttle.up.load(Ordering::Relaxed) >= 9 << 20
        },
    );
    run_ok(Command::new("kill").args(["-9", &rec.id().to_string()]));
    let _ = rec.wait();
    throttle.release.store(true, Ordering::Relaxed);
    assert_eq!(s.open_uploads(), 1, "the cut upload is open in the store");
    // Whatever the bucket's manifest names is there and intact.
    let v = out(zcap_s3().args(["verify", &url("cut"), "--s3-endpoint", &s.endpoint()]));
    let report = text(&v.stdout);
    assert!(
        v.status.success() || report.contains("no manifest.jsonl"),
        "{report}{}",
        text(&v.stderr)
    );
    // Recover the local archive, then finish the upload.
    run_ok(zcap().args(["verify", "--repair"]).arg(&dir));
    let o = out(zcap_s3().arg("upload").arg(&dir).arg(url("cut")).args([
        "--s3-endpoint",
        &s.endpoint(),
        "--upload-part-size",
        "5MiB",
    ]));
    let log = text(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("aborted the multipart upload"), "{log}");
    assert_eq!(s.open_uploads(), 0, "the cut upload was aborted");
    assert_eq!(
        std::fs::read(dir.join("manifest.jsonl")).unwrap(),
        std::fs::read(s.object_file("cut/manifest.jsonl")).unwrap()
    );
    let v = out(zcap_s3().args(["verify", &url("cut"), "--s3-endpoint", &s.endpoint()]));
    assert!(v.status.success(), "{}", text(&v.stdout));
    let local = out(zcap().arg("cat").arg(&dir)).stdout;
    let remote = out(zcap_s3().args(["cat", &url("cut"), "--s3-endpoint", &s.endpoint()])).stdout;
    assert!(!local.is_empty() && local == remote);
    // A second `zcap upload` finds everything there and uploads nothing again.
    let o = out(zcap_s3().arg("upload").arg(&dir).arg(url("cut")).args([
        "--s3-endpoint",
        &s.endpoint(),
        "--upload-part-size",
        "5MiB",
    ]));
    assert!(
        text(&o.stderr).contains("upload: 0 segment(s)"),
        "{}",
        text(&o.stderr)
    );
}

/// Records the demo capture and uploads it with `zcap upload`; returns the archive dir.
fn uploaded(s: &Server, t: &Path, prefix: &str, extra: &[&str]) -> PathBuf {
    let dir = t.join(prefix);
    run_ok(
        zcap()
            .args(["record", "-r"])
            .arg(fixture("demo.pcap"))
            .arg("-o")
            .arg(&dir)
            .args(["-C", "64KiB", "--frame-size", "8KiB"]),
    );
    run_ok(
        zcap_s3()
            .arg("upload")
            .arg(&dir)
            .arg(url(prefix))
            .args(["--s3-endpoint", &s.endpoint()])
            .args(extra),
    );
    dir
}

#[test]
fn verify_names_an_object_rewritten_or_deleted_in_the_bucket() {
    let Some(bin) = need_s3s_fs() else { return };
    let s = Server::start(bin);
    let t = tempdir();
    let dir = uploaded(&s, t.path(), "tamper", &[]);
    let segs = segment_files(&dir);
    let rel = |p: &Path| p.strip_prefix(&dir).unwrap().to_str().unwrap().to_string();
    let (a, b) = (rel(&segs[0]), rel(&segs[1]));
    // Rewrite one object through S3 itself (same size, one byte changed) and delete another.
    // The client takes its credentials from the environment, as zcap does.
    std::env::set_var("AWS_ACCESS_KEY_ID", KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
    let client = zcap::remote::Client::new(
        &zcap::remote::S3Url::parse(&url("tamper")).unwrap(),
        &zcap::remote::Settings {
            endpoint: Some(s.endpoint()),
        },
    )
    .unwrap();
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    bytes[40] ^= 0x55;
    client.put(&a, &bytes).unwrap();
    client.delete(&b).unwrap();
    let v = out(zcap_s3().args(["verify", &url("tamper"), "--s3-endpoint", &s.endpoint()]));
    let report = text(&v.stdout);
    assert_eq!(v.status.code(), Some(1), "{report}");
    assert!(
        report.contains(&format!("DAMAGE: {a}: SHA-256")),
        "the rewritten object is not named:\n{report}"
    );
    assert!(
        report.contains(&format!("DAMAGE: {b}: missing from the bucket")),
        "the deleted object is not named:\n{report}"
    );
    // cat stops at the first bad object and names it.
    let c = out(zcap_s3().args(["cat", &url("tamper"), "--s3-endpoint", &s.endpoint()]));
    assert!(!c.status.success());
    let shown = format!("{}/{a}", url("tamper"));
    assert!(text(&c.stderr).contains(&shown), "{}", text(&c.stderr));
}

#[test]
fn remote_max_age_deletes_old_remote_segments_and_records_it() {
    let Some(bin) = need_s3s_fs() else { return };
    let s = Server::start(bin);
    let t = tempdir();
    let dir = uploaded(&s, t.path(), "aged", &[]);
    let n = segment_files(&dir).len();
    assert!(n >= 3);
    // Every segment is older than a second now; the newest is kept.
    std::thread::sleep(Duration::from_millis(1200));
    run_ok(zcap_s3().arg("upload").arg(&dir).arg(url("aged")).args([
        "--s3-endpoint",
        &s.endpoint(),
        "--remote-max-age",
        "1s",
    ]));
    let m = std::fs::read_to_string(dir.join("manifest.jsonl")).unwrap();
    assert_eq!(
        m.matches("\"reason\":\"remote-max-age\"").count(),
        n - 1,
        "{m}"
    );
    assert_eq!(
        m,
        std::fs::read_to_string(s.object_file("aged/manifest.jsonl")).unwrap()
    );
    let segs = segment_files(&dir);
    let sidecars = sidecar_files(&dir);
    assert_eq!(sidecars.len(), n);
    for p in segs[..n - 1].iter().chain(&sidecars[..n - 1]) {
        let rel = p.strip_prefix(&dir).unwrap().to_str().unwrap();
        assert!(
            !s.object_file(&format!("aged/{rel}")).exists(),
            "{rel} is still in the bucket"
        );
        assert!(!p.exists(), "{rel} is still on the local disk");
    }
    let newest = sidecars[n - 1]
        .strip_prefix(&dir)
        .unwrap()
        .to_str()
        .unwrap();
    assert!(s.object_file(&format!("aged/{newest}")).exists());
    for loc in [dir.to_str().unwrap().to_string(), url("aged")] {
        let v = out(zcap_s3().args(["verify", &loc, "--s3-endpoint", &s.endpoint()]));
        assert!(v.status.success(), "{loc}: {}", text(&v.stdout));
    }
    let ls =
        text(&out(zcap_s3().args(["ls", &url("aged"), "--s3-endpoint", &s.endpoint()])).stdout);
    assert!(ls.contains("total: 1 segment(s)"), "{ls}");
}

#[test]
fn store_errors_are_said_in_words() {
    let Some(bin) = need_s3s_fs() else { return };
    let s = Server::start(bin);
    let t = tempdir();
    uploaded(&s, t.path(), "words", &[]);
    let ls = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = zcap_s3();
        c.args(["ls"]).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let o = out(&mut c);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
        text(&o.stderr)
    };
    let ep = s.endpoint();
    let e = ls(
        &[&url("words"), "--s3-endpoint", &ep],
        &[("AWS_SECRET_ACCESS_KEY", "wrong")],
    );
    assert!(e.contains("refused the credentials"), "{e}");
    let e = ls(&["s3://no-such-bucket/x", "--s3-endpoint", &ep], &[]);
    assert!(e.contains("bucket `no-such-bucket` does not exist"), "{e}");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let e = ls(&[&url("words"), "--s3-endpoint", &dead], &[]);
    assert!(e.contains("cannot reach the object store"), "{e}");
    // The endpoint from the environment, as every S3 tool takes it.
    let e = ls(&[&url("nothing-here")], &[("AWS_ENDPOINT_URL", &ep)]);
    assert!(
        e.contains("not a zcap archive, or nothing has been uploaded"),
        "{e}"
    );
}

#[test]
fn a_lost_journal_is_rebuilt_from_the_bucket_without_uploading_twice() {
    let Some(bin) = need_s3s_fs() else { return };
    let s = Server::start(bin);
    let t = tempdir();
    // Everything evicted after upload, then the journal is lost with nothing else.
    let dir = uploaded(&s, t.path(), "journal", &["--keep-local", "0"]);
    assert!(segment_files(&dir).iter().all(|p| !p.exists()));
    std::fs::remove_file(dir.join(".uploads")).unwrap();
    let o = out(zcap_s3()
        .arg("upload")
        .arg(&dir)
        .arg(url("journal"))
        .args(["--s3-endpoint", &s.endpoint()]));
    let log = text(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("upload: 0 segment(s)"), "{log}");
    assert!(!log.contains("cannot be uploaded"), "{log}");
    let v = out(zcap_s3().args(["verify", &url("journal"), "--s3-endpoint", &s.endpoint()]));
    assert!(v.status.success(), "{}", text(&v.stdout));
}
