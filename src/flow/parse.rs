//! The header reader: link, network and transport headers out of one packet's captured bytes.
//!
//! [`parse`] reads Ethernet (with up to two 802.1Q / 802.1ad / 0x9100 tags kept and any more
//! skipped), Linux cooked SLL and SLL2, raw IP, BSD null/loop; then IPv4, IPv6 with its
//! extension headers, ARP/RARP; then TCP, UDP and SCTP ports and ICMP / ICMPv6 type and code.
//! It reads headers only: no payload byte is looked at, nothing is copied but the few header
//! fields returned, nothing is allocated.
//!
//! **Why it cannot panic.** Every read goes through [`be16`] or [`arr`], which take a slice
//! with `get` and return `None` past the captured bytes; there is no indexing of the packet,
//! no subtraction that could wrap and no unbounded loop. Offsets only grow from 0 by header
//! lengths read from one byte or one 16-bit field (an IPv4 IHL is at most 60, an IPv6 extension
//! header at most 2048 bytes, at most [`MAX_EXT`] of them), so they cannot overflow a `usize`.
//! VLAN tags move the offset by 4 each and stop at the end of the data. What is not captured
//! is simply unknown: a snaplen cut leaves the later fields at their defaults and sets
//! [`Headers::truncated`]; a header that contradicts itself or claims bytes the packet does
//! not have sets [`Headers::malformed`], and nothing behind it is read.

/// Link types (the pcap LINKTYPE_ values) that [`parse`] understands.
pub mod linktype {
    /// BSD loopback: a 4-byte address family in the capturing host's byte order.
    pub const NULL: u32 = 0;
    pub const ETHERNET: u32 = 1;
    /// DLT_RAW as written by some systems (12 on most, 14 on OpenBSD).
    pub const RAW_12: u32 = 12;
    pub const RAW_14: u32 = 14;
    /// Raw IP, the version from the first nibble.
    pub const RAW: u32 = 101;
    /// OpenBSD loopback: the address family in network byte order.
    pub const LOOP: u32 = 108;
    pub const LINUX_SLL: u32 = 113;
    pub const IPV4: u32 = 228;
    pub const IPV6: u32 = 229;
    pub const LINUX_SLL2: u32 = 276;
}

/// Ethertypes [`parse`] looks behind.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const RARP: u16 = 0x8035;
    pub const IPV6: u16 = 0x86dd;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
    pub const QINQ_OLD: u16 = 0x9100;
}

/// IP protocol numbers [`parse`] reads further.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

/// The most IPv6 extension headers followed; a longer chain is malformed.
pub const MAX_EXT: usize = 8;

/// What the headers of one packet say. Fields that were not captured keep their defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    /// VLAN ids (12 bits) of the outer two tags, outermost first; `vlans[nvlan..]` are 0.
    pub vlans: [u16; 2],
    /// Tags kept in `vlans` (0..=2); deeper tags are skipped.
    pub nvlan: u8,
    /// The ethertype behind the tags (SLL/SLL2: the protocol field; raw IP and BSD loopback:
    /// 0x0800 or 0x86dd from the version or family). 0 when unknown or an 802.3 length.
    pub ethertype: u16,
    pub l3: L3,
    /// IPv4: the protocol field; IPv6: the header after the extension headers (the first one
    /// not read when the capture ends inside the chain). 0 for non-IP.
    pub proto: u8,
    /// TCP, UDP or SCTP (source, destination) port, when captured.
    pub ports: Option<(u16, u16)>,
    /// ICMP (in IPv4) or ICMPv6 (in IPv6) (type, code), when captured.
    pub icmp: Option<(u8, u8)>,
    /// Offset of the network header in the data.
    pub l3_off: u32,
    /// Offset of the transport header; meaningful when `ports` or `icmp` is set.
    pub l4_off: u32,
    /// Part of a fragmented datagram (IPv4 MF or offset, an IPv6 fragment header). A
    /// non-first fragment has no transport header: `ports` and `icmp` stay `None`.
    pub fragment: bool,
    /// The captured bytes end before a header that was to be read.
    pub truncated: bool,
    /// A header is inconsistent (IPv4 IHL < 5 or beyond the data, a wrong IP version, an IPv6
    /// extension chain longer than [`MAX_EXT`] or running past the data, a link header shorter
    /// than its fixed size). Nothing behind it was read.
    pub malformed: bool,
}

/// The network layer's addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum L3 {
    #[default]
    None,
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
    },
    /// ARP or RARP for IPv4: sender and target protocol addresses.
    Arp {
        spa: [u8; 4],
        tpa: [u8; 4],
    },
}

