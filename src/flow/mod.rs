//! Flows of one segment: the header reader ([`parse`]), the table that sums packets into
//! bidirectional flows ([`FlowTable`]), the Parquet sidecar that stores its rows beside the
//! segment ([`sidecar`]), and the tcpdump-expression pruner that says which flows a filter
//! may match ([`filter`]; the exact per-packet check is libpcap's, in
//! `rx::afpacket::filter`).
//!
//! The writer hands every packet's captured bytes to [`parse::parse`] and the result to
//! [`FlowTable::add`] with the packet's timestamp, wire length and the index of the data
//! frame that holds it; at finalize [`FlowTable::rows`] gives one row per flow, which
//! [`sidecar::encode`] makes a file of, and [`FlowTable::clear`] readies the table for the
//! next segment. This module reads headers and counts; it does not touch the archive, the
//! payload or the writer's buffers.
//!
//! A flow is keyed by VLAN ids, ethertype, protocol and both (address, port) endpoints, lower
//! endpoint first, so the two directions of a conversation share a row. Traffic without
//! addresses (non-IP, or IP whose header was not captured) makes one row per (VLAN, ethertype);
//! malformed packets make rows of their own (`malformed` set, protocol and ports 0, the
//! addresses kept when they were captured), so an index built on the rows must treat those
//! rows' frames as possibly matching any port or protocol. Packets with addresses but no
//! ports (ICMP, whose type and code are not part of the key; non-first fragments; a transport
//! header that was not captured) have ports 0, so a non-first fragment is counted in a row
//! beside its datagram's flow, not in it.

pub mod filter;
pub mod parse;
pub mod sidecar;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use parse::{parse, Headers, L3};

/// One side of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub addr: IpAddr,
    /// TCP/UDP/SCTP port; 0 for other protocols and when not captured.
    pub port: u16,
}

/// A bidirectional flow's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// As in [`Headers::vlans`]: `vlans[nvlan..]` are 0.
    pub vlans: [u16; 2],
    pub nvlan: u8,
    pub ethertype: u16,
    /// IP protocol (0 for ARP, non-IP and malformed packets).
    pub proto: u8,
    /// The packets of this row had malformed headers.
    pub malformed: bool,
    /// The packets of this row are fragments, or IPv6 with extension headers before the
    /// transport header: libpcap's `port` and protocol primitives do not look where
    /// [`Headers`] found the ports ([`filter::FlowFacts::l4_irregular`]).
    pub irregular: bool,
    /// The two endpoints, lower first (by address, then port); `None` without addresses.
    pub ends: Option<[Endpoint; 2]>,
}

impl FlowKey {
    /// The key of a packet's flow, and whether the packet goes from the higher endpoint to
    /// the lower one (`ends[1]` → `ends[0]`, "b→a").
    pub fn of(h: &Headers) -> (FlowKey, bool) {
        let (src, dst) = match h.l3 {
            L3::None => (None, None),
            L3::V4 { src, dst } | L3::Arp { spa: src, tpa: dst } => (
                Some(IpAddr::V4(Ipv4Addr::from(src))),
                Some(IpAddr::V4(Ipv4Addr::from(dst))),
            ),
            L3::V6 { src, dst } => (
                Some(IpAddr::V6(Ipv6Addr::from(src))),
                Some(IpAddr::V6(Ipv6Addr::from(dst))),
            ),
        };
        let ip = matches!(h.l3, L3::V4 { .. } | L3::V6 { .. }) && !h.malformed;
        let (sport, dport) = if ip {
            h.ports.unwrap_or((0, 0))
        } else {
            (0, 0)
        };
        let mut key = FlowKey {
            vlans: h.vlans,
            nvlan: h.nvlan,
            ethertype: h.ethertype,
            proto: if ip { h.proto } else { 0 },
            malformed: h.malformed,
            irregular: ip
                && (h.fragment || (matches!(h.l3, L3::V6 { .. }) && h.l4_off != h.l3_off + 40)),
            ends: None,
        };
        let mut reverse = false;
        if let (Some(s), Some(d)) = (src, dst) {
            let s = Endpoint {
                addr: s,
                port: sport,
            };
            let d = Endpoint {
                addr: d,
                port: dport,
            };
            reverse = d < s;
            key.ends = Some(if reverse { [d, s] } else { [s, d] });
        }
        (key, reverse)
    }
}

