//! Hot-path micro-benchmarks, each side by side with a peer that does the least work anyone
//! could do on the same bytes, printed as ratios (`cargo bench --bench hotpath`).
//!
//! - framing: `zcap::stream::Framer` fed a pcap stream in 64 KiB pieces (as the receive area
//!   lends them) against a memcpy of the same pieces and a bare record walk (read caplen,
//!   skip) over the contiguous buffer; and out of cache (ZCAP_BENCH_COLD_MIB, default 512,
//!   of the same records, far beyond the caches, as the writer meets bytes the kernel copied
//!   long before), with and without `area::prefetch` of each piece, as the writer does;
//! - encoding: the writer's `Encoder` turning ~1 MiB frames, given as 64 KiB area slices,
//!   into a segment file on tmpfs (zstd level 1 with a content checksum, SHA-256 of the output,
//!   write(2)), against `zstd::bulk::Compressor` level 1 into a reused buffer; and the
//!   `--compress none` encoder (raw zstd blocks, writev) against a memcpy.
//!
//! No benchmark framework: a warm-up run, then the median of N timed runs (N from
//! ZCAP_BENCH_ITERS, default 9). The input is synthetic and deterministic (a realistic size
//! mix, half text-like, half random payloads), or the pcap file named by ZCAP_BENCH_PCAP
//! (e.g. one made by tools/gen-pcap.py). ZCAP_BENCH_MIB sets the synthetic size (default 32).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;
use zcap::stream::Framer;
use zcap::writer::segment::{Encoder, SegmentFile};
use zcap::writer::Compress;

const PIECE: usize = 64 << 10;
const FRAME: usize = 1 << 20;

fn main() {
    let iters: usize = env_num("ZCAP_BENCH_ITERS", 9).max(1);
    let data = match std::env::var_os("ZCAP_BENCH_PCAP") {
        Some(p) => std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", Path::new(&p).display())),
        None => synth_pcap(env_num("ZCAP_BENCH_MIB", 32) << 20),
    };
    let records = walk(&data);
    assert!(records > 0, "the input holds no pcap records");
    println!(
        "hotpath: {:.1} MiB pcap, {records} records, median of {iters} runs after a warm-up",
        data.len() as f64 / (1 << 20) as f64
    );

    println!("\nframing (64 KiB pieces)");
    let memcpy = bench("memcpy of the pieces (peer)", data.len(), iters, || {
        let mut scratch = vec![0u8; PIECE];
        for p in data.chunks(PIECE) {
            scratch[..p.len()].copy_from_slice(p);
            black_box(&scratch);
        }
    });
    let bare = bench(
        "bare record walk, contiguous (peer)",
        data.len(),
        iters,
        || {
            black_box(walk(black_box(&data)));
        },
    );
    let framer = bench("zcap Framer", data.len(), iters, || {
        assert_eq!(frame(&data), records as u64 + 1);
    });
    ratio("Framer ÷ memcpy", framer, memcpy);
    ratio("Framer ÷ bare walk", framer, bare);

    // As the writer meets them: the bytes arrived long ago (the kernel copied them on another
    // core), so a data set far larger than the caches, framed once per pass.
    let cold = repeat_records(&data, env_num("ZCAP_BENCH_COLD_MIB", 512) << 20);
    let cold_records = walk(&cold) as u64;
    println!(
        "\nframing out of cache ({:.0} MiB, 64 KiB pieces)",
        cold.len() as f64 / (1 << 20) as f64
    );
    let plain = bench("zcap Framer (peer: no prefetch)", cold.len(), 3, || {
        assert_eq!(frame_with(&cold, false), cold_records + 1);
    });
    let fetched = bench("zcap Framer, each piece prefetched", cold.len(), 3, || {
        assert_eq!(frame_with(&cold, true), cold_records + 1);
    });
    ratio("prefetched ÷ not", fetched, plain);
    drop(cold);

    let frames = frames(&data);
    let payload = &data[24..];
    let dir = scratch_dir();
    println!(
        "\nencoding ({} frames of ~1 MiB, as 64 KiB slices; segments in {})",
        frames.len(),
        dir.display()
    );
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(FRAME * 2));
    let mut bulk_len = 0;
    let bulk = bench("zstd::bulk level 1 (peer)", payload.len(), iters, || {
        let mut c = zstd::bulk::Compressor::new(1).expect("zstd context");
        bulk_len = 0;
        for f in &frames {
            out.clear();
            bulk_len += c
                .compress_to_buffer(&data[f.0..f.1], &mut out)
                .expect("zstd");
        }
    });
    let mut enc_len = 0;
    let enc_zstd = bench(
        "zcap Encoder zstd:1 → segment",
        payload.len(),
        iters,
        || {
            enc_len = encode(&dir, &data, &frames, Compress::Zstd(1));
        },
    );
    println!(
        "  stored: zstd::bulk {:.1} MiB, Encoder {:.1} MiB (frames with checksums + header)",
        bulk_len as f64 / (1 << 20) as f64,
        enc_len as f64 / (1 << 20) as f64
    );
    let copy = bench("memcpy of the frames (peer)", payload.len(), iters, || {
        let mut scratch = vec![0u8; FRAME * 2];
        for f in &frames {
            let n = f.1 - f.0;
            scratch[..n].copy_from_slice(&data[f.0..f.1]);
            black_box(&scratch);
        }
    });
    let enc_none = bench(
        "zcap Encoder none → segment",
        payload.len(),
        iters,
        || {
            black_box(encode(&dir, &data, &frames, Compress::None));
        },
    );
    ratio("Encoder zstd:1 ÷ zstd::bulk level 1", enc_zstd, bulk);
    ratio("Encoder none ÷ memcpy", enc_none, copy);

    println!("\nwhere the encoder's time goes (same frames, same slices)");
    let mut cctx = zstd::zstd_safe::CCtx::create();
    cctx.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(1))
        .expect("zstd level");
    cctx.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
        .expect("zstd checksum");
    let streamed = bench(
        "zstd stream, 64 KiB slices, checksum",
        payload.len(),
        iters,
        || {
            for &(a, b) in &frames {
                out.clear();
                stream_frame(&mut cctx, &slices(&data, a, b), &mut out);
                black_box(&out);
            }
        },
    );
    let sha = bench("SHA-256 of the raw bytes", payload.len(), iters, || {
        use sha2::Digest;
        black_box(sha2::Sha256::digest(payload));
    });
    ratio("zstd stream ÷ zstd::bulk", streamed, bulk);
    ratio("SHA-256 ÷ zstd::bulk", sha, bulk);
    let _ = std::fs::remove_dir_all(&dir);
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `f` once to warm up, then `iters` times; prints and returns the median MB/s.
fn bench(name: &str, bytes: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut secs: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    secs.sort_by(|a, b| a.total_cmp(b));
    let rate = |s: f64| bytes as f64 / 1e6 / s;
    let median = rate(secs[secs.len() / 2]);
    println!(
        "  {name:<40} {median:>9.0} MB/s   (min..max {:.0}..{:.0})",
        rate(secs[secs.len() - 1]),
        rate(secs[0])
    );
    median
}

