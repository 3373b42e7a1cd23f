//! The compress pool: worker threads shared by every writer thread of a recorder. A writer
//! hands each zstd frame it cuts — the area slices of the frame, kept alive by the chunks
//! the job holds — to the pool, goes on framing, and persists the results in frame order per
//! stream. Frames are independent zstd frames, so any worker compresses any frame, straight
//! from the area slices; output buffers are reused, not allocated per frame.
//!
//! Owns: the worker threads, their zstd contexts and the spare output buffers. Must not:
//! write files, hash, or drop the last reference to a chunk — the writer's persist step
//! does that, after the frame is in the segment file (release after persist).

use super::segment::{Compress, Encoder};
use crate::area::Chunk;
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Where a piece of a frame's bytes lives: a chunk of the area, or the bytes of an
/// incomplete unit the writer copied out of the area (see the writer's module docs).
pub enum Source {
    Chunk(Arc<Chunk>),
    Copied(Arc<Vec<u8>>),
}

/// One piece of a frame: `len` bytes at `off` within its source.
pub struct Part {
    pub src: Source,
    pub off: usize,
    pub len: usize,
}

impl Part {
    pub fn bytes(&self) -> &[u8] {
        let all: &[u8] = match &self.src {
            Source::Chunk(c) => c.bytes(),
            Source::Copied(v) => v,
        };
        &all[self.off..self.off + self.len]
    }
}

/// A frame's pieces, in stream order; holding it keeps their buffers from reuse.
#[derive(Default)]
pub struct Parts(pub Vec<Part>);

impl Parts {
    pub fn slices(&self) -> Vec<&[u8]> {
        self.0.iter().map(Part::bytes).collect()
    }

    pub fn raw_len(&self) -> u64 {
        self.0.iter().map(|p| p.len as u64).sum()
    }
}

/// The result of one job: the encoded frame, or why the encoder failed.
type Done = io::Result<Vec<u8>>;

/// Where a worker leaves a job's result and the writer finds it.
#[derive(Default)]
pub struct Slot {
    done: Mutex<Option<Done>>,
    ready: Condvar,
}

impl Slot {
    /// The result, if the worker is done; taken once.
    pub fn try_take(&self) -> Option<Done> {
        self.done.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Waits for the result.
    pub fn take(&self) -> Done {
        let mut g = self.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(d) = g.take() {
                return d;
            }
            g = self.ready.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn is_ready(&self) -> bool {
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn fill(&self, d: Done) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
        self.ready.notify_all();
    }
}

struct Job {
    parts: Arc<Parts>,
    slot: Arc<Slot>,
    out: Vec<u8>,
}

struct Queue {
    jobs: VecDeque<Job>,
    spare: Vec<Vec<u8>>,
    closed: bool,
    /// Workers take no job while set (tests hold the pipeline with it).
    paused: bool,
}

struct Shared {
    q: Mutex<Queue>,
    more: Condvar,
}

/// The pool. Cloning shares it; the workers stop when the last clone is dropped.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        self.shared
            .q
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed = true;
        self.shared.more.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Spare output buffers kept for reuse (beyond these, returned buffers are freed).
const SPARE_MAX: usize = 64;

impl Pool {
    /// Starts `threads` workers compressing frames of about `frame_size` with `mode` (zstd
    /// only; `none` needs no pool).
    pub fn start(threads: usize, mode: Compress, frame_size: u64) -> io::Result<Pool> {
        assert!(threads > 0 && matches!(mode, Compress::Zstd(_)));
        let shared = Arc::new(Shared {
            q: Mutex::new(Queue {
                jobs: VecDeque::new(),
                spare: Vec::new(),
                closed: false,
                paused: false,
            }),
            more: Condvar::new(),
        });
        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let enc = Encoder::for_frames(mode, frame_size)?;
            let s = Arc::clone(&shared);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("zcap-compress-{i}"))
                    .spawn(move || work(&s, enc))?,
            );
        }
        Ok(Pool {
            inner: Arc::new(PoolInner {
                shared,
                workers,
                threads,
            }),
        })
    }

    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// Queues a frame for compression; its result appears in the returned slot.
    pub fn submit(&self, parts: Arc<Parts>) -> Arc<Slot> {
        let slot = Arc::new(Slot::default());
        let sh = &self.inner.shared;
        let mut q = sh.q.lock().unwrap_or_else(|p| p.into_inner());
        let out = q.spare.pop().unwrap_or_default();
        q.jobs.push_back(Job {
            parts,
            slot: Arc::clone(&slot),
            out,
        });
        drop(q);
        sh.more.notify_one();
        slot
    }

    /// Holds (`true`) or lets go (`false`) of every job not yet started: for tests that
    /// check what a frame in flight keeps from reuse.
    pub fn pause(&self, paused: bool) {
        let sh = &self.inner.shared;
        sh.q.lock().unwrap_or_else(|p| p.into_inner()).paused = paused;
        sh.more.notify_all();
    }

    /// Gives an output buffer back for reuse once its bytes are written.
    pub fn recycle(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut q = self
            .inner
            .shared
            .q
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if q.spare.len() < SPARE_MAX {
            q.spare.push(buf);
        }
    }
}

fn work(sh: &Shared, mut enc: Encoder) {
    loop {
        let job = {
            let mut q = sh.q.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if !q.paused {
                    if let Some(j) = q.jobs.pop_front() {
                        break j;
                    }
                }
                if q.closed {
                    return;
                }
                q = sh.more.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let Job {
            parts,
            slot,
            mut out,
        } = job;
        let r = enc.compress(&parts.slices(), &mut out).map(|()| out);
        // Our reference to the parts goes before the result is published, so the writer's
        // persist step holds the last one and the buffers go back only after the write.
        drop(parts);
        slot.fill(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_compresses_to_what_one_encoder_makes() {
        let pool = Pool::start(3, Compress::Zstd(1), 1 << 20).unwrap();
        let inputs: Vec<Vec<u8>> = (0..40u32)
            .map(|i| (0..(i * 997 % 70_000)).map(|j| (j * i) as u8).collect())
            .collect();
        let slots: Vec<_> = inputs
            .iter()
            .map(|v| {
                let parts = Parts(vec![Part {
                    src: Source::Copied(Arc::new(v.clone())),
                    off: 0,
                    len: v.len(),
                }]);
                pool.submit(Arc::new(parts))
            })
            .collect();
        let mut one = Encoder::new(Compress::Zstd(1)).unwrap();
        for (v, s) in inputs.iter().zip(slots) {
            let got = s.take().unwrap();
            let mut want = Vec::new();
            one.compress(&[v], &mut want).unwrap();
            assert_eq!(got, want, "a frame is the same whichever worker made it");
            assert_eq!(zstd::stream::decode_all(&got[..]).unwrap(), *v);
            pool.recycle(got);
        }
    }
}
