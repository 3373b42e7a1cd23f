//! The network ingest engine behind `zcap record --listen/--connect`: sets up the area and
//! the source of connections, picks the receive backend (`--rx auto|zcrx|ring|recv`), says
//! in one line which one runs and why, and runs it on this thread until a stop or
//! `--max-streams`. It owns no data path itself: the backends fill the area, `conn.rs` turns
//! connections into streams, the writer persists.

use super::bufs::{buffer_count, Bufs};
use super::conn::{Core, Dialer, Source};
use super::limits::Limits;
use super::{recv, ring, zcrx, Events, RxStats, Stop};
use crate::area::Area;
use crate::steer;
use std::io;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Which receive backend runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// zcrx when an interface is given and it works, else ring, else recv.
    Auto,
    Zcrx,
    Ring,
    Recv,
    /// The zcrx backend against the in-process emulation of the kernel's half.
    ZcrxEmulated,
}

/// What the engine needs to know; `record` builds it from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub rx: Backend,
    /// Address to listen on (when not connecting).
    pub listen: String,
    pub connect: Option<String>,
    /// The NIC and queue zcrx registers, and whether to steer the listen port there.
    pub iface: Option<String>,
    pub queue: Option<u32>,
    /// Register the queue even when RSS also uses it.
    pub force: bool,
    pub steer: bool,
    pub hugepages: bool,
    pub area_size: u64,
    pub buf_size: u64,
    /// Stop after this many streams have ended.
    pub max_streams: Option<u64>,
    /// At most this many connections at once (never more than the descriptors allow).
    pub max_conns: Option<usize>,
    pub max_conns_per_peer: usize,
    /// Networks senders may connect from (`--allow`); empty: any.
    pub allow: Vec<super::limits::Cidr>,
    /// Who to become once the listener is bound and the backend set up (`-Z`).
    pub drop_to: Option<crate::privdrop::Target>,
    /// Speak TLS to senders (`--tls-cert`/`--tls-key`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Speak TLS to the `--connect` server (`--tls-ca`).
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
}

/// The area of each TLS connection (at most `--area-size`).
const TLS_CONN_AREA: usize = 8 << 20;

/// The settings of a TLS source: each connection's area is at most [`TLS_CONN_AREA`].
fn tls_serve<'a>(
    a: &Config,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    events: Events,
    stop: &'a Stop,
    stats: &'a RxStats,
) -> super::tls::Serve<'a> {
    let conn_area = (a.area_size as usize).min(TLS_CONN_AREA);
    super::tls::Serve {
        tls,
        conn_area,
        buf_size: (a.buf_size as usize).min(conn_area / 4),
        limits,
        max_streams: a.max_streams,
        events,
        stop,
        stats,
    }
}

/// Becomes the `-Z` user, if any: called once everything that needs privileges is set up.
fn relinquish(a: &Config) -> io::Result<()> {
    a.drop_to.as_ref().map_or(Ok(()), crate::privdrop::apply)
}

