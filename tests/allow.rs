//! Who may send: with `--allow`, a sender from outside the allowed networks is closed on
//! accept before any of its bytes is read — logged, counted, never a stream — while an
//! allowed sender records byte for byte. On every backend over loopback (127.0.0.2 is a
//! loopback address outside 127.0.0.1/32).

#[macro_use]
mod common;

use common::{assert_streams, start};
use socket2::{Domain, Socket, Type};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn connect_from(from: [u8; 4], to: &str) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: SocketAddr = (from, 0).into();
    s.bind(&local.into()).unwrap();
    let to: SocketAddr = to.parse().unwrap();
    s.connect(&to.into()).unwrap();
    s.into()
}

fn a_peer_outside_allow_is_refused_and_an_allowed_one_records(backend: &str) {
    let t = common::tempdir();
    let arch = t.path().join("arch");
    let capture = std::fs::read(common::fixture("demo.pcap")).unwrap();
    let rec = start(
        backend,
        &arch,
        &["--allow", "127.0.0.1/32", "--max-streams", "1"],
    );
    let addr = rec.addr();

    // The outsider: the recorder closes it without reading; whatever the kernel took from it
    // before the close is never a stream.
    let mut out = connect_from([127, 0, 0, 2], &addr);
    out.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = out.write_all(&capture[..24]);
    let mut b = [0u8; 1];
    match out.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the outsider was not closed: {other:?}\n{}", rec.log()),
    }

    let mut good = connect_from([127, 0, 0, 1], &addr);
    good.write_all(&capture).unwrap();
    drop(good);
    let (st, log) = rec.wait(Duration::from_secs(60));
    assert!(st.success(), "{st}\n{log}");
    assert!(
        log.contains("zcap: refusing a connection from 127.0.0.2: it is not in --allow"),
        "the refusal is logged:\n{log}"
    );
    let summary = log
        .lines()
        .find(|l| l.starts_with("zcap: rx: ") && l.contains("connection(s)"))
        .unwrap_or_else(|| panic!("no receive summary:\n{log}"));
    assert!(
        summary.contains("1 connection(s) refused: not in --allow"),
        "the refusal is counted: {summary}"
    );
    assert!(
        !log.contains("without --allow"),
        "no exposure warning on loopback with --allow:\n{log}"
    );
    // Exactly the allowed stream, byte for byte.
    assert_streams(&arch, &[capture], &log);
}

for_each_backend!(a_peer_outside_allow_is_refused_and_an_allowed_one_records);

/// Listening beyond loopback with no `--allow` says, in one line, what is exposed.
#[test]
fn listening_off_loopback_without_allow_warns_once() {
    let t = common::tempdir();
    let mut cmd = common::zcap();
    cmd.args(["record", "--listen", "0.0.0.0:0", "--rx", "recv", "-o"])
        .arg(t.path().join("arch"));
    let rec = common::start_cmd(cmd);
    let port = rec.port;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&std::fs::read(common::fixture("demo.pcap")).unwrap())
        .unwrap();
    drop(s);
    // SIGTERM ends it; the warning was printed before the listening line.
    sigterm(rec.pid());
    let (_, log) = rec.wait(Duration::from_secs(60));
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("without --allow"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning line:\n{log}");
    assert!(
        warnings[0].contains("anyone who can reach this port can write into the archive"),
        "{}",
        warnings[0]
    );
}

fn sigterm(pid: i32) {
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}
