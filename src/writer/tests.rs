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
    let total: usize = want.iter().map(|f| f.1.len()).sum();
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
        let v = crate::archive::verify::check(run.dir.path(), false).unwrap();
        assert!(v.ok(), "fault at {at}: {v:?}");
    }
}
