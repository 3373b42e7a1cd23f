//! `zcap doctor`: can this host do zero-copy receive (zcrx), and if not, what is missing?
//! Reads what the kernel and the NIC say — uname, sysctls, an io_uring probe, capabilities,
//! sysfs, ethtool ioctls, ethtool/netdev netlink, and a real registration attempt — and ends
//! with a verdict and the commands that would fix what can be fixed. Says "unknown" where
//! this host cannot tell. Changes nothing (a successful registration probe restarts the
//! queue once, and says so).

use crate::rx::zcrx::{self, sys::IORING_OP_RECV_ZC};
use crate::steer::{self, nl, EthtoolRxnfc, EthtoolValue};
use serde::Serialize;
use std::io;

/// Drivers with the queue-management API and page-pool memory providers zcrx needs.
pub const ZCRX_DRIVERS: &[&str] = &["bnxt_en", "mlx5_core", "gve", "fbnic"];

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    /// "ok", "missing" or "unknown".
    pub state: &'static str,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kernel: String,
    pub iface: Option<String>,
    pub queue: u32,
    pub driver: Option<String>,
    pub rx_queues: Option<usize>,
    pub queue_napi_id: Option<u32>,
    pub checks: Vec<Check>,
    pub zero_copy: bool,
    pub verdict: String,
    pub fixes: Vec<String>,
    /// Live capture (`record -i`, `send`): what it needs on this host and interface.
    pub capture: Vec<Check>,
    pub capture_ok: bool,
    pub capture_fixes: Vec<String>,
}

/// Number of rx queues of `iface` (`/sys/class/net/IF/queues/rx-*`).
pub fn rx_queue_count(iface: &str) -> Option<usize> {
    let dir = std::fs::read_dir(format!("/sys/class/net/{iface}/queues")).ok()?;
    Some(
        dir.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
            .count(),
    )
}

/// The interface of the IPv4 default route, for `doctor` without `--iface`.
pub fn default_route_iface() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    })
}

fn kernel_release() -> String {
    // SAFETY: uname fills the zeroed local struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a live utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname NUL-terminates the field.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn version_at_least(release: &str, major: u32, minor: u32) -> Option<bool> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let ma: u32 = it.next()?.parse().ok()?;
    let mi: u32 = it.next()?.parse().ok()?;
    Some((ma, mi) >= (major, minor))
}

/// Whether the effective capability set holds CAP_NET_ADMIN (bit 12), from /proc.
pub fn has_net_admin() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    Some(caps & (1 << 12) != 0)
}

/// `Ok(true)` if io_uring works and knows IORING_OP_RECV_ZC; `Ok(false)` if it works but the
/// opcode is unknown.
fn probe_io_uring() -> io::Result<bool> {
    let ring = io_uring::IoUring::new(8)?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    Ok(probe.is_supported(IORING_OP_RECV_ZC))
}

fn zcrx_ring_flags_ok() -> io::Result<()> {
    io_uring::IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry32>::builder()
        .setup_defer_taskrun()
        .setup_single_issuer()
        .build(8)
        .map(drop)
}

/// `tcp-data-split` and `hds-thresh` from ethtool netlink (RINGS_GET). `None` values: the
/// driver does not report them.
fn header_split(iface: &str) -> io::Result<(Option<u8>, Option<u32>)> {
    const ETHTOOL_MSG_RINGS_GET: u8 = 15;
    const ETHTOOL_A_RINGS_HEADER: u16 = 1;
    const ETHTOOL_A_HEADER_DEV_NAME: u16 = 2;
    const ETHTOOL_A_RINGS_TCP_DATA_SPLIT: u16 = 11;
    const ETHTOOL_A_RINGS_HDS_THRESH: u16 = 17;
    let mut g = nl::Genl::open()?;
    let fam = g.family("ethtool")?;
    let mut hdr = Vec::new();
    let mut name = iface.as_bytes().to_vec();
    name.push(0);
    nl::put(&mut hdr, ETHTOOL_A_HEADER_DEV_NAME, &name);
    let mut a = Vec::new();
    nl::put(&mut a, ETHTOOL_A_RINGS_HEADER | nl::NLA_F_NESTED, &hdr);
    let r = g.request(fam, ETHTOOL_MSG_RINGS_GET, 1, &a)?;
    let split = nl::find(&r, ETHTOOL_A_RINGS_TCP_DATA_SPLIT).and_then(|p| p.first().copied());
    let thresh = nl::find(&r, ETHTOOL_A_RINGS_HDS_THRESH).and_then(nl::u32_of);
    Ok((split, thresh))
}

