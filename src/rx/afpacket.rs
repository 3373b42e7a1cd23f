//! The `afpacket` backend: live capture from network interfaces (`zcap record -i IF`) on
//! AF_PACKET TPACKET_V3 block rings. One ring per capture thread (`--fanout N` threads per
//! interface, joined in a PACKET_FANOUT hash group); each thread is one stream of the archive,
//! named `IF-tN-START`.
//!
//! **The ring is the area.** The kernel fills a block with packets and retires it to user
//! space (TP_STATUS_USER). The thread then writes, for each packet, the 16-byte pcap record
//! header (nanosecond: ts_sec, ts_nsec, caplen = tp_snaplen, len = tp_len) into the bytes
//! just before the packet data — room the kernel leaves there for its sockaddr_ll, which zcap
//! does not need — so that every packet is one contiguous `[record header | frame]` span of
//! the block, and lends the whole block to the writer as one [`Event::Records`]: one event,
//! one span list and one `Arc` per block, nothing allocated or copied per packet. The stream
//! begins with a 24-byte pcap file header (ns magic, the snaplen, the interface's link type),
//! the only bytes not from the ring (one page of its own).
//!
//! **Release after persist.** The writer drops the block's chunk when the frame holding its
//! last record is in the segment file; the drop queues the block's token on the area, and
//! this thread gives the block back to the kernel (status TP_STATUS_KERNEL, a Release store).
//! While the writer holds blocks the kernel has fewer to fill; when it has none it drops
//! packets, and those drops (PACKET_STATISTICS) are counted and reported, never hidden.
//!
//! Owns: the packet sockets and their rings. Must not parse beyond the tpacket headers,
//! compress or persist. The kernel calls are in `sys`.

mod filter;
mod sys;

use super::{Event, Events, RxStats, Span, Stop};
use crate::area::{Area, ReleaseToken, StreamId};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use filter::{OfflineFilter, OfflineFilters};
pub use sys::Stats;

/// The pseudo-interface of every interface (tcpdump's `-i any`), captured as Linux cooked.
pub const ANY: &str = "any";
/// LINKTYPE_LINUX_SLL.
pub const LINKTYPE_LINUX_SLL: u32 = 113;

/// pcap's nanosecond magic, written in native byte order (readers take either order).
pub const PCAP_NS_MAGIC: u32 = 0xa1b2_3c4d;
/// libpcap's MAXIMUM_SNAPLEN and tcpdump's default `-s`.
pub const DEFAULT_SNAPLEN: u32 = 262_144;
/// Ring geometry for 10 Gbit/s: 64 blocks of 4 MiB hold ~200 ms of line rate, and a block
/// is retired at least every 50 ms, which bounds the latency of a quiet interface and the
/// drain at shutdown.
pub const DEFAULT_BLOCK_SIZE: u32 = 4 << 20;
pub const DEFAULT_BLOCK_COUNT: u32 = 64;
pub const DEFAULT_BLOCK_TIMEOUT: Duration = Duration::from_millis(50);

/// What live capture needs to know; `record` builds it from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// Interfaces to capture (each gets `fanout` rings).
    pub interfaces: Vec<String>,
    pub promisc: bool,
    pub snaplen: u32,
    /// Capture threads (rings) per interface; above 1 they share a PACKET_FANOUT hash group.
    pub fanout: u16,
    /// The fanout group id (another process using the same id shares the interface's
    /// packets with this one); default: derived from the process id. A group belongs to one
    /// device, so the k-th interface uses id + k.
    pub fanout_group: Option<u16>,
    pub block_size: u32,
    pub block_count: u32,
    pub block_timeout: Duration,
    /// A tcpdump filter expression (compiled by libpcap, run by the kernel).
    pub filter: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            interfaces: Vec::new(),
            promisc: true,
            snaplen: DEFAULT_SNAPLEN,
            fanout: 1,
            fanout_group: None,
            block_size: DEFAULT_BLOCK_SIZE,
            block_count: DEFAULT_BLOCK_COUNT,
            block_timeout: DEFAULT_BLOCK_TIMEOUT,
            filter: None,
        }
    }
}

/// The pcap link type (LINKTYPE_*) of an interface's frames as a raw packet socket sees them.
pub fn link_type(iface: &str, arphrd: u16) -> io::Result<u32> {
    match arphrd {
        libc::ARPHRD_ETHER | libc::ARPHRD_LOOPBACK => Ok(1), // LINKTYPE_ETHERNET
        libc::ARPHRD_NONE => Ok(101),                        // tun: LINKTYPE_RAW (IP)
        libc::ARPHRD_IEEE80211_RADIOTAP => Ok(127),
        other => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "interface {iface} has hardware type ARPHRD {other}, whose frames zcap does not \
                 capture yet (Ethernet, loopback, tun and radiotap are supported)"
            ),
        )),
    }
}

