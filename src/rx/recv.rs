//! The `recv` backend, for hosts where io_uring is disabled: level-triggered epoll over the
//! listening socket, the connections and the area's wake eventfd, and nonblocking recv(2)
//! straight into the area. One buffer is filled at a time, piece after piece, across all
//! connections (as the kernel does for `ring` with incremental buffers); each piece is lent
//! as it arrives. When no buffer is free, starved connections are taken out of the epoll set
//! until buffers come back, so their senders meet TCP flow control: backpressure, not loss.
//! Meanwhile they are checked for a close every [`SWEEP`](super::conn::SWEEP) without being
//! read, so a sender that went away ends its stream and frees what it holds. The listener
//! leaves the epoll set while the area is nearly full or accepting is paused.

use super::conn::{transport_error, Conn, Core, Source};
use super::sys::{peer_gone, Epoll};
use std::io::{self, Read};
use std::os::fd::AsRawFd;

const LISTEN: u64 = u64::MAX;
const WAKE: u64 = u64::MAX - 1;
const READY: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
/// Reads per ready connection per wake-up, so one fast sender cannot starve the rest.
const READS_PER_TURN: usize = 8;

struct Recv {
    ep: Epoll,
    conns: Vec<Option<Conn>>,
    free_slots: Vec<usize>,
    /// Free buffers, and the one being filled.
    free: Vec<usize>,
    cur: Option<usize>,
    starved: Vec<usize>,
    /// Retire the buffer being filled once less than this is left in it.
    min_room: usize,
    /// The listener is in the epoll set.
    listening: bool,
}

impl Recv {
    /// The buffer to fill next, if any is free.
    fn space(&mut self, core: &mut Core) -> Option<usize> {
        if let Some(b) = self.cur {
            if core.bufs.room(b) >= self.min_room {
                return Some(b);
            }
            self.cur = None;
            if core.bufs.retire(b) {
                self.free.push(b);
            }
        }
        self.cur = self.free.pop();
        self.cur
    }

    fn add(&mut self, conn: Conn) -> io::Result<()> {
        conn.sock.set_nonblocking(true)?;
        let fd = conn.sock.as_raw_fd();
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.conns[s] = Some(conn);
                s
            }
            None => {
                self.conns.push(Some(conn));
                self.conns.len() - 1
            }
        };
        self.ep.add(fd, READY, slot as u64)
    }

    fn take(&mut self, slot: usize) -> Conn {
        let c = self.conns[slot].take().expect("live slot");
        self.free_slots.push(slot);
        self.starved.retain(|&s| s != slot);
        // Closing the socket removes it from the epoll set.
        c
    }
}

