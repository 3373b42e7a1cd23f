//! Helpers shared by the integration tests (`mod common;` in a file under tests/).
//!
//! Stock tools (tcpdump, tshark, zstd) are the oracle. A test that needs one calls
//! [`need_tool`] first and returns early when it is missing; with the `CI` environment
//! variable set a missing tool is a failure instead, because CI installs them all
//! (see `.ci/run`). [`need_root`] works the same way for tests that need euid 0.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository root (where Cargo.toml is).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `Command` for the zcap binary cargo built for these tests.
pub fn zcap() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zcap"))
}

/// Path of a committed capture under fixtures/ (see fixtures/README.md); panics if absent.
pub fn fixture(name: &str) -> PathBuf {
    let p = repo().join("fixtures").join(name);
    assert!(p.is_file(), "fixture {} does not exist", p.display());
    p
}

/// What tools/gen-pcap.py reported on stderr.
#[derive(Debug, Default, Clone)]
pub struct Generated {
    /// Byte offset of the first bad unit, for `--corrupt` runs.
    pub corrupt_offset: Option<u64>,
    /// Packet records before the bad unit, for `--corrupt` runs.
    pub good_records: Option<u64>,
    pub stderr: String,
}

/// Runs `python3 tools/gen-pcap.py ARGS -o OUT` and panics if it fails.
///
/// For `--corrupt KIND` runs the returned value carries the offset and record count the
/// generator printed (`gen-pcap: corrupt=KIND offset=N good_records=M`).
pub fn gen(args: &[&str], out: &Path) -> Generated {
    let script = repo().join("tools").join("gen-pcap.py");
    let output = Command::new("python3")
        .arg(&script)
        .args(args)
        .arg("-o")
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", script.display()));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "gen-pcap.py {args:?} failed ({}):\n{stderr}",
        output.status
    );
    let mut g = Generated {
        stderr,
        ..Default::default()
    };
    if let Some(line) = g
        .stderr
        .lines()
        .find(|l| l.starts_with("gen-pcap: corrupt="))
    {
        for field in line.split_whitespace() {
            if let Some(v) = field.strip_prefix("offset=") {
                g.corrupt_offset = v.parse().ok();
            } else if let Some(v) = field.strip_prefix("good_records=") {
                g.good_records = v.parse().ok();
            }
        }
        assert!(
            g.corrupt_offset.is_some() && g.good_records.is_some(),
            "cannot parse the generator's corruption report: {line}"
        );
    }
    g
}

/// The running test's name, for SKIP lines.
fn test_name() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("test")
        .to_string()
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Prints the SKIP line and returns false, or panics under CI where nothing may be skipped.
fn skip(reason: &str) -> bool {
    let test = test_name();
    if in_ci() {
        panic!("{test}: {reason}, and CI is set: CI must run every test");
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "SKIP {test}: {reason}");
    false
}

/// Finds an executable named `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// True when the tool is on PATH. Otherwise prints
/// `SKIP <test>: <tool> not installed (CI installs it)` and returns false —
/// or panics if the `CI` environment variable is set.
pub fn need_tool(name: &str) -> bool {
    which(name).is_some() || skip(&format!("{name} not installed (CI installs it)"))
}

/// True when `python3 -c 'import NAME'` works (e.g. `duckdb`, which CI installs from PyPI).
/// Otherwise prints `SKIP <test>: ...` and returns false — or panics if `CI` is set.
pub fn need_python_module(name: &str) -> bool {
    let ok = Command::new("python3")
        .arg("-c")
        .arg(format!("import {name}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok || skip(&format!(
        "python3 module {name} not installed (CI installs it: python3 -m pip install {name})"
    ))
}

/// True when running as root (euid 0). Otherwise prints `SKIP <test>: needs root` and
/// returns false — or panics if the `CI` environment variable is set.
pub fn need_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    euid == 0 || skip(&format!("needs root (euid is {euid})"))
}

