//! `zcap record --listen` over real loopback sockets, for both the `ring` (io_uring) and
//! `recv` (epoll) backends: many concurrent senders (zcap replay and the stock
//! `tcpdump -w - | socat` pipe) recorded byte for byte, backpressure against a slow writer
//! within the stated memory bound, bad senders, `--connect`, and SIGTERM mid-run.

#[macro_use]
mod common;

use common::{assert_streams, start, streams};

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Byte offsets of each record of a little-endian pcap.
fn record_ends(pcap: &[u8]) -> Vec<usize> {
    assert_eq!(
        &pcap[..4],
        &0xa1b2_c3d4u32.to_le_bytes(),
        "a LE microsecond pcap"
    );
    let mut ends = Vec::new();
    let mut off = 24;
    while off < pcap.len() {
        let caplen = u32::from_le_bytes(pcap[off + 8..off + 12].try_into().unwrap()) as usize;
        off += 16 + caplen;
        ends.push(off);
    }
    assert_eq!(off, pcap.len());
    ends
}

/// `n` distinct captures cut from `base`: capture i holds all but the last i records, so
/// each stream can be told apart by its length.
fn variants(base: &[u8], n: usize, dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let ends = record_ends(base);
    assert!(ends.len() > n);
    (0..n)
        .map(|i| {
            let bytes = base[..ends[ends.len() - 1 - i]].to_vec();
            let p = dir.join(format!("in-{i}.pcap"));
            std::fs::write(&p, &bytes).unwrap();
            (p, bytes)
        })
        .collect()
}

fn replay(file: &Path, to: &str) -> Child {
    common::zcap()
        .arg("replay")
        .arg(file)
        .args(["--to", to, "--topspeed"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start zcap replay")
}

/// The stock sender: `tcpdump -r F -w - | socat -u - TCP:ADDR`.
fn stock(file: &Path, to: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tcpdump -r '{}' -w - 2>/dev/null | socat -u - TCP:{to}",
            file.display()
        ))
        .stdin(Stdio::null())
        .spawn()
        .expect("start tcpdump | socat")
}

/// What tcpdump -w - writes for `file` (the stock sender's stream).
fn tcpdump_rewrite(file: &Path) -> Vec<u8> {
    common::run_ok(
        Command::new("tcpdump")
            .arg("-r")
            .arg(file)
            .args(["-w", "-"]),
    )
    .stdout
}

fn finish(senders: Vec<Child>) {
    for mut s in senders {
        let st = s.wait().unwrap();
        assert!(st.success(), "a sender failed: {st}");
    }
}

fn base_capture(dir: &Path, count: u32, seed: u32) -> Vec<u8> {
    let p = dir.join(format!("base-{count}-{seed}.pcap"));
    common::gen(
        &["--count", &count.to_string(), "--seed", &seed.to_string()],
        &p,
    );
    std::fs::read(p).unwrap()
}

fn senders_byte_exact(backend: &str, n: usize, stock_share: usize, count: u32) {
    if !common::need_tool("python3") || !common::need_tool("zstd") {
        return;
    }
    if stock_share > 0 && (!common::need_tool("tcpdump") || !common::need_tool("socat")) {
        return;
    }
    let t = common::tempdir();
    let base = base_capture(t.path(), count, 3);
    let inputs = variants(&base, n, t.path());
    let arch = t.path().join("arch");
    let n_str = n.to_string();
    let rec = start(backend, &arch, &["--max-streams", &n_str]);
    let mut want = Vec::new();
    let mut senders = Vec::new();
    for (i, (path, bytes)) in inputs.iter().enumerate() {
        if i < stock_share {
            want.push(tcpdump_rewrite(path));
            senders.push(stock(path, &rec.addr()));
        } else {
            want.push(bytes.clone());
            senders.push(replay(path, &rec.addr()));
        }
    }
    finish(senders);
    let (st, log) = rec.wait(Duration::from_secs(120));
    assert!(st.success(), "recorder exit {st}:\n{log}");
    assert_eq!(
        log.matches(": connected").count(),
        n,
        "one stream per connection:\n{log}"
    );
    assert_streams(&arch, &want, &log);
}

fn one_sender_byte_exact(backend: &str) {
    senders_byte_exact(backend, 1, 0, 3000);
}

