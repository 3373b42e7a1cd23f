//! The `file` source: reads one capture (a file or stdin) into area buffers with read(2) and
//! lends them to the writer — the same chunks and release path as the network backends, so
//! `record --read` exercises the writer exactly as live capture does.

use super::{Event, Events, RxStats, Stop};
use crate::area::{Area, ReleaseToken, StreamId};
use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[allow(clippy::too_many_arguments)] // one backend's whole context; grouping it hides nothing
/// Reads `input` to its end in `buf_size` pieces of `area` and sends them as stream `stream`.
/// Blocks (waiting on the area's wake fd) when every buffer is lent out: the writer's pace
/// sets ours. Returns the number of bytes read.
pub fn run(
    input: impl Read,
    name: String,
    stream: StreamId,
    area: &Arc<Area>,
    buf_size: usize,
    events: &Events,
    stats: &RxStats,
    stop: &Stop,
) -> io::Result<u64> {
    run_source(
        input, name, stream, area, buf_size, events, stats, stop, false,
    )
}

#[allow(clippy::too_many_arguments)]
/// As [`run`]; a `network` input (a TLS connection) is subject to the network timeouts, its
/// reads may time out (WouldBlock/TimedOut: nothing yet, look at `stop` again), and at a
/// stop it is drained of what already arrived before it ends.
pub fn run_source(
    mut input: impl Read,
    name: String,
    stream: StreamId,
    area: &Arc<Area>,
    buf_size: usize,
    events: &Events,
    stats: &RxStats,
    stop: &Stop,
    network: bool,
) -> io::Result<u64> {
    let nbufs = (area.len() / buf_size).max(1);
    let mut free: Vec<usize> = (0..nbufs).rev().collect();
    let (mut back, mut aborts) = (Vec::new(), Vec::new());
    let send = |ev: Event| {
        events
            .send(ev)
            .map_err(|_| io::Error::other("writer stopped"))
    };
    send(Event::Open {
        stream,
        name,
        area: Arc::clone(area),
        network,
    })?;
    area.set_granule(buf_size);
    let mut total = 0u64;
    let mut error = None;
    let mut draining = false;
    loop {
        if !draining && stop.load(Ordering::Relaxed) {
            if !network {
                break;
            }
            // What the peer sent before the stop is ours (the kernel acknowledged it).
            draining = true;
        }
        area.take_returns(&mut back, &mut aborts);
        free.extend(back.drain(..).map(|t| t.id as usize));
        if !aborts.is_empty() {
            break; // the writer found the stream malformed; it has logged why
        }
        let Some(i) = free.pop() else {
            // Clear the wake-up, then look again, so a release between the two is not lost.
            area.clear_wake();
            area.take_returns(&mut back, &mut aborts);
            if back.is_empty() && aborts.is_empty() {
                stats.add(&stats.starved, 1);
                wait_readable(area.wake_fd());
            }
            continue;
        };
        // SAFETY: buffer `i` is on our free list: not lent, not aliased, and only we write it.
        let buf = unsafe { area.fill_slice(i * buf_size, buf_size) };
        let n = match input.read(buf) {
            Ok(0) => {
                free.push(i);
                break;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                free.push(i);
                continue;
            }
            Err(e)
                if network
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                free.push(i);
                if draining {
                    break;
                }
                continue;
            }
            Err(e) => {
                free.push(i);
                error = Some(format!("read failed after {total} bytes: {e}"));
                break;
            }
        };
        total += n as u64;
        stats.add(&stats.bytes, n as u64);
        stats.add(&stats.chunks, 1);
        // SAFETY: read(2) finished writing these n bytes; buffer `i` stays off the free list
        // until its token comes back through the area's return queue.
        let chunk = unsafe {
            area.lend(
                stream,
                i * buf_size,
                n,
                ReleaseToken {
                    id: i as u64,
                    len: n as u32,
                },
            )
        };
        send(Event::Data(chunk))?;
    }
    send(Event::End { stream, error })?;
    Ok(total)
}

/// Waits until `fd` is readable (or 100 ms pass, so a stop request is noticed).
pub(crate) fn wait_readable(fd: std::os::fd::RawFd) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack for the duration of the call.
    unsafe { libc::poll(&mut p, 1, 100) };
}
