//! Filtered reads and the flow listing against the stock tools: `zcap cat DIR FILTER` gives
//! the records `zstd -dc SEGMENT | tcpdump -r - -w - FILTER` gives, segment after segment,
//! with and without the flow index (and with a damaged one); a rare host costs about the frames
//! that hold it; `zcap flows` lists tshark's conversations, merged across segments.
//!
//! Archives are recorded with small segments and frames (`-C 64KiB --frame-size 8KiB`) so
//! that every capture spans many of both; `zcap index` builds the sidecars.

mod common;

use common::*;
use pcap_file::pcap::PcapReader;
use pcap_file::TsResolution;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One record: timestamp (ns), original length, captured bytes.
type Rec = (i64, u32, Vec<u8>);

/// The records of a pcap file and its link type.
fn pcap_records(bytes: &[u8]) -> (u32, Vec<Rec>) {
    let mut r = PcapReader::new(bytes).expect("a pcap file");
    let lt = u32::from(r.header().datalink);
    let frac = match r.header().ts_resolution {
        TsResolution::MicroSecond => 1000,
        TsResolution::NanoSecond => 1,
    };
    let mut out = Vec::new();
    // Raw records: pcap-file's checked ones refuse an original length above the snaplen.
    while let Some(p) = r.next_raw_packet() {
        let p = p.expect("a record");
        let ts = i64::from(p.ts_sec) * 1_000_000_000 + i64::from(p.ts_frac) * frac;
        out.push((ts, p.orig_len, p.data.into_owned()));
    }
    (lt, out)
}

fn is_pcapng(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a])
}

/// tcpdump's records of `file` (pcap or pcapng) that `filter` selects, as `tcpdump -w` writes
/// them (pcap, microseconds).
fn tcpdump_records(file: &Path, filter: &str) -> Vec<Rec> {
    let mut cmd = Command::new("tcpdump");
    cmd.arg("-r").arg(file).args(["-w", "-"]);
    if !filter.is_empty() {
        cmd.arg(filter);
    }
    pcap_records(&run_ok(&mut cmd).stdout).1
}

/// Records `input` without a flow index (an archive from before it, for `zcap index`).
fn record(input: &Path, arch: &Path) {
    record_with(input, arch, &["--no-flow-index"]);
}

fn record_with(input: &Path, arch: &Path, extra: &[&str]) {
    run_ok(
        zcap()
            .args(["record", "-r"])
            .arg(input)
            .arg("-o")
            .arg(arch)
            .args(["-C", "64KiB", "--frame-size", "8KiB"])
            .args(extra),
    );
}

fn index(arch: &Path) {
    run_ok(zcap().arg("index").arg(arch));
}