/// Records PCAP-over-IP connections until `stop` (or `--max-streams`), then ends every stream.
pub fn run(a: &Config, tx: Events, stop: &Stop, stats: &RxStats) -> io::Result<()> {
    if a.buf_size == 0 || a.buf_size > u32::MAX as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--buf-size must be between 1 byte and 4 GiB",
        ));
    }
    let count = buffer_count(a.area_size, a.buf_size);
    let size = a.buf_size as usize;
    let nofile = super::sys::raise_nofile().unwrap_or(1024);
    let limits = Limits::derive(nofile, a.max_conns, a.max_conns_per_peer).allowing(&a.allow);
    if a.max_conns.is_some_and(|m| m > limits.max_conns) {
        eprintln!(
            "zcap: --max-conns lowered to {}: the descriptor limit is {nofile} and every \
             connection needs two (raise `ulimit -n`)",
            limits.max_conns
        );
    }
    let source = match &a.connect {
        Some(target) if a.tls_client.is_some() => {
            relinquish(a)?;
            eprintln!("zcap: rx: tls (connecting to {target})");
            let client = Arc::clone(a.tls_client.as_ref().expect("checked"));
            return super::tls::dial(target, client, tls_serve(a, None, limits, tx, stop, stats));
        }
        Some(target) => Source::Connect(Dialer::new(target)),
        None => {
            let addr = a.listen.as_str();
            let l = TcpListener::bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            super::sys::set_backlog(std::os::fd::AsRawFd::as_raw_fd(&l), super::conn::BACKLOG)?;
            if let Some(w) = exposure_warning(&l, &a.allow, a.tls.is_some()) {
                eprintln!("{w}");
            }
            if let Some(tls) = &a.tls {
                relinquish(a)?;
                eprintln!("zcap: rx: tls (a thread and area per connection; --rx does not apply)");
                eprintln!("zcap: listening on {}", l.local_addr()?);
                let tls = Some(Arc::clone(tls));
                return super::tls::serve(l, tls_serve(a, tls, limits, tx, stop, stats));
            }
            Source::Listen(l)
        }
    };
    // The shared area, for the backends that receive into one (TLS gives each connection
    // its own, above).
    let area = Area::new(count * size, a.hugepages)?;
    crate::stats::publish_area(&area);
    let mut core = Core::new(
        area,
        Bufs::new(count, size),
        source,
        tx,
        stop,
        stats,
        a.max_streams,
        limits,
    );
    let zcrx_note = match a.rx {
        Backend::ZcrxEmulated => {
            relinquish(a)?;
            return run_zcrx_emulated(&mut core, a.max_streams);
        }
        Backend::Zcrx | Backend::Auto if a.iface.is_some() || a.rx == Backend::Zcrx => {
            match try_zcrx(a, &mut core) {
                Ok(result) => return result,
                Err(reason) if a.rx == Backend::Zcrx => {
                    return Err(io::Error::other(format!("--rx zcrx: {reason}")))
                }
                Err(reason) => reason,
            }
        }
        _ => "no --zcrx-iface given".to_string(),
    };
    let backend = match a.rx {
        Backend::Recv => {
            announce("recv", None, &core);
            None
        }
        Backend::Ring => {
            let r =
                ring::new_ring().map_err(|why| io::Error::other(format!("--rx ring: {why}")))?;
            announce("ring", None, &core);
            Some(r)
        }
        _ => match ring::new_ring() {
            Ok(r) => {
                announce(
                    "ring",
                    Some(format!("zcrx unavailable: {zcrx_note}")),
                    &core,
                );
                Some(r)
            }
            Err(why) => {
                announce("recv", Some(format!("io_uring unavailable: {why}")), &core);
                None
            }
        },
    };
    relinquish(a)?;
    match backend {
        Some(r) => ring::run(&mut core, r),
        None => recv::run(&mut core),
    }
}

/// The one line that says what a listener off loopback with neither `--allow` nor TLS
/// exposes.
fn exposure_warning(l: &TcpListener, allow: &[super::limits::Cidr], tls: bool) -> Option<String> {
    let addr = l.local_addr().ok()?;
    (allow.is_empty() && !tls && !addr.ip().to_canonical().is_loopback()).then(|| {
        format!(
            "zcap: warning: listening on {addr} without --allow: anyone who can reach this port \
             can write into the archive, and the packets cross the network as plain TCP"
        )
    })
}

/// One line naming the backend (and why, for `auto`), then where we listen: tests and
/// scripts parse `zcap: listening on ADDR` to learn a `--listen HOST:0` port.
fn announce(backend: &str, why: Option<String>, core: &Core) {
    match why {
        Some(w) => eprintln!("zcap: rx: {backend} ({w})"),
        None => eprintln!("zcap: rx: {backend}"),
    }
    match &core.source {
        Source::Listen(l) => match l.local_addr() {
            Ok(addr) => eprintln!("zcap: listening on {addr}"),
            Err(e) => eprintln!("zcap: listening (address unknown: {e})"),
        },
        Source::Connect(_) => {}
    }
}

/// The single call site of the zcrx backend (src/rx/zcrx/): registers an interface queue on
/// `--zcrx-iface`/`--queue` over the same area, optionally steers the listen port to it, and runs
/// zero-copy receive. `Err(reason)` in words when zcrx cannot run here, in which case `auto`
/// falls back to `ring`; `Ok(result)` once it ran.
fn try_zcrx(a: &Config, core: &mut Core) -> Result<io::Result<()>, String> {
    let iface = a
        .iface
        .as_deref()
        .ok_or("--zcrx-iface IF names the NIC whose queue receives zero-copy")?;
    let queue = a.queue.ok_or_else(|| {
        format!(
            "no --queue given: name the rx queue of {iface} to register, one kept out of RSS \
             (`ethtool -X {iface} equal Q` spreads RSS over 0..Q-1, then --queue Q)"
        )
    })?;
    if !a.force {
        if let Some(why) = crate::doctor::queue_objection(iface, queue) {
            return Err(why);
        }
    }
    let mut ifq =
        zcrx::register(iface, queue, &core.area, ZCRX_RQ_ENTRIES).map_err(|e| e.to_string())?;
    let _rules = match (&core.source, a.steer) {
        (Source::Listen(l), true) => {
            match l
                .local_addr()
                .map(|addr| steer::install_for(iface, &addr, queue))
            {
                Ok(Ok(rules)) => rules,
                Ok(Err(e)) => return Ok(Err(io::Error::other(format!("--steer: {e}")))),
                Err(e) => return Ok(Err(e)),
            }
        }
        _ => Vec::new(),
    };
    let opts = zcrx::Options {
        queue_napi_id: steer::queue_napi_id(iface, queue).ok().flatten(),
        label: format!("{iface} queue {queue}"),
        steer_fix: format!(
            "use --steer or `ethtool -N {iface} flow-type tcp4 dst-port {port} action {queue}`",
            port = match &core.source {
                Source::Listen(l) => l.local_addr().map_or(0, |a| a.port()),
                Source::Connect(_) => 0,
            }
        ),
        max_streams: a.max_streams,
        limits: core.limits(),
        ..Default::default()
    };
    if let Err(e) = relinquish(a) {
        return Ok(Err(e));
    }
    announce("zcrx", Some(format!("{iface} queue {queue}")), core);
    // Buffers left over are the kernel's to drop when the ring closes (io_zcrx_scrub).
    Ok(drive_zcrx(&mut ifq, core, &opts).map(|_| ()))
}