/// Runs the backend until a stop or `--max-streams`, then drains and ends every stream.
pub fn run(core: &mut Core) -> io::Result<()> {
    let ep = Epoll::new()?;
    ep.add(core.area.wake_fd(), libc::EPOLLIN as u32, WAKE)?;
    if let Source::Listen(l) = &core.source {
        l.set_nonblocking(true)?;
        ep.add(l.as_raw_fd(), 0, LISTEN)?;
    }
    let count = core.bufs.count();
    let mut r = Recv {
        ep,
        conns: Vec::new(),
        free_slots: Vec::new(),
        free: (0..count).rev().collect(),
        cur: None,
        starved: Vec::new(),
        min_room: (core.bufs.size() / 16).max(1),
        listening: false,
    };
    let (mut aborts, mut freed) = (Vec::new(), Vec::new());
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        core.collect(&mut aborts, &mut freed);
        r.free.append(&mut freed);
        for id in aborts.drain(..) {
            let slot = r
                .conns
                .iter()
                .position(|c| c.as_ref().is_some_and(|c| c.stream == id));
            if let Some(slot) = slot {
                let mut conn = r.take(slot);
                conn.aborted = true;
                core.end(conn, None)?;
            }
        }
        if !r.starved.is_empty() && (!r.free.is_empty() || r.cur.is_some()) {
            for slot in std::mem::take(&mut r.starved) {
                if let Some(c) = &r.conns[slot] {
                    r.ep.add(c.sock.as_raw_fd(), READY, slot as u64)?;
                }
            }
        }
        core.area.set_starving(!r.starved.is_empty());
        if !r.starved.is_empty() && core.sweep_due() {
            for slot in r.starved.clone() {
                let fd = r.conns[slot]
                    .as_ref()
                    .expect("starved slot is live")
                    .sock
                    .as_raw_fd();
                if let Some(gone) = peer_gone(fd) {
                    let conn = r.take(slot);
                    let words = gone.map(|e| transport_error(&e, conn.bytes));
                    core.end(conn, words)?;
                }
            }
        }
        let listen_fd = match &core.source {
            Source::Listen(l) if !core.draining() => Some(l.as_raw_fd()),
            _ => None,
        };
        if let Some(fd) = listen_fd {
            let want = core.accepting();
            if want != r.listening {
                let mask = if want { libc::EPOLLIN as u32 } else { 0 };
                r.ep.modify(fd, mask, LISTEN)?;
                r.listening = want;
            }
        }
        if core.should_stop() && !core.draining() {
            if let Source::Listen(l) = &core.source {
                let _ = r.ep.delete(l.as_raw_fd());
                r.listening = false;
            }
            for conn in core.take_backlog()? {
                r.add(conn)?;
            }
            let conns: Vec<&Conn> = r.conns.iter().flatten().collect();
            core.begin_drain(conns.into_iter());
        }
        if core.drain_expired() {
            for slot in 0..r.conns.len() {
                if r.conns[slot].is_some() {
                    let conn = r.take(slot);
                    core.end(conn, None)?;
                }
            }
        }
        if core.draining() && r.conns.iter().all(|c| c.is_none()) {
            return Ok(());
        }
        if let Some(sock) = core.dial() {
            if let Some(conn) = core.open(sock)? {
                r.add(conn)?;
            }
        }

        let n = r.ep.wait(&mut events, 100)?;
        for ev in &events[..n] {
            match ev.u64 {
                WAKE => core.area.clear_wake(),
                LISTEN => accept_all(core, &mut r)?,
                slot => read_conn(core, &mut r, slot as usize)?,
            }
        }
    }
}

fn accept_all(core: &mut Core, r: &mut Recv) -> io::Result<()> {
    // Bounded per wake-up so that reading the connections we have keeps its turn.
    for _ in 0..64 {
        if !core.accepting() {
            return Ok(()); // the next loop takes the listener out of the epoll set
        }
        let Source::Listen(l) = &core.source else {
            return Ok(());
        };
        match l.accept() {
            Ok((sock, _)) => {
                if let Some(conn) = core.open(sock)? {
                    r.add(conn)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                core.accept_failed(&e);
                return Ok(());
            }
        }
    }
    Ok(())
}

fn read_conn(core: &mut Core, r: &mut Recv, slot: usize) -> io::Result<()> {
    for _ in 0..READS_PER_TURN {
        if r.conns.get(slot).is_none_or(|c| c.is_none()) {
            return Ok(()); // ended earlier in this batch
        }
        let Some(bid) = r.space(core) else {
            // Out of buffers: stop reading this socket until some come back.
            let c = r.conns[slot].as_ref().expect("live");
            if !r.starved.contains(&slot) {
                r.ep.delete(c.sock.as_raw_fd())?;
                r.starved.push(slot);
                core.stats.add(&core.stats.starved, 1);
                core.area.set_starving(true);
            }
            return Ok(());
        };
        let room = core.bufs.room(bid);
        let off = core.bufs.offset(bid) + (core.bufs.size() - room);
        // SAFETY: `off..off+room` is the unfilled tail of the buffer being filled: no piece of
        // it is lent (pieces lie before it), it is not on the free list, and only this thread
        // writes it.
        let dst = unsafe { core.area.fill_slice(off, room) };
        let c = r.conns[slot].as_mut().expect("live");
        match c.sock.read(dst) {
            Ok(0) => {
                let conn = r.take(slot);
                return core.end(conn, None);
            }
            Ok(n) => {
                core.deliver(c, bid, n)?;
                if n < room {
                    return Ok(()); // most likely drained; level-triggered epoll says if not
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let conn = r.take(slot);
                let words = transport_error(&e, conn.bytes);
                return core.end(conn, Some(words));
            }
        }
    }
    Ok(())
}
