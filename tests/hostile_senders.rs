//! Senders that try to stall the recorder, on every backend over loopback: connections that
//! pin the receive area with units they never finish (pcapng blocks claiming 16 MiB, pcap
//! records claiming 256 KiB), while good senders record during and after the attack. Every
//! good stream must come back byte for byte, new senders must be accepted once the
//! attackers close, and the summary must count what was cut instead of claiming that
//! nothing was lost.

#[macro_use]
mod common;

use common::{start, streams};
use socket2::{Domain, Socket, Type};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connects to `to` from the loopback address `from` (so per-peer limits see distinct peers).
fn connect_from(from: [u8; 4], to: &str) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: SocketAddr = (from, 0).into();
    s.bind(&local.into()).unwrap();
    let to: SocketAddr = to.parse().unwrap();
    s.connect(&to.into()).unwrap();
    s.into()
}

/// A pcapng section header and one Ethernet interface.
fn pcapng_header() -> Vec<u8> {
    let mut v = Vec::new();
    for w in [0x0A0D_0D0Au32, 28, 0x1A2B_3C4D] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&0u16.to_le_bytes());
    v.extend_from_slice(&(-1i64).to_le_bytes());
    v.extend_from_slice(&28u32.to_le_bytes());
    for w in [1u32, 20, 1, 0, 20] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

/// A pcap file header with the snaplen 262144.
fn pcap_header() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(&4u16.to_le_bytes());
    for w in [0u32, 0, 262_144, 1] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