/// Reads the headers of one packet of link type `linktype` from its captured bytes.
pub fn parse(linktype: u32, data: &[u8]) -> Headers {
    let mut h = Headers::default();
    match linktype {
        linktype::ETHERNET => match be16(data, 12) {
            Some(t) => link_payload(&mut h, data, 14, t),
            None => h.malformed = true,
        },
        // packet type, ARPHRD, address length, 8 address bytes, protocol
        linktype::LINUX_SLL => match be16(data, 14) {
            Some(t) => link_payload(&mut h, data, 16, t),
            None => h.malformed = true,
        },
        // protocol, reserved, ifindex, ARPHRD, packet type, address length, 8 address bytes
        linktype::LINUX_SLL2 => match (be16(data, 0), data.len() >= 20) {
            (Some(t), true) => link_payload(&mut h, data, 20, t),
            _ => h.malformed = true,
        },
        linktype::RAW | linktype::RAW_12 | linktype::RAW_14 => raw_ip(&mut h, data, 0),
        linktype::IPV4 => network(&mut h, data, 0, ethertype::IPV4),
        linktype::IPV6 => network(&mut h, data, 0, ethertype::IPV6),
        linktype::NULL | linktype::LOOP => match arr::<4>(data, 0) {
            Some(f) => {
                // The family is in the writer's byte order (NULL) or network order (LOOP),
                // and writers get it wrong: accept either.
                let t = family(u32::from_le_bytes(f)).or(family(u32::from_be_bytes(f)));
                if let Some(t) = t {
                    network(&mut h, data, 4, t);
                }
            }
            None => h.malformed = true,
        },
        _ => {}
    }
    h
}

/// BSD address family to the ethertype of its network header.
fn family(af: u32) -> Option<u16> {
    match af {
        2 => Some(ethertype::IPV4),
        // Linux, NetBSD/OpenBSD, FreeBSD, Darwin
        10 | 24 | 28 | 30 => Some(ethertype::IPV6),
        _ => None,
    }
}

/// After a link header: VLAN tags, then the network header of ethertype `t` at `off`.
fn link_payload(h: &mut Headers, data: &[u8], mut off: usize, mut t: u16) {
    while matches!(t, ethertype::VLAN | ethertype::QINQ | ethertype::QINQ_OLD) {
        let (Some(tci), Some(next)) = (be16(data, off), be16(data, off + 2)) else {
            h.malformed = true; // a tag cut short: the link header is incomplete
            return;
        };
        if let Some(slot) = h.vlans.get_mut(usize::from(h.nvlan)) {
            *slot = tci & 0x0fff;
            h.nvlan += 1;
        }
        off += 4;
        t = next;
    }
    // Below 0x0600 the field is an 802.3 length, not a protocol.
    if t >= 0x0600 {
        network(h, data, off, t);
    }
}

fn raw_ip(h: &mut Headers, data: &[u8], off: usize) {
    match data.get(off).map(|b| b >> 4) {
        Some(4) => network(h, data, off, ethertype::IPV4),
        Some(6) => network(h, data, off, ethertype::IPV6),
        Some(_) => h.malformed = true,
        None => h.truncated = true,
    }
}

fn network(h: &mut Headers, data: &[u8], off: usize, t: u16) {
    h.ethertype = t;
    h.l3_off = off as u32;
    match t {
        ethertype::IPV4 => ipv4(h, data, off),
        ethertype::IPV6 => ipv6(h, data, off),
        ethertype::ARP | ethertype::RARP => arp(h, data, off),
        _ => {}
    }
}