/// The 24-byte pcap file header of a capture stream.
pub fn file_header(snaplen: u32, linktype: u32) -> [u8; 24] {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&PCAP_NS_MAGIC.to_ne_bytes());
    h[4..6].copy_from_slice(&2u16.to_ne_bytes());
    h[6..8].copy_from_slice(&4u16.to_ne_bytes());
    h[16..20].copy_from_slice(&snaplen.to_ne_bytes());
    h[20..24].copy_from_slice(&linktype.to_ne_bytes());
    h
}

fn rd32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn rd16(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

/// A retired block that does not hold what the kernel promises (never seen; a guard).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed TPACKET_V3 block: {0}")]
pub struct BadBlock(String);

/// How a ring's packets become pcap records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The frame as the socket has it (SOCK_RAW on tun, radiotap).
    Plain,
    /// Ethernet (SOCK_RAW): a VLAN tag the NIC or the stack took off into the packet's
    /// metadata is put back after the MAC addresses, as libpcap does, so the record is the
    /// frame as it was on the wire.
    Ethernet,
    /// Linux cooked (SOCK_DGRAM on `any`): a 16-byte LINKTYPE_LINUX_SLL header built from
    /// the packet's sockaddr_ll goes before the network-layer bytes.
    Cooked,
}

const VLAN_TAG_LEN: usize = 4;
const SLL_HDR_LEN: usize = 16;

/// Frames the packets of one retired block in place: writes each packet's pcap record
/// header (and, per `framing`, a put-back VLAN tag or a cooked header) into the room before
/// its data and appends its `[header | data]` span (offsets inside the block) to `spans`.
/// Returns the record bytes after the headers. O(1) per packet, no allocation beyond `spans`'
/// growth; the only bytes moved are a tagged frame's 12 MAC address bytes; every offset is
/// checked against the block.
pub fn frame_block(
    block: &mut [u8],
    framing: Framing,
    snaplen: u32,
    spans: &mut Vec<Span>,
) -> Result<u64, BadBlock> {
    let bad = |what: String| Err(BadBlock(what));
    if block.len() < sys::BLOCK_LEN + 4 {
        return bad(format!("{} bytes is shorter than its header", block.len()));
    }
    let n = rd32(block, sys::BLOCK_NUM_PKTS);
    let used = rd32(block, sys::BLOCK_LEN) as usize;
    if used > block.len() {
        return bad(format!(
            "says {used} bytes used of {} in the block",
            block.len()
        ));
    }
    let mut off = rd32(block, sys::BLOCK_FIRST_PKT) as usize;
    let mut bytes = 0u64;
    // At most one record per 16 bytes used: a bound on the reservation a bad count asks for.
    spans.reserve((n as usize).min(used / 16));
    for i in 0..n {
        if off
            .checked_add(sys::TPACKET3_HDRLEN)
            .is_none_or(|e| e > used)
        {
            return bad(format!(
                "packet {i} header at {off} is past the {used} bytes used"
            ));
        }
        let p = &block[off..];
        let (next, sec, nsec, status) = (
            rd32(p, sys::PKT_NEXT),
            rd32(p, sys::PKT_SEC),
            rd32(p, sys::PKT_NSEC),
            rd32(p, sys::PKT_STATUS),
        );
        // SOCK_DGRAM (cooked) data starts at the network header, where tp_mac == tp_net.
        let at = if framing == Framing::Cooked {
            sys::PKT_NET
        } else {
            sys::PKT_MAC
        };
        let (mut caplen, mut len, mut data) = (
            rd32(p, sys::PKT_SNAPLEN),
            rd32(p, sys::PKT_LEN),
            rd16(p, at) as usize,
        );
        let end = off + data + caplen as usize;
        if end > used {
            return bad(format!(
                "packet {i} ends at {end}, past the {used} bytes used"
            ));
        }
        // What goes before the packet's bytes, and the room it needs after the tpacket3_hdr.
        let tagged = framing == Framing::Ethernet
            && status & libc::TP_STATUS_VLAN_VALID != 0
            && caplen >= 12;
        let extra = match framing {
            Framing::Cooked => SLL_HDR_LEN,
            _ if tagged => VLAN_TAG_LEN,
            _ => 0,
        };
        if data < sys::HDR_END + 16 + extra {
            return bad(format!(
                "packet {i} data at {data} leaves no room for a record header"
            ));
        }
        let m = off + data;
        match framing {
            Framing::Cooked => {
                // The sockaddr_ll the kernel wrote at HDR_END, read before the headers are
                // written over its tail.
                let sll = off + sys::HDR_END;
                let mut h = [0u8; SLL_HDR_LEN];
                h[1] = block[sll + sys::SLL_PKTTYPE];
                h[2..4].copy_from_slice(&rd16(block, sll + sys::SLL_HATYPE).to_be_bytes());
                let halen = block[sll + sys::SLL_HALEN].min(8);
                h[5] = halen;
                h[6..6 + halen as usize].copy_from_slice(
                    &block[sll + sys::SLL_ADDR..sll + sys::SLL_ADDR + halen as usize],
                );
                h[14..16].copy_from_slice(&block[sll + sys::SLL_PROTOCOL..][..2]);
                block[m - SLL_HDR_LEN..m].copy_from_slice(&h);
                data -= SLL_HDR_LEN;
                caplen += SLL_HDR_LEN as u32;
                len += SLL_HDR_LEN as u32;
            }
            _ if tagged => {
                let tci = rd32(block, off + sys::PKT_VLAN_TCI) as u16;
                let tpid = if status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                    rd16(block, off + sys::PKT_VLAN_TPID)
                } else {
                    0x8100
                };
                block.copy_within(m..m + 12, m - VLAN_TAG_LEN);
                block[m + 8..m + 10].copy_from_slice(&tpid.to_be_bytes());
                block[m + 10..m + 12].copy_from_slice(&tci.to_be_bytes());
                data -= VLAN_TAG_LEN;
                caplen = (caplen + VLAN_TAG_LEN as u32).min(snaplen.max(caplen));
                len += VLAN_TAG_LEN as u32;
            }
            _ => {}
        }
        let rec = off + data - 16;
        let h = &mut block[rec..rec + 16];
        h[0..4].copy_from_slice(&sec.to_ne_bytes());
        h[4..8].copy_from_slice(&nsec.to_ne_bytes());
        h[8..12].copy_from_slice(&caplen.to_ne_bytes());
        h[12..16].copy_from_slice(&len.to_ne_bytes());
        spans.push(Span {
            off: rec as u32,
            len: 16 + caplen,
        });
        bytes += caplen as u64;
        if i + 1 < n {
            if next == 0 {
                return bad(format!("packet {i} of {n} has no next offset"));
            }
            off += next as usize;
        }
    }
    Ok(bytes)
}

