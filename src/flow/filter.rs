//! Pruning for filtered reads (`zcap cat ARCHIVE FILTER`): a tcpdump filter expression
//! evaluated over a *flow summary* instead of a packet, in three-valued logic, so that a flow
//! index can skip a flow only when no packet of it can match. The packets that are read are
//! then checked exactly by libpcap (`rx::afpacket::OfflineFilter`); this module never decides
//! that a packet matches, only that none of a flow's can.
//!
//! **Sound, not complete.** [`FlowFilter::eval`] returns [`Tri::False`] only when libpcap's
//! program (as `tcpdump -r FILE FILTER` compiles it) rejects every packet the [`FlowFacts`]
//! describe; [`Tri::True`] when it accepts every one; [`Tri::Maybe`] otherwise. Whatever the
//! parser does not model — byte offsets (`tcp[13] & 2 != 0`), `greater`, `ether host`, host
//! and port names, `proto`, … — is Maybe, never an error; only a syntax error the parser
//! cannot get past (an unbalanced parenthesis, a dangling `and`) is one, naming its position.
//! Kleene logic: `not Maybe` = Maybe, `False and X` = False, `True or X` = True.
//!
//! The subset modelled, with libpcap's semantics:
//! - `host`, `src host`, `dst host`, `src or dst host`, `src and dst host` with IPv4 and IPv6
//!   literals, `net A.B.C.D/LEN` (also `net 10`, `net 192.168`, `net A mask M`, IPv6 nets),
//!   with the protocol qualifiers `ip`, `ip6`, `arp`, `rarp`; an IPv4 `host`/`net` also
//!   matches ARP and RARP (Maybe there: the summary has no ARP addresses);
//! - `port`, `portrange A-B` with directions and `tcp`/`udp`/`sctp` qualifiers;
//! - `ip`, `ip6`, `arp`, `rarp`, `tcp`, `udp`, `icmp`, `icmp6`, `sctp`;
//! - `vlan [ID]`, which, as in libpcap, moves the offsets of **every primitive after it in
//!   the text** four bytes on (one more tag per `vlan`), whatever the parentheses: `host X`
//!   without `vlan` does not match a tagged frame, `vlan and host X` matches X inside one tag.
//!   `mpls`, `pppoes`, `geneve` and `vxlan` move offsets too, by amounts not modelled: every
//!   primitive after one of them is Maybe;
//! - `and`/`&&`, `or`/`||`, `not`/`!`, parentheses. As in libpcap, `not` binds tightest and
//!   **`and` and `or` have the same precedence, associating left to right**: `udp or tcp and
//!   port 80` is `(udp or tcp) and port 80` (pcap-filter(7)).
//! - tcpdump's abbreviations: an address or number after `and`/`or` takes the qualifiers of
//!   the primitive before it (`host A or B`, `port 80 or 443`, `host A and not B`).

use crate::rx::limits::{v4_mask, v6_mask};
use std::fmt;
use std::net::IpAddr;

/// A three-valued truth: does the filter accept the packets of a flow?
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tri {
    /// No packet of the flow matches.
    False,
    /// Some may, some may not.
    Maybe,
    /// Every packet of the flow matches.
    True,
}

impl std::ops::Not for Tri {
    type Output = Tri;

    /// Kleene negation: `not Maybe` is Maybe.
    fn not(self) -> Tri {
        match self {
            Tri::False => Tri::True,
            Tri::Maybe => Tri::Maybe,
            Tri::True => Tri::False,
        }
    }
}

impl Tri {
    fn from_bool(b: bool) -> Tri {
        if b {
            Tri::True
        } else {
            Tri::False
        }
    }

    /// Kleene conjunction (the smaller).
    pub fn and(self, o: Tri) -> Tri {
        self.min(o)
    }

    /// Kleene disjunction (the larger).
    pub fn or(self, o: Tri) -> Tri {
        self.max(o)
    }
}

/// What a flow index knows of a bidirectional flow: every packet it summarizes goes from
/// endpoint a to b or from b to a and shares all of these. The fields are what libpcap's
/// filter code reads:
/// - `vlans`: the VLAN IDs of the 802.1Q/802.1ad tags (TPID 0x8100, 0x88a8 or 0x9100, the
///   ones libpcap's `vlan` recognizes), outermost first; empty when untagged;
/// - `ethertype`: the two bytes after the tags as they are on the wire (an 802.3 frame's
///   length, not the type inside its LLC/SNAP header: libpcap's `ip` does not match those);
///   for raw IP link types 0x0800 or 0x86dd by the IP version, for Linux cooked captures the
///   protocol field;
/// - `proto`: the IP protocol (IPv4's protocol field; IPv6's upper-layer header, after any
///   extension headers); ignored for non-IP;
/// - `a`, `b`: the endpoints' addresses (None when unknown, e.g. a truncated header: the
///   address primitives then read Maybe);
/// - `a_port`, `b_port`: the endpoints' TCP/UDP/SCTP ports (ignored for other protocols);
/// - `l4_irregular`: some packets do not carry `proto`'s header where libpcap looks for it —
///   IPv6 extension headers before it, IPv4 fragments after the first (no ports). Protocol
///   and port primitives then read Maybe where they would read True;
/// - `unknown_l4`: the flow's protocol and ports are not known (a malformed header: a flow
///   table keys those packets with protocol and ports 0, yet libpcap may still find a
///   protocol byte or ports where it looks). Protocol and port primitives then read Maybe
///   wherever the EtherType lets them match at all.
///
/// A packet whose capture is cut before the fields a filter reads is rejected by libpcap
/// (any load past the captured length rejects), so its flow may record any value there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowFacts<'a> {
    pub vlans: &'a [u16],
    pub ethertype: u16,
    pub proto: u8,
    pub a: Option<IpAddr>,
    pub b: Option<IpAddr>,
    pub a_port: u16,
    pub b_port: u16,
    pub l4_irregular: bool,
    pub unknown_l4: bool,
}

/// EtherTypes and IP protocols the primitives name.
const ETH_IP: u16 = 0x0800;
const ETH_IP6: u16 = 0x86dd;
const ETH_ARP: u16 = 0x0806;
const ETH_RARP: u16 = 0x8035;
const VLAN_TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

/// A filter expression that cannot be parsed: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The expression.
    pub expr: String,
    /// The position of the offending token, in characters from 0 (the expression's length
    /// when it ended too early).
    pub pos: usize,
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "filter `{}`: {} at character {}",
            self.expr,
            self.msg,
            self.pos + 1
        )
    }
}

impl std::error::Error for ParseError {}

/// A parsed filter, for pruning flows.
#[derive(Debug, Clone)]
pub struct FlowFilter {
    expr: String,
    root: Node,
}

impl FlowFilter {
    /// Parses `expr` (tcpdump's filter language; empty accepts everything, as in tcpdump).
    pub fn parse(expr: &str) -> Result<FlowFilter, ParseError> {
        let err = |pos: usize, msg: String| ParseError {
            expr: expr.to_string(),
            pos,
            msg,
        };
        let (toks, end) = lex(expr).map_err(|(pos, msg)| err(pos, msg))?;
        if toks.is_empty() {
            return Ok(FlowFilter {
                expr: expr.to_string(),
                root: Node::Const(Tri::True),
            });
        }
        let mut p = Parser {
            toks: &toks,
            i: 0,
            end,
            vlan_depth: 0,
            poisoned: false,
        };
        let (root, _) = p.expr(None).map_err(|(pos, msg)| err(pos, msg))?;
        if let Some(t) = p.toks.get(p.i) {
            let msg = match t.tok {
                Tok::RParen => "`)` without `(`".to_string(),
                _ => format!("expected `and` or `or` before `{}`", t.text),
            };
            return Err(err(t.pos, msg));
        }
        Ok(FlowFilter {
            expr: expr.to_string(),
            root,
        })
    }

    /// The expression parsed.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// Whether all, some or none of the flow's packets can match.
    pub fn eval(&self, f: &FlowFacts) -> Tri {
        self.root.eval(f)
    }

    /// Whether a packet of the flow can match (the flow must be read): `eval` is not False.
    pub fn may_match(&self, f: &FlowFacts) -> bool {
        self.eval(f) != Tri::False
    }
}