fn eight_senders_byte_exact_tcpdump_reads_every_segment(backend: &str) {
    senders_byte_exact(backend, 8, 4, 1500);
    // Stock tools read each finalized segment unchanged.
    if !common::need_tool("tcpdump") {
        return;
    }
    let t = common::tempdir();
    let base = base_capture(t.path(), 600, 4);
    let arch = t.path().join("arch");
    let rec = start(
        backend,
        &arch,
        &["--max-streams", "2", "-C", "64KiB", "--frame-size", "16KiB"],
    );
    let inputs = variants(&base, 2, t.path());
    finish(inputs.iter().map(|(p, _)| replay(p, &rec.addr())).collect());
    let (st, log) = rec.wait(Duration::from_secs(60));
    assert!(st.success(), "{log}");
    let mut segs = 0;
    let mut packets = 0;
    for d in std::fs::read_dir(&arch).unwrap().flatten() {
        if !d.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            let p = f.path();
            if p.to_string_lossy().ends_with(".pcap.zst") {
                let raw = t.path().join("seg.pcap");
                std::fs::write(&raw, common::zstd_decompress(&p)).unwrap();
                packets += common::tcpdump_count(&raw);
                segs += 1;
            }
        }
    }
    assert!(segs > 2, "-C 64KiB rotates: {segs} segments");
    let want: usize = inputs.iter().map(|(_, b)| record_ends(b).len()).sum();
    assert_eq!(packets, want, "tcpdump reads every packet of every segment");
}

fn sixty_four_senders_byte_exact(backend: &str) {
    senders_byte_exact(backend, 64, 8, 300);
}

fn vm_rss_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The bound README states: area + compressor + a fixed allowance for the program itself
/// (code, heap, stacks, the event queue) + 4 KiB per connection.
fn memory_bound(area: u64, compressor: u64, conns: u64) -> u64 {
    area + compressor + (32 << 20) + conns * 4096
}

fn fast_sender_slow_writer_loses_nothing_within_memory_bound(backend: &str) {
    if !common::need_tool("python3") || !common::need_tool("zstd") {
        return;
    }
    let t = common::tempdir();
    let input = t.path().join("in.pcap");
    common::gen(&["--bytes", "3M", "--seed", "5"], &input);
    let want = std::fs::read(&input).unwrap();
    let arch = t.path().join("arch");
    // zstd level 19 is far slower than loopback; 64 buffers of 16 KiB run dry at once.
    let rec = start(
        backend,
        &arch,
        &[
            "--max-streams",
            "2",
            "--area-size",
            "1MiB",
            "--buf-size",
            "16KiB",
            "--compress",
            "zstd:19",
            "--frame-size",
            "256KiB",
            "--writers",
            "2",
            "--compress-threads",
            "2",
        ],
    );
    let senders = vec![replay(&input, &rec.addr()), replay(&input, &rec.addr())];
    let pid = rec.pid();
    let mut peak = 0;
    let started = Instant::now();
    while senders.iter().any(|_| true) && started.elapsed() < Duration::from_secs(120) {
        if let Some(kib) = vm_rss_kib(pid) {
            peak = peak.max(kib * 1024);
        } else {
            break; // exited
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    finish(senders);
    let (st, log) = rec.wait(Duration::from_secs(120));
    assert!(st.success(), "{log}");
    // zstd:19 keeps about 85 MiB of tables (windowLog 23) per compress thread; the writers
    // compress nothing themselves when there is a pool; frames in flight hold at most their
    // output buffers (2 writers x 6 x 256 KiB) beyond the area; see README.
    let bound = memory_bound(1 << 20, 2 * (96 << 20) + 2 * 6 * (256 << 10), 2);
    eprintln!("peak VmRSS {} KiB, bound {} KiB", peak >> 10, bound >> 10);
    assert!(peak > 0, "RSS was sampled");
    assert!(
        peak <= bound,
        "peak RSS {peak} bytes exceeds the stated bound {bound}"
    );
    assert_streams(&arch, &[want.clone(), want], &log);
}

fn bad_senders_get_a_clear_line_and_keep_complete_records(backend: &str) {
    let t = common::tempdir();
    let arch = t.path().join("arch");
    let good = std::fs::read(common::fixture("le-us-eth.pcap")).unwrap();
    let ends = record_ends(&good);
    let pcapng = std::fs::read(common::fixture("two-ifaces.pcapng")).unwrap();
    let rec = start(backend, &arch, &["--max-streams", "5"]);
    let send = |bytes: &[u8], linger0: bool| -> u16 {
        let mut s = TcpStream::connect(rec.addr()).unwrap();
        let port = s.local_addr().unwrap().port();
        s.write_all(bytes).unwrap();
        if linger0 {
            // SO_LINGER 0: close sends a reset, as a crashed host's stack would.
            let l = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            use std::os::fd::AsRawFd;
            // SAFETY: setsockopt on our own socket with a linger struct on the stack.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&l as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as u32,
                )
            };
            std::thread::sleep(Duration::from_millis(300)); // let the data arrive first
        }
        drop(s);
        port
    };
    // Killed mid-record: ten whole records and half of the eleventh, then the end.
    let cut = ends[9] + (ends[10] - ends[9]) / 2;
    let killed = send(&good[..cut], false);
    let garbage = send(b"GET / HTTP/1.1\r\nHost: zcap\r\n\r\n", false);
    let empty = send(b"", false);
    let ng = send(&pcapng, false);
    let reset = send(&good[..ends[4]], true);
    let (_, log) = rec.wait(Duration::from_secs(60));
    let line = |port: u16, what: &str| {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("_{port}-")) && l.contains(what)),
            "no line for the connection from port {port} saying `{what}`:\n{log}"
        );
    };
    line(killed, "truncated record");
    line(killed, "kept 10 complete packets");
    line(garbage, "not a pcap or pcapng stream");
    line(empty, "empty stream");
    line(ng, "sender closed the connection after 15448 bytes");
    line(reset, "connection reset by the sender");
    let got = streams(&arch);
    let by_port = |port: u16| {
        got.iter()
            .find(|(n, _)| n.contains(&format!("_{port}-")))
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("no stream from port {port}: {:?}", got.keys()))
    };
    assert_eq!(
        by_port(killed),
        good[..ends[9]],
        "every complete record kept"
    );
    assert_eq!(by_port(ng), pcapng, "a pcapng stream is kept byte for byte");
    assert_eq!(by_port(reset), good[..ends[4]]);
}

