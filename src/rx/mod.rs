//! Receive backends: where stream bytes enter the area. Every backend turns its source
//! (accepted or connected TCP sockets, an input file) into [`Event`]s on one channel to the
//! writer, lends the bytes as area chunks, and takes the buffers back when the writer drops
//! the chunks (`Area::take_returns`). Backends never parse, compress or persist.
//!
//! - `zcrx`: io_uring zero-copy receive into the area (NIC queue with a memory provider);
//! - `ring`: io_uring multishot recv into a provided-buffer ring carved from the area;
//! - `recv`: plain recv(2) + epoll into area buffers, for hosts without io_uring;
//! - `file`: read(2) of a capture file or stdin into area buffers (`record --read`);
//! - `afpacket`: live capture from interfaces on TPACKET_V3 block rings (`record -i`): the
//!   ring is the area, each block is lent whole as [`Event::Records`].

pub mod afpacket;
pub mod bufring;
pub mod bufs;
pub mod conn;
pub mod engine;
pub mod file;
pub mod limits;
pub mod recv;
pub mod ring;
pub mod sys;
pub mod tls;
pub mod zcrx;

use crate::area::{Area, Chunk, StreamId};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SendError, SyncSender};
use std::sync::Arc;

/// What a backend tells the writer.
#[derive(Debug)]
pub enum Event {
    /// A stream begins. `name` is unique in the archive (peer or file, plus start time);
    /// `area` is where its chunks come from (and where the writer asks to close it);
    /// `network` streams are subject to the idle and header timeouts, files are not.
    Open {
        stream: StreamId,
        name: String,
        area: Arc<Area>,
        network: bool,
    },
    /// Stream bytes, in order for that stream.
    Data(Chunk),
    /// Whole records lent from one piece of the area (an AF_PACKET block): each span is one
    /// complete unit of the stream (a pcap record header written in place before its packet
    /// bytes), in stream order, inside `block`. The block goes back when the writer has
    /// persisted its last span. One event per block, so nothing is sent or allocated per
    /// packet.
    Records { block: Chunk, spans: Vec<Span> },
    /// The stream ended: `None` for an orderly end, or the transport error in words.
    End {
        stream: StreamId,
        error: Option<String>,
    },
}

impl Event {
    pub fn stream(&self) -> StreamId {
        match self {
            Event::Open { stream, .. } | Event::End { stream, .. } => *stream,
            Event::Data(chunk) | Event::Records { block: chunk, .. } => chunk.stream(),
        }
    }
}

/// `len` bytes at `off` inside a [`Event::Records`] block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub off: u32,
    pub len: u32,
}

/// The way from the backends to the writer threads. Every event of a stream goes to the same
/// writer (chosen by stream id), so each stream stays in order while streams spread over
/// writers.
#[derive(Clone, Debug)]
pub struct Events {
    writers: Arc<[SyncSender<Event>]>,
}

impl Events {
    pub fn new(writers: Vec<SyncSender<Event>>) -> Events {
        assert!(!writers.is_empty(), "at least one writer");
        Events {
            writers: writers.into(),
        }
    }

    /// Sends `ev` to its stream's writer; fails when that writer has stopped.
    pub fn send(&self, ev: Event) -> Result<(), SendError<Event>> {
        let n = self.writers.len() as u64;
        self.writers[(ev.stream() % n) as usize].send(ev)
    }
}

impl From<SyncSender<Event>> for Events {
    fn from(tx: SyncSender<Event>) -> Events {
        Events::new(vec![tx])
    }
}

/// Counters the backends update and the stats line reads.
#[derive(Debug, Default)]
pub struct RxStats {
    pub bytes: AtomicU64,
    pub chunks: AtomicU64,
    pub streams_opened: AtomicU64,
    pub streams_open: AtomicU64,
    /// Times the backend had no free buffer to post (backpressure engaged).
    pub starved: AtomicU64,
    /// Connections refused by the connection limits (closed at once).
    pub refused: AtomicU64,
    /// Connections from peers outside `--allow` (closed at once, nothing read).
    pub not_allowed: AtomicU64,
    /// accept(2) failures (out of descriptors pauses accepting).
    pub accept_errors: AtomicU64,
    /// Times accepting was held back because the area was nearly full (senders waited in
    /// the listen backlog).
    pub admission_held: AtomicU64,
    /// Live capture (afpacket): packets the kernel's rings saw, of those dropped (no free
    /// block), and times a ring froze full — summed over the rings (PACKET_STATISTICS).
    pub capture_packets: AtomicU64,
    pub capture_drops: AtomicU64,
    pub capture_freezes: AtomicU64,
}

impl RxStats {
    pub fn add(&self, field: &AtomicU64, n: u64) {
        field.fetch_add(n, Ordering::Relaxed);
    }
}

/// Set by SIGINT/SIGTERM (or a test); backends stop accepting, end their streams and return.
pub type Stop = AtomicBool;