/// One flow as [`FlowTable::rows`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRow<'a> {
    pub key: FlowKey,
    /// Earliest and latest packet timestamp (ns); captures are not always in time order.
    pub first_ns: i64,
    pub last_ns: i64,
    /// Packets and wire bytes from `ends[0]` to `ends[1]` (all of them for rows without
    /// endpoints).
    pub packets_ab: u64,
    pub bytes_ab: u64,
    /// Packets and wire bytes from `ends[1]` to `ends[0]`.
    pub packets_ba: u64,
    pub bytes_ba: u64,
    /// Packets `--flow-cutoff` dropped or truncated (counted in the packets above too), and
    /// the bytes of them that were not stored.
    pub cut_packets: u64,
    pub cut_bytes: u64,
    /// The data frames (indices in the segment) holding the flow's stored packets,
    /// ascending when frames are added in order.
    pub frames: &'a [u32],
}

#[derive(Debug)]
struct Flow {
    key: FlowKey,
    first_ns: i64,
    last_ns: i64,
    packets: [u64; 2],
    bytes: [u64; 2],
    cut_packets: u64,
    cut_bytes: u64,
    frames: Vec<u32>,
}

/// The flows of one segment.
///
/// Adding a packet of a known flow allocates nothing (the frame list grows only when the
/// frame index changes, amortized); a new flow costs one map insert, and its frame list
/// reuses one left by an earlier segment when there is one. The map keeps std's randomly
/// keyed SipHash: the keys come from the network, and a fixed hash would let a sender choose
/// colliding flows.
#[derive(Debug, Default)]
pub struct FlowTable {
    index: HashMap<FlowKey, usize>,
    /// `flows[..live]` are this segment's; the rest are kept for their frame lists' capacity.
    flows: Vec<Flow>,
    live: usize,
    /// The last packet's key and flow: runs of one flow skip the hash.
    last: Option<(FlowKey, usize)>,
}

impl FlowTable {
    pub fn new() -> FlowTable {
        FlowTable::default()
    }

    /// Counts one packet: its headers, timestamp (ns), wire (original) length and the index
    /// of the data frame it is in.
    pub fn add(&mut self, h: &Headers, ts_ns: i64, wire_len: u32, frame: u32) {
        let (key, reverse) = FlowKey::of(h);
        self.add_keyed(key, reverse, ts_ns, wire_len, frame);
    }

    /// [`FlowTable::add`] with the packet's [`FlowKey::of`] already in hand.
    pub fn add_keyed(
        &mut self,
        key: FlowKey,
        reverse: bool,
        ts_ns: i64,
        wire_len: u32,
        frame: u32,
    ) {
        let i = self.flow(key, ts_ns);
        self.count(i, reverse, ts_ns, wire_len, Some(frame));
    }

    /// Counts one packet of flow `key` that `--flow-cutoff` cut: `cut` of its bytes were not
    /// stored, and what was (its headers, with `--cutoff-keep-headers`) is in data frame
    /// `frame`.
    pub fn add_cut(
        &mut self,
        (key, reverse): (FlowKey, bool),
        ts_ns: i64,
        wire_len: u32,
        cut: u32,
        frame: Option<u32>,
    ) {
        let i = self.flow(key, ts_ns);
        self.count(i, reverse, ts_ns, wire_len, frame);
        let f = &mut self.flows[i];
        f.cut_packets += 1;
        f.cut_bytes += u64::from(cut);
    }

    /// Adds the flows of `other` (one data frame's, counted there with any frame index) as
    /// held by data frame `frame` of this table's segment.
    pub fn absorb(&mut self, other: &FlowTable, frame: u32) {
        for o in &other.flows[..other.live] {
            let i = match self.index.get(&o.key) {
                Some(&i) => i,
                None => self.insert(o.key, o.first_ns),
            };
            let f = &mut self.flows[i];
            f.first_ns = f.first_ns.min(o.first_ns);
            f.last_ns = f.last_ns.max(o.last_ns);
            for d in 0..2 {
                f.packets[d] += o.packets[d];
                f.bytes[d] += o.bytes[d];
            }
            f.cut_packets += o.cut_packets;
            f.cut_bytes += o.cut_bytes;
            if !o.frames.is_empty() && f.frames.last() != Some(&frame) {
                f.frames.push(frame);
            }
        }
        self.last = None;
    }

