//! `zcap demo`, the README's first command: records the bundled capture over loopback with
//! each receive backend, then lists and verifies the archive.

mod common;

fn demo_records_lists_and_verifies(backend: &str) {
    let t = common::tempdir();
    let dir = t.path().join("demo-archive");
    let out = common::run_ok(
        common::zcap()
            .args(["demo", "--rx", backend, "-o"])
            .arg(&dir),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("$ zcap ls"), "{stdout}");
    assert!(
        stdout.contains("2000"),
        "ls shows the 2000 packets:\n{stdout}"
    );
    assert!(stdout.contains("$ zcap verify"), "{stdout}");
    assert!(
        stdout.contains("zcap cat"),
        "it says what to try next:\n{stdout}"
    );
    assert!(
        stderr.contains(&format!("zcap: rx: {backend}")),
        "the recorder names its backend:\n{stderr}"
    );
    assert!(stderr.contains("sent 2000 packets"), "{stderr}");
    // The archive holds the capture byte for byte.
    let cat = common::run_ok(common::zcap().arg("cat").arg(&dir)).stdout;
    assert_eq!(cat, std::fs::read(common::fixture("demo.pcap")).unwrap());
}

#[test]
fn demo_with_ring_records_lists_and_verifies() {
    demo_records_lists_and_verifies("ring");
}

#[test]
fn demo_with_recv_records_lists_and_verifies() {
    demo_records_lists_and_verifies("recv");
}
