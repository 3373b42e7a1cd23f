//! Running as a service: the Prometheus endpoint (`--metrics`), rotation aligned to the wall
//! clock (`-G --align`), SIGHUP (cut every open segment now) and SIGUSR1 (one stats line).
//! The metrics are checked against the archive and parsed by the Prometheus project's own
//! Python parser (`prometheus_client`, which `.ci/run` installs with pip).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const PAYLOAD: usize = 60;

/// A live sender: a pcap stream whose records are stamped with the time they are sent.
struct Sender {
    sock: TcpStream,
    sent: Vec<u8>,
    packets: u64,
}

impl Sender {
    fn connect(addr: &str) -> Sender {
        let mut sock = TcpStream::connect(addr).unwrap();
        let mut h = Vec::new();
        h.extend(0xa1b2c3d4u32.to_le_bytes());
        h.extend(2u16.to_le_bytes());
        h.extend(4u16.to_le_bytes());
        h.extend([0u8; 8]);
        h.extend(65535u32.to_le_bytes());
        h.extend(1u32.to_le_bytes());
        sock.write_all(&h).unwrap();
        Sender {
            sock,
            sent: h,
            packets: 0,
        }
    }

    fn packet(&mut self) {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        let mut r = Vec::with_capacity(16 + PAYLOAD);
        r.extend((t.as_secs() as u32).to_le_bytes());
        r.extend(t.subsec_micros().to_le_bytes());
        r.extend((PAYLOAD as u32).to_le_bytes());
        r.extend((PAYLOAD as u32).to_le_bytes());
        r.extend((0..PAYLOAD).map(|i| (self.packets as usize + i) as u8));
        self.sock.write_all(&r).unwrap();
        self.sent.extend(r);
        self.packets += 1;
    }

    /// `n` packets, one every `every`.
    fn paced(&mut self, n: u64, every: Duration) {
        let start = Instant::now();
        for i in 0..n {
            let due = start + every * i as u32;
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            self.packet();
        }
    }

    fn close(self) -> (Vec<u8>, u64) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
        (self.sent, self.packets)
    }
}

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let (head, body) = r.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// The value of a sample line `name{labels} value` (labels matched as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn signal(pid: i32, sig: &str) {
    run_ok(Command::new("kill").args([sig, &pid.to_string()]));
}