fn ratio(name: &str, a: f64, b: f64) {
    println!("  {name:<40} {:>9.2}×", a / b);
}

/// Feeds the whole stream to a Framer in PIECE-sized pieces; returns the units seen.
fn frame(data: &[u8]) -> u64 {
    frame_with(data, false)
}

/// As [`frame`], prefetching each piece first as the writer does (`area::prefetch`).
fn frame_with(data: &[u8], prefetch: bool) -> u64 {
    let mut f = Framer::new();
    let mut units = 0;
    for piece in data.chunks(PIECE) {
        if prefetch {
            zcap::area::prefetch(piece);
        }
        let mut rest = piece;
        while !rest.is_empty() {
            let (used, unit) = f.step(rest).expect("a valid stream");
            units += unit.is_some() as u64;
            assert!(used > 0 || unit.is_some(), "the framer made no progress");
            rest = &rest[used..];
        }
    }
    f.finish().expect("the stream ends on a record boundary");
    units
}

/// `data`'s file header, then its records over and over until the stream holds `size` bytes.
fn repeat_records(data: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + data.len());
    out.extend_from_slice(&data[..24]);
    while out.len() < size {
        out.extend_from_slice(&data[24..]);
    }
    out
}

/// The least a pcap reader can do: read each record's caplen and skip its body.
fn walk(data: &[u8]) -> usize {
    let mut pos = 24;
    let mut n = 0;
    while pos + 16 <= data.len() {
        let caplen = u32::from_le_bytes(data[pos + 8..pos + 12].try_into().unwrap()) as usize;
        pos += 16 + caplen;
        n += 1;
    }
    assert_eq!(pos, data.len(), "truncated record");
    n
}

/// Frame boundaries as the writer cuts them: the first record boundary past 1 MiB.
fn frames(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let (mut start, mut pos) = (24, 24);
    while pos + 16 <= data.len() {
        let caplen = u32::from_le_bytes(data[pos + 8..pos + 12].try_into().unwrap()) as usize;
        pos += 16 + caplen;
        if pos - start >= FRAME {
            out.push((start, pos));
            start = pos;
        }
    }
    if pos > start {
        out.push((start, pos));
    }
    out
}

/// The 64 KiB area slices that stream bytes `a..b` span.
fn slices(data: &[u8], a: usize, b: usize) -> Vec<&[u8]> {
    let mut parts = Vec::with_capacity((b - a) / PIECE + 2);
    let mut p = a;
    while p < b {
        let end = ((p / PIECE + 1) * PIECE).min(b);
        parts.push(&data[p..end]);
        p = end;
    }
    parts
}

