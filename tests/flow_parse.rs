//! The flow table a segment's packets make (`zcap::flow`) agrees with tshark's conversation
//! lists (`tshark -q -z conv,tcp` / `conv,udp`): the same bidirectional TCP and UDP
//! conversations with the same packet counts each way, for the demo capture and for generated
//! IPv4/IPv6 traffic in QinQ tags with extension headers. Malformed headers never break it.

mod common;

use common::*;
use std::path::Path;
use zcap::flow::{parse, FlowTable, Headers};

/// Every packet of a pcap file: (link type, timestamp ns, wire length, captured bytes).
fn packets(path: &Path) -> Vec<(u32, i64, u32, Vec<u8>)> {
    let f = std::fs::File::open(path).unwrap();
    let mut r = pcap_file::pcap::PcapReader::new(f).unwrap();
    let lt = u32::from(r.header().datalink);
    let frac = match r.header().ts_resolution {
        pcap_file::TsResolution::MicroSecond => 1000,
        pcap_file::TsResolution::NanoSecond => 1,
    };
    let mut out = Vec::new();
    // Raw records: pcap-file's checked ones refuse an original length above the snaplen,
    // which is every truncated packet.
    while let Some(p) = r.next_raw_packet() {
        let p = p.unwrap();
        let ts = i64::from(p.ts_sec) * 1_000_000_000 + i64::from(p.ts_frac) * frac;
        out.push((lt, ts, p.orig_len, p.data.into_owned()));
    }
    out
}

/// The flow table of a whole capture, frames of 100 packets.
fn table(path: &Path) -> (FlowTable, Vec<Headers>) {
    let mut t = FlowTable::new();
    let mut hs = Vec::new();
    for (i, (lt, ts, wire, data)) in packets(path).iter().enumerate() {
        let h = parse(*lt, data);
        t.add(&h, *ts, *wire, (i / 100) as u32);
        hs.push(h);
    }
    (t, hs)
}

/// Our TCP and UDP conversations, VLANs merged as tshark does not tell them apart.
fn ours(t: &FlowTable) -> Convs {
    let mut c = Convs::new();
    for r in t.rows() {
        let (6 | 17, Some([a, b])) = (r.key.proto, r.key.ends) else {
            continue;
        };
        let e = c
            .entry((r.key.proto, (a.addr, a.port), (b.addr, b.port)))
            .or_default();
        e.0 += r.packets_ab;
        e.1 += r.packets_ba;
    }
    c
}

fn assert_same_conversations(path: &Path) {
    let (t, hs) = table(path);
    assert!(
        hs.iter().all(|h| !h.malformed),
        "a valid capture is never malformed"
    );
    let total: u64 = t.rows().map(|r| r.packets_ab + r.packets_ba).sum();
    assert_eq!(total, hs.len() as u64, "every packet is in one row");
    let (ours, theirs) = (ours(&t), tshark_convs(path));
    assert!(!theirs.is_empty(), "tshark listed no conversations");
    let tcp = theirs.keys().filter(|k| k.0 == 6).count();
    let udp = theirs.keys().filter(|k| k.0 == 17).count();
    eprintln!("{}: {tcp} TCP and {udp} UDP conversations", path.display());
    for (k, v) in &theirs {
        assert_eq!(ours.get(k), Some(v), "conversation {k:?}: tshark {v:?}");
    }
    assert_eq!(ours.len(), theirs.len(), "conversations only we see");
}

#[test]
fn demo_capture_flows_equal_tshark_conversations() {
    if !need_tool("tshark") {
        return;
    }
    assert_same_conversations(&fixture("demo.pcap"));
}

#[test]
fn ipv6_qinq_extension_header_flows_equal_tshark_conversations() {
    if !need_tool("tshark") {
        return;
    }
    let dir = tempdir();
    let path = dir.path().join("v6.pcap");
    gen(
        &[
            "--seed",
            "5",
            "--count",
            "3000",
            "--l3",
            "mixed",
            "--ipv6-ext",
            "--vlan",
            "200,100",
            "--snaplen",
            "128",
        ],
        &path,
    );
    let (_, hs) = table(&path);
    assert!(hs.iter().all(|h| h.nvlan == 2 && h.vlans == [200, 100]));
    assert!(hs
        .iter()
        .any(|h| h.ethertype == 0x86dd && h.l4_off > 14 + 8 + 40));
    assert!(hs.iter().any(|h| h.ethertype == 0x0800));
    assert_same_conversations(&path);
}

#[test]
fn cooked_and_raw_ipv6_flows_equal_tshark_conversations() {
    if !need_tool("tshark") {
        return;
    }
    let dir = tempdir();
    for lt in ["113", "101"] {
        let path = dir.path().join(format!("lt{lt}.pcap"));
        gen(
            &[
                "--seed",
                "7",
                "--count",
                "1500",
                "--l3",
                "ipv6",
                "--linktype",
                lt,
                "--mix",
                "small",
            ],
            &path,
        );
        assert_same_conversations(&path);
    }
}

/// The committed malformed capture (fixtures/malformed.pcap): every second packet is one of
/// gen-pcap's `--malformed` kinds in turn; deep-vlan (10 tags) is the one that is valid.
#[test]
fn malformed_headers_count_in_rows_of_their_own() {
    let path = fixture("malformed.pcap");
    let (t, hs) = table(&path);
    assert_eq!(hs.len(), 24);
    let bad: Vec<usize> = (0..hs.len()).filter(|&i| hs[i].malformed).collect();
    let want: Vec<usize> = (0..12).filter(|m| m % 7 != 6).map(|m| 2 * m + 1).collect();
    assert_eq!(bad, want, "the malformed packets");
    let deep = &hs[2 * 6 + 1];
    assert_eq!(
        (deep.nvlan, deep.vlans, deep.l3_off),
        (2, [100, 101], 14 + 40)
    );
    assert!(deep.ports.is_some());
    let in_bad_rows: u64 = t
        .rows()
        .filter(|r| r.key.malformed)
        .map(|r| r.packets_ab + r.packets_ba)
        .sum();
    assert_eq!(in_bad_rows, bad.len() as u64);
    assert!(t
        .rows()
        .filter(|r| r.key.malformed)
        .all(|r| r.key.proto == 0 && r.key.ends.is_none_or(|e| e[0].port == 0 && e[1].port == 0)));
    let total: u64 = t.rows().map(|r| r.packets_ab + r.packets_ba).sum();
    assert_eq!(total, 24);
}

/// Every prefix of every packet of the committed captures parses without a panic and claims
/// nothing beyond the prefix.
#[test]
fn every_prefix_of_the_fixtures_parses() {
    for name in [
        "demo.pcap",
        "malformed.pcap",
        "le-ns-raw.pcap",
        "be-ns-sll.pcap",
    ] {
        for (lt, _, _, data) in packets(&fixture(name)) {
            for n in 0..=data.len() {
                let h = parse(lt, &data[..n]);
                if h.ports.is_some() {
                    assert!(h.l4_off as usize + 4 <= n, "{name}: {h:?} from {n} bytes");
                }
            }
        }
    }
}
