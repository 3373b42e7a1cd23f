//! The zcrx backend's kernel-independent core: turns RECV_ZC completions into area chunks
//! for the writer and pushes the writer's released buffers into the refill ring. What differs
//! between the real kernel and the emulator is the [`ZcrxKernel`] seam: arm/cancel a
//! multishot RECV_ZC, watch a descriptor, wait for completions, and the refill ring itself
//! (shared memory with the same code on both sides). Everything else — stream lifetime,
//! re-arming, holding buffers when the refill ring is full, the copy-fallback warning — runs
//! here for both, so the emulator tests what production runs.
//!
//! Owns: the accepted sockets and the buffers between "completion seen" and "back in the
//! refill ring". Must not: parse stream bytes, block on the writer except through the event
//! channel (backpressure), or drop a buffer without returning it.

use super::rings::{Full, RefillRing};
use super::sys::{errno_words, ZcrxCompletion, IORING_ZCRX_AREA_SHIFT};
use crate::area::{Area, ReleaseToken, StreamId};
use crate::rx::limits::{Admission, Limits};
use crate::rx::{Event, Events, RxStats, Stop};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The seam between the backend and whoever fills the area: the io_uring zcrx interface
/// queue ([`super::ZcrxIfq`]) or the emulator ([`super::emu::Emulator`]).
pub trait ZcrxKernel {
    /// The refill ring the backend returns buffers through.
    fn refill(&mut self) -> &mut RefillRing;
    /// Starts a multishot RECV_ZC on `fd`; its completions carry `user_data`.
    fn arm(&mut self, fd: RawFd, user_data: u64) -> io::Result<()>;
    /// Asks the request `user_data` to end; its final completion follows (`-ECANCELED`).
    fn cancel(&mut self, user_data: u64) -> io::Result<()>;
    /// Makes [`ZcrxKernel::wait`] return when `fd` becomes readable.
    fn watch(&mut self, fd: RawFd) -> io::Result<()>;
    /// Stops watching `fd`.
    fn unwatch(&mut self, fd: RawFd) -> io::Result<()>;
    /// Submits queued requests and waits up to `timeout` for completions (or a watched
    /// descriptor); appends RECV_ZC completions to `out`.
    fn wait(&mut self, out: &mut Vec<ZcrxCompletion>, timeout: Duration) -> io::Result<()>;
    /// Bytes per niov: the most one completion can carry (`rx_buf_len`, else a page).
    fn niov_size(&self) -> usize;
    /// Whether the kernel has `ZCRX_CTRL_FLUSH_RQ` (probed at registration).
    fn can_flush_rq(&self) -> bool;
    /// Makes the kernel read the whole refill ring now (IORING_REGISTER_ZCRX_CTRL,
    /// ZCRX_CTRL_FLUSH_RQ). Without it the kernel reads the ring only when the queue's page
    /// pool allocates, i.e. while steered packets arrive.
    fn flush_rq(&mut self) -> io::Result<()>;
}

/// Where the backend's sockets come from.
#[derive(Default)]
pub struct Sources {
    /// Accept every connection on this listener until stopped.
    pub listener: Option<TcpListener>,
    /// Already connected sockets (`record --connect`).
    pub connected: Vec<TcpStream>,
    /// Buffers an earlier run released but could not put into the refill ring (its
    /// [`ZcrxReport::held_at_exit`]): they still belong to the kernel's user references and
    /// go back first.
    pub held: Vec<ReleaseToken>,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// NAPI id of the zcrx queue (see `steer::queue_napi_id`). A stream whose socket reports
    /// another `SO_INCOMING_NAPI_ID` is not steered to the queue: the kernel copies its data
    /// into the area (copy fallback), and the backend warns once for it.
    pub queue_napi_id: Option<u32>,
    /// What the messages call the queue, e.g. `eth0 queue 7`.
    pub label: String,
    /// How long to wait at exit for the writer to give back chunks it still holds.
    pub drain_timeout: Duration,
    /// How long a stream the copy fallback left without free niovs (`-ENOMEM`) waits for the
    /// kernel to take buffers back before it ends as not steered to the queue. Without
    /// FLUSH_RQ an idle zcrx queue never reads the refill ring, so waiting longer is useless.
    pub starve_timeout: Duration,
    /// How to steer a stream to the queue, for the "not steered" error (e.g. `use --steer
    /// or ethtool -N eth0 flow-type tcp4 dst-port 57012 action 7`).
    pub steer_fix: String,
    /// Stream ids are allocated from here up.
    pub first_stream: StreamId,
    /// Stop once this many streams have ended (`record --max-streams`).
    pub max_streams: Option<u64>,
    /// Connection limits (see `rx::limits`).
    pub limits: Limits,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            queue_napi_id: None,
            label: "zcrx".into(),
            drain_timeout: Duration::from_secs(30),
            starve_timeout: Duration::from_secs(5),
            steer_fix: "use --steer or `ethtool -N IF flow-type tcp4 dst-port PORT action Q`"
                .into(),
            first_stream: 1,
            max_streams: None,
            limits: Limits::default(),
        }
    }
}

