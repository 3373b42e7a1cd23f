//! `zcap send`: a sensor. Captures interfaces live exactly as `record -i` does (the afpacket
//! backend, its rings, filters and drop counters) and streams each capture thread as one
//! PCAP-over-IP connection to a recorder (`zcap record --listen`, Arkime, anything that
//! listens). Each block's records go out with one writev(2) straight from the ring, and the
//! block goes back to the kernel once the socket has taken them. When the connection is
//! lost, the sink reconnects with back-off (100 ms doubling to 5 s), starting a new stream
//! with the file header; packets that arrive while it is down are dropped and counted.
//! With `--serve ADDR:PORT` it is a PCAP-over-IP server instead: every client that connects
//! gets the file header and then the records of every capture thread, live (a client too slow
//! to take a block within two seconds is dropped; packets captured while no client is
//! connected are counted).
//! Owns only the sockets to the recorder or clients; the capture side is `rx::afpacket`'s.

use crate::cli::SendArgs;
use crate::record::{capture_config, capture_summary, print_listings};
use crate::rx::{self, Event, Events, RxStats};
use crate::units::human_bytes;
use anyhow::Context;
use std::io::{self, IoSlice, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A recorder that takes nothing for this long counts as gone (reconnect).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Blocks in flight per capture thread between the ring and its connection.
const QUEUE: usize = 1024;

/// What one capture thread's connection did.
#[derive(Debug, Default, Clone)]
pub struct SinkReport {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    pub connections: u64,
    /// Packets captured while no connection was up (or lost with a failed write).
    pub dropped: u64,
}

/// A connection to the recorder: plain TCP, or TLS over it (`--tls-ca`).
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.as_mut(),
        }
    }

    /// Ends the stream: the TCP write side, after TLS's close_notify (see `rx::tls::close`).
    fn finish(self) {
        match self {
            Conn::Plain(s) => {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            Conn::Tls(mut s) => {
                let _ = crate::rx::tls::close(&mut s);
            }
        }
    }
}

/// TLS to the recorder: what to trust, and the name its certificate must carry.
type TlsTo = (
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
);

struct Sink {
    to: String,
    tls: Option<TlsTo>,
    name: String,
    conn: Option<Conn>,
    header: Vec<u8>,
    backoff: Duration,
    next_try: Instant,
    /// Dropped since the connection went down (reported when it is back).
    down_drops: u64,
    down_since: Option<Instant>,
    rep: SinkReport,
}