fn ipv4(h: &mut Headers, data: &[u8], off: usize) {
    let Some(ip) = arr::<20>(data, off) else {
        h.truncated = true;
        return;
    };
    h.l3 = L3::V4 {
        src: [ip[12], ip[13], ip[14], ip[15]],
        dst: [ip[16], ip[17], ip[18], ip[19]],
    };
    h.proto = ip[9];
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    // A total length of 0 is what TSO-sent packets carry when captured on the sender.
    if ip[0] >> 4 != 4 || hl < 20 || off + hl > data.len() || (total != 0 && total < hl) {
        h.malformed = true;
        return;
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    h.fragment = frag & 0x3fff != 0; // MF or an offset
    if frag & 0x1fff != 0 {
        return; // not the first fragment: no transport header here
    }
    transport(h, data, off + hl, ip[9], false);
}

fn ipv6(h: &mut Headers, data: &[u8], off: usize) {
    let Some(ip) = arr::<40>(data, off) else {
        h.truncated = true;
        return;
    };
    let mut src = [0; 16];
    let mut dst = [0; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    h.l3 = L3::V6 { src, dst };
    if ip[0] >> 4 != 6 {
        h.malformed = true;
        return;
    }
    // Payload length 0: a jumbogram or a TSO packet; the data is the limit then.
    let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let end = if plen == 0 {
        data.len()
    } else {
        data.len().min(off + 40 + plen)
    };
    let mut nh = ip[6];
    let mut cur = off + 40;
    let mut n = 0;
    loop {
        h.proto = nh;
        let (next, len) = match nh {
            // hop-by-hop, routing, destination options: length in 8-byte units, not counting
            // the first 8
            0 | 43 | 60 => match arr::<2>(data, cur) {
                Some([next, l]) => (next, (usize::from(l) + 1) * 8),
                None => {
                    h.truncated = true;
                    break;
                }
            },
            // authentication header: length in 4-byte units, not counting the first 2
            51 => match arr::<2>(data, cur) {
                Some([next, l]) => (next, (usize::from(l) + 2) * 4),
                None => {
                    h.truncated = true;
                    break;
                }
            },
            44 => match arr::<4>(data, cur) {
                Some([next, _, a, b]) => {
                    let fo = u16::from_be_bytes([a, b]);
                    h.fragment = true;
                    if fo >> 3 != 0 {
                        // not the first fragment: the upper protocol, no transport header
                        h.proto = next;
                        break;
                    }
                    (next, 8)
                }
                None => {
                    h.truncated = true;
                    break;
                }
            },
            _ => {
                transport(h, data, cur, nh, true);
                break;
            }
        };
        n += 1;
        if n > MAX_EXT || cur + len > end {
            h.proto = 0;
            h.malformed = true;
            break;
        }
        cur += len;
        nh = next;
    }
}

fn arp(h: &mut Headers, data: &[u8], off: usize) {
    let Some([_, _, p0, p1, hlen, plen, _, _]) = arr::<8>(data, off) else {
        h.truncated = true;
        return;
    };
    if u16::from_be_bytes([p0, p1]) != ethertype::IPV4 || plen != 4 {
        return; // ARP for another protocol: only the ethertype is known
    }
    let spa_off = off + 8 + usize::from(hlen);
    let tpa_off = spa_off + 4 + usize::from(hlen);
    match (arr::<4>(data, spa_off), arr::<4>(data, tpa_off)) {
        (Some(spa), Some(tpa)) => h.l3 = L3::Arp { spa, tpa },
        _ => h.truncated = true,
    }
}

/// How many of a packet's first bytes are headers, as [`parse`] found them in `data`:
/// through the transport header when it was reached (TCP's length from its data offset,
/// UDP's 8, SCTP's common header, ICMP's first 8), else through the network header (a
/// fragment after the first), else the link header. For `--cutoff-keep-headers`; may exceed
/// `data.len()`, never by more than one TCP header.
pub fn headers_len(h: &Headers, data: &[u8]) -> usize {
    let l3 = h.l3_off as usize;
    let l4 = h.l4_off as usize;
    if l4 > 0 {
        return l4
            + match h.proto {
                proto::TCP => data
                    .get(l4 + 12)
                    .map_or(20, |b| usize::from(b >> 4).max(5) * 4),
                proto::UDP | proto::ICMP | proto::ICMPV6 => 8,
                proto::SCTP => 12,
                _ => 0,
            };
    }
    match h.l3 {
        L3::V4 { .. } => {
            l3 + data
                .get(l3)
                .map_or(20, |b| usize::from(b & 0x0f).max(5) * 4)
        }
        L3::V6 { .. } => l3 + 40,
        _ => l3,
    }
}

fn transport(h: &mut Headers, data: &[u8], off: usize, p: u8, v6: bool) {
    h.l4_off = off as u32;
    match p {
        proto::TCP | proto::UDP | proto::SCTP => match arr::<4>(data, off) {
            Some([a, b, c, d]) => {
                h.ports = Some((u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])))
            }
            None => h.truncated = true,
        },
        proto::ICMP if !v6 => icmp(h, data, off),
        proto::ICMPV6 if v6 => icmp(h, data, off),
        _ => {}
    }
}

fn icmp(h: &mut Headers, data: &[u8], off: usize) {
    match arr::<2>(data, off) {
        Some([t, c]) => h.icmp = Some((t, c)),
        None => h.truncated = true,
    }
}

/// The big-endian u16 at `off`, if captured.
fn be16(data: &[u8], off: usize) -> Option<u16> {
    arr::<2>(data, off).map(u16::from_be_bytes)
}

/// The `N` bytes at `off`, if captured.
fn arr<const N: usize>(data: &[u8], off: usize) -> Option<[u8; N]> {
    data.get(off..off.checked_add(N)?)?.try_into().ok()
}

#[cfg(test)]
pub(crate) mod tests {
    //! Packets built from byte literals; `build` makes them for the property tests too.

    use super::*;
    use proptest::prelude::*;