/// Runs a command to completion and panics, showing its output, unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Packets tcpdump reads from a pcap or pcapng file (`tcpdump -r F --count`), asserting that
/// tcpdump exits 0, i.e. read the whole file without complaint. libpcap 1.10 refuses pcapng
/// files whose interfaces have different link types; count those with [`tshark_count`].
pub fn tcpdump_count(path: &Path) -> usize {
    // `--count` prints only "N packets", whatever the payloads look like.
    let out = run_ok(Command::new("tcpdump").arg("-r").arg(path).arg("--count"));
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_suffix(" packets").or(l.strip_suffix(" packet")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "tcpdump --count printed no count for {}: {text}",
                path.display()
            )
        })
}

/// Packets tshark reads from a capture file, asserting that tshark exits 0.
pub fn tshark_count(path: &Path) -> usize {
    let out = run_ok(Command::new("tshark").arg("-r").arg(path).args([
        "-T",
        "fields",
        "-e",
        "frame.number",
    ]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .count()
}

/// Decompresses a file with the stock zstd CLI (`zstd -dc`), asserting that it exits 0.
pub fn zstd_decompress(path: &Path) -> Vec<u8> {
    run_ok(Command::new("zstd").args(["-q", "-d", "-c"]).arg(path)).stdout
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Polls `f` every 50 ms until it holds; panics naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh temporary directory, removed when the value is dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("zcap-test-")
        .tempdir()
        .expect("create a temporary directory")
}

/// A `zcap record --listen 127.0.0.1:0 --rx BACKEND` child process and everything it printed on stderr.
pub struct Recorder {
    pub child: Child,
    pub port: u16,
    log: Arc<Mutex<String>>,
}

pub fn start(backend: &str, dir: &Path, extra: &[&str]) -> Recorder {
    let mut cmd = zcap();
    cmd.args(["record", "--listen", "127.0.0.1:0", "--rx", backend, "-o"])
        .arg(dir)
        .args(extra);
    start_cmd(cmd)
}

/// Starts a recorder from a prepared command (e.g. `sh -c 'ulimit -n 1024; exec zcap ...'`)
/// that listens on a port it announces.
pub fn start_cmd(mut cmd: Command) -> Recorder {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start zcap record");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    let l = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("zcap: listening on ") {
                let _ = tx.send(a.rsplit(':').next().unwrap().parse::<u16>().unwrap());
            }
            let mut g = l.lock().unwrap();
            g.push_str(&line);
            g.push('\n');
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            let _ = child.kill();
            panic!(
                "the recorder printed no `listening on` line:\n{}",
                log.lock().unwrap()
            )
        });
    Recorder { child, port, log }
}

impl Recorder {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits for the recorder to exit on its own (`--max-streams`).
    pub fn wait(mut self, limit: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50)); // let the log reader finish
                return (s, self.log());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the recorder did not finish in {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

/// Every stream of the archive: name → its bytes as `zcap cat --stream` gives them back.
pub fn streams(dir: &Path) -> HashMap<String, Vec<u8>> {
    let out = run_ok(zcap().arg("ls").arg(dir).arg("--json"));
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["status"] == "ok")
        .filter_map(|v| v["stream"].as_str().map(String::from))
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| {
            let out = run_ok(zcap().arg("cat").arg(dir).args(["--stream", &n]));
            (n, out.stdout)
        })
        .collect()
}

/// Asserts that the archive holds exactly the `want` streams, byte for byte.
pub fn assert_streams(dir: &Path, want: &[Vec<u8>], log: &str) {
    let got = streams(dir);
    let mut got: Vec<&Vec<u8>> = got.values().collect();
    got.sort_by_key(|b| (b.len(), (*b).clone()));
    let mut want: Vec<&Vec<u8>> = want.iter().collect();
    want.sort_by_key(|b| (b.len(), (*b).clone()));
    assert_eq!(
        got.len(),
        want.len(),
        "streams in the archive (recorder log:\n{log})"
    );
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g == w,
            "stream {i}: {} bytes recorded, {} sent, first difference at {:?}\n{log}",
            g.len(),
            w.len(),
            g.iter().zip(w.iter()).position(|(a, b)| a != b)
        );
    }
}