/// What one run did, for the summary and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ZcrxReport {
    pub streams: u64,
    pub bytes: u64,
    pub chunks: u64,
    pub completions: u64,
    /// Buffers pushed into the refill ring.
    pub refill_pushed: u64,
    /// Times the refill ring was found full with buffers to return (they were held).
    pub refill_full: u64,
    /// Most buffers held at once because the refill ring was full.
    pub held_max: usize,
    /// Final `-ENOSPC` completions (CQ overflow) answered by re-arming RECV_ZC.
    pub rearm_enospc: u64,
    /// Final `-ENOMEM` completions (no free area niov for the copy path).
    pub rearm_enomem: u64,
    /// ZCRX_CTRL_FLUSH_RQ calls made so the kernel takes returned buffers back.
    pub flushes: u64,
    /// Streams ended because the copy fallback starved them and the kernel would not read
    /// the refill ring (not steered to the queue).
    pub starved_ends: u64,
    /// Streams whose data arrived through the kernel's copy fallback (not steered).
    pub copy_fallback_streams: u64,
    /// Completions that named no live stream or lay outside the area.
    pub bad_completions: u64,
    /// Buffers not back in the refill ring when the backend returned.
    pub unreturned_at_exit: u64,
    /// Of those, the ones the writer released but the full refill ring could not take (the
    /// kernel reads it only while the queue receives): give them to the next run
    /// ([`Sources::held`]), or leave them to the queue's teardown, which drops every user
    /// reference (`io_zcrx_scrub`).
    pub held_at_exit: Vec<ReleaseToken>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recv {
    Armed,
    /// Ended with -ENOMEM; re-armed once buffers go back.
    Starved,
    /// Cancel sent; `discard` drops data that still arrives (the writer aborted the stream).
    Cancelling {
        discard: bool,
    },
}

struct Stream {
    sock: TcpStream,
    name: String,
    recv: Recv,
    napi_checked: bool,
    bytes: u64,
    peer: IpAddr,
}

struct Core<'a, K: ZcrxKernel> {
    kernel: &'a mut K,
    area: &'a Arc<Area>,
    events: &'a Events,
    stats: &'a RxStats,
    opts: &'a Options,
    area_id: u64,
    next_id: StreamId,
    streams: HashMap<u64, Stream>,
    /// Released by the writer, not yet in the refill ring (it was full).
    held: VecDeque<ReleaseToken>,
    tokens: Vec<ReleaseToken>,
    aborts: Vec<StreamId>,
    /// Chunks lent to the writer and not yet released.
    outstanding: u64,
    ring_was_full: bool,
    /// When a stream last got `-ENOMEM` with nothing re-armed since, and where the kernel's
    /// refill-ring head was then (it moves when the kernel takes buffers back).
    starved_at: Option<Instant>,
    starve_head: u32,
    writer_gone: bool,
    stopping: bool,
    ended: u64,
    report: ZcrxReport,
    admission: Admission,
}

