//! `zcap send`: a sensor. Captures interfaces live exactly as `record -i` does (the afpacket
//! backend, its rings, filters and drop counters) and streams each capture thread as one
//! PCAP-over-IP connection to a recorder (`zcap record --listen`, Arkime, anything that
//! listens). Each block's records go out with one writev(2) straight from the ring, and the
//! block goes back to the kernel once the socket has taken them. When the connection is
//! lost, the sink reconnects with back-off (100 ms doubling to 5 s), starting a new stream
//! with the file header; packets that arrive while it is down are dropped and counted.
//! Owns only the sockets to the recorder; the capture side is `rx::afpacket`'s.

use crate::cli::SendArgs;
use crate::record::{capture_config, capture_summary, print_listings};
use crate::rx::{self, Event, Events, RxStats};
use crate::units::human_bytes;
use anyhow::Context;
use std::io::{self, IoSlice, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
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

struct Sink {
    to: String,
    name: String,
    conn: Option<TcpStream>,
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
        match r {
            Ok(mut s) => match s.write_all(&self.header) {
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
        let mut rest = slices;
        let mut left = bytes;
        while !rest.is_empty() {
            match conn.write_vectored(rest) {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "the recorder closed");
                    self.fail_mid_block(e, packets, left, bytes);
                    return;
                }
                Ok(n) => {
                    left -= n as u64;
                    IoSlice::advance_slices(&mut rest, n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.fail_mid_block(e, packets, left, bytes);
                    return;
                }
            }
        }
        self.rep.packets += packets;
        self.rep.bytes += bytes;
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

fn sink(to: String, events: Receiver<Event>) -> SinkReport {
    let mut s = Sink {
        to,
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
                    let _ = c.shutdown(std::net::Shutdown::Write);
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
    let to = a.to.clone().unwrap_or_default();
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
        let to = to.clone();
        sinks.push(
            std::thread::Builder::new()
                .name(format!("zcap-send-{i}"))
                .spawn(move || sink(to, rx))?,
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
    eprintln!("{}", capture_summary(&a.capture, &captured, 0));
    Ok(true)
}