    pub const MAC: [u8; 12] = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    pub const A4: [u8; 4] = [10, 0, 0, 1];
    pub const B4: [u8; 4] = [192, 168, 1, 2];
    pub const A6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    pub const B6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    pub fn eth(tags: &[(u16, u16)], t: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = MAC.to_vec();
        for &(tpid, id) in tags {
            v.extend_from_slice(&tpid.to_be_bytes());
            v.extend_from_slice(&id.to_be_bytes());
        }
        v.extend_from_slice(&t.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// IPv4 with `options` (a multiple of 4), flags+offset `frag`, then `l4`.
    pub fn ipv4(p: u8, options: &[u8], frag: u16, l4: &[u8]) -> Vec<u8> {
        let hl = 20 + options.len();
        let total = (hl + l4.len()) as u16;
        let mut v = vec![0x40 | (hl / 4) as u8, 0];
        v.extend_from_slice(&total.to_be_bytes());
        v.extend_from_slice(&[0x12, 0x34]);
        v.extend_from_slice(&frag.to_be_bytes());
        v.extend_from_slice(&[64, p, 0, 0]);
        v.extend_from_slice(&A4);
        v.extend_from_slice(&B4);
        v.extend_from_slice(options);
        v.extend_from_slice(l4);
        v
    }

    /// IPv6 whose first next header is `nh`, followed by `rest` (extension headers and L4).
    pub fn ipv6(nh: u8, rest: &[u8]) -> Vec<u8> {
        let mut v = vec![0x60, 0, 0, 0];
        v.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        v.extend_from_slice(&[nh, 64]);
        v.extend_from_slice(&A6);
        v.extend_from_slice(&B6);
        v.extend_from_slice(rest);
        v
    }

    /// An IPv6 extension header of kind `kind` (0, 43, 60: 8·(n+1) bytes; 51: 4·(n+2);
    /// 44: a fragment header with offset `n`) whose next header is `next`.
    pub fn ext(kind: u8, next: u8, n: u8) -> Vec<u8> {
        match kind {
            44 => {
                let fo = (u16::from(n) << 3) | 1;
                let mut v = vec![next, 0];
                v.extend_from_slice(&fo.to_be_bytes());
                v.extend_from_slice(&[0, 0, 0, 7]);
                v
            }
            51 => {
                let mut v = vec![next, n];
                v.resize((usize::from(n) + 2) * 4, 0);
                v
            }
            _ => {
                let mut v = vec![next, n];
                v.resize((usize::from(n) + 1) * 8, 1);
                v
            }
        }
    }

    pub fn tcp(s: u16, d: u16) -> Vec<u8> {
        let mut v = cat(&[&s.to_be_bytes(), &d.to_be_bytes()]);
        v.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 1, 0, 0, 0, 0, 0]);
        v
    }

    pub fn udp(s: u16, d: u16) -> Vec<u8> {
        cat(&[&s.to_be_bytes(), &d.to_be_bytes(), &[0, 12, 0, 0], b"data"])
    }

    pub fn sctp(s: u16, d: u16) -> Vec<u8> {
        cat(&[&s.to_be_bytes(), &d.to_be_bytes(), &[0; 8]])
    }

    pub fn arp_ipv4(spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
        cat(&[&[0, 1, 8, 0, 6, 4, 0, 1], &MAC[6..], &spa, &[0; 6], &tpa])
    }

    pub fn sll(t: u16, payload: &[u8]) -> Vec<u8> {
        cat(&[
            &[0, 4, 0, 1, 0, 6],
            &MAC[6..],
            &[0, 0],
            &t.to_be_bytes(),
            payload,
        ])
    }

    pub fn sll2(t: u16, payload: &[u8]) -> Vec<u8> {
        cat(&[
            &t.to_be_bytes(),
            &[0, 0, 0, 0, 0, 3, 0, 1, 4, 6],
            &MAC[6..],
            &[0, 0],
            payload,
        ])
    }

    const V4: L3 = L3::V4 { src: A4, dst: B4 };
    const V6: L3 = L3::V6 { src: A6, dst: B6 };

    #[test]
    fn ethernet_ipv4_tcp() {
        let pkt = eth(&[], 0x0800, &ipv4(6, &[], 0x4000, &tcp(40000, 443)));
        let h = parse(1, &pkt);
        assert_eq!(h.ethertype, 0x0800);
        assert_eq!(h.l3, V4);
        assert_eq!((h.proto, h.ports), (6, Some((40000, 443))));
        assert_eq!((h.l3_off, h.l4_off), (14, 34));
        assert!(!h.malformed && !h.truncated && !h.fragment && h.nvlan == 0);
    }

