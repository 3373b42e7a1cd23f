//! Filtered reads, both halves, against tcpdump: `OfflineFilter` (libpcap's program over
//! each recorded packet) selects exactly the records `tcpdump -r F -w - FILTER` writes, in
//! order; and `FlowFilter` over each packet's flow summary never prunes one of them.
//!
//! Run on fixtures/demo.pcap and on a capture built here with what demo.pcap lacks (VLAN and
//! QinQ tags, IPv6 with and without extension headers, ARP, IPv4 fragments).

mod common;

use common::{fixture, need_tool, run_ok};
use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};
use pcap_file::TsResolution;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use zcap::flow::filter::{FlowFacts, FlowFilter};
use zcap::rx::afpacket::OfflineFilter;

/// One record: time, original length, captured bytes.
type Rec = (Duration, u32, Vec<u8>);

fn read(bytes: &[u8]) -> (u32, u32, Vec<Rec>) {
    let mut r = PcapReader::new(bytes).expect("a pcap file");
    let h = r.header();
    let nanos = h.ts_resolution == TsResolution::NanoSecond;
    let mut out = Vec::new();
    // Raw records: PcapPacket refuses an original length over the snaplen, which every
    // truncated record of demo.pcap (snaplen 96) has.
    while let Some(p) = r.next_raw_packet() {
        let p = p.expect("a record");
        let frac = if nanos { p.ts_frac } else { p.ts_frac * 1000 };
        let ts = Duration::new(u64::from(p.ts_sec), frac);
        out.push((ts, p.orig_len, p.data.into_owned()));
    }
    (u32::from(h.datalink), h.snaplen, out)
}

fn tcpdump(file: &Path, expr: &str) -> Vec<Rec> {
    let out = run_ok(
        Command::new("tcpdump")
            .arg("-r")
            .arg(file)
            .args(["-w", "-", expr]),
    );
    read(&out.stdout).2
}

/// The VLAN IDs, EtherType, protocol, addresses, ports of an Ethernet frame, as a flow index
/// records them (src is endpoint a), and whether the L4 header is where libpcap looks.
struct Parsed {
    vlans: Vec<u16>,
    ethertype: u16,
    proto: u8,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    sport: u16,
    dport: u16,
    irregular: bool,
}

fn be16(d: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(d.get(at..at + 2)?.try_into().ok()?))
}

fn parse(d: &[u8]) -> Parsed {
    let mut p = Parsed {
        vlans: Vec::new(),
        ethertype: 0,
        proto: 0,
        src: None,
        dst: None,
        sport: 0,
        dport: 0,
        irregular: false,
    };
    let mut at = 12;
    loop {
        let Some(t) = be16(d, at) else { return p };
        if [0x8100, 0x88a8, 0x9100].contains(&t) {
            let Some(tci) = be16(d, at + 2) else { return p };
            p.vlans.push(tci & 0x0fff);
            at += 4;
        } else {
            p.ethertype = t;
            at += 2;
            break;
        }
    }
    let l4 = match p.ethertype {
        0x0800 => {
            let Some(h) = d.get(at..at + 20) else {
                return p;
            };
            p.proto = h[9];
            p.src = Some(IpAddr::from(<[u8; 4]>::try_from(&h[12..16]).unwrap()));
            p.dst = Some(IpAddr::from(<[u8; 4]>::try_from(&h[16..20]).unwrap()));
            if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                p.irregular = true;
                return p;
            }
            at + 4 * (h[0] & 0x0f) as usize
        }
        0x86dd => {
            let Some(h) = d.get(at..at + 40) else {
                return p;
            };
            p.src = Some(IpAddr::from(<[u8; 16]>::try_from(&h[8..24]).unwrap()));
            p.dst = Some(IpAddr::from(<[u8; 16]>::try_from(&h[24..40]).unwrap()));
            let (mut nh, mut off) = (h[6], at + 40);
            while matches!(nh, 0 | 43 | 60 | 44) {
                p.irregular = true;
                let Some(e) = d.get(off..off + 2) else {
                    return p;
                };
                let len = if nh == 44 { 8 } else { 8 + 8 * e[1] as usize };
                nh = e[0];
                off += len;
            }
            p.proto = nh;
            off
        }
        _ => return p,
    };
    if matches!(p.proto, 6 | 17 | 132) {
        if let (Some(s), Some(t)) = (be16(d, l4), be16(d, l4 + 2)) {
            (p.sport, p.dport) = (s, t);
        }
    }
    p
}

