//! The network ingest engine behind `zcap record --listen/--connect`: sets up the area and
//! the source of connections, picks the receive backend (`--rx auto|zcrx|ring|recv`), says
//! in one line which one runs and why, and runs it on this thread until a stop or
//! `--max-streams`. It owns no data path itself: the backends fill the area, `conn.rs` turns
//! connections into streams, the writer persists.

use super::bufs::{buffer_count, Bufs};
use super::conn::{Core, Dialer, Source};
use super::{recv, ring, Events, RxStats, Stop};
use crate::area::Area;
use crate::cli::{RecordArgs, RxKind, DEFAULT_LISTEN};
use std::io;
use std::net::TcpListener;

/// Records PCAP-over-IP connections until `stop` (or `--max-streams`), then ends every stream.
pub fn run(a: &RecordArgs, tx: Events, stop: &Stop, stats: &RxStats) -> io::Result<()> {
    if a.buf_size == 0 || a.buf_size > u32::MAX as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--buf-size must be between 1 byte and 4 GiB",
        ));
    }
    let count = buffer_count(a.area_size, a.buf_size);
    let size = a.buf_size as usize;
    let area = Area::new(count * size, a.hugepages)?;
    crate::stats::publish_area(&area);
    let source = match &a.connect {
        Some(target) => Source::Connect(Dialer::new(target)),
        None => {
            let addr = a.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
            let l = TcpListener::bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            Source::Listen(l)
        }
    };
    let mut core = Core::new(
        area,
        Bufs::new(count, size),
        source,
        tx,
        stop,
        stats,
        a.max_streams,
    );
    let zcrx_note = match a.rx {
        RxKind::Zcrx | RxKind::Auto if a.iface.is_some() || a.rx == RxKind::Zcrx => {
            match try_zcrx(a, &mut core) {
                Ok(result) => return result,
                Err(reason) if a.rx == RxKind::Zcrx => {
                    return Err(io::Error::other(format!("--rx zcrx: {reason}")))
                }
                Err(reason) => reason,
            }
        }
        _ => "no --iface given".to_string(),
    };
    let backend = match a.rx {
        RxKind::Recv => {
            announce("recv", None, &core);
            None
        }
        RxKind::Ring => {
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
    match backend {
        Some(r) => ring::run(&mut core, r),
        None => recv::run(&mut core),
    }
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

/// The single call site of the zcrx backend (src/rx/zcrx/, issue 4): runs zero-copy receive
/// on `--iface`/`--queue` with the same `Core` (area, streams, source) and returns its
/// result, or `Err(reason)` in words when zcrx cannot run here, in which case `auto` falls
/// back to `ring`.
fn try_zcrx(a: &RecordArgs, core: &mut Core) -> Result<io::Result<()>, String> {
    let _ = (a, core);
    Err("the zcrx backend is not built into this zcap yet".into())
}
