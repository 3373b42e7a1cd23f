//! The `ring` backend: one io_uring on the capture thread with an accept on the listening
//! socket, a multishot poll on the area's wake eventfd (releases from the writer),
//! and a multishot recv per connection that picks its buffers from a provided-buffer ring
//! (`bufring.rs`) whose buffers are slices of the area. A CQE's bytes are lent to the writer
//! where they landed; the buffer goes back into the ring only when every piece of it has come
//! back. When the ring runs dry the kernel ends a recv with -ENOBUFS; that connection is
//! re-armed only once buffers return, so the socket's receive queue fills and TCP flow control
//! slows its sender: backpressure, not loss. A connection waiting for buffers is checked for
//! a close every [`SWEEP`](super::conn::SWEEP) without being read. The accept is
//! cancelled while the area is nearly full or accepting is paused, and armed again after.

use super::bufring::BufRing;
use super::conn::{transport_error, Conn, Core, Source};
use super::sys::{adopt_socket, peer_gone};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::time::Duration;

const SQ_ENTRIES: u32 = 256;
const CQ_ENTRIES: u32 = 8192;
const BGID: u16 = 0;

// user_data: the top two bits say what completed; recv carries its connection slot.
const TAG_SHIFT: u32 = 62;
const TAG_RECV: u64 = 0;
const TAG_ACCEPT: u64 = 1 << TAG_SHIFT;
const TAG_WAKE: u64 = 2 << TAG_SHIFT;
const TAG_CANCEL: u64 = 3 << TAG_SHIFT;
const TAG_MASK: u64 = 3 << TAG_SHIFT;

/// Creates the ring, or says in words why io_uring cannot be used here.
pub fn new_ring() -> Result<IoUring, String> {
    if let Some((maj, min)) = kernel_version() {
        if (maj, min) < (6, 0) {
            return Err(format!(
                "kernel {maj}.{min} has no multishot recv with provided-buffer rings (6.0+)"
            ));
        }
    }
    let build = |defer: bool| {
        let mut b = IoUring::builder();
        b.setup_cqsize(CQ_ENTRIES).setup_coop_taskrun();
        if defer {
            // Completions are reaped only when we wait, in batches, on this one thread.
            b.setup_single_issuer().setup_defer_taskrun();
        }
        b.build(SQ_ENTRIES)
    };
    match build(true).or_else(|e| match e.raw_os_error() {
        Some(libc::EINVAL) => build(false), // kernels before 6.1
        _ => Err(e),
    }) {
        Ok(r) => Ok(r),
        Err(e) => Err(setup_error(&e)),
    }
}

/// Why io_uring_setup failed, in words a user can act on.
pub fn setup_error(e: &io::Error) -> String {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    match (e.raw_os_error(), disabled) {
        (Some(libc::EPERM), Some(d)) if d > 0 => format!(
            "io_uring_setup: EPERM: the sysctl kernel.io_uring_disabled is {d}{}",
            if d == 1 {
                " (only members of kernel.io_uring_group may use it)"
            } else {
                ""
            }
        ),
        (Some(libc::EPERM), _) => {
            "io_uring_setup: EPERM: a seccomp filter or container policy forbids io_uring".into()
        }
        (Some(libc::ENOSYS), _) => {
            "io_uring_setup: ENOSYS: the kernel lacks io_uring or a seccomp filter hides it".into()
        }
        (Some(libc::ENOMEM), _) => {
            "io_uring_setup: ENOMEM: locked-memory limit too low (raise `ulimit -l`)".into()
        }
        _ => format!("io_uring_setup: {e}"),
    }
}

fn kernel_version() -> Option<(u32, u32)> {
    let s = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut it = s.trim().split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

struct RConn {
    conn: Conn,
    /// A multishot recv is in flight for this socket.
    armed: bool,
    /// Waiting for buffers (its last recv ended with -ENOBUFS).
    starved: bool,
    /// An AsyncCancel was sent for its recv.
    cancelled: bool,
}

struct Ring {
    ring: IoUring,
    conns: Vec<Option<RConn>>,
    free_slots: Vec<usize>,
    /// Buffers currently in the provided-buffer ring (whole or partly used).
    in_ring: usize,
    starved: Vec<usize>,
    accept_armed: bool,
    /// An AsyncCancel was sent for the accept.
    accept_cancelling: bool,
}

impl Ring {
    /// Queues an SQE, submitting first if the queue is full.
    fn push(&mut self, e: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built in this module (accept, recv with buffer selection,
            // poll, cancel) points at no user memory; the provided buffers the recv may fill
            // are registered and stay mapped until the ring is dropped (see `run`).
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn arm_recv(&mut self, slot: usize) -> io::Result<()> {
        let c = self.conns[slot].as_mut().expect("live slot");
        let fd = c.conn.sock.as_raw_fd();
        c.armed = true;
        c.starved = false;
        let e = opcode::RecvMulti::new(types::Fd(fd), BGID)
            .build()
            .user_data(TAG_RECV | slot as u64);
        self.push(e)
    }

    fn add(&mut self, conn: Conn) -> io::Result<()> {
        let rc = RConn {
            conn,
            armed: false,
            starved: false,
            cancelled: false,
        };
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.conns[s] = Some(rc);
                s
            }
            None => {
                self.conns.push(Some(rc));
                self.conns.len() - 1
            }
        };
        self.arm_recv(slot)
    }

    fn take(&mut self, slot: usize) -> Conn {
        let c = self.conns[slot].take().expect("live slot");
        self.free_slots.push(slot);
        c.conn
    }

    fn live(&self) -> impl Iterator<Item = (usize, &RConn)> {
        self.conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (i, c)))
    }
}