/// Filters every record of `file` with libpcap's program and compares with tcpdump; checks
/// that no record tcpdump selects is pruned on its flow. Returns (selected, pruned) counts.
fn check(file: &Path, expr: &str) -> (usize, usize) {
    let (linktype, snaplen, recs) = read(&std::fs::read(file).unwrap());
    let exact = OfflineFilter::new(expr, linktype, snaplen).unwrap_or_else(|e| panic!("{e}"));
    let ours: Vec<&Rec> = recs
        .iter()
        .filter(|(ts, len, data)| {
            exact.matches(data.len() as u32, *len, ts.as_nanos() as i64, data)
        })
        .collect();
    let theirs = tcpdump(file, expr);
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{expr} on {}: {} records, tcpdump {}",
        file.display(),
        ours.len(),
        theirs.len()
    );
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(**a, *b, "{expr} on {}: record {i} differs", file.display());
    }
    let flow = FlowFilter::parse(expr).unwrap_or_else(|e| panic!("{e}"));
    let mut pruned = 0;
    for (ts, len, data) in &recs {
        let p = parse(data);
        let facts = FlowFacts {
            vlans: &p.vlans,
            ethertype: p.ethertype,
            proto: p.proto,
            a: p.src,
            b: p.dst,
            a_port: p.sport,
            b_port: p.dport,
            l4_irregular: p.irregular,
            unknown_l4: false,
        };
        if flow.may_match(&facts) {
            continue;
        }
        pruned += 1;
        assert!(
            !exact.matches(data.len() as u32, *len, ts.as_nanos() as i64, data),
            "{expr} => {flow} prunes a packet libpcap matches: {data:02x?}"
        );
    }
    (ours.len(), pruned)
}

#[test]
fn demo_pcap_filtered_like_tcpdump() {
    if !need_tool("tcpdump") {
        return;
    }
    let demo = fixture("demo.pcap");
    let total = read(&std::fs::read(&demo).unwrap()).2.len();
    assert_eq!(total, 2000);
    for expr in [
        "host 10.0.6.140",
        "src host 10.12.60.146",
        "dst host 10.0.6.140",
        "host 10.0.6.140 or 10.12.60.146",
        "net 10.0.0.0/16",
        "net 172.16.0.0/12",
        "net 192.168",
        "port 22",
        "src port 3306",
        "dst port 8080",
        "portrange 1000-2000",
        "tcp",
        "udp",
        "icmp",
        "ip",
        "tcp and port 80",
        "udp or port 22",
        "udp or tcp and port 22",
        "not tcp",
        "not (port 22 or port 3306)",
        "host 10.12.60.146 and not port 22",
        "tcp port 25 || udp port 1812",
        "ip host 10.0.6.140 && ! src port 22",
        "vlan",
        "vlan 100 or tcp",
        "ip6",
        "ip6 host 2001:db8::1",
        "net 2001:db8::/32 or arp",
        "tcp[13] & 8 != 0",
        "greater 500 and udp",
    ] {
        let (n, pruned) = check(&demo, expr);
        eprintln!("demo.pcap `{expr}`: {n} of {total} records, {pruned} pruned by flow");
        if [
            "host 10.0.6.140",
            "port 22",
            "src port 3306",
            "tcp and port 80",
        ]
        .contains(&expr)
        {
            assert!(n > 0 && n < total / 4, "{expr}: {n}");
            if !expr.starts_with("src") {
                // Every packet is selected or prunable: undirected, the facts decide.
                assert_eq!(n + pruned, total, "{expr}");
            }
        }
        if ["vlan", "ip6", "ip6 host 2001:db8::1"].contains(&expr) {
            assert_eq!((n, pruned), (0, total), "{expr}");
        }
    }
}

/// An Ethernet frame: `tags` (TPID, VID), then `ethertype` and `l3`.
fn frame(tags: &[(u16, u16)], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    for &(tpid, vid) in tags {
        f.extend(tpid.to_be_bytes());
        f.extend(vid.to_be_bytes());
    }
    f.extend(ethertype.to_be_bytes());
    f.extend(l3);
    f
}

fn l4(proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(sport.to_be_bytes());
    h.extend(dport.to_be_bytes());
    match proto {
        6 => h.extend([0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 1, 0, 0, 0, 0, 0]),
        17 => h.extend([0, 16, 0, 0]),
        _ => h.extend([0; 4]),
    }
    h.extend([0x5a; 8]);
    h
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend(((20 + payload.len()) as u16).to_be_bytes());
    h.extend([0, 1]);
    h.extend(frag.to_be_bytes());
    h.extend([64, proto, 0, 0]);
    h.extend(src);
    h.extend(dst);
    h.extend(payload);
    h
}

