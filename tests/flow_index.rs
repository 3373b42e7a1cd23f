//! The flow index of a recorded archive: `zcap index` builds one Parquet sidecar per segment
//! that DuckDB reads as a user would (row count = the manifest's `flows` fields, packets per
//! host = what tshark finds in the input), a second run indexes nothing, `verify` names a
//! tampered or missing sidecar and `verify --repair` rebuilds it from its segment.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A generated capture of mixed IPv4/IPv6 traffic (some with extension headers) in an
/// 802.1Q tag, recorded into 64 KiB segments of 16 KiB frames. Returns the input and the
/// archive.
fn recorded(t: &Path) -> (PathBuf, PathBuf) {
    let input = t.join("in.pcap");
    gen(
        &[
            "--count",
            "8000",
            "--l3",
            "mixed",
            "--ipv6-ext",
            "--vlan",
            "100",
            "--seed",
            "16",
        ],
        &input,
    );
    let arch = t.join("arch");
    run_ok(
        zcap()
            .arg("record")
            .arg("-r")
            .arg(&input)
            .arg("-o")
            .arg(&arch)
            .arg("-C")
            .arg("64KiB")
            .arg("--frame-size")
            .arg("16KiB")
            // An archive without an index, as from before it existed: what `zcap index`
            // is for.
            .arg("--no-flow-index"),
    );
    (input, arch)
}

/// Every sidecar of an archive, by path, with its bytes.
fn sidecar_bytes(arch: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for d in std::fs::read_dir(arch).unwrap().flatten() {
        if d.path().is_dir() {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.ends_with(".flows.parquet") {
                    let rel = format!("{}/{name}", d.file_name().to_string_lossy());
                    out.insert(rel, std::fs::read(f.path()).unwrap());
                }
            }
        }
    }
    out
}

