//! Writer tests: feed chunks straight into the writer (no threads) and read the segments
//! back with zstd and the framer.

use super::*;
use crate::archive::index::read_trailer;
use crate::area::{Area, ReleaseToken};
use crate::stream::{frame_all, testdata};

struct Run {
    dir: tempfile::TempDir,
    reports: Vec<StreamReport>,
    area: Arc<Area>,
    stats: Arc<WriterStats>,
}

/// Records `streams` (each a byte string cut into pieces of the given sizes, cycling).
fn record(streams: &[(&[u8], &[usize])], cfg: impl Fn(&mut Config)) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::new(dir.path());
    cfg(&mut c);
    let stats = Arc::new(WriterStats::default());
    let mut w = Writer::open(c, Arc::clone(&stats)).unwrap();
    let total: usize = streams.iter().map(|s| s.0.len()).sum();
    let area = Area::new(total + 4096, false).unwrap();
    let mut off = 0;
    let mut pos = vec![0usize; streams.len()];
    for (i, _) in streams.iter().enumerate() {
        w.handle(Event::Open {
            stream: i as u64,
            name: format!("s{i}"),
            area: Arc::clone(&area),
            network: false,
        })
        .unwrap();
    }
    // Interleave the streams piece by piece, as concurrent connections would arrive.
    let mut k = 0;
    while pos.iter().zip(streams).any(|(p, s)| *p < s.0.len()) {
        for (i, (bytes, cuts)) in streams.iter().enumerate() {
            if pos[i] >= bytes.len() {
                continue;
            }
            let n = cuts[k % cuts.len()].min(bytes.len() - pos[i]);
            // SAFETY: each range of the test's area is written once and lent once.
            let chunk = unsafe {
                area.fill_slice(off, n)
                    .copy_from_slice(&bytes[pos[i]..pos[i] + n]);
                area.lend(
                    i as u64,
                    off,
                    n,
                    ReleaseToken {
                        id: off as u64,
                        len: n as u32,
                    },
                )
            };
            w.handle(Event::Data(chunk)).unwrap();
            pos[i] += n;
            off += n;
        }
        k += 1;
    }
    for i in 0..streams.len() {
        w.handle(Event::End {
            stream: i as u64,
            error: None,
        })
        .unwrap();
    }
    let reports = w.close().unwrap();
    Run {
        dir,
        reports,
        area,
        stats,
    }
}

/// The segments of stream `name`, in order, decompressed.
fn segments(run: &Run, name: &str) -> Vec<(Vec<u8>, crate::archive::index::Trailer)> {
    let mut paths: Vec<_> = std::fs::read_dir(run.dir.path().join(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            !p.to_string_lossy()
                .ends_with(crate::archive::SIDECAR_SUFFIX)
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            assert!(
                !p.to_string_lossy().ends_with(".partial"),
                "left a partial: {p:?}"
            );
            let f = File::open(p).unwrap();
            (
                zstd::stream::decode_all(&f).unwrap(),
                read_trailer(&f).unwrap(),
            )
        })
        .collect()
}

/// Concatenation as `cat` does it: the first segment whole, later ones without the header
/// when they repeat it.
fn concat(segs: &[(Vec<u8>, crate::archive::index::Trailer)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (bytes, t)) in segs.iter().enumerate() {
        let skip = if i > 0 && t.flags & crate::archive::index::FLAG_CONT != 0 {
            t.header_raw_len as usize
        } else {
            0
        };
        out.extend_from_slice(&bytes[skip..]);
    }
    out
}

fn pcap_stream(n: u32) -> Vec<u8> {
    let recs: Vec<(u32, u32, Vec<u8>)> = (0..n)
        .map(|i| (1000 + i, i, vec![(i % 256) as u8; (i as usize * 37) % 1500]))
        .collect();
    let refs: Vec<(u32, u32, &[u8])> = recs.iter().map(|(a, b, c)| (*a, *b, &c[..])).collect();
    testdata::pcap(false, false, 65535, &refs)
}

#[test]
fn any_chunking_round_trips_and_releases_everything() {
    let s = pcap_stream(3000);
    for cuts in [&[1usize, 7, 15, 16, 17][..], &[65536], &[4093, 100_000]] {
        let run = record(&[(&s, cuts)], |c| c.frame_size = 64 << 10);
        assert_eq!(run.reports[0].error, None);
        assert_eq!(run.reports[0].packets, 3000);
        let segs = segments(&run, "s0");
        assert_eq!(concat(&segs), s, "cuts {cuts:?}");
        let t = &segs[0].1;
        assert!(
            t.frames.len() > 20,
            "frames cut near 64 KiB: {}",
            t.frames.len()
        );
        assert_eq!(t.packets(), 3000);
        assert_eq!(
            t.time_range(),
            Some((1000 * 1_000_000_000, 3999 * 1_000_000_000 + 2_999_000))
        );
        assert_eq!(run.area.lent_bytes(), 0, "every chunk released");
    }
}

