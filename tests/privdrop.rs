//! `record -Z USER`: after setting up, the recorder runs as USER with no capabilities —
//! /proc shows its uid, gid, groups and capability sets — and recording, rotation and
//! retention go on working in the archive it handed to USER. Needs root (CI is root).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn status_field(pid: i32, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn after_z_nobody_the_recorder_has_no_privileges_and_still_records() {
    if !common::need_root() {
        return;
    }
    let t = common::tempdir();
    // The archive's parents must be open to the user, as on any real deployment.
    std::fs::set_permissions(
        t.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let arch = t.path().join("arch");
    let rec = common::start(
        "ring",
        &arch,
        &[
            "-Z",
            "nobody",
            "-C",
            "16KiB",
            "--frame-size",
            "8KiB",
            "--max-bytes",
            "96KiB",
            "--max-streams",
            "3",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rec.log().contains("zcap: running as nobody") {
        assert!(
            Instant::now() < deadline,
            "no privilege drop:\n{}",
            rec.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = rec.pid();
    assert_eq!(status_field(pid, "Uid:"), "65534 65534 65534 65534");
    assert_eq!(status_field(pid, "Gid:"), "65534 65534 65534 65534");
    assert_eq!(status_field(pid, "Groups:"), "65534");
    for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(status_field(pid, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    // Every thread (writers, compress pool, hash lane), not only the main one.
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let s = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        assert!(s.contains("Uid:\t65534\t65534\t65534\t65534"), "{s}");
    }

    let capture = std::fs::read(common::fixture("demo.pcap")).unwrap();
    for _ in 0..3 {
        let mut s = TcpStream::connect(rec.addr()).unwrap();
        s.write_all(&capture).unwrap();
    }
    let (st, log) = rec.wait(Duration::from_secs(60));
    assert!(st.success(), "{st}\n{log}");
    let manifest = std::fs::read_to_string(arch.join("manifest.jsonl")).unwrap();
    assert!(
        manifest.contains("\"op\":\"delete\""),
        "retention deleted segments as nobody:\n{log}"
    );
    assert!(
        manifest.matches("\"op\":\"segment\"").count() > 6,
        "rotation"
    );
    let v = common::zcap().arg("verify").arg(&arch).output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

#[test]
fn an_unknown_user_is_refused_before_anything_starts() {
    let t = common::tempdir();
    let o = common::zcap()
        .args(["record", "-Z", "no-such-user-zcap", "-r"])
        .arg(common::fixture("demo.pcap"))
        .arg("-o")
        .arg(t.path().join("arch"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("-Z no-such-user-zcap: no such user"),
        "{err}"
    );
    assert!(!t.path().join("arch").exists(), "nothing was created");
}