impl fmt::Display for FlowFilter {
    /// The parsed tree, fully parenthesized (`?` for what is not modelled).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.root)
    }
}

#[derive(Debug, Clone)]
enum Node {
    Const(Tri),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    /// A primitive and the number of `vlan` keywords before it in the text (None: after an
    /// offset-moving keyword that is not modelled).
    Prim(Prim, Option<u32>),
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Const(Tri::Maybe) => write!(f, "?"),
            Node::Const(t) => write!(f, "{t:?}"),
            Node::Not(n) => write!(f, "(not {n})"),
            Node::And(a, b) => write!(f, "({a} and {b})"),
            Node::Or(a, b) => write!(f, "({a} or {b})"),
            Node::Prim(p, d) => {
                match p {
                    Prim::Link(t) => write!(f, "link={t:#06x}")?,
                    Prim::Proto { proto, v4, v6 } => write!(f, "proto={proto}/{v4}/{v6}")?,
                    Prim::Addr {
                        net,
                        prefix,
                        dir,
                        links,
                    } => write!(f, "{dir:?}:{net}/{prefix}@{links:#x}")?,
                    Prim::Port {
                        lo,
                        hi,
                        dir,
                        protos,
                    } => write!(f, "{dir:?}:port{lo}-{hi}@{protos:#x}")?,
                    Prim::Vlan(id) => {
                        write!(f, "vlan{}", id.map(|i| i.to_string()).unwrap_or_default())?
                    }
                }
                match d {
                    Some(0) => Ok(()),
                    Some(d) => write!(f, "^{d}"),
                    None => write!(f, "^?"),
                }
            }
        }
    }
}

/// Direction qualifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// None given, or `src or dst`.
    Either,
    Src,
    Dst,
    /// `src and dst`.
    Both,
}

/// Link-layer protocol bits of an address primitive.
const L_IP: u8 = 1;
const L_IP6: u8 = 2;
const L_ARP: u8 = 4;
const L_RARP: u8 = 8;
/// Transport bits of a port primitive.
const P_TCP: u8 = 1;
const P_UDP: u8 = 2;
const P_SCTP: u8 = 4;

#[derive(Debug, Clone)]
enum Prim {
    /// `ip`, `ip6`, `arp`, `rarp`: the EtherType.
    Link(u16),
    /// `tcp`, `udp`, `sctp` (IPv4 and IPv6), `icmp` (IPv4), `icmp6` (IPv6).
    Proto { proto: u8, v4: bool, v6: bool },
    /// `host`/`net`: the address within `net/prefix`, on the link protocols `links`.
    Addr {
        net: IpAddr,
        prefix: u8,
        dir: Dir,
        links: u8,
    },
    /// `port`/`portrange`: a port in `lo..=hi`, over the transports `protos`.
    Port {
        lo: u16,
        hi: u16,
        dir: Dir,
        protos: u8,
    },
    /// `vlan [ID]`.
    Vlan(Option<u16>),
}

impl Node {
    fn eval(&self, f: &FlowFacts) -> Tri {
        match self {
            Node::Const(t) => *t,
            Node::Not(n) => !n.eval(f),
            Node::And(a, b) => match a.eval(f) {
                Tri::False => Tri::False,
                t => t.and(b.eval(f)),
            },
            Node::Or(a, b) => match a.eval(f) {
                Tri::True => Tri::True,
                t => t.or(b.eval(f)),
            },
            Node::Prim(p, depth) => {
                let Some(d) = *depth else {
                    return Tri::Maybe;
                };
                let n = f.vlans.len();
                let d = d as usize;
                match p {
                    // libpcap tests the TPID at 12 + 4d, then the VID of that tag.
                    Prim::Vlan(id) => {
                        if d < n {
                            id.map_or(Tri::True, |id| Tri::from_bool(f.vlans[d] == id))
                        } else if d == n && !VLAN_TPIDS.contains(&f.ethertype) {
                            Tri::False
                        } else {
                            Tri::Maybe
                        }
                    }
                    // Every other primitive first tests the EtherType at 12 + 4d: a TPID
                    // (none of theirs) when d is inside the tags, payload bytes past them.
                    _ if d < n => Tri::False,
                    _ if d > n => Tri::Maybe,
                    p => p.eval(f),
                }
            }
        }
    }
}

/// Whether `x` lies in `net/prefix` (None: not the same family, so unknown).
fn within(x: Option<IpAddr>, net: IpAddr, prefix: u8) -> Option<bool> {
    match (x?, net) {
        (IpAddr::V4(x), IpAddr::V4(n)) => {
            let m = v4_mask(prefix);
            Some(u32::from(x) & m == u32::from(n) & m)
        }
        (IpAddr::V6(x), IpAddr::V6(n)) => {
            let m = v6_mask(prefix);
            Some(u128::from(x) & m == u128::from(n) & m)
        }
        _ => None,
    }
}

/// A directional test over both endpoints: `ia`/`ib` say whether a's and b's value matches.
fn directed(dir: Dir, ia: bool, ib: bool) -> Tri {
    match dir {
        Dir::Either => Tri::from_bool(ia || ib),
        // Packets go both ways: a's value is the source of some, b's of the others.
        Dir::Src | Dir::Dst if ia && ib => Tri::True,
        Dir::Src | Dir::Dst if ia || ib => Tri::Maybe,
        Dir::Src | Dir::Dst => Tri::False,
        Dir::Both => Tri::from_bool(ia && ib),
    }
}

impl Prim {
    /// The primitive on the flow's packets, at the offsets where they have it.
    fn eval(&self, f: &FlowFacts) -> Tri {
        let et = f.ethertype;
        let ip = et == ETH_IP || et == ETH_IP6;
        match *self {
            Prim::Link(t) => Tri::from_bool(et == t),
            Prim::Proto { proto, v4, v6 } => {
                if !((v4 && et == ETH_IP) || (v6 && et == ETH_IP6)) {
                    Tri::False
                } else if f.unknown_l4 {
                    Tri::Maybe
                } else if f.proto != proto {
                    Tri::False
                } else if et == ETH_IP6 && f.l4_irregular {
                    // libpcap reads the fixed header's next header (and one behind a
                    // fragment header): other extension headers hide the protocol.
                    Tri::Maybe
                } else {
                    Tri::True
                }
            }
            Prim::Addr {
                net,
                prefix,
                dir,
                links,
            } => {
                let on = match et {
                    ETH_IP => links & L_IP != 0,
                    ETH_IP6 => links & L_IP6 != 0,
                    ETH_ARP => links & L_ARP != 0,
                    ETH_RARP => links & L_RARP != 0,
                    _ => false,
                };
                if !on {
                    return Tri::False;
                }
                if !ip {
                    return Tri::Maybe; // ARP/RARP: addresses not summarized
                }
                match (within(f.a, net, prefix), within(f.b, net, prefix)) {
                    (Some(ia), Some(ib)) => directed(dir, ia, ib),
                    _ => Tri::Maybe,
                }
            }
            Prim::Port {
                lo,
                hi,
                dir,
                protos,
            } => {
                let carried = match f.proto {
                    TCP => protos & P_TCP != 0,
                    UDP => protos & P_UDP != 0,
                    SCTP => protos & P_SCTP != 0,
                    _ => false,
                };
                if !ip {
                    return Tri::False;
                }
                if f.unknown_l4 {
                    return Tri::Maybe;
                }
                if !carried {
                    return Tri::False;
                }
                let r = directed(
                    dir,
                    (lo..=hi).contains(&f.a_port),
                    (lo..=hi).contains(&f.b_port),
                );
                if f.l4_irregular && r == Tri::True {
                    Tri::Maybe
                } else {
                    r
                }
            }
            Prim::Vlan(_) => Tri::Maybe, // evaluated with its depth, in Node::eval
        }
    }
}

// ---- lexing ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word,
    LParen,
    RParen,
    And,
    Or,
    Not,
    Slash,
    /// Arithmetic and relational operators, brackets: only inside what is not modelled.
    Other,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    text: String,
    /// In characters.
    pos: usize,
}

fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-' | '\\')
}