/// One capture ring, set up and bound, not yet running.
pub struct Ring {
    sock: sys::Socket,
    area: Arc<Area>,
    block_size: usize,
    blocks: usize,
    timeout: Duration,
    header: [u8; 24],
    framing: Framing,
    snaplen: u32,
    /// Stream name, `IF-tN-START`.
    pub name: String,
    pub iface: String,
}

impl Ring {
    /// The pcap file header its stream begins with.
    pub fn header(&self) -> [u8; 24] {
        self.header
    }
}

/// Kernel counters of one ring, accumulated over the run (the kernel resets them on read).
#[derive(Debug, Default)]
pub struct RingStats {
    pub packets: AtomicU64,
    pub drops: AtomicU64,
    pub freezes: AtomicU64,
}

impl RingStats {
    fn add(&self, s: Stats, rx: &RxStats, area: &Area) {
        area.note_drops(s.drops);
        self.packets.fetch_add(s.packets, Ordering::Relaxed);
        self.drops.fetch_add(s.drops, Ordering::Relaxed);
        self.freezes.fetch_add(s.freezes, Ordering::Relaxed);
        rx.add(&rx.capture_packets, s.packets);
        rx.add(&rx.capture_drops, s.drops);
        rx.add(&rx.capture_freezes, s.freezes);
    }

    pub fn get(&self) -> Stats {
        Stats {
            packets: self.packets.load(Ordering::Relaxed),
            drops: self.drops.load(Ordering::Relaxed),
            freezes: self.freezes.load(Ordering::Relaxed),
        }
    }
}

/// Opens every ring `cfg` asks for (all before any runs, so a bad interface or a ring too
/// large fails the start, in words).
pub fn open(cfg: &Config) -> io::Result<Vec<Ring>> {
    if cfg.interfaces.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no interface to capture",
        ));
    }
    let bs = cfg.block_size as usize;
    if bs % crate::area::page_size() != 0 || bs == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "--block-size {bs} must be a multiple of the page size ({})",
                crate::area::page_size()
            ),
        ));
    }
    let room = bs.saturating_sub(48 + 128);
    if (cfg.snaplen as usize) > room {
        eprintln!(
            "zcap: -s {} is more than a {} block holds: packets longer than about {room} bytes are \
             truncated (raise --block-size)",
            cfg.snaplen,
            crate::units::size_text(bs as u64)
        );
    }
    let per_ring = bs as u64 * cfg.block_count as u64;
    let rings = cfg.interfaces.len() as u64 * cfg.fanout.max(1) as u64;
    check_memory(per_ring, rings, available_memory())?;
    let group = cfg
        .fanout_group
        .unwrap_or_else(|| (std::process::id() & 0xffff) as u16);
    let start = crate::archive::compact_time(std::time::SystemTime::now());
    let mut rings = Vec::new();
    // A fanout group belongs to one device: the k-th interface's rings join group + k.
    for (k, iface) in cfg.interfaces.iter().enumerate() {
        for t in 0..cfg.fanout.max(1) {
            let fanout = (cfg.fanout > 1 || cfg.fanout_group.is_some())
                .then_some(group.wrapping_add(k as u16));
            let name = format!("{}-t{t}-{start}", crate::archive::sanitize(iface));
            rings.push(open_ring(cfg, iface, fanout, name)?);
        }
    }
    Ok(rings)
}