/// The RSS indirection table (`ETHTOOL_GRXFHINDIR`): queue index per slot.
fn rss_table(iface: &str) -> io::Result<Vec<u32>> {
    // struct ethtool_rxfh_indir { u32 cmd; u32 size; u32 ring_index[]; }
    let mut head = [steer::ETHTOOL_GRXFHINDIR, 0u32];
    // SAFETY: with size 0 the kernel writes only the 8-byte header.
    unsafe { steer::ethtool_raw(iface, head.as_mut_ptr().cast())? };
    let n = head[1] as usize;
    let mut buf = vec![0u32; 2 + n];
    buf[0] = steer::ETHTOOL_GRXFHINDIR;
    buf[1] = n as u32;
    // SAFETY: the buffer holds the header plus `size` u32 entries, as the kernel expects.
    unsafe { steer::ethtool_raw(iface, buf.as_mut_ptr().cast())? };
    Ok(buf[2..].to_vec())
}

/// Why `queue` of `iface` should not be the zcrx queue, if it should not: the RSS
/// indirection table (`table`, `None` when the driver does not report one) spreads other
/// flows onto it, or the device has one rx queue so every flow lands there. Their data
/// would be copied into the area (copy fallback) and can run it dry. `None`: no objection.
pub fn queue_rss_objection(
    iface: &str,
    queue: u32,
    table: Option<&[u32]>,
    rx_queues: Option<usize>,
) -> Option<String> {
    let fix = match rx_queues {
        Some(n) if n > 1 => format!(
            "keep it out of RSS with `ethtool -X {iface} equal {q}` and register queue {q} \
             (`--queue {q}`), or pass --force",
            q = n - 1
        ),
        _ => "use a NIC with more than one rx queue, or pass --force".to_string(),
    };
    if let Some(t) = table {
        let slots = t.iter().filter(|&&q| q == queue).count();
        if slots > 0 {
            return Some(format!(
                "queue {queue} of {iface} takes RSS traffic ({slots} of {} slots of its RSS \
                 table), so other flows would be copied into the zcrx area and can run it dry; {fix}",
                t.len()
            ));
        }
        return None;
    }
    match rx_queues {
        Some(1) => Some(format!(
            "{iface} has a single rx queue, so every flow lands on queue {queue} and is copied \
             into the zcrx area; {fix}"
        )),
        _ => None,
    }
}

/// [`queue_rss_objection`] for the live device.
pub fn queue_objection(iface: &str, queue: u32) -> Option<String> {
    let table = rss_table(iface).ok().filter(|t| !t.is_empty());
    queue_rss_objection(iface, queue, table.as_deref(), rx_queue_count(iface))
}