#[test]
fn the_recorders_index_is_the_one_zcap_index_builds_from_the_segments() {
    let t = tempdir();
    let (input, unindexed) = recorded(t.path());
    let arch = t.path().join("live");
    run_ok(
        zcap()
            .args(["record", "-r"])
            .arg(&input)
            .arg("-o")
            .arg(&arch)
            .args(["-C", "64KiB", "--frame-size", "16KiB"]),
    );
    // Stream directories are named after the input and the time: compare by segment.
    let live = sidecar_bytes(&arch);
    assert!(live.len() > 10, "{} sidecars", live.len());
    assert!(sidecar_bytes(&unindexed).is_empty());
    index(&unindexed);
    let built = sidecar_bytes(&unindexed);
    let strip = |m: &std::collections::BTreeMap<String, Vec<u8>>| -> Vec<(String, usize)> {
        m.iter()
            .map(|(k, v)| (k.rsplit('/').next().unwrap().to_string(), v.len()))
            .collect()
    };
    assert_eq!(strip(&live), strip(&built));
    // Same rows: the sidecars differ only in the stream and segment names they repeat.
    for ((lk, lv), (bk, bv)) in live.iter().zip(&built) {
        let (a, b) = (
            zcap::flow::sidecar::decode(lv).unwrap(),
            zcap::flow::sidecar::decode(bv).unwrap(),
        );
        assert_eq!(a, b, "{lk} and {bk}");
    }
    assert!(verify(&arch, &[]).status.success());
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn index(arch: &Path) -> String {
    stdout(&run_ok(zcap().arg("index").arg(arch)))
}

/// The manifest's lines with the given op.
fn lines(arch: &Path, op: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(arch.join("manifest.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["op"] == op)
        .collect()
}

/// Every sidecar in the archive, sorted.
fn sidecars(arch: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for d in std::fs::read_dir(arch).unwrap() {
        let d = d.unwrap().path();
        if d.is_dir() {
            for f in std::fs::read_dir(&d).unwrap() {
                let f = f.unwrap().path();
                if f.to_string_lossy().ends_with(".flows.parquet") {
                    v.push(f);
                }
            }
        }
    }
    v.sort();
    v
}

/// Runs a DuckDB query in python and returns its rows, tab-separated.
fn duckdb(sql: &str) -> Vec<Vec<String>> {
    let script = "import sys, duckdb\n\
                  for row in duckdb.sql(sys.argv[1]).fetchall():\n\
                  \x20   print('\\t'.join('' if v is None else str(v) for v in row))\n";
    let out = run_ok(Command::new("python3").arg("-c").arg(script).arg(sql));
    stdout(&out)
        .lines()
        .map(|l| l.split('\t').map(String::from).collect())
        .collect()
}

/// Packets per IP address in a capture, as tshark dissects it: each packet counts once for
/// its outer source and once for its outer destination (once when they are the same).
fn tshark_hosts(input: &Path) -> BTreeMap<IpAddr, u64> {
    let out = run_ok(
        Command::new("tshark")
            .arg("-r")
            .arg(input)
            .args(["-T", "fields", "-E", "separator=\t"])
            .args([
                "-e", "ip.src", "-e", "ip.dst", "-e", "ipv6.src", "-e", "ipv6.dst",
            ]),
    );
    let mut hosts = BTreeMap::new();
    for line in stdout(&out).lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let first = |i: usize| {
            f.get(i)
                .and_then(|s| s.split(',').next())
                .filter(|s| !s.is_empty())
        };
        let (src, dst) = match (first(0), first(1), first(2), first(3)) {
            (Some(s), Some(d), _, _) | (None, None, Some(s), Some(d)) => (s, d),
            _ => continue,
        };
        let (s, d): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        *hosts.entry(s).or_insert(0) += 1;
        if d != s {
            *hosts.entry(d).or_insert(0) += 1;
        }
    }
    hosts
}

#[test]
fn duckdb_reads_the_sidecars_and_agrees_with_the_manifest_and_tshark() {
    if !need_tool("tshark") || !need_python_module("duckdb") {
        return;
    }
    let t = tempdir();
    let (input, arch) = recorded(t.path());
    let segments = lines(&arch, "segment").len();
    assert!(segments > 3, "64 KiB segments: {segments}");
    let said = index(&arch);
    assert!(
        said.contains(&format!("index: {segments} segments indexed")),
        "{said}"
    );
    assert_eq!(sidecars(&arch).len(), segments);
    let flows: u64 = lines(&arch, "flows")
        .iter()
        .map(|l| l["flows"].as_u64().unwrap())
        .sum();
    let glob = format!("'{}/**/*.parquet'", arch.display());
    let count = duckdb(&format!("select count(*) from {glob}"));
    assert_eq!(count, [[flows.to_string()]]);

    // DuckDB sees the column types a user expects.
    let types = duckdb(&format!(
        "select column_name, column_type from (describe select * from {glob}) \
         where column_name in ('first', 'frames', 'vlan', 'addr_a', 'packets')"
    ));
    let types: BTreeMap<_, _> = types
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    assert_eq!(types["frames"], "INTEGER[]");
    // TIMESTAMP WITH TIME ZONE, or its nanosecond variant (TIMESTAMPTZ_NS, DuckDB 2).
    assert!(types["first"].starts_with("TIMESTAMP"), "{types:?}");
    let same = duckdb(&format!(
        "select bool_and(epoch_ns(first) = first_ns and epoch_ns(last) = last_ns) from {glob}"
    ));
    assert_eq!(
        same,
        [["True"]],
        "the timestamps are the nanosecond columns"
    );
    assert_eq!(types["vlan"], "INTEGER");
    assert_eq!(types["addr_a"], "VARCHAR");
    assert_eq!(types["packets"], "BIGINT");
    let spread = duckdb(&format!("select max(len(frames)) > 1 from {glob}"));
    assert_eq!(spread, [["True"]], "some flows span several frames");
    let vlans = duckdb(&format!("select distinct vlan from {glob}"));
    assert_eq!(vlans, [["100"]]);

    // Packets per host.
    let rows = duckdb(&format!(
        "select addr, sum(p) from ( \
           select addr_a addr, packets p from {glob} where ethertype in (2048, 34525) \
           union all \
           select addr_b, packets from {glob} where ethertype in (2048, 34525) and addr_b <> addr_a) \
         where addr is not null group by addr"
    ));
    let ours: BTreeMap<IpAddr, u64> = rows
        .iter()
        .map(|r| (r[0].parse().unwrap(), r[1].parse().unwrap()))
        .collect();
    let want = tshark_hosts(&input);
    assert!(want.keys().any(IpAddr::is_ipv6) && want.keys().any(IpAddr::is_ipv4));
    assert_eq!(
        ours, want,
        "packets per host: sidecars (left) vs tshark (right)"
    );
    assert_verifies(&arch);
}

fn assert_verifies(arch: &Path) {
    let r = verify(arch, &[]);
    assert!(r.status.success(), "{}", stdout(&r));
    assert!(stdout(&r).contains("flow index: "), "{}", stdout(&r));
}

#[test]
fn index_twice_indexes_nothing_the_second_time() {
    let t = tempdir();
    let (_, arch) = recorded(t.path());
    let before = stdout(&verify(&arch, &[]));
    assert!(
        before.contains("have no flow index") && before.contains("`zcap index "),
        "{before}"
    );
    assert!(
        before.contains("verify: OK"),
        "not indexed is not damage: {before}"
    );
    let first = index(&arch);
    assert!(!first.starts_with("index: 0 segments"), "{first}");
    let manifest = std::fs::read(arch.join("manifest.jsonl")).unwrap();
    let second = index(&arch);
    assert!(second.starts_with("index: 0 segments indexed"), "{second}");
    assert_eq!(
        std::fs::read(arch.join("manifest.jsonl")).unwrap(),
        manifest,
        "nothing appended"
    );
    assert_verifies(&arch);
}

#[test]
fn index_refuses_while_a_recorder_holds_the_lock() {
    let t = tempdir();
    let (_, arch) = recorded(t.path());
    let lock = zcap::archive::lock(&arch)
        .unwrap()
        .expect("the lock is free");
    let r = zcap().arg("index").arg(&arch).output().unwrap();
    assert_eq!(r.status.code(), Some(2));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("a recorder is writing") && err.contains(".lock"),
        "{err}"
    );
    assert!(lines(&arch, "flows").is_empty());
    drop(lock);
    index(&arch);
}

#[test]
fn verify_names_a_tampered_sidecar_and_repair_rebuilds_it() {
    let t = tempdir();
    let (_, arch) = recorded(t.path());
    index(&arch);
    let victim = sidecars(&arch)[1].clone();
    let original = std::fs::read(&victim).unwrap();
    let mut b = original.clone();
    b[original.len() / 2] ^= 0x20;
    std::fs::write(&victim, &b).unwrap();
    let rel = victim
        .strip_prefix(&arch)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let r = verify(&arch, &[]);
    assert_eq!(r.status.code(), Some(1));
    let out = stdout(&r);
    let damage: Vec<&str> = out.lines().filter(|l| l.starts_with("DAMAGE")).collect();
    assert_eq!(damage.len(), 1, "{out}");
    assert!(
        damage[0].contains(&rel) && damage[0].contains("SHA-256"),
        "{out}"
    );

    let flows_before = lines(&arch, "flows").len();
    let r = verify(&arch, &["--repair"]);
    let out = stdout(&r);
    assert!(r.status.success(), "{out}");
    assert!(out.contains("rebuilt the flow index of"), "{out}");
    assert!(out.contains("was damaged"), "{out}");
    assert_eq!(lines(&arch, "flows").len(), flows_before + 1, "a new line");
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        original,
        "the rebuilt sidecar is the one zcap index wrote"
    );
    assert_verifies(&arch);
}

