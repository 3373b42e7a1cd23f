//! Who gets a connection slot: the allowlist (`--allow`, checked on accept before any byte
//! is read), the total connection limit (from the descriptor limit, which `record` raises to
//! its hard maximum at start), the per-peer limit, and a pause of accepting after
//! EMFILE/ENFILE instead of failing. Shared by every network backend; pure
//! bookkeeping, the backends do the accepting and closing.
//!
//! A refused connection is accepted and closed at once (the sender sees the close), counted,
//! and logged at most once a second with the running count.

use super::RxStats;
use crate::area::Area;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Descriptors kept for the archive, the manifest, rings and the program itself.
const RESERVED_FDS: u64 = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub max_conns: usize,
    /// Connections open at once from one address.
    pub max_per_peer: usize,
    /// The networks a sender may connect from; empty: any.
    pub allow: Arc<[Cidr]>,
}

/// An IPv4 or IPv6 network, `ADDR/PREFIX` (a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = v4_mask(self.prefix);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = v6_mask(self.prefix);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| {
            format!("`{s}` is not a network: use ADDR/PREFIX, e.g. 10.0.0.0/8 or fd00::/8")
        })?;
        let net = net.to_canonical();
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("`{s}`: the prefix length must be 0 to {max}")),
            },
        };
        let probe = Cidr { net, prefix };
        if !probe.contains(net) || probe.host_bits_set() {
            return Err(format!(
                "`{s}` has host bits set: did you mean {}/{prefix}?",
                probe.network()
            ));
        }
        Ok(probe)
    }
}

/// The netmask of an IPv4 prefix length (0 to 32; longer counts as 32).
pub fn v4_mask(prefix: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0)
}

/// The netmask of an IPv6 prefix length (0 to 128; longer counts as 128).
pub fn v6_mask(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

impl Cidr {
    fn network(&self) -> IpAddr {
        match self.net {
            IpAddr::V4(n) => IpAddr::V4((u32::from(n) & v4_mask(self.prefix)).into()),
            IpAddr::V6(n) => IpAddr::V6((u128::from(n) & v6_mask(self.prefix)).into()),
        }
    }

    fn host_bits_set(&self) -> bool {
        self.network() != self.net
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Limits {
    /// The limits for a process allowed `nofile` descriptors: each connection needs two (its
    /// socket and its stream's open segment file). `max_conns` can only lower that.
    pub fn derive(nofile: u64, max_conns: Option<usize>, max_per_peer: usize) -> Limits {
        let by_fds = (nofile.saturating_sub(RESERVED_FDS) / 2).max(1) as usize;
        Limits {
            max_conns: max_conns.map_or(by_fds, |m| m.min(by_fds)).max(1),
            max_per_peer: max_per_peer.max(1),
            allow: Arc::from([]),
        }
    }

    /// Only senders from `allow` get a connection (none given: any sender).
    pub fn allowing(mut self, allow: &[Cidr]) -> Limits {
        self.allow = allow.into();
        self
    }

    fn allows(&self, peer: IpAddr) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|c| c.contains(peer))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_conns: 4096,
            max_per_peer: DEFAULT_MAX_PER_PEER,
            allow: Arc::from([]),
        }
    }
}

pub const DEFAULT_MAX_PER_PEER: usize = 128;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The peer is not in `--allow`.
    NotAllowed,
    TooMany,
    PeerTooMany,
}

pub struct Admission {
    limits: Limits,
    open: usize,
    by_peer: HashMap<IpAddr, usize>,
    paused_until: Option<Instant>,
    pause: Duration,
    last_log: Option<Instant>,
    /// New connections are being held back because the area is nearly full.
    held_back: bool,
}

const PAUSE_MIN: Duration = Duration::from_millis(50);
const PAUSE_MAX: Duration = Duration::from_secs(1);