    /// The index of `key`'s flow, inserted when new.
    fn flow(&mut self, key: FlowKey, ts_ns: i64) -> usize {
        match self.last {
            Some((k, i)) if k == key => i,
            _ => {
                let i = match self.index.get(&key) {
                    Some(&i) => i,
                    None => self.insert(key, ts_ns),
                };
                self.last = Some((key, i));
                i
            }
        }
    }

    fn count(&mut self, i: usize, reverse: bool, ts_ns: i64, wire_len: u32, frame: Option<u32>) {
        let f = &mut self.flows[i];
        f.first_ns = f.first_ns.min(ts_ns);
        f.last_ns = f.last_ns.max(ts_ns);
        let d = usize::from(reverse);
        f.packets[d] += 1;
        f.bytes[d] += u64::from(wire_len);
        if let Some(frame) = frame {
            if f.frames.last() != Some(&frame) {
                f.frames.push(frame);
            }
        }
    }

    fn insert(&mut self, key: FlowKey, ts_ns: i64) -> usize {
        let i = self.live;
        let fresh = Flow {
            key,
            first_ns: ts_ns,
            last_ns: ts_ns,
            packets: [0; 2],
            bytes: [0; 2],
            cut_packets: 0,
            cut_bytes: 0,
            frames: Vec::new(),
        };
        match self.flows.get_mut(i) {
            Some(f) => {
                let mut frames = std::mem::take(&mut f.frames);
                frames.clear();
                *f = Flow { frames, ..fresh };
            }
            None => self.flows.push(fresh),
        }
        self.index.insert(key, i);
        self.live += 1;
        i
    }

    /// Flows in this segment.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// One row per flow, by earliest timestamp (ties in the order the flows were first seen).
    pub fn rows(&self) -> impl Iterator<Item = FlowRow<'_>> {
        let live = &self.flows[..self.live];
        let mut order: Vec<usize> = (0..live.len()).collect();
        order.sort_by_key(|&i| (live[i].first_ns, i));
        order.into_iter().map(move |i| {
            let f = &live[i];
            FlowRow {
                key: f.key,
                first_ns: f.first_ns,
                last_ns: f.last_ns,
                packets_ab: f.packets[0],
                bytes_ab: f.bytes[0],
                packets_ba: f.packets[1],
                bytes_ba: f.bytes[1],
                cut_packets: f.cut_packets,
                cut_bytes: f.cut_bytes,
                frames: &f.frames,
            }
        })
    }

    /// Forgets every flow, keeping the map's and the frame lists' memory for the next segment.
    pub fn clear(&mut self) {
        self.index.clear();
        self.live = 0;
        self.last = None;
    }
}

/// Bytes stored so far of each flow, for `--flow-cutoff`: a packet is kept while its
/// flow's stored bytes are below the limit (so the packet that crosses it is kept whole).
///
/// Bounded: flows live in two generations of at most [`Budget::GENERATION`] each; when the
/// current one is full, the older is forgotten and the current becomes the older. A flow
/// seen in neither (quiet through two generations of new flows) starts over, and may store
/// its limit once more: the bound is on memory, and errs on keeping packets.
#[derive(Debug, Default)]
pub struct Budget {
    current: HashMap<FlowKey, u64>,
    older: HashMap<FlowKey, u64>,
}

impl Budget {
    pub const GENERATION: usize = 1 << 18;

