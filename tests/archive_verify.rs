//! `zcap verify` and `zcap verify --repair` on archives hurt the ways archives get hurt: a
//! recorder killed with SIGKILL mid-stream, a flipped byte in a segment, an edited or torn
//! manifest line, a segment whose manifest line was lost, a recorder still holding the lock.

mod common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_verifies(arch: &Path, when: &str) {
    let o = verify(arch, &[]);
    assert!(
        o.status.success() && stdout(&o).contains("verify: OK"),
        "{when}: verify should pass:\n{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout(&o).contains("hash chain intact"), "{when}");
}

/// Whole records of a little-endian microsecond pcap (after the 24-byte header).
fn records(b: &[u8]) -> Vec<&[u8]> {
    assert_eq!(&b[..4], &0xa1b2_c3d4u32.to_le_bytes(), "LE µs pcap");
    let mut out = Vec::new();
    let mut o = 24;
    while o + 16 <= b.len() {
        let caplen = u32::from_le_bytes(b[o + 8..o + 12].try_into().unwrap()) as usize;
        if o + 16 + caplen > b.len() {
            break;
        }
        out.push(&b[o..o + 16 + caplen]);
        o += 16 + caplen;
    }
    out
}

fn partials(arch: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for d in std::fs::read_dir(arch).into_iter().flatten().flatten() {
        if d.path().is_dir() {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                if f.file_name().to_string_lossy().ends_with(".partial") {
                    v.push(f.path());
                }
            }
        }
    }
    v
}