/// One zstd frame from `parts` with the streaming API, as the writer's Encoder makes it.
fn stream_frame(cctx: &mut zstd::zstd_safe::CCtx<'static>, parts: &[&[u8]], out: &mut Vec<u8>) {
    use zstd::zstd_safe::{
        zstd_sys::ZSTD_EndDirective as End, InBuffer, OutBuffer, ResetDirective,
    };
    cctx.reset(ResetDirective::SessionOnly).expect("reset");
    let raw: usize = parts.iter().map(|p| p.len()).sum();
    out.reserve(zstd::zstd_safe::compress_bound(raw) + 64);
    let mut ob = OutBuffer::around_pos(out, 0);
    for p in parts {
        let mut ib = InBuffer::around(p);
        while ib.pos() < p.len() {
            cctx.compress_stream2(&mut ob, &mut ib, End::ZSTD_e_continue)
                .expect("zstd");
        }
    }
    let mut empty = InBuffer::around(&[]);
    while cctx
        .compress_stream2(&mut ob, &mut empty, End::ZSTD_e_end)
        .expect("zstd")
        != 0
    {}
}

/// Encodes every frame into one segment file, each frame handed over as the 64 KiB area
/// slices it would span; returns the bytes written. The segment is not finalized (that
/// fsyncs) and is deleted afterwards.
fn encode(dir: &Path, data: &[u8], frames: &[(usize, usize)], mode: Compress) -> u64 {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("bench-{seq}.pcap.zst");
    let mut enc = Encoder::new(mode).expect("encoder");
    let mut seg = SegmentFile::create(dir, &name, seq + 1, &data[..24], false, 24, &mut enc, None)
        .expect("segment");
    let mut total = seg.len;
    let mut parts: Vec<&[u8]> = Vec::with_capacity(FRAME / PIECE + 2);
    for &(a, b) in frames {
        parts.clear();
        parts.extend(slices(data, a, b));
        total += enc.frame(&parts, None, &mut seg).expect("encode");
    }
    drop(seg);
    let _ = std::fs::remove_file(dir.join(format!("{name}.partial")));
    total
}

fn scratch_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("zcap-hotpath-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// A deterministic pcap: 60-100 / 576 / 1514-byte Ethernet frames (45 / 10 / 45 %), IPv4
/// headers from a few flows, payloads half text-like and half random.
fn synth_pcap(bytes: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "GET",
        "/index.html",
        "HTTP/1.1",
        "Host:",
        "example.org",
        "User-Agent:",
        "curl/8.5",
        "Accept:",
        "*/*",
        "Content-Type:",
        "text/html;",
        "charset=utf-8",
        "<div",
        "class=",
        "\"row\">",
        "</div>",
        "the",
        "of",
        "and",
        "packet",
        "capture",
        "200",
        "OK",
        "\r\n",
    ];
    let mut v = Vec::with_capacity(bytes + 2048);
    v.extend_from_slice(&0xA1B2_C3D4u32.to_le_bytes());
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(&4u16.to_le_bytes());
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(&262_144u32.to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut sec, mut usec) = (1_764_057_600u32, 0u32);
    while v.len() < bytes {
        let r = next();
        let len = match r % 100 {
            0..=44 => 60 + (r >> 8) as usize % 41,
            45..=54 => 576,
            _ => 1514,
        };
        usec += 1 + (r >> 20) as u32 % 1000;
        if usec >= 1_000_000 {
            sec += 1;
            usec -= 1_000_000;
        }
        v.extend_from_slice(&sec.to_le_bytes());
        v.extend_from_slice(&usec.to_le_bytes());
        v.extend_from_slice(&(len as u32).to_le_bytes());
        v.extend_from_slice(&(len as u32).to_le_bytes());
        let start = v.len();
        // Ethernet + IPv4 + TCP-ish header from one of 64 flows.
        let flow = (r >> 32) as u8 & 63;
        v.extend_from_slice(&[0x02, 0, 0, 0, 0, flow, 0x02, 0, 0, 0, 1, flow, 0x08, 0x00]);
        v.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0]);
        v.extend_from_slice(&[10, 0, flow, 1, 10, 1, flow, 2]);
        while v.len() < start + 54 {
            v.push(flow);
        }
        if r & (1 << 40) == 0 {
            while v.len() < start + len {
                let w = WORDS[(next() % WORDS.len() as u64) as usize].as_bytes();
                let n = w.len().min(start + len - v.len());
                v.extend_from_slice(&w[..n]);
                if v.len() < start + len {
                    v.push(b' ');
                }
            }
        } else {
            while v.len() < start + len {
                let n = (start + len - v.len()).min(8);
                v.extend_from_slice(&next().to_le_bytes()[..n]);
            }
        }
    }
    v
}
