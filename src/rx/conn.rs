//! What every network backend shares: the area and its buffer books, the connection →
//! stream bookkeeping (`Event::Open`, chunks, `Event::End`), the release and abort queue,
//! the `--max-streams` and stop/drain rules, the connection limits and admission (no new
//! connection while the area is nearly full: it waits in the listen backlog), and the two
//! sources of connections — a listening socket, or a `--connect` dialer with exponential
//! back-off. The backends (`ring.rs`, `recv.rs`) only decide *how* bytes get into buffers.

use super::bufs::Bufs;
use super::limits::{Admission, Limits};
use super::{Event, Events, RxStats, Stop};
use crate::area::{Area, ReleaseToken, StreamId};
use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How long a stop waits for connections to deliver what the kernel already holds for them
/// before cutting them off.
pub const DRAIN: Duration = Duration::from_secs(2);

/// How often connections waiting for a buffer are checked for a close (they cannot be read,
/// but a sender that went away must not keep its stream, and what it holds, open).
pub const SWEEP: Duration = Duration::from_millis(100);

/// Listen backlog: senders held back while the area is nearly full wait here.
pub const BACKLOG: i32 = 4096;

/// One TCP connection = one stream.
pub struct Conn {
    pub sock: TcpStream,
    pub stream: StreamId,
    pub name: String,
    pub bytes: u64,
    /// The writer rejected the stream; it has said why.
    pub aborted: bool,
    peer: IpAddr,
}

/// Where connections come from.
pub enum Source {
    Listen(TcpListener),
    Connect(Dialer),
}