#[test]
fn rotation_makes_standalone_segments() {
    let s = pcap_stream(4000);
    let run = record(&[(&s, &[9000])], |c| {
        c.frame_size = 16 << 10;
        c.segment_size = 200 << 10;
        c.compress = Compress::None;
    });
    let segs = segments(&run, "s0");
    assert!(segs.len() >= 10, "{} segments", segs.len());
    assert_eq!(concat(&segs), s);
    let mut packets = 0;
    for (bytes, t) in &segs {
        let (f, _) = frame_all(bytes).expect("each segment is a whole pcap file");
        assert_eq!(f.packets(), t.packets());
        packets += f.packets();
    }
    assert_eq!(packets, 4000);
    assert_eq!(run.reports[0].segments, segs.len() as u64);
}

#[test]
fn pcapng_late_interface_is_declared_in_later_segments() {
    let be = true;
    let mut s = testdata::shb(be);
    s.extend(testdata::idb(be, 1));
    for i in 0..200u64 {
        s.extend(testdata::epb(be, 0, i, &[7u8; 300]));
    }
    s.extend(testdata::idb(be, 101));
    for i in 0..400u64 {
        s.extend(testdata::epb(be, (i % 2) as u32, 1000 + i, &[9u8; 300]));
    }
    let run = record(&[(&s, &[5000])], |c| {
        c.frame_size = 8 << 10;
        c.segment_size = 20 << 10;
        c.compress = Compress::None;
    });
    let segs = segments(&run, "s0");
    assert!(segs.len() > 3);
    assert_eq!(concat(&segs), s);
    for (bytes, _) in &segs {
        frame_all(bytes).expect("a later segment declares the late interface in its header");
    }
    assert!(segs
        .iter()
        .any(|(_, t)| t.frames.iter().any(|f| f.flags & FRAME_HAS_IDB != 0)));
}

#[test]
fn a_new_section_starts_a_new_segment() {
    let mut s = testdata::shb(false);
    s.extend(testdata::idb(false, 1));
    s.extend(testdata::epb(false, 0, 1, b"first"));
    s.extend(testdata::shb(false));
    s.extend(testdata::idb(false, 105));
    s.extend(testdata::epb(false, 0, 2, b"second"));
    let run = record(&[(&s, &[13])], |_| {});
    let segs = segments(&run, "s0");
    assert_eq!(segs.len(), 2);
    assert_eq!(segs[1].1.flags & crate::archive::index::FLAG_CONT, 0);
    assert_eq!(concat(&segs), s);
}

#[test]
fn an_empty_section_is_kept() {
    let mut s = testdata::shb(false);
    s.extend(testdata::idb(false, 1));
    s.extend(testdata::shb(false));
    s.extend(testdata::idb(false, 101));
    s.extend(testdata::epb(false, 0, 2, b"only"));
    let run = record(&[(&s, &[11])], |_| {});
    assert_eq!(concat(&segments(&run, "s0")), s);
}

#[test]
fn bad_input_keeps_every_complete_record_and_releases() {
    let mut s = pcap_stream(500);
    let good = s.len();
    s.extend_from_slice(&[0xff; 64]); // a record header claiming a huge caplen
    let run = record(&[(&s, &[1000])], |c| c.frame_size = 4 << 10);
    let err = run.reports[0].error.as_deref().unwrap();
    assert!(err.contains(&format!("at byte offset {good}")), "{err}");
    assert_eq!(concat(&segments(&run, "s0")), &s[..good]);
    assert_eq!(run.area.lent_bytes(), 0);

    let s = pcap_stream(10);
    let run = record(&[(&s[..s.len() - 3], &[100])], |_| {});
    assert!(run.reports[0]
        .error
        .as_deref()
        .unwrap()
        .contains("truncated record"));
    assert_eq!(
        frame_all(&concat(&segments(&run, "s0")))
            .unwrap()
            .0
            .packets(),
        9
    );
}

#[test]
fn header_only_capture_is_kept() {
    let s = testdata::pcap(true, true, 96, &[]);
    let run = record(&[(&s, &[24])], |_| {});
    assert_eq!(run.reports[0].error, None);
    assert_eq!(concat(&segments(&run, "s0")), s);
}

#[test]
fn interleaved_streams_stay_separate_and_the_manifest_chains() {
    let a = pcap_stream(700);
    let b = testdata::pcap(true, true, 65535, &[(5, 6, b"bee"), (7, 8, b"sting")]);
    let run = record(&[(&a, &[333, 4096]), (&b, &[3])], |c| {
        c.frame_size = 8 << 10
    });
    assert_eq!(concat(&segments(&run, "s0")), a);
    assert_eq!(concat(&segments(&run, "s1")), b);
    let lines = crate::archive::manifest::read(run.dir.path())
        .unwrap()
        .unwrap();
    let segs = lines
        .iter()
        .filter(|l| matches!(l.entry, Entry::Segment(_)))
        .count();
    let ends = lines
        .iter()
        .filter(|l| matches!(l.entry, Entry::Stream { .. }))
        .count();
    assert_eq!((segs, ends), (2, 2));
}

