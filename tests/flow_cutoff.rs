//! `record --flow-cutoff`: a capture with a few large flows among many small ones keeps each
//! flow's first SIZE bytes exactly, stores that much less, counts the cut per flow, and the
//! archive stays one valid, verifiable capture.

mod common;

use common::*;
use std::collections::HashMap;
use zcap::flow::{parse, FlowKey};
use zcap::stream::{frame_all, UnitKind};

const LIMIT: u64 = 64 << 10;

/// Ethernet / IPv4 / TCP from 10.0.0.1:`sport` to 10.0.0.2:80 (or back, `reply`), with
/// `payload` bytes.
fn tcp_packet(sport: u16, reply: bool, payload: usize, fill: u8) -> Vec<u8> {
    let mut p = vec![0u8; 12];
    p.extend([0x08, 0x00]);
    let total = (20 + 20 + payload) as u16;
    p.extend([0x45, 0]);
    p.extend(total.to_be_bytes());
    p.extend([0, 0, 0x40, 0, 64, 6, 0, 0]);
    let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    let (src, dst, sp, dp) = if reply {
        (b, a, 80, sport)
    } else {
        (a, b, sport, 80)
    };
    p.extend(src);
    p.extend(dst);
    p.extend(u16::to_be_bytes(sp));
    p.extend(u16::to_be_bytes(dp));
    p.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    p.resize(p.len() + payload, fill);
    p
}

/// Four large flows (2 MB each, both directions) among 300 small ones (4 KB each),
/// interleaved; plus ARP now and then, which is never cut. Returns the pcap and, per
/// record, its flow key (None for ARP).
fn corpus() -> (Vec<u8>, Vec<Option<FlowKey>>) {
    let mut recs: Vec<Vec<u8>> = Vec::new();
    let mut left: Vec<(u16, usize)> = (0..4).map(|i| (1000 + i, 2_000_000)).collect();
    left.extend((0..300).map(|i| (20000 + i, 4_000)));
    let mut i = 0usize;
    while left.iter().any(|f| f.1 > 0) {
        let n = left.len();
        let f = &mut left[i % n];
        i += 1;
        if f.1 == 0 {
            continue;
        }
        let size = (200 + (i * 97) % 1300).min(f.1);
        f.1 -= size;
        recs.push(tcp_packet(f.0, i % 3 == 0, size, i as u8));
        if i % 50 == 0 {
            let mut arp = vec![0xffu8; 6];
            arp.extend([0; 6]);
            arp.extend([0x08, 0x06]);
            arp.extend([0, 1, 8, 0, 6, 4, 0, 1]);
            arp.extend([0; 6]);
            arp.extend([10, 0, 0, 1]);
            arp.extend([0; 6]);
            arp.extend([10, 0, 0, 2]);
            recs.push(arp);
        }
    }
    let mut pcap = Vec::new();
    for v in [0xa1b2c3d4u32, 0x0004_0002, 0, 0, 65535, 1] {
        pcap.extend(v.to_le_bytes());
    }
    pcap.truncate(24 - 4);
    pcap.extend(1u32.to_le_bytes());
    let mut keys = Vec::new();
    for (n, r) in recs.iter().enumerate() {
        for v in [1_700_000_000 + n as u32 / 1000, (n as u32 % 1000) * 1000] {
            pcap.extend(v.to_le_bytes());
        }
        pcap.extend((r.len() as u32).to_le_bytes());
        pcap.extend((r.len() as u32).to_le_bytes());
        pcap.extend(r);
        let h = parse(1, r);
        keys.push((h.ports.is_some()).then(|| FlowKey::of(&h).0));
    }
    (pcap, keys)
}

/// The records of a pcap stream, in order (without the file header).
fn records(pcap: &[u8]) -> Vec<Vec<u8>> {
    let (_, units) = frame_all(pcap).unwrap();
    units
        .iter()
        .filter(|u| matches!(u.kind, UnitKind::Packet { .. }))
        .map(|u| pcap[u.start as usize..u.end() as usize].to_vec())
        .collect()
}

/// Sums the `flows` lines' cut counts.
fn manifest_cut(dir: &std::path::Path) -> (u64, u64) {
    let m = std::fs::read_to_string(dir.join("manifest.jsonl")).unwrap();
    let mut sum = (0, 0);
    for l in m.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if v["op"] == "flows" {
            sum.0 += v["cut_packets"].as_u64().unwrap();
            sum.1 += v["cut_bytes"].as_u64().unwrap();
        }
    }
    sum
}