fn connect_mode_records_each_connection_as_a_stream(backend: &str) {
    let t = common::tempdir();
    let arch = t.path().join("arch");
    let input = common::fixture("le-ns-raw.pcap");
    let want = std::fs::read(&input).unwrap();
    let mut server = common::zcap()
        .arg("replay")
        .arg(&input)
        .args(["--serve", "127.0.0.1:0", "--max-clients", "2"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.rsplit(" on ")
                .next()
                .map(String::from)
                .filter(|_| l.contains("serving"))
        })
        .expect("the server says where it listens");
    std::thread::spawn(move || lines.for_each(drop));
    let out = common::zcap()
        .args([
            "record",
            "--connect",
            &addr,
            "--rx",
            backend,
            "--max-streams",
            "2",
            "-o",
        ])
        .arg(&arch)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert_eq!(log.matches("connected to").count(), 2, "{log}");
    assert!(server.wait().unwrap().success());
    assert_streams(&arch, &[want.clone(), want], &log);
}

fn sigterm_during_a_busy_run_leaves_a_verifiable_archive(backend: &str) {
    let t = common::tempdir();
    let arch = t.path().join("arch");
    let rec = start(backend, &arch, &["--frame-size", "64KiB"]);
    let input = common::fixture("demo.pcap");
    let mut senders: Vec<Child> = (0..4)
        .map(|_| {
            common::zcap()
                .arg("replay")
                .arg(&input)
                .args(["--to", &rec.addr(), "--topspeed", "--loop", "0"])
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(rec.pid(), libc::SIGTERM) };
    let started = Instant::now();
    let (st, log) = rec.wait(Duration::from_secs(30));
    for s in &mut senders {
        let _ = s.kill();
        let _ = s.wait();
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the recorder took {:?} to stop",
        started.elapsed()
    );
    assert!(
        st.success(),
        "the recorder exits 0 after SIGTERM: {st}\n{log}"
    );
    assert_eq!(log.matches(": connected").count(), 4, "{log}");
    assert!(
        log.matches("ended by the recorder's shutdown").count()
            + log.matches("sender closed").count()
            >= 4,
        "every stream ended:\n{log}"
    );
    let v = common::zcap().arg("verify").arg(&arch).output().unwrap();
    assert!(
        v.status.success(),
        "verify after SIGTERM:\n{}\n{}\nrecorder:\n{log}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(!streams(&arch).is_empty());
}

for_each_backend!(
    one_sender_byte_exact,
    eight_senders_byte_exact_tcpdump_reads_every_segment,
    sixty_four_senders_byte_exact,
    fast_sender_slow_writer_loses_nothing_within_memory_bound,
    bad_senders_get_a_clear_line_and_keep_complete_records,
    connect_mode_records_each_connection_as_a_stream,
    sigterm_during_a_busy_run_leaves_a_verifiable_archive,
);