/// Runs the backend until a stop or `--max-streams`, then drains and ends every stream.
pub fn run(core: &mut Core, ring: IoUring) -> io::Result<()> {
    let count = core.bufs.count();
    let size = core.bufs.size();
    let mut br = BufRing::register(&ring, count as u16, BGID)?;
    for bid in 0..count {
        br.push(
            bid as u16,
            core.area.base().wrapping_add(core.bufs.offset(bid)),
            size as u32,
        );
    }
    br.publish();
    let mut r = Ring {
        ring,
        conns: Vec::new(),
        free_slots: Vec::new(),
        in_ring: count,
        starved: Vec::new(),
        accept_armed: false,
        accept_cancelling: false,
    };
    let result = event_loop(core, &mut r, &mut br);
    // The ring goes first: no request may be left that could write into the buffer ring or
    // the area once they are unmapped. Every recv has completed by now (streams end only after
    // their recv's final CQE); dropping the ring cancels the accept and the poll.
    drop(r);
    drop(br);
    result
}

fn arm_wake(r: &mut Ring, fd: i32) -> io::Result<()> {
    let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
        .multi(true)
        .build()
        .user_data(TAG_WAKE);
    r.push(e)
}

/// Asks an armed accept to end (its final completion clears `accept_armed`).
fn cancel_accept(r: &mut Ring) -> io::Result<()> {
    if r.accept_armed && !r.accept_cancelling {
        r.accept_cancelling = true;
        r.push(
            opcode::AsyncCancel::new(TAG_ACCEPT)
                .build()
                .user_data(TAG_CANCEL),
        )?;
    }
    Ok(())
}

/// One accept at a time, armed again by the main loop: a multishot accept would take a
/// descriptor for every connection in the backlog before we could refuse any, and run the
/// process out of descriptors that the writer needs for segment files.
fn arm_accept(r: &mut Ring, fd: i32) -> io::Result<()> {
    r.accept_armed = true;
    let e = opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
        .flags(libc::SOCK_CLOEXEC)
        .build()
        .user_data(TAG_ACCEPT);
    r.push(e)
}