impl Sink {
    fn connect(&mut self) {
        if self.conn.is_some() || Instant::now() < self.next_try {
            return;
        }
        let r = self
            .to
            .to_socket_addrs()
            .and_then(|mut a| {
                a.next()
                    .ok_or_else(|| io::Error::other("the name has no address"))
            })
            .and_then(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
            .and_then(|s| {
                s.set_write_timeout(Some(WRITE_TIMEOUT))?;
                s.set_nodelay(true)?;
                Ok(s)
            });
        let r = r.and_then(|s| match &self.tls {
            None => Ok(Conn::Plain(s)),
            Some((cfg, name)) => rustls::ClientConnection::new(Arc::clone(cfg), name.clone())
                .map(|c| Conn::Tls(Box::new(rustls::StreamOwned::new(c, s))))
                .map_err(io::Error::other),
        });
        match r {
            // With TLS the handshake happens in this first write.
            Ok(mut s) => match s.writer().write_all(&self.header) {
                Ok(()) => {
                    self.rep.connections += 1;
                    match self.down_since.take() {
                        Some(t) => eprintln!(
                            "zcap: send: {}: reconnected to {} after {:.1} s; {} packets dropped while disconnected",
                            self.name,
                            self.to,
                            t.elapsed().as_secs_f64(),
                            self.down_drops
                        ),
                        None => eprintln!("zcap: send: {}: connected to {}", self.name, self.to),
                    }
                    self.down_drops = 0;
                    self.backoff = BACKOFF_FIRST;
                    self.conn = Some(s);
                }
                Err(e) => self.lost(e),
            },
            Err(e) => self.lost(e),
        }
    }

    /// The connection failed (or could not be made): back off before the next try.
    fn lost(&mut self, e: io::Error) {
        if self.down_since.is_none() {
            eprintln!(
                "zcap: send: {}: no connection to {} ({e}); reconnecting with back-off, dropping packets until then",
                self.name, self.to
            );
            self.down_since = Some(Instant::now());
        }
        self.conn = None;
        self.next_try = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn drop_packets(&mut self, n: u64) {
        self.down_drops += n;
        self.rep.dropped += n;
    }

    /// Writes the records of one block (all of `slices`) in as few writev(2) calls as the
    /// socket takes.
    fn write(&mut self, slices: &mut [IoSlice<'_>], packets: u64, bytes: u64) {
        let Some(conn) = self.conn.as_mut() else {
            self.drop_packets(packets);
            return;
        };
        match write_slices(conn.writer(), slices, bytes) {
            Ok(()) => {
                self.rep.packets += packets;
                self.rep.bytes += bytes;
            }
            Err((e, left)) => self.fail_mid_block(e, packets, left, bytes),
        }
    }

    /// A write failed with `left` of the block's `bytes` unsent: the receiver got part of a
    /// record at most, which it discards; count the block's unsent packets (a fair share).
    fn fail_mid_block(&mut self, e: io::Error, packets: u64, left: u64, bytes: u64) {
        let unsent = (packets * left).div_ceil(bytes.max(1));
        self.rep.packets += packets - unsent;
        self.rep.bytes += bytes - left;
        self.drop_packets(unsent);
        self.lost(e);
    }
}

/// Writes all of `slices` (`bytes` in total) to `conn`, in as few writev(2) calls as it
/// takes; on failure, the error and the bytes left unsent.
fn write_slices(
    conn: &mut dyn Write,
    slices: &mut [IoSlice<'_>],
    bytes: u64,
) -> Result<(), (io::Error, u64)> {
    let mut rest = slices;
    let mut left = bytes;
    while !rest.is_empty() {
        match conn.write_vectored(rest) {
            Ok(0) => {
                let e = io::Error::new(io::ErrorKind::WriteZero, "the peer closed");
                return Err((e, left));
            }
            Ok(n) => {
                left -= n as u64;
                IoSlice::advance_slices(&mut rest, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((e, left)),
        }
    }
    Ok(())
}

/// `--serve`: the clients connected now, and what they were sent.
struct Hub {
    header: [u8; 24],
    clients: Mutex<Vec<(SocketAddr, TcpStream)>>,
    served: AtomicU64,
    packets: AtomicU64,
    /// Packets captured while no client was connected.
    unseen: AtomicU64,
}

/// A client slower than this with one block is dropped (it would stall every capture ring).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

fn accept_clients(l: TcpListener, hub: &Hub, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut s, addr)) => {
                let ready = s
                    .set_nonblocking(false)
                    .and_then(|()| s.set_write_timeout(Some(CLIENT_TIMEOUT)))
                    .and_then(|()| s.set_nodelay(true));
                let mut clients = hub.clients.lock().unwrap_or_else(|p| p.into_inner());
                // The header under the lock: no record can go to the client before it.
                match ready.and_then(|()| s.write_all(&hub.header)) {
                    Ok(()) => {
                        eprintln!("zcap: send: serving {addr}");
                        hub.served.fetch_add(1, Ordering::Relaxed);
                        clients.push((addr, s));
                    }
                    Err(e) => eprintln!("zcap: send: client {addr}: {e}"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => {
                eprintln!("zcap: send: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Every capture thread's blocks, to every client: one writev per block and client.
fn serve_sink(hub: &Hub, events: Receiver<Event>) {
    while let Ok(ev) = events.recv() {
        let Event::Records { block, spans } = ev else {
            continue;
        };
        let packets = spans.len() as u64;
        let mut clients = hub.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.is_empty() {
            hub.unseen.fetch_add(packets, Ordering::Relaxed);
            continue;
        }
        let all = block.bytes();
        let bytes: u64 = spans.iter().map(|sp| sp.len as u64).sum();
        let slices: Vec<IoSlice<'_>> = spans
            .iter()
            .map(|sp| IoSlice::new(&all[sp.off as usize..][..sp.len as usize]))
            .collect();
        let mut each = slices.clone();
        clients.retain_mut(|(addr, conn)| {
            each.copy_from_slice(&slices);
            match write_slices(conn, &mut each, bytes) {
                Ok(()) => true,
                Err((e, _)) => {
                    eprintln!("zcap: send: client {addr} dropped ({e})");
                    false
                }
            }
        });
        hub.packets.fetch_add(packets, Ordering::Relaxed);
    }
    for (_, c) in hub
        .clients
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
    {
        let _ = c.shutdown(std::net::Shutdown::Write);
    }
}

/// `zcap send --serve`: one PCAP-over-IP stream of every ring, to whoever connects.
fn serve(a: &SendArgs, addr: &str) -> anyhow::Result<bool> {
    let cfg = capture_config(&a.capture);
    let rings = rx::afpacket::open(&cfg)?;
    let header = rings[0].header();
    if let Some(r) = rings.iter().find(|r| r.header() != header) {
        anyhow::bail!(
            "--serve sends one pcap stream, and {} is captured with another link type than {}: serve one kind of interface at a time",
            r.iface,
            rings[0].iface
        );
    }
    let l = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    l.set_nonblocking(true)?;
    eprintln!(
        "zcap: rx: afpacket ({} ring(s) on {})",
        rings.len(),
        a.capture.interface.join(", ")
    );
    eprintln!("zcap: listening on {}", l.local_addr()?);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let hub = Arc::new(Hub {
        header,
        clients: Mutex::new(Vec::new()),
        served: AtomicU64::new(0),
        packets: AtomicU64::new(0),
        unseen: AtomicU64::new(0),
    });
    let (tx, rx) = sync_channel(QUEUE);
    let h = Arc::clone(&hub);
    let sink = std::thread::Builder::new()
        .name("zcap-serve".into())
        .spawn(move || serve_sink(&h, rx))?;
    let (h, s) = (Arc::clone(&hub), Arc::clone(&stop));
    let acceptor = std::thread::Builder::new()
        .name("zcap-accept".into())
        .spawn(move || accept_clients(l, &h, &s))?;
    let events = Events::new(vec![tx]);
    let rx_stats = Arc::new(RxStats::default());
    let captured = rx::afpacket::run(rings, 1, &events, &stop, &rx_stats);
    drop(events);
    stop.store(true, Ordering::Relaxed);
    sink.join()
        .map_err(|_| anyhow::anyhow!("the serve thread panicked"))?;
    acceptor
        .join()
        .map_err(|_| anyhow::anyhow!("the accept thread panicked"))?;
    let captured = captured.context("capturing")?;
    let ld = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "zcap: send: served {} client(s) on {addr}; {} packets sent; {} captured while no client was connected",
        ld(&hub.served),
        ld(&hub.packets),
        ld(&hub.unseen)
    );
    let unseen = ld(&hub.unseen);
    let lost = (unseen > 0).then(|| format!("{unseen} captured while no client was connected"));
    eprintln!("{}", capture_summary(&a.capture, &captured, lost));
    Ok(true)
}

fn sink(to: String, tls: Option<TlsTo>, events: Receiver<Event>) -> SinkReport {
    let mut s = Sink {
        to,
        tls,
        name: String::new(),
        conn: None,
        header: Vec::new(),
        backoff: BACKOFF_FIRST,
        next_try: Instant::now(),
        down_drops: 0,
        down_since: None,
        rep: SinkReport::default(),
    };
    while let Ok(ev) = events.recv() {
        match ev {
            Event::Open { name, .. } => {
                s.name = name.clone();
                s.rep.name = name;
            }
            Event::Data(chunk) => {
                // The stream's file header: kept (24 bytes) to begin every connection.
                s.header = chunk.bytes().to_vec();
                s.connect();
            }
            Event::Records { block, spans } => {
                s.connect();
                let packets = spans.len() as u64;
                let bytes: u64 = spans.iter().map(|sp| sp.len as u64).sum();
                if s.conn.is_none() {
                    s.drop_packets(packets);
                    continue; // dropping the block gives it back to the kernel
                }
                let all = block.bytes();
                // One slice per record, straight from the ring; one Vec per block.
                let mut v: Vec<IoSlice<'_>> = spans
                    .iter()
                    .map(|sp| IoSlice::new(&all[sp.off as usize..][..sp.len as usize]))
                    .collect();
                s.write(&mut v, packets, bytes);
            }
            Event::End { .. } => {
                if let Some(c) = s.conn.take() {
                    c.finish();
                }
            }
        }
    }
    s.rep
}

/// Runs `zcap send`.
pub fn run(a: &SendArgs) -> anyhow::Result<bool> {
    if a.capture.interface.is_empty() {
        anyhow::bail!("zcap send needs -i IF: the interface to capture");
    }
    if a.capture.dump_filter {
        return print_listings(&a.capture);
    }
    if let Some(addr) = &a.serve {
        return serve(a, addr);
    }
    let to = a.to.clone().unwrap_or_default();
    let tls: Option<TlsTo> = match &a.tls_ca {
        None => None,
        Some(ca) => {
            let name = crate::rx::tls::server_name(&to).context("--to")?;
            Some((crate::rx::tls::client_config(ca).context("--tls-ca")?, name))
        }
    };
    let cfg = capture_config(&a.capture);
    let rings = rx::afpacket::open(&cfg)?;
    eprintln!(
        "zcap: rx: afpacket ({} ring(s) on {}), sending to {}",
        rings.len(),
        a.capture.interface.join(", "),
        to
    );
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    // One sink per capture thread: stream ids 1..=n map to senders by id % n.
    let n = rings.len();
    let mut senders = Vec::new();
    let mut sinks = Vec::new();
    for i in 0..n {
        let (tx, rx) = sync_channel(QUEUE);
        senders.push(tx);
        let (to, tls) = (to.clone(), tls.clone());
        sinks.push(
            std::thread::Builder::new()
                .name(format!("zcap-send-{i}"))
                .spawn(move || sink(to, tls, rx))?,
        );
    }
    let events = Events::new(senders);
    let rx_stats = Arc::new(RxStats::default());
    let captured = rx::afpacket::run(rings, 1, &events, &stop, &rx_stats);
    drop(events);
    let mut reports = Vec::new();
    for t in sinks {
        reports.push(
            t.join()
                .map_err(|_| anyhow::anyhow!("a send thread panicked"))?,
        );
    }
    let captured = captured.context("capturing")?;
    let (packets, bytes, conns, dropped) = reports.iter().fold((0, 0, 0, 0), |t, r| {
        (
            t.0 + r.packets,
            t.1 + r.bytes,
            t.2 + r.connections,
            t.3 + r.dropped,
        )
    });
    eprintln!(
        "zcap: send: {packets} packets ({}) sent to {} over {conns} connection(s){}",
        human_bytes(bytes),
        to,
        if dropped > 0 {
            format!("; {dropped} captured packets dropped while disconnected")
        } else {
            String::new()
        }
    );
    let lost = (dropped > 0).then(|| format!("{dropped} dropped while disconnected"));
    eprintln!("{}", capture_summary(&a.capture, &captured, lost));
    Ok(true)
}