    #[test]
    fn ipv4_with_options_udp() {
        // record route (7), length 11, pointer 4, then a padding NOP: 12 bytes of options
        let opts = [7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let pkt = eth(&[], 0x0800, &ipv4(17, &opts, 0, &udp(53, 5353)));
        let h = parse(1, &pkt);
        assert_eq!(
            (h.proto, h.ports, h.l4_off),
            (17, Some((53, 5353)), 14 + 32)
        );
        assert!(!h.malformed);
    }

    #[test]
    fn ipv6_extension_chain_to_tcp() {
        let mut rest = ext(0, 60, 0); // hop-by-hop, 8 bytes
        rest.extend(ext(60, 43, 1)); // destination options, 16 bytes
        rest.extend(ext(43, 51, 0)); // routing, 8 bytes
        rest.extend(ext(51, 44, 1)); // AH, 12 bytes
        rest.extend(ext(44, 6, 0)); // first fragment (M set), 8 bytes
        rest.extend(tcp(1234, 80));
        let pkt = eth(&[], 0x86dd, &ipv6(0, &rest));
        let h = parse(1, &pkt);
        assert_eq!(h.l3, V6);
        assert_eq!((h.proto, h.ports), (6, Some((1234, 80))));
        assert_eq!(h.l4_off as usize, 14 + 40 + 8 + 16 + 8 + 12 + 8);
        assert!(h.fragment && !h.malformed && !h.truncated);
    }

    #[test]
    fn ipv6_icmpv6_and_no_next_header() {
        let h = parse(1, &eth(&[], 0x86dd, &ipv6(58, &[128, 0, 0, 0])));
        assert_eq!((h.proto, h.icmp), (58, Some((128, 0))));
        // ICMP (1) inside IPv6 is not ICMPv6: not read
        let h = parse(1, &eth(&[], 0x86dd, &ipv6(1, &[8, 0, 0, 0])));
        assert_eq!((h.proto, h.icmp), (1, None));
        let h = parse(1, &eth(&[], 0x86dd, &ipv6(59, &[])));
        assert_eq!((h.proto, h.ports, h.malformed), (59, None, false));
    }

    #[test]
    fn qinq_keeps_two_tags() {
        let pkt = eth(
            &[(0x88a8, 0x2064), (0x8100, 0x00c8)],
            0x0800,
            &ipv4(17, &[], 0, &udp(1, 2)),
        );
        let h = parse(1, &pkt);
        assert_eq!((h.nvlan, h.vlans), (2, [0x064, 0x0c8]));
        assert_eq!((h.ethertype, h.ports, h.l3_off), (0x0800, Some((1, 2)), 22));
        let h = parse(1, &eth(&[(0x9100, 7)], 0x0806, &arp_ipv4(A4, B4)));
        assert_eq!((h.nvlan, h.vlans, h.ethertype), (1, [7, 0], 0x0806));
    }

    #[test]
    fn ten_stacked_tags_are_skipped_past() {
        let tags: Vec<(u16, u16)> = (1..=10).map(|i| (0x8100, i)).collect();
        let pkt = eth(&tags, 0x0800, &ipv4(6, &[], 0, &tcp(5, 6)));
        let h = parse(1, &pkt);
        assert_eq!((h.nvlan, h.vlans), (2, [1, 2]));
        assert_eq!((h.l3_off, h.ports), (14 + 40, Some((5, 6))));
        // cut inside the tags: malformed, nothing behind them
        let h = parse(1, &pkt[..30]);
        assert!(h.malformed && h.l3 == L3::None && h.ethertype == 0);
    }

    #[test]
    fn linux_cooked_sll_and_sll2() {
        let ip = ipv4(6, &[], 0, &tcp(22, 50000));
        let h = parse(113, &sll(0x0800, &ip));
        assert_eq!((h.l3_off, h.ports, h.l3), (16, Some((22, 50000)), V4));
        let h = parse(276, &sll2(0x86dd, &ipv6(17, &udp(7, 8))));
        assert_eq!((h.l3_off, h.ports, h.l3), (20, Some((7, 8)), V6));
        // a VLAN tag left in a cooked header is followed too
        let tagged = cat(&[&[0, 5, 0x08, 0x00], &ip]);
        let h = parse(113, &sll(0x8100, &tagged));
        assert_eq!((h.nvlan, h.vlans[0], h.ports), (1, 5, Some((22, 50000))));
        // short cooked headers
        assert!(parse(113, &sll(0x0800, &[])[..15]).malformed);
        assert!(parse(276, &sll2(0x0800, &[])[..19]).malformed);
        assert!(!parse(276, &sll2(0x0800, &[])).malformed);
    }

    #[test]
    fn raw_ip_version_from_first_nibble() {
        for lt in [101, 12, 14] {
            let h = parse(lt, &ipv4(17, &[], 0, &udp(1000, 53)));
            assert_eq!(
                (h.ethertype, h.l3_off, h.ports),
                (0x0800, 0, Some((1000, 53)))
            );
            let h = parse(lt, &ipv6(6, &tcp(1, 2)));
            assert_eq!((h.ethertype, h.l3, h.ports), (0x86dd, V6, Some((1, 2))));
            assert!(parse(lt, &[0x50; 40]).malformed);
            assert!(parse(lt, &[]).truncated);
        }
        assert_eq!(parse(228, &ipv4(6, &[], 0, &tcp(1, 2))).ports, Some((1, 2)));
        assert_eq!(parse(229, &ipv6(6, &tcp(1, 2))).ports, Some((1, 2)));
    }

    #[test]
    fn bsd_null_and_loop_in_either_byte_order() {
        let ip = ipv4(6, &[], 0, &tcp(1, 2));
        let ip6 = ipv6(17, &udp(3, 4));
        for lt in [0, 108] {
            for fam in [2u32.to_le_bytes(), 2u32.to_be_bytes()] {
                let h = parse(lt, &cat(&[&fam, &ip]));
                assert_eq!((h.ethertype, h.l3_off, h.ports), (0x0800, 4, Some((1, 2))));
            }
            for af in [10u32, 24, 28, 30] {
                for fam in [af.to_le_bytes(), af.to_be_bytes()] {
                    let h = parse(lt, &cat(&[&fam, &ip6]));
                    assert_eq!((h.ethertype, h.ports), (0x86dd, Some((3, 4))));
                }
            }
            let h = parse(lt, &cat(&[&7u32.to_le_bytes(), &ip]));
            assert_eq!(h, Headers::default());
            assert!(parse(lt, &[2, 0, 0]).malformed);
        }
    }

    #[test]
    fn arp_sender_and_target() {
        let h = parse(1, &eth(&[], 0x0806, &arp_ipv4(A4, B4)));
        assert_eq!((h.ethertype, h.l3), (0x0806, L3::Arp { spa: A4, tpa: B4 }));
        assert_eq!((h.proto, h.ports), (0, None));
        let h = parse(1, &eth(&[], 0x8035, &arp_ipv4(B4, A4)));
        assert_eq!(h.l3, L3::Arp { spa: B4, tpa: A4 });
        // cut before the target address
        let pkt = eth(&[], 0x0806, &arp_ipv4(A4, B4));
        let h = parse(1, &pkt[..pkt.len() - 1]);
        assert!(h.truncated && h.l3 == L3::None);
    }

    #[test]
    fn icmp_and_sctp() {
        let h = parse(1, &eth(&[], 0x0800, &ipv4(1, &[], 0, &[3, 1, 0, 0])));
        assert_eq!((h.proto, h.icmp, h.ports), (1, Some((3, 1)), None));
        let h = parse(1, &eth(&[], 0x0800, &ipv4(132, &[], 0, &sctp(2905, 2906))));
        assert_eq!((h.proto, h.ports), (132, Some((2905, 2906))));
        let h = parse(1, &eth(&[], 0x86dd, &ipv6(132, &sctp(9, 10))));
        assert_eq!((h.proto, h.ports), (132, Some((9, 10))));
    }

    #[test]
    fn non_first_fragments_have_no_ports() {
        // offset 185 (×8 bytes), the bytes there are payload, not a header
        let h = parse(1, &eth(&[], 0x0800, &ipv4(17, &[], 185, &udp(1, 2))));
        assert!(h.fragment && h.ports.is_none() && h.proto == 17 && !h.malformed);
        // first fragment (MF): ports read
        let h = parse(1, &eth(&[], 0x0800, &ipv4(17, &[], 0x2000, &udp(1, 2))));
        assert!(h.fragment && h.ports == Some((1, 2)));
        let rest = cat(&[&ext(44, 6, 100), &tcp(1, 2)]);
        let h = parse(1, &eth(&[], 0x86dd, &ipv6(44, &rest)));
        assert!(h.fragment && h.ports.is_none() && h.proto == 6 && !h.malformed);
    }

    #[test]
    fn non_ip_records_the_ethertype() {
        let h = parse(1, &eth(&[(0x8100, 3)], 0x88cc, &[0; 30])); // LLDP
        assert_eq!((h.ethertype, h.l3, h.vlans[0]), (0x88cc, L3::None, 3));
        // an 802.3 length field is not an ethertype
        let h = parse(1, &eth(&[], 46, &[0xaa; 46]));
        assert_eq!(h, Headers::default());
        // unknown link types know nothing
        assert_eq!(parse(105, &[0xff; 64]), Headers::default());
    }

    #[test]
    fn bogus_ihl_is_malformed() {
        for ihl in 0..5u8 {
            let mut ip = ipv4(6, &[], 0, &tcp(1, 2));
            ip[0] = 0x40 | ihl;
            let h = parse(1, &eth(&[], 0x0800, &ip));
            assert!(h.malformed && h.ports.is_none(), "IHL {ihl}");
            assert_eq!(h.l3, V4, "the fixed header was captured");
        }
        // IHL 15 (60 bytes) in a 40-byte packet
        let mut ip = ipv4(6, &[], 0, &tcp(1, 2));
        ip[0] = 0x4f;
        assert!(parse(1, &eth(&[], 0x0800, &ip)).malformed);
        // a wrong version behind ethertype 0x0800
        let mut ip = ipv4(6, &[], 0, &tcp(1, 2));
        ip[0] = 0x65;
        assert!(parse(1, &eth(&[], 0x0800, &ip)).malformed);
        // total length shorter than the header
        let mut ip = ipv4(6, &[1, 1, 1, 1], 0, &tcp(1, 2));
        ip[2..4].copy_from_slice(&20u16.to_be_bytes());
        assert!(parse(1, &eth(&[], 0x0800, &ip)).malformed);
        // total length 0 (TSO) is not
        let mut ip = ipv4(6, &[], 0, &tcp(1, 2));
        ip[2..4].copy_from_slice(&[0, 0]);
        assert_eq!(parse(1, &eth(&[], 0x0800, &ip)).ports, Some((1, 2)));
    }

    #[test]
    fn truncated_ipv4_options_are_malformed() {
        let opts = [1u8; 40]; // IHL 15
        let pkt = eth(&[], 0x0800, &ipv4(6, &opts, 0, &tcp(1, 2)));
        for cut in 14 + 20..14 + 60 {
            let h = parse(1, &pkt[..cut]);
            assert!(h.malformed && h.ports.is_none(), "cut at {cut}");
        }
        let h = parse(1, &pkt[..14 + 60 + 3]);
        assert!(!h.malformed && h.truncated && h.ports.is_none());
        assert_eq!(parse(1, &pkt).ports, Some((1, 2)));
    }

    #[test]
    fn ipv6_extension_loops_and_overruns_are_malformed() {
        // nine hop-by-hop headers each naming the next: longer than MAX_EXT
        let mut rest = Vec::new();
        for _ in 0..9 {
            rest.extend(ext(0, 0, 0));
        }
        rest.extend(tcp(1, 2));
        let h = parse(1, &eth(&[], 0x86dd, &ipv6(0, &rest)));
        assert!(h.malformed && h.ports.is_none());
        // eight are fine
        let mut rest = Vec::new();
        for i in 0..8 {
            rest.extend(ext(60, if i == 7 { 6 } else { 60 }, 0));
        }
        rest.extend(tcp(1, 2));
        assert_eq!(
            parse(1, &eth(&[], 0x86dd, &ipv6(60, &rest))).ports,
            Some((1, 2))
        );
        // a chain that names itself forever, as far as the bytes go
        let h = parse(1, &eth(&[], 0x86dd, &ipv6(43, &[43, 0].repeat(400))));
        assert!(h.malformed);
        // a header whose length runs past the captured bytes
        let h = parse(1, &eth(&[], 0x86dd, &ipv6(0, &[6, 200, 0, 0, 0, 0, 0, 0])));
        assert!(h.malformed && h.proto == 0);
        // or past the payload length (the frame has padding behind it)
        let mut pkt = eth(&[], 0x86dd, &ipv6(60, &ext(60, 6, 1)));
        pkt[14 + 4..14 + 6].copy_from_slice(&8u16.to_be_bytes());
        pkt.extend(tcp(1, 2));
        assert!(parse(1, &pkt).malformed);
        // wrong version
        let mut pkt = eth(&[], 0x86dd, &ipv6(6, &tcp(1, 2)));
        pkt[14] = 0x40;
        assert!(parse(1, &pkt).malformed);
    }

    #[test]
    fn runts() {
        let full = eth(&[], 0x0800, &ipv4(6, &[], 0, &tcp(1, 2)));
        for n in 0..14 {
            let h = parse(1, &full[..n]);
            assert!(
                h.malformed && h.ethertype == 0 && h.l3 == L3::None,
                "{n} bytes"
            );
        }
        for n in 14..34 {
            let h = parse(1, &full[..n]);
            assert!(!h.malformed && h.truncated && h.ethertype == 0x0800 && h.l3 == L3::None);
        }
    }

    /// Whatever `h` claims about `data` lies in `data`.
    fn claims_within(h: &Headers, len: usize) -> Result<(), TestCaseError> {
        let l3 = h.l3_off as usize;
        match h.l3 {
            L3::None => {}
            L3::V4 { .. } => prop_assert!(l3 + 20 <= len),
            L3::V6 { .. } => prop_assert!(l3 + 40 <= len),
            L3::Arp { .. } => prop_assert!(l3 + 16 <= len), // hardware address length 0
        }
        if h.ports.is_some() {
            prop_assert!(h.l4_off as usize + 4 <= len);
        }
        if h.icmp.is_some() {
            prop_assert!(h.l4_off as usize + 2 <= len);
        }
        prop_assert!(h.nvlan <= 2);
        Ok(())
    }

    pub const LINKTYPES: [u32; 10] = [0, 1, 12, 14, 101, 108, 113, 228, 229, 276];

    #[derive(Debug, Clone)]
    pub enum Net {
        V4 { options: u8, frag: bool },
        V6 { exts: Vec<(u8, u8)> },
        Arp,
    }

    /// A valid packet: link type, tags, network and transport header chosen by the caller.
    pub fn build(lt: u32, tags: &[(u16, u16)], net: &Net, l4: u8, ports: (u16, u16)) -> Vec<u8> {
        let l4b = match l4 {
            6 => tcp(ports.0, ports.1),
            17 => udp(ports.0, ports.1),
            132 => sctp(ports.0, ports.1),
            _ => vec![(ports.0 >> 8) as u8, ports.0 as u8, 0, 0],
        };
        let (t, l3) = match net {
            Net::V4 { options, frag } => {
                let p = if l4 == 58 { 1 } else { l4 };
                let opts = vec![1u8; usize::from(*options) * 4];
                let f = if *frag { 0x2000 } else { 0x4000 };
                (0x0800, ipv4(p, &opts, f, &l4b))
            }
            Net::V6 { exts } => {
                let p = if l4 == 1 { 58 } else { l4 };
                let mut rest = Vec::new();
                let kinds: Vec<u8> = exts.iter().map(|e| e.0).collect();
                for (i, &(kind, n)) in exts.iter().enumerate() {
                    let next = kinds.get(i + 1).copied().unwrap_or(p);
                    rest.extend(ext(kind, next, if kind == 44 { 0 } else { n }));
                }
                rest.extend(l4b);
                (0x86dd, ipv6(kinds.first().copied().unwrap_or(p), &rest))
            }
            Net::Arp => (0x0806, arp_ipv4(A4, B4)),
        };
        match lt {
            1 => eth(tags, t, &l3),
            113 => sll(t, &l3),
            276 => sll2(t, &l3),
            0 | 108 => {
                let af: u32 = if t == 0x0800 { 2 } else { 28 };
                cat(&[&af.to_be_bytes(), &l3])
            }
            _ => l3,
        }
    }

    fn net() -> impl Strategy<Value = Net> {
        prop_oneof![
            (0u8..=10, any::<bool>()).prop_map(|(options, frag)| Net::V4 { options, frag }),
            proptest::collection::vec(
                (
                    prop_oneof![Just(0u8), Just(43), Just(44), Just(51), Just(60)],
                    0u8..4
                ),
                0..=MAX_EXT
            )
            .prop_map(|exts| Net::V6 { exts }),
            Just(Net::Arp),
        ]
    }

    fn packet() -> impl Strategy<Value = (u32, Vec<u8>)> {
        (
            proptest::sample::select(LINKTYPES.to_vec()),
            proptest::collection::vec(
                (
                    prop_oneof![Just(0x8100u16), Just(0x88a8), Just(0x9100)],
                    0u16..4096,
                ),
                0..4,
            ),
            net(),
            prop_oneof![Just(6u8), Just(17), Just(132), Just(1), Just(58)],
            any::<(u16, u16)>(),
        )
            .prop_filter_map(
                "raw link types carry only their IP version",
                |(lt, tags, n, l4, p)| {
                    let ok = !matches!(
                        (&n, lt),
                        (Net::Arp, 0 | 12 | 14 | 101 | 108 | 228 | 229)
                            | (Net::V4 { .. }, 229)
                            | (Net::V6 { .. }, 228)
                    );
                    let tags = if lt == 1 { tags } else { Vec::new() };
                    ok.then(|| (lt, build(lt, &tags, &n, l4, p)))
                },
            )
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(
            lt in prop_oneof![proptest::sample::select(LINKTYPES.to_vec()), any::<u32>()],
            data in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let h = parse(lt, &data);
            claims_within(&h, data.len())?;
        }

        #[test]
        fn random_bytes_behind_valid_link_headers_never_panic(
            lt in proptest::sample::select(LINKTYPES.to_vec()),
            t in prop_oneof![Just(0x0800u16), Just(0x86dd), Just(0x0806), Just(0x8100), any::<u16>()],
            tail in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let head = match lt {
                1 => eth(&[], t, &[]),
                113 => sll(t, &[]),
                276 => sll2(t, &[]),
                0 | 108 => 2u32.to_le_bytes().to_vec(),
                _ => vec![if t & 1 == 0 { 0x45 } else { 0x60 }],
            };
            let data = cat(&[&head, &tail]);
            claims_within(&parse(lt, &data), data.len())?;
        }

        #[test]
        fn prefixes_of_valid_packets_claim_only_what_they_hold((lt, pkt) in packet()) {
            let full = parse(lt, &pkt);
            prop_assert!(!full.malformed && !full.truncated, "{full:?}");
            prop_assert!(full.ports.is_some() || full.icmp.is_some() || full.l3 != L3::None);
            for n in 0..=pkt.len() {
                let p = parse(lt, &pkt[..n]);
                claims_within(&p, n)?;
                prop_assert!(p.l3 == L3::None || p.l3 == full.l3);
                prop_assert!(p.ports.is_none() || p.ports == full.ports);
                prop_assert!(p.icmp.is_none() || p.icmp == full.icmp);
                prop_assert!(p.ethertype == 0 || p.ethertype == full.ethertype);
                prop_assert!(p.nvlan <= full.nvlan);
                prop_assert_eq!(&p.vlans[..usize::from(p.nvlan)], &full.vlans[..usize::from(p.nvlan)]);
                if p.ports.is_some() || p.icmp.is_some() {
                    prop_assert_eq!(p.proto, full.proto);
                }
            }
        }
    }
}