/// The kernel takes a ring's memory at once and outside any user limit (a ring larger than
/// the host can give drives it into the OOM killer, and RLIMIT_MEMLOCK does not apply), so
/// zcap refuses rings that would take more than three quarters of what is available.
fn check_memory(per_ring: u64, rings: u64, available: Option<u64>) -> io::Result<()> {
    let size = crate::units::size_text;
    let total = per_ring.saturating_mul(rings);
    if let Some(avail) = available.filter(|a| total > a / 4 * 3) {
        return Err(io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!(
                "{} too large for this host's memory limits ({} available); lower \
                 --block-count or --block-size",
                if rings == 1 {
                    format!("a ring of {} is", size(per_ring))
                } else {
                    format!(
                        "{rings} rings of {} ({}) are",
                        size(per_ring),
                        crate::units::human_bytes(total)
                    )
                },
                crate::units::human_bytes(avail)
            ),
        ));
    }
    Ok(())
}

/// Memory this process can still get: MemAvailable, lowered by a cgroup limit if one is set.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let mut avail = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())?
        * 1024;
    let read = |p: &str| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for line in cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrl, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        let (max, cur) = match ctrl {
            "" => (
                read(&format!("/sys/fs/cgroup{path}/memory.max")),
                read(&format!("/sys/fs/cgroup{path}/memory.current")),
            ),
            c if c.split(',').any(|c| c == "memory") => (
                read(&format!(
                    "/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"
                )),
                read(&format!(
                    "/sys/fs/cgroup/memory{path}/memory.usage_in_bytes"
                )),
            ),
            _ => continue,
        };
        if let (Some(max), Some(cur)) = (max, cur) {
            avail = avail.min(max.saturating_sub(cur));
        }
    }
    Some(avail)
}

fn open_ring(cfg: &Config, iface: &str, fanout: Option<u16>, name: String) -> io::Result<Ring> {
    let ctx = |e: io::Error, what: &str| io::Error::new(e.kind(), format!("{iface}: {what}{e}"));
    let any = iface == ANY;
    let sock = sys::Socket::open_as(if any {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_RAW
    })?;
    let (index, linktype, framing) = if any {
        if cfg.filter.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a filter on `any` is not supported yet (name the interfaces with -i)",
            ));
        }
        (0, LINKTYPE_LINUX_SLL, Framing::Cooked)
    } else {
        let info = sock.iface(iface)?;
        if !info.up {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!("interface {iface} is down (bring it up: `ip link set {iface} up`)"),
            ));
        }
        if !info.running {
            eprintln!("zcap: warning: interface {iface} is up but has no carrier (link down?)");
        }
        let linktype = link_type(iface, info.arphrd)?;
        let framing = if linktype == 1 {
            Framing::Ethernet
        } else {
            Framing::Plain
        };
        (info.index, linktype, framing)
    };
    sock.set_v3().map_err(|e| ctx(e, ""))?;
    // The kernel truncates to what a classic BPF program returns: a filter compiled for the
    // snaplen accepts with `ret #snaplen`, and without one `ret #snaplen` alone is -s.
    let prog = match &cfg.filter {
        Some(expr) => filter::compile(expr, linktype, cfg.snaplen)?.insns,
        None => vec![libc::sock_filter {
            code: 0x06, // BPF_RET | BPF_K
            jt: 0,
            jf: 0,
            k: cfg.snaplen,
        }],
    };
    sock.attach_filter(&prog)
        .map_err(|e| ctx(e, "attaching the filter: "))?;
    let (bs, bc) = (cfg.block_size, cfg.block_count);
    let total = bs as u64 * bc as u64;
    let too_large = |e: io::Error| {
        if e.raw_os_error() == Some(libc::ENOMEM) || e.kind() == io::ErrorKind::OutOfMemory {
            io::Error::new(
                e.kind(),
                format!(
                    "{iface}: a ring of {bc} blocks of {} ({}) is too large for this host's memory \
                     limits ({e}); lower --block-count or --block-size",
                    crate::units::size_text(bs as u64),
                    crate::units::size_text(total)
                ),
            )
        } else {
            ctx(e, "")
        }
    };
    let tmo = cfg.block_timeout.as_millis().clamp(1, u32::MAX as u128) as u32;
    sock.set_rx_ring(bs, bc, tmo).map_err(too_large)?;
    let area = Area::from_ring(sock.fd(), total as usize).map_err(too_large)?;
    area.set_granule(bs as usize);
    sock.bind(index).map_err(|e| ctx(e, ""))?;
    // `any` is no device to make promiscuous (as with tcpdump -i any).
    if cfg.promisc && !any {
        sock.promisc(index).map_err(|e| ctx(e, ""))?;
    }
    if let Some(group) = fanout {
        sock.fanout(group).map_err(|e| {
            ctx(
                e,
                &format!(
                    "joining fanout group {group} (another process uses the id with other \
                     settings? pick one with --fanout-group): "
                ),
            )
        })?;
    }
    Ok(Ring {
        sock,
        area,
        block_size: bs as usize,
        blocks: bc as usize,
        timeout: cfg.block_timeout,
        header: file_header(cfg.snaplen, linktype),
        framing,
        snaplen: cfg.snaplen,
        name,
        iface: iface.to_string(),
    })
}