/// `--connect`: one connection at a time to a PCAP-over-IP server; reconnects after each
/// end, backing off exponentially (100 ms doubling to 30 s) while attempts fail or the
/// server sends nothing.
pub struct Dialer {
    target: String,
    backoff: Duration,
    next: Instant,
    active: bool,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Dialer {
    pub fn new(target: &str) -> Dialer {
        Dialer {
            target: target.to_string(),
            backoff: BACKOFF_MIN,
            next: Instant::now(),
            active: false,
        }
    }

    /// A new connection when one is due (none active and the back-off has passed).
    pub fn poll(&mut self) -> Option<TcpStream> {
        if self.active || Instant::now() < self.next {
            return None;
        }
        match self.dial() {
            Ok(s) => {
                eprintln!("zcap: connected to {}", self.target);
                self.active = true;
                Some(s)
            }
            Err(e) => {
                self.next = Instant::now() + self.backoff;
                eprintln!(
                    "zcap: connect {}: {e}; retrying in {:.1} s",
                    self.target,
                    self.backoff.as_secs_f64()
                );
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                None
            }
        }
    }

    fn dial(&self) -> io::Result<TcpStream> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to nothing");
        for addr in self.target.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The active connection ended after `bytes` bytes.
    pub fn ended(&mut self, bytes: u64) {
        self.active = false;
        if bytes > 0 {
            self.backoff = BACKOFF_MIN;
        }
        self.next = Instant::now() + self.backoff;
        if bytes == 0 {
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// The stream name of a connection: its peer and start time (`10.0.0.1_40312-20261125T081530Z`).
pub fn stream_name(sock: &TcpStream) -> String {
    let peer = sock
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    format!(
        "{}_{}-{}",
        peer.ip().to_canonical(),
        peer.port(),
        crate::archive::compact_time(SystemTime::now())
    )
}

/// The line every backend logs when a stream ends in order.
pub fn log_end(name: &str, bytes: u64, shutdown: bool) {
    let how = if shutdown {
        "ended by the recorder's shutdown"
    } else {
        "sender closed the connection"
    };
    eprintln!("zcap: stream {name}: {how} after {bytes} bytes");
}

/// The state every backend shares; see the module docs.
pub struct Core<'a> {
    pub area: Arc<Area>,
    pub bufs: Bufs,
    pub stats: &'a RxStats,
    pub source: Source,
    tx: Events,
    stop: &'a Stop,
    next_id: StreamId,
    ended: u64,
    max_streams: Option<u64>,
    drain_deadline: Option<Instant>,
    tokens: Vec<ReleaseToken>,
    admission: Admission,
    next_sweep: Instant,
}

impl<'a> Core<'a> {
    #[allow(clippy::too_many_arguments)] // the shared state itself; grouping it hides nothing
    pub fn new(
        area: Arc<Area>,
        bufs: Bufs,
        source: Source,
        tx: Events,
        stop: &'a Stop,
        stats: &'a RxStats,
        max_streams: Option<u64>,
        limits: Limits,
    ) -> Core<'a> {
        area.set_granule(bufs.size());
        Core {
            area,
            bufs,
            stats,
            source,
            tx,
            stop,
            next_id: 1,
            ended: 0,
            max_streams,
            drain_deadline: None,
            tokens: Vec::new(),
            admission: Admission::new(limits),
            next_sweep: Instant::now(),
        }
    }

    /// Whether to take new connections now: not while draining, not while accepting is
    /// paused after running out of descriptors, and not while the area is nearly full (the
    /// senders wait in the listen backlog until the writer has caught up).
    pub fn accepting(&mut self) -> bool {
        !self.draining() && self.admission.open_to_new(&self.area, self.stats)
    }

    pub fn limits(&self) -> Limits {
        self.admission.limits()
    }

    /// accept(2) failed: pause or log (see [`Admission::accept_failed`]).
    pub fn accept_failed(&mut self, e: &io::Error) {
        self.admission.accept_failed(e, self.stats);
    }

    /// Due to check waiting connections for a close ([`SWEEP`]).
    pub fn sweep_due(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next_sweep {
            return false;
        }
        self.next_sweep = now + SWEEP;
        true
    }

    /// The channel to the writer, for a backend that manages its own streams (zcrx).
    pub fn events(&self) -> &Events {
        &self.tx
    }

    pub fn stop_flag(&self) -> &Stop {
        self.stop
    }

    fn send(&self, ev: Event) -> io::Result<()> {
        self.tx
            .send(ev)
            .map_err(|_| io::Error::other("the writer stopped"))
    }

    /// Starts a stream for a new connection, or closes it at once when the connection
    /// limits refuse it (counted and logged; `None`).
    pub fn open(&mut self, sock: TcpStream) -> io::Result<Option<Conn>> {
        let Ok(peer) = self.admission.admit_socket(&sock, self.stats) else {
            if let Source::Connect(d) = &mut self.source {
                d.ended(0);
            }
            return Ok(None); // dropping the socket closes it
        };
        let name = stream_name(&sock);
        let stream = self.next_id;
        self.next_id += 1;
        self.send(Event::Open {
            stream,
            name: name.clone(),
            area: Arc::clone(&self.area),
            network: true,
        })?;
        self.stats.add(&self.stats.streams_opened, 1);
        self.stats.add(&self.stats.streams_open, 1);
        eprintln!("zcap: stream {name}: connected");
        Ok(Some(Conn {
            sock,
            stream,
            name,
            bytes: 0,
            aborted: false,
            peer,
        }))
    }

    /// Lends the next `len` bytes of buffer `bid` (just filled for `conn`) to the writer.
    pub fn deliver(&mut self, conn: &mut Conn, bid: usize, len: usize) -> io::Result<()> {
        let (off, token) = self.bufs.piece(bid, len);
        conn.bytes += len as u64;
        self.stats.add(&self.stats.bytes, len as u64);
        self.stats.add(&self.stats.chunks, 1);
        // SAFETY: the kernel (or our recv) has finished writing these bytes, and `Bufs` keeps
        // the buffer out of the ring and off the free list until this piece's token is back.
        let chunk = unsafe { self.area.lend(conn.stream, off, len, token) };
        self.send(Event::Data(chunk))
    }

    /// Ends `conn`'s stream. `error` is the transport error in words, if any.
    pub fn end(&mut self, conn: Conn, error: Option<String>) -> io::Result<()> {
        if error.is_none() && !conn.aborted {
            log_end(&conn.name, conn.bytes, self.drain_deadline.is_some());
        }
        if let Source::Connect(d) = &mut self.source {
            d.ended(conn.bytes);
        }
        self.ended += 1;
        self.admission.left(conn.peer);
        self.stats.streams_open.fetch_sub(1, Ordering::Relaxed);
        let stream = conn.stream;
        drop(conn); // closes the socket
        self.send(Event::End { stream, error })
    }

    /// Moves returned tokens into the buffer books, appending every buffer that is free
    /// again to `freed` and every aborted stream to `aborts`.
    pub fn collect(&mut self, aborts: &mut Vec<StreamId>, freed: &mut Vec<usize>) {
        self.area.take_returns(&mut self.tokens, aborts);
        for t in self.tokens.drain(..) {
            if let Some(bid) = self.bufs.release(t) {
                freed.push(bid);
            }
        }
    }

    /// A stop was requested or `--max-streams` streams have ended.
    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.max_streams.is_some_and(|m| self.ended >= m)
    }

    pub fn draining(&self) -> bool {
        self.drain_deadline.is_some()
    }

    /// At a stop: the connections still in the listen backlog (held back while the area was
    /// full, or just arrived). The kernel has acknowledged their bytes, so they are taken in
    /// and drained with the others rather than dropped.
    pub fn take_backlog(&mut self) -> io::Result<Vec<Conn>> {
        let mut out = Vec::new();
        let Source::Listen(l) = &self.source else {
            return Ok(out);
        };
        let l = l.try_clone()?;
        l.set_nonblocking(true)?;
        for _ in 0..BACKLOG {
            match l.accept() {
                Ok((sock, _)) => {
                    if let Some(c) = self.open(sock)? {
                        out.push(c);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break, // empty (WouldBlock), or out of descriptors
            }
        }
        Ok(out)
    }

    /// Stops taking new connections and half-closes every open one, so each delivers what
    /// is already queued for it and then reads as ended. Returns false if already draining.
    pub fn begin_drain<'c>(&mut self, conns: impl Iterator<Item = &'c Conn>) -> bool {
        if self.drain_deadline.is_some() {
            return false;
        }
        self.drain_deadline = Some(Instant::now() + DRAIN);
        for c in conns {
            let _ = c.sock.shutdown(Shutdown::Read);
        }
        true
    }

    /// The drain period is over: cut off whatever is still open.
    pub fn drain_expired(&self) -> bool {
        self.drain_deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The next connection from `--connect`, when one is due and we are not stopping.
    pub fn dial(&mut self) -> Option<TcpStream> {
        if self.draining() {
            return None;
        }
        match &mut self.source {
            Source::Connect(d) => d.poll(),
            Source::Listen(_) => None,
        }
    }
}

/// A receive error in words, with how far the stream got.
pub fn transport_error(e: &io::Error, bytes: u64) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionReset => {
            format!("connection reset by the sender after {bytes} bytes")
        }
        io::ErrorKind::TimedOut => format!("connection timed out after {bytes} bytes"),
        _ => format!("receive failed after {bytes} bytes: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_happened_and_how_far() {
        let e = io::Error::from_raw_os_error(libc::ECONNRESET);
        assert_eq!(
            transport_error(&e, 1234),
            "connection reset by the sender after 1234 bytes"
        );
        let e = io::Error::from_raw_os_error(libc::EIO);
        assert!(transport_error(&e, 0).starts_with("receive failed after 0 bytes: "));
    }

    #[test]
    fn dialer_backs_off_while_attempts_fail() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        }; // closed now: connections are refused
        let mut d = Dialer::new(&format!("127.0.0.1:{port}"));
        assert!(d.poll().is_none());
        assert_eq!(d.backoff, BACKOFF_MIN * 2);
        assert!(d.poll().is_none(), "not due yet");
        assert_eq!(
            d.backoff,
            BACKOFF_MIN * 2,
            "no attempt before the back-off passes"
        );
        d.ended(100);
        assert_eq!(
            d.backoff, BACKOFF_MIN,
            "a stream that carried data resets the back-off"
        );
    }
}