fn words(e: &io::Error) -> String {
    zcrx::sys::errno_words(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Gathers the report (no printing).
/// Descriptors posted in `iface`'s rx ring (`ETHTOOL_GRINGPARAM` `rx_pending`).
fn rx_ring_pending(iface: &str) -> Option<u32> {
    // struct ethtool_ringparam: cmd, then eight u32; rx_pending is the sixth word.
    const ETHTOOL_GRINGPARAM: u32 = 0x10;
    let mut p = [0u32; 9];
    p[0] = ETHTOOL_GRINGPARAM;
    steer::ethtool(iface, &mut p).ok()?;
    (p[5] > 0).then_some(p[5])
}

/// The area and refill ring a registration probe uses: at least the NIC's rx ring plus the
/// page pool's batch, so the queue can start (it posts its whole rx ring at once).
fn probe_size(rx_pending: Option<u32>, page: usize) -> (usize, u32) {
    let niovs = rx_pending.unwrap_or(1024).max(64) as usize + 128;
    let rq = (niovs as u32)
        .next_power_of_two()
        .clamp(64, zcrx::sys::RQ_MAX_ENTRIES);
    (niovs * page, rq)
}

/// Examines the host for zero-copy receive. `probe`: also register the queue for real
/// (which restarts it once; a `record` right after may meet its teardown, which it retries).
pub fn examine(iface: Option<&str>, queue: Option<u32>, probe: bool) -> Report {
    let mut checks = Vec::new();
    let mut fixes = Vec::new();
    let mut blockers: Vec<String> = Vec::new();
    let mut check = |name, state, detail: String| {
        checks.push(Check {
            name,
            state,
            detail,
        })
    };

    let kernel = kernel_release();
    match version_at_least(&kernel, 6, 15) {
        Some(true) => check("kernel", "ok", format!("Linux {kernel} (zcrx needs 6.15+)")),
        Some(false) => {
            check(
                "kernel",
                "missing",
                format!("Linux {kernel}; zcrx needs 6.15 or newer"),
            );
            blockers.push(format!("kernel {kernel} predates zcrx (6.15)"));
        }
        None => check(
            "kernel",
            "unknown",
            format!("cannot parse release {kernel}"),
        ),
    }

    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    match probe_io_uring() {
        Ok(recv_zc) => {
            check(
                "io_uring",
                "ok",
                format!(
                    "io_uring works (kernel.io_uring_disabled = {})",
                    disabled.map_or("absent".into(), |d| d.to_string())
                ),
            );
            if recv_zc {
                check("recv_zc", "ok", "the kernel knows IORING_OP_RECV_ZC".into());
            } else {
                check(
                    "recv_zc",
                    "missing",
                    "IORING_OP_RECV_ZC is not supported".into(),
                );
                blockers
                    .push("the kernel has no RECV_ZC (CONFIG_IO_URING_ZCRX off or too old)".into());
            }
        }
        Err(e) => {
            check(
                "io_uring",
                "missing",
                format!("io_uring_setup failed: {}", words(&e)),
            );
            blockers.push("io_uring is unavailable".into());
            if disabled.is_some_and(|d| d > 0) {
                fixes.push("sysctl -w kernel.io_uring_disabled=0".into());
            }
        }
    }
    match zcrx_ring_flags_ok() {
        Ok(()) => check(
            "ring_flags",
            "ok",
            "DEFER_TASKRUN | SINGLE_ISSUER | CQE32 ring created".into(),
        ),
        Err(e) => {
            check(
                "ring_flags",
                "missing",
                format!("ring with zcrx flags failed: {}", words(&e)),
            );
            blockers.push("no ring with DEFER_TASKRUN/CQE32".into());
        }
    }

    match has_net_admin() {
        Some(true) => check("cap_net_admin", "ok", "CAP_NET_ADMIN is effective".into()),
        Some(false) => {
            check(
                "cap_net_admin",
                "missing",
                "no CAP_NET_ADMIN: registration will fail with EPERM".into(),
            );
            blockers.push("no CAP_NET_ADMIN".into());
            fixes.push("sudo setcap cap_net_admin+ep $(command -v zcap)   # or run as root".into());
        }
        None => check(
            "cap_net_admin",
            "unknown",
            "cannot read /proc/self/status".into(),
        ),
    }

    let iface = iface.map(str::to_string).or_else(default_route_iface);
    let queue = queue.unwrap_or(0);
    let mut driver = None;
    let mut rx_queues = None;
    let mut queue_napi_id = None;
    if let Some(ifn) = iface.as_deref() {
        let exists = std::path::Path::new(&format!("/sys/class/net/{ifn}")).exists();
        if !exists {
            check("interface", "missing", format!("no interface {ifn}"));
            blockers.push(format!("no interface {ifn}"));
        } else {
            driver = zcrx::driver_of(ifn);
            match driver.as_deref() {
                Some(d) if ZCRX_DRIVERS.contains(&d) => check(
                    "driver",
                    "ok",
                    format!("{ifn} is driven by {d}, which supports zcrx"),
                ),
                Some(d) => {
                    check(
                        "driver",
                        "missing",
                        format!("{ifn} is driven by {d}, which has no queue-management API for memory providers"),
                    );
                    blockers.push(format!(
                        "driver {d} lacks the queue-management API zcrx needs (supported: {})",
                        ZCRX_DRIVERS.join(", ")
                    ));
                }
                None => {
                    check(
                        "driver",
                        "missing",
                        format!("{ifn} is a virtual device without a driver"),
                    );
                    blockers.push(format!("{ifn} is a virtual device (no NIC driver)"));
                }
            }
            rx_queues = rx_queue_count(ifn);
            match rx_queues {
                Some(n) if (queue as usize) < n => check(
                    "queues",
                    if n > 1 { "ok" } else { "missing" },
                    format!(
                        "{n} rx queue(s); queue {queue} exists{}",
                        if n > 1 {
                            ""
                        } else {
                            " but it is the only one, so RSS traffic shares it"
                        }
                    ),
                ),
                Some(n) => {
                    check(
                        "queues",
                        "missing",
                        format!("{n} rx queue(s); queue {queue} does not exist"),
                    );
                    blockers.push(format!("queue {queue} is out of range ({n} rx queues)"));
                }
                None => check("queues", "unknown", "no /sys/class/net/IF/queues".into()),
            }
            match header_split(ifn) {
                Ok((Some(2), t)) => {
                    if t.unwrap_or(0) == 0 {
                        check("header_split", "ok", "tcp-data-split on".into())
                    } else {
                        check(
                            "header_split",
                            "missing",
                            format!("tcp-data-split on but hds-thresh {}", t.unwrap_or(0)),
                        );
                        fixes.push(format!("ethtool -G {ifn} hds-thresh 0"));
                        blockers.push("hds-thresh is not 0".into());
                    }
                }
                Ok((Some(1), _)) => {
                    check("header_split", "missing", "tcp-data-split off".into());
                    fixes.push(format!("ethtool -G {ifn} tcp-data-split on"));
                    blockers.push("header split is off".into());
                }
                Ok((s, _)) => check(
                    "header_split",
                    "unknown",
                    format!(
                        "the driver does not report tcp-data-split{}",
                        if s == Some(0) { " (unknown)" } else { " (n/a)" }
                    ),
                ),
                Err(e) => check(
                    "header_split",
                    "unknown",
                    format!("ethtool netlink RINGS_GET failed: {}", words(&e)),
                ),
            }
            let mut flags = EthtoolValue {
                cmd: steer::ETHTOOL_GFLAGS,
                data: 0,
            };
            let ntuple_on = steer::ethtool(ifn, &mut flags)
                .ok()
                .map(|_| flags.data & steer::ETH_FLAG_NTUPLE != 0);
            let mut cnt = EthtoolRxnfc::new(steer::ETHTOOL_GRXCLSRLCNT);
            match (steer::ethtool(ifn, &mut cnt), ntuple_on) {
                (Ok(()), Some(true)) => check(
                    "ntuple",
                    "ok",
                    format!("ntuple filters on ({} rule(s) installed)", cnt.rule_cnt),
                ),
                (Ok(()), _) => {
                    check(
                        "ntuple",
                        "missing",
                        "ntuple filters supported but off".into(),
                    );
                    fixes.push(format!("ethtool -K {ifn} ntuple on"));
                }
                (Err(e), _) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => check(
                    "ntuple",
                    "missing",
                    "no ntuple filters: flows cannot be steered to the queue (--steer refused)"
                        .into(),
                ),
                (Err(e), _) => check(
                    "ntuple",
                    "unknown",
                    format!("ETHTOOL_GRXCLSRLCNT failed: {}", words(&e)),
                ),
            }
            let mut rings = EthtoolRxnfc::new(steer::ETHTOOL_GRXRINGS);
            let rss_rings = steer::ethtool(ifn, &mut rings).ok().map(|_| rings.data);
            match rss_table(ifn) {
                Ok(t) if !t.is_empty() => {
                    let n = rx_queues.unwrap_or(1).max(1);
                    let mut per = vec![0usize; n];
                    for &q in &t {
                        if let Some(c) = per.get_mut(q as usize) {
                            *c += 1;
                        }
                    }
                    let spread: Vec<String> = per
                        .iter()
                        .enumerate()
                        .map(|(q, c)| format!("q{q}:{c}"))
                        .collect();
                    let in_rss = per.get(queue as usize).copied().unwrap_or(0) > 0;
                    check(
                        "rss",
                        if in_rss { "missing" } else { "ok" },
                        format!(
                            "RSS table of {} slots ({}){}",
                            t.len(),
                            spread.join(" "),
                            if in_rss {
                                format!("; queue {queue} also takes RSS traffic")
                            } else {
                                String::new()
                            }
                        ),
                    );
                    if in_rss && queue > 0 {
                        fixes.push(format!("ethtool -X {ifn} equal {queue}   # RSS on queues 0..{}, queue {queue} for zcrx", queue - 1));
                    }
                }
                Ok(_) | Err(_) => check(
                    "rss",
                    "unknown",
                    format!(
                        "the driver does not report an RSS table{}",
                        rss_rings.map_or(String::new(), |r| format!(" ({r} RSS ring(s))"))
                    ),
                ),
            }
            match steer::queue_napi_id(ifn, queue) {
                Ok(Some(id)) => {
                    queue_napi_id = Some(id);
                    check(
                        "napi",
                        "ok",
                        format!("queue {queue} is served by NAPI {id} (netdev netlink)"),
                    )
                }
                Ok(None) => check(
                    "napi",
                    "unknown",
                    format!("queue {queue} has no NAPI id in netdev netlink"),
                ),
                Err(e) => check(
                    "napi",
                    "unknown",
                    format!("netdev netlink QUEUE_GET failed: {}", words(&e)),
                ),
            }
            // The decisive probe, only when asked: register an area on the queue, as
            // `record` would.
            let (probe_len, probe_rq) = probe_size(rx_ring_pending(ifn), crate::area::page_size());
            match crate::area::Area::new(probe_len, false) {
                Ok(_) if !probe => check(
                    "registration",
                    "unknown",
                    format!(
                        "not tried: `zcap doctor --probe` registers {ifn} queue {queue} for real \
                         (the queue restarts once)"
                    ),
                ),
                Ok(area) => match zcrx::register(ifn, queue, &area, probe_rq) {
                    Ok(ifq) => {
                        drop(ifq);
                        check("registration", "ok", format!("registered and released {ifn} queue {queue} (the queue restarted once)"))
                    }
                    Err(e) => {
                        check("registration", "missing", e.to_string());
                        if e.errno() == libc::EINVAL
                            && !fixes.iter().any(|f| f.contains("tcp-data-split"))
                        {
                            fixes.push(format!("ethtool -G {ifn} tcp-data-split on"));
                        }
                        if blockers.is_empty() {
                            blockers.push(format!(
                                "registration failed with {}",
                                zcrx::sys::errno_name(e.errno())
                            ));
                        }
                    }
                },
                Err(e) => check(
                    "registration",
                    "unknown",
                    format!("cannot map a probe area: {e}"),
                ),
            }
            // A steering rule is worth suggesting only where the NIC has ntuple filters.
            let ntuple_capable = checks
                .iter()
                .any(|c| c.name == "ntuple" && (c.state == "ok" || c.detail.contains("but off")));
            if ntuple_capable {
                fixes.push(format!("ethtool -N {ifn} flow-type tcp6 dst-port 57012 action {queue}   # or zcap record --steer"));
            }
        }
    } else {
        check(
            "interface",
            "unknown",
            "no --iface and no default route".into(),
        );
        blockers.push("no interface to check (pass --iface)".into());
    }

    let (capture, capture_ok, capture_fixes) = capture_checks(iface.as_deref());
    let zero_copy = blockers.is_empty();
    let verdict = if zero_copy {
        format!(
            "zero-copy receive available on {} queue {queue}",
            iface.as_deref().unwrap_or("?")
        )
    } else {
        format!("no zero-copy: {}", blockers.join("; "))
    };
    Report {
        kernel,
        iface,
        queue,
        driver,
        rx_queues,
        queue_napi_id,
        checks,
        zero_copy,
        verdict,
        fixes,
        capture,
        capture_ok,
        capture_fixes,
    }
}

/// Whether the effective capability set holds capability `bit`, from /proc.
fn has_cap(bit: u32) -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    Some(u64::from_str_radix(hex, 16).ok()? & (1 << bit) != 0)
}

/// What live capture (AF_PACKET TPACKET_V3) needs: CAP_NET_RAW, a packet socket, the
/// interface up with a link type zcap captures, the default ring against the host's memory
/// (packet rings are kernel memory: RLIMIT_MEMLOCK does not bound them), libpcap for filters.
fn capture_checks(iface: Option<&str>) -> (Vec<Check>, bool, Vec<String>) {
    use crate::rx::afpacket;
    let (mut checks, mut ok, mut fixes) = (Vec::new(), true, Vec::new());
    let mut check = |name, state: &'static str, detail: String| {
        checks.push(Check {
            name,
            state,
            detail,
        })
    };
    match has_cap(13) {
        Some(true) => check("cap_net_raw", "ok", "CAP_NET_RAW is effective".into()),
        Some(false) => {
            check(
                "cap_net_raw",
                "missing",
                "no CAP_NET_RAW: opening a packet socket fails with EPERM".into(),
            );
            ok = false;
            fixes.push(
                "sudo setcap cap_net_raw,cap_net_admin+ep $(command -v zcap)   # or run as root"
                    .into(),
            );
        }
        None => check(
            "cap_net_raw",
            "unknown",
            "cannot read /proc/self/status".into(),
        ),
    }
    match afpacket::probe_socket() {
        Ok(()) => check(
            "tpacket_v3",
            "ok",
            "a packet socket takes TPACKET_V3".into(),
        ),
        Err(e) => {
            check("tpacket_v3", "missing", e.to_string());
            ok = false;
        }
    }
    if let Some(ifn) = iface {
        match afpacket::iface_state(ifn) {
            Ok((up, running, linktype)) => {
                match (up, running) {
                    (true, true) => check("link", "ok", format!("{ifn} is up with a carrier")),
                    (true, false) => {
                        check("link", "missing", format!("{ifn} is up but has no carrier"))
                    }
                    (false, _) => {
                        check("link", "missing", format!("{ifn} is down"));
                        ok = false;
                        fixes.push(format!("ip link set {ifn} up"));
                    }
                }
                match linktype {
                    Ok(lt) => check(
                        "link_type",
                        "ok",
                        format!("captured as pcap link type {lt}"),
                    ),
                    Err(e) => {
                        check("link_type", "missing", e.to_string());
                        ok = false;
                    }
                }
            }
            Err(e) => {
                check(
                    "link",
                    if e.kind() == io::ErrorKind::PermissionDenied {
                        "unknown"
                    } else {
                        "missing"
                    },
                    e.to_string(),
                );
                ok = false;
            }
        }
    }
    let per_ring = afpacket::DEFAULT_BLOCK_SIZE as u64 * afpacket::DEFAULT_BLOCK_COUNT as u64;
    let memlock = rlimit_memlock();
    let memlock = memlock.map_or("unknown".into(), |m| {
        if m == u64::MAX {
            "unlimited".into()
        } else {
            crate::units::human_bytes(m)
        }
    });
    match afpacket::ring_fits(per_ring, 1) {
        (Ok(()), avail) => check(
            "ring_memory",
            "ok",
            format!(
                "the default ring ({}) fits: {} available; each --fanout thread takes one \
                 (kernel memory, not bounded by RLIMIT_MEMLOCK = {memlock})",
                crate::units::human_bytes(per_ring),
                avail.map_or("unknown".into(), crate::units::human_bytes)
            ),
        ),
        (Err(e), _) => {
            check("ring_memory", "missing", e.to_string());
            ok = false;
            fixes.push("zcap record -i IF --block-count 16   # a 64 MiB ring".into());
        }
    }
    match afpacket::libpcap() {
        Ok(v) => check("libpcap", "ok", format!("filters compile with {v}")),
        Err(e) => {
            check(
                "libpcap",
                "missing",
                format!("{e}; capture without a filter works"),
            );
            fixes.push("apt-get install libpcap0.8   # for capture filters".into());
        }
    }
    (checks, ok, fixes)
}