/// `tcpdump -d`: the filter of `cfg` as compiled for each interface's link type, one listing
/// per interface.
pub fn listings(cfg: &Config) -> io::Result<Vec<(String, Vec<String>)>> {
    let expr = cfg.filter.as_deref().unwrap_or("");
    let mut out = Vec::new();
    for iface in &cfg.interfaces {
        if iface == ANY {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a filter on `any` is not supported yet (name the interfaces with -i)",
            ));
        }
        let info = sys::Socket::open()?.iface(iface)?;
        let linktype = link_type(iface, info.arphrd)?;
        out.push((
            iface.clone(),
            filter::compile(expr, linktype, cfg.snaplen)?.listing,
        ));
    }
    Ok(out)
}

/// For `doctor`: a packet socket opens and takes TPACKET_V3.
pub fn probe_socket() -> io::Result<()> {
    sys::Socket::open()?.set_v3()
}

/// For `doctor`: whether `iface` is up, has a carrier, and the link type it is captured as.
pub fn iface_state(iface: &str) -> io::Result<(bool, bool, io::Result<u32>)> {
    let info = sys::Socket::open()?.iface(iface)?;
    Ok((info.up, info.running, link_type(iface, info.arphrd)))
}

/// For `doctor`: whether `rings` rings of `per_ring` bytes fit this host, and what it has.
pub fn ring_fits(per_ring: u64, rings: u64) -> (io::Result<()>, Option<u64>) {
    let avail = available_memory();
    (check_memory(per_ring, rings, avail), avail)
}

/// For `doctor`: the libpcap a filter would be compiled with.
pub fn libpcap() -> io::Result<String> {
    filter::libpcap()
}

/// What one ring did, for the summary.
#[derive(Debug, Clone)]
pub struct RingReport {
    pub name: String,
    pub iface: String,
    pub stats: Stats,
    pub blocks: u64,
}

