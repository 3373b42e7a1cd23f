//! Live capture (`zcap record -i IF`, AF_PACKET TPACKET_V3) on a veth pair between two
//! network namespaces the test creates: frames sent from the far end with a raw packet
//! socket must come back from the archive byte for byte, in order per capture thread, read
//! by tcpdump from every segment, with drops counted when the ring is too small. Needs root
//! (skips with a reason off CI) and `ip`.

mod common;

use common::{need_root, need_tool, run_ok, tempdir, zcap};
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Marks the test's frames among whatever else the kernel puts on the wire.
const MAGIC: &[u8; 8] = b"ZCAPTEST";
const MTU: usize = 9000;

/// Two network namespaces joined by a veth pair (MTU 9000, IPv6 off so the kernel sends no
/// router solicitations); removed on drop.
struct Veth {
    near_ns: String,
    far_ns: String,
    near: String,
    far: String,
}

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args));
}

impl Veth {
    fn new() -> Veth {
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let v = Veth {
            near_ns: format!("zcap-rec-{id}"),
            far_ns: format!("zcap-snd-{id}"),
            near: format!("zr{id}"),
            far: format!("zs{id}"),
        };
        ip(&["netns", "add", &v.near_ns]);
        ip(&["netns", "add", &v.far_ns]);
        ip(&[
            "link", "add", &v.near, "mtu", "9000", "type", "veth", "peer", "name", &v.far, "mtu",
            "9000",
        ]);
        ip(&["link", "set", &v.near, "netns", &v.near_ns]);
        ip(&["link", "set", &v.far, "netns", &v.far_ns]);
        for (ns, dev) in [(&v.near_ns, &v.near), (&v.far_ns, &v.far)] {
            for conf in ["all", "default", dev.as_str()] {
                run_ok(Command::new("ip").args([
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.{conf}.disable_ipv6=1"),
                ]));
            }
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        v
    }
}

impl Veth {
    /// A second pair between the same namespaces (removed with them).
    fn another_pair(&self) -> (String, String) {
        let (near, far) = (format!("{}b", self.near), format!("{}b", self.far));
        ip(&[
            "link", "add", &near, "mtu", "9000", "type", "veth", "peer", "name", &far, "mtu",
            "9000",
        ]);
        ip(&["link", "set", &near, "netns", &self.near_ns]);
        ip(&["link", "set", &far, "netns", &self.far_ns]);
        for (ns, dev) in [(&self.near_ns, &near), (&self.far_ns, &far)] {
            run_ok(Command::new("ip").args([
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{dev}.disable_ipv6=1"),
            ]));
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        (near, far)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        for ns in [&self.near_ns, &self.far_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A test frame: IPv4/UDP from source port `flow`, `len` bytes in all, carrying MAGIC and
/// `seq` (so any two differ), the rest a pattern.
fn frame(seq: u32, flow: u16, len: usize) -> Vec<u8> {
    assert!((60..=MTU + 14).contains(&len));
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - 14) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 2]);
    f[30..34].copy_from_slice(&[10, 0, (flow >> 8) as u8, flow as u8]);
    f[34..36].copy_from_slice(&flow.to_be_bytes());
    f[36..38].copy_from_slice(&7777u16.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f[42..50].copy_from_slice(MAGIC);
    f[50..54].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in f[54..].iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(31).wrapping_add(seq) as u8;
    }
    f
}

fn is_test_frame(f: &[u8]) -> bool {
    f.len() >= 54 && &f[42..50] == MAGIC
}

/// Sends `frames` out of `dev` in namespace `ns` with a raw AF_PACKET socket, from a thread
/// that joined the namespace (setns affects only the calling thread).
fn send(ns: &str, dev: &str, frames: &[Vec<u8>]) {
    let (ns, dev, frames) = (ns.to_string(), dev.to_string(), frames.to_vec());
    std::thread::spawn(move || {
        let nsf = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("open netns");
        // SAFETY: setns on this thread with a valid namespace descriptor.
        let rc = unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let name = std::ffi::CString::new(dev).unwrap();
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index > 0);
        // SAFETY: sockaddr_ll is plain old data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = index as i32;
        sll.sll_halen = 6;
        for f in &frames {
            loop {
                // SAFETY: `f` and `sll` are live for the call.
                let n = unsafe {
                    libc::sendto(
                        fd,
                        f.as_ptr().cast(),
                        f.len(),
                        0,
                        (&sll as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if n == f.len() as isize {
                    break;
                }
                let e = std::io::Error::last_os_error();
                assert_eq!(e.raw_os_error(), Some(libc::ENOBUFS), "sendto: {e}");
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
    })
    .join()
    .expect("sender thread");
}

/// `zcap record -i DEV` inside namespace `ns`, and its stderr.
struct Rec {
    child: Child,
    log: Arc<Mutex<String>>,
}

fn record(ns: &str, dev: &str, dir: &Path, extra: &[&str]) -> Rec {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(env!("CARGO_BIN_EXE_zcap"))
        .args(["record", "-i", dev, "-o"])
        .arg(dir)
        .args(extra);
    // The capture threads send their stream header first; give them a moment to start.
    spawn_capturing(cmd, "zcap record -i", Duration::from_millis(200))
}

/// Starts `cmd` (a zcap that captures), collects its stderr, and returns once it says
/// `zcap: rx: afpacket` and `settle` has passed.
fn spawn_capturing(mut cmd: Command, what: &str, settle: Duration) -> Rec {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    let l = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.starts_with("zcap: rx: afpacket") {
                let _ = tx.send(());
            }
            let mut g = l.lock().unwrap();
            g.push_str(&line);
            g.push('\n');
        }
    });
    if rx.recv_timeout(Duration::from_secs(20)).is_err() {
        let _ = child.kill();
        std::thread::sleep(Duration::from_millis(100));
        panic!("{what} did not start:\n{}", log.lock().unwrap());
    }
    std::thread::sleep(settle);
    Rec { child, log }
}

impl Drop for Rec {
    /// A test that failed half way leaves no capture running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Rec {
    /// SIGTERM, then wait for a clean exit; returns stderr and stdout.
    fn stop(mut self) -> (String, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "zcap did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut o, &mut out);
        }
        std::thread::sleep(Duration::from_millis(100));
        let log = self.log.lock().unwrap().clone();
        assert!(status.success(), "zcap record -i exited {status}:\n{log}");
        (log, out)
    }
}

/// The records of a pcap byte stream (ns magic, native order): (link type, frames).
fn pcap_frames(b: &[u8]) -> (u32, Vec<Vec<u8>>) {
    assert!(b.len() >= 24, "no pcap header");
    let rd = |at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
    assert_eq!(rd(0), 0xa1b2_3c4d, "nanosecond pcap magic");
    let linktype = rd(20);
    let mut out = Vec::new();
    let mut off = 24;
    while off < b.len() {
        let caplen = rd(off + 8) as usize;
        let len = rd(off + 12) as usize;
        assert_eq!(caplen, len, "a record was truncated");
        out.push(b[off + 16..off + 16 + caplen].to_vec());
        off += 16 + caplen;
    }
    (linktype, out)
}

/// Every stream's frames (`zcap cat --stream`), test frames only.
fn stream_frames(dir: &Path) -> Vec<(String, Vec<Vec<u8>>)> {
    let mut out = Vec::new();
    for (name, bytes) in common::streams(dir) {
        let (lt, frames) = pcap_frames(&bytes);
        assert_eq!(lt, 1, "stream {name}: link type Ethernet");
        out.push((
            name,
            frames.into_iter().filter(|f| is_test_frame(f)).collect(),
        ));
    }
    out.sort();
    out
}

fn segments(dir: &Path) -> Vec<(String, u64)> {
    let out = run_ok(zcap().arg("ls").arg(dir).arg("--json"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["path"].as_str()?.to_string(), v["packets"].as_u64()?)))
        .collect()
}

fn mix(n: u32, flows: u16) -> Vec<Vec<u8>> {
    let sizes = [60, 61, 64, 128, 333, 1000, 1514, 4000, 8000, MTU + 14];
    (0..n)
        .map(|i| {
            frame(
                i,
                1000 + (i as u16 % flows),
                sizes[i as usize % sizes.len()],
            )
        })
        .collect()
}

fn ready() -> bool {
    need_root() && need_tool("ip")
}

#[test]
fn records_veth_frames_byte_exact_and_tcpdump_reads_every_segment() {
    if !ready() {
        return;
    }
    let v = Veth::new();
    let dir = tempdir();
    let arch = dir.path().join("a");
    let rec = record(
        &v.near_ns,
        &v.near,
        &arch,
        &[
            "--block-size",
            "64KiB",
            "--block-count",
            "64",
            "-C",
            "64KiB",
            "--frame-size",
            "16KiB",
            "--compress",
            "none",
        ],
    );
    let frames = mix(400, 1);
    send(&v.far_ns, &v.far, &frames);
    std::thread::sleep(Duration::from_millis(300));
    let (log, _) = rec.stop();
    let got = stream_frames(&arch);
    assert_eq!(got.len(), 1, "one stream:\n{log}");
    assert!(
        got[0].0.starts_with(&format!("{}-t0-", v.near)),
        "{}",
        got[0].0
    );
    assert_eq!(got[0].1.len(), frames.len(), "frames recorded:\n{log}");
    assert!(got[0].1 == frames, "frames differ from those sent");
    assert!(log.contains("nothing was lost"), "{log}");
    let segs = segments(&arch);
    assert!(segs.len() > 1, "-C 64KiB rotates: {segs:?}");
    if need_tool("tcpdump") && need_tool("zstd") {
        let total: usize = segs
            .iter()
            .map(|(p, packets)| {
                let raw = dir.path().join("seg.pcap");
                std::fs::write(&raw, common::zstd_decompress(&arch.join(p))).unwrap();
                let n = common::tcpdump_count(&raw);
                assert_eq!(n as u64, *packets, "tcpdump reads all of {p}");
                if common::which("tshark").is_some() {
                    assert_eq!(
                        common::tshark_count(&raw) as u64,
                        *packets,
                        "tshark reads {p}"
                    );
                }
                n
            })
            .sum();
        assert!(total >= frames.len());
    }
    run_ok(zcap().arg("verify").arg(&arch));
}

#[test]
fn sigterm_drains_the_block_the_kernel_has_not_retired() {
    if !ready() {
        return;
    }
    let v = Veth::new();
    let dir = tempdir();
    // A block is retired only after 2 s: the frames are still in the kernel's open block
    // when the signal comes.
    let rec = record(
        &v.near_ns,
        &v.near,
        dir.path(),
        &[
            "--block-size",
            "1MiB",
            "--block-count",
            "4",
            "--block-timeout",
            "2s",
        ],
    );
    let frames = mix(50, 1);
    send(&v.far_ns, &v.far, &frames);
    std::thread::sleep(Duration::from_millis(50));
    let (log, _) = rec.stop();
    let got = stream_frames(dir.path());
    assert_eq!(got.len(), 1);
    assert!(
        got[0].1 == frames,
        "{} of {} frames:\n{log}",
        got[0].1.len(),
        frames.len()
    );
}

#[test]
fn fanout_two_records_every_frame_once_over_two_streams() {
    if !ready() {
        return;
    }
    let v = Veth::new();
    let dir = tempdir();
    let rec = record(
        &v.near_ns,
        &v.near,
        dir.path(),
        &[
            "--fanout",
            "2",
            "--block-size",
            "256KiB",
            "--block-count",
            "8",
        ],
    );
    let frames = mix(600, 16);
    send(&v.far_ns, &v.far, &frames);
    std::thread::sleep(Duration::from_millis(300));
    let (log, _) = rec.stop();
    let got = stream_frames(dir.path());
    assert_eq!(got.len(), 2, "two streams:\n{log}");
    assert!(got[0].0.contains("-t0-") && got[1].0.contains("-t1-"));
    for (name, fs) in &got {
        assert!(!fs.is_empty(), "{name} got none: the hash spreads 16 flows");
        // In send order within each stream.
        let seqs: Vec<u32> = fs
            .iter()
            .map(|f| u32::from_be_bytes(f[50..54].try_into().unwrap()))
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{name} out of order");
    }
    let mut all: Vec<Vec<u8>> = got.into_iter().flat_map(|(_, f)| f).collect();
    all.sort_by_key(|f| u32::from_be_bytes(f[50..54].try_into().unwrap()));
    assert!(
        all == frames,
        "every frame once: {} of {}",
        all.len(),
        frames.len()
    );
    // `cat` of the whole archive merges both by time.
    let out = run_ok(zcap().arg("cat").arg(dir.path()));
    let (_, merged) = pcap_frames(&out.stdout);
    assert_eq!(
        merged.iter().filter(|f| is_test_frame(f)).count(),
        frames.len()
    );
}

#[test]
fn a_tiny_ring_under_a_flood_counts_drops_and_still_verifies() {
    if !ready() {
        return;
    }
    let v = Veth::new();
    let dir = tempdir();
    let rec = record(
        &v.near_ns,
        &v.near,
        dir.path(),
        &[
            "--block-size",
            "4KiB",
            "--block-count",
            "2",
            "--block-timeout",
            "1ms",
            "--compress",
            "zstd:19",
            "--stats-json",
            "--stats-interval",
            "100ms",
        ],
    );
    let frames: Vec<Vec<u8>> = (0..30_000).map(|i| frame(i, 1, 1000)).collect();
    send(&v.far_ns, &v.far, &frames);
    std::thread::sleep(Duration::from_millis(700));
    let (log, out) = rec.stop();
    let summary = log
        .lines()
        .find(|l| l.starts_with("zcap: capture:"))
        .unwrap_or_else(|| panic!("no capture summary:\n{log}"));
    let num = |after: &str| -> u64 {
        let rest = &summary[summary.find(after).unwrap() + after.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (seen, delivered, dropped) = (num("saw "), num("delivered "), num("dropped "));
    assert!(
        dropped > 0,
        "a 8 KiB ring must drop under a flood: {summary}"
    );
    assert!(
        summary.contains("--block-count"),
        "says what to change: {summary}"
    );
    assert_eq!(seen, delivered + dropped);
    let last = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("stats json");
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert!(v["kernel_drops"].as_u64().unwrap() > 0, "{last}");
    let archived: u64 = segments(dir.path()).iter().map(|s| s.1).sum();
    assert_eq!(
        archived, delivered,
        "every delivered packet archived: {summary}"
    );
    // The manifest charges every drop to a segment, and `ls` shows them.
    let ls = run_ok(zcap().arg("ls").arg(dir.path()).arg("--json"));
    let in_manifest: u64 = String::from_utf8_lossy(&ls.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["drops"].as_u64())
        .sum();
    assert_eq!(in_manifest, dropped, "segments' drops add up");
    let ls = run_ok(zcap().arg("ls").arg(dir.path()));
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(text.lines().next().unwrap().contains("DROPS"), "{text}");
    assert!(
        text.contains(&format!(
            ", {dropped} dropped by the kernel while capturing"
        )),
        "{text}"
    );
    run_ok(zcap().arg("verify").arg(dir.path()));
}

#[test]
fn a_missing_or_down_interface_is_named() {
    if !ready() {
        return;
    }
    let v = Veth::new();
    let dir = tempdir();
    let out = Command::new("ip")
        .args(["netns", "exec", &v.near_ns])
        .arg(env!("CARGO_BIN_EXE_zcap"))
        .args(["record", "-i", "nosuch0", "-o"])
        .arg(dir.path().join("a"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no such interface nosuch0"), "{err}");
    assert!(!dir.path().join("a").exists(), "nothing created");
    ip(&["-n", &v.near_ns, "link", "set", &v.near, "down"]);
    let out = Command::new("ip")
        .args(["netns", "exec", &v.near_ns])
        .arg(env!("CARGO_BIN_EXE_zcap"))
        .args(["record", "-i", &v.near, "-o"])
        .arg(dir.path().join("a"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("interface {} is down", v.near)),
        "{err}"
    );
}

/// A frame like [`frame`] but to UDP port `port`.
fn frame_to(seq: u32, port: u16, len: usize) -> Vec<u8> {
    let mut f = frame(seq, 1000, len);
    f[36..38].copy_from_slice(&port.to_be_bytes());
    f
}

#[test]
fn a_filter_keeps_exactly_the_matching_frames_and_prints_like_tcpdump() {
    if !ready() || !need_tool("tcpdump") {
        return;
    }
    let v = Veth::new();
    let dir = tempdir();
    let expr = ["udp", "dst", "port", "7777"];
    // -d prints what tcpdump -d prints for the same interface and expression.
    let ours = run_ok(
        Command::new("ip")
            .args(["netns", "exec", &v.near_ns])
            .arg(env!("CARGO_BIN_EXE_zcap"))
            .args(["record", "-i", &v.near, "-d"])
            .args(expr),
    );
    let theirs = run_ok(
        Command::new("ip")
            .args(["netns", "exec", &v.near_ns, "tcpdump", "-d", "-i", &v.near])
            .args(expr),
    );
    assert_eq!(
        String::from_utf8_lossy(&ours.stdout),
        String::from_utf8_lossy(&theirs.stdout)
    );
    let mut extra = vec!["--block-size", "64KiB", "--block-count", "16", "--"];
    extra.extend(expr);
    let rec = record(&v.near_ns, &v.near, dir.path(), &extra);
    let frames: Vec<Vec<u8>> = (0..300)
        .map(|i| {
            frame_to(
                i,
                if i % 3 == 0 { 7777 } else { 8888 },
                60 + (i as usize * 29) % 9000,
            )
        })
        .collect();
    send(&v.far_ns, &v.far, &frames);
    std::thread::sleep(Duration::from_millis(300));
    let (log, _) = rec.stop();
    let want: Vec<Vec<u8>> = frames
        .iter()
        .filter(|f| f[36..38] == 7777u16.to_be_bytes())
        .cloned()
        .collect();
    let got = stream_frames(dir.path());
    assert_eq!(got.len(), 1, "{log}");
    assert_eq!(got[0].1.len(), want.len(), "{log}");
    assert!(got[0].1 == want, "the filtered frames, byte for byte");
}

#[test]
fn a_filter_that_does_not_compile_exits_with_the_compilers_message() {
    if !ready() {
        return;
    }
    let v = Veth::new();
    let dir = tempdir();
    let out = Command::new("ip")
        .args(["netns", "exec", &v.near_ns])
        .arg(env!("CARGO_BIN_EXE_zcap"))
        .args(["record", "-i", &v.near, "-o"])
        .arg(dir.path().join("a"))
        .args(["tcp", "prot", "443"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("filter `tcp prot 443` does not compile: "),
        "{err}"
    );
    assert!(err.contains("syntax error"), "libpcap's own words: {err}");
    assert!(!dir.path().join("a").exists(), "nothing created");
}

#[test]
fn snaplen_truncates_and_keeps_the_wire_length() {
    if !ready() {
        return;
    }
    let v = Veth::new();
    let dir = tempdir();
    let rec = record(
        &v.near_ns,
        &v.near,
        dir.path(),
        &["-s", "100", "--block-size", "64KiB"],
    );
    let frames = mix(40, 1);
    send(&v.far_ns, &v.far, &frames);
    std::thread::sleep(Duration::from_millis(300));
    let (log, _) = rec.stop();
    let (_, bytes) = common::streams(dir.path()).into_iter().next().expect(&log);
    assert_eq!(
        u32::from_ne_bytes(bytes[16..20].try_into().unwrap()),
        100,
        "header snaplen"
    );
    let rd = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let mut off = 24;
    let mut seen = Vec::new();
    while off < bytes.len() {
        let (caplen, len) = (rd(off + 8), rd(off + 12));
        let data = &bytes[off + 16..off + 16 + caplen];
        if is_test_frame(data) {
            seen.push((caplen, len, data.to_vec()));
        }
        off += 16 + caplen;
    }
    assert_eq!(seen.len(), frames.len());
    for ((caplen, len, data), f) in seen.iter().zip(&frames) {
        assert_eq!(*len, f.len());
        assert_eq!(*caplen, f.len().min(100));
        assert_eq!(&data[..], &f[..*caplen]);
    }
}

/// `zcap send -i DEV --to ADDR` inside namespace `ns`, and its stderr.
fn sender(ns: &str, dev: &str, to: &str) -> Rec {
    sender_with(ns, dev, to, &[])
}

fn sender_with(ns: &str, dev: &str, to: &str, extra: &[&str]) -> Rec {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(env!("CARGO_BIN_EXE_zcap"))
        .args([
            "send",
            "-i",
            dev,
            "--block-size",
            "64KiB",
            "--block-count",
            "64",
            "--to",
            to,
        ])
        .args(extra);
    spawn_capturing(cmd, "zcap send", Duration::from_millis(300))
}

/// `zcap record --listen 127.0.0.1:0` inside namespace `ns`, ending after `streams` streams.
fn listener(ns: &str, dir: &Path, port: u16, streams: u32) -> common::Recorder {
    listener_with(ns, dir, port, streams, &[])
}

fn listener_with(
    ns: &str,
    dir: &Path,
    port: u16,
    streams: u32,
    extra: &[&str],
) -> common::Recorder {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(env!("CARGO_BIN_EXE_zcap"))
        .args(["record", "--rx", "recv", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--max-streams", &streams.to_string(), "-o"])
        .arg(dir)
        .args(extra);
    common::start_cmd(cmd)
}

#[test]
fn send_streams_the_capture_to_a_recorder_byte_exact() {
    if !ready() {
        return;
    }
    let v = Veth::new();
    let dir = tempdir();
    let rec = listener(&v.near_ns, dir.path(), 0, 1);
    let to = rec.addr();
    let snd = sender(&v.near_ns, &v.near, &to);
    let frames = mix(300, 1);
    send(&v.far_ns, &v.far, &frames);
    std::thread::sleep(Duration::from_millis(300));
    let (log, _) = snd.stop();
    let (status, rlog) = rec.wait(Duration::from_secs(20));
    assert!(status.success(), "{rlog}");
    assert!(log.contains(&format!("connected to {to}")), "{log}");
    let got = stream_frames(dir.path());
    assert_eq!(got.len(), 1, "{rlog}");
    assert!(
        got[0].1 == frames,
        "{} of {} frames, as record -i records them:\n{log}",
        got[0].1.len(),
        frames.len()
    );
}

/// The sensor speaks TLS to a TLS recorder (`send --tls-ca` into `record --tls-cert`).
#[test]
fn send_streams_over_tls_to_a_tls_recorder() {
    if !ready() || !common::need_tool("openssl") {
        return;
    }
    let v = Veth::new();
    let dir = tempdir();
    let pki = tempdir();
    common::pki(pki.path());
    let p = |f: &str| pki.path().join(f).to_str().unwrap().to_string();
    let (cert, key, ca) = (p("server.pem"), p("server.key"), p("ca.pem"));
    let tls = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    let rec = listener_with(&v.near_ns, dir.path(), 0, 1, &tls);
    let to = rec.addr();
    let snd = sender_with(&v.near_ns, &v.near, &to, &["--tls-ca", &ca]);
    let frames = mix(300, 1);
    send(&v.far_ns, &v.far, &frames);
    std::thread::sleep(Duration::from_millis(300));
    let (log, _) = snd.stop();
    let (status, rlog) = rec.wait(Duration::from_secs(20));
    assert!(status.success(), "{rlog}");
    assert!(rlog.contains("zcap: rx: tls"), "{rlog}");
    let got = stream_frames(dir.path());
    assert_eq!(got.len(), 1, "{rlog}\n{log}");
    assert!(
        got[0].1 == frames,
        "{} of {} frames:\n{log}",
        got[0].1.len(),
        frames.len()
    );
}

#[test]
fn send_counts_what_it_drops_while_disconnected_and_reconnects() {
    if !ready() {
        return;
    }
    let v = Veth::new();
    let dir = tempdir();
    let port = 57_099;
    let to = format!("127.0.0.1:{port}");
    let snd = sender(&v.near_ns, &v.near, &to);
    let first = mix(20, 1);
    send(&v.far_ns, &v.far, &first);
    std::thread::sleep(Duration::from_millis(300));
    let rec = listener(&v.near_ns, dir.path(), port, 1);
    // Past the longest back-off: the next block reconnects.
    std::thread::sleep(Duration::from_millis(5_500));
    let second: Vec<Vec<u8>> = (100..130).map(|i| frame(i, 1, 500)).collect();
    send(&v.far_ns, &v.far, &second);
    std::thread::sleep(Duration::from_millis(300));
    let (log, _) = snd.stop();
    let (status, rlog) = rec.wait(Duration::from_secs(20));
    assert!(status.success(), "{rlog}");
    assert!(log.contains("reconnecting with back-off"), "{log}");
    assert!(
        log.contains(&format!("reconnected to {to}"))
            && log.contains("20 packets dropped while disconnected"),
        "{log}"
    );
    assert!(
        log.contains("20 captured packets dropped while disconnected"),
        "{log}"
    );
    let got = stream_frames(dir.path());
    assert_eq!(got.len(), 1, "{rlog}");
    assert!(got[0].1 == second, "{} frames:\n{log}", got[0].1.len());
}

#[test]
fn doctor_says_what_live_capture_needs_on_an_interface() {
    if !ready() {
        return;
    }
    let v = Veth::new();
    let doctor = || {
        let out = Command::new("ip")
            .args(["netns", "exec", &v.near_ns])
            .arg(env!("CARGO_BIN_EXE_zcap"))
            .args(["doctor", "-i", &v.near, "--json"])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let state = |r: &serde_json::Value, name: &str| {
        r["capture"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["state"].as_str().unwrap().to_string())
    };
    let r = doctor();
    assert_eq!(r["capture_ok"], true, "{r}");
    for name in [
        "cap_net_raw",
        "tpacket_v3",
        "link",
        "link_type",
        "ring_memory",
    ] {
        assert_eq!(state(&r, name).as_deref(), Some("ok"), "{name}: {r}");
    }
    ip(&["-n", &v.near_ns, "link", "set", &v.near, "down"]);
    let r = doctor();
    assert_eq!(r["capture_ok"], false, "{r}");
    assert_eq!(state(&r, "link").as_deref(), Some("missing"));
    let fixes = r["capture_fixes"].to_string();
    assert!(
        fixes.contains(&format!("ip link set {} up", v.near)),
        "{fixes}"
    );
}

/// [`frame`] with an 802.1Q tag (VLAN `vid`) after the MAC addresses.
fn tagged(seq: u32, vid: u16, len: usize) -> Vec<u8> {
    let f = frame(seq, 1000, len - 4);
    let mut t = f[..12].to_vec();
    t.extend(0x8100u16.to_be_bytes());
    t.extend(vid.to_be_bytes());
    t.extend(&f[12..]);
    t
}

#[test]
fn vlan_tags_the_kernel_takes_off_are_recorded_as_sent() {
    if !ready() {
        return;
    }
    let v = Veth::new();
    let dir = tempdir();
    let rec = record(&v.near_ns, &v.near, dir.path(), &["--block-size", "64KiB"]);
    let frames: Vec<Vec<u8>> = (0..60)
        .map(|i| {
            tagged(
                i,
                100 + (i as u16 % 3),
                [64, 200, 1518, 9018][i as usize % 4],
            )
        })
        .collect();
    send(&v.far_ns, &v.far, &frames);
    std::thread::sleep(Duration::from_millis(300));
    let (log, _) = rec.stop();
    let (_, bytes) = common::streams(dir.path()).into_iter().next().expect(&log);
    let (lt, got) = pcap_frames(&bytes);
    assert_eq!(lt, 1);
    let got: Vec<Vec<u8>> = got
        .into_iter()
        .filter(|f| f.len() >= 58 && &f[46..54] == MAGIC)
        .collect();
    assert_eq!(got.len(), frames.len(), "{log}");
    assert!(got == frames, "tagged frames byte for byte, tag included");
}

#[test]
fn any_records_linux_cooked_headers() {
    if !ready() {
        return;
    }
    let v = Veth::new();
    let dir = tempdir();
    let rec = record(&v.near_ns, "any", dir.path(), &["--block-size", "64KiB"]);
    let frames = mix(50, 1);
    send(&v.far_ns, &v.far, &frames);
    std::thread::sleep(Duration::from_millis(300));
    let (log, _) = rec.stop();
    let streams = common::streams(dir.path());
    assert_eq!(streams.len(), 1, "{log}");
    let (name, bytes) = streams.into_iter().next().unwrap();
    assert!(name.starts_with("any-t0-"), "{name}");
    let (lt, got) = pcap_frames(&bytes);
    assert_eq!(lt, 113, "LINKTYPE_LINUX_SLL");
    let got: Vec<&Vec<u8>> = got
        .iter()
        .filter(|r| r.len() >= 16 + 40 && &r[16 + 28..16 + 36] == MAGIC)
        .collect();
    assert_eq!(got.len(), frames.len(), "{log}");
    for (r, f) in got.iter().zip(&frames) {
        assert_eq!(&r[2..4], &1u16.to_be_bytes(), "ARPHRD_ETHER");
        assert_eq!(&r[4..6], &6u16.to_be_bytes(), "address length");
        assert_eq!(&r[6..12], &f[6..12], "the sender's MAC");
        assert_eq!(&r[14..16], &f[12..14], "protocol");
        assert_eq!(&r[16..], &f[14..], "the network layer, byte for byte");
    }
    if need_tool("tshark") {
        let raw = dir.path().join("any.pcap");
        std::fs::write(&raw, &bytes).unwrap();
        assert!(common::tshark_count(&raw) >= frames.len());
    }
}

#[test]
fn two_processes_in_one_fanout_group_share_the_interface() {
    if !ready() {
        return;
    }
    let v = Veth::new();
    let dir = tempdir();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let group = (std::process::id() % 60_000 + 1000).to_string();
    let flags = ["--fanout-group", group.as_str(), "--block-size", "64KiB"];
    let ra = record(&v.near_ns, &v.near, &a, &flags);
    let rb = record(&v.near_ns, &v.near, &b, &flags);
    let frames = mix(400, 16);
    send(&v.far_ns, &v.far, &frames);
    std::thread::sleep(Duration::from_millis(300));
    let (la, _) = ra.stop();
    let (lb, _) = rb.stop();
    let (ga, gb) = (stream_frames(&a), stream_frames(&b));
    let (na, nb) = (ga[0].1.len(), gb[0].1.len());
    assert!(
        na > 0 && nb > 0,
        "both processes got flows: {na} and {nb}\n{la}\n{lb}"
    );
    let mut all: Vec<Vec<u8>> = ga.into_iter().chain(gb).flat_map(|(_, f)| f).collect();
    all.sort_by_key(|f| u32::from_be_bytes(f[50..54].try_into().unwrap()));
    assert!(
        all == frames,
        "every frame once over the two: {} of {}",
        all.len(),
        frames.len()
    );
}

#[test]
fn repeated_i_records_each_interface_as_its_own_stream() {
    if !ready() {
        return;
    }
    let v = Veth::new();
    let (near2, far2) = v.another_pair();
    let dir = tempdir();
    let rec = record(
        &v.near_ns,
        &v.near,
        dir.path(),
        &["-i", &near2, "--fanout", "2", "--block-size", "64KiB"],
    );
    let one = mix(100, 1);
    let two: Vec<Vec<u8>> = (1000..1100)
        .map(|i| frame(i, 2, 60 + (i as usize % 1400)))
        .collect();
    send(&v.far_ns, &v.far, &one);
    send(&v.far_ns, &far2, &two);
    std::thread::sleep(Duration::from_millis(300));
    let (log, _) = rec.stop();
    // Two threads per interface (one flow each: one of the two gets it all).
    let got = stream_frames(dir.path());
    assert_eq!(got.len(), 4, "{log}");
    for (want, prefix) in [(&two, format!("{near2}-")), (&one, format!("{}-", v.near))] {
        let mut frames: Vec<Vec<u8>> = got
            .iter()
            .filter(|(n, _)| n.starts_with(&prefix))
            .flat_map(|(_, f)| f.clone())
            .collect();
        frames.sort_by_key(|f| u32::from_be_bytes(f[50..54].try_into().unwrap()));
        assert!(&frames == want, "{prefix}: {} frames", frames.len());
    }
}

/// Runs `f` on a thread that joined network namespace `ns` (sockets it makes stay there).
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let nsf = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("open netns");
        // SAFETY: setns on this thread with a valid namespace descriptor.
        let rc = unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

#[test]
fn send_serve_gives_clients_the_live_capture_and_dumpcap_reads_it() {
    if !ready() {
        return;
    }
    let v = Veth::new();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &v.near_ns])
        .arg(env!("CARGO_BIN_EXE_zcap"))
        .args([
            "send",
            "-i",
            &v.near,
            "--block-size",
            "64KiB",
            "--serve",
            "127.0.0.1:0",
        ]);
    let srv = common::start_cmd(cmd);
    let port = srv.port;
    let client = in_ns(&v.near_ns, move || {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut c, &mut out).expect("read");
        out
    });
    let dir = tempdir();
    let pcapng = dir.path().join("dumpcap.pcapng");
    let dumpcap = common::which("dumpcap").map(|_| {
        Command::new("ip")
            .args(["netns", "exec", &v.near_ns, "dumpcap", "-q", "-i"])
            .arg(format!("TCP@127.0.0.1:{port}"))
            .arg("-w")
            .arg(&pcapng)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dumpcap")
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let want_clients = if dumpcap.is_some() { 2 } else { 1 };
    while srv.log().matches("zcap: send: serving").count() < want_clients {
        assert!(
            Instant::now() < deadline,
            "clients not served:\n{}",
            srv.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let frames = mix(200, 1);
    send(&v.far_ns, &v.far, &frames);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(srv.pid(), libc::SIGTERM) };
    let (status, log) = srv.wait(Duration::from_secs(20));
    assert!(status.success(), "{log}");
    let got = client.join().unwrap();
    let (lt, records) = pcap_frames(&got);
    assert_eq!(lt, 1);
    let records: Vec<Vec<u8>> = records.into_iter().filter(|f| is_test_frame(f)).collect();
    assert!(
        records == frames,
        "{} of {} frames:\n{log}",
        records.len(),
        frames.len()
    );
    if let Some(mut d) = dumpcap {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
        let _ = d.wait();
        if need_tool("tshark") {
            let out = run_ok(Command::new("tshark").arg("-r").arg(&pcapng).args([
                "-Y",
                "udp.dstport == 7777",
                "-T",
                "fields",
                "-e",
                "frame.len",
            ]));
            let lens: Vec<usize> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim().parse().unwrap())
                .collect();
            let want: Vec<usize> = frames.iter().map(Vec::len).collect();
            assert_eq!(lens, want, "dumpcap got every frame, in order");
        }
    } else {
        need_tool("dumpcap");
    }
}

#[test]
fn a_tun_device_is_recorded_as_raw_ip() {
    if !ready() {
        return;
    }
    if !Path::new("/dev/net/tun").exists() {
        assert!(
            std::env::var_os("CI").is_none_or(|v| v.is_empty()),
            "no /dev/net/tun, and CI is set: CI must run every test"
        );
        eprintln!("SKIP a_tun_device_is_recorded_as_raw_ip: no /dev/net/tun");
        return;
    }
    let v = Veth::new();
    let tun = format!("zt{}", &v.near[2..]);
    let name = tun.clone();
    // A tun device has a carrier only while a process holds it open.
    let holder = in_ns(&v.near_ns, move || {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .expect("open /dev/net/tun");
        let mut ifr = [0u8; 40];
        ifr[..name.len()].copy_from_slice(name.as_bytes());
        ifr[16..18].copy_from_slice(&(0x0001u16 | 0x1000).to_ne_bytes()); // IFF_TUN | IFF_NO_PI
                                                                          // SAFETY: TUNSETIFF reads and writes the ifreq-sized buffer we pass.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), 0x4004_54ca, ifr.as_mut_ptr()) };
        assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        f
    })
    .join()
    .unwrap();
    ip(&["-n", &v.near_ns, "addr", "add", "10.9.0.1/24", "dev", &tun]);
    ip(&["-n", &v.near_ns, "link", "set", &tun, "up"]);
    let dir = tempdir();
    let rec = record(&v.near_ns, &tun, dir.path(), &["--block-size", "64KiB"]);
    let payloads: Vec<Vec<u8>> = (0..30u32)
        .map(|i| {
            let mut p = MAGIC.to_vec();
            p.extend(i.to_be_bytes());
            p.resize(12 + (i as usize * 37) % 1200, 0x5a);
            p
        })
        .collect();
    let sent = payloads.clone();
    in_ns(&v.near_ns, move || {
        let s = std::net::UdpSocket::bind("10.9.0.1:0").unwrap();
        for p in &sent {
            s.send_to(p, "10.9.0.2:7777").unwrap();
        }
    })
    .join()
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (log, _) = rec.stop();
    drop(holder);
    let (_, bytes) = common::streams(dir.path()).into_iter().next().expect(&log);
    let (lt, packets) = pcap_frames(&bytes);
    assert_eq!(lt, 101, "LINKTYPE_RAW");
    let got: Vec<Vec<u8>> = packets
        .iter()
        .filter(|p| p.len() >= 36 && p[0] >> 4 == 4 && &p[28..36] == MAGIC)
        .map(|p| p[28..].to_vec())
        .collect();
    assert!(
        got == payloads,
        "{} of {} UDP payloads in raw IP records:\n{log}",
        got.len(),
        payloads.len()
    );
}
