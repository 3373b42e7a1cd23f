//! The whole recorder (`zcap record --rx zcrx-emulated`: backend, writer, archive) against the
//! strict emulation of the kernel's buffer economy (src/rx/zcrx/emu.rs), configured through
//! `ZCAP_ZCRX_EMU`: unsteered streams larger than the area, through FLUSH_RQ where the
//! emulated kernel has it and ending "not steered" where it does not, and a NIC reserve of
//! half the area. Streams are generated and compared by SHA-256 while streaming, so nothing
//! large is held in memory. Bounds are generous (minutes); nothing here times anything.

mod common;

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Calls `out` with a pcap stream of `records` 1514-byte records whose payload changes with
/// every record (a stale or reused niov shows up as a wrong byte).
fn stream(records: u64, mut out: impl FnMut(&[u8]) -> bool) {
    let mut hdr = Vec::new();
    for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65535, 1] {
        hdr.extend(v.to_le_bytes());
    }
    if !out(&hdr) {
        return;
    }
    let mut rec = vec![0u8; 16 + 1514];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..records {
        rec[0..4].copy_from_slice(&(1_700_000_000 + (i / 1000) as u32).to_le_bytes());
        rec[4..8].copy_from_slice(&(((i % 1000) * 1000) as u32).to_le_bytes());
        rec[8..12].copy_from_slice(&1514u32.to_le_bytes());
        rec[12..16].copy_from_slice(&1514u32.to_le_bytes());
        for w in rec[16..].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
        if !out(&rec) {
            return;
        }
    }
}

struct Run {
    ok: bool,
    log: String,
    sent: Vec<u8>,
}

/// Records one stream of `records` records through the emulation set up by `spec`.
fn record(dir: &Path, spec: &str, area: &str, records: u64) -> Run {
    let mut cmd = common::zcap();
    cmd.env("ZCAP_ZCRX_EMU", spec)
        .args(["record", "--rx", "zcrx-emulated", "--listen", "127.0.0.1:0"])
        .args([
            "--area-size",
            area,
            "--compress",
            "none",
            "--max-streams",
            "1",
        ])
        .arg("-o")
        .arg(dir);
    let rec = common::start_cmd(cmd);
    let mut sock = TcpStream::connect(rec.addr()).unwrap();
    let mut sent = Sha256::new();
    let mut batch = Vec::with_capacity(1 << 20);
    stream(records, |b| {
        sent.update(b);
        batch.extend_from_slice(b);
        if batch.len() >= 1 << 20 {
            // The recorder may end the stream (not steered): stop sending then.
            if sock.write_all(&batch).is_err() {
                return false;
            }
            batch.clear();
        }
        true
    });
    let _ = sock.write_all(&batch);
    drop(sock);
    let (st, log) = rec.wait(Duration::from_secs(600));
    Run {
        ok: st.success(),
        log,
        sent: sent.finalize().to_vec(),
    }
}

/// SHA-256 and length of what `zcap cat` gives back.
fn cat(dir: &Path) -> (Vec<u8>, u64) {
    let mut cat = common::zcap()
        .arg("cat")
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = cat.stdout.take().unwrap();
    let mut got = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n_total = 0;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        n_total += n as u64;
        got.update(&buf[..n]);
    }
    assert!(cat.wait().unwrap().success());
    (got.finalize().to_vec(), n_total)
}

#[test]
fn an_unsteered_stream_sixteen_times_the_area_records_byte_exact_through_flush_rq() {
    let t = common::tempdir();
    let dir = t.path().join("arch");
    let records = 44_000; // × 1530 bytes ≈ 64 MiB through a 4 MiB area
    let r = record(&dir, "unsteered,kernel=6.19,reserve=256", "4MiB", records);
    assert!(r.ok, "recorder failed:\n{}", r.log);
    assert!(!r.log.contains("not steered"), "{}", r.log);
    let (sha, len) = cat(&dir);
    assert_eq!(len, 24 + records * 1530);
    assert_eq!(sha, r.sent, "the archive is the stream, byte for byte");
}

#[test]
fn an_unsteered_stream_without_flush_rq_ends_not_steered_in_bounded_time() {
    let t = common::tempdir();
    let dir = t.path().join("arch");
    // 64 MiB into a 4 MiB area on 6.18: the idle zcrx queue never takes buffers back.
    let r = record(
        &dir,
        "unsteered,kernel=6.18,reserve=256,starve=1",
        "4MiB",
        44_000,
    );
    assert!(
        r.log.contains("not steered to emulated queue"),
        "the stream must end with the not-steered error:\n{}",
        r.log
    );
    assert!(r.log.contains("--steer or `ethtool -N"), "{}", r.log);
    // Whatever arrived before the end is in the archive and readable.
    let (_, len) = cat(&dir);
    assert!(
        len < 4 << 20,
        "at most the free part of the area arrived: {len}"
    );
}

#[test]
fn a_nic_reserve_of_half_the_area_records_byte_exact() {
    let t = common::tempdir();
    let dir = t.path().join("arch");
    let records = 44_000;
    // 8 MiB = 2048 niovs, 1024 of them posted in the NIC's rx ring.
    let r = record(&dir, "steered,kernel=6.18,reserve=1024", "8MiB", records);
    assert!(
        r.ok,
        "recorder failed (emulator books must balance):\n{}",
        r.log
    );
    let (sha, len) = cat(&dir);
    assert_eq!(len, 24 + records * 1530);
    assert_eq!(sha, r.sent, "the archive is the stream, byte for byte");
}
