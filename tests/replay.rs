//! `zcap replay` over real loopback sockets: the recorded pace at `--speed 1` (measured at
//! a receiving socket in this test, with bounds that hold on a busy machine), `--serve` to
//! several clients, and an archive as source.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::process::Stdio;
use std::time::Instant;

/// Receives one PCAP-over-IP connection and returns its bytes and, for every record, the
/// instant its last byte arrived with its timestamp in microseconds.
fn receive(l: TcpListener) -> (Vec<u8>, Vec<(Instant, i64)>) {
    let (mut s, _) = l.accept().unwrap();
    let mut data = Vec::new();
    let mut arrivals = Vec::new();
    let mut next = 24; // end of the next unit: the file header first
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.read(&mut buf).unwrap();
        let now = Instant::now();
        if n == 0 {
            return (data, arrivals);
        }
        data.extend_from_slice(&buf[..n]);
        // Every record completed by this read arrived now.
        loop {
            if data.len() < next + 16 {
                break;
            }
            let h = &data[next..next + 16];
            let caplen = u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize;
            if data.len() < next + 16 + caplen {
                break;
            }
            let sec = u32::from_le_bytes(h[0..4].try_into().unwrap()) as i64;
            let usec = u32::from_le_bytes(h[4..8].try_into().unwrap()) as i64;
            arrivals.push((now, sec * 1_000_000 + usec));
            next += 16 + caplen;
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// At `--speed 1` the packets arrive at the recorded pace: stretches of the stream take their
/// recorded time, no packet comes early, the typical one is on time and the whole takes as
/// long as the capture. The bounds are on medians, on the total and on a 20 ms earliness, so
/// a loaded machine that deschedules the sender or this receiver for a few ms at a time still
/// passes; a sender that sends at top speed or at another speed does not. The schedule itself
/// is checked exactly by the unit tests in src/replay.rs.
#[test]
fn replay_speed_1_keeps_the_recorded_pace() {
    if !common::need_tool("python3") {
        return;
    }
    let t = common::tempdir();
    let input = t.path().join("five-seconds.pcap");
    // 500 packets at 100/s with up to 20% jitter: 5 s of capture.
    common::gen(&["--count", "500", "--rate", "100", "--seed", "9"], &input);
    let want = std::fs::read(&input).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let rx = std::thread::spawn(move || receive(l));
    let out = common::zcap()
        .arg("replay")
        .arg(&input)
        .args(["--to", &addr, "--speed", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (got, arr) = rx.join().unwrap();
    assert_eq!(got, want, "the capture arrives unchanged");
    assert_eq!(arr.len(), 500);
    let (t0, ts0) = arr[0];
    let span = (arr[499].1 - ts0) as f64 / 1e6;
    assert!(span > 4.5, "the capture spans {span} s");
    // How much later than its recorded offset from the first packet each one arrived (µs;
    // negative = earlier), and how far each stretch of 50 gaps (about 500 ms) is from its
    // recorded length. A descheduled sender or receiver delays a few arrivals by a few ms;
    // a sender that does not pace makes every stretch about 500 ms short, one at 1.1x about
    // 45 ms.
    let lag: Vec<f64> = arr
        .iter()
        .map(|(t, ts)| (*t - t0).as_secs_f64() * 1e6 - (ts - ts0) as f64)
        .collect();
    let stretch_err: Vec<f64> = (0..arr.len() - 50)
        .map(|i| {
            let (a, b) = (arr[i], arr[i + 50]);
            ((b.0 - a.0).as_secs_f64() * 1e6 - (b.1 - a.1) as f64).abs()
        })
        .collect();
    let took = (arr[499].0 - t0).as_secs_f64();
    let earliest = lag.iter().copied().fold(f64::INFINITY, f64::min);
    let typical_lag = median(lag.clone());
    let stretch = median(stretch_err);
    eprintln!(
        "took {took:.3} s for {span:.3} s of capture; 50-gap stretches off by {stretch:.0} µs \
         (median); lag behind the schedule: median {typical_lag:.0} µs, earliest {earliest:.0} µs"
    );
    assert!(
        stretch <= 25_000.0,
        "50-gap stretches are {stretch:.0} µs off their recorded length (median)"
    );
    // No packet leaves before its time. The receiver measures from the first arrival, whose
    // own delay can make later ones look early by as much; 20 ms covers a busy machine.
    assert!(
        earliest >= -20_000.0,
        "a packet arrived {earliest:.0} µs early"
    );
    assert!(
        typical_lag <= 20_000.0,
        "packets arrive {typical_lag:.0} µs behind the schedule (median)"
    );
    // The whole lasts as long as the capture (never much shorter, see above), and not much
    // longer even when the machine is busy: the schedule is absolute, delays do not add up.
    assert!(
        took >= span - 0.02 && took <= span + 1.0,
        "{span:.3} s of capture took {took:.3} s"
    );
}

#[test]
fn serve_gives_every_client_the_whole_capture() {
    let input = common::fixture("be-ns-sll.pcap");
    let want = std::fs::read(&input).unwrap();
    let mut server = common::zcap()
        .arg("replay")
        .arg(&input)
        .args(["--serve", "127.0.0.1:0", "--max-clients", "3"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = server.stderr.take().unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\n") {
        assert_eq!(err.read(&mut b).unwrap(), 1, "the server exited early");
        head.push(b[0]);
    }
    let line = String::from_utf8(head).unwrap();
    let addr = line.trim().rsplit(" on ").next().unwrap().to_string();
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                let mut v = Vec::new();
                s.read_to_end(&mut v).unwrap();
                v
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), want, "a client got the whole capture");
    }
    let st = server.wait().unwrap();
    assert!(st.success(), "the server exits after --max-clients 3");
}

#[test]
fn replay_of_an_archive_sends_what_cat_gives_with_a_time_window() {
    let t = common::tempdir();
    let arch = t.path().join("arch");
    let input = common::fixture("demo.pcap");
    common::run_ok(
        common::zcap()
            .args(["record", "-r"])
            .arg(&input)
            .args(["--stream-name", "demo", "--frame-size", "16KiB", "-o"])
            .arg(&arch),
    );
    let window = ["--from", "2025-11-25T08:00:02Z"];
    let cat = common::run_ok(
        common::zcap()
            .arg("cat")
            .arg(&arch)
            .args(window)
            .args(["--to", "2025-11-25T08:00:03Z"]),
    )
    .stdout;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let rx = std::thread::spawn(move || receive(l));
    common::run_ok(
        common::zcap()
            .arg("replay")
            .arg(&arch)
            .args(["--to", &addr])
            .args(window)
            .args(["--until", "2025-11-25T08:00:03Z", "--speed", "50"]),
    );
    let (got, arr) = rx.join().unwrap();
    assert!(arr.len() > 100, "about 200 packets in one second");
    assert_eq!(got, cat, "replay sends exactly what cat selects");
}