/// Runs every ring on a thread of its own until `stop`, then drains what the kernel has
/// retired and ends the streams. Stream ids are `first_stream..`.
pub fn run(
    rings: Vec<Ring>,
    first_stream: StreamId,
    events: &Events,
    stop: &Arc<Stop>,
    stats: &Arc<RxStats>,
) -> io::Result<Vec<RingReport>> {
    let mut threads = Vec::new();
    for (i, ring) in rings.into_iter().enumerate() {
        let (events, stop, stats) = (events.clone(), Arc::clone(stop), Arc::clone(stats));
        let id = first_stream + i as u64;
        threads.push(
            std::thread::Builder::new()
                .name(format!("zcap-cap-{i}"))
                .spawn(move || {
                    let r = capture(ring, id, &events, &stop, &stats);
                    if r.is_err() {
                        stop.store(true, Ordering::Relaxed);
                    }
                    r
                })?,
        );
    }
    let mut reports = Vec::new();
    let mut first_err = None;
    for t in threads {
        match t.join() {
            Ok(Ok(r)) => reports.push(r),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(io::Error::other("a capture thread panicked"));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(reports),
    }
}

/// How often the kernel's counters are read while capturing.
const STATS_EVERY: Duration = Duration::from_millis(500);

fn capture(
    ring: Ring,
    stream: StreamId,
    events: &Events,
    stop: &Stop,
    stats: &RxStats,
) -> io::Result<RingReport> {
    let send = |ev: Event| {
        events
            .send(ev)
            .map_err(|_| io::Error::other("writer stopped"))
    };
    let area = &ring.area;
    crate::stats::publish_area(area);
    area.note_drops(0); // its segments record their drops, 0 included
    stats.add(&stats.streams_opened, 1);
    stats.add(&stats.streams_open, 1);
    send(Event::Open {
        stream,
        name: ring.name.clone(),
        area: Arc::clone(area),
        network: false,
    })?;
    // The file header is the one piece not from the ring: a page of its own.
    let head = Area::new(4096, false)?;
    // SAFETY: the fresh page is ours alone; nothing is lent from it yet.
    unsafe { head.fill_slice(0, 24) }.copy_from_slice(&ring.header);
    // SAFETY: written above; nothing writes it again (the token is never reused).
    let chunk = unsafe { head.lend(stream, 0, 24, ReleaseToken { id: 0, len: 24 }) };
    stats.add(&stats.bytes, 24);
    send(Event::Data(chunk))?;

    let ring_stats = RingStats::default();
    let (bs, n) = (ring.block_size, ring.blocks);
    let mut lent = vec![false; n];
    let mut nlent = 0usize;
    let (mut back, mut aborts) = (Vec::new(), Vec::new());
    let mut cur = 0usize;
    let mut blocks = 0u64;
    let mut last_stats = Instant::now();
    let mut drain_until: Option<Instant> = None;
    let mut aborted = false;
    let base = area.base();
    // Short naps while the kernel's previous block is one the writer still holds: poll(2)
    // on the socket reports that block as readable and would not sleep at all.
    let nap = (ring.timeout / 4).clamp(Duration::from_millis(1), Duration::from_millis(5));
    loop {
        area.clear_wake();
        area.take_returns(&mut back, &mut aborts);
        for t in back.drain(..) {
            let i = t.id as usize;
            debug_assert!(lent[i], "block {i} returned twice");
            // SAFETY: block i was lent and the writer dropped the last slice of it.
            unsafe { sys::release_block(base.add(i * bs)) };
            lent[i] = false;
            nlent -= 1;
        }
        if !aborts.is_empty() {
            aborted = true; // the writer found the stream malformed; it has logged why
            break;
        }
        loop {
            if lent[cur] {
                break;
            }
            // SAFETY: `cur < n`: the block lies inside the mapped ring.
            let status = unsafe { sys::block_status(base.add(cur * bs)) };
            if status & libc::TP_STATUS_USER == 0 {
                break;
            }
            // SAFETY: the kernel retired the block to us (status USER, read with Acquire)
            // and it is not lent: no one else reads or writes it until we lend or release it.
            let bytes = unsafe { area.fill_slice(cur * bs, bs) };
            let mut spans = Vec::new();
            let framed = frame_block(bytes, ring.framing, ring.snaplen, &mut spans)
                .map_err(|e| io::Error::other(format!("{}: block {cur}: {e}", ring.iface)))?;
            blocks += 1;
            if spans.is_empty() {
                // SAFETY: ours (status USER), not lent.
                unsafe { sys::release_block(base.add(cur * bs)) };
            } else {
                stats.add(&stats.bytes, framed + 16 * spans.len() as u64);
                stats.add(&stats.chunks, 1);
                // SAFETY: the kernel finished the block, the record headers are written,
                // and the block stays USER (never written) until its token comes back.
                let block = unsafe {
                    area.lend(
                        stream,
                        cur * bs,
                        bs,
                        ReleaseToken {
                            id: cur as u64,
                            len: bs as u32,
                        },
                    )
                };
                lent[cur] = true;
                nlent += 1;
                send(Event::Records { block, spans })?;
            }
            cur = (cur + 1) % n;
        }
        // Past half the ring held, the writer persists what it holds without waiting for
        // full frames, so blocks come back before the kernel runs out.
        area.set_starving(nlent * 2 >= n);
        if last_stats.elapsed() >= STATS_EVERY {
            ring_stats.add(ring.sock.stats()?, stats, area);
            last_stats = Instant::now();
        }
        if stop.load(Ordering::Relaxed) {
            // Whatever the kernel delivered before the signal is in a block it retires within
            // one timeout: wait for that, then end.
            let until = *drain_until.get_or_insert_with(|| {
                Instant::now() + ring.timeout * 2 + Duration::from_millis(100)
            });
            if Instant::now() >= until {
                break;
            }
        }
        let prev = (cur + n - 1) % n;
        let socket_says = !lent[prev] && !lent[cur];
        let timeout = if socket_says {
            Duration::from_millis(100)
        } else {
            nap
        };
        wait(
            area.wake_fd(),
            socket_says.then_some(ring.sock.fd()),
            timeout,
        );
    }
    ring_stats.add(ring.sock.stats()?, stats, area);
    stats.streams_open.fetch_sub(1, Ordering::Relaxed);
    send(Event::End {
        stream,
        error: aborted.then(|| "closed by the writer".to_string()),
    })?;
    Ok(RingReport {
        name: ring.name,
        iface: ring.iface,
        stats: ring_stats.get(),
        blocks,
    })
}

/// Waits until `wake` (or `sock`, when given) is readable, or `timeout` passes.
fn wait(wake: std::os::fd::RawFd, sock: Option<std::os::fd::RawFd>, timeout: Duration) {
    let mut fds = [
        libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: sock.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let n = if sock.is_some() { 2 } else { 1 };
    // SAFETY: `n` valid pollfds on the stack for the duration of the call.
    unsafe { libc::poll(fds.as_mut_ptr(), n, timeout.as_millis() as libc::c_int) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block as the kernel lays it out: header, then packets at 16-aligned offsets with
    /// tp_mac = 82 (Ethernet: TPACKET_ALIGN(68 + 16) - 14).
    fn block(packets: &[&[u8]]) -> Vec<u8> {
        block_at(packets, 82)
    }

    fn block_at(packets: &[&[u8]], mac: usize) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        let first = 48usize;
        let mut off = first;
        let mut offs = Vec::new();
        for p in packets {
            offs.push(off);
            off += sys::tpacket_align(mac + p.len());
        }
        for (i, p) in packets.iter().enumerate() {
            let o = offs[i];
            let next = if i + 1 < packets.len() {
                offs[i + 1] - o
            } else {
                0
            };
            b[o..o + 4].copy_from_slice(&(next as u32).to_ne_bytes());
            b[o + 4..o + 8].copy_from_slice(&(1000 + i as u32).to_ne_bytes());
            b[o + 8..o + 12].copy_from_slice(&(7 + i as u32).to_ne_bytes());
            b[o + 12..o + 16].copy_from_slice(&(p.len() as u32).to_ne_bytes());
            b[o + 16..o + 20].copy_from_slice(&(p.len() as u32 + 5).to_ne_bytes());
            b[o + 24..o + 26].copy_from_slice(&(mac as u16).to_ne_bytes());
            b[o + 26..o + 28].copy_from_slice(&(mac as u16).to_ne_bytes());
            b[o + 68..o + mac].fill(0xee); // the gap after the sockaddr_ll
            b[o + mac..o + mac + p.len()].copy_from_slice(p);
        }
        b[8..12].copy_from_slice(&libc::TP_STATUS_USER.to_ne_bytes());
        b[12..16].copy_from_slice(&(packets.len() as u32).to_ne_bytes());
        b[16..20].copy_from_slice(&(first as u32).to_ne_bytes());
        b[20..24].copy_from_slice(&(off as u32).to_ne_bytes());
        b
    }

    #[test]
    fn each_packet_becomes_one_record_span_in_place() {
        let a = [0xaau8; 60];
        let c = [0xccu8; 1500];
        let mut b = block(&[&a, &c]);
        let mut spans = Vec::new();
        let bytes = frame_block(&mut b, Framing::Ethernet, 262_144, &mut spans).unwrap();
        assert_eq!(bytes, 1560);
        assert_eq!(spans.len(), 2);
        assert_eq!(
            spans[0],
            Span {
                off: 48 + 66,
                len: 76
            }
        );
        let r = &b[spans[0].off as usize..][..spans[0].len as usize];
        assert_eq!(rd32(r, 0), 1000);
        assert_eq!(rd32(r, 4), 7);
        assert_eq!(rd32(r, 8), 60);
        assert_eq!(rd32(r, 12), 65);
        assert_eq!(&r[16..], &a[..]);
        let r = &b[spans[1].off as usize..][..spans[1].len as usize];
        assert_eq!((rd32(r, 0), rd32(r, 4), rd32(r, 8)), (1001, 8, 1500));
        assert_eq!(&r[16..], &c[..]);
        // The tpacket3_hdr of each packet is left as the kernel wrote it.
        assert_eq!(rd16(&b, 48 + 24), 82);
    }

    #[test]
    fn a_vlan_tag_taken_off_is_put_back_after_the_mac_addresses() {
        let frame: Vec<u8> = (0..64u8).collect();
        let mut b = block(&[&frame]);
        let o = 48;
        let status = libc::TP_STATUS_USER | libc::TP_STATUS_VLAN_VALID;
        b[o + 20..o + 24].copy_from_slice(&status.to_ne_bytes());
        b[o + 32..o + 36].copy_from_slice(&0x2064u32.to_ne_bytes());
        let mut spans = Vec::new();
        frame_block(&mut b, Framing::Ethernet, 262_144, &mut spans).unwrap();
        let r = &b[spans[0].off as usize..][..spans[0].len as usize];
        assert_eq!(
            (rd32(r, 8), rd32(r, 12)),
            (68, 73),
            "caplen and len grow by the tag"
        );
        let mut want = frame[..12].to_vec();
        want.extend([0x81, 0x00, 0x20, 0x64]);
        want.extend(&frame[12..]);
        assert_eq!(&r[16..], &want[..]);
        // An 802.1ad TPID as the kernel reports it, and -s clipping the grown record.
        let mut b = block(&[&frame]);
        let status = status | libc::TP_STATUS_VLAN_TPID_VALID;
        b[o + 20..o + 24].copy_from_slice(&status.to_ne_bytes());
        b[o + 36..o + 38].copy_from_slice(&0x88a8u16.to_ne_bytes());
        b[o + 12..o + 16].copy_from_slice(&64u32.to_ne_bytes());
        let mut spans = Vec::new();
        frame_block(&mut b, Framing::Ethernet, 64, &mut spans).unwrap();
        let r = &b[spans[0].off as usize..][..spans[0].len as usize];
        assert_eq!((rd32(r, 8), rd32(r, 12)), (64, 73));
        assert_eq!(&r[16 + 12..16 + 14], &[0x88, 0xa8]);
        // Without the status bit nothing moves.
        let mut b = block(&[&frame]);
        let mut spans = Vec::new();
        frame_block(&mut b, Framing::Ethernet, 262_144, &mut spans).unwrap();
        assert_eq!(&b[spans[0].off as usize + 16..][..64], &frame[..]);
    }

    #[test]
    fn cooked_records_carry_a_linux_sll_header_from_the_sockaddr_ll() {
        let ip = [0x45u8; 40];
        // SOCK_DGRAM: data at TPACKET_ALIGN(68) + 16 = 96.
        let mut b = block_at(&[&ip], 96);
        let (o, sll) = (48, 48 + 48);
        b[sll..sll + 2].copy_from_slice(&(libc::AF_PACKET as u16).to_ne_bytes());
        b[sll + 2..sll + 4].copy_from_slice(&0x0800u16.to_be_bytes());
        b[sll + 8..sll + 10].copy_from_slice(&1u16.to_ne_bytes()); // ARPHRD_ETHER
        b[sll + 10] = 4; // PACKET_OUTGOING
        b[sll + 11] = 6;
        b[sll + 12..sll + 20].copy_from_slice(&[2, 0, 0, 0, 0, 9, 0xee, 0xee]);
        let mut spans = Vec::new();
        frame_block(&mut b, Framing::Cooked, 262_144, &mut spans).unwrap();
        assert_eq!(spans[0].off as usize, o + 96 - 32);
        let r = &b[spans[0].off as usize..][..spans[0].len as usize];
        assert_eq!((rd32(r, 8), rd32(r, 12)), (56, 61));
        assert_eq!(
            &r[16..32],
            &[0, 4, 0, 1, 0, 6, 2, 0, 0, 0, 0, 9, 0, 0, 0x08, 0x00]
        );
        assert_eq!(&r[32..], &ip[..]);
    }

    #[test]
    fn bad_blocks_are_refused_not_overrun() {
        let mut spans = Vec::new();
        let mut b = block(&[&[1u8; 100]]);
        b[20..24].copy_from_slice(&100u32.to_ne_bytes()); // fewer bytes used than the packet
        assert!(frame_block(&mut b, Framing::Ethernet, 262_144, &mut spans).is_err());
        let mut b = block(&[&[1u8; 100]]);
        b[48 + 24..48 + 26].copy_from_slice(&60u16.to_ne_bytes()); // no room for a header
        assert!(frame_block(&mut b, Framing::Ethernet, 262_144, &mut spans).is_err());
        let mut b = block(&[&[1u8; 10], &[2u8; 10]]);
        b[48..52].copy_from_slice(&0u32.to_ne_bytes()); // a next offset of 0 mid-block
        assert!(frame_block(&mut b, Framing::Ethernet, 262_144, &mut spans).is_err());
        let mut b = block(&[&[1u8; 10]]);
        b[20..24].copy_from_slice(&9999u32.to_ne_bytes());
        assert!(frame_block(&mut b, Framing::Ethernet, 262_144, &mut spans).is_err());
        let mut b = block(&[]);
        assert_eq!(
            frame_block(&mut b, Framing::Ethernet, 262_144, &mut spans),
            Ok(0)
        );
    }

    #[test]
    fn rings_the_host_cannot_hold_are_refused_before_the_kernel_is_asked() {
        assert!(check_memory(256 << 20, 2, Some(8 << 30)).is_ok());
        assert!(check_memory(256 << 20, 2, None).is_ok());
        let e = check_memory(1 << 30, 4, Some(4 << 30))
            .unwrap_err()
            .to_string();
        assert!(e.contains("too large for this host's memory limits"), "{e}");
        assert!(e.contains("--block-count"), "{e}");
        let e = check_memory(16 << 40, 1, Some(64 << 30))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("a ring of 16TiB is too large"), "{e}");
        assert!(available_memory().is_some_and(|m| m > 0));
    }

    #[test]
    fn file_header_is_ns_pcap() {
        let h = file_header(9000, 1);
        assert_eq!(rd32(&h, 0), PCAP_NS_MAGIC);
        assert_eq!((rd16(&h, 4), rd16(&h, 6)), (2, 4));
        assert_eq!((rd32(&h, 16), rd32(&h, 20)), (9000, 1));
    }

    #[test]
    fn link_types_follow_the_hardware_type() {
        assert_eq!(link_type("eth0", libc::ARPHRD_ETHER).unwrap(), 1);
        assert_eq!(link_type("lo", libc::ARPHRD_LOOPBACK).unwrap(), 1);
        assert_eq!(link_type("tun0", libc::ARPHRD_NONE).unwrap(), 101);
        let e = link_type("ib0", 32).unwrap_err().to_string();
        assert!(e.contains("ib0") && e.contains("ARPHRD 32"), "{e}");
    }
}
