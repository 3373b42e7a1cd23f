//! PCAP-over-IP over TLS: stock TLS clients (socat OPENSSL:, openssl s_client) record byte
//! for byte on `record --listen --tls-cert/--tls-key`; a plaintext sender on the TLS port gets
//! one clear line and no stream, and the other senders are untouched.

mod common;

use common::{assert_streams, fixture, need_tool, pki, start, tempdir};
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A self-signed certificate for 127.0.0.1, made by openssl.
fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=zcap-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (cert, key)
}

#[test]
fn stock_tls_senders_record_byte_exact_and_plaintext_is_refused() {
    if !need_tool("openssl") || !need_tool("socat") {
        return;
    }
    let t = tempdir();
    let (cert, key) = self_signed(t.path());
    let arch = t.path().join("arch");
    let capture = std::fs::read(fixture("demo.pcap")).unwrap();
    let rec = start(
        "recv",
        &arch,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--max-streams",
            "2",
        ],
    );
    let port = rec.port;

    // Plaintext on the TLS port: closed after the failed handshake, nothing recorded.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = plain.write_all(&capture);
    drop(plain);

    let socat = Command::new("socat")
        .arg("-u")
        .arg(fixture("demo.pcap"))
        .arg(format!(
            "OPENSSL:127.0.0.1:{port},cafile={}",
            cert.display()
        ))
        .output()
        .unwrap();
    assert!(
        socat.status.success(),
        "socat: {}",
        String::from_utf8_lossy(&socat.stderr)
    );

    let s_client = Command::new("openssl")
        .args(["s_client", "-quiet", "-no_ign_eof", "-verify_return_error"])
        .arg("-CAfile")
        .arg(&cert)
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::fs::File::open(fixture("demo.pcap")).unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        s_client.status.success(),
        "s_client: {}",
        String::from_utf8_lossy(&s_client.stderr)
    );

    let (st, log) = rec.wait(Duration::from_secs(60));
    assert!(st.success(), "{st}\n{log}");
    assert!(log.contains("zcap: rx: tls"), "{log}");
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("TLS connection from") && l.contains("nothing recorded"))
        .collect();
    assert_eq!(
        refusals.len(),
        1,
        "one line for the plaintext sender:\n{log}"
    );
    assert!(refusals[0].contains("plaintext sender"), "{}", refusals[0]);
    assert_streams(&arch, &[capture.clone(), capture], &log);
}

/// `zcap record --connect 127.0.0.1:PORT --tls-ca CA` of one stream into `arch`.
fn record_connect_tls(port: u16, ca: &str, arch: &Path) -> std::process::Output {
    common::zcap()
        .args([
            "record",
            "--connect",
            &format!("127.0.0.1:{port}"),
            "--tls-ca",
            ca,
        ])
        .args(["--max-streams", "1", "-o"])
        .arg(arch)
        .output()
        .unwrap()
}

fn socat_to(port: u16, opts: &str) -> std::process::Output {
    Command::new("socat")
        .arg("-u")
        .arg(fixture("demo.pcap"))
        .arg(format!("OPENSSL:127.0.0.1:{port},{opts}"))
        .output()
        .unwrap()
}

#[test]
fn mutual_tls_records_the_known_sensor_under_its_subject_and_refuses_the_rest() {
    if !need_tool("openssl") || !need_tool("socat") {
        return;
    }
    let t = tempdir();
    let d = t.path();
    pki(d);
    let arch = d.join("arch");
    let p = |f: &str| d.join(f).to_str().unwrap().to_string();
    let rec = start(
        "recv",
        &arch,
        &[
            "--tls-cert",
            &p("server.pem"),
            "--tls-key",
            &p("server.key"),
            "--tls-client-ca",
            &p("ca.pem"),
            "--max-streams",
            "1",
        ],
    );
    let ca = format!("cafile={}", p("ca.pem"));
    // No client certificate, then one the CA never issued: refused, nothing recorded.
    let _ = socat_to(rec.port, &ca);
    let _ = socat_to(
        rec.port,
        &format!("{ca},cert={},key={}", p("rogue.pem"), p("rogue.key")),
    );
    let good = socat_to(
        rec.port,
        &format!("{ca},cert={},key={}", p("client.pem"), p("client.key")),
    );
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let (st, log) = rec.wait(Duration::from_secs(60));
    assert!(st.success(), "{st}\n{log}");
    let refused = log
        .lines()
        .filter(|l| l.contains("TLS handshake failed") && l.contains("nothing recorded"))
        .count();
    assert_eq!(
        refused, 2,
        "the two unknown senders are refused, one line each:\n{log}"
    );
    let got = common::streams(&arch);
    assert_eq!(got.len(), 1, "{log}");
    let (name, bytes) = got.iter().next().unwrap();
    assert!(
        name.starts_with("CN_sensor-1-127.0.0.1_"),
        "the subject names the stream: {name}"
    );
    assert!(
        *bytes == std::fs::read(fixture("demo.pcap")).unwrap(),
        "byte for byte"
    );
}