#[test]
fn repair_rebuilds_a_deleted_sidecar() {
    let t = tempdir();
    let (_, arch) = recorded(t.path());
    index(&arch);
    let victim = sidecars(&arch)[0].clone();
    let original = std::fs::read(&victim).unwrap();
    std::fs::remove_file(&victim).unwrap();
    let r = verify(&arch, &[]);
    let out = stdout(&r);
    assert_eq!(r.status.code(), Some(1), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("DAMAGE (repairable)") && l.contains("missing")),
        "{out}"
    );
    let r = verify(&arch, &["--repair"]);
    let out = stdout(&r);
    assert!(r.status.success(), "{out}");
    assert!(out.contains("was missing"), "{out}");
    assert_eq!(std::fs::read(&victim).unwrap(), original);
    assert_verifies(&arch);
}

#[test]
fn a_sidecar_no_line_names_is_a_note() {
    let t = tempdir();
    let (_, arch) = recorded(t.path());
    index(&arch);
    let s = sidecars(&arch)[0].clone();
    let stray = s.with_file_name("999999.flows.parquet");
    std::fs::copy(&s, &stray).unwrap();
    let r = verify(&arch, &[]);
    let out = stdout(&r);
    assert!(r.status.success(), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("note: ")
            && l.contains("999999.flows.parquet")
            && l.contains("no flows line names")),
        "{out}"
    );
}