/// The archive's segment files, in stream order.
fn segment_files(arch: &Path) -> Vec<PathBuf> {
    let out = run_ok(zcap().arg("ls").arg(arch).arg("--json"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["status"] == "ok")
        .map(|v| arch.join(v["path"].as_str().unwrap()))
        .collect()
}

/// What the issue names as the reference: every segment decompressed with zstd and filtered
/// by tcpdump, one after the other.
fn reference(arch: &Path, tmp: &Path, filter: &str) -> Vec<Rec> {
    let mut all = Vec::new();
    for seg in segment_files(arch) {
        let plain = tmp.join("segment.pcap");
        std::fs::write(&plain, zstd_decompress(&seg)).unwrap();
        all.extend(tcpdump_records(&plain, filter));
    }
    all
}

fn stat(stderr: &str, key: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no `{key}` in:\n{stderr}"))
        .trim()
        .parse()
        .unwrap()
}

/// `zcap cat ARCH --stats FILTER`: its records (a pcapng output read back through tcpdump,
/// which writes pcap in microseconds like the reference), the raw output and the stats.
fn cat(arch: &Path, tmp: &Path, filter: &str) -> (Vec<Rec>, Vec<u8>, String) {
    let out = run_ok(zcap().arg("cat").arg(arch).arg("--stats").arg(filter));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let recs = if is_pcapng(&out.stdout) {
        let f = tmp.join("ours.pcapng");
        std::fs::write(&f, &out.stdout).unwrap();
        tcpdump_records(&f, "")
    } else {
        let (_, recs) = pcap_records(&out.stdout);
        // The reference is in microseconds, as tcpdump reads by default.
        recs.into_iter()
            .map(|(ts, l, d)| (ts - ts.rem_euclid(1000), l, d))
            .collect()
    };
    (recs, out.stdout, stderr)
}

/// Checks every filter on an unindexed archive and an indexed copy of it against the
/// reference; returns, per filter, (records, frames decompressed unindexed, indexed).
fn battery(input: &Path, tmp: &Path, filters: &[&str]) -> Vec<(usize, u64, u64)> {
    let plain = tmp.join("plain");
    let indexed = tmp.join("indexed");
    let live = tmp.join("live");
    record(input, &plain);
    run_ok(Command::new("cp").arg("-a").arg(&plain).arg(&indexed));
    index(&indexed);
    // The recorder's own index, written as it framed the packets.
    record_with(input, &live, &[]);
    let segments = segment_files(&plain).len() as u64;
    assert!(
        segments > 3,
        "{}: only {segments} segments",
        input.display()
    );
    let mut out = Vec::new();
    for f in filters {
        let want = reference(&plain, tmp, f);
        let (got, _, st) = cat(&plain, tmp, f);
        assert_eq!(stat(&st, "sidecars read:"), 0);
        assert_eq!(stat(&st, "segments without a usable flow index:"), segments);
        assert_eq!(got.len(), want.len(), "`{f}` unindexed: record count");
        assert!(
            got == want,
            "`{f}` unindexed: records differ from tcpdump's"
        );
        let (got_i, _, st_i) = cat(&indexed, tmp, f);
        assert_eq!(stat(&st_i, "sidecars read:"), segments, "{st_i}");
        assert_eq!(got_i.len(), want.len(), "`{f}` indexed: record count");
        assert!(
            got_i == want,
            "`{f}` indexed: records differ from tcpdump's"
        );
        assert_eq!(stat(&st_i, "packets matched:"), want.len() as u64);
        let (got_l, _, st_l) = cat(&live, tmp, f);
        assert!(
            got_l == want,
            "`{f}` recorded with its index: records differ"
        );
        assert_eq!(
            stat(&st_l, "frames decompressed:"),
            stat(&st_i, "frames decompressed:"),
            "`{f}`: the recorder's index prunes as zcap index's does"
        );
        let (a, b) = (
            stat(&st, "frames decompressed:"),
            stat(&st_i, "frames decompressed:"),
        );
        assert!(
            b <= a,
            "`{f}`: the index made the read cost more ({b} > {a})"
        );
        eprintln!(
            "{} `{f}`: {} records; frames decompressed {a} without the index, {b} with it",
            input.display(),
            want.len()
        );
        out.push((want.len(), a, b));
    }
    out
}

#[test]
fn filtered_cat_equals_tcpdump_on_mixed_ipv4_ipv6() {
    if !need_tool("tcpdump") || !need_tool("zstd") {
        return;
    }
    let tmp = tempdir();
    let input = tmp.path().join("mixed.pcap");
    gen(&["--count", "4000", "--l3", "mixed"], &input);
    let filters = [
        "host 10.0.6.140",
        "ip6 host fd00::a5e:b04b",
        "host 10.0.6.140 or fd00::a5e:b04b",
        "net 10.0.0.0/16",
        "port 22",
        "src port 3306",
        "tcp and port 80",
        "udp or port 22",
        "not tcp",
        "host 10.12.60.146 and not port 22",
        "ip6",
        "ip6 and net fd00::/16 and portrange 8000-9000",
        "tcp[13] & 8 != 0",
        "host 192.0.2.99",
        "icmp or arp",
    ];
    let r = battery(&input, tmp.path(), &filters);
    for (f, (n, _, _)) in filters.iter().zip(&r) {
        if [
            "host 10.0.6.140",
            "ip6 host fd00::a5e:b04b",
            "port 22",
            "ip6",
            "udp or port 22",
            "net 10.0.0.0/16",
            "tcp[13] & 8 != 0",
        ]
        .contains(f)
        {
            assert!(
                *n > 0,
                "`{f}` matched nothing: the capture lacks what it tests"
            );
        }
    }
    // Selective filters read fewer frames with the index; a filter it cannot model reads all.
    let at = |f: &str| r[filters.iter().position(|x| *x == f).unwrap()];
    for f in ["host 10.0.6.140", "ip6 host fd00::a5e:b04b", "port 22"] {
        assert!(at(f).2 < at(f).1, "`{f}`: {:?}", at(f));
    }
    assert_eq!(
        at("host 192.0.2.99").2,
        0,
        "no frame can hold an absent host"
    );
    assert_eq!(at("tcp[13] & 8 != 0").2, at("tcp[13] & 8 != 0").1);

    // One stream of pcap: byte for byte what tcpdump writes from the input itself.
    let plain = tmp.path().join("indexed");
    for f in ["port 22", "host 192.0.2.99"] {
        let ours = run_ok(zcap().arg("cat").arg(&plain).arg(f)).stdout;
        let theirs = run_ok(
            Command::new("tcpdump")
                .arg("-r")
                .arg(&input)
                .args(["-w", "-", f]),
        )
        .stdout;
        assert!(ours == theirs, "`{f}`: not tcpdump's bytes");
    }
    // Words as separate arguments are one expression; flags may follow them.
    let split = run_ok(
        zcap()
            .arg("cat")
            .arg(&plain)
            .args(["tcp", "and", "port", "80", "-w"])
            .arg(tmp.path().join("split.pcap")),
    );
    assert!(split.stdout.is_empty());
    let joined = run_ok(zcap().arg("cat").arg(&plain).arg("tcp and port 80")).stdout;
    assert!(std::fs::read(tmp.path().join("split.pcap")).unwrap() == joined);
}

#[test]
fn filtered_cat_equals_tcpdump_in_qinq_with_ipv6_extension_headers() {
    if !need_tool("tcpdump") || !need_tool("zstd") {
        return;
    }
    let tmp = tempdir();
    let input = tmp.path().join("qinq.pcap");
    gen(
        &[
            "--count",
            "3000",
            "--l3",
            "mixed",
            "--ipv6-ext",
            "--vlan",
            "200,100",
        ],
        &input,
    );
    let filters = [
        "host 10.0.6.140",
        "vlan and vlan and host 10.0.6.140",
        "vlan 200 and vlan 100 and ip6 and host fd00::a5e:b04b",
        "vlan and vlan and tcp port 22",
        "vlan 200",
        "vlan 300",
        "vlan 200 and vlan 101",
        "vlan and vlan and (udp or icmp6)",
        "vlan and vlan and not tcp",
        "vlan and vlan and tcp[13] & 8 != 0",
        "vlan and vlan and ip6 and portrange 8000-9000",
    ];
    let r = battery(&input, tmp.path(), &filters);
    let n = |f: &str| r[filters.iter().position(|x| *x == f).unwrap()].0;
    assert_eq!(
        n("host 10.0.6.140"),
        0,
        "untagged host never matches tagged frames"
    );
    assert!(n("vlan and vlan and host 10.0.6.140") > 0);
    assert!(n("vlan and vlan and tcp port 22") > 0);
    assert!(n("vlan 200 and vlan 100 and ip6 and host fd00::a5e:b04b") > 0);
    assert!(
        n("vlan and vlan and tcp[13] & 8 != 0") > 0,
        "an unmodelled filter that matches"
    );
    assert_eq!(n("vlan 200"), 3000);
    assert_eq!(n("vlan 300"), 0);
}

#[test]
fn filtered_cat_keeps_late_interfaces_of_pcapng() {
    if !need_tool("tcpdump") || !need_tool("zstd") {
        return;
    }
    let tmp = tempdir();
    let input = tmp.path().join("late.pcapng");
    gen(
        &[
            "--format",
            "pcapng",
            "--pcapng-interfaces",
            "3",
            "--linktypes",
            "1",
            "--late-idb",
            "--late-idb-after",
            "900",
            "--unknown-block",
            "--unknown-every",
            "300",
            "--count",
            "3000",
            "--l3",
            "mixed",
        ],
        &input,
    );
    let filters = [
        "port 22",
        "ip6 and udp",
        "host 192.0.2.99",
        "tcp[13] & 8 != 0",
    ];
    let r = battery(&input, tmp.path(), &filters);
    assert!(r[0].0 > 0 && r[1].0 > 0);
    // The output is the stream's pcapng: a section with its interfaces, late ones included.
    let (_, out, _) = cat(&tmp.path().join("indexed"), tmp.path(), "ip6 and udp");
    assert!(is_pcapng(&out));
    assert_eq!(
        tshark_count_bytes(&out, tmp.path()),
        r[1].0,
        "tshark reads the filtered pcapng"
    );
}

fn tshark_count_bytes(bytes: &[u8], tmp: &Path) -> usize {
    if which("tshark").is_none() {
        return tcpdump_count_bytes(bytes, tmp);
    }
    let f = tmp.join("count.pcapng");
    std::fs::write(&f, bytes).unwrap();
    tshark_count(&f)
}

fn tcpdump_count_bytes(bytes: &[u8], tmp: &Path) -> usize {
    let f = tmp.join("count.pcapng");
    std::fs::write(&f, bytes).unwrap();
    tcpdump_count(&f)
}

/// Decompresses every data frame of every segment and counts those holding a packet for
/// which `is` is true (of the packet's captured bytes), without the index.
fn frames_holding(arch: &Path, is: impl Fn(&[u8]) -> bool) -> (u64, u64) {
    use zcap::archive::segment::{Decoder, Segment};
    use zcap::stream::UnitKind;
    let (mut frames, mut segments) = (0, 0);
    let mut dec = Decoder::new();
    let mut buf = Vec::new();
    for path in segment_files(arch) {
        let seg = Segment::open(&path).unwrap();
        let mut p = seg.parser(&mut dec, &mut buf).unwrap();
        let mut here = 0;
        for i in 0..seg.trailer.frames.len() {
            seg.read_frame(i, &mut dec, &mut buf).unwrap();
            let mut off = 0;
            let mut hit = false;
            while let Some(r) = p.next(&buf, &mut off).unwrap() {
                if matches!(r.kind, UnitKind::Packet { .. }) {
                    hit |= is(&buf[r.range.start + 16..r.range.end]);
                }
            }
            here += u64::from(hit);
        }
        frames += here;
        segments += u64::from(here > 0);
    }
    (frames, segments)
}

#[test]
fn a_rare_host_costs_the_frames_that_hold_it() {
    if !need_tool("tcpdump") || !need_tool("zstd") || !need_tool("mergecap") {
        return;
    }
    let tmp = tempdir();
    let t = tmp.path();
    // 20000 IPv4 packets over 20 s, and 200 IPv6 ones of one host pair within 2 ms of
    // the middle: about 1% of the frames.
    let (base, rare, input) = (t.join("base.pcap"), t.join("rare.pcap"), t.join("in.pcap"));
    gen(
        &["--count", "20000", "--rate", "1000", "--seed", "5"],
        &base,
    );
    gen(
        &[
            "--count",
            "200",
            "--rate",
            "100000",
            "--l3",
            "ipv6",
            "--seed",
            "6",
            "--start",
            "1764057610.5",
        ],
        &rare,
    );
    run_ok(
        Command::new("mergecap")
            .args(["-F", "pcap", "-w"])
            .arg(&input)
            .arg(&base)
            .arg(&rare),
    );
    let arch = t.join("arch");
    record(&input, &arch);
    index(&arch);
    let all_frames: u64 = {
        let out = run_ok(zcap().arg("ls").arg(&arch).arg("--json"));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter_map(|v| v["frames"].as_u64())
            .sum()
    };
    let segments = segment_files(&arch).len() as u64;
    let (host_frames, host_segments) =
        frames_holding(&arch, |d| d.len() > 14 && d[12..14] == [0x86, 0xdd]);
    assert!(
        host_frames > 0 && host_frames * 50 < all_frames,
        "{host_frames} of {all_frames}"
    );
    // A host of that pair, as the flow index names it.
    let flows = run_ok(zcap().arg("flows").arg(&arch).args(["--json", "ip6"]));
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&flows.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let host = first["addr_a"].as_str().unwrap().to_string();
    for f in ["ip6".to_string(), format!("host {host}")] {
        let (got, _, st) = cat(&arch, t, &f);
        let want = tcpdump_records(&input, &f);
        assert!(!want.is_empty());
        assert!(got == want, "`{f}`: records differ from tcpdump's");
        let read = stat(&st, "frames decompressed:");
        eprintln!(
            "`{f}`: {read} frames decompressed of {all_frames} ({host_frames} hold IPv6, in {host_segments} of {segments} segments); skipped {}",
            stat(&st, "frames skipped by the flow index:")
        );
        assert!(
            read <= host_frames + 2 * host_segments,
            "`{f}`: {read} frames decompressed, the host is in {host_frames} frames of {host_segments} segments"
        );
        assert_eq!(
            read + stat(&st, "frames skipped by the flow index:"),
            all_frames
        );
    }
}

fn flows_json(arch: &Path, args: &[&str]) -> (Vec<serde_json::Value>, String) {
    let out = run_ok(zcap().arg("flows").arg(arch).arg("--json").args(args));
    let rows = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (rows, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn flows_lists_tsharks_conversations_merged_across_segments() {
    if !need_tool("tshark") {
        return;
    }
    let tmp = tempdir();
    let input = tmp.path().join("mixed.pcap");
    gen(&["--count", "4000", "--l3", "mixed", "--seed", "3"], &input);
    let arch = tmp.path().join("arch");
    record(&input, &arch);

    // Without an index nothing is listed, and stderr says why and what to run.
    let (rows, err) = flows_json(&arch, &[]);
    assert!(rows.is_empty());
    assert!(err.contains("have no usable flow index"), "{err}");
    assert!(err.contains("zcap index"), "{err}");

    index(&arch);
    let (rows, err) = flows_json(&arch, &[]);
    assert!(err.is_empty(), "{err}");
    let fields = [
        "addr_a",
        "port_a",
        "addr_b",
        "port_b",
        "proto",
        "ethertype",
        "vlan",
        "inner_vlan",
        "packets_ab",
        "bytes_ab",
        "packets_ba",
        "bytes_ba",
        "packets",
        "bytes",
        "first_ns",
        "last_ns",
        "first",
        "last",
        "duration",
        "cut_packets",
        "cut_bytes",
        "malformed",
        "irregular",
        "segments",
    ];
    for r in &rows {
        let o = r.as_object().unwrap();
        for f in fields {
            assert!(o.contains_key(f), "no `{f}` in {r}");
        }
        assert_eq!(o.len(), fields.len(), "fields beyond the documented: {r}");
    }
    let total: u64 = rows.iter().map(|r| r["packets"].as_u64().unwrap()).sum();
    assert_eq!(total, 4000, "every packet is in one listed flow");
    assert!(
        rows.iter().any(|r| r["segments"].as_u64().unwrap() > 1),
        "no flow spans segments: the test records too little"
    );
    let firsts: Vec<i64> = rows
        .iter()
        .map(|r| r["first_ns"].as_i64().unwrap())
        .collect();
    assert!(
        firsts.windows(2).all(|w| w[0] <= w[1]),
        "not by first packet"
    );
    // One row per key: the merged rows are tshark's conversations, packets each way.
    let mut ours = Convs::new();
    for r in &rows {
        let proto = r["proto"].as_u64().unwrap() as u8;
        if !matches!(proto, 6 | 17) {
            continue;
        }
        let a = (
            r["addr_a"].as_str().unwrap().parse().unwrap(),
            r["port_a"].as_u64().unwrap() as u16,
        );
        let b = (
            r["addr_b"].as_str().unwrap().parse().unwrap(),
            r["port_b"].as_u64().unwrap() as u16,
        );
        let v = (
            r["packets_ab"].as_u64().unwrap(),
            r["packets_ba"].as_u64().unwrap(),
        );
        assert!(ours.insert((proto, a, b), v).is_none(), "two rows for {r}");
    }
    assert_eq!(ours, tshark_convs(&input));

    // A filter keeps the flows it may match: for ports and hosts, exactly those.
    let (port22, _) = flows_json(&arch, &["port", "22"]);
    let want: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["port_a"] == 22 || r["port_b"] == 22)
        .collect();
    assert!(!want.is_empty());
    assert_eq!(port22.iter().collect::<Vec<_>>(), want);
    let (none, _) = flows_json(&arch, &["host 192.0.2.99"]);
    assert!(none.is_empty());

    // The table: tshark's columns and a totals line.
    let out = run_ok(zcap().arg("flows").arg(&arch).arg("tcp port 22"));
    let text = String::from_utf8_lossy(&out.stdout);
    let head = text.lines().next().unwrap();
    for col in [
        "ADDRESS A",
        "PORT A",
        "ADDRESS B",
        "PORT B",
        "FRAMES A>B",
        "BYTES B>A",
        "REL START",
        "DURATION",
    ] {
        assert!(head.contains(col), "no {col} in {head}");
    }
    assert_eq!(text.lines().count(), want.len() + 2, "{text}");
    assert!(text
        .lines()
        .last()
        .unwrap()
        .starts_with(&format!("total: {} flow(s)", want.len())));
}

#[test]
fn bad_filters_and_damaged_sidecars_are_named() {
    if !need_tool("tcpdump") || !need_tool("zstd") {
        return;
    }
    let tmp = tempdir();
    let input = tmp.path().join("in.pcap");
    gen(&["--count", "2000", "--seed", "8"], &input);
    let arch = tmp.path().join("arch");
    record(&input, &arch);
    index(&arch);
    for cmd in ["cat", "flows"] {
        let out = zcap()
            .arg(cmd)
            .arg(&arch)
            .args(["host", "10.0.0.1", "and"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("filter `host 10.0.0.1 and`") && err.contains("at character"),
            "{cmd}: {err}"
        );
    }
    // A sidecar changed after it was written is not believed: a warning, all its frames.
    let seg = &segment_files(&arch)[1];
    let name = seg.file_name().unwrap().to_str().unwrap();
    let side = seg.with_file_name(format!("{}.flows.parquet", &name[..6]));
    let mut bytes = std::fs::read(&side).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&side, &bytes).unwrap();
    let f = "port 22";
    let (got, _, st) = cat(&arch, tmp.path(), f);
    assert!(got == reference(&arch, tmp.path(), f));
    assert!(st.contains("flow index not used: SHA-256"), "{st}");
    assert_eq!(stat(&st, "segments without a usable flow index:"), 1);
    let (_, err) = flows_json(&arch, &[]);
    assert!(
        err.contains("1 of ") && err.contains("no usable flow index"),
        "{err}"
    );
}

#[test]
fn ls_marks_segments_with_cut_flows() {
    use zcap::archive::manifest::{Entry, FlowsEntry, Writer};
    let tmp = tempdir();
    let input = tmp.path().join("in.pcap");
    gen(&["--count", "600", "--seed", "9"], &input);
    let arch = tmp.path().join("arch");
    record(&input, &arch);
    index(&arch);
    let out = String::from_utf8_lossy(&run_ok(zcap().arg("ls").arg(&arch)).stdout).into_owned();
    assert!(
        !out.contains("CUT") && !out.contains("flow cutoff"),
        "{out}"
    );
    // A flows line as a recorder with --flow-cutoff writes it for the first segment.
    let seg = &segment_files(&arch)[0];
    let rel = seg
        .strip_prefix(&arch)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let mut w = Writer::open(&arch, zcap::archive::create_entry).unwrap();
    w.append(&Entry::Flows(FlowsEntry {
        segment: rel.clone(),
        bytes: 1,
        sha256: "0".repeat(64),
        flows: 1,
        cut_packets: 7,
        cut_bytes: 9000,
    }))
    .unwrap();
    drop(w);
    let out = String::from_utf8_lossy(&run_ok(zcap().arg("ls").arg(&arch)).stdout).into_owned();
    let head = out.lines().next().unwrap();
    assert!(head.contains(" CUT "), "{head}");
    let row = out.lines().nth(1).unwrap(); // segment 1
    assert!(row.split_whitespace().any(|c| c == "7"), "{row}");
    assert!(
        out.contains("flow cutoff: 7 packets cut, 9000 bytes not stored"),
        "{out}"
    );
    let json = run_ok(zcap().arg("ls").arg(&arch).arg("--json")).stdout;
    let v: Vec<serde_json::Value> = String::from_utf8_lossy(&json)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = v.iter().find(|r| r["path"] == rel.as_str()).unwrap();
    assert_eq!(
        (first["cut_packets"].as_u64(), first["cut_bytes"].as_u64()),
        (Some(7), Some(9000))
    );
    assert!(v.iter().all(|r| r["flows"].is_u64()));
}

#[test]
fn filtered_merge_of_several_streams_is_the_filtered_merge() {
    if !need_tool("tcpdump") {
        return;
    }
    let tmp = tempdir();
    let t = tmp.path();
    let (a, b) = (t.join("a.pcap"), t.join("b.pcap"));
    gen(&["--count", "1500", "--l3", "mixed"], &a);
    gen(
        &["--count", "1500", "--seed", "4", "--start", "1764057600.3"],
        &b,
    );
    let arch = t.join("arch");
    record(&a, &arch);
    record(&b, &arch);
    index(&arch);
    let all = t.join("all.pcap");
    run_ok(zcap().arg("cat").arg(&arch).arg("-w").arg(&all));
    for f in [
        "port 22",
        "ip6 or udp",
        "host 10.0.6.140",
        "tcp[13] & 8 != 0",
    ] {
        let want = tcpdump_records(&all, f);
        let (got, _, st) = cat(&arch, t, f);
        assert!(!want.is_empty(), "`{f}` matches nothing");
        assert!(
            got == want,
            "`{f}`: the filtered merge is not the merge filtered"
        );
        assert!(stat(&st, "sidecars read:") > 0);
    }
}

const KEY: &str = "zcaptestkey";
const SECRET: &str = "zcaptestsecret";
const BUCKET: &str = "zcap-test";

/// An s3s-fs server (see tests/object_store.rs) serving `root`, killed when dropped.
struct Store {
    child: std::process::Child,
    port: u16,
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn zcap_s3(store: &Store) -> Command {
    let mut c = zcap();
    c.env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_SESSION_TOKEN")
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", store.port),
        );
    c
}

#[test]
fn filtered_cat_and_flows_read_a_remote_archive() {
    let Some(bin) = need_s3s_fs() else {
        return;
    };
    if !need_tool("tcpdump") {
        return;
    }
    let tmp = tempdir();
    let t = tmp.path();
    let input = t.join("in.pcap");
    gen(&["--count", "3000", "--l3", "mixed"], &input);
    let arch = t.join("arch");
    record_with(&input, &arch, &[]);
    let root = t.join("root");
    std::fs::create_dir_all(root.join(BUCKET)).unwrap();
    let port = free_port();
    let child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", KEY, "--secret-key", SECRET])
        .arg(&root)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start s3s-fs");
    let store = Store { child, port };
    wait_until("s3s-fs listens", std::time::Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let url = format!("s3://{BUCKET}/arch");
    // `zcap upload` puts the sidecars beside their segments.
    run_ok(zcap_s3(&store).arg("upload").arg(&arch).arg(&url));
    let segments = segment_files(&arch).len() as u64;
    let stored: u64 = segment_files(&arch)
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum();
    for f in ["host 10.0.6.140", "ip6 and port 8080"] {
        let local = run_ok(zcap().arg("cat").arg(&arch).arg(f)).stdout;
        let out = run_ok(zcap_s3(&store).args(["cat", &url, "--stats", f]));
        let st = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.stdout == local,
            "`{f}`: the remote read differs from the local one"
        );
        assert_eq!(stat(&st, "sidecars read:"), segments, "{st}");
        let fetched = stat(&st, "bytes fetched:");
        eprintln!("`{f}`: fetched {fetched} of {stored} stored bytes");
        assert!(
            fetched < stored,
            "`{f}`: fetched {fetched}, stored {stored}"
        );
    }
    let local = run_ok(zcap().args(["flows", "--json"]).arg(&arch)).stdout;
    let remote = run_ok(zcap_s3(&store).args(["flows", "--json", &url])).stdout;
    assert!(!local.is_empty() && remote == local);
}

#[test]
fn a_filter_and_a_time_window_read_what_both_allow() {
    if !need_tool("tcpdump") {
        return;
    }
    let tmp = tempdir();
    let t = tmp.path();
    let input = t.join("in.pcap");
    gen(&["--count", "4000", "--l3", "mixed"], &input);
    let arch = t.join("arch");
    record(&input, &arch);
    index(&arch);
    // The middle second of the four.
    let window = ["--from", "1764057601", "--to", "1764057602"];
    let windowed = t.join("window.pcap");
    run_ok(
        zcap()
            .arg("cat")
            .arg(&arch)
            .args(window)
            .arg("-w")
            .arg(&windowed),
    );
    for f in ["port 22", "ip6 and udp", "tcp[13] & 8 != 0"] {
        let want = tcpdump_records(&windowed, f);
        assert!(!want.is_empty(), "`{f}` matches nothing in the window");
        let out = run_ok(
            zcap()
                .arg("cat")
                .arg(&arch)
                .args(window)
                .arg("--stats")
                .arg(f),
        );
        let (_, got) = pcap_records(&out.stdout);
        let got: Vec<Rec> = got
            .into_iter()
            .map(|(ts, l, d)| (ts - ts.rem_euclid(1000), l, d))
            .collect();
        assert!(got == want, "`{f}`: the windowed filtered read differs");
        let st = String::from_utf8_lossy(&out.stderr);
        let (_, _, all) = cat(&arch, t, f);
        assert!(
            stat(&st, "frames decompressed:") < stat(&all, "frames decompressed:"),
            "`{f}`: the window saved nothing"
        );
    }
}

/// The fixtures are real-capture shapes: Linux cooked (SLL) and raw IP link types, a
/// snaplen-96 capture whose packets end inside their headers, both byte orders, two
/// interfaces, and the malformed-header corpus (bogus IHL, truncated options, IPv6
/// extension loops, runts). Recording them keeps everything and indexes them; filtered
/// reads equal tcpdump's.
#[test]
fn filtered_cat_equals_tcpdump_on_the_fixture_captures_and_malformed_headers_break_nothing() {
    if !need_tool("tcpdump") || !need_tool("zstd") {
        return;
    }
    let tmp = tempdir();
    let filters = [
        "ip",
        "ip6",
        "tcp",
        "udp port 53",
        "not tcp",
        "host 10.0.0.1",
        "net 192.168.0.0/16 or ip6",
        "icmp or arp",
        "tcp[13] & 2 != 0",
    ];
    for name in [
        "malformed.pcap",
        "demo.pcap",
        "snaplen96.pcap",
        "be-ns-sll.pcap",
        "le-ns-raw.pcap",
        "be-us-eth.pcap",
        "le-us-eth.pcap",
    ] {
        let arch = tmp.path().join(name);
        record_with(&fixture(name), &arch, &[]);
        // Nothing lost, the index is there, the archive verifies.
        let all = run_ok(zcap().arg("cat").arg(&arch)).stdout;
        assert!(
            all == std::fs::read(fixture(name)).unwrap(),
            "{name}: cat differs from the input"
        );
        let v = run_ok(zcap().arg("verify").arg(&arch));
        let report = String::from_utf8_lossy(&v.stdout);
        assert!(!report.contains("no flow index"), "{name}: {report}");
        for f in filters {
            let want = reference(&arch, tmp.path(), f);
            let (got, _, st) = cat(&arch, tmp.path(), f);
            assert!(stat(&st, "sidecars read:") > 0, "{name}: {st}");
            assert_eq!(got.len(), want.len(), "{name} `{f}`: record count");
            assert!(got == want, "{name} `{f}`: records differ from tcpdump's");
        }
    }
}