#[test]
fn a_second_recorder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _w = Writer::open(Config::new(dir.path()), Arc::default()).unwrap();
    let e = Writer::open(Config::new(dir.path()), Arc::default())
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("in use by another zcap recorder"),
        "{e}"
    );
}

/// Every file of stream `name`'s directory, by name.
fn files(run: &Run, name: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(run.dir.path().join(name))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_full_disk_is_waited_out_and_leaves_the_segments_a_clean_run_writes() {
    let s = pcap_stream(3000);
    let cfg = |c: &mut Config| {
        c.frame_size = 16 << 10;
        c.segment_size = 100 << 10;
        c.compress = Compress::None;
    };
    let clean = record(&[(&s, &[4000])], cfg);
    let want = files(&clean, "s0");
    assert!(want.len() > 3, "several segments: {}", want.len());
    // Faults are injected into segment writes: count those bytes only.
    let total: usize = want
        .iter()
        .filter(|f| !f.0.ends_with(crate::archive::SIDECAR_SUFFIX))
        .map(|f| f.1.len())
        .sum();
    // In the first header, mid-frame, and late (near a rotation or in a trailer).
    for at in [5, total as u64 / 3 + 7, total as u64 - 30] {
        segment::fault::enospc_after(at);
        let run = record(&[(&s, &[4000])], cfg);
        segment::fault::clear();
        assert_eq!(
            run.stats.disk_full_events.load(Ordering::Relaxed),
            1,
            "at {at}"
        );
        assert!(
            run.stats.blocked_ns.load(Ordering::Relaxed) >= 100_000_000,
            "waited"
        );
        assert_eq!(run.stats.unwritten_bytes.load(Ordering::Relaxed), 0);
        let got = files(&run, "s0");
        assert_eq!(got.len(), want.len(), "fault at {at}");
        for (g, w) in got.iter().zip(&want) {
            assert!(
                g == w,
                "fault at byte {at}: {} differs from the clean run",
                g.0
            );
        }
        assert_eq!(run.reports[0].error, None);
        assert_eq!(run.area.lent_bytes(), 0);
        let v = crate::archive::verify::check(run.dir.path(), false, None, None).unwrap();
        assert!(v.ok(), "fault at {at}: {v:?}");
    }
}

/// What one simulated sender does in [`hostile_interleavings_archive_or_count_every_byte`].
#[derive(Debug, Clone)]
enum Sender {
    /// A complete pcap stream of `n` records.
    Good(u32),
    /// A pcap header and `n` good records, then a record claiming 256 KiB of which only
    /// `part` bytes arrive; then silence until the end, or a reset when `reset`.
    Oversized { n: u32, part: usize, reset: bool },
    /// A pcapng header then a custom block claiming `claim` bytes, `part` of them sent.
    HugeBlock { claim: u32, part: usize },
    /// Sends `n` good records, then stops mid-record.
    Stalls(u32),
}

impl Sender {
    /// The bytes it sends, and whether it is well behaved (its stream must come back whole).
    fn bytes(&self) -> (Vec<u8>, bool) {
        match *self {
            Sender::Good(n) => (pcap_stream(n), true),
            Sender::Oversized { n, part, .. } => {
                let mut b = pcap_stream(n);
                for w in [1u32, 0, 262_144, 262_144] {
                    b.extend_from_slice(&w.to_le_bytes());
                }
                b.resize(b.len() + part, 0xee);
                (b, false)
            }
            Sender::HugeBlock { claim, part } => {
                let mut b = testdata::block(false, 0x0A0D_0D0A, &{
                    let mut v = 0x1A2B_3C4Du32.to_le_bytes().to_vec();
                    v.extend_from_slice(&[1, 0, 0, 0]);
                    v.extend_from_slice(&(-1i64).to_le_bytes());
                    v
                });
                b.extend_from_slice(&testdata::block(false, 1, &[1, 0, 0, 0, 0, 0, 0, 0]));
                b.extend_from_slice(&0x0000_0BADu32.to_le_bytes());
                b.extend_from_slice(&claim.to_le_bytes());
                b.resize(b.len() + part, 0xab);
                (b, false)
            }
            Sender::Stalls(n) => {
                let mut b = pcap_stream(n);
                b.truncate(b.len() - 7);
                (b, false)
            }
        }
    }
}

fn sender() -> impl proptest::strategy::Strategy<Value = Sender> {
    use proptest::prelude::*;
    prop_oneof![
        (20u32..400).prop_map(Sender::Good),
        (0u32..50, 1usize..262_100, any::<bool>()).prop_map(|(n, part, reset)| Sender::Oversized {
            n,
            part,
            reset
        }),
        ((64u32 << 10)..(4 << 20), 1usize..(1 << 20)).prop_map(|(claim, part)| Sender::HugeBlock {
            claim: claim & !3,
            part
        }),
        (1u32..200).prop_map(Sender::Stalls),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Any mix of good senders, oversized and stalled units and resets, interleaved in any
    /// order over an area of 64 buffers of 4 KiB, as a backend delivers them (a buffer is
    /// filled only when free; when none is, the writer's tick is all that can free one):
    /// the writer never deadlocks, every good stream comes back byte for byte, every stream's
    /// received bytes are archived or counted as not archived, and the area comes back whole.
    #[test]
    fn hostile_interleavings_archive_or_count_every_byte(
        senders in proptest::collection::vec(sender(), 1..7),
        order in proptest::collection::vec(0usize..64, 64..512),
        piece in 1usize..5000,
        threads in 0usize..3,
    ) {
        hostile(&senders, &order, piece, threads)?;
    }
}

/// A case the property test once found: a good sender was cut for a copy budget that a
/// stalled huge block held.
#[test]
fn a_good_stream_is_not_cut_for_a_copy_budget_an_attacker_holds() {
    let senders = [
        Sender::HugeBlock {
            claim: 129_552,
            part: 127_751,
        },
        Sender::Stalls(27),
        Sender::Good(46),
        Sender::Stalls(40),
        Sender::Good(235),
    ];
    let order: Vec<usize> = (0..103).map(|i| (i * 37 + 11) % 64).collect();
    for threads in [0, 2] {
        for piece in [179, 1, 4096] {
            hostile(&senders, &order, piece, threads).unwrap();
        }
    }
}

/// The body of [`hostile_interleavings_archive_or_count_every_byte`].
fn hostile(
    senders: &[Sender],
    order: &[usize],
    piece: usize,
    threads: usize,
) -> Result<(), proptest::test_runner::TestCaseError> {
    {
        const BUF: usize = 4096;
        const NBUF: usize = 64;
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::new(dir.path());
        c.frame_size = 16 << 10;
        c.compress_threads = threads;
        let stats = Arc::new(WriterStats::default());
        let mut w = Writer::open(c, Arc::clone(&stats)).unwrap();
        let area = Area::new(BUF * NBUF, false).unwrap();
        area.set_granule(BUF);
        let inputs: Vec<(Vec<u8>, bool)> = senders.iter().map(Sender::bytes).collect();
        for i in 0..inputs.len() {
            w.handle(Event::Open {
                stream: i as u64,
                name: format!("s{i}"),
                area: Arc::clone(&area),
                network: true,
            })
            .unwrap();
        }
        let mut free: Vec<usize> = (0..NBUF).collect();
        let mut pos = vec![0usize; inputs.len()];
        let mut closed = vec![false; inputs.len()];
        let (mut back, mut aborts) = (Vec::new(), Vec::new());
        let mut k = 0;
        let mut idle_ticks = 0;
        loop {
            area.take_returns(&mut back, &mut aborts);
            free.extend(back.drain(..).map(|t| t.id as usize));
            for id in aborts.drain(..) {
                closed[id as usize] = true; // the backend closes what the writer cut
            }
            let live: Vec<usize> = (0..inputs.len())
                .filter(|&i| !closed[i] && pos[i] < inputs[i].0.len())
                .collect();
            if live.is_empty() {
                break;
            }
            let Some(b) = free.pop() else {
                // No free buffer: the backend waits; only the writer can make room.
                area.set_starving(true);
                w.tick().unwrap();
                idle_ticks += 1;
                proptest::prop_assert!(idle_ticks < 50, "deadlock: the area stays full");
                continue;
            };
            area.set_starving(free.is_empty());
            idle_ticks = 0;
            let i = live[order[k % order.len()] % live.len()];
            k += 1;
            let n = piece.min(BUF).min(inputs[i].0.len() - pos[i]);
            // SAFETY: buffer `b` came off the free list: nothing lent or aliases it.
            let chunk = unsafe {
                area.fill_slice(b * BUF, n)
                    .copy_from_slice(&inputs[i].0[pos[i]..pos[i] + n]);
                area.lend(
                    i as u64,
                    b * BUF,
                    n,
                    ReleaseToken {
                        id: b as u64,
                        len: n as u32,
                    },
                )
            };
            pos[i] += n;
            w.handle(Event::Data(chunk)).unwrap();
        }
        for (i, s) in senders.iter().enumerate() {
            let reset = matches!(s, Sender::Oversized { reset: true, .. });
            w.handle(Event::End {
                stream: i as u64,
                error: reset.then(|| "connection reset by the sender".to_string()),
            })
            .unwrap();
        }
        let reports = w.close().unwrap();
        proptest::prop_assert_eq!(area.lent_bytes(), 0, "every buffer came back");
        let mut lost = 0;
        for r in &reports {
            let i: usize = r.name[1..].parse().unwrap();
            proptest::prop_assert!(r.discarded <= r.received);
            lost += r.discarded;
            let (bytes, good) = &inputs[i];
            proptest::prop_assert_eq!(r.received, pos[i] as u64);
            let archived = r.received - r.discarded;
            let got = read_stream(dir.path(), &r.name);
            proptest::prop_assert_eq!(got.len() as u64, archived, "archived bytes of {}", r.name);
            proptest::prop_assert_eq!(
                &got[..],
                &bytes[..got.len()],
                "a prefix of what {} sent",
                r.name
            );
            if *good {
                proptest::prop_assert_eq!(r.discarded, 0, "{} lost bytes: {:?}", r.name, r.error);
                proptest::prop_assert_eq!(&got, bytes);
            }
        }
        proptest::prop_assert_eq!(stats.discarded_bytes.load(Ordering::Relaxed), lost);
    }
    Ok(())
}

/// A stream's segments concatenated as `cat` gives them back (empty if it has none).
fn read_stream(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let d = dir.join(name);
    if !d.exists() {
        return Vec::new();
    }
    let mut paths: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            !p.to_string_lossy()
                .ends_with(crate::archive::SIDECAR_SUFFIX)
        })
        .collect();
    paths.sort();
    let segs: Vec<_> = paths
        .iter()
        .map(|p| {
            let f = File::open(p).unwrap();
            (
                zstd::stream::decode_all(&f).unwrap(),
                read_trailer(&f).unwrap(),
            )
        })
        .collect();
    concat(&segs)
}