#[test]
fn index_skips_a_damaged_segment_and_says_so() {
    let t = tempdir();
    let (_, arch) = recorded(t.path());
    let seg = lines(&arch, "segment")[1]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let path = arch.join(&seg);
    let mut b = std::fs::read(&path).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x55;
    std::fs::write(&path, &b).unwrap();
    let r = zcap().arg("index").arg(&arch).output().unwrap();
    assert_eq!(r.status.code(), Some(1));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains(&format!("not indexing {seg}")) && err.contains("not built from altered data"),
        "{err}"
    );
    let out = stdout(&r);
    let segments = lines(&arch, "segment").len();
    assert!(
        out.contains(&format!("{} segments indexed", segments - 1)) && out.contains("1 unreadable"),
        "{out}"
    );
    assert!(!arch
        .join(seg.replace(".pcap.zst", ".flows.parquet"))
        .exists());
}

#[test]
fn repair_removes_the_index_of_a_deleted_segment() {
    use zcap::archive::manifest::{Entry, Writer};
    let t = tempdir();
    let (_, arch) = recorded(t.path());
    index(&arch);
    // Retention's crash window: the delete line written and the segment removed, its
    // sidecar not yet.
    let seg = lines(&arch, "segment")[0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let mut w = Writer::open(&arch, zcap::archive::create_entry).unwrap();
    w.append(&Entry::Delete {
        path: seg.clone(),
        reason: "max-bytes".into(),
    })
    .unwrap();
    drop(w);
    std::fs::remove_file(arch.join(&seg)).unwrap();
    let side = zcap::archive::sidecar_name(&seg);
    let out = stdout(&verify(&arch, &[]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("note: ") && l.contains(&side)),
        "{out}"
    );
    let r = verify(&arch, &["--repair"]);
    let out = stdout(&r);
    assert!(r.status.success(), "{out}");
    assert!(
        out.contains(&format!(
            "removed {side}: the flow index of a deleted segment"
        )),
        "{out}"
    );
    assert!(!arch.join(&side).exists());
}

#[test]
fn a_flows_line_naming_no_segment_is_damage() {
    use zcap::archive::manifest::{Entry, FlowsEntry, Writer};
    let t = tempdir();
    let (_, arch) = recorded(t.path());
    let stream = lines(&arch, "segment")[0]["stream"]
        .as_str()
        .unwrap()
        .to_string();
    let ghost = format!("{stream}/999999.pcap.zst");
    let mut w = Writer::open(&arch, zcap::archive::create_entry).unwrap();
    w.append(&Entry::Flows(FlowsEntry {
        segment: ghost.clone(),
        bytes: 4,
        sha256: "0".repeat(64),
        flows: 0,
        cut_packets: 0,
        cut_bytes: 0,
    }))
    .unwrap();
    drop(w);
    let r = verify(&arch, &[]);
    let out = stdout(&r);
    assert_eq!(r.status.code(), Some(1), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("DAMAGE: ")
            && l.contains(&ghost)
            && l.contains("which no segment line before it names")),
        "{out}"
    );
}