fn rlimit_memlock() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into our local.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return None;
    }
    Some(if r.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        r.rlim_cur
    })
}

/// `zcap doctor`: prints the report; `Ok(true)` when zero-copy receive is available.
pub fn run(
    iface: Option<&str>,
    queue: Option<u32>,
    json: bool,
    probe: bool,
) -> anyhow::Result<bool> {
    let r = examine(iface, queue, probe);
    if json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(r.zero_copy);
    }
    println!(
        "zcap doctor: {} queue {}",
        r.iface.as_deref().unwrap_or("(no interface)"),
        r.queue
    );
    for c in &r.checks {
        let mark = match c.state {
            "ok" => "ok     ",
            "missing" => "MISSING",
            _ => "unknown",
        };
        println!("  {mark}  {:<13} {}", c.name, c.detail);
    }
    println!("verdict: {}", r.verdict);
    if !r.fixes.is_empty() {
        println!("to fix what can be fixed on this host:");
        for f in &r.fixes {
            println!("  {f}");
        }
    }
    if !r.zero_copy {
        println!("zcap record --rx auto falls back to the io_uring `ring` backend here.");
    }
    println!(
        "live capture (record -i, send) on {}:",
        r.iface.as_deref().unwrap_or("(no interface)")
    );
    for c in &r.capture {
        let mark = match c.state {
            "ok" => "ok     ",
            "missing" => "MISSING",
            _ => "unknown",
        };
        println!("  {mark}  {:<13} {}", c.name, c.detail);
    }
    println!(
        "verdict: {}",
        if r.capture_ok {
            "live capture works here"
        } else {
            "live capture is not ready (see above)"
        }
    );
    if !r.capture_fixes.is_empty() {
        println!("to fix:");
        for f in &r.capture_fixes {
            println!("  {f}");
        }
    }
    Ok(r.zero_copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_compare() {
        assert_eq!(version_at_least("6.18.44-fc-v669", 6, 15), Some(true));
        assert_eq!(version_at_least("6.8.0-45-generic", 6, 15), Some(false));
        assert_eq!(version_at_least("7.0.1", 6, 15), Some(true));
        assert_eq!(version_at_least("weird", 6, 15), None);
    }

    #[test]
    fn the_probe_area_holds_the_rx_ring_and_a_pool_batch() {
        let (len, rq) = probe_size(Some(4096), 4096);
        assert!(len >= (4096 + 64) * 4096, "{len}");
        assert_eq!(rq, 8192);
        let (len, rq) = probe_size(None, 65536);
        assert_eq!(len % 65536, 0);
        assert!(rq >= 1024);
    }

    #[test]
    fn a_queue_that_rss_uses_is_objected_to_with_the_fix() {
        // `ethtool -X eth2 equal 8` cannot exclude queue 0: it spreads over 0..7.
        let t: Vec<u32> = (0..128).map(|i| i % 8).collect();
        let why = queue_rss_objection("eth2", 0, Some(&t), Some(8)).unwrap();
        assert!(why.contains("takes RSS traffic"), "{why}");
        assert!(
            why.contains("ethtool -X eth2 equal 7") && why.contains("--queue 7"),
            "{why}"
        );
        assert!(why.contains("--force"), "{why}");
        let t: Vec<u32> = (0..128).map(|i| i % 7).collect();
        assert_eq!(queue_rss_objection("eth2", 7, Some(&t), Some(8)), None);
        // One queue: every flow lands there, with or without an RSS table.
        let why = queue_rss_objection("eth0", 0, None, Some(1)).unwrap();
        assert!(why.contains("single rx queue"), "{why}");
        // Nothing known: no objection (registration says the rest).
        assert_eq!(queue_rss_objection("eth0", 3, None, None), None);
        assert_eq!(queue_rss_objection("eth0", 3, None, Some(8)), None);
    }
}
