//! Archives are untrusted input (docs/ARCHIVE.md, "Untrusted archives"): a manifest whose
//! segment line names a path outside the archive — `../outside/x.pcap.zst`, an absolute
//! path, a stream directory that is a symbolic link to elsewhere — or a segment file that is
//! itself a link is refused by `ls`, `cat`, `verify`, `verify --repair`, `replay` and
//! retention. The manifest is re-chained after each edit, so only the path rule can catch
//! it; the file outside is a valid copy of the segment, so a reader that followed the path
//! would succeed. Every refusal names the path and why, and the file outside is neither read
//! nor deleted.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    )
}

fn manifest_path(arch: &Path) -> PathBuf {
    arch.join("manifest.jsonl")
}

/// The manifest's lines as JSON objects (keys sorted: serde_json's map, as zcap writes them).
fn manifest_lines(arch: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(manifest_path(arch))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Writes `lines` as the manifest with a valid chain (docs/ARCHIVE.md, "Manifest"): each
/// line's `prev` is the previous line's hash, its `hash` the SHA-256 of the line's bytes up to
/// `,"hash":"`.
fn write_chained(arch: &Path, lines: &[serde_json::Value]) {
    let mut prev = "0".repeat(64);
    let mut out = String::new();
    for l in lines {
        let mut v = l.clone();
        let obj = v.as_object_mut().unwrap();
        obj.remove("hash");
        obj.insert("prev".into(), prev.clone().into());
        let body = serde_json::to_string(&v).unwrap();
        let body = &body[..body.len() - 1];
        let hash: String = Sha256::digest(body.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        out.push_str(&format!("{body},\"hash\":\"{hash}\"}}\n"));
        prev = hash;
    }
    std::fs::write(manifest_path(arch), out).unwrap();
}

/// Rewrites manifest line `index` (0-based) with `edit` and re-chains every line after it.
fn rewrite_line(arch: &Path, index: usize, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut lines = manifest_lines(arch);
    edit(&mut lines[index]);
    write_chained(arch, &lines);
}

/// How the archive is made to reach outside itself.
#[derive(Debug, Clone, Copy)]
enum Attack {
    DotDot,
    Absolute,
    LinkedStreamDir,
    LinkedSegment,
}

/// A recorded archive turned against its reader, with a sentinel outside it.
struct Case {
    _t: tempfile::TempDir,
    arch: PathBuf,
    /// The file outside the archive: a valid copy of the segment.
    sentinel: PathBuf,
    sentinel_bytes: Vec<u8>,
    /// The path as the manifest names it.
    bad: String,
    /// 1-based manifest line that names it.
    line: usize,
    /// Words the reason must contain.
    why: &'static str,
}

fn record_fixture(arch: &Path) {
    run_ok(
        zcap()
            .arg("record")
            .arg("-r")
            .arg(fixture("le-us-eth.pcap"))
            .arg("-o")
            .arg(arch),
    );
}

fn setup(attack: Attack) -> Case {
    let t = tempdir();
    let arch = t.path().join("arch");
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    record_fixture(&arch);
    let lines = manifest_lines(&arch);
    let index = lines
        .iter()
        .position(|l| l["op"] == "segment")
        .expect("a segment line");
    let rel = lines[index]["path"].as_str().unwrap().to_string();
    let seg = arch.join(&rel);
    let seg_bytes = std::fs::read(&seg).unwrap();
    // The control: this archive reads and verifies before it is turned.
    let o = run(zcap().arg("verify").arg(&arch));
    assert!(o.status.success(), "control verify: {}", show(&o));

    let (sentinel, bad, why) = match attack {
        Attack::DotDot => {
            let s = outside.join("x.pcap.zst");
            (s, "../outside/x.pcap.zst".to_string(), "`..`")
        }
        Attack::Absolute => {
            let s = outside.join("x.pcap.zst");
            let bad = s.to_str().unwrap().to_string();
            (s, bad, "absolute path")
        }
        Attack::LinkedStreamDir => {
            symlink(&outside, arch.join("evil")).unwrap();
            (
                outside.join("000001.pcap.zst"),
                "evil/000001.pcap.zst".to_string(),
                "its stream directory evil is a symbolic link",
            )
        }
        Attack::LinkedSegment => (
            outside.join("000001.pcap.zst"),
            rel.clone(),
            "is a symbolic link",
        ),
    };
    std::fs::write(&sentinel, &seg_bytes).unwrap();
    // The archive's own copy goes: whatever a reader reads, it could only find outside.
    std::fs::remove_file(&seg).unwrap();
    match attack {
        Attack::LinkedSegment => symlink(&sentinel, &seg).unwrap(),
        _ => rewrite_line(&arch, index, |l| {
            l["path"] = bad.clone().into();
            if matches!(attack, Attack::LinkedStreamDir) {
                l["stream"] = "evil".into();
            }
        }),
    }
    Case {
        _t: t,
        arch,
        sentinel,
        sentinel_bytes: seg_bytes,
        bad,
        line: index + 1,
        why,
    }
}

impl Case {
    /// The refusal names the path (as the manifest has it) and the reason.
    fn assert_named(&self, what: &str, out: &str) {
        let quoted = format!("{:?}", self.bad);
        assert!(
            out.contains(&quoted) && out.contains(self.why),
            "{what}: the message should name {quoted} and say `{}`:\n{out}",
            self.why
        );
    }

    fn assert_outside_untouched(&self, what: &str) {
        let now = std::fs::read(&self.sentinel)
            .unwrap_or_else(|e| panic!("{what}: {}: {e}", self.sentinel.display()));
        assert!(
            now == self.sentinel_bytes,
            "{what}: the file outside changed"
        );
    }
}

/// Accepts every connection already made to `l` and returns how many and the bytes sent.
fn drain(l: &TcpListener) -> (usize, Vec<u8>) {
    l.set_nonblocking(true).unwrap();
    let (mut n, mut data) = (0, Vec::new());
    while let Ok((mut s, _)) = l.accept() {
        s.set_nonblocking(false).unwrap();
        n += 1;
        let _ = s.read_to_end(&mut data);
    }
    (n, data)
}

fn check_all_refuse(attack: Attack) {
    let c = setup(attack);
    let arch = &c.arch;
    let label = |cmd: &str| format!("{attack:?}: {cmd}");

    let o = run(zcap().arg("ls").arg(arch));
    assert_eq!(o.status.code(), Some(1), "{}: {}", label("ls"), show(&o));
    c.assert_named(&label("ls"), &text(&o.stderr));
    assert!(
        text(&o.stderr).contains(&format!("manifest line {}", c.line)),
        "{}: names the line: {}",
        label("ls"),
        show(&o)
    );

    let o = run(zcap().arg("cat").arg(arch));
    assert_eq!(o.status.code(), Some(1), "{}: {}", label("cat"), show(&o));
    assert!(
        o.stdout.is_empty(),
        "{}: wrote {} bytes",
        label("cat"),
        o.stdout.len()
    );
    c.assert_named(&label("cat"), &text(&o.stderr));

    let o = run(zcap().arg("verify").arg(arch));
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}: {}",
        label("verify"),
        show(&o)
    );
    let out = text(&o.stdout);
    assert!(
        out.contains(&format!(
            "DAMAGE: manifest line {}: path {:?}",
            c.line, c.bad
        )),
        "{}: reports the line as damage:\n{out}",
        label("verify")
    );
    c.assert_named(&label("verify"), &out);
    assert!(
        !out.contains("segments: 1 checked"),
        "{}: read the segment:\n{out}",
        label("verify")
    );

    let before = std::fs::read(manifest_path(arch)).unwrap();
    let o = run(zcap().arg("verify").arg("--repair").arg(arch));
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}: {}",
        label("verify --repair"),
        show(&o)
    );
    c.assert_named(&label("verify --repair"), &text(&o.stderr));
    assert!(
        text(&o.stderr).contains("nothing was changed"),
        "{}: {}",
        label("verify --repair"),
        show(&o)
    );
    assert_eq!(
        std::fs::read(manifest_path(arch)).unwrap(),
        before,
        "{}: the manifest is unchanged",
        label("verify --repair")
    );
    c.assert_outside_untouched(&label("verify --repair"));

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let o = run(zcap().arg("replay").arg(arch).args(["--to", &addr]));
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}: {}",
        label("replay"),
        show(&o)
    );
    c.assert_named(&label("replay"), &text(&o.stderr));
    let (conns, data) = drain(&l);
    assert_eq!(
        (conns, data.len()),
        (0, 0),
        "{}: nothing is sent, no one is connected to",
        label("replay")
    );

    // Retention: append a stream of several segments with a budget smaller than it. The
    // oldest entry is the bad one; retention must leave it and delete the new stream's
    // oldest segments instead.
    let o = run(zcap()
        .args([
            "record",
            "-C",
            "16KiB",
            "--frame-size",
            "8KiB",
            "--max-bytes",
            "64KiB",
            "-r",
        ])
        .arg(fixture("demo.pcap"))
        .arg("-o")
        .arg(arch));
    assert!(o.status.success(), "{}: {}", label("record"), show(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!("zcap: retention: not deleting {}: ", c.bad)),
        "{}: retention logs what it left:\n{err}",
        label("retention")
    );
    c.assert_named(&label("retention"), &err);
    assert!(
        err.contains("; retention left 1 segment(s) in place that do not match the manifest"),
        "{}: the summary counts what retention left:\n{err}",
        label("retention")
    );
    let deletes: Vec<String> = manifest_lines(arch)
        .iter()
        .filter(|l| l["op"] == "delete")
        .map(|l| l["path"].as_str().unwrap().to_string())
        .collect();
    assert!(!deletes.is_empty(), "{}: {deletes:?}", label("retention"));
    assert!(
        deletes[0].starts_with("demo-") && deletes[0].ends_with("/000001.pcap.zst"),
        "{}: retention moved on to the new stream's oldest segment: {deletes:?}",
        label("retention")
    );
    for d in &deletes {
        assert!(
            d.starts_with("demo-"),
            "{}: only the new stream's segments are deleted: {deletes:?}",
            label("retention")
        );
        assert!(!arch.join(d).exists(), "{}", label("retention"));
    }
    c.assert_outside_untouched(&label("retention"));
    if matches!(attack, Attack::LinkedSegment | Attack::LinkedStreamDir) {
        let link = if matches!(attack, Attack::LinkedSegment) {
            arch.join(&c.bad)
        } else {
            arch.join("evil")
        };
        assert!(
            link.symlink_metadata()
                .is_ok_and(|m| m.file_type().is_symlink()),
            "{}: the link is left in place",
            label("retention")
        );
    }
    // Still refused afterwards.
    let o = run(zcap().arg("verify").arg(arch));
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}: {}",
        label("verify after"),
        show(&o)
    );
    c.assert_outside_untouched(&label("the end"));
}