fn ls_json(dir: &Path) -> Vec<serde_json::Value> {
    let out = run_ok(zcap().arg("ls").arg(dir).arg("--json"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn metrics_count_what_the_archive_holds_and_prometheus_parses_them() {
    if !need_tool("python3") || !need_tool("kill") {
        return;
    }
    let parser = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .status()
        .unwrap();
    if !parser.success() {
        need_tool("python3-prometheus_client"); // skips, or fails under CI
        return;
    }
    let t = tempdir();
    let dir = t.path().join("a");
    let mport = free_port();
    let rec = start("ring", &dir, &["--metrics", &format!("127.0.0.1:{mport}")]);
    let mut s = Sender::connect(&rec.addr());
    s.paced(300, Duration::from_millis(2));
    // While the stream is open it has its own series.
    wait_until(
        "the first packets in the metrics",
        Duration::from_secs(30),
        || sample(&scrape(mport), "zcap_packets_total").is_some_and(|v| v > 0.0),
    );
    let mid = scrape(mport);
    assert!(
        mid.contains("zcap_stream_packets_total{stream=\"127.0.0.1_"),
        "{mid}"
    );
    assert_eq!(sample(&mid, "zcap_streams_open"), Some(1.0), "{mid}");
    s.paced(700, Duration::from_micros(500));
    let (sent, n) = s.close();
    wait_until(
        "every packet in the metrics",
        Duration::from_secs(30),
        || sample(&scrape(mport), "zcap_packets_total") == Some(n as f64),
    );
    let text = scrape(mport);
    // The Prometheus project's parser reads the whole exposition.
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import sys, json\n\
             from prometheus_client.parser import text_string_to_metric_families as parse\n\
             out = {}\n\
             for f in parse(sys.stdin.read()):\n\
             \x20   for s in f.samples:\n\
             \x20       if not s.labels: out[s.name] = s.value\n\
             print(json.dumps(out))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client cannot parse the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(parsed["zcap_packets_total"], n as f64);
    let data = (n as usize * (16 + PAYLOAD)) as f64;
    assert_eq!(parsed["zcap_raw_bytes_total"], data, "{text}");
    assert_eq!(parsed["zcap_received_bytes_total"], sent.len() as f64);
    assert!(parsed["zcap_segment_finalize_seconds_count"]
        .as_f64()
        .is_some());
    for name in [
        "zcap_area_in_use_bytes",
        "zcap_backpressure_events_total",
        "zcap_kernel_drops_total",
        "zcap_stored_bytes_total",
        "zcap_frames_total",
    ] {
        assert!(parsed.get(name).is_some(), "{name} missing:\n{text}");
    }
    assert!(
        text.contains("zcap_errors_total{kind=\"stream\"} 0"),
        "{text}"
    );
    signal(rec.pid(), "-INT");
    let (status, log) = rec.wait(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    // The archive holds what the metrics counted.
    let rows = ls_json(&dir);
    let packets: u64 = rows.iter().map(|r| r["packets"].as_u64().unwrap()).sum();
    assert_eq!(packets, n);
    let cat = run_ok(zcap().arg("cat").arg(&dir)).stdout;
    assert!(cat == sent, "the archive does not hold the stream");
}

#[test]
fn aligned_rotation_cuts_on_wall_clock_multiples() {
    let t = tempdir();
    let dir = t.path().join("a");
    let rec = start("ring", &dir, &["-G", "2s", "--align"]);
    let mut s = Sender::connect(&rec.addr());
    // 7 s of traffic, 50 packets a second.
    s.paced(350, Duration::from_millis(20));
    let (sent, _) = s.close();
    std::thread::sleep(Duration::from_millis(300));
    signal(rec.pid(), "-INT");
    let (status, log) = rec.wait(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    let rows = ls_json(&dir);
    assert!(
        (4..=6).contains(&rows.len()),
        "{} segments:\n{rows:?}",
        rows.len()
    );
    // Each segment's packets lie in one 2-second window of the wall clock (packets are
    // stamped as they are sent), give or take the time a packet takes to reach the writer.
    let period = 2_000_000_000i64;
    let slack = 500_000_000i64;
    for r in &rows {
        let (a, b) = (
            r["first_ns"].as_i64().unwrap(),
            r["last_ns"].as_i64().unwrap(),
        );
        let w = (a + slack).div_euclid(period) * period;
        assert!(
            a >= w - slack && b <= w + period + slack,
            "segment {} spans {a}..{b}, not inside the window {w}..{} (±{slack} ns)",
            r["seq"],
            w + period
        );
    }
    let cat = run_ok(zcap().arg("cat").arg(&dir)).stdout;
    assert!(cat == sent);
}

#[test]
fn sighup_finalizes_the_open_segment_and_sigusr1_prints_one_stats_line() {
    if !need_tool("kill") {
        return;
    }
    let t = tempdir();
    let dir = t.path().join("a");
    let rec = start("ring", &dir, &[]);
    let mut s = Sender::connect(&rec.addr());
    s.paced(200, Duration::from_millis(1));
    let segments = || {
        std::fs::read_to_string(dir.join("manifest.jsonl"))
            .unwrap_or_default()
            .matches("\"op\":\"segment\"")
            .count()
    };
    // The stream stays open; its data is written (the idle flush) but no segment is final.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(segments(), 0);
    signal(rec.pid(), "-HUP");
    wait_until("the segment SIGHUP cut", Duration::from_secs(20), || {
        segments() == 1
    });
    signal(rec.pid(), "-USR1");
    wait_until("the stats line", Duration::from_secs(20), || {
        rec.log().contains(" open / ")
    });
    s.paced(200, Duration::from_millis(1));
    let (sent, n) = s.close();
    std::thread::sleep(Duration::from_millis(300));
    signal(rec.pid(), "-INT");
    let (status, log) = rec.wait(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    assert_eq!(log.matches(" open / ").count(), 1, "one stats line:\n{log}");
    assert!(
        log.contains("200 packets"),
        "the stats line counts the packets so far:\n{log}"
    );
    assert!(log.contains("SIGHUP"), "{log}");
    let rows = ls_json(&dir);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["packets"].as_u64(), Some(200));
    assert_eq!(rows[1]["packets"].as_u64(), Some(n - 200));
    let v = zcap().arg("verify").arg(&dir).output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    assert!(run_ok(zcap().arg("cat").arg(&dir)).stdout == sent);
}