#[test]
fn connect_speaks_tls_to_a_socat_openssl_listen_server() {
    if !need_tool("openssl") || !need_tool("socat") {
        return;
    }
    let t = tempdir();
    let d = t.path();
    pki(d);
    let port = common::free_port();
    let p = |f: &str| d.join(f).to_str().unwrap().to_string();
    let mut server = Command::new("socat")
        .arg("-u")
        .arg(fixture("demo.pcap"))
        .arg(format!(
            "OPENSSL-LISTEN:{port},reuseaddr,cert={},key={},verify=0",
            p("server.pem"),
            p("server.key")
        ))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let arch = d.join("arch");
    let o = record_connect_tls(port, &p("ca.pem"), &arch);
    let _ = server.wait();
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{log}");
    assert!(log.contains("zcap: rx: tls (connecting to"), "{log}");
    assert_streams(&arch, &[std::fs::read(fixture("demo.pcap")).unwrap()], &log);
}

/// zcap at both ends: `replay --to --tls-ca` into `record --tls-cert`.
#[test]
fn replay_sends_over_tls_into_a_tls_recorder() {
    if !need_tool("openssl") {
        return;
    }
    let t = tempdir();
    let d = t.path();
    pki(d);
    let p = |f: &str| d.join(f).to_str().unwrap().to_string();
    let arch = d.join("arch");
    let rec = start(
        "recv",
        &arch,
        &[
            "--tls-cert",
            &p("server.pem"),
            "--tls-key",
            &p("server.key"),
            "--max-streams",
            "2",
        ],
    );
    let to = rec.addr();
    // A server whose certificate the given CA did not issue is refused by the sender.
    let o = common::zcap()
        .arg("replay")
        .arg(fixture("demo.pcap"))
        .args(["--to", &to, "--tls-ca", &p("rogue.pem")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("over TLS"), "{err}");
    for extra in [&[][..], &["--speed", "1000"][..]] {
        let o = common::zcap()
            .arg("replay")
            .arg(fixture("demo.pcap"))
            .args(["--to", &to, "--tls-ca", &p("ca.pem")])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let (st, log) = rec.wait(Duration::from_secs(60));
    assert!(st.success(), "{st}\n{log}");
    let demo = std::fs::read(fixture("demo.pcap")).unwrap();
    assert_streams(&arch, &[demo.clone(), demo], &log);
}

/// zcap at both ends the other way round: `replay --serve --tls-cert` to `record --connect
/// --tls-ca`.
#[test]
fn a_tls_replay_server_feeds_a_connecting_recorder() {
    if !need_tool("openssl") {
        return;
    }
    let t = tempdir();
    let d = t.path();
    pki(d);
    let p = |f: &str| d.join(f).to_str().unwrap().to_string();
    let port = common::free_port();
    let mut server = common::zcap()
        .arg("replay")
        .arg(fixture("demo.pcap"))
        .args([
            "--serve",
            &format!("127.0.0.1:{port}"),
            "--max-clients",
            "1",
        ])
        .args([
            "--tls-cert",
            &p("server.pem"),
            "--tls-key",
            &p("server.key"),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let arch = d.join("arch");
    let o = record_connect_tls(port, &p("ca.pem"), &arch);
    let st = server.wait().unwrap();
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success() && st.success(), "{log}");
    assert_streams(&arch, &[std::fs::read(fixture("demo.pcap")).unwrap()], &log);
}