#[test]
fn flow_cutoff_keeps_each_flows_first_bytes_exactly_and_counts_the_cut() {
    let t = tempdir();
    let (pcap, keys) = corpus();
    let input = t.path().join("in.pcap");
    std::fs::write(&input, &pcap).unwrap();
    let recs = records(&pcap);
    assert_eq!(recs.len(), keys.len());
    for keep_headers in [false, true] {
        let dir = t.path().join(format!("a-{keep_headers}"));
        let mut cmd = zcap();
        cmd.args(["record", "-r"])
            .arg(&input)
            .arg("-o")
            .arg(&dir)
            .args([
                "-C",
                "1MiB",
                "--frame-size",
                "64KiB",
                "--flow-cutoff",
                "64KiB",
            ]);
        if keep_headers {
            cmd.arg("--cutoff-keep-headers");
        }
        let o = run_ok(&mut cmd);
        let log = String::from_utf8_lossy(&o.stderr).into_owned();
        // What must be kept: per flow, records while its kept bytes are under the limit.
        let mut kept: HashMap<FlowKey, u64> = HashMap::new();
        // Per flow (by its client port): packets cut and their bytes not stored.
        let mut per_flow: HashMap<u16, (u64, u64)> = HashMap::new();
        let (mut want, mut cut_packets, mut cut_bytes) = (Vec::new(), 0u64, 0u64);
        for (r, k) in recs.iter().zip(&keys) {
            let Some(k) = k else {
                want.push(r.clone());
                continue;
            };
            let n = kept.entry(*k).or_default();
            if *n < LIMIT {
                *n += r.len() as u64 - 16;
                want.push(r.clone());
                continue;
            }
            cut_packets += 1;
            let ends = k.ends.unwrap();
            let flow = per_flow.entry(ends[0].port.max(ends[1].port)).or_default();
            flow.0 += 1;
            let not_stored = if keep_headers {
                let mut h = r[..16 + 54].to_vec();
                h[8..12].copy_from_slice(&54u32.to_le_bytes());
                let n = (r.len() - h.len()) as u64;
                want.push(h);
                n
            } else {
                r.len() as u64
            };
            cut_bytes += not_stored;
            flow.1 += not_stored;
        }
        let out = run_ok(zcap().arg("cat").arg(&dir)).stdout;
        let got = records(&out);
        assert_eq!(
            got.len(),
            want.len(),
            "records kept (keep_headers {keep_headers})"
        );
        assert!(
            got == want,
            "the kept records differ (keep_headers {keep_headers})"
        );
        // The big flows were cut; the small ones (4 KB) were not.
        let small_cut = recs
            .iter()
            .zip(&keys)
            .filter(|(_, k)| {
                k.is_some_and(|k| {
                    k.ends.unwrap()[0].port >= 20000 || k.ends.unwrap()[1].port >= 20000
                })
            })
            .count();
        let small_kept = got
            .iter()
            .filter(|r| {
                r.len() > 16 + 37 && {
                    let p = u16::from_be_bytes([r[16 + 34], r[16 + 35]]);
                    let q = u16::from_be_bytes([r[16 + 36], r[16 + 37]]);
                    p >= 20000 || q >= 20000
                }
            })
            .count();
        assert_eq!(small_cut, small_kept, "small flows are whole");
        // Stored that much less: about 4 × 64 KiB of the big flows instead of 8 MB.
        let raw_in = pcap.len() as u64;
        assert!(cut_bytes > raw_in / 2, "the corpus is mostly big flows");
        assert_eq!(out.len() as u64, raw_in - cut_bytes, "stored bytes");
        assert_eq!(
            manifest_cut(&dir),
            (cut_packets, cut_bytes),
            "the flows lines' cut counts"
        );
        assert!(
            log.contains(&format!("--flow-cutoff cut {cut_packets} packet(s)")),
            "{log}"
        );
        let v = run_ok(zcap().arg("verify").arg(&dir));
        assert!(v.status.success());
        // The cut per flow, as `zcap flows` reads it from the sidecars.
        assert_eq!(per_flow.len(), 4, "only the four big flows were cut");
        let flows = run_ok(zcap().args(["flows", "--json"]).arg(&dir)).stdout;
        let mut listed = HashMap::new();
        for l in String::from_utf8_lossy(&flows).lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let cut = (
                v["cut_packets"].as_u64().unwrap(),
                v["cut_bytes"].as_u64().unwrap(),
            );
            if cut.0 > 0 {
                let port = v["port_a"]
                    .as_u64()
                    .unwrap()
                    .max(v["port_b"].as_u64().unwrap());
                listed.insert(port as u16, cut);
            }
        }
        assert_eq!(listed, per_flow, "cut counts per flow");
        // `ls` says the archive is cut, and by how much.
        let ls = String::from_utf8_lossy(&run_ok(zcap().arg("ls").arg(&dir)).stdout).into_owned();
        assert!(
            ls.contains(&format!(
                "flow cutoff: {cut_packets} packets cut, {cut_bytes} bytes not stored"
            )),
            "{ls}"
        );
    }
}