/// Records `streams` into a fresh archive with `threads` compress threads and returns every
/// segment file's bytes by path (relative), and the reports.
fn record_with_threads(
    streams: &[(&[u8], &[usize])],
    threads: usize,
    cfg: impl Fn(&mut Config),
) -> (
    std::collections::BTreeMap<String, Vec<u8>>,
    Vec<StreamReport>,
) {
    let run = record(streams, |c| {
        c.compress_threads = threads;
        cfg(c)
    });
    assert_eq!(run.area.lent_bytes(), 0, "every buffer came back");
    // Every segment's manifest hash is the SHA-256 of its file (whichever thread made it).
    let manifest = std::fs::read_to_string(run.dir.path().join("manifest.jsonl")).unwrap();
    let mut hashed = 0;
    for line in manifest.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        if e["op"] == "segment" {
            let bytes = std::fs::read(run.dir.path().join(e["path"].as_str().unwrap())).unwrap();
            let want =
                crate::archive::manifest::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            assert_eq!(
                e["sha256"],
                want.as_str(),
                "{} with {threads} threads",
                e["path"]
            );
            hashed += 1;
        }
    }
    assert!(hashed > 0, "the manifest names segments");
    let mut files = std::collections::BTreeMap::new();
    for s in std::fs::read_dir(run.dir.path()).unwrap() {
        let s = s.unwrap().path();
        if !s.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&s).unwrap() {
            let f = f.unwrap().path();
            let rel = f
                .strip_prefix(run.dir.path())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            files.insert(rel, std::fs::read(&f).unwrap());
        }
    }
    (files, run.reports)
}

