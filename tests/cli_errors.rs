//! What `zcap` says and returns when something is wrong: usage errors name the flag and the
//! range (exit 2), a bad capture or a failed verify exits 1, an error that stops the job exits
//! 2, and every cause is printed once.

mod common;

use std::process::Output;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs zcap with `args` and returns its output.
fn zcap(args: &[&str]) -> Output {
    common::zcap().args(args).output().expect("run zcap")
}

#[test]
fn a_usage_error_exits_2_and_names_the_flag_and_the_range() {
    let t = common::tempdir();
    let arch = t.path().join("arch");
    let arch = arch.to_str().unwrap();
    let o = zcap(&["record", "-r", "x.pcap", "-o", arch, "-C", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "error: invalid value '0' for '--segment-size <SIZE>': must be between 4KiB and 1TiB"
        ),
        "{}",
        stderr(&o)
    );
    assert!(!t.path().join("arch").exists(), "nothing is created");

    let o = zcap(&["record", "--no-such-flag"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    let o = zcap(&["replay", "a.pcap", "--to", "127.0.0.1:9", "--speed", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("for '--speed <X>'"), "{}", stderr(&o));

    // --buf-size against --area-size is checked by record, before the archive is made.
    let fixture = common::fixture("le-us-eth.pcap");
    let o = zcap(&[
        "record",
        "-r",
        fixture.to_str().unwrap(),
        "-o",
        arch,
        "--area-size",
        "1MiB",
        "--buf-size",
        "1MiB",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--buf-size 1MiB is too large for --area-size 1MiB"),
        "{}",
        stderr(&o)
    );
    assert!(!t.path().join("arch").exists(), "nothing is created");
}

#[test]
fn a_bad_capture_and_a_failed_verify_exit_1() {
    let t = common::tempdir();
    let arch = t.path().join("arch");
    let arch_s = arch.to_str().unwrap();
    let input = common::fixture("truncated.pcap");
    let o = zcap(&["record", "-r", input.to_str().unwrap(), "-o", arch_s]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("at byte offset 1477: truncated record"),
        "{}",
        stderr(&o)
    );

    let o = zcap(&["verify", arch_s]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let seg = walk(&arch)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".pcap.zst"))
        .expect("a segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let o = zcap(&["verify", arch_s]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn an_io_error_exits_2_and_prints_its_cause_once() {
    let t = common::tempdir();
    // A file where a directory should be: fails for root too.
    let file = t.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let input = common::fixture("le-us-eth.pcap");
    let input = input.to_str().unwrap();
    for (out, cause) in [
        (file.join("arch"), "Not a directory (os error 20)"),
        (
            "/proc/zcap-no-such-dir/arch".into(),
            "No such file or directory (os error 2)",
        ),
    ] {
        let o = zcap(&["record", "-r", input, "-o", out.to_str().unwrap()]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(err.matches(cause).count(), 1, "the cause once:\n{err}");
        assert!(err.contains(&format!("archive {}", out.display())), "{err}");
        assert_eq!(err.matches("os error").count(), 1, "{err}");
    }

    // A reader that meets a missing segment names the file and says why, once.
    let arch = t.path().join("arch");
    let o = zcap(&["record", "-r", input, "-o", arch.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let seg = walk(&arch)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".pcap.zst"))
        .expect("a segment");
    std::fs::remove_file(&seg).unwrap();
    let o = zcap(&["cat", arch.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&seg.display().to_string()), "{err}");
    assert_eq!(err.matches("os error").count(), 1, "the cause once:\n{err}");
}

#[test]
fn a_truncated_file_header_is_named_once() {
    let t = common::tempdir();
    let input = t.path().join("short.pcap");
    let bytes = std::fs::read(common::fixture("le-us-eth.pcap")).unwrap();
    std::fs::write(&input, &bytes[..10]).unwrap();
    let arch = t.path().join("arch");
    let o = zcap(&[
        "record",
        "-r",
        input.to_str().unwrap(),
        "-o",
        arch.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "at byte offset 0: truncated file header: the stream ends after 10 bytes of it"
        ),
        "{err}"
    );
    assert!(!err.contains("header header"), "{err}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