impl Admission {
    pub fn new(limits: Limits) -> Admission {
        Admission {
            limits,
            open: 0,
            by_peer: HashMap::new(),
            paused_until: None,
            pause: PAUSE_MIN,
            last_log: None,
            held_back: false,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits.clone()
    }

    /// Takes a slot for the connection `sock`, or says why not (counted and logged).
    /// Returns the peer address the slot is counted under.
    pub fn admit_socket(&mut self, sock: &TcpStream, stats: &RxStats) -> Result<IpAddr, Refusal> {
        let peer = sock
            .peer_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip().to_canonical());
        self.admit(peer, stats).map(|()| peer)
    }

    /// Whether to accept now: not while accepting is paused after running out of
    /// descriptors, and not while `area` is nearly full — the senders then wait in the listen
    /// backlog until the writer has caught up (each such spell is counted once).
    pub fn open_to_new(&mut self, area: &Area, stats: &RxStats) -> bool {
        if !self.accepting() {
            return false;
        }
        let pressure = area.under_pressure();
        if pressure && !self.held_back {
            stats.add(&stats.admission_held, 1);
        }
        self.held_back = pressure;
        !pressure
    }

    /// Takes a slot for a connection from `peer`, or says why not (counted and logged).
    pub fn admit(&mut self, peer: IpAddr, stats: &RxStats) -> Result<(), Refusal> {
        let from_peer = self.by_peer.get(&peer).copied().unwrap_or(0);
        let refusal = if !self.limits.allows(peer) {
            Some(Refusal::NotAllowed)
        } else if self.open >= self.limits.max_conns {
            Some(Refusal::TooMany)
        } else if from_peer >= self.limits.max_per_peer {
            Some(Refusal::PeerTooMany)
        } else {
            None
        };
        if let Some(r) = refusal {
            let counter = match r {
                Refusal::NotAllowed => &stats.not_allowed,
                _ => &stats.refused,
            };
            stats.add(counter, 1);
            let now = Instant::now();
            if self
                .last_log
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                self.last_log = Some(now);
                let why = match r {
                    Refusal::NotAllowed => "it is not in --allow".to_string(),
                    Refusal::TooMany => format!(
                        "{} connections are open, the limit (--max-conns, and the descriptor limit)",
                        self.open
                    ),
                    Refusal::PeerTooMany => format!(
                        "{from_peer} connections from it are open, the limit (--max-conns-per-peer)"
                    ),
                };
                eprintln!(
                    "zcap: refusing a connection from {}: {why}; {} refused so far",
                    peer.to_canonical(),
                    counter.load(std::sync::atomic::Ordering::Relaxed)
                );
            }
            return Err(r);
        }
        self.open += 1;
        *self.by_peer.entry(peer).or_insert(0) += 1;
        self.pause = PAUSE_MIN;
        Ok(())
    }

    /// A connection from `peer` that [`Admission::admit`] let in has closed.
    pub fn left(&mut self, peer: IpAddr) {
        self.open = self.open.saturating_sub(1);
        if let Some(n) = self.by_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.by_peer.remove(&peer);
            }
        }
    }

    /// accept(2) failed with `e`. Out of descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM): stop
    /// accepting for a while (backing off up to a second) and say so; the recorder goes on.
    pub fn accept_failed(&mut self, e: &io::Error, stats: &RxStats) {
        stats.add(&stats.accept_errors, 1);
        let out_of_fds = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        if out_of_fds {
            self.paused_until = Some(Instant::now() + self.pause);
            eprintln!(
                "zcap: accept failed: {e}; not accepting for {} ms ({} connections open; raise \
                 `ulimit -n` or lower --max-conns)",
                self.pause.as_millis(),
                self.open
            );
            self.pause = (self.pause * 2).min(PAUSE_MAX);
        } else {
            eprintln!("zcap: accept failed: {e}");
        }
    }

    /// False while accepting is paused after an accept failure.
    pub fn accepting(&mut self) -> bool {
        match self.paused_until {
            Some(t) if Instant::now() < t => false,
            Some(_) => {
                self.paused_until = None;
                true
            }
            None => true,
        }
    }

    pub fn open(&self) -> usize {
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_descriptor_limit() {
        let l = Limits::derive(1024, None, 16);
        assert_eq!(l.max_conns, 480);
        assert_eq!(Limits::derive(1024, Some(100), 16).max_conns, 100);
        assert_eq!(
            Limits::derive(1024, Some(100_000), 16).max_conns,
            480,
            "never more than the descriptors allow"
        );
        assert_eq!(Limits::derive(10, None, 16).max_conns, 1);
    }

    #[test]
    fn admission_counts_per_peer_and_in_total() {
        let stats = RxStats::default();
        let mut a = Admission::new(Limits {
            max_conns: 3,
            max_per_peer: 2,
            allow: Arc::from([]),
        });
        let p: IpAddr = "10.0.0.1".parse().unwrap();
        let q: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(a.admit(p, &stats).is_ok());
        assert!(a.admit(p, &stats).is_ok());
        assert_eq!(a.admit(p, &stats), Err(Refusal::PeerTooMany));
        assert!(a.admit(q, &stats).is_ok());
        assert_eq!(a.admit(q, &stats), Err(Refusal::TooMany));
        a.left(p);
        assert!(a.admit(q, &stats).is_ok());
        assert_eq!(stats.refused.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[test]
    fn networks_parse_and_contain_their_hosts_only() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        assert!(c("127.0.0.1/32").contains("127.0.0.1".parse().unwrap()));
        assert!(!c("127.0.0.1/32").contains("127.0.0.2".parse().unwrap()));
        assert!(
            c("127.0.0.1").contains("127.0.0.1".parse().unwrap()),
            "a bare host"
        );
        assert!(c("10.0.0.0/8").contains("10.255.1.2".parse().unwrap()));
        assert!(!c("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(c("0.0.0.0/0").contains("192.0.2.7".parse().unwrap()));
        assert!(c("fd00::/8").contains("fd12::1".parse().unwrap()));
        assert!(!c("fd00::/8").contains("fe80::1".parse().unwrap()));
        assert!(
            !c("fd00::/8").contains("10.0.0.1".parse().unwrap()),
            "no family mixing"
        );
        // A v4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
        assert!(c("192.0.2.0/24").contains("::ffff:192.0.2.9".parse().unwrap()));
        for (bad, says) in [
            ("10.0.0.1/8", "did you mean 10.0.0.0/8?"),
            ("10.0.0.0/33", "0 to 32"),
            ("fd00::/129", "0 to 128"),
            ("example.com/8", "not a network"),
        ] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_peer_outside_the_allowlist_is_refused_before_any_limit() {
        let stats = RxStats::default();
        let allow = ["127.0.0.1/32".parse::<Cidr>().unwrap()];
        let mut a = Admission::new(Limits::default().allowing(&allow));
        assert_eq!(
            a.admit("127.0.0.2".parse().unwrap(), &stats),
            Err(Refusal::NotAllowed)
        );
        assert!(a.admit("127.0.0.1".parse().unwrap(), &stats).is_ok());
        assert_eq!(a.open(), 1, "a refused peer takes no slot");
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!((get(&stats.not_allowed), get(&stats.refused)), (1, 0));
    }

    #[test]
    fn running_out_of_descriptors_pauses_accepting() {
        let stats = RxStats::default();
        let mut a = Admission::new(Limits::default());
        assert!(a.accepting());
        a.accept_failed(&io::Error::from_raw_os_error(libc::EMFILE), &stats);
        assert!(!a.accepting(), "paused after EMFILE");
        a.accept_failed(&io::Error::from_raw_os_error(libc::ECONNABORTED), &stats);
        assert_eq!(
            stats
                .accept_errors
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }
}