/// Runs the zcrx backend until `stop` is set (or the writer goes away): accepts from
/// `sources.listener`, arms RECV_ZC on every socket, sends `Open`/`Data`/`End` events, and
/// returns released buffers through the refill ring. After stopping it cancels the
/// receives, ends every stream, and waits (up to `opts.drain_timeout`) for the writer to give
/// back every chunk so the kernel gets every buffer back.
///
/// `kernel` is used from this thread only (the real ring is SINGLE_ISSUER).
pub fn run<K: ZcrxKernel>(
    kernel: &mut K,
    area: &Arc<Area>,
    sources: Sources,
    events: &Events,
    stop: &Stop,
    stats: &RxStats,
    opts: &Options,
) -> io::Result<ZcrxReport> {
    let area_id = kernel.refill().area_token() >> IORING_ZCRX_AREA_SHIFT;
    // A completion's bytes lie in one niov of the area.
    area.set_granule(kernel.niov_size());
    kernel.watch(area.wake_fd())?;
    let mut listener = sources.listener;
    if let Some(l) = &listener {
        l.set_nonblocking(true)?;
        kernel.watch(l.as_raw_fd())?;
    }
    let mut core = Core {
        kernel,
        area,
        events,
        stats,
        opts,
        area_id,
        next_id: opts.first_stream,
        streams: HashMap::new(),
        held: sources.held.into(),
        tokens: Vec::new(),
        aborts: Vec::new(),
        outstanding: 0,
        ring_was_full: false,
        starved_at: None,
        starve_head: 0,
        writer_gone: false,
        stopping: false,
        ended: 0,
        report: ZcrxReport::default(),
        admission: Admission::new(opts.limits.clone()),
    };
    for s in sources.connected {
        core.open(s);
    }
    let mut cqes = Vec::with_capacity(1024);
    let mut stopping = false;
    loop {
        let enough = opts.max_streams.is_some_and(|m| core.ended >= m);
        if !stopping && (stop.load(Ordering::Relaxed) || core.writer_gone || enough) {
            stopping = true;
            core.stopping = true;
            if let Some(l) = listener.take() {
                core.kernel.unwatch(l.as_raw_fd())?;
            }
            core.cancel_all();
        }
        if let Some(l) = &listener {
            for _ in 0..64 {
                if !core.admission.open_to_new(area, stats) {
                    break; // new senders wait in the listen backlog
                }
                match l.accept() {
                    Ok((s, _)) => core.open(s),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // Peer gone before accept, fd limits: report and keep serving the others.
                    Err(e) => {
                        core.admission.accept_failed(&e, stats);
                        break;
                    }
                }
            }
        }
        area.set_starving(core.starved_at.is_some());
        core.release();
        if stopping && core.streams.is_empty() {
            break;
        }
        // Held buffers go into the refill ring as soon as the kernel makes room; a starved
        // stream waits for the kernel's head to move, which needs no fast polling.
        let timeout = Duration::from_millis(match (core.held.is_empty(), core.starved_at) {
            (false, _) => 1,
            (true, Some(_)) => 10,
            (true, None) => 100,
        });
        core.kernel.wait(&mut cqes, timeout)?;
        for c in cqes.drain(..) {
            core.handle(c);
        }
    }
    core.drain(&mut cqes)?;
    core.kernel.unwatch(area.wake_fd())?;
    Ok(core.report)
}