/// The zcrx backend against the emulated kernel half: the same backend code, for tests and
/// benchmarks here. Fails if the emulator saw the protocol broken (reuse, leak, bad entry).
fn run_zcrx_emulated(core: &mut Core, max_streams: Option<u64>) -> io::Result<()> {
    let limits = core.limits();
    let spec = zcrx::emu::EmuSpec::from_env().map_err(io::Error::other)?;
    let mut emu = zcrx::emu::Emulator::new(&core.area, spec.cfg)?;
    announce("zcrx", Some("emulated kernel half".into()), core);
    let defaults = zcrx::Options::default();
    let opts = zcrx::Options {
        label: "emulated queue".into(),
        max_streams,
        limits,
        starve_timeout: spec.starve_timeout.unwrap_or(defaults.starve_timeout),
        ..defaults
    };
    let left = drive_zcrx(&mut emu, core, &opts)?;
    emu.teardown(&left);
    let books = emu.shutdown();
    if !books.clean() {
        return Err(io::Error::other(format!(
            "zcrx emulation: protocol broken: {books:?}"
        )));
    }
    Ok(())
}

/// Runs the zcrx backend on the engine's source: once over the listener, or once per
/// connection for `--connect`, dialing again with the dialer's back-off. Returns the
/// released buffers the refill ring could not take at the end (each run hands its own to
/// the next).
fn drive_zcrx<K: zcrx::ZcrxKernel>(
    kernel: &mut K,
    core: &mut Core,
    opts: &zcrx::Options,
) -> io::Result<Vec<crate::area::ReleaseToken>> {
    fn once<K: zcrx::ZcrxKernel>(
        kernel: &mut K,
        core: &Core,
        sources: zcrx::Sources,
        opts: &zcrx::Options,
    ) -> io::Result<zcrx::ZcrxReport> {
        let area = Arc::clone(&core.area);
        let rep = zcrx::run(
            kernel,
            &area,
            sources,
            core.events(),
            core.stop_flag(),
            core.stats,
            opts,
        )?;
        report_zcrx(&rep);
        Ok(rep)
    }
    if let Source::Listen(l) = &core.source {
        let sources = zcrx::Sources {
            listener: Some(l.try_clone()?),
            ..Default::default()
        };
        return once(kernel, core, sources, opts).map(|r| r.held_at_exit);
    }
    let (mut ended, mut next) = (0, opts.first_stream);
    let mut held = Vec::new();
    while !core.stop_flag().load(Ordering::Relaxed) && opts.max_streams.is_none_or(|m| ended < m) {
        let Some(sock) = core.dial() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let one = zcrx::Options {
            first_stream: next,
            max_streams: Some(1),
            ..opts.clone()
        };
        let sources = zcrx::Sources {
            listener: None,
            connected: vec![sock],
            held: std::mem::take(&mut held),
        };
        let rep = once(kernel, core, sources, &one)?;
        held = rep.held_at_exit;
        ended += rep.streams;
        next += rep.streams;
        if let Source::Connect(d) = &mut core.source {
            d.ended(rep.bytes);
        }
    }
    Ok(held)
}

/// Refill ring entries asked for: enough for an area of 64 KiB..256 MiB in 4 KiB pages
/// returned in frame-sized batches; the kernel rounds up to a power of two.
const ZCRX_RQ_ENTRIES: u32 = 4096;

fn report_zcrx(rep: &zcrx::ZcrxReport) {
    if rep.refill_full > 0 || rep.copy_fallback_streams > 0 || rep.unreturned_at_exit > 0 {
        eprintln!(
            "zcap: zcrx: refill ring full {} time(s) (buffers held, none dropped; most at once {}), \
             {} stream(s) by copy fallback, {} buffer(s) not returned at exit",
            rep.refill_full, rep.held_max, rep.copy_fallback_streams, rep.unreturned_at_exit
        );
    }
}