/// Defines `mod ring`, `mod recv` and `mod zcrx_emulated`, each with one `#[test]` per named
/// function, calling it with that backend's `--rx` value (`#[macro_use] mod common;`).
#[allow(unused_macros)]
macro_rules! for_each_backend {
    ($($test:ident),* $(,)?) => {
        mod ring {
            $( #[test] fn $test() { super::$test("ring") } )*
        }
        mod recv {
            $( #[test] fn $test() { super::$test("recv") } )*
        }
        /// The zcrx backend against the emulated kernel half: the same engine and writer.
        mod zcrx_emulated {
            $( #[test] fn $test() { super::$test("zcrx-emulated") } )*
        }
    };
}

pub fn openssl(args: &[&str], dir: &Path) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate `CN=sensor-1` it
/// issued, and a self-signed client certificate `CN=rogue`, in `dir`.
pub fn pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-days",
        "1",
        "-subj",
        "/CN=zcap-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    ca.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=keyCertSign",
    ]);
    openssl(&ca, dir);
    for (name, cn, ext) in [
        (
            "server",
            "/CN=127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "/CN=sensor-1", "extendedKeyUsage=clientAuth\n"),
    ] {
        let mut req = vec!["req", "-new"];
        req.extend(ec);
        let (key, csr) = (format!("{name}.key"), format!("{name}.csr"));
        req.extend(["-subj", cn, "-keyout", &key, "-out", &csr]);
        openssl(&req, dir);
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let (pem, extf) = (format!("{name}.pem"), format!("{name}.ext"));
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &extf,
                "-out",
                &pem,
            ],
            dir,
        );
    }
    let mut rogue = vec!["req", "-x509"];
    rogue.extend(ec);
    rogue.extend([
        "-days",
        "1",
        "-subj",
        "/CN=rogue",
        "-keyout",
        "rogue.key",
        "-out",
        "rogue.pem",
    ]);
    openssl(&rogue, dir);
}

/// TCP and UDP conversations: (protocol, lower endpoint, higher endpoint) → (packets
/// lower→higher, higher→lower).
pub type Convs =
    std::collections::BTreeMap<(u8, (std::net::IpAddr, u16), (std::net::IpAddr, u16)), (u64, u64)>;

fn endpoint(s: &str) -> (std::net::IpAddr, u16) {
    let (a, p) = s.rsplit_once(':').unwrap();
    (a.parse().unwrap(), p.parse().unwrap())
}

/// tshark's TCP and UDP conversations of a capture (`tshark -q -z conv,tcp` and `conv,udp`:
/// lines `A <-> B  frames(B→A) bytes unit  frames(A→B) bytes unit …`).
pub fn tshark_convs(path: &Path) -> Convs {
    let mut c = Convs::new();
    for (proto, name) in [(6u8, "conv,tcp"), (17, "conv,udp")] {
        let out = run_ok(
            Command::new("tshark")
                .arg("-r")
                .arg(path)
                .args(["-q", "-z", name]),
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let tok: Vec<&str> = line.split_whitespace().collect();
            if tok.get(1) != Some(&"<->") {
                continue;
            }
            assert!(tok.len() >= 10, "unexpected tshark line: {line}");
            let (a, b) = (endpoint(tok[0]), endpoint(tok[2]));
            let b_to_a: u64 = tok[3].parse().unwrap();
            let a_to_b: u64 = tok[6].parse().unwrap();
            let (key, v) = if a <= b {
                ((proto, a, b), (a_to_b, b_to_a))
            } else {
                ((proto, b, a), (b_to_a, a_to_b))
            };
            let e = c.entry(key).or_default();
            e.0 += v.0;
            e.1 += v.1;
        }
    }
    c
}

/// The s3s-fs binary: on PATH, or where `cargo install` puts it.
pub fn s3s_fs() -> Option<PathBuf> {
    which("s3s-fs").or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
        let p = home.join("bin/s3s-fs");
        p.is_file().then_some(p)
    })
}

/// [`s3s_fs`], or a skip (a failure under CI) when it is not installed.
pub fn need_s3s_fs() -> Option<PathBuf> {
    let p = s3s_fs();
    if p.is_none() {
        need_tool("s3s-fs");
    }
    p
}

/// `zcap verify ARCH EXTRA…`, its output whatever the exit status.
pub fn verify(arch: &Path, extra: &[&str]) -> Output {
    zcap()
        .arg("verify")
        .arg(arch)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run zcap verify")
}
