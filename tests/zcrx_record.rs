//! `zcap record` asked for zero-copy receive on this machine's virtio NIC, as a user would
//! run it: `--rx zcrx` refuses in one line naming EOPNOTSUPP and the driver, `--rx auto`
//! says why it falls back to `ring` and records byte for byte, and without CAP_NET_ADMIN the
//! EPERM is explained. Needs root (zcrx registration does) and eth0 on virtio_net.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn virtio_eth0() -> bool {
    let driver = std::fs::read_link("/sys/class/net/eth0/device/driver")
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    if driver.as_deref() == Some("virtio_net") {
        true
    } else {
        eprintln!("SKIP: eth0 is not a virtio_net NIC here (driver {driver:?})");
        false
    }
}

fn record_zcrx(wrap: &[&str], queue: &[&str], out: &std::path::Path) -> (Option<i32>, String) {
    let zcap = env!("CARGO_BIN_EXE_zcap");
    let mut argv: Vec<String> = wrap.iter().map(|s| s.to_string()).collect();
    argv.push(zcap.into());
    argv.extend(
        [
            "record",
            "--rx",
            "zcrx",
            "--iface",
            "eth0",
            "--listen",
            "127.0.0.1:0",
            "-o",
        ]
        .map(String::from),
    );
    argv.push(out.to_string_lossy().into_owned());
    argv.extend(queue.iter().map(|s| s.to_string()));
    let o = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn rx_zcrx_on_virtio_exits_with_one_line_naming_eopnotsupp_and_the_driver() {
    if !common::need_root() || !virtio_eth0() {
        return;
    }
    let t = common::tempdir();
    // --force: eth0 has one rx queue, which every flow uses (see the next test).
    let (code, err) = record_zcrx(&[], &["--queue", "0", "--force"], &t.path().join("a"));
    assert_eq!(code, Some(2), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    for part in ["EOPNOTSUPP", "virtio_net", "eth0 queue 0", "--rx ring"] {
        assert!(lines[0].contains(part), "{part:?} missing from: {err}");
    }
}

/// A queue every flow lands on (queue 0 of a one-queue NIC, or one in the RSS table) would
/// fill the area with copies: refused before registering, saying how to fix it.
#[test]
fn rx_zcrx_refuses_a_queue_that_takes_all_traffic_unless_forced() {
    let queues = std::fs::read_dir("/sys/class/net/eth0/queues").map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
            .count()
    });
    if queues != 1 {
        eprintln!("SKIP: eth0 has {queues} rx queues, not one");
        return;
    }
    let t = common::tempdir();
    let (code, err) = record_zcrx(&[], &["--queue", "0"], &t.path().join("a"));
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    for part in ["single rx queue", "--force", "eth0"] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
}

/// No default queue: queue 0 is in every RSS table (`ethtool -X IF equal N` keeps 0..N-1).
#[test]
fn rx_zcrx_without_a_queue_says_how_to_choose_one() {
    let t = common::tempdir();
    let (code, err) = record_zcrx(&[], &[], &t.path().join("a"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no --queue given"), "{err}");
    assert!(err.contains("ethtool -X eth0 equal Q"), "{err}");
}

#[test]
fn rx_zcrx_without_cap_net_admin_explains_eperm() {
    if !common::need_root() || !virtio_eth0() || !common::need_tool("setpriv") {
        return;
    }
    let t = common::tempdir();
    let drop_cap = [
        "setpriv",
        "--inh-caps=-net_admin",
        "--bounding-set=-net_admin",
        "--",
    ];
    let (code, err) = record_zcrx(&drop_cap, &["--queue", "0", "--force"], &t.path().join("a"));
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    for part in ["EPERM", "CAP_NET_ADMIN", "setcap"] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
}

#[test]
fn rx_auto_with_iface_falls_back_to_ring_and_records_byte_exact() {
    if !common::need_root() || !virtio_eth0() {
        return;
    }
    let t = common::tempdir();
    let arch = t.path().join("a");
    let mut rec = common::zcap()
        .args([
            "record",
            "--iface",
            "eth0",
            "--queue",
            "0",
            "--force",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--max-streams", "1", "-o"])
        .arg(&arch)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(rec.stderr.take().unwrap());
    let (mut log, mut addr) = (String::new(), None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while addr.is_none() && Instant::now() < deadline {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            break;
        }
        addr = line
            .trim()
            .strip_prefix("zcap: listening on ")
            .map(String::from);
        log += &line;
    }
    let addr = addr.unwrap_or_else(|| panic!("no listening line:\n{log}"));
    let fallback = log.lines().next().unwrap_or("");
    assert!(
        fallback.starts_with("zcap: rx: ring (zcrx unavailable: "),
        "{log}"
    );
    assert!(
        fallback.contains("EOPNOTSUPP") && fallback.contains("virtio_net"),
        "{log}"
    );
    let input = std::fs::read(common::fixture("demo.pcap")).unwrap();
    TcpStream::connect(&addr)
        .unwrap()
        .write_all(&input)
        .unwrap();
    let st = rec.wait().unwrap();
    std::io::copy(&mut err, &mut std::io::sink()).unwrap();
    assert!(st.success(), "{st}");
    let out = common::zcap().arg("cat").arg(&arch).output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, input, "the fallback recording is byte-exact");
}