fn ipv6(src: &str, dst: &str, nh: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend((payload.len() as u16).to_be_bytes());
    h.extend([nh, 64]);
    h.extend(src.parse::<std::net::Ipv6Addr>().unwrap().octets());
    h.extend(dst.parse::<std::net::Ipv6Addr>().unwrap().octets());
    h.extend(payload);
    h
}

#[test]
fn vlan_ipv6_capture_filtered_like_tcpdump() {
    if !need_tool("tcpdump") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.pcap");
    let (a, b, c) = ([10, 0, 0, 1], [10, 0, 0, 2], [192, 168, 7, 7]);
    let (x, y) = ("2001:db8::1", "2001:db8:5::2");
    let mut frames = Vec::new();
    for i in 0..4u16 {
        let t1 = [(0x8100, 100 + i % 2)];
        let qinq = [(0x88a8, 200), (0x8100, 300 + i % 2)];
        frames.push(frame(
            &[],
            0x0800,
            &ipv4(a, b, 6, 0, &l4(6, 40000 + i, 443)),
        ));
        frames.push(frame(
            &[],
            0x0800,
            &ipv4(b, a, 6, 0, &l4(6, 443, 40000 + i)),
        ));
        frames.push(frame(&t1, 0x0800, &ipv4(a, c, 17, 0, &l4(17, 5353, 53))));
        frames.push(frame(&qinq, 0x86dd, &ipv6(x, y, 17, &l4(17, 53, 3000 + i))));
        frames.push(frame(&t1, 0x86dd, &ipv6(y, x, 6, &l4(6, 22, 50000))));
        frames.push(frame(&[], 0x86dd, &ipv6(x, y, 6, &l4(6, 50000 + i, 80))));
        // Hop-by-hop options before UDP: libpcap's `udp` and `port` look past none.
        let mut hbh = vec![17, 0, 1, 4, 0, 0, 0, 0];
        hbh.extend(l4(17, 53, 53));
        frames.push(frame(&[], 0x86dd, &ipv6(y, x, 0, &hbh)));
        frames.push(frame(
            &[],
            0x86dd,
            &ipv6(x, y, 58, &[128, 0, 0, 0, 0, 1, 0, 1]),
        ));
        // A fragment after the first: protocol but no ports.
        frames.push(frame(&[], 0x0800, &ipv4(c, a, 17, 0x0010, &[0x77; 24])));
        frames.push(frame(
            &t1,
            0x0800,
            &ipv4(c, b, 1, 0, &[8, 0, 0, 0, 0, 1, 0, 1]),
        ));
        let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1];
        arp.extend(a);
        arp.extend([0; 6]);
        arp.extend(c);
        frames.push(frame(&[], 0x0806, &arp));
    }
    {
        let mut w = PcapWriter::new(std::fs::File::create(&path).unwrap()).unwrap();
        for (i, f) in frames.iter().enumerate() {
            let ts = Duration::from_micros(1_700_000_000_000_000 + 1000 * i as u64);
            w.write_packet(&PcapPacket::new(ts, f.len() as u32, f))
                .unwrap();
        }
    }
    let total = frames.len();
    for expr in [
        "vlan",
        "vlan 100",
        "vlan 200",
        "vlan and vlan",
        "vlan 200 and vlan 301 and ip6",
        "vlan and host 10.0.0.1",
        "vlan and vlan and udp port 53",
        "host 10.0.0.1",
        "not vlan",
        "tcp or vlan and udp",
        "port 443 and not vlan",
        "ip6",
        "ip6 host 2001:db8::1",
        "net 2001:db8::/32",
        "src net 2001:db8:5::/48",
        "ip6 and tcp",
        "udp",
        "udp port 53",
        "not udp",
        "icmp6",
        "icmp or icmp6",
        "vlan or ip6 and udp",
        "arp",
        "host 192.168.7.7",
        "not host 10.0.0.1",
        "udp and not port 53",
    ] {
        let (n, pruned) = check(&path, expr);
        eprintln!("mixed `{expr}`: {n} of {total} records, {pruned} pruned by flow");
    }
    // The battery is not vacuous.
    assert_eq!(check(&path, "vlan").0, 16);
    assert_eq!(check(&path, "vlan and vlan").0, 4);
    assert_eq!(check(&path, "ip6").0, 12);
    assert_eq!(check(&path, "not vlan").0, total - 16);
}