impl<K: ZcrxKernel> Core<'_, K> {
    fn send(&mut self, ev: Event) {
        if self.events.send(ev).is_err() {
            // The writer is gone; the event (and any chunk in it) was dropped, which returns
            // the buffer through the area's queue.
            self.writer_gone = true;
        }
    }

    fn open(&mut self, sock: TcpStream) {
        let Ok(peer) = self.admission.admit_socket(&sock, self.stats) else {
            return; // dropping the socket closes it
        };
        let id = self.next_id;
        self.next_id += 1;
        let name = crate::rx::conn::stream_name(&sock);
        eprintln!("zcap: stream {name}: connected");
        self.report.streams += 1;
        self.stats.add(&self.stats.streams_opened, 1);
        self.stats.add(&self.stats.streams_open, 1);
        self.send(Event::Open {
            stream: id,
            name: name.clone(),
            area: Arc::clone(self.area),
            network: true,
        });
        let fd = sock.as_raw_fd();
        self.streams.insert(
            id,
            Stream {
                sock,
                name,
                recv: Recv::Armed,
                napi_checked: false,
                bytes: 0,
                peer,
            },
        );
        if let Err(e) = self.kernel.arm(fd, id) {
            self.end(id, Some(format!("cannot start RECV_ZC: {e}")));
        }
    }

    fn end(&mut self, id: u64, error: Option<String>) {
        if let Some(st) = self.streams.remove(&id) {
            if error.is_none() && !matches!(st.recv, Recv::Cancelling { discard: true }) {
                crate::rx::conn::log_end(&st.name, st.bytes, self.stopping);
            }
            drop(st.sock);
            self.admission.left(st.peer);
            self.stats.streams_open.fetch_sub(1, Ordering::Relaxed);
            self.ended += 1;
            self.send(Event::End { stream: id, error });
        }
    }

    fn cancel_all(&mut self) {
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for id in ids {
            self.cancel(id, false);
        }
    }

    /// Ends the receive on `id`: cancels an armed request (the stream ends at its final
    /// completion) or ends a starved one at once.
    fn cancel(&mut self, id: u64, discard: bool) {
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        match st.recv {
            Recv::Armed => {
                st.recv = Recv::Cancelling { discard };
                if let Err(e) = self.kernel.cancel(id) {
                    self.end(id, Some(format!("cannot cancel RECV_ZC: {e}")));
                }
            }
            Recv::Starved => self.end(id, None),
            Recv::Cancelling { discard: d } => {
                st.recv = Recv::Cancelling {
                    discard: d || discard,
                }
            }
        }
    }

    /// Takes what the writer released and pushes it, after anything held, into the refill
    /// ring; holds what does not fit. Then acts on aborts and re-arms starved streams.
    fn release(&mut self) {
        self.area.clear_wake();
        self.area.take_returns(&mut self.tokens, &mut self.aborts);
        self.outstanding -= self.tokens.len() as u64;
        self.held.extend(self.tokens.drain(..));
        let mut pushed = self.push_held();
        // A full ring where the kernel can be asked to read it: ask, then push the rest.
        while !self.held.is_empty() && self.kernel.can_flush_rq() {
            if self.kernel.flush_rq().is_err() {
                break;
            }
            self.report.flushes += 1;
            match self.push_held() {
                0 => break,
                n => pushed += n,
            }
        }
        let full = !self.held.is_empty();
        if full && !self.ring_was_full {
            self.report.refill_full += 1;
        }
        self.ring_was_full = full;
        self.report.held_max = self.report.held_max.max(self.held.len());
        self.report.refill_pushed += pushed;

        let aborts = std::mem::take(&mut self.aborts);
        for id in &aborts {
            self.cancel(*id, true);
        }
        self.aborts = aborts;
        self.aborts.clear();

        if self.starved_at.is_some() {
            self.unstarve();
        }
    }

    /// Streams the copy fallback starved (`-ENOMEM`) are re-armed only when the kernel can
    /// have free niovs again: after a FLUSH_RQ that returned buffers, or once the kernel
    /// read the refill ring by itself (its head moved: the queue's page pool allocated).
    /// Re-arming otherwise gets `-ENOMEM` at once, forever. After `starve_timeout` without
    /// either, the streams end: on a kernel without FLUSH_RQ an idle zcrx queue never reads
    /// the ring, which is what an unsteered flow looks like.
    fn unstarve(&mut self) {
        let Some(since) = self.starved_at else {
            return;
        };
        let ring = self.kernel.refill();
        let queued = ring.queued();
        let head_moved = ring.kernel_head() != self.starve_head;
        let mut ready = head_moved;
        if !ready && queued > 0 && self.kernel.can_flush_rq() {
            match self.kernel.flush_rq() {
                Ok(()) => {
                    self.report.flushes += 1;
                    ready = true;
                }
                Err(e) => eprintln!(
                    "zcap: {}: ZCRX_CTRL_FLUSH_RQ failed: {}",
                    self.opts.label,
                    errno_words(e.raw_os_error().unwrap_or(libc::EIO))
                ),
            }
        }
        let starved: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| s.recv == Recv::Starved)
            .map(|(id, _)| *id)
            .collect();
        if starved.is_empty() {
            self.starved_at = None;
            return;
        }
        if ready {
            self.starved_at = None;
            for id in starved {
                self.rearm(id);
            }
            return;
        }
        // With FLUSH_RQ, buffers the writer still holds will come back: wait for them.
        let more_to_come = self.kernel.can_flush_rq() && self.outstanding > 0;
        if more_to_come || since.elapsed() < self.opts.starve_timeout {
            return;
        }
        self.starved_at = None;
        let why = if self.kernel.can_flush_rq() {
            format!(
                "the area has no free niov for the kernel's copy fallback and none came back \
                 within {:?} (the NIC and its page pool hold the rest)",
                self.opts.starve_timeout
            )
        } else {
            format!(
                "the kernel copies its data into free area niovs and takes returned ones back \
                 only when the zcrx queue receives (this kernel has no ZCRX_CTRL_FLUSH_RQ); \
                 none came back within {:?}",
                self.opts.starve_timeout
            )
        };
        for id in starved {
            self.report.starved_ends += 1;
            let msg = format!(
                "not steered to {}: {why}; {}",
                self.opts.label, self.opts.steer_fix
            );
            eprintln!(
                "zcap: stream {}: {msg}",
                self.streams.get(&id).map_or("?", |s| s.name.as_str())
            );
            self.end(id, Some(msg));
        }
    }

    /// Pushes held buffers into the refill ring until it is full; returns how many.
    fn push_held(&mut self) -> u64 {
        let mut pushed = 0u64;
        let ring = self.kernel.refill();
        while let Some(t) = self.held.front() {
            match ring.push(t.id, t.len) {
                Ok(()) => {
                    self.held.pop_front();
                    pushed += 1;
                }
                Err(Full) => break,
            }
        }
        pushed
    }

    fn rearm(&mut self, id: u64) {
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        st.recv = Recv::Armed;
        let fd = st.sock.as_raw_fd();
        if let Err(e) = self.kernel.arm(fd, id) {
            self.end(id, Some(format!("cannot re-arm RECV_ZC: {e}")));
        }
    }

    fn handle(&mut self, c: ZcrxCompletion) {
        self.report.completions += 1;
        let id = c.user_data;
        let Some(st) = self.streams.get_mut(&id) else {
            // Not ours (any more): give the buffer straight back so the page is not lost.
            self.report.bad_completions += 1;
            if c.res > 0 {
                self.held.push_back(ReleaseToken {
                    id: c.area_offset(),
                    len: c.res as u32,
                });
            }
            return;
        };
        let recv = st.recv;
        if c.res > 0 {
            let off = c.area_offset();
            let len = c.res as u32;
            let token = ReleaseToken { id: off, len };
            let inside = off
                .checked_add(u64::from(len))
                .is_some_and(|end| end <= self.area.len() as u64);
            if c.area_id() != self.area_id || !inside {
                self.report.bad_completions += 1;
                let msg = format!(
                    "kernel completion outside the area (off {:#x}, {len} bytes, area id {} of {})",
                    c.off,
                    c.area_id(),
                    self.area_id
                );
                if inside {
                    self.held.push_back(token);
                }
                self.cancel(id, true);
                self.end(id, Some(msg));
                return;
            }
            if recv == (Recv::Cancelling { discard: true }) {
                self.held.push_back(token);
            } else {
                let first = !st.napi_checked;
                st.napi_checked = true;
                if first {
                    self.check_steering(id);
                }
                // SAFETY: the kernel finished writing these `len` bytes at `off` before posting
                // the completion, and holds a user reference on their page, so it will not
                // reuse it until this token comes back through the refill ring — which
                // happens only after the chunk is dropped (`release`).
                let chunk = unsafe { self.area.lend(id, off as usize, len as usize, token) };
                if let Some(st) = self.streams.get_mut(&id) {
                    st.bytes += u64::from(len);
                }
                self.outstanding += 1;
                self.report.bytes += u64::from(len);
                self.report.chunks += 1;
                self.stats.add(&self.stats.bytes, u64::from(len));
                self.stats.add(&self.stats.chunks, 1);
                self.send(Event::Data(chunk));
            }
        }
        if c.more() {
            return;
        }
        let cancelling = matches!(recv, Recv::Cancelling { .. });
        match c.res {
            0 => self.end(id, None),
            // Only a length-limited RECV_ZC ends with data, and zcap never sets a limit
            // (`io_recvzc` ends an unlimited request with 0 or -errno): the data above was
            // delivered; say what happened rather than re-arm a request we do not understand.
            r if r > 0 && !cancelling => {
                self.report.bad_completions += 1;
                self.end(
                    id,
                    Some(format!(
                        "RECV_ZC on {} ended with {r} bytes and no F_MORE, which an unlimited \
                         request never does",
                        self.opts.label
                    )),
                )
            }
            r if r > 0 => self.end(id, None),
            r if cancelling
                && (r == -libc::ECANCELED || r == -libc::ENOSPC || r == -libc::ENOMEM) =>
            {
                self.end(id, None)
            }
            r if r == -libc::ENOSPC => {
                // The CQ overflowed and the kernel ended the multishot request: nothing is
                // lost, the data waits in the socket.
                self.report.rearm_enospc += 1;
                self.rearm(id);
            }
            r if r == -libc::ENOMEM => {
                // No free area niov for the copy fallback: see `unstarve`.
                self.report.rearm_enomem += 1;
                if let Some(st) = self.streams.get_mut(&id) {
                    st.recv = Recv::Starved;
                }
                if self.starved_at.is_none() {
                    self.starved_at = Some(Instant::now());
                    self.starve_head = self.kernel.refill().kernel_head();
                }
                self.stats.add(&self.stats.starved, 1);
            }
            r => {
                let bytes = self.streams.get(&id).map_or(0, |st| st.bytes);
                let e = io::Error::from_raw_os_error(-r);
                let msg = format!(
                    "{} ({} on {})",
                    crate::rx::conn::transport_error(&e, bytes),
                    errno_words(-r),
                    self.opts.label
                );
                self.end(id, Some(msg));
            }
        }
    }

    fn check_steering(&mut self, id: u64) {
        let Some(want) = self.opts.queue_napi_id else {
            return;
        };
        let Some(st) = self.streams.get(&id) else {
            return;
        };
        let got = crate::steer::incoming_napi_id(st.sock.as_raw_fd()).unwrap_or(0);
        if got != want {
            self.report.copy_fallback_streams += 1;
            eprintln!(
                "zcap: stream {}: {}",
                st.name,
                crate::steer::fallback_warning(&self.opts.label, want, got)
            );
        }
    }

    /// After the last stream ended: wait (up to `drain_timeout`) for the writer to release
    /// every chunk, and put every held buffer into the refill ring. A full ring is emptied
    /// with FLUSH_RQ where the kernel has it; otherwise the kernel reads it only when the
    /// queue receives, which at exit it does not, so those buffers are left to the queue's
    /// teardown (which takes back every user reference) instead of waiting for nothing.
    fn drain(&mut self, cqes: &mut Vec<ZcrxCompletion>) -> io::Result<()> {
        let start = Instant::now();
        let deadline = start + self.opts.drain_timeout;
        let mut said = false;
        loop {
            // Also flushes a full ring where the kernel can.
            self.release();
            let writer_has = if self.writer_gone {
                0
            } else {
                self.outstanding
            };
            if writer_has == 0 {
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            if !said && start.elapsed() >= Duration::from_secs(1) {
                said = true;
                eprintln!(
                    "zcap: {}: waiting up to {:?} for the writer to persist and release {} \
                     chunk(s) it still holds",
                    self.opts.label, self.opts.drain_timeout, writer_has
                );
            }
            self.kernel.wait(cqes, Duration::from_millis(5))?;
            for c in cqes.drain(..) {
                self.handle(c);
            }
        }
        self.report.unreturned_at_exit = self.outstanding + self.held.len() as u64;
        self.report.held_at_exit = self.held.iter().copied().collect();
        if self.report.unreturned_at_exit > 0 && !self.writer_gone {
            let held = self.held.len();
            eprintln!(
                "zcap: {}: {} buffer(s) not returned to the kernel at exit: {} still with the \
                 writer after {:?}, {held} released but not in the refill ring (full, and \
                 the kernel reads it only while the queue receives{}); the queue's teardown \
                 takes them back",
                self.opts.label,
                self.report.unreturned_at_exit,
                self.outstanding,
                start.elapsed(),
                if self.kernel.can_flush_rq() {
                    ""
                } else {
                    "; no FLUSH_RQ on this kernel"
                }
            );
        }
        Ok(())
    }
}