/// Records inside the complete zstd frames of a `.partial` (its first frame is the header).
fn records_in_complete_frames(partial: &Path) -> usize {
    use zstd::zstd_safe;
    let bytes = std::fs::read(partial).unwrap();
    let mut off = 0;
    let mut n = 0;
    let mut first = true;
    while off < bytes.len() {
        let Ok(len) = zstd_safe::find_frame_compressed_size(&bytes[off..]) else {
            break;
        };
        let Ok(data) = zstd::stream::decode_all(&bytes[off..off + len]) else {
            break;
        };
        if !first {
            let mut hdr = vec![0u8; 24];
            hdr[..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
            hdr.extend(&data);
            let recs = records(&hdr);
            let whole: usize = recs.iter().map(|r| r.len()).sum();
            assert_eq!(whole, data.len(), "a written frame holds whole records");
            n += recs.len();
        }
        first = false;
        off += len;
    }
    n
}

/// Waits until the `.partial` under `arch` exists and has not grown for `quiet`.
fn wait_quiet(arch: &Path, quiet: Duration) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (0u64, Instant::now());
    while Instant::now() < deadline {
        let size = partials(arch)
            .first()
            .and_then(|p| p.metadata().ok())
            .map_or(0, |m| m.len());
        if size != last.0 {
            last = (size, Instant::now());
        } else if size > 0 && last.1.elapsed() >= quiet {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the recorder wrote nothing into {}", arch.display());
}

fn spawn_recorder(arch: &Path) -> Child {
    zcap()
        .args(["record", "--read", "-", "-o"])
        .arg(arch)
        .args(["--frame-size", "64KiB"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn zcap record")
}

#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Until the recorder's idle flush has persisted everything it received.
    Idle,
    /// Kill as soon as the pipe took the bytes: the recorder is likely mid-frame.
    Busy(u64),
}

#[test]
fn sigkill_mid_stream_then_repair_keeps_every_complete_frame() {
    let t = tempdir();
    let input_path = t.path().join("in.pcap");
    gen(&["--bytes", "8M", "--rate", "20000"], &input_path);
    let input = std::fs::read(&input_path).unwrap();
    let all = records(&input);
    let mib = 1 << 20;
    let points = [
        (mib, Wait::Idle),
        (5 * mib, Wait::Busy(0)),
        (2 * mib + 7, Wait::Idle), // inside a record
        (3 * mib + 3, Wait::Busy(150)),
        (6 * mib + 11, Wait::Busy(40)),
    ];
    for (i, (cut, wait)) in points.into_iter().enumerate() {
        let arch = t.path().join(format!("a{i}"));
        let mut child = spawn_recorder(&arch);
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&input[..cut]).unwrap();
        stdin.flush().unwrap();
        match wait {
            Wait::Idle => wait_quiet(&arch, Duration::from_millis(1500)),
            Wait::Busy(ms) => std::thread::sleep(Duration::from_millis(ms)),
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        drop(stdin);
        let what = format!("kill after {cut} bytes ({wait:?})");

        let left = partials(&arch);
        let complete = left.first().map_or(0, |p| records_in_complete_frames(p));
        let partial_len = left.first().map_or(0, |p| p.metadata().unwrap().len());
        eprintln!("{what}: .partial of {partial_len} bytes, {complete} records in complete frames");
        let v = verify(&arch, &[]);
        if !left.is_empty() {
            assert_eq!(
                v.status.code(),
                Some(1),
                "{what}: verify must fail:\n{}",
                stdout(&v)
            );
            assert!(
                stdout(&v).contains(".partial"),
                "{what}: names the .partial:\n{}",
                stdout(&v)
            );
        }

        let r = verify(&arch, &["--repair"]);
        assert!(
            r.status.success(),
            "{what}: verify --repair:\n{}{}",
            stdout(&r),
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(partials(&arch).is_empty(), "{what}: no .partial left");
        assert_verifies(&arch, &what);

        let out = run_ok(zcap().arg("cat").arg(&arch)).stdout;
        if out.is_empty() {
            assert_eq!(complete, 0, "{what}");
            continue;
        }
        assert_eq!(out[..24], input[..24], "{what}: header");
        let got = records(&out);
        let whole: usize = 24 + got.iter().map(|r| r.len()).sum::<usize>();
        assert_eq!(whole, out.len(), "{what}: cat gives whole records");
        assert!(
            got.iter().zip(&all).all(|(a, b)| a == b),
            "{what}: cat is not a prefix of the input"
        );
        assert_eq!(
            got.len(),
            complete,
            "{what}: every record of every complete frame, nothing else"
        );
        if let Wait::Idle = wait {
            // Everything received was flushed before the kill: only the torn record is lost.
            let sent = records(&input[..cut]).len();
            assert_eq!(got.len(), sent, "{what}: all complete records sent");
        }
        // The repaired segment says so, and the interrupted stream is recorded as ended.
        let ls = stdout(&run_ok(zcap().arg("ls").arg(&arch)));
        assert!(ls.contains("repaired"), "{what}:\n{ls}");
        assert!(ls.contains("interrupted"), "{what}:\n{ls}");
        // A second repair finds nothing to do.
        let again = verify(&arch, &["--repair"]);
        assert!(!stdout(&again).contains("repaired:"), "{}", stdout(&again));
    }
}

#[test]
fn torn_partial_tail_and_empty_partial() {
    let t = tempdir();
    let input = t.path().join("in.pcap");
    gen(&["--bytes", "2M"], &input);
    let arch = t.path().join("a");
    run_ok(
        zcap()
            .args(["record", "--frame-size", "64KiB", "-r"])
            .arg(&input)
            .arg("-o")
            .arg(&arch),
    );
    let seg_line = std::fs::read_to_string(arch.join("manifest.jsonl"))
        .unwrap()
        .lines()
        .find(|l| l.contains("\"op\":\"segment\""))
        .unwrap()
        .to_string();
    let rel: String = serde_json::from_str::<serde_json::Value>(&seg_line).unwrap()["path"]
        .as_str()
        .unwrap()
        .into();
    let seg = std::fs::read(arch.join(&rel)).unwrap();
    let tr =
        zcap::archive::index::read_trailer(&std::fs::File::open(arch.join(&rel)).unwrap()).unwrap();
    let stream = rel.split('/').next().unwrap();

    // A crashed second stream: header, three whole frames, half of the fourth.
    let crashed = arch.join(format!("{stream}-x"));
    std::fs::create_dir(&crashed).unwrap();
    let f3 = tr.frames[3];
    let cut = (f3.offset + f3.comp_len as u64 / 2) as usize;
    std::fs::write(crashed.join("000001.pcap.zst.partial"), &seg[..cut]).unwrap();
    // A third whose only data frame is torn.
    let empty = arch.join(format!("{stream}-y"));
    std::fs::create_dir(&empty).unwrap();
    let f0 = tr.frames[0];
    std::fs::write(
        empty.join("000001.pcap.zst.partial"),
        &seg[..(f0.offset + 10) as usize],
    )
    .unwrap();

    let v = verify(&arch, &[]);
    assert_eq!(v.status.code(), Some(1));
    assert!(stdout(&v).contains(&format!("{stream}-x/000001.pcap.zst.partial")));
    assert!(stdout(&v).contains(&format!("{stream}-y/000001.pcap.zst.partial")));
    let r = verify(&arch, &["--repair"]);
    assert!(r.status.success(), "{}", stdout(&r));
    let rs = stdout(&r);
    assert!(rs.contains("3 data frame(s)"), "{rs}");
    assert!(
        rs.contains(&format!("removed {stream}-y/000001.pcap.zst.partial")),
        "{rs}"
    );
    assert!(!empty.join("000001.pcap.zst.partial").exists());
    assert_verifies(&arch, "after repair");
    let out = run_ok(
        zcap()
            .arg("cat")
            .arg(&arch)
            .args(["--stream", &format!("{stream}-x")]),
    )
    .stdout;
    let whole = std::fs::read(&input).unwrap();
    assert!(
        out == whole[..(tr.stream_off
            + [0, 1, 2]
                .map(|i| tr.frames[i].raw_len as u64)
                .iter()
                .sum::<u64>()) as usize]
    );
    let m = std::fs::read_to_string(arch.join("manifest.jsonl")).unwrap();
    assert!(m.contains("\"repaired\":true"));
}

#[test]
fn flipped_segment_byte_is_named() {
    let t = tempdir();
    let input = t.path().join("in.pcap");
    gen(&["--bytes", "3M"], &input);
    let arch = t.path().join("a");
    run_ok(
        zcap()
            .args(["record", "-C", "1MiB", "-r"])
            .arg(&input)
            .arg("-o")
            .arg(&arch),
    );
    assert_verifies(&arch, "fresh archive");
    let m = std::fs::read_to_string(arch.join("manifest.jsonl")).unwrap();
    let segs: Vec<String> = m
        .lines()
        .filter(|l| l.contains("\"op\":\"segment\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(segs.len() >= 2);
    let victim = &segs[1];
    // Flip a byte in the trailer, in a data frame and in the header frame, one at a time.
    let p = arch.join(victim);
    let orig = std::fs::read(&p).unwrap();
    for at in [orig.len() - 30, orig.len() / 2, 5] {
        let mut b = orig.clone();
        b[at] ^= 0x01;
        std::fs::write(&p, &b).unwrap();
        let v = verify(&arch, &[]);
        assert_eq!(v.status.code(), Some(1), "byte {at}:\n{}", stdout(&v));
        let s = stdout(&v);
        let named: Vec<&str> = s.lines().filter(|l| l.starts_with("DAMAGE")).collect();
        assert!(
            !named.is_empty() && named.iter().all(|l| l.contains(victim.as_str())),
            "byte {at}:\n{s}"
        );
        assert!(s.contains("SHA-256"), "{s}");
        // --repair does not paper over it.
        let r = verify(&arch, &["--repair"]);
        assert_eq!(r.status.code(), Some(1), "{}", stdout(&r));
    }
    std::fs::write(&p, &orig).unwrap();
    assert_verifies(&arch, "byte restored");
}

#[test]
fn edited_manifest_line_is_named() {
    let t = tempdir();
    let arch = t.path().join("a");
    for f in ["le-us-eth.pcap", "be-us-eth.pcap"] {
        run_ok(
            zcap()
                .arg("record")
                .arg("-r")
                .arg(fixture(f))
                .arg("-o")
                .arg(&arch),
        );
    }
    let path = arch.join("manifest.jsonl");
    let orig = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = orig.lines().collect();
    let n = lines
        .iter()
        .position(|l| l.contains("\"op\":\"segment\""))
        .unwrap();
    // Change the packet count of the first segment line.
    let edited_line = lines[n].replacen("\"packets\":16", "\"packets\":15", 1);
    assert_ne!(edited_line, lines[n]);
    let mut edited = lines.clone();
    edited[n] = &edited_line;
    std::fs::write(&path, edited.join("\n") + "\n").unwrap();
    let v = verify(&arch, &[]);
    assert_eq!(v.status.code(), Some(1));
    let s = stdout(&v);
    assert!(
        s.contains(&format!("line {}", n + 1)) && s.contains("altered"),
        "{s}"
    );
    // Repair refuses to rewrite history.
    let r = verify(&arch, &["--repair"]);
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        edited.join("\n") + "\n"
    );

    // Deleting a line breaks the chain at the next one.
    let mut removed = lines.clone();
    removed.remove(n);
    std::fs::write(&path, removed.join("\n") + "\n").unwrap();
    let s = stdout(&verify(&arch, &[]));
    assert!(
        s.contains(&format!("line {}", n + 1)) && s.contains("chain"),
        "{s}"
    );
    std::fs::write(&path, &orig).unwrap();
    assert_verifies(&arch, "manifest restored");
}

#[test]
fn torn_manifest_line_and_lost_segment_line_are_repaired() {
    let t = tempdir();
    let arch = t.path().join("a");
    let input = fixture("demo.pcap");
    run_ok(
        zcap()
            .arg("record")
            .arg("-r")
            .arg(&input)
            .arg("-o")
            .arg(&arch),
    );
    let path = arch.join("manifest.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    // Lose the segment and stream lines (the crash came after the rename), then leave half
    // of the segment line behind, as a torn append does.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "create, segment, flows, stream");
    let torn = format!("{}\n{}", lines[0], &lines[1][..lines[1].len() / 2]);
    std::fs::write(&path, &torn).unwrap();
    let v = verify(&arch, &[]);
    assert_eq!(v.status.code(), Some(1));
    let s = stdout(&v);
    assert!(s.contains("line 2") && s.contains("torn"), "{s}");
    assert!(s.contains("missing from the manifest"), "{s}");
    // ls and cat still work on the torn archive (they warn).
    let ls = zcap().arg("ls").arg(&arch).output().unwrap();
    assert!(ls.status.success());

    let r = verify(&arch, &["--repair"]);
    assert!(r.status.success(), "{}", stdout(&r));
    let rs = stdout(&r);
    assert!(rs.contains("dropped torn manifest line 2"), "{rs}");
    assert!(rs.contains("added the missing manifest line"), "{rs}");
    assert_verifies(&arch, "after repair");
    let out = run_ok(zcap().arg("cat").arg(&arch)).stdout;
    assert!(
        out == std::fs::read(&input).unwrap(),
        "the segment is back, byte-exact"
    );
}

#[test]
fn repair_refuses_while_a_recorder_holds_the_lock() {
    let t = tempdir();
    let arch = t.path().join("a");
    run_ok(
        zcap()
            .arg("record")
            .arg("-r")
            .arg(fixture("le-us-eth.pcap"))
            .arg("-o")
            .arg(&arch),
    );
    let lock = zcap::archive::lock(&arch)
        .unwrap()
        .expect("the lock is free");
    let r = verify(&arch, &["--repair"]);
    assert_eq!(r.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("recorder"),
        "{:?}",
        r
    );
    // Plain verify works alongside a recorder.
    assert_verifies(&arch, "with a recorder running");
    drop(lock);
    assert!(verify(&arch, &["--repair"]).status.success());
}

#[test]
fn json_report() {
    let t = tempdir();
    let arch = t.path().join("a");
    run_ok(
        zcap()
            .arg("record")
            .arg("-r")
            .arg(fixture("le-us-eth.pcap"))
            .arg("-o")
            .arg(&arch),
    );
    let o = run_ok(zcap().arg("verify").arg(&arch).arg("--json"));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["report"]["packets"], 16);
    assert_eq!(v["report"]["head"].as_str().unwrap().len(), 64);
}

/// Length of the whole little-endian pcapng blocks at the start of `b`.
fn whole_blocks_len(b: &[u8]) -> usize {
    let mut o = 0;
    while o + 8 <= b.len() {
        let len = u32::from_le_bytes(b[o + 4..o + 8].try_into().unwrap()) as usize;
        if o + len > b.len() {
            break;
        }
        o += len;
    }
    o
}

#[test]
fn sigkill_in_a_rotated_pcapng_stream_then_repair() {
    let t = tempdir();
    let input_path = t.path().join("in.pcapng");
    gen(
        &[
            "--format",
            "pcapng",
            "--linktypes",
            "1,101",
            "--late-idb",
            "--unknown-block",
            "--unknown-every",
            "500",
            "--bytes",
            "6M",
        ],
        &input_path,
    );
    let input = std::fs::read(&input_path).unwrap();
    let arch = t.path().join("a");
    let mut child = zcap()
        .args(["record", "--read", "-", "-o"])
        .arg(&arch)
        .args(["--frame-size", "64KiB", "-C", "1MiB"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let cut = 4 * (1 << 20) + 5;
    stdin.write_all(&input[..cut]).unwrap();
    stdin.flush().unwrap();
    wait_quiet(&arch, Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);

    let left = partials(&arch);
    assert_eq!(left.len(), 1);
    assert!(
        !left[0].ends_with("000001.pcapng.zst.partial"),
        "the crash should hit a rotated segment: {}",
        left[0].display()
    );
    assert_eq!(verify(&arch, &[]).status.code(), Some(1));
    let r = verify(&arch, &["--repair"]);
    assert!(r.status.success(), "{}", stdout(&r));
    assert_verifies(&arch, "after repair");
    let out = run_ok(zcap().arg("cat").arg(&arch)).stdout;
    assert!(
        out == input[..whole_blocks_len(&input[..cut])],
        "cat after repair gives every whole block received ({} of {} bytes)",
        out.len(),
        whole_blocks_len(&input[..cut])
    );
}

#[test]
fn a_deleted_segment_still_on_disk_is_removed_by_repair() {
    let t = tempdir();
    let input = t.path().join("in.pcap");
    gen(&["--bytes", "4M", "--payload", "random"], &input);
    let arch = t.path().join("a");
    run_ok(
        zcap()
            .args([
                "record",
                "-C",
                "1MiB",
                "--frame-size",
                "64KiB",
                "--max-bytes",
                "2MiB",
                "-r",
            ])
            .arg(&input)
            .arg("-o")
            .arg(&arch),
    );
    let m = std::fs::read_to_string(arch.join("manifest.jsonl")).unwrap();
    let deleted: Vec<String> = m
        .lines()
        .filter(|l| l.contains("\"op\":\"delete\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(!deleted.is_empty(), "retention deleted something");
    assert_verifies(&arch, "after retention");
    // As if the recorder died between logging the deletion and removing the file.
    std::fs::write(arch.join(&deleted[0]), b"stale").unwrap();
    let v = verify(&arch, &[]);
    assert_eq!(v.status.code(), Some(1));
    assert!(stdout(&v).contains(&deleted[0]), "{}", stdout(&v));
    assert!(verify(&arch, &["--repair"]).status.success());
    assert!(!arch.join(&deleted[0]).exists());
    assert_verifies(&arch, "after repair");
}

/// A pcapng stream whose second section has the other byte order: `verify` passes, and a
/// torn `.partial` of a segment from the second section (a rotation, so its header holds
/// that section's SHB and IDBs) is repaired to its complete frames, which `cat` gives back.
#[test]
fn mixed_endian_sections_verify_and_a_torn_partial_is_repaired() {
    let t = tempdir();
    let input = t.path().join("in.pcapng");
    gen(
        &[
            "--format",
            "pcapng",
            "--count",
            "4000",
            "--mix",
            "small",
            "--linktypes",
            "1,101",
            "--late-idb",
            "--late-idb-after",
            "2500",
            "--second-section-endian",
            "big",
            "--second-section-after",
            "1000",
        ],
        &input,
    );
    let arch = t.path().join("a");
    run_ok(
        zcap()
            .args(["record", "--frame-size", "8KiB", "-C", "48KiB", "-r"])
            .arg(&input)
            .arg("-o")
            .arg(&arch),
    );
    assert_verifies(&arch, "as recorded");
    let rels: Vec<String> = std::fs::read_to_string(arch.join("manifest.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["op"] == "segment")
        .map(|v| v["path"].as_str().unwrap().to_string())
        .collect();
    // The last segment: big-endian, after the late IDB, in a stream that began little-endian.
    let rel = rels.last().unwrap();
    let seg = std::fs::read(arch.join(rel)).unwrap();
    let tr =
        zcap::archive::index::read_trailer(&std::fs::File::open(arch.join(rel)).unwrap()).unwrap();
    assert!(
        tr.frames.len() >= 4,
        "{rel}: {} data frames",
        tr.frames.len()
    );
    assert!(
        tr.flags & zcap::archive::index::FLAG_CONT != 0,
        "{rel} is a rotation"
    );
    let first = zstd_decompress(&arch.join(&rels[0]));
    assert_eq!(
        first[8..12],
        [0x4d, 0x3c, 0x2b, 0x1a],
        "the first section is little-endian"
    );

    let stream = rel.split('/').next().unwrap();
    let crashed = arch.join(format!("{stream}-x"));
    std::fs::create_dir(&crashed).unwrap();
    let f3 = tr.frames[3];
    let partial = crashed.join("000001.pcapng.zst.partial");
    std::fs::write(
        &partial,
        &seg[..(f3.offset + f3.comp_len as u64 / 2) as usize],
    )
    .unwrap();
    // What the complete frames hold: the header and three data frames, as stock zstd reads.
    let whole = t.path().join("whole.zst");
    std::fs::write(&whole, &seg[..f3.offset as usize]).unwrap();
    let want = zstd_decompress(&whole);
    assert_eq!(want[8..12], [0x1a, 0x2b, 0x3c, 0x4d], "{rel} is big-endian");

    let v = verify(&arch, &[]);
    assert_eq!(v.status.code(), Some(1), "{}", stdout(&v));
    assert!(stdout(&v).contains(&format!("{stream}-x/000001.pcapng.zst.partial")));
    let r = verify(&arch, &["--repair"]);
    assert!(r.status.success(), "{}", stdout(&r));
    assert!(stdout(&r).contains("3 data frame(s)"), "{}", stdout(&r));
    assert_verifies(&arch, "after repair");
    let out = run_ok(
        zcap()
            .arg("cat")
            .arg(&arch)
            .args(["--stream", &format!("{stream}-x")]),
    )
    .stdout;
    assert!(
        out == want,
        "cat of the repaired stream: {} bytes, {} expected",
        out.len(),
        want.len()
    );
    if need_tool("tshark") {
        let f = t.path().join("repaired.pcapng");
        std::fs::write(&f, &out).unwrap();
        let n: u64 = tr.frames[..3].iter().map(|f| f.packets as u64).sum();
        assert_eq!(tshark_count(&f) as u64, n);
    }
}

/// Rewrites the manifest of `arch` from `entries`, re-chaining every line as someone who can
/// write the directory could.
fn rechain(arch: &Path, entries: &[zcap::archive::manifest::Entry]) {
    use zcap::archive::manifest;
    let mut text = String::new();
    let mut prev = manifest::GENESIS.to_string();
    for e in entries {
        let (line, hash) = manifest::render(e, &prev);
        text += &line;
        prev = hash;
    }
    std::fs::write(arch.join(manifest::FILE), text).unwrap();
}

fn record_demo(arch: &Path, seg: &str) {
    run_ok(
        zcap()
            .args(["record", "-C", seg, "--frame-size", "8KiB", "-r"])
            .arg(fixture("demo.pcap"))
            .arg("-o")
            .arg(arch),
    );
}

/// A middle segment swapped for a shorter one whose own trailer and manifest line agree with
/// it, every later line re-chained: the chain holds, so only continuity can tell — the next
/// segment no longer starts where this one ends, and the stream's end line counts packets
/// the segments do not hold.
#[test]
fn a_forged_middle_segment_breaks_stream_continuity() {
    use zcap::archive::manifest::{self, Entry};
    let t = tempdir();
    let (arch, other) = (t.path().join("arch"), t.path().join("other"));
    record_demo(&arch, "16KiB");
    record_demo(&other, "40KiB");
    assert_verifies(&arch, "as recorded");
    let parse = |d: &Path| {
        manifest::parse(&std::fs::read_to_string(d.join(manifest::FILE)).unwrap()).unwrap()
    };
    let donor = parse(&other)
        .into_iter()
        .find_map(|l| match l.entry {
            Entry::Segment(s) if s.seq == 2 => Some(s),
            _ => None,
        })
        .unwrap();
    let mut entries: Vec<Entry> = parse(&arch).into_iter().map(|l| l.entry).collect();
    let at = entries
        .iter()
        .position(|e| matches!(e, Entry::Segment(s) if s.seq == 2))
        .unwrap();
    let Entry::Segment(mut s) = entries[at].clone() else {
        unreachable!()
    };
    std::fs::copy(other.join(&donor.path), arch.join(&s.path)).unwrap();
    let keep = (s.stream.clone(), s.seq, s.path.clone(), s.time.clone());
    s = donor;
    (s.stream, s.seq, s.path, s.time) = keep;
    entries[at] = Entry::Segment(s.clone());
    rechain(&arch, &entries);
    let o = verify(&arch, &[]);
    let out = stdout(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("hash chain intact"),
        "the chain alone holds: {out}"
    );
    assert!(
        out.contains("bytes are missing or were added between them"),
        "continuity names the break: {out}"
    );
    assert!(
        out.contains("its end line"),
        "the end line's total disagrees: {out}"
    );

    // A segment dropped in for a number the stream never had (a gap no delete explains).
    let mut entries: Vec<Entry> = parse(&arch).into_iter().map(|l| l.entry).collect();
    entries.retain(|e| !matches!(e, Entry::Segment(x) if x.seq == 3));
    rechain(&arch, &entries);
    let out = stdout(&verify(&arch, &[]));
    assert!(
        out.contains("jumps from segment 2 to 4 and no delete line removed the ones between"),
        "{out}"
    );
}

/// A segment file dropped into a stream whose end is recorded is not crash debris: verify
/// names it as foreign and `--repair` leaves it out of the manifest.
#[test]
fn a_segment_dropped_into_an_ended_stream_is_not_adopted() {
    let t = tempdir();
    let arch = t.path().join("arch");
    record_demo(&arch, "40KiB");
    let m = std::fs::read_to_string(arch.join("manifest.jsonl")).unwrap();
    let first: String = m
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["op"] == "segment")
        .map(|v| v["path"].as_str().unwrap().to_string())
        .unwrap();
    let (stream_dir, _) = first.rsplit_once('/').unwrap();
    let planted = format!("{stream_dir}/000099.pcap.zst");
    std::fs::copy(arch.join(&first), arch.join(&planted)).unwrap();
    let out = stdout(&verify(&arch, &[]));
    assert!(
        out.contains(&format!(
            "{planted}: a segment file the manifest does not know"
        )) && out.contains("foreign, not crash debris"),
        "{out}"
    );
    let r = verify(&arch, &["--repair"]);
    let said = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{}{said}", stdout(&r));
    assert!(said.contains(&format!("not adopting {planted}")), "{said}");
    let after = std::fs::read_to_string(arch.join("manifest.jsonl")).unwrap();
    assert_eq!(after, m, "the manifest is untouched");
}