/// Frames of very different cost: runs of one byte (fast), pseudo-random bytes (slow).
fn uneven_stream(records: u32, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let recs: Vec<(u32, u32, Vec<u8>)> = (0..records)
        .map(|i| {
            let len = 64 + (i as usize * 131) % 1400;
            let body = if (i / 40) % 2 == 0 {
                vec![i as u8; len]
            } else {
                (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect()
            };
            (1000 + i, i, body)
        })
        .collect();
    let refs: Vec<(u32, u32, &[u8])> = recs.iter().map(|(a, b, c)| (*a, *b, &c[..])).collect();
    testdata::pcap(false, false, 65535, &refs)
}

#[test]
fn a_pool_writes_the_same_segments_as_the_single_thread_writer() {
    let (a, b) = (uneven_stream(4000, 7), pcap_stream(3000));
    let streams: [(&[u8], &[usize]); 2] = [(&a, &[4096, 1, 9000]), (&b, &[65536, 333])];
    let cfg = |c: &mut Config| {
        c.frame_size = 16 << 10;
        c.segment_size = 200 << 10;
    };
    // `none` too: with threads its hashes are computed on the hash lane from the area slices.
    for mode in [Compress::Zstd(1), Compress::None] {
        let cfg = |c: &mut Config| {
            cfg(c);
            c.compress = mode;
        };
        let (one, r1) = record_with_threads(&streams, 0, cfg);
        for threads in [1, 4] {
            let (many, rn) = record_with_threads(&streams, threads, cfg);
            assert_eq!(r1, rn, "the same reports with {threads} compress threads");
            assert!(one.len() > 4, "several segments: {:?}", one.keys());
            assert_eq!(
                one.keys().collect::<Vec<_>>(),
                many.keys().collect::<Vec<_>>()
            );
            for (k, v) in &one {
                assert!(
                    many[k] == *v,
                    "{k} differs with {threads} compress threads ({mode:?})"
                );
            }
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]
    /// Any chunking of streams whose frames cost very different amounts to compress, through a
    /// pool of several workers: each stream comes back whole and in order, and its frames'
    /// offsets and stream positions only grow.
    #[test]
    fn frames_stay_in_order_per_stream_under_a_pool(
        seeds in proptest::collection::vec(1u64..1000, 1..4),
        cut in 1usize..20_000,
        threads in 2usize..5,
    ) {
        let inputs: Vec<Vec<u8>> = seeds.iter().map(|&s| uneven_stream(1500, s)).collect();
        let cuts = [cut, cut / 3 + 1, 7];
        let streams: Vec<(&[u8], &[usize])> =
            inputs.iter().map(|v| (&v[..], &cuts[..])).collect();
        let run = record(&streams, |c| {
            c.compress_threads = threads;
            c.frame_size = 8 << 10;
        });
        proptest::prop_assert_eq!(run.area.lent_bytes(), 0);
        for (i, want) in inputs.iter().enumerate() {
            let segs = segments(&run, &format!("s{i}"));
            proptest::prop_assert!(concat(&segs) == *want, "stream s{} in order", i);
            for (_, t) in &segs {
                proptest::prop_assert!(t.frames.windows(2).all(|w| w[0].offset < w[1].offset));
            }
        }
    }
}

#[test]
fn a_buffer_comes_back_only_after_its_frame_is_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::new(dir.path());
    c.frame_size = 8 << 10;
    c.compress_threads = 2;
    let mut w = Writer::open(c, Arc::default()).unwrap();
    let pool = w.pool().expect("a pool").clone();
    let s = pcap_stream(400);
    let area = Area::new(s.len() + 4096, false).unwrap();
    w.handle(Event::Open {
        stream: 0,
        name: "s0".into(),
        area: Arc::clone(&area),
        network: false,
    })
    .unwrap();
    // Hold the pool: frames are cut but none can be compressed, so none can be persisted.
    pool.pause(true);
    let mut off = 0;
    let step = 4096;
    while off < 5 * (8 << 10) {
        let n = step.min(s.len() - off);
        // SAFETY: each range of the test's area is written once and lent once.
        let chunk = unsafe {
            area.fill_slice(off, n).copy_from_slice(&s[off..off + n]);
            area.lend(
                0,
                off,
                n,
                ReleaseToken {
                    id: off as u64,
                    len: n as u32,
                },
            )
        };
        w.handle(Event::Data(chunk)).unwrap();
        off += n;
    }
    w.tick().unwrap();
    assert!(w.in_flight() >= 3, "frames were cut: {}", w.in_flight());
    assert_eq!(
        area.lent_bytes(),
        off,
        "no buffer goes back while its frame waits to be persisted"
    );
    let mut back = (Vec::new(), Vec::new());
    area.take_returns(&mut back.0, &mut back.1);
    assert!(back.0.is_empty(), "no release token yet");
    pool.pause(false);
    // Persisting happens on the writer's thread: drive it until the frames are written.
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.in_flight() > 0 {
        assert!(Instant::now() < deadline, "frames never persisted");
        w.persist_ready(false).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        area.lent_bytes() < off,
        "persisted frames gave their buffers back"
    );
    let rest = &s[off..];
    // SAFETY: as above.
    let chunk = unsafe {
        area.fill_slice(off, rest.len()).copy_from_slice(rest);
        area.lend(
            0,
            off,
            rest.len(),
            ReleaseToken {
                id: off as u64,
                len: rest.len() as u32,
            },
        )
    };
    w.handle(Event::Data(chunk)).unwrap();
    w.handle(Event::End {
        stream: 0,
        error: None,
    })
    .unwrap();
    let reports = w.close().unwrap();
    assert_eq!(reports[0].error, None);
    assert_eq!(area.lent_bytes(), 0);
    let run = Run {
        dir,
        reports,
        area,
        stats: Arc::default(),
    };
    assert_eq!(concat(&segments(&run, "s0")), s);
}

/// Live capture's shape: whole records lent as spans of one block each, with bytes between
/// them that are not the stream's. The archive holds exactly the records, in order, and a
/// block comes back only when its last record is persisted — once.
#[test]
fn record_blocks_are_archived_span_by_span_and_returned_once_after_persist() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::new(dir.path());
    c.frame_size = 4 << 10;
    let stats = Arc::new(WriterStats::default());
    let mut w = Writer::open(c, Arc::clone(&stats)).unwrap();
    const BLOCK: usize = 16 << 10;
    let area = Area::new(4 * BLOCK, false).unwrap();
    area.set_granule(BLOCK);
    let head = Area::new(4096, false).unwrap();
    let header = testdata::pcap(false, true, 65535, &[]);
    // SAFETY: the test's own pages, written once and lent once.
    let chunk = unsafe {
        head.fill_slice(0, 24).copy_from_slice(&header);
        head.lend(1, 0, 24, ReleaseToken { id: 99, len: 24 })
    };
    w.handle(Event::Open {
        stream: 1,
        name: "cap".into(),
        area: Arc::clone(&area),
        network: false,
    })
    .unwrap();
    w.handle(Event::Data(chunk)).unwrap();
    let mut want = header.clone();
    let mut n = 0u32;
    for b in 0..4 {
        let mut spans = Vec::new();
        let mut off = 48;
        loop {
            let len = 60 + (n as usize * 97) % 1400;
            if off + 16 + len + 40 > BLOCK {
                break;
            }
            let rec = testdata::pcap(false, true, 65535, &[(n, 7, &vec![n as u8; len])]);
            // SAFETY: block `b` is not lent yet; the test writes each range once.
            unsafe {
                area.fill_slice(b * BLOCK + off - 40, 40).fill(0xee); // not the stream's
                area.fill_slice(b * BLOCK + off, 16 + len)
                    .copy_from_slice(&rec[24..]);
            }
            want.extend_from_slice(&rec[24..]);
            spans.push(crate::rx::Span {
                off: off as u32,
                len: (16 + len) as u32,
            });
            off += 16 + len + 40;
            n += 1;
        }
        // SAFETY: the block is written and lent once, whole.
        let block = unsafe {
            area.lend(
                1,
                b * BLOCK,
                BLOCK,
                ReleaseToken {
                    id: b as u64,
                    len: BLOCK as u32,
                },
            )
        };
        w.handle(Event::Records { block, spans }).unwrap();
    }
    // The last block's last record is in the open frame: that block cannot be back yet.
    let (mut back, mut aborts) = (Vec::new(), Vec::new());
    area.take_returns(&mut back, &mut aborts);
    // Blocks whose every record is in a persisted frame are back while capture goes on.
    let early: Vec<u64> = back.iter().map(|t| t.id).collect();
    assert_eq!(
        early,
        [0, 1, 2],
        "returned while recording, in order, not the last"
    );
    w.handle(Event::End {
        stream: 1,
        error: None,
    })
    .unwrap();
    let reports = w.close().unwrap();
    assert_eq!(reports[0].packets, n as u64);
    area.take_returns(&mut back, &mut aborts);
    let mut ids: Vec<u64> = back.iter().map(|t| t.id).collect();
    ids.sort();
    assert_eq!(ids, [0, 1, 2, 3], "every block once");
    assert_eq!(area.lent_bytes(), 0);
    let got = read_stream(dir.path(), "cap");
    assert!(
        got == want,
        "the records, byte for byte, nothing between them"
    );
}