/// An attacker: a valid header, then `body` bytes of a unit whose head claims `claim`
/// bytes, sent in 64 KiB pieces a few milliseconds apart so that they interleave with the
/// good senders' bytes in the area; then it stalls with the connection open until `release`.
fn attack(
    to: String,
    from: [u8; 4],
    pcapng: bool,
    claim: u32,
    body: usize,
    sent: Arc<AtomicUsize>,
    release: Arc<AtomicBool>,
) {
    let mut s = connect_from(from, &to);
    let mut head = if pcapng {
        let mut h = pcapng_header();
        // A custom block (type 0x00000BAD) claiming `claim` bytes.
        h.extend_from_slice(&0x0000_0BADu32.to_le_bytes());
        h.extend_from_slice(&claim.to_le_bytes());
        h
    } else {
        let mut h = pcap_header();
        for w in [0u32, 0, claim, claim] {
            h.extend_from_slice(&w.to_le_bytes());
        }
        h
    };
    head.resize(head.len() + body, 0x5a);
    // A write fails once the recorder cut the connection.
    for piece in head.chunks(64 << 10) {
        if s.write_all(piece).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    sent.fetch_add(1, Ordering::Relaxed);
    while !release.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `zcap replay FILE --to TO` at the recorded pace (`paced`) or at top speed.
fn replay_from(file: &Path, to: &str, paced: bool) -> std::process::Child {
    let mut cmd = common::zcap();
    cmd.arg("replay").arg(file).args(["--to", to]);
    if paced {
        cmd.args(["--speed", "1"]);
    } else {
        cmd.arg("--topspeed");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start zcap replay")
}

/// Good senders through `zcap replay` (from 127.0.0.1), each must finish in time.
fn good_senders(inputs: &[std::path::PathBuf], to: &str, log: &dyn Fn() -> String) {
    let children: Vec<_> = inputs.iter().map(|p| replay_from(p, to, false)).collect();
    wait_senders(children, log);
}

fn wait_senders(children: Vec<std::process::Child>, log: &dyn Fn() -> String) {
    for mut c in children {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                assert!(st.success(), "a good sender failed: {st}\n{}", log());
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = c.kill();
                panic!(
                    "a good sender did not finish while attackers held connections:\n{}",
                    log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Good streams (from 127.0.0.1) that the recorder saw end in order.
fn good_ended(log: &str) -> usize {
    log.lines()
        .filter(|l| l.starts_with("zcap: stream 127.0.0.1_") && l.contains("sender closed"))
        .count()
}

/// `n` captures of 3000 packets each; their timestamps span 3 s (1000 packets/s), so a
/// sender at the recorded pace is still sending while the attack unfolds.
fn inputs(dir: &Path, n: usize, tag: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("{tag}-{i}.pcap"));
            let seed = (100 + i).to_string();
            common::gen(
                &[
                    "--count",
                    "3000",
                    "--rate",
                    "1000",
                    "--seed",
                    &seed,
                    "--mix",
                    "realistic",
                ],
                &p,
            );
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect()
}

/// Runs one attack: `attackers` connections spread over three loopback addresses, then good
/// senders while they hold on, then the attackers close, then good senders again.
fn pinned_area_attack(backend: &str, pcapng: bool, attackers: usize, claim: u32, body: usize) {
    if !common::need_tool("python3") {
        return;
    }
    let t = common::tempdir();
    let arch = t.path().join("arch");
    let during = inputs(t.path(), 3, "during");
    let after = inputs(t.path(), 2, "after");
    // Defaults but for --max-streams: the recorder exits once every stream has ended.
    let total = (attackers + during.len() + after.len()).to_string();
    let rec = start(backend, &arch, &["--max-streams", &total]);
    let addr = rec.addr();
    // Good senders at the recorded pace (3 s each), then the attackers from 127.0.0.2..4,
    // each on its own thread, so that attack bytes and good bytes share the area's buffers.
    let paced: Vec<_> = during
        .iter()
        .map(|(p, _)| replay_from(p, &addr, true))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let sent = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(AtomicBool::new(false));
    let held: Vec<_> = (0..attackers)
        .map(|i| {
            let (addr, sent, release) = (addr.clone(), Arc::clone(&sent), Arc::clone(&release));
            let from = [127, 0, 0, 2 + (i % 3) as u8];
            std::thread::spawn(move || attack(addr, from, pcapng, claim, body, sent, release))
        })
        .collect();
    wait_senders(paced, &|| rec.log());
    // The good streams are recorded to their end while the attackers still hold their
    // connections (a sender's exit only means the kernel took its bytes) — well before the
    // stall timeout (60 s) could have cut an attacker.
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    while good_ended(&rec.log()) < during.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "good streams did not end while the attackers held on:\n{}",
            rec.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    while sent.load(Ordering::Relaxed) < attackers {
        assert!(
            std::time::Instant::now() < deadline,
            "attackers stuck:\n{}",
            rec.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    release.store(true, Ordering::Relaxed); // the attackers close
    for h in held {
        h.join().unwrap();
    }
    let paths: Vec<_> = after.iter().map(|(p, _)| p.clone()).collect();
    good_senders(&paths, &addr, &|| rec.log());
    let (st, log) = rec.wait(Duration::from_secs(120));
    assert!(
        st.success(),
        "the recorder exits 0 after its streams: {st}\n{log}"
    );
    // Every good stream (from 127.0.0.1) byte for byte.
    let got = streams(&arch);
    let mut good: Vec<&Vec<u8>> = got
        .iter()
        .filter(|(n, _)| n.starts_with("127.0.0.1_"))
        .map(|(_, b)| b)
        .collect();
    good.sort_by_key(|b| b.len());
    let mut want: Vec<&Vec<u8>> = during.iter().chain(&after).map(|(_, b)| b).collect();
    want.sort_by_key(|b| b.len());
    assert_eq!(
        good.len(),
        want.len(),
        "good streams in the archive:\n{log}"
    );
    for (g, w) in good.iter().zip(&want) {
        assert!(
            g == w,
            "a good stream differs ({} vs {} bytes):\n{log}",
            g.len(),
            w.len()
        );
    }
    // What the attackers sent is accounted for: none of it is claimed as kept.
    let summary = log
        .lines()
        .find(|l| l.starts_with("zcap: rx: ") && l.contains("connection(s)"))
        .unwrap_or_else(|| panic!("no receive summary:\n{log}"));
    assert!(
        summary.contains("received bytes not archived") && !summary.contains("nothing"),
        "the summary counts what was not archived: {summary}"
    );
    let attacker_lines = log
        .lines()
        .filter(|l| l.starts_with("zcap: stream 127.0.0.") && !l.contains("127.0.0.1_"))
        .filter(|l| l.contains("not archived"))
        .count();
    assert!(
        attacker_lines >= attackers.min(1),
        "each attacker's loss is named:\n{log}"
    );
    let v = common::zcap().arg("verify").arg(&arch).output().unwrap();
    assert!(
        v.status.success(),
        "the archive verifies:\n{}\n{log}",
        String::from_utf8_lossy(&v.stdout)
    );
}

/// Five pcapng senders each send 15 MiB of a custom block that claims 16 MiB, then stall:
/// together they would pin more than the default 64 MiB area (four already pinned v0.1's).
fn pcapng_blocks_claiming_16mib_do_not_stall_the_others(backend: &str) {
    pinned_area_attack(backend, true, 5, 16 << 20, 15 << 20);
}

/// 300 pcap senders each send 250,000 bytes of a 262,144-byte record, then stall.
fn three_hundred_unfinished_pcap_records_do_not_stall_the_others(backend: &str) {
    pinned_area_attack(backend, false, 300, 262_144, 250_000 - 40);
}

/// Raises this test process's descriptor limit (it holds over a thousand sockets).
fn raise_own_nofile(want: u64) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur >= want
}

/// 1100 idle connections against a recorder whose descriptor limit is 1024: it stays up,
/// connected good streams go on recording, the connections over the limit are refused and
/// counted, and once the idle timeout has closed the idle ones a new sender records again.
fn eleven_hundred_idle_connections_under_a_1024_descriptor_limit(backend: &str) {
    if !common::need_tool("python3") {
        return;
    }
    if !raise_own_nofile(4096) {
        // The test itself needs more than 1100 descriptors.
        assert!(
            std::env::var_os("CI").is_none(),
            "the test needs a descriptor limit of 4096 (ulimit -n)"
        );
        eprintln!("SKIP: the descriptor hard limit is below 4096");
        return;
    }
    let t = common::tempdir();
    let arch = t.path().join("arch");
    let good = inputs(t.path(), 3, "good");
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 1024 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_zcap"))
        .args(["record", "--listen", "127.0.0.1:0", "--rx", backend, "-o"])
        .arg(&arch)
        .args(["--idle-timeout", "3s"]);
    let rec = common::start_cmd(cmd);
    let addr = rec.addr();
    // Two good senders connect first and send their header.
    let mut early: Vec<(TcpStream, &Vec<u8>)> = good[..2]
        .iter()
        .map(|(_, b)| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(&b[..24]).unwrap();
            (s, b)
        })
        .collect();
    // The flood: 1100 connections that send nothing, from nine addresses (under the
    // per-peer limit, so the total limit is what refuses them).
    let idle: Vec<TcpStream> = (0..1100)
        .map(|i| connect_from([127, 0, 0, 2 + (i % 9) as u8], &addr))
        .collect();
    // The good streams go on while the idle connections hold every slot.
    for (s, b) in &mut early {
        s.write_all(&b[24..]).unwrap();
    }
    drop(early);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while good_ended(&rec.log()) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "good streams stalled:\n{}",
            rec.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The idle timeout closes the idle connections; then a new sender is admitted again.
    while !rec.log().contains("sent nothing for 3s") {
        assert!(
            std::time::Instant::now() < deadline,
            "no idle cut:\n{}",
            rec.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    loop {
        let ended = rec
            .log()
            .lines()
            .filter(|l| l.contains("sent nothing for 3s"))
            .count();
        if ended >= 400 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "idle ones stay:\n{}",
            rec.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    good_senders(&[good[2].0.clone()], &addr, &|| rec.log());
    while good_ended(&rec.log()) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "late sender:\n{}",
            rec.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(idle);
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(rec.pid(), libc::SIGTERM) };
    let (st, log) = rec.wait(Duration::from_secs(60));
    assert!(
        st.success(),
        "the recorder stays up and exits 0: {st}\n{log}"
    );
    let summary = log
        .lines()
        .find(|l| l.starts_with("zcap: rx: ") && l.contains("connection(s)"))
        .unwrap_or_else(|| panic!("no receive summary:\n{log}"));
    let refused: u64 = summary
        .split("; ")
        .find_map(|p| p.strip_suffix(" connection(s) refused by the connection limits"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("refusals counted in the summary: {summary}"));
    assert!(refused >= 1100 - 480, "refused {refused}: {summary}");
    assert!(
        log.contains("zcap: refusing a connection from 127.0.0."),
        "{log}"
    );
    let got = streams(&arch);
    for (_, want) in &good {
        assert!(
            got.values().any(|g| g == want),
            "every good stream byte for byte:\n{log}"
        );
    }
}

for_each_backend!(
    pcapng_blocks_claiming_16mib_do_not_stall_the_others,
    three_hundred_unfinished_pcap_records_do_not_stall_the_others,
    eleven_hundred_idle_connections_under_a_1024_descriptor_limit,
);