#[test]
fn rechaining_an_unchanged_manifest_reproduces_it() {
    let t = tempdir();
    let arch = t.path().join("arch");
    record_fixture(&arch);
    let before = std::fs::read(manifest_path(&arch)).unwrap();
    write_chained(&arch, &manifest_lines(&arch));
    assert_eq!(std::fs::read(manifest_path(&arch)).unwrap(), before);
    // And an edit the rule allows keeps a valid chain: verify sees only the missing file.
    let lines = manifest_lines(&arch);
    let index = lines.iter().position(|l| l["op"] == "segment").unwrap();
    let stream = lines[index]["stream"].as_str().unwrap().to_string();
    rewrite_line(&arch, index, |l| {
        l["path"] = format!("{stream}/000009.pcap.zst").into()
    });
    let o = run(zcap().arg("verify").arg(&arch));
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(out.contains("hash chain intact"), "{out}");
    assert!(out.contains("000009.pcap.zst: missing"), "{out}");
}

#[test]
fn the_control_archive_replays() {
    // What the refusal tests compare against: the same archive, untouched, is sent.
    let t = tempdir();
    let arch = t.path().join("arch");
    record_fixture(&arch);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let o = run(zcap().arg("replay").arg(&arch).args(["--to", &addr]));
    assert!(o.status.success(), "{}", show(&o));
    let (conns, data) = drain(&l);
    assert_eq!(conns, 1);
    assert_eq!(data, std::fs::read(fixture("le-us-eth.pcap")).unwrap());
}