/// The tokens of `expr` and its length in characters, or the position of a character
/// libpcap's scanner refuses too.
fn lex(expr: &str) -> Result<(Vec<Token>, usize), (usize, String)> {
    let cs: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        let next = cs.get(i + 1).copied();
        let (tok, n) = match (c, next) {
            (c, _) if c.is_whitespace() => {
                i += 1;
                continue;
            }
            ('(', _) => (Tok::LParen, 1),
            (')', _) => (Tok::RParen, 1),
            ('&', Some('&')) => (Tok::And, 2),
            ('|', Some('|')) => (Tok::Or, 2),
            ('!', Some('=')) => (Tok::Other, 2),
            ('!', _) => (Tok::Not, 1),
            ('/', _) => (Tok::Slash, 1),
            ('<', Some('<' | '=')) | ('>', Some('>' | '=')) | ('=', Some('=')) => (Tok::Other, 2),
            ('&' | '|' | '+' | '*' | '%' | '^' | '<' | '>' | '=' | '[' | ']', _) => (Tok::Other, 1),
            (c, _) if word_char(c) => {
                let n = cs[i..].iter().take_while(|&&c| word_char(c)).count();
                (Tok::Word, n)
            }
            (c, _) => return Err((i, format!("unexpected character `{c}`"))),
        };
        let text: String = cs[i..i + n].iter().collect();
        let tok = match (tok, text.as_str()) {
            (Tok::Word, "and") => Tok::And,
            (Tok::Word, "or") => Tok::Or,
            (Tok::Word, "not") => Tok::Not,
            (t, _) => t,
        };
        out.push(Token { tok, text, pos: i });
        i += n;
    }
    Ok((out, cs.len()))
}

// ---- parsing ----

/// Keywords of libpcap's scanner that move no offsets (primitives built of them that are not
/// modelled read Maybe and leave the rest of the expression as it is).
const KEYWORDS: &[&str] = &[
    "dst",
    "src",
    "host",
    "net",
    "mask",
    "port",
    "portrange",
    "proto",
    "protochain",
    "gateway",
    "type",
    "subtype",
    "direction",
    "dir",
    "address",
    "addr",
    "ra",
    "ta",
    "addr1",
    "addr2",
    "addr3",
    "addr4",
    "less",
    "greater",
    "byte",
    "broadcast",
    "multicast",
    "len",
    "inbound",
    "outbound",
    "ifindex",
    "ifname",
    "on",
    "rset",
    "rnr",
    "srnr",
    "reason",
    "action",
    "vlan",
    "pppoed",
    "link",
    "ether",
    "ppp",
    "slip",
    "fddi",
    "tr",
    "wlan",
    "arp",
    "rarp",
    "ip",
    "sctp",
    "tcp",
    "udp",
    "icmp",
    "igmp",
    "igrp",
    "pim",
    "vrrp",
    "carp",
    "radio",
    "ip6",
    "icmp6",
    "ah",
    "esp",
    "atalk",
    "aarp",
    "decnet",
    "lat",
    "sca",
    "moprc",
    "mopdl",
    "iso",
    "esis",
    "es-is",
    "isis",
    "is-is",
    "l1",
    "l2",
    "iih",
    "lsp",
    "snp",
    "csnp",
    "psnp",
    "clnp",
    "stp",
    "ipx",
    "netbeui",
    "llc",
    "lane",
    "metac",
    "bcc",
    "oam",
    "oamf4",
    "oamf4ec",
    "oamf4sc",
    "sc",
    "ilmic",
    "vpi",
    "vci",
    "connectmsg",
    "metaconnect",
    "fisu",
    "lssu",
    "lsu",
    "msu",
    "hfisu",
    "hlssu",
    "hmsu",
    "sio",
    "opc",
    "dpc",
    "sls",
    "hsio",
    "hopc",
    "hdpc",
    "hsls",
];

/// Keywords that move the offsets of what follows by amounts not modelled.
const SHIFTERS: &[&str] = &["mpls", "pppoes", "geneve", "vxlan"];

/// Protocol qualifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PQ {
    Default,
    Ip,
    Ip6,
    Arp,
    Rarp,
    Tcp,
    Udp,
    Sctp,
    /// A qualifier not modelled (`ether`, `icmp`, …).
    Other,
}

/// Address qualifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AQ {
    Default,
    Host,
    Net,
    Port,
    Portrange,
}

/// The qualifiers of a primitive, which an abbreviated one after `and`/`or` takes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quals {
    proto: PQ,
    dir: Dir,
    addr: AQ,
}

fn pqual(w: &str) -> Option<PQ> {
    Some(match w {
        "ip" => PQ::Ip,
        "ip6" => PQ::Ip6,
        "arp" => PQ::Arp,
        "rarp" => PQ::Rarp,
        "tcp" => PQ::Tcp,
        "udp" => PQ::Udp,
        "sctp" => PQ::Sctp,
        "link" | "ether" | "ppp" | "slip" | "fddi" | "tr" | "wlan" | "icmp" | "icmp6" | "igmp"
        | "igrp" | "pim" | "vrrp" | "carp" | "radio" | "ah" | "esp" | "atalk" | "aarp"
        | "decnet" | "lat" | "sca" | "moprc" | "mopdl" | "iso" | "esis" | "es-is" | "isis"
        | "is-is" | "clnp" | "stp" | "ipx" | "netbeui" | "l1" | "l2" | "iih" | "lsp" | "snp"
        | "csnp" | "psnp" => PQ::Other,
        _ => return None,
    })
}

/// The bare protocol primitives (`tcp`, `ip6`, …).
fn proto_abbrev(w: &str) -> Option<Prim> {
    let proto = |proto, v4, v6| Prim::Proto { proto, v4, v6 };
    Some(match w {
        "ip" => Prim::Link(ETH_IP),
        "ip6" => Prim::Link(ETH_IP6),
        "arp" => Prim::Link(ETH_ARP),
        "rarp" => Prim::Link(ETH_RARP),
        "tcp" => proto(TCP, true, true),
        "udp" => proto(UDP, true, true),
        "sctp" => proto(SCTP, true, true),
        "icmp" => proto(1, true, false),
        "icmp6" => proto(58, false, true),
        _ => return None,
    })
}

/// A number as libpcap's scanner reads one: `0x` hex, leading `0` octal, else decimal.
fn number(s: &str) -> Option<u32> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(h, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8).ok()
    } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// A dotted IPv4 number of 1 to 4 parts (`10`, `192.168`, `10.0.0.1`) as libpcap's
/// `__pcap_atoin` reads it: the value left-aligned and the number of bits given.
fn dotted(s: &str) -> Option<(u32, u8)> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut v: u32 = 0;
    for p in &parts {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u32 = p.parse().ok()?;
        if n > 255 {
            return None;
        }
        v = (v << 8) | n;
    }
    let bits = 8 * parts.len() as u32;
    let v = if bits == 32 { v } else { v << (32 - bits) };
    Some((v, bits as u8))
}

type PResult<T> = Result<T, (usize, String)>;

