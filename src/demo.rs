//! `zcap demo`: the whole life of a capture in one command, on built-in defaults. Starts a
//! recorder (this same binary, `record --listen 127.0.0.1:0 --max-streams 1`) as a child
//! process, replays the bundled capture (fixtures/demo.pcap, compiled in) to it over
//! loopback as PCAP-over-IP, waits for the recorder to finalize, then lists and verifies the
//! fresh archive and shows what to try next.

use crate::cli::DemoArgs;
use crate::replay::{self, Opts, Src};
use anyhow::{bail, Context};
use clap::ValueEnum;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// 2000 packets over 10 s of realistic Ethernet traffic (see fixtures/README.md).
static DEMO_PCAP: &[u8] = include_bytes!("../fixtures/demo.pcap");

/// Kills the recorder if the demo fails half way.
struct Recorder(Child);

impl Drop for Recorder {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn run(a: &DemoArgs) -> anyhow::Result<bool> {
    let dir = match &a.output {
        Some(d) => d.clone(),
        None => fresh_dir()?,
    };
    let rx =
        a.rx.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_else(|| "auto".into());
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "zcap demo: recording the bundled capture ({} bytes, pcap) over loopback into {}",
        DEMO_PCAP.len(),
        dir.display()
    )?;
    writeln!(out)?;
    out.flush()?;

    // 1. The recorder, on a port the kernel picks; it says which on stderr.
    let exe = std::env::current_exe().context("finding the zcap binary")?;
    let mut child = Command::new(exe)
        .args(["record", "--listen", "127.0.0.1:0", "--max-streams", "1"])
        .args(["--rx", &rx, "-o"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the recorder")?;
    let stderr = child.stderr.take().expect("piped");
    let mut rec = Recorder(child);
    let (tx, rx_lines) = mpsc::channel::<String>();
    let relay = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("  [recorder] {line}");
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx_lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(a) = line.strip_prefix("zcap: listening on ") {
                    break a.trim().to_string();
                }
            }
            Err(_) => bail!("the recorder did not start listening (see its messages above)"),
        }
    };

    // 2. The sender: the bundled capture as PCAP-over-IP, as fast as the recorder takes it.
    let sent = replay::send_to(
        &Src::Bytes(DEMO_PCAP),
        &addr,
        &Opts {
            loops: 1,
            ..Opts::default()
        },
    )?;
    eprintln!(
        "  [sender]   sent {} packets ({} bytes) to {addr}",
        sent.packets, sent.bytes
    );

    // 3. The recorder ends after its one stream (--max-streams 1) and finalizes the archive.
    let status = wait(&mut rec.0, Duration::from_secs(30))?;
    let _ = relay.join();
    if !status.success() {
        bail!("the recorder failed ({status}); see its messages above");
    }

    // 4. What is in the archive, and is it intact?
    writeln!(out, "\n$ zcap ls {}", dir.display())?;
    out.flush()?;
    drop(out);
    crate::archive::read::ls(&crate::archive::read::LsOptions {
        loc: crate::archive::location::Location::Dir(dir.clone()),
        json: false,
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n$ zcap verify {}", dir.display())?;
    out.flush()?;
    drop(out);
    let ok = crate::archive::verify::run(&crate::archive::verify::Options {
        loc: crate::archive::location::Location::Dir(dir.clone()),
        repair: false,
        json: false,
        key: None,
        head: None,
    })?;
    let d = dir.display();
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nTry next:")?;
    for (cmd, why) in [
        (format!("zcap cat {d} | tcpdump -nn -r - -c 5"), "read it back with stock tools"),
        (
            format!("zcap cat {d} --from 2025-11-25T08:00:02Z --to 2025-11-25T08:00:03Z -w one-second.pcap"),
            "one second of it, found through the frame index",
        ),
        (format!("zcap replay {d} --to HOST:PORT --speed 1"), "send it on at the recorded pace"),
        (
            "zcap record   # then: tcpdump -i eth0 -w - | nc 127.0.0.1 57012".to_string(),
            "record your own traffic",
        ),
    ] {
        writeln!(out, "  # {why}\n  {cmd}")?;
    }
    Ok(ok)
}

fn wait(child: &mut Child, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            bail!("the recorder did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A new directory under the temp dir, named after the time and this process.
fn fresh_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir();
    let stamp = crate::archive::compact_time(SystemTime::now());
    for n in 0..100 {
        let p = base.join(format!("zcap-demo-{stamp}-{}-{n}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", p.display())),
        }
    }
    bail!("cannot create a fresh directory under {}", base.display())
}
