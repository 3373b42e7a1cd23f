//! The zcrx backend against the emulated kernel half (src/rx/zcrx/emu.rs): real TCP senders
//! over loopback, the same backend code that drives the real io_uring, and a consumer that
//! acts like the writer — verifies every byte, holds chunks for a while and drops them out
//! of order, and re-verifies each chunk just before dropping it (a page reused before its
//! release would have changed under it). The emulator poisons returned pages, checks the
//! refill ring entry by entry, and reports leaked pages at shutdown.

use std::collections::HashMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zcap::area::{Area, Chunk, StreamId};
use zcap::rx::zcrx::emu::{EmuConfig, EmuReport, Emulator, Steering};
use zcap::rx::zcrx::sys::KernelVersion;
use zcap::rx::zcrx::{self, Options, Sources, ZcrxReport};
use zcap::rx::{Event, RxStats};

const MIB: u64 = 1 << 20;

/// Byte `pos` of the stream whose first 8 bytes are `seed` (little endian).
fn word(seed: u64, idx: u64) -> u64 {
    let mut z = seed ^ idx.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn expected(seed: u64, pos: u64) -> u8 {
    if pos < 8 {
        seed.to_le_bytes()[pos as usize]
    } else {
        word(seed, pos >> 3).to_le_bytes()[(pos & 7) as usize]
    }
}

/// Index of the first byte of `bytes` (at stream position `start`) that is wrong.
fn first_mismatch(seed: u64, start: u64, bytes: &[u8]) -> Option<usize> {
    let mut cached = (u64::MAX, [0u8; 8]);
    for (i, &b) in bytes.iter().enumerate() {
        let pos = start + i as u64;
        let want = if pos < 8 {
            seed.to_le_bytes()[pos as usize]
        } else {
            if cached.0 != pos >> 3 {
                cached = (pos >> 3, word(seed, pos >> 3).to_le_bytes());
            }
            cached.1[(pos & 7) as usize]
        };
        if b != want {
            return Some(i);
        }
    }
    None
}

#[derive(Clone, Copy)]
enum Ending {
    Close,
    /// Close with SO_LINGER 0: the receiver sees a reset.
    Reset,
}

#[derive(Clone, Copy)]
struct Sender {
    seed: u64,
    len: u64,
    ending: Ending,
}

fn send(addr: std::net::SocketAddr, s: Sender) {
    let mut sock = TcpStream::connect(addr).expect("connect");
    let mut buf = vec![0u8; 256 << 10];
    let mut pos = 0u64;
    while pos < s.len {
        let n = (s.len - pos).min(buf.len() as u64) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = expected(s.seed, pos + i as u64);
        }
        if sock.write_all(&buf[..n]).is_err() {
            return; // the receiver closed us (abort test)
        }
        pos += n as u64;
    }
    if let Ending::Reset = s.ending {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt reads the local linger struct for its stated size.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&l as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
    }
}

#[derive(Debug, Default, Clone)]
struct Got {
    seed: Option<u64>,
    bytes: u64,
    error: Option<String>,
    ended: bool,
}

struct Consumer {
    /// Chunks held at most at once (then one, chosen pseudo-randomly, is dropped).
    hold: usize,
    /// Abort this many streams (by arrival order) after this many bytes each.
    abort_after: Option<u64>,
    expect_streams: usize,
}

struct Held {
    chunk: Chunk,
    seed: u64,
    pos: u64,
}

fn verify(h: &Held, when: &str) {
    if let Some(i) = first_mismatch(h.seed, h.pos, h.chunk.bytes()) {
        panic!(
            "stream {} byte {} wrong {when} (area offset {:#x}): reused before release or misdelivered",
            h.chunk.stream(),
            h.pos + i as u64,
            h.chunk.offset() + i
        );
    }
}

