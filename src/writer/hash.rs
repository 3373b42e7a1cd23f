//! The hash lane: the SHA-256 of every segment a writer thread writes, computed on a thread
//! of its own. The writer hands each piece of a segment over right after writing it — the
//! compressed frame's buffer, or a `none` frame's area slices (kept alive by its chunks) —
//! and goes on; the lane hashes the pieces of each segment in the order they were written
//! and, at finalize, answers with the digest while the writer fsyncs. So SHA-256 runs neither
//! on the thread that frames and writes nor on the ones that compress.
//!
//! Owns: the thread and one SHA-256 state per open segment. Must not: write, or drop a
//! frame's chunks before hashing them (dropping them afterwards is what gives their buffers
//! back; they are in the segment file already).
//!
//! The digest is the same one the writer's own thread would compute: the lane hashes exactly
//! the bytes written, in write order (a `none` frame is laid out by [`RawFrame`], as for the
//! write itself).

use super::pool::{Parts, Pool};
use super::segment::RawFrame;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Pieces the lane may be behind the writer before a hand-over waits: a few frames, so that
/// what it keeps from reuse (their area slices or output buffers) stays small.
const LANE_DEPTH: usize = 4;

enum Msg {
    Begin(u64),
    /// Bytes written to the segment, owned by the message (headers, trailers).
    Bytes(u64, Vec<u8>),
    /// A compressed frame's buffer, recycled into the pool once hashed.
    Encoded(u64, Vec<u8>),
    /// A `none` frame written from these parts.
    Raw(u64, Arc<Parts>),
    Finish(u64, SyncSender<[u8; 32]>),
    /// The segment was given up: forget its state.
    Forget(u64),
    /// The lane is being dropped: end once what came before is hashed (feeds of segments
    /// still open then get an error on their next hand-over).
    Stop,
}

/// One writer's hash lane. Dropping it ends the thread once every piece is hashed.
pub struct Lane {
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<()>>,
    next: AtomicU64,
}

fn stopped() -> io::Error {
    io::Error::other("the hash thread stopped")
}

impl Lane {
    /// Starts the lane; compressed frames' buffers go back to `pool` once hashed.
    pub fn start(name: String, pool: Option<Pool>) -> io::Result<Lane> {
        let (tx, rx) = mpsc::sync_channel(LANE_DEPTH);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(rx, pool))?;
        Ok(Lane {
            tx: Some(tx),
            thread: Some(thread),
            next: AtomicU64::new(0),
        })
    }

    /// A new segment's hash on this lane.
    pub fn begin(&self) -> io::Result<Feed> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let tx = self.tx.clone().expect("lane is running");
        tx.send(Msg::Begin(id)).map_err(|_| stopped())?;
        Ok(Feed {
            tx,
            id,
            finished: false,
        })
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The hash of one segment on a lane: every piece written to the segment goes in, in order.
pub struct Feed {
    tx: SyncSender<Msg>,
    id: u64,
    finished: bool,
}

impl Feed {
    fn send(&self, m: Msg) -> io::Result<()> {
        self.tx.send(m).map_err(|_| stopped())
    }

    pub fn bytes(&self, b: Vec<u8>) -> io::Result<()> {
        self.send(Msg::Bytes(self.id, b))
    }

    pub fn encoded(&self, b: Vec<u8>) -> io::Result<()> {
        self.send(Msg::Encoded(self.id, b))
    }

    pub fn raw(&self, parts: Arc<Parts>) -> io::Result<()> {
        self.send(Msg::Raw(self.id, parts))
    }

    /// Ends the segment's hash; the digest arrives on the receiver once every piece handed
    /// over before is hashed.
    pub fn finish(&mut self) -> io::Result<Receiver<[u8; 32]>> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Msg::Finish(self.id, tx))?;
        self.finished = true;
        Ok(rx)
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.tx.send(Msg::Forget(self.id));
        }
    }
}

fn run(rx: Receiver<Msg>, pool: Option<Pool>) {
    let mut open: HashMap<u64, Sha256> = HashMap::new();
    let mut raw = RawFrame::default();
    for m in rx {
        match m {
            Msg::Begin(id) => {
                open.insert(id, Sha256::new());
            }
            Msg::Bytes(id, b) => {
                if let Some(h) = open.get_mut(&id) {
                    h.update(&b);
                }
            }
            Msg::Encoded(id, b) => {
                if let Some(h) = open.get_mut(&id) {
                    h.update(&b);
                }
                if let Some(p) = &pool {
                    p.recycle(b);
                }
            }
            Msg::Raw(id, parts) => {
                if let Some(h) = open.get_mut(&id) {
                    let slices = parts.slices();
                    raw.layout(parts.raw_len() as usize);
                    for s in raw.iov(&slices) {
                        h.update(s);
                    }
                }
                // The last hold on the frame's chunks may be this one: their buffers go
                // back now, after the write and the hash.
                drop(parts);
            }
            Msg::Finish(id, reply) => {
                if let Some(h) = open.remove(&id) {
                    let _ = reply.send(h.finalize().into());
                }
            }
            Msg::Forget(id) => {
                open.remove(&id);
            }
            Msg::Stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::pool::{Part, Source};

    fn parts(v: &[&[u8]]) -> Arc<Parts> {
        Arc::new(Parts(
            v.iter()
                .map(|b| Part {
                    src: Source::Copied(Arc::new(b.to_vec())),
                    off: 0,
                    len: b.len(),
                })
                .collect(),
        ))
    }

    #[test]
    fn interleaved_segments_hash_what_was_written_in_order() {
        let lane = Lane::start("zcap-hash-test".into(), None).unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let (mut a, mut b) = (lane.begin().unwrap(), lane.begin().unwrap());
        let gone = lane.begin().unwrap();
        let (mut want_a, mut want_b) = (Sha256::new(), Sha256::new());
        a.bytes(b"head-a".to_vec()).unwrap();
        want_a.update(b"head-a");
        b.encoded(b"frame-b".to_vec()).unwrap();
        want_b.update(b"frame-b");
        gone.bytes(b"given up".to_vec()).unwrap();
        drop(gone);
        // A `none` frame of two parts spanning three raw blocks: laid out as it was written.
        let p = parts(&[&big[..1000], &big[1000..]]);
        a.raw(Arc::clone(&p)).unwrap();
        let mut layout = RawFrame::default();
        layout.layout(big.len());
        let written: Vec<u8> = layout.iov(&[&big[..1000], &big[1000..]]).concat();
        assert_eq!(written.len(), 13 + 3 * 3 + big.len());
        want_a.update(&written);
        b.bytes(b"trailer-b".to_vec()).unwrap();
        want_b.update(b"trailer-b");
        let (ra, rb) = (a.finish().unwrap(), b.finish().unwrap());
        assert_eq!(rb.recv().unwrap(), <[u8; 32]>::from(want_b.finalize()));
        assert_eq!(ra.recv().unwrap(), <[u8; 32]>::from(want_a.finalize()));
        drop(lane);
        assert_eq!(
            Arc::strong_count(&p),
            1,
            "the lane let go of the frame's parts"
        );
    }
}
