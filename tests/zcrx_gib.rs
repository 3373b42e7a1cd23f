//! Two gibibytes through `zcap record --rx zcrx-emulated` — the zcrx backend against the
//! emulated kernel half, the real writer and archive — with a receive area sixteen times
//! smaller than the data, so every area page is received into, lent, persisted, returned
//! through the refill ring and reused many times. The archive must give back the stream
//! byte for byte (compared by SHA-256 while streaming, so nothing is held in memory), and the
//! emulator's books (no page reused before release, none leaked) must balance: the recorder
//! fails if they do not. The emulation's defaults are the strict ones: Linux 6.18 (no
//! FLUSH_RQ), 256 niovs posted in the NIC's rx ring, the refill ring read only as packets
//! arrive, at most 64 entries at a time.

mod common;

use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;

const RECORDS: u64 = 1_400_000; // × (16 + 1514) bytes ≈ 2.0 GiB

/// A deterministic pcap stream: header, then RECORDS records of 1514 bytes whose payload
/// changes with every record (so a reused or stale page shows up as a wrong byte).
fn stream(mut out: impl FnMut(&[u8])) {
    let mut hdr = Vec::new();
    for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 65535, 1] {
        hdr.extend(v.to_le_bytes());
    }
    out(&hdr);
    let mut rec = vec![0u8; 16 + 1514];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..RECORDS {
        rec[0..4].copy_from_slice(&(1_700_000_000 + (i / 1000) as u32).to_le_bytes());
        rec[4..8].copy_from_slice(&(((i % 1000) * 1000) as u32).to_le_bytes());
        rec[8..12].copy_from_slice(&1514u32.to_le_bytes());
        rec[12..16].copy_from_slice(&1514u32.to_le_bytes());
        for w in rec[16..].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x.to_le_bytes();
            w.copy_from_slice(&b[..w.len()]);
        }
        out(&rec);
    }
}

#[test]
fn two_gib_byte_exact_through_the_zcrx_emulation_with_a_small_area() {
    let t = common::tempdir();
    let arch = t.path().join("arch");
    let mut rec = common::zcap()
        .args(["record", "--rx", "zcrx-emulated", "--listen", "127.0.0.1:0"])
        .args([
            "--area-size",
            "128MiB",
            "--compress",
            "none",
            "--max-streams",
            "1",
            "-o",
        ])
        .arg(&arch)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(rec.stderr.take().unwrap());
    let mut log = String::new();
    let addr = loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "recorder exited:\n{log}"
        );
        log += &line;
        if let Some(a) = line.trim().strip_prefix("zcap: listening on ") {
            break a.to_string();
        }
    };
    let logger = std::thread::spawn(move || {
        let mut rest = String::new();
        err.read_to_string(&mut rest).unwrap();
        rest
    });
    let mut sock = TcpStream::connect(&addr).unwrap();
    let mut sent = Sha256::new();
    let mut batch = Vec::with_capacity(1 << 20);
    stream(|b| {
        sent.update(b);
        batch.extend_from_slice(b);
        if batch.len() >= 1 << 20 {
            sock.write_all(&batch).unwrap();
            batch.clear();
        }
    });
    sock.write_all(&batch).unwrap();
    drop(sock);
    let st = rec.wait().unwrap();
    log += &logger.join().unwrap();
    assert!(
        st.success(),
        "recorder failed (emulator books must balance):\n{log}"
    );

    let mut cat = common::zcap()
        .arg("cat")
        .arg(&arch)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut got = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut out = cat.stdout.take().unwrap();
    let mut n_total = 0u64;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        n_total += n as u64;
        got.update(&buf[..n]);
    }
    assert!(cat.wait().unwrap().success());
    assert_eq!(n_total, 24 + RECORDS * (16 + 1514));
    assert_eq!(
        got.finalize(),
        sent.finalize(),
        "the archive is the stream, byte for byte"
    );
}