/// A pcap stream of TCP packets over `flows` flows (ports 1000 + f), sizes varying, and
/// every tenth packet ARP: (the stream, each record's (flow or None, record bytes)).
/// A record of [`flow_stream`]: its flow (None for ARP) and its bytes.
type FlowRecord = (Option<u16>, Vec<u8>);

fn flow_stream(packets: u32, flows: u16) -> (Vec<u8>, Vec<FlowRecord>) {
    use crate::flow::parse::tests::{arp_ipv4, eth, ipv4, tcp, A4, B4};
    let mut recs = Vec::new();
    for i in 0..packets {
        let (flow, data) = if i % 10 == 9 {
            (None, eth(&[], 0x0806, &arp_ipv4(A4, B4)))
        } else {
            let f = (i % u32::from(flows)) as u16;
            let mut seg = tcp(1000 + f, 80);
            seg.resize(seg.len() + (i as usize * 53) % 1400, i as u8);
            (Some(f), eth(&[], 0x0800, &ipv4(6, &[], 0, &seg)))
        };
        recs.push((flow, (1000 + i, i, data)));
    }
    let refs: Vec<(u32, u32, &[u8])> = recs.iter().map(|(_, (a, b, c))| (*a, *b, &c[..])).collect();
    let s = testdata::pcap(false, false, 65535, &refs);
    let (_, units) = frame_all(&s).unwrap();
    let out = recs
        .iter()
        .zip(&units[1..])
        .map(|((f, _), u)| (*f, s[u.start as usize..u.end() as usize].to_vec()))
        .collect();
    (s, out)
}