    /// Whether a packet of `key` with `len` captured bytes is kept under a limit of `limit`
    /// bytes per flow; a kept one is counted.
    pub fn admit(&mut self, key: &FlowKey, len: u64, limit: u64) -> bool {
        let stored = match self.current.get_mut(key) {
            Some(n) => n,
            None => {
                let before = self.older.remove(key).unwrap_or(0);
                if self.current.len() >= Self::GENERATION {
                    self.older = std::mem::take(&mut self.current);
                }
                self.current.entry(*key).or_insert(before)
            }
        };
        if *stored >= limit {
            return false;
        }
        *stored += len;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::parse::tests::{eth, ipv4, ipv6, tcp, udp, A4, B4};
    use super::*;

    fn v4_tcp(sport: u16, dport: u16, reverse: bool) -> Headers {
        let mut ip = ipv4(6, &[], 0, &tcp(sport, dport));
        if reverse {
            let (a, b) = ip.split_at_mut(16);
            a[12..16].swap_with_slice(&mut b[..4]);
        }
        parse(1, &eth(&[], 0x0800, &ip))
    }

    #[test]
    fn both_directions_share_one_row() {
        let mut t = FlowTable::new();
        let ab = v4_tcp(40000, 443, false); // 10.0.0.1:40000 -> 192.168.1.2:443
        let ba = v4_tcp(443, 40000, true); // the answer
        t.add(&ab, 300, 60, 0);
        t.add(&ba, 100, 1514, 0);
        t.add(&ab, 200, 60, 1);
        t.add(&ab, 400, 60, 1);
        t.add(&ba, 500, 1514, 3);
        assert_eq!(t.len(), 1);
        let rows: Vec<_> = t.rows().collect();
        let r = rows[0];
        let [a, b] = r.key.ends.unwrap();
        assert_eq!((a.addr, a.port), (IpAddr::from(A4), 40000));
        assert_eq!((b.addr, b.port), (IpAddr::from(B4), 443));
        assert_eq!(
            (r.key.proto, r.key.ethertype, r.key.malformed),
            (6, 0x0800, false)
        );
        assert_eq!((r.first_ns, r.last_ns), (100, 500));
        assert_eq!(
            (r.packets_ab, r.bytes_ab, r.packets_ba, r.bytes_ba),
            (3, 180, 2, 3028)
        );
        assert_eq!(r.frames, &[0, 1, 3]);
    }

    #[test]
    fn the_lower_endpoint_comes_first_by_address_then_port() {
        let (k, rev) = FlowKey::of(&v4_tcp(443, 40000, true)); // from B4
        assert!(rev);
        assert_eq!(k.ends.unwrap()[0].addr, IpAddr::from(A4));
        // same address both ways: the port decides
        let mut ip = ipv4(17, &[], 0, &udp(9000, 53));
        ip[16..20].copy_from_slice(&A4);
        let (k, rev) = FlowKey::of(&parse(101, &ip));
        let [a, b] = k.ends.unwrap();
        assert!(rev && a.port == 53 && b.port == 9000);
    }

    #[test]
    fn rows_are_by_first_timestamp_and_keys_separate_vlans_and_protocols() {
        let mut t = FlowTable::new();
        let plain = parse(1, &eth(&[], 0x0800, &ipv4(17, &[], 0, &udp(1, 2))));
        let tagged = parse(
            1,
            &eth(&[(0x8100, 5)], 0x0800, &ipv4(17, &[], 0, &udp(1, 2))),
        );
        let v6 = parse(1, &eth(&[], 0x86dd, &ipv6(17, &udp(1, 2))));
        let tcp = parse(1, &eth(&[], 0x0800, &ipv4(6, &[], 0, &tcp(1, 2))));
        t.add(&plain, 40, 60, 0);
        t.add(&tagged, 30, 60, 0);
        t.add(&v6, 20, 60, 0);
        t.add(&tcp, 10, 60, 0);
        t.add(&plain, 5, 60, 0);
        let firsts: Vec<_> = t.rows().map(|r| r.first_ns).collect();
        assert_eq!(firsts, [5, 10, 20, 30]);
        let r = t.rows().find(|r| r.key.nvlan == 1).unwrap();
        assert_eq!(r.key.vlans, [5, 0]);
    }

    #[test]
    fn non_ip_and_malformed_make_rows_of_their_own() {
        let mut t = FlowTable::new();
        let lldp = parse(1, &eth(&[], 0x88cc, &[0; 40]));
        let lldp_v7 = parse(1, &eth(&[(0x8100, 7)], 0x88cc, &[0; 40]));
        let mut bad = ipv4(6, &[], 0, &tcp(1, 2));
        bad[0] = 0x43;
        let bad = parse(1, &eth(&[], 0x0800, &bad));
        let runt = parse(1, &[0; 9]);
        for i in 0..3 {
            t.add(&lldp, i, 64, 0);
            t.add(&lldp_v7, i, 68, 0);
            t.add(&bad, i, 54, 0);
            t.add(&runt, i, 9, 0);
        }
        assert_eq!(t.len(), 4);
        for r in t.rows() {
            assert_eq!((r.packets_ab, r.packets_ba, r.key.proto), (3, 0, 0));
        }
        let m: Vec<_> = t.rows().filter(|r| r.key.malformed).collect();
        assert_eq!(m.len(), 2);
        let with_addrs = m.iter().find(|r| r.key.ends.is_some()).unwrap();
        assert_eq!(with_addrs.key.ends.unwrap()[0].port, 0);
        assert!(t
            .rows()
            .any(|r| r.key.ethertype == 0x88cc && r.key.ends.is_none()));
    }

    #[test]
    fn absorbing_frame_tables_sums_them_and_lists_the_frames_with_stored_packets() {
        let (ab, ba) = (v4_tcp(40000, 443, false), v4_tcp(443, 40000, true));
        let mut seg = FlowTable::new();
        let mut frame = FlowTable::new();
        frame.add(&ab, 20, 100, 0);
        frame.add(&ba, 10, 1500, 0);
        seg.absorb(&frame, 0);
        frame.clear();
        // The next frame holds only a cut packet of the flow (dropped, nothing stored) and
        // a stored packet of another.
        frame.add_cut(FlowKey::of(&ab), 30, 1500, 1500, None);
        frame.add(&v4_tcp(1, 2, false), 40, 60, 0);
        seg.absorb(&frame, 1);
        frame.clear();
        frame.add_cut(FlowKey::of(&ba), 50, 1500, 1400, Some(0));
        seg.absorb(&frame, 2);
        let rows: Vec<_> = seg.rows().collect();
        assert_eq!(rows.len(), 2);
        let r = rows[0];
        assert_eq!((r.first_ns, r.last_ns), (10, 50));
        assert_eq!(
            (r.packets_ab, r.bytes_ab, r.packets_ba, r.bytes_ba),
            (2, 1600, 2, 3000)
        );
        assert_eq!((r.cut_packets, r.cut_bytes), (2, 2900));
        assert_eq!(r.frames, &[0, 2], "frame 1 stored nothing of the flow");
        assert_eq!(rows[1].frames, &[1]);
    }

    #[test]
    fn fragments_and_ipv6_extension_headers_make_irregular_rows() {
        let plain = parse(1, &eth(&[], 0x86dd, &ipv6(17, &udp(1, 2))));
        assert!(!FlowKey::of(&plain).0.irregular);
        let mut frag = ipv4(17, &[], 0, &udp(1, 2));
        frag[6] = 0x20; // more fragments
        let frag = parse(1, &eth(&[], 0x0800, &frag));
        assert!(frag.fragment && FlowKey::of(&frag).0.irregular);
    }

    #[test]
    fn the_budget_keeps_the_packet_that_crosses_the_limit_and_cuts_the_rest() {
        let mut b = Budget::default();
        let (k, _) = FlowKey::of(&v4_tcp(1, 2, false));
        let (other, _) = FlowKey::of(&v4_tcp(3, 4, false));
        assert!(b.admit(&k, 60, 100));
        assert!(
            b.admit(&k, 60, 100),
            "60 < 100: kept whole, though it crosses"
        );
        assert!(!b.admit(&k, 1, 100));
        assert!(b.admit(&other, 1000, 100), "each flow has its own");
        assert!(!b.admit(&other, 1, 100));
    }

    #[test]
    fn clear_keeps_capacity_and_forgets_flows() {
        let mut t = FlowTable::new();
        for p in 0..100u16 {
            for f in 0..10 {
                t.add(&v4_tcp(p, 80, false), i64::from(f), 60, f);
            }
        }
        assert_eq!(t.len(), 100);
        let cap = t.index.capacity();
        let frames_ptr = t.flows[0].frames.as_ptr();
        t.clear();
        assert!(t.is_empty() && t.rows().next().is_none());
        assert_eq!(t.index.capacity(), cap);
        t.add(&v4_tcp(7, 7, false), 1, 60, 42);
        let r = t.rows().next().unwrap();
        assert_eq!((r.packets_ab, r.frames), (1, &[42][..]));
        assert_eq!(
            t.flows[0].frames.as_ptr(),
            frames_ptr,
            "the frame list was reused"
        );
    }
}