fn consume(c: Consumer, rx: Receiver<Event>, stop: Arc<AtomicBool>) -> HashMap<StreamId, Got> {
    let mut got: HashMap<StreamId, Got> = HashMap::new();
    let mut head: HashMap<StreamId, Vec<u8>> = HashMap::new();
    let mut held: Vec<Held> = Vec::new();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut ended = 0;
    let mut aborted = false;
    while let Ok(ev) = rx.recv() {
        match ev {
            Event::Open { stream, name, .. } => {
                assert!(name.starts_with("127.0.0.1_"), "stream name {name}");
                got.insert(stream, Got::default());
            }
            Event::Data(chunk) => {
                let id = chunk.stream();
                let g = got.get_mut(&id).expect("data before open");
                assert!(!g.ended, "data after end");
                let pos = g.bytes;
                if g.seed.is_none() {
                    let h = head.entry(id).or_default();
                    h.extend_from_slice(&chunk.bytes()[..chunk.len().min(8 - h.len())]);
                    if h.len() == 8 {
                        g.seed = Some(u64::from_le_bytes(h[..8].try_into().unwrap()));
                    }
                }
                g.bytes += chunk.len() as u64;
                if let (Some(limit), false) = (c.abort_after, aborted) {
                    if g.bytes >= limit {
                        aborted = true;
                        chunk.area().abort(id);
                    }
                }
                let seed = match g.seed {
                    Some(s) => s,
                    None => continue, // fewer than 8 bytes so far: nothing to check yet
                };
                let h = Held { chunk, seed, pos };
                verify(&h, "on arrival");
                held.push(h);
                while held.len() > c.hold {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let h = held.swap_remove(rng as usize % held.len());
                    verify(&h, "when released");
                }
            }
            Event::Records { .. } => panic!("zcrx lends byte chunks, never record blocks"),
            Event::End { stream, error } => {
                // A writer persists the stream's last frame and releases all its chunks.
                held.retain(|h| {
                    if h.chunk.stream() == stream {
                        verify(h, "when released at end");
                        false
                    } else {
                        true
                    }
                });
                let g = got.get_mut(&stream).expect("end before open");
                g.ended = true;
                g.error = error;
                ended += 1;
                if ended == c.expect_streams {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
    }
    for h in &held {
        verify(h, "at shutdown");
    }
    got
}

struct Outcome {
    got: HashMap<StreamId, Got>,
    report: ZcrxReport,
    emu: EmuReport,
    /// How long `zcrx::run` took, start to return (for generous bounds only).
    took: Duration,
}

fn test_options() -> Options {
    Options {
        label: "emulated queue".into(),
        drain_timeout: Duration::from_secs(20),
        ..Options::default()
    }
}

fn scenario(area_size: u64, cfg: EmuConfig, senders: &[Sender], consumer: Consumer) -> Outcome {
    scenario_with(area_size, cfg, senders, consumer, test_options())
}

fn scenario_with(
    area_size: u64,
    cfg: EmuConfig,
    senders: &[Sender],
    consumer: Consumer,
    opts: Options,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let area = Area::new(area_size as usize, false).unwrap();
    let mut emu = Emulator::new(&area, cfg).unwrap();
    let (tx, rx) = sync_channel(4096);
    let tx = zcap::rx::Events::from(tx);
    let stop = Arc::new(AtomicBool::new(false));
    let cstop = Arc::clone(&stop);
    let consumer = std::thread::spawn(move || consume(consumer, rx, cstop));
    let threads: Vec<_> = senders
        .iter()
        .map(|&s| std::thread::spawn(move || send(addr, s)))
        .collect();
    let stats = RxStats::default();
    let sources = Sources {
        listener: Some(listener),
        ..Sources::default()
    };
    let start = Instant::now();
    let report = zcrx::run(&mut emu, &area, sources, &tx, &stop, &stats, &opts).unwrap();
    let took = start.elapsed();
    drop(tx);
    let got = consumer.join().expect("consumer panicked");
    for t in threads {
        t.join().unwrap();
    }
    // The queue's teardown drops the user references of what the full ring could not take.
    emu.teardown(&report.held_at_exit);
    let emu = emu.shutdown();
    assert_eq!(area.lent_bytes(), 0, "chunks still lent after shutdown");
    Outcome {
        got,
        report,
        emu,
        took,
    }
}

fn assert_clean(o: &Outcome) {
    assert!(
        o.emu.clean(),
        "emulated kernel saw protocol breaches: {} errors {:?}, {} reuse violations, leaked pages {:?}",
        o.emu.protocol_error_count,
        o.emu.protocol_errors,
        o.emu.reuse_violations,
        &o.emu.leaked_pages[..o.emu.leaked_pages.len().min(16)]
    );
    assert_eq!(o.report.unreturned_at_exit, 0, "{:?}", o.report);
    assert_eq!(o.report.bad_completions, 0, "{:?}", o.report);
    assert_eq!(o.emu.armed_at_shutdown, 0);
}

/// Clean once the teardown took the held buffers, and those were all the backend left.
fn assert_clean_but_left_to_teardown(o: &Outcome) {
    assert!(o.emu.clean(), "{:?}", o.emu);
    assert_eq!(o.report.bad_completions, 0, "{:?}", o.report);
    assert_eq!(
        o.report.held_at_exit.len() as u64,
        o.report.unreturned_at_exit
    );
}

/// Every sender's stream arrived whole: right seed, right length, no error.
fn assert_byte_exact(o: &Outcome, senders: &[Sender]) {
    assert_eq!(o.got.len(), senders.len());
    let mut by_seed: HashMap<u64, &Got> = HashMap::new();
    for g in o.got.values() {
        assert!(g.ended);
        assert_eq!(g.error, None);
        by_seed.insert(g.seed.expect("stream without its 8-byte seed"), g);
    }
    for s in senders {
        let g = by_seed.get(&s.seed).expect("a sender's stream is missing");
        assert_eq!(g.bytes, s.len, "stream {:#x} length", s.seed);
    }
    let total: u64 = senders.iter().map(|s| s.len).sum();
    assert_eq!(o.report.bytes, total);
}

fn senders(n: usize, len: u64) -> Vec<Sender> {
    (0..n)
        .map(|i| Sender {
            seed: 0x5eed_0000 + i as u64 * 7919,
            len,
            ending: Ending::Close,
        })
        .collect()
}

#[test]
fn records_multi_mib_streams_byte_exact_through_an_area_ten_times_smaller() {
    let s = senders(4, 16 * MIB);
    let o = scenario(
        6 * MIB + 256 * 1024,
        EmuConfig::default(),
        &s,
        Consumer {
            hold: 256,
            abort_after: None,
            expect_streams: 4,
        },
    );
    assert_byte_exact(&o, &s);
    assert_clean(&o);
    // 64 MiB through ~1600 pages: each page was reused many times, always after release.
    assert!(
        o.emu.pages_recycled > 10 * o.emu.pages as u64,
        "{:?}",
        o.emu
    );
    assert_eq!(o.emu.refill_consumed, o.report.refill_pushed);
}

#[test]
fn many_sockets_share_one_area() {
    let s = senders(24, 2 * MIB);
    let o = scenario(
        4 * MIB,
        EmuConfig::default(),
        &s,
        Consumer {
            hold: 128,
            abort_after: None,
            expect_streams: 24,
        },
    );
    assert_byte_exact(&o, &s);
    assert_clean(&o);
    assert_eq!(o.report.streams, 24);
}

#[test]
fn refill_ring_full_holds_buffers_without_dropping_them() {
    let s = senders(2, 8 * MIB);
    // 6.18, no FLUSH_RQ: the ring is read only as steered packets arrive, 4 entries at a time.
    let cfg = EmuConfig {
        rq_entries: 4,
        refill_batch: 4,
        ..EmuConfig::default()
    };
    let o = scenario(
        MIB + 512 * 1024,
        cfg,
        &s,
        Consumer {
            hold: 64,
            abort_after: None,
            expect_streams: 2,
        },
    );
    assert_byte_exact(&o, &s);
    // At exit the idle NIC reads nothing: what the full ring could not take is left to the
    // teardown — and it is exactly what the emulator still saw referenced (clean after it).
    assert_clean_but_left_to_teardown(&o);
    assert!(
        o.report.refill_full > 0,
        "the 4-entry ring never filled: {:?}",
        o.report
    );
    assert!(o.report.held_max > 4, "{:?}", o.report);
}

#[test]
fn enospc_final_completion_rearms_recv_zc() {
    let s = senders(2, 8 * MIB);
    let cfg = EmuConfig {
        cq_entries: 8,
        ..EmuConfig::default()
    };
    let o = scenario(
        2 * MIB,
        cfg,
        &s,
        Consumer {
            hold: 32,
            abort_after: None,
            expect_streams: 2,
        },
    );
    assert_byte_exact(&o, &s);
    assert_clean(&o);
    assert!(o.emu.enospc > 0, "{:?}", o.emu);
    assert_eq!(o.report.rearm_enospc, o.emu.enospc);
}

/// Copy fallback (nothing steered) on a kernel with FLUSH_RQ: streams sixteen times the
/// area complete, each -ENOMEM answered by a flush of the buffers returned since.
#[test]
fn unsteered_streams_larger_than_the_area_complete_through_flush_rq() {
    let s = senders(2, 8 * MIB);
    let cfg = EmuConfig {
        steering: Steering::Unsteered,
        kernel: KernelVersion::new(6, 19),
        split_pages: false,
        nic_reserve: 64,
        ..EmuConfig::default()
    };
    let o = scenario(
        MIB,
        cfg,
        &s,
        Consumer {
            hold: 64,
            abort_after: None,
            expect_streams: 2,
        },
    );
    assert_byte_exact(&o, &s);
    assert_clean(&o);
    assert!(o.emu.enomem > 0, "{:?}", o.emu);
    assert_eq!(o.report.rearm_enomem, o.emu.enomem);
    assert!(o.report.flushes > 0, "{:?}", o.report);
    assert_eq!(o.emu.zero_copy_niovs, 0, "nothing was steered");
    // One whole niov per copied chunk, never more bytes than a niov.
    assert_eq!(o.emu.copied_niovs, o.report.chunks);
    // The idle zcrx queue never read the refill ring: only the flushes did.
    assert_eq!(o.emu.refill_reads, 0, "{:?}", o.emu);
}

/// Copy fallback on a kernel without FLUSH_RQ (6.18): buffers zcap returns are never read
/// while the zcrx queue is idle, so the stream must end with the "not steered" error —
/// after a bounded wait, without re-arming into -ENOMEM again and again.
#[test]
fn an_unsteered_stream_larger_than_the_area_ends_not_steered_without_flush_rq() {
    let s = senders(1, 16 * MIB);
    let cfg = EmuConfig {
        steering: Steering::Unsteered,
        kernel: KernelVersion::new(6, 18),
        split_pages: false,
        nic_reserve: 64,
        ..EmuConfig::default()
    };
    let opts = Options {
        starve_timeout: Duration::from_secs(1),
        steer_fix: "use --steer or `ethtool -N eth9 flow-type tcp4 dst-port 1 action 3`".into(),
        ..test_options()
    };
    let o = scenario_with(
        MIB,
        cfg,
        &s,
        Consumer {
            hold: 16,
            abort_after: None,
            expect_streams: 1,
        },
        opts,
    );
    let g = o.got.values().next().expect("the stream opened");
    let err = g.error.as_deref().expect("the stream ends with an error");
    assert!(err.contains("not steered to emulated queue"), "{err}");
    assert!(err.contains("ethtool -N eth9"), "{err}");
    assert!(err.contains("FLUSH_RQ"), "{err}");
    assert!(
        g.bytes < MIB,
        "at most the free part of the area arrived: {}",
        g.bytes
    );
    assert_eq!(o.report.starved_ends, 1);
    // Never a spin: one -ENOMEM, one wait, one end (the old backend re-armed every 2 ms).
    assert_eq!(o.emu.enomem, 1, "{:?}", o.emu);
    assert_eq!(o.emu.refill_reads, 0);
    assert_eq!(
        o.emu.flushes_refused, 0,
        "FLUSH_RQ is not tried where the kernel lacks it"
    );
    // Generous: the stream waits starve_timeout (1 s) once; the old code never ended.
    assert!(o.took < Duration::from_secs(60), "{:?}", o.took);
    assert_eq!((o.emu.protocol_error_count, o.emu.reuse_violations), (0, 0));
}

/// A final completion that carries data (only a length-limited RECV_ZC ends so, and zcap
/// sets no limit) is delivered and then ends the stream in words — it is not re-armed.
#[test]
fn a_final_completion_with_data_ends_the_stream_instead_of_rearming() {
    let s = senders(1, MIB);
    let cfg = EmuConfig {
        final_with_data: true,
        split_pages: false,
        ..EmuConfig::default()
    };
    let o = scenario(
        2 * MIB,
        cfg,
        &s,
        Consumer {
            hold: 4,
            abort_after: None,
            expect_streams: 1,
        },
    );
    let g = o.got.values().next().unwrap();
    let err = g.error.as_deref().expect("the stream ends with an error");
    assert!(err.contains("no F_MORE"), "{err}");
    assert!(
        g.bytes > 0 && g.bytes <= 4096,
        "the final completion's data (one niov) was delivered: {}",
        g.bytes
    );
    assert_eq!(o.report.bad_completions, 1);
    assert!(o.emu.clean(), "{:?}", o.emu);
    assert_eq!(o.emu.armed_at_shutdown, 0, "not re-armed");
}

/// One steered and one unsteered stream on 6.18: the steered one keeps the zcrx queue busy,
/// so its page-pool allocations read the refill ring and the copied niovs the backend
/// returned reach the freelist again (the backend re-arms when the kernel's head moves).
/// The steered stream is byte-exact; the copied one is byte-exact too or ends not steered.
#[test]
fn a_steered_stream_keeps_the_queue_reading_the_ring_for_a_copied_one() {
    let s = senders(2, 8 * MIB);
    let cfg = EmuConfig {
        steering: Steering::Alternate,
        split_pages: false,
        nic_reserve: 64,
        ..EmuConfig::default()
    };
    let opts = Options {
        starve_timeout: Duration::from_secs(2),
        ..test_options()
    };
    let o = scenario_with(
        2 * MIB,
        cfg,
        &s,
        Consumer {
            hold: 32,
            abort_after: None,
            expect_streams: 2,
        },
        opts,
    );
    assert!(
        o.emu.zero_copy_niovs > 0 && o.emu.copied_niovs > 0,
        "{:?}",
        o.emu
    );
    let mut whole = 0;
    for g in o.got.values() {
        match &g.error {
            None => {
                assert_eq!(g.bytes, 8 * MIB);
                whole += 1;
            }
            Some(e) => assert!(e.contains("not steered"), "{e}"),
        }
    }
    assert!(whole >= 1, "the steered stream is whole");
    assert!(o.emu.refill_reads > 0 && o.emu.refill_read_max <= 64);
    assert_clean_but_left_to_teardown(&o);
}

/// Half the area posted in the NIC's rx ring (and the pool's batch in its cache), out of
/// user space's reach: steered streams still record byte-exact through what is left.
#[test]
fn a_nic_reserve_of_half_the_area_still_records_byte_exact() {
    let s = senders(3, 8 * MIB);
    let area = 2 * MIB;
    let cfg = EmuConfig {
        nic_reserve: (area / 4096 / 2) as usize,
        ..EmuConfig::default()
    };
    let o = scenario(
        area,
        cfg,
        &s,
        Consumer {
            hold: 64,
            abort_after: None,
            expect_streams: 3,
        },
    );
    assert_byte_exact(&o, &s);
    assert_clean(&o);
    assert!(
        o.emu.refill_reads > 0 && o.emu.refill_read_max <= 64,
        "{:?}",
        o.emu
    );
}

/// niovs of 16 KiB (`rx_buf_len`, 6.19+): completions up to a niov long, byte-exact.
#[test]
fn sixteen_kib_niovs_record_byte_exact() {
    let s = senders(2, 8 * MIB);
    let cfg = EmuConfig {
        rx_buf_len: 16384,
        kernel: KernelVersion::new(6, 19),
        nic_reserve: 32,
        ..EmuConfig::default()
    };
    let o = scenario(
        2 * MIB,
        cfg,
        &s,
        Consumer {
            hold: 32,
            abort_after: None,
            expect_streams: 2,
        },
    );
    assert_byte_exact(&o, &s);
    assert_clean(&o);
    assert_eq!(o.emu.niov_size, 16384);
}

/// At exit, buffers the writer released but the full refill ring could not take, with the
/// NIC idle and no FLUSH_RQ: the drain does not wait for a kernel that will never read the
/// ring — it ends once the writer is done and says what it left to the teardown.
#[test]
fn the_exit_drain_is_bounded_when_the_idle_nic_never_reads_the_ring() {
    let s = senders(1, 4 * MIB);
    let cfg = EmuConfig {
        rq_entries: 4,
        refill_batch: 4,
        ..EmuConfig::default()
    };
    let opts = Options {
        drain_timeout: Duration::from_secs(120),
        ..test_options()
    };
    let o = scenario_with(
        2 * MIB,
        cfg,
        &s,
        Consumer {
            hold: 200,
            abort_after: None,
            expect_streams: 1,
        },
        opts,
    );
    assert_byte_exact(&o, &s);
    assert!(
        o.took < Duration::from_secs(60),
        "drain waited: {:?}",
        o.took
    );
    assert!(o.report.unreturned_at_exit > 0, "{:?}", o.report);
    assert_clean_but_left_to_teardown(&o);
}

/// The same at exit with FLUSH_RQ: the drain flushes the full ring and returns everything.
#[test]
fn the_exit_drain_flushes_the_ring_where_the_kernel_can() {
    let s = senders(1, 4 * MIB);
    let cfg = EmuConfig {
        rq_entries: 4,
        refill_batch: 4,
        kernel: KernelVersion::new(6, 19),
        ..EmuConfig::default()
    };
    let o = scenario(
        2 * MIB,
        cfg,
        &s,
        Consumer {
            hold: 200,
            abort_after: None,
            expect_streams: 1,
        },
    );
    assert_byte_exact(&o, &s);
    assert_clean(&o);
    assert!(o.report.flushes > 0, "{:?}", o.report);
}

#[test]
fn eof_ends_an_empty_stream_and_a_reset_is_an_error_in_words() {
    let s = [
        Sender {
            seed: 1,
            len: 0,
            ending: Ending::Close,
        },
        Sender {
            seed: 2,
            len: 4 * MIB,
            ending: Ending::Reset,
        },
        Sender {
            seed: 3,
            len: MIB,
            ending: Ending::Close,
        },
    ];
    let o = scenario(
        MIB,
        EmuConfig::default(),
        &s,
        Consumer {
            hold: 16,
            abort_after: None,
            expect_streams: 3,
        },
    );
    assert_clean(&o);
    assert_eq!(o.emu.eof, 2, "{:?}", o.emu);
    let mut empty = 0;
    let mut reset = 0;
    for g in o.got.values() {
        match (g.bytes, &g.error) {
            (0, None) => empty += 1,
            (n, None) => assert_eq!(n, MIB),
            (_, Some(e)) => {
                assert!(e.contains("ECONNRESET"), "{e}");
                assert_eq!(g.seed, Some(2));
                reset += 1;
            }
        }
    }
    assert_eq!((empty, reset), (1, 1));
}

#[test]
fn writer_abort_cancels_the_stream_and_returns_its_buffers() {
    let s = senders(3, 8 * MIB);
    let o = scenario(
        2 * MIB,
        EmuConfig::default(),
        &s,
        Consumer {
            hold: 32,
            abort_after: Some(MIB),
            expect_streams: 3,
        },
    );
    assert_clean(&o);
    assert_eq!(o.emu.cancelled, 1, "{:?}", o.emu);
    let short: Vec<_> = o.got.values().filter(|g| g.bytes < 8 * MIB).collect();
    assert_eq!(short.len(), 1, "exactly the aborted stream ends early");
    assert!(o.got.values().all(|g| g.ended && g.error.is_none()));
}