#[test]
fn flow_cutoff_keeps_each_flow_up_to_its_limit_and_the_archive_stays_one_capture() {
    let (s, recs) = flow_stream(600, 3);
    let limit = 20_000u64;
    for keep_headers in [false, true] {
        for cuts in [&[4096usize][..], &[1, 333, 7000, 29]] {
            let run = record(&[(&s, cuts)], |c| {
                c.frame_size = 8 << 10;
                c.segment_size = 16 << 10;
                c.compress = Compress::None;
                c.flow_cutoff = Some(Cutoff {
                    bytes: limit,
                    keep_headers,
                });
            });
            // What the archive must hold: each flow's records while it stored under the
            // limit (the crossing one whole), then its headers (or nothing); ARP always.
            let mut stored = [0u64; 3];
            let mut want = s[..24].to_vec();
            let (mut cut_packets, mut cut_bytes) = (0u64, 0u64);
            for (flow, rec) in &recs {
                let caplen = rec.len() as u64 - 16;
                match flow {
                    Some(f) if stored[*f as usize] >= limit => {
                        cut_packets += 1;
                        if keep_headers {
                            let keep = 14 + 20 + 20;
                            let mut r = rec[..16 + keep].to_vec();
                            r[8..12].copy_from_slice(&(keep as u32).to_le_bytes());
                            cut_bytes += rec.len() as u64 - r.len() as u64;
                            want.extend(r);
                        } else {
                            cut_bytes += rec.len() as u64;
                        }
                    }
                    Some(f) => {
                        stored[*f as usize] += caplen;
                        want.extend_from_slice(rec);
                    }
                    None => want.extend_from_slice(rec),
                }
            }
            assert!(cut_packets > 100, "the corpus exceeds the limit");
            let segs = segments(&run, "s0");
            assert!(segs.len() > 2, "several segments");
            assert_eq!(
                concat(&segs),
                want,
                "keep_headers {keep_headers}, cuts {cuts:?}"
            );
            // Each segment starts where the one before it ended, in the archived stream.
            for w in segs.windows(2) {
                let (a, b) = (&w[0].1, &w[1].1);
                let raw: u64 = a.frames.iter().map(|f| u64::from(f.raw_len)).sum();
                assert_eq!(b.stream_off, a.stream_off + raw, "continuity");
            }
            // Every frame's packet count is what it holds.
            for (data, t) in &segs {
                let (_, units) = frame_all(data).unwrap();
                let packets = units
                    .iter()
                    .filter(|u| matches!(u.kind, UnitKind::Packet { .. }))
                    .count();
                assert_eq!(packets as u64, t.packets());
            }
            assert_eq!(run.stats.cut_packets.load(Ordering::Relaxed), cut_packets);
            assert_eq!(run.stats.cut_bytes.load(Ordering::Relaxed), cut_bytes);
            assert_eq!(run.area.lent_bytes(), 0, "every buffer went back");
        }
    }
}

