//! The benchmark harness (tools/bench/run) on a tiny corpus, once, so that it cannot rot.
//! Figures from this run mean nothing (a few MB, a debug zcap, a shared machine); what is
//! checked is that every case runs, every output holds every packet, and the report is
//! written. Every zcap case, network recorders included, must run; only a peer the machine
//! lacks (tcpreplay, for instance) may be reported unavailable.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn bench_harness_runs_end_to_end_on_a_tiny_corpus() {
    for tool in [
        "python3", "socat", "zstd", "tcpdump", "dumpcap", "editcap", "mergecap",
    ] {
        if !common::need_tool(tool) {
            return;
        }
    }
    let work = common::tempdir();
    let started = Instant::now();
    let out = Command::new(common::repo().join("tools/bench/run"))
        .args(["--tiny", "--runs", "1", "--no-install", "--zcap"])
        .arg(env!("CARGO_BIN_EXE_zcap"))
        .arg("--workdir")
        .arg(work.path())
        .output()
        .expect("run tools/bench/run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tools/bench/run --tiny failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the tiny run took {:?}; it must stay well under a minute",
        started.elapsed()
    );

    // The report is printed and written, with a table row per case of both corpora.
    assert!(stdout.contains("## Ingest: realistic mix"), "{stdout}");
    assert!(
        stdout.contains("## Ingest: all 1514-byte frames"),
        "{stdout}"
    );
    assert!(stdout.contains("## Replay"), "{stdout}");
    assert!(stdout.contains("## Query"), "{stdout}");
    let results = work.path().join("results");
    let run = std::fs::read_dir(&results)
        .expect("results directory")
        .next()
        .expect("one results run")
        .expect("readable")
        .path();
    assert!(run.join("results.md").is_file());
    let json = std::fs::read_to_string(run.join("results.json")).expect("results.json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("results.json is JSON");

    // Peers and zcap's file ingest always run here; each must have measured a throughput
    // and kept every packet.
    for corpus in ["realistic", "full"] {
        let cases = &v["ingest"][corpus]["cases"];
        for case in [
            "socat-null",
            "socat-file",
            "zstd-sock",
            "tcpdump",
            "tcpdump-C",
            "dumpcap",
            "zstd-T1",
            "zcap-read-zstd1",
            "zcap-read-none",
        ] {
            let s = &cases[case]["summary"];
            assert_eq!(s["status"], "ok", "{corpus}/{case}: {s}");
            assert!(
                s["mb_s"]["median"].as_f64().unwrap_or(0.0) > 0.0,
                "{corpus}/{case}: {s}"
            );
        }
        for (id, c) in cases.as_object().expect("cases") {
            let status = c["summary"]["status"].as_str().unwrap_or("?");
            let peer_absent = status == "unavailable" && !id.starts_with("zcap");
            assert!(
                status == "ok" || peer_absent,
                "{corpus}/{id}: {}",
                c["summary"]
            );
        }
    }
    // Every file under the work directory except the results is cleaned up.
    let left: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "results")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
