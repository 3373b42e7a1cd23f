//! What `kill -9` of a recorder loses of a fast PCAP-over-IP stream, measured against the bound
//! README.md and docs/ARCHIVE.md state: the receive area (`--area-size`) + one frame
//! (`--frame-size`) + what the recorder's kernel held in the socket receive buffer
//! (`net.ipv4.tcp_rmem` max). After `verify --repair` the archive must verify and hold a
//! byte-exact prefix of what was sent.
//!
//! Which bytes count as sent: the sender writes with non-blocking `send(2)` and counts what
//! the kernel accepted. Bytes still in the *sender's* send queue (`SIOCOUTQ`) never reached
//! the recorder. So the sender stops, the test reads `written` and the send queue `outq`,
//! then kills the recorder at once. The send queue only shrinks after the sender stops, so
//! the bytes the recorder's kernel had at the kill lie between `written - outq` and
//! `written`; the assertion uses `written` (generous by at most `outq`, which it adds to the
//! bound) and the printed loss uses `written - outq` (low by whatever crossed loopback in
//! the microseconds between reading `outq` and the kill). Nothing here depends on timing:
//! the kill lands wherever the recorder happens to be.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const AREA: u64 = 4 << 20;
const FRAME: u64 = 1 << 20;

/// `net.ipv4.tcp_rmem`'s third field: the most a connection's receive buffer autotunes to.
fn tcp_rmem_max() -> u64 {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem").expect("read tcp_rmem");
    s.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// Bytes in the socket's send queue not yet acknowledged by the peer (SIOCOUTQ).
fn send_queue(sock: &TcpStream) -> u64 {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one int through the pointer; the fd is open.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(r, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
    n as u64
}

#[test]
fn kill_9_loses_at_most_the_area_a_frame_and_the_socket_buffer() {
    if !common::need_tool("python3") {
        return;
    }
    let t = common::tempdir();
    let input = t.path().join("in.pcap");
    common::gen(
        &["--bytes", "96M", "--payload", "random", "--seed", "11"],
        &input,
    );
    let data = Arc::new(std::fs::read(&input).unwrap());
    let arch = t.path().join("arch");

    let mut rec = common::zcap()
        .args(["record", "--listen", "127.0.0.1:0", "-o"])
        .arg(&arch)
        .args([
            "--area-size",
            &AREA.to_string(),
            "--frame-size",
            &FRAME.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start zcap record");
    let (tx, rx) = mpsc::channel();
    let err = rec.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("zcap: listening on ") {
                let _ = tx.send(a.to_string());
            }
            eprintln!("recorder: {line}");
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the recorder printed no `listening on` line");

    let sock = TcpStream::connect(&addr).unwrap();
    sock.set_nonblocking(true).unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (mut sock, data) = (sock.try_clone().unwrap(), Arc::clone(&data));
        let (written, stop) = (Arc::clone(&written), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut off = 0usize;
            while !stop.load(Ordering::SeqCst) && off < data.len() {
                let end = (off + (256 << 10)).min(data.len());
                match sock.write(&data[off..end]) {
                    Ok(n) => {
                        off += n;
                        written.store(off as u64, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_micros(200))
                    }
                    Err(e) => panic!("send: {e}"),
                }
            }
        })
    };
    // Kill well into the stream: past what the bound itself could hold, so the recorder has
    // persisted frames and its buffers are as full as this sender makes them.
    let rmem = tcp_rmem_max();
    let kill_after = (AREA + FRAME + rmem + (8 << 20)).min(data.len() as u64 * 3 / 4);
    let deadline = Instant::now() + Duration::from_secs(120);
    while written.load(Ordering::SeqCst) < kill_after {
        assert!(
            Instant::now() < deadline,
            "the recorder took too little too slowly"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
    let sent = written.load(Ordering::SeqCst);
    let outq = send_queue(&sock);
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(rec.id() as i32, libc::SIGKILL) }, 0);
    let status = rec.wait().unwrap();
    assert!(!status.success(), "the recorder was killed: {status}");
    assert!(
        sent < data.len() as u64,
        "the whole input went out before the kill"
    );
    drop(sock);

    let repair = common::zcap()
        .args(["verify", "--repair"])
        .arg(&arch)
        .output()
        .unwrap();
    let repair_log = String::from_utf8_lossy(&repair.stdout).into_owned()
        + &String::from_utf8_lossy(&repair.stderr);
    let verify = common::zcap().arg("verify").arg(&arch).output().unwrap();
    assert!(
        verify.status.success(),
        "after --repair the archive verifies:\n{repair_log}\n{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let cat = common::run_ok(
        Command::new(env!("CARGO_BIN_EXE_zcap"))
            .arg("cat")
            .arg(&arch),
    );
    let got = cat.stdout;
    assert!(got.len() > 24, "the archive holds records:\n{repair_log}");
    assert!(
        got.len() as u64 <= sent,
        "the archive holds more than was sent"
    );
    let first_diff = got.iter().zip(data.iter()).position(|(a, b)| a != b);
    assert_eq!(
        first_diff, None,
        "the archive is not a byte-exact prefix of the input"
    );

    let archived = got.len() as u64;
    let bound = AREA + FRAME + rmem;
    let lost_at_most = sent - archived; // counts the send queue too
    let lost = (sent - outq).saturating_sub(archived);
    eprintln!(
        "crash_bound: sent {sent} B (send queue at the kill {outq} B), archived {archived} B, \
         lost {lost} B = {:.1} MiB; bound area {AREA} + frame {FRAME} + tcp_rmem max {rmem} = \
         {:.1} MiB",
        lost as f64 / (1 << 20) as f64,
        bound as f64 / (1 << 20) as f64
    );
    assert!(
        lost_at_most <= bound + outq,
        "lost {lost} B (at most {lost_at_most} B with the send queue), more than the bound \
         {bound} B + the send queue {outq} B"
    );
}