#[test]
fn dotdot_segment_path_is_refused_everywhere() {
    check_all_refuse(Attack::DotDot);
}

#[test]
fn absolute_segment_path_is_refused_everywhere() {
    check_all_refuse(Attack::Absolute);
}

#[test]
fn segment_in_a_linked_stream_directory_is_refused_everywhere() {
    check_all_refuse(Attack::LinkedStreamDir);
}

#[test]
fn linked_segment_file_is_refused_everywhere() {
    check_all_refuse(Attack::LinkedSegment);
}

#[test]
fn a_delete_line_outside_the_archive_is_damage() {
    let t = tempdir();
    let arch = t.path().join("arch");
    record_fixture(&arch);
    let mut lines = manifest_lines(&arch);
    lines.push(serde_json::json!({
        "op": "delete",
        "path": "../x/000001.pcap.zst",
        "reason": "max-bytes",
    }));
    write_chained(&arch, &lines);
    let o = run(zcap().arg("verify").arg(&arch));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let line = lines.len();
    assert!(
        text(&o.stdout).contains(&format!(
            "DAMAGE: manifest line {line}: path \"../x/000001.pcap.zst\""
        )),
        "{}",
        show(&o)
    );
    let o = run(zcap().arg("cat").arg(&arch));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
}

/// `verify --repair` on an archive mounted read-only names the file it could not open.
/// Root only (`chmod` does not stop root): a read-only bind mount in a private mount
/// namespace.
#[test]
fn repair_on_a_read_only_archive_names_the_file() {
    if !need_root() || !need_tool("unshare") {
        return;
    }
    let t = tempdir();
    let arch = t.path().join("arch");
    let mnt = t.path().join("ro");
    std::fs::create_dir(&mnt).unwrap();
    record_fixture(&arch);
    let script = "mount --bind \"$1\" \"$2\" && mount -o remount,ro,bind \"$2\" && exec \"$3\" verify --repair \"$2\"";
    let o = run(Command::new("unshare")
        .args(["-m", "sh", "-c", script, "sh"])
        .arg(&arch)
        .arg(&mnt)
        .arg(env!("CARGO_BIN_EXE_zcap")));
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let lock = mnt.join(".lock");
    assert!(
        err.contains(&format!("{}: ", lock.display())) && err.contains("Read-only file system"),
        "the error names {}: {}",
        lock.display(),
        show(&o)
    );
}