struct Parser<'t> {
    toks: &'t [Token],
    i: usize,
    /// The expression's length, the position of "the end".
    end: usize,
    /// `vlan` keywords so far.
    vlan_depth: u32,
    /// An offset-moving keyword not modelled came before.
    poisoned: bool,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.i)
    }

    fn peek_tok(&self) -> Option<&Tok> {
        self.peek().map(|t| &t.tok)
    }

    fn peek_word(&self) -> Option<&str> {
        self.peek()
            .filter(|t| t.tok == Tok::Word)
            .map(|t| t.text.as_str())
    }

    fn pos(&self) -> usize {
        self.peek().map_or(self.end, |t| t.pos)
    }

    fn prim(&self, p: Prim) -> Node {
        Node::Prim(p, (!self.poisoned).then_some(self.vlan_depth))
    }

    /// Whether the next token ends a primitive.
    fn at_boundary(&self) -> bool {
        matches!(
            self.peek_tok(),
            None | Some(Tok::And | Tok::Or | Tok::RParen)
        )
    }

    /// expr := term ((and|or) term)*, left to right at one precedence (libpcap's `%left OR
    /// AND`). `q`: the qualifiers an abbreviated first primitive takes on. Returns the
    /// qualifiers of the last primitive.
    fn expr(&mut self, q: Option<Quals>) -> PResult<(Node, Option<Quals>)> {
        let (mut left, mut q) = self.term(q)?;
        while let Some(op) = self.peek_tok().cloned() {
            let and = match op {
                Tok::And => true,
                Tok::Or => false,
                _ => break,
            };
            let at = self.pos();
            self.i += 1;
            if self.at_boundary() {
                let what = if and { "and" } else { "or" };
                return Err((
                    self.pos(),
                    format!(
                        "expected a primitive after `{what}` (at character {})",
                        at + 1
                    ),
                ));
            }
            let (right, q2) = self.term(q)?;
            left = if and {
                Node::And(Box::new(left), Box::new(right))
            } else {
                Node::Or(Box::new(left), Box::new(right))
            };
            q = q2;
        }
        Ok((left, q))
    }

    /// term := not term | ( expr ) | primitive | an abbreviated primitive (an id with `q`).
    fn term(&mut self, q: Option<Quals>) -> PResult<(Node, Option<Quals>)> {
        let Some(t) = self.peek() else {
            return Err((self.end, "expected a primitive".to_string()));
        };
        match t.tok {
            Tok::Not => {
                self.i += 1;
                let (n, q) = self.term(q)?;
                Ok((Node::Not(Box::new(n)), q))
            }
            Tok::LParen => {
                let close = self.matching(self.i)?;
                let after = self.toks.get(close + 1).map(|t| &t.tok);
                if matches!(after, None | Some(Tok::And | Tok::Or | Tok::RParen)) {
                    self.i += 1;
                    let (n, _) = self.expr(q)?;
                    if self.peek_tok() != Some(&Tok::RParen) {
                        return Err((self.pos(), "expected `)`".to_string()));
                    }
                    self.i += 1;
                    // libpcap's qualifiers after a group depend on its grammar's paths; an
                    // abbreviation after one is not modelled.
                    Ok((n, None))
                } else {
                    Ok((self.unknown(), None)) // arithmetic: `(ip[2:2] - 20) > 100`
                }
            }
            Tok::RParen => Err((t.pos, "expected a primitive before `)`".to_string())),
            Tok::And | Tok::Or => Err((t.pos, format!("expected a primitive before `{}`", t.text))),
            Tok::Slash | Tok::Other => Ok((self.unknown(), None)),
            Tok::Word => {
                let w = t.text.clone();
                if KEYWORDS.contains(&w.as_str()) || SHIFTERS.contains(&w.as_str()) {
                    self.primitive(&w)
                } else {
                    self.id(q)
                }
            }
        }
    }

    /// The index of the `)` closing the `(` at `open`.
    fn matching(&self, open: usize) -> PResult<usize> {
        let mut depth = 0usize;
        for (j, t) in self.toks.iter().enumerate().skip(open) {
            match t.tok {
                Tok::LParen => depth += 1,
                Tok::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(j);
                    }
                }
                _ => {}
            }
        }
        Err((self.toks[open].pos, "`(` without `)`".to_string()))
    }

    /// Skips a primitive not modelled, up to the next `and`/`or` outside its parentheses (or
    /// a `)` closing one around it): Maybe. An offset-moving keyword in it makes every later
    /// primitive Maybe.
    fn unknown(&mut self) -> Node {
        let mut depth = 0usize;
        while let Some(t) = self.peek() {
            match t.tok {
                Tok::And | Tok::Or if depth == 0 => break,
                Tok::RParen if depth == 0 => break,
                Tok::LParen => depth += 1,
                Tok::RParen => depth -= 1,
                Tok::Word if SHIFTERS.contains(&t.text.as_str()) || t.text == "vlan" => {
                    self.poisoned = true
                }
                _ => {}
            }
            self.i += 1;
        }
        Node::Const(Tri::Maybe)
    }

    /// A primitive beginning with keyword `w`.
    fn primitive(&mut self, w: &str) -> PResult<(Node, Option<Quals>)> {
        let start = self.i;
        if w == "vlan" {
            self.i += 1;
            let mut id = None;
            if let Some(n) = self.peek_word().and_then(number) {
                self.i += 1;
                id = Some(n);
            } else if self.peek_tok() == Some(&Tok::LParen)
                && self.toks.get(self.i + 2).map(|t| &t.tok) == Some(&Tok::RParen)
            {
                if let Some(n) = self.toks.get(self.i + 1).and_then(|t| number(&t.text)) {
                    self.i += 3;
                    id = Some(n);
                }
            }
            if !self.at_boundary() {
                self.i = start;
                return Ok((self.unknown(), None));
            }
            let node = match id {
                // libpcap refuses IDs over 4095.
                Some(n) if n > 4095 => Node::Const(Tri::Maybe),
                id => self.prim(Prim::Vlan(id.map(|n| n as u16))),
            };
            self.vlan_depth += 1;
            return Ok((node, None));
        }
        if SHIFTERS.contains(&w) {
            return Ok((self.unknown(), None));
        }
        let mut q = Quals {
            proto: PQ::Default,
            dir: Dir::Either,
            addr: AQ::Default,
        };
        let mut qualified = false;
        if let Some(p) = pqual(w) {
            q.proto = p;
            self.i += 1;
        }
        if let Some(d @ ("src" | "dst")) = self.peek_word() {
            let first_src = d == "src";
            let d = if first_src { "src" } else { "dst" };
            self.i += 1;
            q.dir = if first_src { Dir::Src } else { Dir::Dst };
            if let Some(op @ (Tok::And | Tok::Or)) = self.peek_tok().cloned() {
                let other = if first_src { "dst" } else { "src" };
                if self.toks.get(self.i + 1).map(|t| t.text.as_str()) != Some(other) {
                    let at = self.toks.get(self.i + 1).map_or(self.end, |t| t.pos);
                    return Err((
                        at,
                        format!("expected `{other}` after `{d} {}`", self.toks[self.i].text),
                    ));
                }
                self.i += 2;
                q.dir = if op == Tok::And {
                    Dir::Both
                } else {
                    Dir::Either
                };
            }
            qualified = true;
        }
        if let Some(a) = self.peek_word() {
            let a = match a {
                "host" => Some(AQ::Host),
                "net" => Some(AQ::Net),
                "port" => Some(AQ::Port),
                "portrange" => Some(AQ::Portrange),
                _ => None,
            };
            if let Some(a) = a {
                q.addr = a;
                self.i += 1;
                qualified = true;
            }
        }
        if !qualified {
            // A protocol alone (`tcp`), or a form not modelled (`ip proto 6`, `tcp[13]`,
            // `ether host X`, `greater 100`).
            if self.i == start + 1 && self.at_boundary() {
                if let Some(p) = proto_abbrev(w) {
                    return Ok((self.prim(p), None));
                }
            }
            self.i = start;
            return Ok((self.unknown(), None));
        }
        if self.at_boundary() {
            return Err((
                self.pos(),
                "expected an address, a number or a name".to_string(),
            ));
        }
        self.id(Some(q))
    }

    /// An id with the qualifiers `q` (None: not known, so Maybe): `not id`, `( id and|or id
    /// … )`, or a literal with an optional `/LEN` or `mask M`.
    fn id(&mut self, q: Option<Quals>) -> PResult<(Node, Option<Quals>)> {
        let Some(t) = self.peek().cloned() else {
            return Err((
                self.end,
                "expected an address, a number or a name".to_string(),
            ));
        };
        match t.tok {
            Tok::Not => {
                self.i += 1;
                let (n, q) = self.id(q)?;
                Ok((Node::Not(Box::new(n)), q))
            }
            Tok::LParen => self.term(q),
            Tok::Word => {
                let lit_at = self.i;
                self.i += 1;
                let mut prefix = None;
                let mut mask = None;
                if self.peek_tok() == Some(&Tok::Slash) {
                    self.i += 1;
                    match self.peek_word().and_then(number) {
                        Some(n) => prefix = Some(n),
                        None => {
                            return Err((
                                self.pos(),
                                "expected a prefix length after `/`".to_string(),
                            ))
                        }
                    }
                    self.i += 1;
                } else if self.peek_word() == Some("mask") {
                    self.i += 1;
                    match self.peek_word() {
                        Some(m) => mask = Some(m.to_string()),
                        None => {
                            return Err((self.pos(), "expected a mask after `mask`".to_string()))
                        }
                    }
                    self.i += 1;
                }
                if !self.at_boundary() {
                    let t = &self.toks[self.i];
                    if t.tok == Tok::Word || t.tok == Tok::LParen || t.tok == Tok::Not {
                        return Err((t.pos, format!("expected `and` or `or` before `{}`", t.text)));
                    }
                    // An arithmetic expression (`5 > 3`, …): not modelled.
                    self.i = lit_at;
                    return Ok((self.unknown(), None));
                }
                let node = match q {
                    Some(q) => self.literal(q, &t.text, prefix, mask.as_deref()),
                    None => Node::Const(Tri::Maybe),
                };
                Ok((node, q))
            }
            _ => Err((
                t.pos,
                format!("expected an address, a number or a name, not `{}`", t.text),
            )),
        }
    }

    /// The primitive for literal `lit` under qualifiers `q` (Maybe for what libpcap would
    /// resolve by name or refuse).
    fn literal(&self, q: Quals, lit: &str, prefix: Option<u32>, mask: Option<&str>) -> Node {
        let maybe = Node::Const(Tri::Maybe);
        match q.addr {
            AQ::Port | AQ::Portrange => {
                if prefix.is_some() || mask.is_some() {
                    return maybe;
                }
                let protos = match q.proto {
                    PQ::Default => P_TCP | P_UDP | P_SCTP,
                    PQ::Tcp => P_TCP,
                    PQ::Udp => P_UDP,
                    PQ::Sctp => P_SCTP,
                    _ => return maybe,
                };
                let range = if q.addr == AQ::Port {
                    number(lit).map(|n| (n, n))
                } else {
                    match lit.split_once('-') {
                        Some((a, b)) => number(a).zip(number(b)),
                        None => number(lit).map(|n| (n, n)),
                    }
                };
                match range {
                    Some((a, b)) if a <= 65535 && b <= 65535 => self.prim(Prim::Port {
                        lo: a.min(b) as u16,
                        hi: a.max(b) as u16,
                        dir: q.dir,
                        protos,
                    }),
                    _ => maybe,
                }
            }
            AQ::Default | AQ::Host | AQ::Net => {
                let (net, full, given) = if lit.contains(':') {
                    match lit.parse::<std::net::Ipv6Addr>() {
                        Ok(a) => (IpAddr::V6(a), 128u32, 128u32),
                        Err(_) => return maybe,
                    }
                } else {
                    match dotted(lit) {
                        Some((v, bits)) => (IpAddr::V4(v.into()), 32, u32::from(bits)),
                        None => return maybe,
                    }
                };
                let prefix = match (prefix, mask) {
                    (Some(p), _) => p,
                    (None, Some(m)) => match (net, dotted(m)) {
                        (IpAddr::V4(_), Some((m, 32)))
                            if m.leading_ones() + m.trailing_zeros() == 32 =>
                        {
                            m.leading_ones()
                        }
                        _ => return maybe,
                    },
                    // `net 10` is 10.0.0.0/8; `host 10` is not modelled.
                    (None, None) if q.addr == AQ::Net => given,
                    (None, None) if given == full => full,
                    (None, None) => return maybe,
                };
                if prefix > full || (q.addr == AQ::Host && prefix != full) {
                    return maybe; // libpcap: mask syntax for networks only
                }
                // libpcap refuses a network with bits set beyond its mask.
                let clean = match net {
                    IpAddr::V4(a) => u32::from(a) & !v4_mask(prefix as u8) == 0,
                    IpAddr::V6(a) => u128::from(a) & !v6_mask(prefix as u8) == 0,
                };
                if !clean && prefix != full {
                    return maybe;
                }
                let links = match (q.proto, net) {
                    (PQ::Default, IpAddr::V4(_)) => L_IP | L_ARP | L_RARP,
                    (PQ::Default, IpAddr::V6(_)) => L_IP6,
                    (PQ::Ip, IpAddr::V4(_)) => L_IP,
                    (PQ::Arp, IpAddr::V4(_)) => L_ARP,
                    (PQ::Rarp, IpAddr::V4(_)) => L_RARP,
                    (PQ::Ip6, IpAddr::V6(_)) => L_IP6,
                    _ => return maybe,
                };
                self.prim(Prim::Addr {
                    net,
                    prefix: prefix as u8,
                    dir: q.dir,
                    links,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn tree(expr: &str) -> String {
        FlowFilter::parse(expr)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string()
    }

    fn err(expr: &str) -> ParseError {
        FlowFilter::parse(expr).unwrap_err()
    }

    fn v4(a: [u8; 4], b: [u8; 4], proto: u8, ap: u16, bp: u16) -> FlowFacts<'static> {
        FlowFacts {
            vlans: &[],
            ethertype: ETH_IP,
            proto,
            a: Some(IpAddr::V4(Ipv4Addr::from(a))),
            b: Some(IpAddr::V4(Ipv4Addr::from(b))),
            a_port: ap,
            b_port: bp,
            l4_irregular: false,
            unknown_l4: false,
        }
    }

    fn ev(expr: &str, f: &FlowFacts) -> Tri {
        FlowFilter::parse(expr)
            .unwrap_or_else(|e| panic!("{e}"))
            .eval(f)
    }

    const H1: &str = "Either:1.2.3.4/32@0xd";
    const P80: &str = "Either:port80-80@0x7";
    const UDP_: &str = "proto=17/true/true";
    const TCP_: &str = "proto=6/true/true";

    #[test]
    fn and_and_or_associate_left_at_one_precedence_not_binds_tighter() {
        assert_eq!(
            tree("host 1.2.3.4 and port 80 or udp"),
            format!("(({H1} and {P80}) or {UDP_})")
        );
        // tcpdump: `udp or tcp and port 80` is `(udp or tcp) and port 80`.
        assert_eq!(
            tree("udp or tcp and port 80"),
            format!("(({UDP_} or {TCP_}) and {P80})")
        );
        assert_eq!(
            tree("udp || tcp && port 80"),
            tree("udp or tcp and port 80")
        );
        assert_eq!(
            tree("udp or (tcp and port 80)"),
            format!("({UDP_} or ({TCP_} and {P80}))")
        );
        assert_eq!(
            tree("not tcp and udp"),
            format!("((not {TCP_}) and {UDP_})")
        );
        assert_eq!(tree("! tcp or udp"), format!("((not {TCP_}) or {UDP_})"));
        assert_eq!(
            tree("not (tcp or udp)"),
            format!("(not ({TCP_} or {UDP_}))")
        );
        assert_eq!(tree("not not tcp"), format!("(not (not {TCP_}))"));
        assert_eq!(tree(""), "True");
    }

    #[test]
    fn qualifiers() {
        assert_eq!(tree("src host 1.2.3.4"), "Src:1.2.3.4/32@0xd");
        assert_eq!(tree("dst 1.2.3.4"), "Dst:1.2.3.4/32@0xd");
        assert_eq!(tree("src or dst host 1.2.3.4"), H1);
        assert_eq!(tree("src and dst host 1.2.3.4"), "Both:1.2.3.4/32@0xd");
        assert_eq!(tree("ip host 1.2.3.4"), "Either:1.2.3.4/32@0x1");
        assert_eq!(tree("arp host 1.2.3.4"), "Either:1.2.3.4/32@0x4");
        assert_eq!(tree("host 2001:db8::1"), "Either:2001:db8::1/128@0x2");
        assert_eq!(tree("ip6 dst host ::1"), "Dst:::1/128@0x2");
        assert_eq!(tree("net 10.0.0.0/8"), "Either:10.0.0.0/8@0xd");
        assert_eq!(tree("net 10"), "Either:10.0.0.0/8@0xd");
        assert_eq!(tree("net 192.168"), "Either:192.168.0.0/16@0xd");
        assert_eq!(tree("net 10.0/16"), "Either:10.0.0.0/16@0xd");
        assert_eq!(
            tree("src net 10.0.0.0 mask 255.255.0.0"),
            "Src:10.0.0.0/16@0xd"
        );
        assert_eq!(tree("net 2001:db8::/32"), "Either:2001:db8::/32@0x2");
        assert_eq!(tree("10.0.0.0/8 or 1.2.3.4"), "(? or ?)"); // no qualifiers to take on
        assert_eq!(tree("tcp port 80"), "Either:port80-80@0x1");
        assert_eq!(tree("udp src port 0x35"), "Src:port53-53@0x2");
        assert_eq!(tree("port 010"), "Either:port8-8@0x7"); // octal, as libpcap reads it
        assert_eq!(tree("portrange 8080-80"), "Either:port80-8080@0x7");
        assert_eq!(tree("sctp dst portrange 1-1024"), "Dst:port1-1024@0x4");
        for (p, t) in [
            ("ip", "link=0x0800"),
            ("ip6", "link=0x86dd"),
            ("arp", "link=0x0806"),
        ] {
            assert_eq!(tree(p), t);
        }
        assert_eq!(tree("icmp"), "proto=1/true/false");
        assert_eq!(tree("icmp6"), "proto=58/false/true");
        assert_eq!(tree("sctp"), "proto=132/true/true");
        assert_eq!(tree("vlan"), "vlan");
        assert_eq!(tree("vlan 100"), "vlan100");
    }

    #[test]
    fn abbreviations_take_the_qualifiers_before_them() {
        assert_eq!(
            tree("host 1.2.3.4 or 5.6.7.8"),
            format!("({H1} or Either:5.6.7.8/32@0xd)")
        );
        assert_eq!(
            tree("tcp dst port 80 or 443 and not 8080"),
            "((Dst:port80-80@0x1 or Dst:port443-443@0x1) and (not Dst:port8080-8080@0x1))"
        );
        assert_eq!(
            tree("host 1.2.3.4 and (5.6.7.8 or 9.9.9.9)"),
            format!("({H1} and (Either:5.6.7.8/32@0xd or Either:9.9.9.9/32@0xd))")
        );
        assert_eq!(
            tree("net 10.0.0.0/8 or 172.16.0.0/12"),
            "(Either:10.0.0.0/8@0xd or Either:172.16.0.0/12@0xd)"
        );
        // After a protocol alone or a group there is nothing to take on.
        assert_eq!(tree("tcp or 80"), format!("({TCP_} or ?)"));
        assert_eq!(tree("(port 80) or 443"), format!("({P80} or ?)"));
    }

    #[test]
    fn vlan_moves_the_offsets_of_everything_after_it() {
        assert_eq!(
            tree("vlan 100 and host 1.2.3.4"),
            format!("(vlan100 and {H1}^1)")
        );
        assert_eq!(
            tree("host 1.2.3.4 or vlan and tcp"),
            format!("(({H1} or vlan) and {TCP_}^1)")
        );
        // Parentheses do not scope it (libpcap generates code left to right).
        assert_eq!(
            tree("(vlan and tcp) or udp"),
            format!("((vlan and {TCP_}^1) or {UDP_}^1)")
        );
        assert_eq!(
            tree("vlan and vlan 5 and udp"),
            format!("((vlan and vlan5^1) and {UDP_}^2)")
        );
        // Offset movers not modelled: everything after is Maybe.
        assert_eq!(
            tree("tcp or mpls 7 and udp"),
            format!("(({TCP_} or ?) and {UDP_}^?)")
        );
        assert_eq!(tree("pppoes and host 1.2.3.4"), format!("(? and {H1}^?)"));
    }

    #[test]
    fn what_is_not_modelled_is_maybe_not_an_error() {
        for e in [
            "tcp[13] & 2 != 0",
            "tcp[tcpflags] & (tcp-syn|tcp-ack) != 0",
            "(ip[2:2] - 20) > 100",
            "greater 100",
            "less 64",
            "len >= 100",
            "ether host 00:11:22:33:44:55",
            "ether src 00:11:22:33:44:55",
            "ether broadcast",
            "ip proto 17",
            "ip6 protochain 6",
            "host example.com",
            "port http",
            "portrange ftp-data-http",
            "icmp[icmptype] == icmp-echo",
            "wlan ra 00:11:22:33:44:55",
            "igmp",
            "gateway router",
            "5 > 3",
            "ether[0] & 1 = 0",
            "host 10.1",
            "net 10.1.2.3/8",
            "tcp host 1.2.3.4",
            "ip6 host 1.2.3.4",
            "vlan 5000",
        ] {
            assert_eq!(tree(e), "?", "{e}");
        }
        assert_eq!(
            tree("not tcp[13] & 2 != 0 and port 80"),
            format!("((not ?) and {P80})")
        );
        assert_eq!(tree("(tcp[13] & 2 != 0) or udp"), format!("(? or {UDP_})"));
    }

    #[test]
    fn syntax_errors_name_the_position() {
        for (e, pos, msg) in [
            ("host", 4, "expected an address"),
            ("tcp and", 7, "expected a primitive after `and`"),
            ("tcp or or udp", 7, "expected a primitive after `or`"),
            ("(tcp or udp", 0, "`(` without `)`"),
            ("tcp or udp)", 10, "`)` without `(`"),
            (
                "host 1.2.3.4 port 80",
                13,
                "expected `and` or `or` before `port`",
            ),
            ("and tcp", 0, "expected a primitive before `and`"),
            ("()", 1, "expected a primitive before `)`"),
            ("tcp $ udp", 4, "unexpected character `$`"),
            ("not", 3, "expected a primitive"),
            ("src or port 80", 7, "expected `dst` after `src or`"),
            ("net 10.0.0.0/", 13, "expected a prefix length"),
        ] {
            let x = err(e);
            assert_eq!(x.pos, pos, "{e}: {x}");
            assert!(x.msg.contains(msg), "{e}: {x}");
            assert!(x.to_string().starts_with(&format!("filter `{e}`: ")), "{x}");
            assert!(
                x.to_string()
                    .ends_with(&format!("at character {}", pos + 1)),
                "{x}"
            );
        }
    }

    #[test]
    fn kleene_logic() {
        use Tri::*;
        let all = [False, Maybe, True];
        for a in all {
            assert_eq!(False.and(a), False);
            assert_eq!(True.or(a), True);
            assert_eq!(True.and(a), a);
            assert_eq!(False.or(a), a);
        }
        assert_eq!(!Maybe, Maybe);
        assert_eq!(!True, False);
        assert_eq!(Maybe.and(Maybe), Maybe);
        let f = v4([10, 0, 0, 1], [10, 0, 0, 2], TCP, 40000, 80);
        assert_eq!(ev("greater 100", &f), Maybe);
        assert_eq!(ev("not greater 100", &f), Maybe);
        assert_eq!(ev("udp and greater 100", &f), False);
        assert_eq!(ev("tcp or greater 100", &f), True);
        assert_eq!(ev("tcp and greater 100", &f), Maybe);
        assert_eq!(ev("not (udp or greater 100)", &f), Maybe);
        assert_eq!(ev("not (tcp or greater 100)", &f), False);
    }

    #[test]
    fn flows_ipv4() {
        use Tri::*;
        let f = v4([10, 0, 0, 1], [192, 168, 1, 9], TCP, 40000, 443);
        for (e, t) in [
            ("host 10.0.0.1", True),
            ("host 192.168.1.9", True),
            ("host 10.0.0.3", False),
            ("src host 10.0.0.1", Maybe),
            ("dst host 192.168.1.9", Maybe),
            ("src host 10.0.0.3", False),
            ("src and dst host 10.0.0.1", False),
            ("ip host 10.0.0.1", True),
            ("arp host 10.0.0.1", False),
            ("ip6 host ::1", False),
            ("host 2001:db8::1", False),
            ("net 10.0.0.0/8", True),
            ("net 172.16.0.0/12", False),
            ("src net 192.168", Maybe),
            ("src and dst net 0.0.0.0/0", True),
            ("port 443", True),
            ("port 80", False),
            ("tcp port 443", True),
            ("udp port 443", False),
            ("src port 443", Maybe),
            ("portrange 400-500", True),
            ("src portrange 1-65535", True),
            ("dst portrange 30000-50000", Maybe),
            ("tcp", True),
            ("udp", False),
            ("ip", True),
            ("ip6", False),
            ("arp", False),
            ("icmp", False),
            ("vlan", False),
            ("vlan 10", False),
            ("not host 10.0.0.1", False),
            ("not src host 10.0.0.1", Maybe),
            ("host 10.0.0.1 and port 443", True),
            ("host 10.0.0.1 and not port 443", False),
            ("host 10.0.0.3 or 10.0.0.1", True),
            ("udp or port 443", True),
            ("udp or tcp and port 22", False),
            ("host 10.0.0.1 and (port 22 or 443)", True),
            ("vlan and host 10.0.0.1", False),
            ("not vlan and host 10.0.0.1", Maybe), // host read 4 bytes on: in the payload
            ("tcp[13] & 2 != 0 and host 10.0.0.1", Maybe),
            ("tcp[13] & 2 != 0 and host 10.0.0.3", False),
            ("mpls or host 10.0.0.3", Maybe),
        ] {
            assert_eq!(ev(e, &f), t, "{e}");
            assert_eq!(
                FlowFilter::parse(e).unwrap().may_match(&f),
                t != False,
                "{e}"
            );
        }
        // One endpoint: both directions carry it.
        let same = v4([10, 0, 0, 1], [10, 0, 0, 1], UDP, 53, 53);
        assert_eq!(ev("src and dst host 10.0.0.1", &same), True);
        assert_eq!(ev("src port 53", &same), True);
        // Ports of ICMP (a flow table may key ICMP on type and code) are not ports.
        let icmp = v4([10, 0, 0, 1], [10, 0, 0, 2], 1, 8, 0);
        assert_eq!(ev("port 8", &icmp), False);
        assert_eq!(ev("icmp", &icmp), True);
        // Fragments after the first carry no ports: the port may not be seen.
        let frag = FlowFacts {
            l4_irregular: true,
            ..f
        };
        assert_eq!(ev("port 443", &frag), Maybe);
        assert_eq!(ev("port 22", &frag), False);
        assert_eq!(ev("tcp", &frag), True);
        // Unknown addresses.
        let anon = FlowFacts { a: None, ..f };
        assert_eq!(ev("host 10.0.0.3", &anon), Maybe);
        assert_eq!(ev("ip6 host ::1", &anon), False);
        // A malformed row: protocol 0 and ports 0 stand for "not known", so no protocol or
        // port primitive rules it out; the EtherType and the addresses still do.
        let bad = FlowFacts {
            proto: 0,
            a_port: 0,
            b_port: 0,
            l4_irregular: true,
            unknown_l4: true,
            ..f
        };
        for e in [
            "tcp",
            "udp",
            "icmp",
            "port 443",
            "tcp port 80",
            "portrange 1-9",
        ] {
            assert_eq!(ev(e, &bad), Maybe, "{e}");
        }
        assert_eq!(ev("not tcp", &bad), Maybe);
        assert_eq!(ev("ip6 and tcp", &bad), False);
        assert_eq!(ev("arp", &bad), False);
        assert_eq!(ev("tcp and host 10.0.0.3", &bad), False);
    }

    #[test]
    fn flows_ipv6_arp_and_vlans() {
        use Tri::*;
        let a6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let b6: Ipv6Addr = "fe80::2".parse().unwrap();
        let f6 = FlowFacts {
            vlans: &[],
            ethertype: ETH_IP6,
            proto: UDP,
            a: Some(a6.into()),
            b: Some(b6.into()),
            a_port: 546,
            b_port: 547,
            l4_irregular: false,
            unknown_l4: false,
        };
        for (e, t) in [
            ("ip6", True),
            ("ip", False),
            ("udp", True),
            ("host 2001:db8::1", True),
            ("host 2001:db8::3", False),
            ("net 2001:db8::/32", True),
            ("src net fe80::/10", Maybe),
            ("net 10.0.0.0/8", False),
            ("host 10.0.0.1", False),
            ("udp port 547", True),
            ("icmp6", False),
            ("not ip6 host fe80::2", False),
        ] {
            assert_eq!(ev(e, &f6), t, "{e}");
        }
        // Extension headers hide the protocol from libpcap's `udp` and `port`.
        let ext = FlowFacts {
            l4_irregular: true,
            unknown_l4: false,
            ..f6
        };
        assert_eq!(ev("udp", &ext), Maybe);
        assert_eq!(ev("not udp", &ext), Maybe);
        assert_eq!(ev("tcp", &ext), False);
        assert_eq!(ev("port 547", &ext), Maybe);
        assert_eq!(ev("host 2001:db8::1", &ext), True);

        let arp = FlowFacts {
            vlans: &[],
            ethertype: ETH_ARP,
            proto: 0,
            a: None,
            b: None,
            a_port: 0,
            b_port: 0,
            l4_irregular: false,
            unknown_l4: false,
        };
        assert_eq!(ev("arp", &arp), True);
        assert_eq!(ev("host 10.0.0.1", &arp), Maybe);
        assert_eq!(ev("ip host 10.0.0.1", &arp), False);
        assert_eq!(ev("host ::1", &arp), False);
        assert_eq!(ev("port 80", &arp), False);
        assert_eq!(ev("not tcp", &arp), True);

        let tagged = FlowFacts {
            vlans: &[100, 7],
            ..v4([10, 0, 0, 1], [10, 0, 0, 2], TCP, 1, 2)
        };
        for (e, t) in [
            // Without `vlan`, libpcap reads a TPID where the EtherType would be.
            ("host 10.0.0.1", False),
            ("tcp", False),
            ("not tcp", True),
            ("vlan", True),
            ("vlan 100", True),
            ("vlan 7", False),
            ("vlan and host 10.0.0.1", False),
            ("vlan and vlan and host 10.0.0.1", True),
            ("vlan 100 and vlan 7 and tcp port 2", True),
            ("vlan 100 and vlan 8", False),
            ("vlan and vlan and vlan", False),
            ("vlan and vlan and vlan or ip", Maybe), // past the tags: payload bytes
            ("vlan or vlan or vlan or tcp", True),
            ("vlan 7 or tcp", False),
            ("(vlan or tcp) and vlan 7 and tcp", True),
            ("not vlan 100", False),
        ] {
            assert_eq!(ev(e, &tagged), t, "{e}");
        }
    }

    /// Soundness against libpcap: random flows, a packet of each (either direction), random
    /// filters from the grammar. Whenever libpcap's program accepts the packet the flow must
    /// not read False, and whenever it rejects it the flow must not read True; whatever
    /// libpcap compiles must parse.
    mod soundness {
        use super::*;
        use crate::rx::afpacket::OfflineFilter;
        use proptest::prelude::*;

        const ADDR4: [&str; 4] = ["10.0.0.1", "10.0.0.2", "10.1.2.3", "192.168.1.1"];
        const ADDR6: [&str; 4] = ["2001:db8::1", "2001:db8::2", "fe80::1", "2001:db8:1::3"];
        const OTHER: [&str; 2] = ["10.9.9.9", "2001:db8::99"];
        const PORTS: [u16; 5] = [22, 53, 80, 443, 8080];
        const VIDS: [u16; 3] = [5, 100, 4095];

        #[derive(Debug, Clone)]
        enum Kind {
            V4,
            V6,
            Arp,
        }

        #[derive(Debug, Clone)]
        struct Flow {
            kind: Kind,
            a: usize,
            b: usize,
            proto: u8,
            a_port: u16,
            b_port: u16,
            vlans: Vec<u16>,
            qinq: bool,
            /// IPv4: a fragment after the first; IPv6: a hop-by-hop header first.
            irregular: bool,
            forward: bool,
        }

        fn flow() -> impl Strategy<Value = Flow> {
            (
                prop_oneof![4 => Just(Kind::V4), 4 => Just(Kind::V6), 1 => Just(Kind::Arp)],
                0..4usize,
                0..4usize,
                prop::sample::select(vec![TCP, UDP, SCTP, 1, 47]),
                prop::sample::select(PORTS.to_vec()),
                prop::sample::select(PORTS.to_vec()),
                prop::collection::vec(prop::sample::select(VIDS.to_vec()), 0..3),
                any::<bool>(),
                prop::bool::weighted(0.2),
                any::<bool>(),
            )
                .prop_map(
                    |(kind, a, b, proto, a_port, b_port, vlans, qinq, irregular, forward)| {
                        let proto = match (&kind, proto) {
                            (Kind::V6, 1) => 58,
                            (_, p) => p,
                        };
                        Flow {
                            kind,
                            a,
                            b,
                            proto,
                            a_port,
                            b_port,
                            vlans,
                            qinq,
                            irregular,
                            forward,
                        }
                    },
                )
        }

        fn addr(f: &Flow, i: usize) -> IpAddr {
            match f.kind {
                Kind::V6 => ADDR6[i].parse().unwrap(),
                _ => ADDR4[i].parse().unwrap(),
            }
        }

        fn octets(a: IpAddr) -> Vec<u8> {
            match a {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            }
        }

        /// An Ethernet frame of the flow, from a to b or b to a.
        fn packet(f: &Flow) -> Vec<u8> {
            let mut p = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
            for (i, v) in f.vlans.iter().enumerate() {
                let tpid: u16 = if i == 0 && f.qinq { 0x88a8 } else { 0x8100 };
                p.extend(tpid.to_be_bytes());
                p.extend((v | 0x2000).to_be_bytes()); // priority 1
            }
            let (src, dst) = if f.forward { (f.a, f.b) } else { (f.b, f.a) };
            let (src, dst) = (octets(addr(f, src)), octets(addr(f, dst)));
            if let Kind::Arp = f.kind {
                p.extend(ETH_ARP.to_be_bytes());
                p.extend([0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1]);
                p.extend(&src);
                p.extend([0; 6]);
                p.extend(&dst);
                return p;
            }
            let (sp, dp) = if f.forward {
                (f.a_port, f.b_port)
            } else {
                (f.b_port, f.a_port)
            };
            let mut l4 = Vec::new();
            match f.proto {
                TCP => {
                    l4.extend(sp.to_be_bytes());
                    l4.extend(dp.to_be_bytes());
                    l4.extend([0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 1, 0, 0, 0, 0, 0]);
                }
                UDP => {
                    l4.extend(sp.to_be_bytes());
                    l4.extend(dp.to_be_bytes());
                    l4.extend(16u16.to_be_bytes());
                    l4.extend([0, 0]);
                }
                SCTP => {
                    l4.extend(sp.to_be_bytes());
                    l4.extend(dp.to_be_bytes());
                    l4.extend([0; 8]);
                }
                _ => l4.extend([8, 0, 0, 0, 0, 1, 0, 1]), // ICMP echo, or GRE-ish bytes
            }
            l4.extend([0xa5; 8]);
            match f.kind {
                Kind::V4 => {
                    p.extend(ETH_IP.to_be_bytes());
                    let total = (20 + l4.len()) as u16;
                    p.extend([0x45, 0]);
                    p.extend(total.to_be_bytes());
                    p.extend([0, 7]);
                    p.extend(if f.irregular { [0x00, 0x10] } else { [0x40, 0] });
                    p.extend([64, f.proto, 0, 0]);
                }
                _ => {
                    p.extend(ETH_IP6.to_be_bytes());
                    let ext = if f.irregular { 8 } else { 0 };
                    p.extend([0x60, 0, 0, 0]);
                    p.extend(((ext + l4.len()) as u16).to_be_bytes());
                    p.extend([if f.irregular { 0 } else { f.proto }, 64]);
                }
            }
            p.extend(&src);
            p.extend(&dst);
            if f.irregular && matches!(f.kind, Kind::V6) {
                p.extend([f.proto, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop, PadN
            }
            p.extend(l4);
            p
        }

        fn facts<'a>(f: &Flow, vlans: &'a [u16]) -> FlowFacts<'a> {
            FlowFacts {
                vlans,
                ethertype: match f.kind {
                    Kind::V4 => ETH_IP,
                    Kind::V6 => ETH_IP6,
                    Kind::Arp => ETH_ARP,
                },
                proto: f.proto,
                a: Some(addr(f, f.a)),
                b: Some(addr(f, f.b)),
                // As a flow table might key ICMP: type and code in the port fields.
                a_port: f.a_port,
                b_port: f.b_port,
                l4_irregular: f.irregular,
                unknown_l4: false,
            }
        }

        fn any_addr() -> impl Strategy<Value = String> {
            prop::sample::select(
                ADDR4
                    .iter()
                    .chain(ADDR6.iter())
                    .chain(OTHER.iter())
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            )
        }

        fn leaf() -> impl Strategy<Value = String> {
            let hostq = prop::sample::select(vec![
                "host",
                "src host",
                "dst host",
                "src or dst host",
                "src and dst host",
                "ip host",
                "ip6 host",
                "arp host",
                "src",
                "dst",
            ]);
            let portq = prop::sample::select(vec![
                "port",
                "src port",
                "dst port",
                "tcp port",
                "udp port",
                "sctp dst port",
                "tcp src port",
                "udp src or dst port",
                "src and dst port",
            ]);
            let fixed = prop::sample::select(vec![
                "net 10.0.0.0/8",
                "net 10.0.0.0/16",
                "src net 10.1",
                "net 192.168",
                "dst net 10",
                "net 10.0.0.0 mask 255.255.255.0",
                "net 2001:db8::/32",
                "net 2001:db8:1::/48",
                "src net fe80::/10",
                "portrange 20-80",
                "src portrange 443-8080",
                "udp portrange 50-60",
                "tcp dst portrange 1-100",
                "ip",
                "ip6",
                "tcp",
                "udp",
                "icmp",
                "icmp6",
                "sctp",
                "arp",
                "rarp",
                "vlan",
                "vlan 5",
                "vlan 100",
                "vlan 7",
                "tcp[13] & 2 != 0",
                "greater 100",
                "less 80",
                "ether host 02:00:00:00:00:01",
                "ip proto 17",
                "ether[0] & 1 = 0",
                "len > 90",
                "mpls",
                "ether broadcast",
                "(ip[2:2] - 20) > 30",
                "pppoes",
                "geneve",
                "ip6 protochain 6",
                "(vlan 100)",
                "vlan (5)",
                "ether proto 0x8100",
                "host example.invalid",
                "port http",
            ]);
            prop_oneof![
                3 => (hostq, any_addr()).prop_map(|(q, a)| format!("{q} {a}")),
                3 => (portq, prop::sample::select(PORTS.to_vec())).prop_map(|(q, p)| format!("{q} {p}")),
                4 => fixed.prop_map(String::from),
                1 => (any_addr(), any_addr()).prop_map(|(a, b)| format!("host {a} or {b}")),
                1 => (prop::sample::select(PORTS.to_vec()), prop::sample::select(PORTS.to_vec()))
                    .prop_map(|(a, b)| format!("port {a} and not {b}")),
                1 => (any_addr(), any_addr(), any_addr())
                    .prop_map(|(a, b, c)| format!("src host {a} and ({b} || not {c})")),
            ]
        }

        fn filter() -> impl Strategy<Value = String> {
            leaf().prop_recursive(4, 24, 2, |inner| {
                prop_oneof![
                    (
                        inner.clone(),
                        prop::sample::select(vec![" and ", " or ", " && ", "||", "&&"]),
                        inner.clone()
                    )
                        .prop_map(|(a, op, b)| format!("{a}{op}{b}")),
                    inner.clone().prop_map(|a| format!("({a})")),
                    inner.clone().prop_map(|a| format!("not {a}")),
                    inner.clone().prop_map(|a| format!("!({a})")),
                    inner.prop_map(|a| format!("!{a}")),
                ]
            })
        }

        /// Whether libpcap loads (once: a SKIP line, not one per case); under CI it must.
        fn have_libpcap() -> bool {
            static HAVE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
            let r = HAVE.get_or_init(|| {
                OfflineFilter::new("ip", 1, 0).map(drop).inspect_err(|e| {
                    eprintln!("SKIP flow filter soundness: {e}");
                })
            });
            if let Err(e) = r {
                assert!(std::env::var_os("CI").is_none(), "CI has libpcap0.8: {e}");
            }
            r.is_ok()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(
                std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2048)
            ))]
            #[test]
            fn never_prunes_what_libpcap_matches(f in flow(), expr in filter()) {
                if !have_libpcap() {
                    return Ok(());
                }
                let Ok(exact) = OfflineFilter::new(&expr, 1, 0) else {
                    return Ok(()); // libpcap refuses it (e.g. `arp host 2001:db8::1`)
                };
                let ours = FlowFilter::parse(&expr).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let p = packet(&f);
                let n = p.len() as u32;
                let hit = exact.matches(n, n, 0, &p);
                let t = ours.eval(&facts(&f, &f.vlans));
                if hit {
                    prop_assert!(t != Tri::False, "libpcap matches, pruned: {expr} => {ours} on {f:?}");
                } else {
                    prop_assert!(t != Tri::True, "libpcap rejects, True: {expr} => {ours} on {f:?}");
                }
            }
        }
    }
}