#[test]
fn each_segment_has_a_sidecar_whose_rows_are_its_packets_flows_however_chunked() {
    use crate::flow::sidecar;
    let (s, _) = flow_stream(900, 7);
    for cuts in [&[65536usize][..], &[1, 17, 5000, 3, 901]] {
        let run = record(&[(&s, cuts)], |c| {
            c.frame_size = 8 << 10;
            c.segment_size = 24 << 10;
            c.compress = Compress::None;
        });
        let text = std::fs::read_to_string(run.dir.path().join(manifest::FILE)).unwrap();
        let lines = manifest::parse(&text).unwrap();
        let flows: HashMap<String, manifest::FlowsEntry> = lines
            .iter()
            .filter_map(|l| match &l.entry {
                Entry::Flows(f) => Some((f.segment.clone(), f.clone())),
                _ => None,
            })
            .collect();
        let segs: Vec<&SegmentEntry> = lines
            .iter()
            .filter_map(|l| match &l.entry {
                Entry::Segment(s) => Some(s),
                _ => None,
            })
            .collect();
        assert!(segs.len() > 3, "several segments");
        for seg in segs {
            let f = &flows[&seg.path];
            let bytes =
                std::fs::read(run.dir.path().join(archive::sidecar_name(&seg.path))).unwrap();
            assert_eq!(bytes.len() as u64, f.bytes);
            assert_eq!(
                manifest::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
                f.sha256
            );
            let got = sidecar::decode(&bytes).unwrap();
            // The same flows, computed from the segment's own bytes frame by frame.
            let file = File::open(run.dir.path().join(&seg.path)).unwrap();
            let (data, t) = (
                zstd::stream::decode_all(&file).unwrap(),
                read_trailer(&file).unwrap(),
            );
            let mut want = crate::flow::FlowTable::new();
            let mut off = t.header_raw_len as usize;
            for (i, fe) in t.frames.iter().enumerate() {
                let frame = &data[off..off + fe.raw_len as usize];
                let mut hdr = data[..24].to_vec();
                hdr.extend_from_slice(frame);
                let (_, units) = frame_all(&hdr).unwrap();
                for u in units
                    .iter()
                    .filter(|u| matches!(u.kind, UnitKind::Packet { .. }))
                {
                    let rec = &hdr[u.start as usize..u.end() as usize];
                    let wire = u32::from_le_bytes(rec[12..16].try_into().unwrap());
                    let ts = match u.kind {
                        UnitKind::Packet { ts_ns } => ts_ns,
                        _ => unreachable!(),
                    };
                    want.add(&crate::flow::parse(1, &rec[16..]), ts, wire, i as u32);
                }
                off += fe.raw_len as usize;
            }
            let want: Vec<sidecar::Row> = want.rows().map(sidecar::Row::from).collect();
            assert_eq!(got, want, "{} with cuts {cuts:?}", seg.path);
            assert_eq!(f.flows, want.len() as u64);
        }
    }
}