fn event_loop(core: &mut Core, r: &mut Ring, br: &mut BufRing) -> io::Result<()> {
    let wake_fd = core.area.wake_fd();
    let listen_fd = match &core.source {
        Source::Listen(l) => Some(l.as_raw_fd()),
        Source::Connect(_) => None,
    };
    arm_wake(r, wake_fd)?;
    let size = core.bufs.size();
    let base = core.area.base();
    let (mut aborts, mut freed) = (Vec::new(), Vec::new());
    let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(CQ_ENTRIES as usize);
    let mut cut_off = false;
    let wait = types::Timespec::from(Duration::from_millis(100));
    loop {
        // Buffers the writer is done with go back into the ring, published once.
        core.collect(&mut aborts, &mut freed);
        if !freed.is_empty() {
            for bid in freed.drain(..) {
                br.push(
                    bid as u16,
                    base.wrapping_add(core.bufs.offset(bid)),
                    size as u32,
                );
                r.in_ring += 1;
            }
            br.publish();
        }
        for id in aborts.drain(..) {
            let Some((slot, _)) = r.live().find(|(_, c)| c.conn.stream == id) else {
                continue;
            };
            let c = r.conns[slot].as_mut().expect("found");
            c.conn.aborted = true;
            if c.armed {
                // The recv completes with EOF; the stream ends there.
                let _ = c.conn.sock.shutdown(Shutdown::Both);
            } else {
                r.starved.retain(|&s| s != slot);
                let conn = r.take(slot);
                core.end(conn, None)?;
            }
        }
        if r.in_ring > 0 && !r.starved.is_empty() {
            for slot in std::mem::take(&mut r.starved) {
                if r.conns[slot].is_some() {
                    r.arm_recv(slot)?;
                }
            }
        }
        core.area.set_starving(!r.starved.is_empty());
        if !r.starved.is_empty() && core.sweep_due() {
            for slot in r.starved.clone() {
                let c = r.conns[slot].as_ref().expect("starved slot is live");
                if let Some(gone) = peer_gone(c.conn.sock.as_raw_fd()) {
                    r.starved.retain(|&s| s != slot);
                    let conn = r.take(slot);
                    let words = gone.map(|e| transport_error(&e, conn.bytes));
                    core.end(conn, words)?;
                }
            }
        }
        if let Some(fd) = listen_fd.filter(|_| !core.draining()) {
            let want = core.accepting();
            if want && !r.accept_armed {
                arm_accept(r, fd)?;
            } else if !want {
                cancel_accept(r)?;
            }
        }
        if core.should_stop() && !core.draining() {
            cancel_accept(r)?;
            for conn in core.take_backlog()? {
                r.add(conn)?;
            }
            let conns: Vec<&Conn> = r.live().map(|(_, c)| &c.conn).collect();
            core.begin_drain(conns.into_iter());
        }
        if core.drain_expired() && !cut_off {
            cut_off = true;
            let slots: Vec<usize> = r.live().map(|(s, _)| s).collect();
            for slot in slots {
                let c = r.conns[slot].as_mut().expect("live");
                if c.armed {
                    c.cancelled = true;
                    r.push(
                        opcode::AsyncCancel::new(TAG_RECV | slot as u64)
                            .build()
                            .user_data(TAG_CANCEL),
                    )?;
                } else {
                    let conn = r.take(slot);
                    core.end(conn, None)?;
                }
            }
            r.starved.clear();
        }
        if core.draining() && r.live().next().is_none() {
            return Ok(());
        }
        if let Some(sock) = core.dial() {
            if let Some(conn) = core.open(sock)? {
                r.add(conn)?;
            }
        }

        match r
            .ring
            .submitter()
            .submit_with_args(1, &types::SubmitArgs::new().timespec(&wait))
        {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        cqes.extend(
            r.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for (ud, res, flags) in cqes.drain(..) {
            match ud & TAG_MASK {
                TAG_WAKE => {
                    core.area.clear_wake();
                    if !cqueue::more(flags) {
                        arm_wake(r, wake_fd)?;
                    }
                }
                TAG_ACCEPT => on_accept(core, r, res, flags)?,
                TAG_CANCEL => {}
                _ => on_recv(core, r, br, (ud & !TAG_MASK) as usize, res, flags, cut_off)?,
            }
        }
    }
}

/// An accept completion. The main loop arms the accept again after its final one, when
/// accepting is wanted.
fn on_accept(core: &mut Core, r: &mut Ring, res: i32, flags: u32) -> io::Result<()> {
    if res >= 0 {
        // SAFETY: a successful accept CQE's result is a new descriptor that only we hold.
        let sock = unsafe { adopt_socket(res) };
        if core.draining() {
            return Ok(()); // dropping it closes the connection
        }
        if let Some(conn) = core.open(sock)? {
            r.add(conn)?;
        }
    } else if -res != libc::ECANCELED {
        core.accept_failed(&io::Error::from_raw_os_error(-res));
    }
    if !cqueue::more(flags) {
        r.accept_armed = false;
        r.accept_cancelling = false;
    }
    Ok(())
}

fn on_recv(
    core: &mut Core,
    r: &mut Ring,
    br: &mut BufRing,
    slot: usize,
    res: i32,
    flags: u32,
    cut_off: bool,
) -> io::Result<()> {
    let more = cqueue::more(flags);
    let bid = cqueue::buffer_select(flags).map(usize::from);
    let Some(c) = r.conns.get_mut(slot).and_then(|c| c.as_mut()) else {
        debug_assert!(false, "a recv completion for a closed connection");
        return Ok(());
    };
    if res > 0 {
        let bid = bid.expect("a recv with buffer selection names its buffer");
        core.deliver(&mut c.conn, bid, res as usize)?;
        if !cqueue::buffer_more(flags) {
            // The kernel is done with this buffer: it left the ring.
            r.in_ring -= 1;
            core.bufs.retire(bid); // a piece was just lent: not free yet
        }
        if !more {
            c.armed = false;
            if cut_off || c.cancelled {
                let conn = r.take(slot);
                core.end(conn, None)?;
            } else {
                r.arm_recv(slot)?;
            }
        }
        return Ok(());
    }
    if let Some(bid) = bid {
        // A buffer picked but left empty. With incremental consumption the kernel has not
        // moved past it; otherwise it left the ring and goes straight back.
        if !br.incremental() {
            r.in_ring -= 1;
            if core.bufs.retire(bid) {
                br.push(
                    bid as u16,
                    core.area.base().wrapping_add(core.bufs.offset(bid)),
                    core.bufs.size() as u32,
                );
                br.publish();
                r.in_ring += 1;
            }
        }
    }
    if more {
        return Ok(());
    }
    c.armed = false;
    match -res {
        libc::ENOBUFS if !cut_off && !c.cancelled => {
            // Backpressure: no buffer until the writer releases some.
            c.starved = true;
            core.stats.add(&core.stats.starved, 1);
            r.starved.push(slot);
        }
        0 | libc::ENOBUFS | libc::ECANCELED => {
            let conn = r.take(slot);
            core.end(conn, None)?;
        }
        errno => {
            let conn = r.take(slot);
            let e = io::Error::from_raw_os_error(errno);
            let words = transport_error(&e, conn.bytes);
            core.end(conn, Some(words))?;
        }
    }
    Ok(())
}
