//! Recording captures with `zcap record --read` and reading them back with `zcap ls`/`cat`:
//! byte-exact round trips, stock tools reading every segment, time seeks that decompress
//! only the frames they need, rotation, bad input, merging streams, and a closed pipe.

mod common;

use common::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Records `input` into `arch` with extra arguments; returns the exit status and stderr.
fn record(input: &Path, arch: &Path, extra: &[&str]) -> (i32, String) {
    let out = zcap()
        .args(["record", "--read"])
        .arg(input)
        .arg("-o")
        .arg(arch)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run zcap record");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn record_ok(input: &Path, arch: &Path, extra: &[&str]) {
    let (code, err) = record(input, arch, extra);
    assert_eq!(code, 0, "record {} failed:\n{err}", input.display());
}

fn cat(arch: &Path, extra: &[&str]) -> Vec<u8> {
    run_ok(zcap().arg("cat").arg(arch).args(extra)).stdout
}

/// `ls --json` rows that are segments.
fn segments(arch: &Path) -> Vec<serde_json::Value> {
    let out = run_ok(zcap().arg("ls").arg(arch).arg("--json")).stdout;
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["seq"].is_u64() && v["status"] != "partial")
        .collect()
}

/// Records of a pcap file: (timestamp ns, whole record bytes). Either byte order.
fn pcap_records(b: &[u8]) -> (bool, Vec<(i64, &[u8])>) {
    let magic = u32::from_le_bytes(b[..4].try_into().unwrap());
    let (be, nanos) = match magic {
        0xa1b2_c3d4 => (false, false),
        0xa1b2_3c4d => (false, true),
        0xd4c3_b2a1 => (true, false),
        0x4d3c_b2a1 => (true, true),
        m => panic!("not a pcap file: magic {m:08x}"),
    };
    let rd = |o: usize| {
        let a: [u8; 4] = b[o..o + 4].try_into().unwrap();
        if be {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    };
    let mut out = Vec::new();
    let mut o = 24;
    while o + 16 <= b.len() {
        let caplen = rd(o + 8) as usize;
        if o + 16 + caplen > b.len() {
            break;
        }
        let frac = rd(o + 4) as i64;
        let ts = rd(o) as i64 * 1_000_000_000 + if nanos { frac } else { frac * 1000 };
        out.push((ts, &b[o..o + 16 + caplen]));
        o += 16 + caplen;
    }
    (nanos, out)
}

fn packet_count(path: &Path, pcapng_multi_link: bool) -> usize {
    if pcapng_multi_link {
        tshark_count(path)
    } else {
        tcpdump_count(path)
    }
}

const FIXTURES: [&str; 7] = [
    "le-us-eth.pcap",
    "be-us-eth.pcap",
    "le-ns-raw.pcap",
    "be-ns-sll.pcap",
    "snaplen96.pcap",
    "two-ifaces.pcapng",
    "be-two-ifaces.pcapng",
];

#[test]
fn records_and_cats_fixtures_byte_exact() {
    let t = tempdir();
    for (i, name) in FIXTURES.iter().enumerate() {
        let input = fixture(name);
        let arch = t.path().join(format!("a{i}"));
        record_ok(&input, &arch, &[]);
        let want = std::fs::read(&input).unwrap();
        assert!(
            cat(&arch, &[]) == want,
            "{name}: cat differs from the input"
        );
        // The same through -w and with the stream named explicitly.
        let stream = segments(&arch)[0]["stream"].as_str().unwrap().to_string();
        let out = t.path().join(format!("out{i}"));
        run_ok(
            zcap()
                .arg("cat")
                .arg(&arch)
                .args(["--stream", &stream, "-w"])
                .arg(&out),
        );
        assert!(
            std::fs::read(&out).unwrap() == want,
            "{name}: cat -w differs"
        );
    }
}

#[test]
fn generated_captures_round_trip_with_small_frames() {
    let t = tempdir();
    let cases: [(&str, &[&str]); 4] = [
        (
            "be-ns.pcap",
            &["--endian", "big", "--nanos", "--bytes", "2M"],
        ),
        (
            "wifi.pcap",
            &["--linktype", "105", "--snaplen", "200", "--count", "3000"],
        ),
        (
            "ng.pcapng",
            &[
                "--format",
                "pcapng",
                "--linktypes",
                "1,101,113",
                "--late-idb",
                "--unknown-block",
                "--unknown-every",
                "300",
                "--bytes",
                "2M",
            ],
        ),
        (
            "ng-be.pcapng",
            &[
                "--format", "pcapng", "--endian", "big", "--nanos", "--bytes", "1M",
            ],
        ),
    ];
    for (name, args) in cases {
        let input = t.path().join(name);
        gen(args, &input);
        for compress in ["zstd:3", "none"] {
            let arch = t.path().join(format!("{name}-{compress}"));
            record_ok(
                &input,
                &arch,
                &[
                    "--frame-size",
                    "8KiB",
                    "-C",
                    "256KiB",
                    "--compress",
                    compress,
                ],
            );
            assert!(segments(&arch).len() > 1, "{name}: expected rotation");
            let want = std::fs::read(&input).unwrap();
            assert!(cat(&arch, &[]) == want, "{name} {compress}: cat differs");
            let v = run_ok(zcap().arg("verify").arg(&arch));
            assert!(String::from_utf8_lossy(&v.stdout).contains("verify: OK"));
        }
    }
}

#[test]
fn stock_tools_read_every_segment() {
    if !need_tool("zstd") || !need_tool("tcpdump") || !need_tool("tshark") {
        return;
    }
    let t = tempdir();
    let big = t.path().join("big.pcap");
    gen(&["--bytes", "3M"], &big);
    let mut inputs: Vec<PathBuf> = FIXTURES.iter().map(|f| fixture(f)).collect();
    inputs.push(fixture("demo.pcap"));
    inputs.push(big);
    for (i, input) in inputs.iter().enumerate() {
        let multi = input.extension().is_some_and(|e| e == "pcapng");
        let arch = t.path().join(format!("a{i}"));
        record_ok(input, &arch, &["-C", "1MiB", "--frame-size", "64KiB"]);
        let want = packet_count(input, multi);
        let mut got = 0;
        for s in segments(&arch) {
            let seg = arch.join(s["path"].as_str().unwrap());
            let plain = t.path().join(format!("seg{i}-{}", s["seq"]));
            std::fs::write(&plain, zstd_decompress(&seg)).unwrap();
            let n = packet_count(&plain, multi);
            assert_eq!(
                n as u64,
                s["packets"].as_u64().unwrap(),
                "{}",
                seg.display()
            );
            got += n;
        }
        assert_eq!(got, want, "{}: packets over all segments", input.display());
    }
}

#[test]
fn rotated_segments_round_trip_and_stand_alone() {
    let t = tempdir();
    let input = t.path().join("in.pcap");
    gen(&["--bytes", "6M", "--payload", "random"], &input);
    let arch = t.path().join("a");
    record_ok(&input, &arch, &["-C", "1MiB", "--frame-size", "64KiB"]);
    let segs = segments(&arch);
    assert!(segs.len() >= 4, "6 MiB of random payload in 1 MiB segments");
    let want = std::fs::read(&input).unwrap();
    assert!(cat(&arch, &[]) == want);
    // Each segment is a pcap of its own: the header, then its records in order.
    let (_, all) = pcap_records(&want);
    let mut next = 0;
    for s in &segs {
        let seg = arch.join(s["path"].as_str().unwrap());
        let bytes = zstd::stream::decode_all(std::fs::File::open(&seg).unwrap()).unwrap();
        assert_eq!(bytes[..24], want[..24], "{}: header", seg.display());
        let (_, recs) = pcap_records(&bytes);
        assert_eq!(recs.len() as u64, s["packets"].as_u64().unwrap());
        assert!(recs.iter().zip(&all[next..]).all(|(a, b)| a.1 == b.1));
        next += recs.len();
    }
    assert_eq!(next, all.len());
    if need_tool("tcpdump") {
        for s in &segs {
            let seg = arch.join(s["path"].as_str().unwrap());
            let plain = t.path().join("seg.pcap");
            std::fs::write(
                &plain,
                zstd::stream::decode_all(std::fs::File::open(&seg).unwrap()).unwrap(),
            )
            .unwrap();
            assert_eq!(tcpdump_count(&plain) as u64, s["packets"].as_u64().unwrap());
        }
    }
}

fn stat_line(stderr: &[u8], key: &str) -> u64 {
    let s = String::from_utf8_lossy(stderr);
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no `{key}` in:\n{s}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn time_seek_decompresses_only_overlapping_frames() {
    let t = tempdir();
    let input = t.path().join("in.pcap");
    gen(&["--bytes", "8M", "--rate", "5000"], &input);
    let arch = t.path().join("a");
    record_ok(&input, &arch, &["--frame-size", "16KiB", "-C", "2MiB"]);
    let segs = segments(&arch);
    let frames: u64 = segs.iter().map(|s| s["frames"].as_u64().unwrap()).sum();
    assert!(frames >= 200, "only {frames} frames");
    let first = segs
        .iter()
        .map(|s| s["first_ns"].as_i64().unwrap())
        .min()
        .unwrap();
    let last = segs
        .iter()
        .map(|s| s["last_ns"].as_i64().unwrap())
        .max()
        .unwrap();
    let span = last - first;
    let want = std::fs::read(&input).unwrap();
    let (_, all) = pcap_records(&want);
    for at in [0.0, 0.37, 0.5, 0.99] {
        let from = first + (span as f64 * at) as i64;
        let to = from + span / 100;
        // What the index says overlaps the window.
        let mut overlapping = 0;
        for s in &segs {
            let f = std::fs::File::open(arch.join(s["path"].as_str().unwrap())).unwrap();
            let tr = zcap::archive::index::read_trailer(&f).unwrap();
            overlapping += tr.frames.iter().filter(|e| e.overlaps(from, to)).count() as u64;
        }
        let out = run_ok(
            zcap()
                .arg("cat")
                .arg(&arch)
                .arg("--from")
                .arg(zcap::units::format_ns(from))
                .arg("--to")
                .arg(zcap::units::format_ns(to))
                .arg("--stats"),
        );
        let n = stat_line(&out.stderr, "frames decompressed:");
        assert!(
            n >= overlapping && n <= overlapping + 2,
            "window at {at}: decompressed {n} frames, {overlapping} overlap it"
        );
        assert!(n * 20 < frames, "a 1% window read {n} of {frames} frames");
        // Exactly the input's records inside the window, in order, after the header.
        assert_eq!(out.stdout[..24], want[..24]);
        let (_, got) = pcap_records(&out.stdout);
        let expect: Vec<&[u8]> = all
            .iter()
            .filter(|(ts, _)| *ts >= from && *ts <= to)
            .map(|r| r.1)
            .collect();
        assert!(!expect.is_empty());
        assert!(
            got.iter().map(|r| r.1).eq(expect.iter().copied()),
            "window at {at}: {} records, want {}",
            got.len(),
            expect.len()
        );
    }
    // Epoch seconds work as well as RFC 3339, and a window after the data is a valid
    // empty capture.
    let late = format!("{}", last / 1_000_000_000 + 100);
    let out = cat(&arch, &["--from", &late]);
    assert_eq!(out, want[..24]);
}

#[test]
fn pcapng_window_keeps_interfaces_declared_before_it() {
    if !need_tool("tshark") {
        return;
    }
    let t = tempdir();
    let input = t.path().join("in.pcapng");
    gen(
        &[
            "--format",
            "pcapng",
            "--linktypes",
            "1,101",
            "--late-idb",
            "--late-idb-after",
            "50",
            "--count",
            "20000",
        ],
        &input,
    );
    let arch = t.path().join("a");
    record_ok(&input, &arch, &["--frame-size", "16KiB"]);
    let segs = segments(&arch);
    let first = segs[0]["first_ns"].as_i64().unwrap();
    let last = segs[0]["last_ns"].as_i64().unwrap();
    let from = first + (last - first) / 2;
    let to = from + (last - first) / 50;
    let out = t.path().join("w.pcapng");
    run_ok(
        zcap()
            .arg("cat")
            .arg(&arch)
            .arg("--from")
            .arg(zcap::units::format_ns(from))
            .arg("--to")
            .arg(zcap::units::format_ns(to))
            .arg("-w")
            .arg(&out),
    );
    // tshark reads it (the late IDB came along) and sees the packets in the window.
    let n = tshark_count(&out);
    assert!(n > 0);
    let all = run_ok(Command::new("tshark").arg("-r").arg(&input).args([
        "-T",
        "fields",
        "-e",
        "frame.time_epoch",
    ]))
    .stdout;
    let inside = String::from_utf8_lossy(&all)
        .lines()
        .filter(|l| {
            let ns = (l.trim().parse::<f64>().unwrap() * 1e9).round() as i64;
            ns >= from && ns <= to
        })
        .count();
    assert!(
        (n as i64 - inside as i64).abs() <= 2,
        "{n} packets out, {inside} in the window (tshark's float times may differ at the edges)"
    );
}

#[test]
fn bad_input_is_named_and_complete_records_are_kept() {
    let t = tempdir();
    // (fixture, byte offset of the bad unit, complete records before it)
    let cases = [
        ("bad-magic.pcap", 0u64, 0usize),
        ("truncated.pcap", 1477, 16),
        ("huge-caplen.pcap", 729, 8),
        ("bad-block-len.pcapng", 940, 8),
        ("empty.pcap", 0, 0),
    ];
    for (i, (name, offset, good)) in cases.into_iter().enumerate() {
        let input = fixture(name);
        let arch = t.path().join(format!("a{i}"));
        let (code, err) = record(&input, &arch, &[]);
        assert_eq!(code, 1, "{name}: exit status; stderr:\n{err}");
        assert!(
            err.contains(&format!("byte offset {offset}")),
            "{name}: the error should name byte offset {offset}:\n{err}"
        );
        let out = cat(&arch, &[]);
        let want = std::fs::read(&input).unwrap();
        if good == 0 {
            assert!(out.is_empty(), "{name}: nothing was complete");
        } else {
            assert!(
                out == want[..offset as usize],
                "{name}: cat should give back the {good} records before offset {offset}"
            );
        }
        if name.ends_with(".pcap") && good > 0 {
            assert_eq!(pcap_records(&out).1.len(), good, "{name}");
        }
        // The stream's end and its error are listed.
        let ls = run_ok(zcap().arg("ls").arg(&arch)).stdout;
        assert!(String::from_utf8_lossy(&ls).contains("error:"), "{name}");
        let v = run_ok(zcap().arg("verify").arg(&arch));
        assert!(
            String::from_utf8_lossy(&v.stdout).contains("verify: OK"),
            "{name}"
        );
    }
}

#[test]
fn merges_streams_by_time() {
    let t = tempdir();
    let a = t.path().join("a.pcap");
    let b = t.path().join("b.pcap");
    gen(&["--seed", "1", "--count", "3000", "--rate", "2000"], &a);
    gen(
        &[
            "--seed",
            "2",
            "--count",
            "2000",
            "--rate",
            "1500",
            "--nanos",
            "--start",
            "1764057600.3",
        ],
        &b,
    );
    let arch = t.path().join("arch");
    record_ok(
        &a,
        &arch,
        &["--frame-size", "32KiB", "--stream-name", "one"],
    );
    record_ok(
        &b,
        &arch,
        &["--frame-size", "32KiB", "--stream-name", "two"],
    );
    let out = cat(&arch, &[]);
    let (nanos, recs) = pcap_records(&out);
    assert!(nanos, "a nanosecond input makes a nanosecond merge");
    assert_eq!(recs.len(), 5000);
    assert!(recs.windows(2).all(|w| w[0].0 <= w[1].0), "sorted by time");
    // Every input packet is there with its timestamp and bytes.
    let mut want: Vec<(i64, Vec<u8>)> = Vec::new();
    for f in [&a, &b] {
        let bytes = std::fs::read(f).unwrap();
        for (ts, r) in pcap_records(&bytes).1 {
            want.push((ts, r[8..].to_vec()));
        }
    }
    let mut got: Vec<(i64, Vec<u8>)> = recs.iter().map(|(ts, r)| (*ts, r[8..].to_vec())).collect();
    want.sort();
    got.sort();
    assert!(got == want, "merged packets differ from the inputs");
    // One stream alone is still byte-exact.
    assert!(cat(&arch, &["--stream", "two"]) == std::fs::read(&b).unwrap());
    if need_tool("tcpdump") {
        let p = t.path().join("m.pcap");
        std::fs::write(&p, &out).unwrap();
        assert_eq!(tcpdump_count(&p), 5000);
    }
    // An unknown stream is an error that lists the known ones.
    let o = zcap()
        .arg("cat")
        .arg(&arch)
        .args(["--stream", "three"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("three") && e.contains("one") && e.contains("two"),
        "{e}"
    );
}

#[test]
fn merges_different_link_types_into_pcapng() {
    if !need_tool("tshark") {
        return;
    }
    let t = tempdir();
    let arch = t.path().join("arch");
    for f in ["le-us-eth.pcap", "le-ns-raw.pcap", "two-ifaces.pcapng"] {
        record_ok(&fixture(f), &arch, &[]);
    }
    let out = t.path().join("m.pcapng");
    run_ok(zcap().arg("cat").arg(&arch).arg("-w").arg(&out));
    assert_eq!(
        &std::fs::read(&out).unwrap()[..4],
        &[0x0a, 0x0d, 0x0d, 0x0a]
    );
    assert_eq!(tshark_count(&out), 16 + 16 + 24);
    let times = run_ok(Command::new("tshark").arg("-r").arg(&out).args([
        "-T",
        "fields",
        "-e",
        "frame.time_epoch",
        "-e",
        "frame.interface_id",
    ]))
    .stdout;
    let rows: Vec<(f64, u32)> = String::from_utf8_lossy(&times)
        .lines()
        .map(|l| {
            let mut f = l.split('\t');
            (
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert!(rows.windows(2).all(|w| w[0].0 <= w[1].0), "sorted by time");
    let ifaces: std::collections::BTreeSet<u32> = rows.iter().map(|r| r.1).collect();
    assert_eq!(ifaces.len(), 4, "one interface per stream and interface");
}

#[test]
fn cat_into_a_closed_pipe_exits_quietly() {
    let t = tempdir();
    let input = t.path().join("in.pcap");
    gen(&["--bytes", "4M"], &input);
    let arch = t.path().join("a");
    record_ok(&input, &arch, &[]);
    let mut child = zcap()
        .arg("cat")
        .arg(&arch)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 100];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut head)
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(head[..], std::fs::read(&input).unwrap()[..100]);
    // The same through a shell pipeline, as users type it.
    let sh = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{}' cat '{}' | head -c 100 >/dev/null",
            env!("CARGO_BIN_EXE_zcap"),
            arch.display()
        ))
        .output()
        .unwrap();
    assert!(
        sh.status.success(),
        "{}",
        String::from_utf8_lossy(&sh.stderr)
    );
}

#[test]
fn ls_lists_segments_and_totals() {
    let t = tempdir();
    let arch = t.path().join("a");
    let input = t.path().join("in.pcap");
    gen(&["--bytes", "3M", "--payload", "random"], &input);
    record_ok(&input, &arch, &["-C", "1MiB", "--stream-name", "s1"]);
    let out = String::from_utf8(run_ok(zcap().arg("ls").arg(&arch)).stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("STREAM"), "{out}");
    let segs = segments(&arch);
    assert_eq!(lines.len(), 1 + segs.len() + 1, "{out}");
    assert!(
        lines[1].contains("s1") && lines[1].contains("2025-11-25T08:00:00"),
        "{out}"
    );
    assert!(lines.last().unwrap().starts_with("total:"), "{out}");
    let packets: u64 = segs.iter().map(|s| s["packets"].as_u64().unwrap()).sum();
    let bytes = std::fs::read(&input).unwrap();
    let (_, recs) = pcap_records(&bytes);
    assert_eq!(packets, recs.len() as u64);
    assert!(segs
        .iter()
        .all(|s| s["status"] == "ok" && s["ratio"].as_f64().unwrap() > 0.5));
}

/// Four pcapng sections in one stream: two interfaces with a late IDB, an empty section,
/// SLL, then the first again.
fn multi_section_capture(dir: &Path) -> PathBuf {
    let parts = [
        (
            "s1",
            vec![
                "--format",
                "pcapng",
                "--count",
                "3000",
                "--linktypes",
                "1,101",
                "--late-idb",
            ],
        ),
        ("s2", vec!["--format", "pcapng", "--count", "0"]),
        (
            "s3",
            vec![
                "--format",
                "pcapng",
                "--count",
                "2000",
                "--seed",
                "3",
                "--linktypes",
                "113",
                "--start",
                "1764057700",
            ],
        ),
    ];
    let mut all = Vec::new();
    let mut first = Vec::new();
    for (name, args) in parts {
        let p = dir.join(format!("{name}.pcapng"));
        gen(&args, &p);
        let b = std::fs::read(&p).unwrap();
        if first.is_empty() {
            first = b.clone();
        }
        all.extend(b);
    }
    all.extend(first);
    let p = dir.join("sections.pcapng");
    std::fs::write(&p, all).unwrap();
    p
}

#[test]
fn pcapng_sections_round_trip_and_seek() {
    let t = tempdir();
    let input = multi_section_capture(t.path());
    let arch = t.path().join("a");
    record_ok(&input, &arch, &["--frame-size", "16KiB", "-C", "200KiB"]);
    assert!(cat(&arch, &[]) == std::fs::read(&input).unwrap());
    if !need_tool("tshark") {
        return;
    }
    let times = run_ok(Command::new("tshark").arg("-r").arg(&input).args([
        "-T",
        "fields",
        "-e",
        "frame.time_epoch",
    ]))
    .stdout;
    let times: Vec<f64> = String::from_utf8_lossy(&times)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    // Windows inside one section, across sections, and in the last one.
    for (from, to) in [
        (1764057600.2, 1764057600.9),
        (1764057601.5, 1764057702.0),
        (1764057700.2, 1764057700.3),
    ] {
        let out = t.path().join("w.pcapng");
        run_ok(
            zcap()
                .arg("cat")
                .arg(&arch)
                .args(["--from", &from.to_string(), "--to", &to.to_string(), "-w"])
                .arg(&out),
        );
        let want = times.iter().filter(|&&x| x >= from && x <= to).count();
        assert_eq!(tshark_count(&out), want, "window {from}..{to}");
    }
}

#[test]
fn pcapng_sections_verify() {
    let t = tempdir();
    let input = multi_section_capture(t.path());
    let arch = t.path().join("a");
    record_ok(&input, &arch, &["--frame-size", "16KiB", "-C", "200KiB"]);
    let v = zcap().arg("verify").arg(&arch).output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

// pcapng sections in different byte orders. libpcap 1.10 (tcpdump) reads the second
// section's block lengths in the first one's order and stops (fixtures/README.md), so tshark
// is the oracle here.

const MIXED: [(&str, [bool; 2]); 2] = [
    ("le-be-sections.pcapng", [false, true]),
    ("be-le-sections.pcapng", [true, false]),
];

/// One packet as tshark reads it: (epoch time, interface (empty for pcap), original length,
/// bytes in hex).
type TsharkPkt = (String, String, String, String);

fn tshark_packets(path: &Path) -> Vec<TsharkPkt> {
    let out = run_ok(
        Command::new("tshark")
            .arg("-r")
            .arg(path)
            .args(["-T", "ek", "-x"]),
    )
    .stdout;
    String::from_utf8(out)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["layers"].is_object())
        .map(|v| {
            let l = &v["layers"];
            let f = |k: &str| l["frame"][k].as_str().unwrap().to_string();
            (
                f("frame_frame_time_epoch"),
                l["frame"]["frame_frame_interface_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                f("frame_frame_len"),
                l["frame_raw"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Byte order of the pcapng SHB that `b` starts with: true for big-endian.
fn shb_big_endian(b: &[u8]) -> bool {
    assert_eq!(&b[..4], &[0x0a, 0x0d, 0x0d, 0x0a], "starts with an SHB");
    match b[8..12] {
        [0x4d, 0x3c, 0x2b, 0x1a] => false,
        [0x1a, 0x2b, 0x3c, 0x4d] => true,
        ref m => panic!("bad byte-order magic {m:02x?}"),
    }
}

/// Checks an archive holding one recording of `input`: `cat` gives it back byte for byte,
/// every segment decompresses (`zstd -dc`) into a capture that tshark reads and that starts
/// with an SHB, the segments' packets together are the input's in order, and `verify`
/// passes. Returns each segment's byte order and whether it continues a section (`cont`).
fn check_mixed_archive(input: &Path, arch: &Path, tmp: &Path) -> Vec<(bool, bool)> {
    let cont: std::collections::HashMap<String, bool> =
        std::fs::read_to_string(arch.join("manifest.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["op"] == "segment")
            .map(|v| {
                (
                    v["path"].as_str().unwrap().into(),
                    v["cont"].as_bool().unwrap(),
                )
            })
            .collect();
    let want = std::fs::read(input).unwrap();
    let got = cat(arch, &[]);
    assert!(
        got == want,
        "{}: cat differs from the input ({} bytes, {} expected, first difference at {:?})",
        input.display(),
        got.len(),
        want.len(),
        got.iter().zip(&want).position(|(a, b)| a != b)
    );
    let mut orders = Vec::new();
    let mut pkts = Vec::new();
    if need_tool("zstd") && need_tool("tshark") {
        for s in segments(arch) {
            let seg = arch.join(s["path"].as_str().unwrap());
            let plain = tmp.join(format!("seg-{}.pcapng", s["seq"]));
            let bytes = zstd_decompress(&seg);
            orders.push((shb_big_endian(&bytes), cont[s["path"].as_str().unwrap()]));
            std::fs::write(&plain, bytes).unwrap();
            let p = tshark_packets(&plain);
            assert_eq!(
                p.len() as u64,
                s["packets"].as_u64().unwrap(),
                "{}",
                seg.display()
            );
            pkts.extend(p);
        }
        assert!(
            pkts == tshark_packets(input),
            "{}: the segments' packets",
            input.display()
        );
    }
    let v = zcap().arg("verify").arg(arch).output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    orders
}

#[test]
fn mixed_endian_sections_round_trip_and_every_segment_reads() {
    let t = tempdir();
    for (i, (name, want)) in MIXED.iter().enumerate() {
        let input = fixture(name);
        let arch = t.path().join(format!("a{i}"));
        record_ok(&input, &arch, &[]);
        let orders = check_mixed_archive(&input, &arch, t.path());
        if !orders.is_empty() {
            assert_eq!(
                orders,
                want.map(|be| (be, false)),
                "{name}: one segment a section"
            );
        }
    }
}

#[test]
fn mixed_endian_sections_rotate_and_seek() {
    let t = tempdir();
    for first_big in [false, true] {
        // A late IDB in the second section, and segments rotated inside both sections.
        let input = t.path().join(format!("mixed-{first_big}.pcapng"));
        let (first, second) = if first_big {
            ("big", "little")
        } else {
            ("little", "big")
        };
        gen(
            &[
                "--format",
                "pcapng",
                "--count",
                "6000",
                "--mix",
                "small",
                "--nanos",
                "--linktypes",
                "1,101",
                "--late-idb",
                "--late-idb-after",
                "4000",
                "--endian",
                first,
                "--second-section-endian",
                second,
                "--second-section-after",
                "2000",
                "--unknown-block",
                "--unknown-every",
                "1500",
            ],
            &input,
        );
        let arch = t.path().join(format!("a-{first_big}"));
        record_ok(&input, &arch, &["--frame-size", "8KiB", "-C", "24KiB"]);
        let orders = check_mixed_archive(&input, &arch, t.path());
        if orders.is_empty() {
            continue;
        }
        // The first section's segments, then the second's, each rotated at least once.
        let split = orders.iter().position(|o| o.0 != first_big).unwrap();
        assert!(split >= 2 && orders.len() - split >= 2, "{orders:?}");
        assert!(
            orders[..split].iter().all(|o| o.0 == first_big),
            "{orders:?}"
        );
        assert!(
            orders[split..].iter().all(|o| o.0 != first_big),
            "{orders:?}"
        );
        assert!(
            !orders[0].1 && !orders[split].1,
            "a section starts unflagged: {orders:?}"
        );
        assert!(orders[1..split]
            .iter()
            .chain(&orders[split + 1..])
            .all(|o| o.1));

        // Windows inside each section and across the boundary, in whole nanoseconds: RFC 3339
        // (epoch seconds go through an f64, which cannot hold a nanosecond epoch).
        let pkts = tshark_packets(&input);
        let ns = |t: &str| {
            let (s, f) = t.split_once('.').unwrap();
            s.parse::<i64>().unwrap() * 1_000_000_000 + format!("{f:0<9}").parse::<i64>().unwrap()
        };
        let times: Vec<i64> = pkts.iter().map(|p| ns(&p.0)).collect();
        for (a, b) in [(100, 900), (1500, 2500), (3900, 5900)] {
            let out = t.path().join("w.pcapng");
            run_ok(
                zcap()
                    .arg("cat")
                    .arg(&arch)
                    .args(["--from", &zcap::units::format_ns(times[a])])
                    .args(["--to", &zcap::units::format_ns(times[b]), "-w"])
                    .arg(&out),
            );
            let (from, to) = (times[a], times[b]);
            let want = times.iter().filter(|&&x| x >= from && x <= to).count();
            assert_eq!(tshark_count(&out), want, "window {a}..{b}");
        }
    }
}

#[test]
fn merges_mixed_endian_sections_with_other_streams() {
    if !need_tool("tshark") {
        return;
    }
    let t = tempdir();
    let arch = t.path().join("arch");
    let inputs = [
        "le-be-sections.pcapng",
        "be-le-sections.pcapng",
        "le-us-eth.pcap",
        "be-two-ifaces.pcapng",
    ];
    for f in inputs {
        record_ok(&fixture(f), &arch, &[]);
    }
    let out = t.path().join("m.pcapng");
    run_ok(zcap().arg("cat").arg(&arch).arg("-w").arg(&out));
    assert!(
        !shb_big_endian(&std::fs::read(&out).unwrap()),
        "the merge is little-endian"
    );
    let got = tshark_packets(&out);
    assert!(
        got.windows(2)
            .all(|w| w[0].0.parse::<f64>().unwrap() <= w[1].0.parse::<f64>().unwrap()),
        "sorted by time"
    );
    // Every input packet, with its time, length and bytes, exactly once.
    let key = |p: &TsharkPkt| (p.0.clone(), p.2.clone(), p.3.clone());
    let mut want: Vec<_> = inputs
        .iter()
        .flat_map(|f| tshark_packets(&fixture(f)))
        .map(|p| key(&p))
        .collect();
    let mut have: Vec<_> = got.iter().map(key).collect();
    want.sort();
    have.sort();
    assert!(
        have == want,
        "{} packets merged, {} expected",
        have.len(),
        want.len()
    );
    // One interface per (stream, section, interface): 3 + 3 + 1 + 2.
    let ifaces: std::collections::BTreeSet<&str> = got.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(ifaces.len(), 9, "{ifaces:?}");
}

/// Over loopback: `zcap replay --to` sends each mixed-endian file, and an archive recorded
/// from one, to `zcap record --listen`; every stream arrives byte for byte.
#[test]
fn mixed_endian_sections_over_loopback() {
    let t = tempdir();
    let from_file = t.path().join("src-arch");
    record_ok(&fixture(MIXED[0].0), &from_file, &[]);
    let arch = t.path().join("arch");
    let rec = start("recv", &arch, &["--max-streams", "3"]);
    let sources = [fixture(MIXED[0].0), fixture(MIXED[1].0), from_file];
    for src in &sources {
        run_ok(
            zcap()
                .arg("replay")
                .arg(src)
                .args(["--to", &rec.addr(), "--topspeed"]),
        );
    }
    let (st, log) = rec.wait(std::time::Duration::from_secs(60));
    assert!(st.success(), "recorder exit {st}:\n{log}");
    let want: Vec<Vec<u8>> = [MIXED[0].0, MIXED[1].0, MIXED[0].0]
        .iter()
        .map(|f| std::fs::read(fixture(f)).unwrap())
        .collect();
    assert_streams(&arch, &want, &log);
    let v = zcap().arg("verify").arg(&arch).output().unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    // Each stream's segments: one a section, in the section's byte order, read by tshark.
    if !need_tool("zstd") || !need_tool("tshark") {
        return;
    }
    let mut orders: Vec<(String, u64, bool)> = segments(&arch)
        .iter()
        .map(|s| {
            let seg = arch.join(s["path"].as_str().unwrap());
            let plain = t.path().join("seg.pcapng");
            let bytes = zstd_decompress(&seg);
            let be = shb_big_endian(&bytes);
            std::fs::write(&plain, bytes).unwrap();
            assert_eq!(tshark_count(&plain) as u64, s["packets"].as_u64().unwrap());
            (
                s["stream"].as_str().unwrap().into(),
                s["seq"].as_u64().unwrap(),
                be,
            )
        })
        .collect();
    orders.sort();
    let mut per_stream: Vec<Vec<bool>> = orders
        .chunk_by(|a, b| a.0 == b.0)
        .map(|c| c.iter().map(|o| o.2).collect())
        .collect();
    per_stream.sort();
    assert_eq!(
        per_stream,
        vec![vec![false, true], vec![false, true], vec![true, false]]
    );
}
