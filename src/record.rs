//! `zcap record`: wires a source (a capture file, or the network engine's backends) to the
//! writer thread, handles SIGINT/SIGTERM (stop taking new data, drain, finalize) and prints
//! the summary. Owns no data path of its own.

use crate::area::Area;
use crate::cli::{
    CaptureArgs, KeepLocal, RecordArgs, RxKind, UploadOpts, DEFAULT_LISTEN, MIN_BUFFERS,
};
use crate::remote::upload;
use crate::rx::{self, Events, RxStats};
use crate::units::{human_bytes, size_text};
use crate::writer::{self, Config, Cutoff, StreamReport, Writer, WriterStats};
use anyhow::Context;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events in flight between backends and the writer. The area bounds memory; this only
/// bounds the queue of chunk descriptors.
const EVENT_QUEUE: usize = 65_536;

pub fn writer_config(a: &RecordArgs) -> Config {
    Config {
        segment_size: a.segment_size,
        segment_time: a.segment_time,
        segment_align: a.align,
        frame_size: a.frame_size,
        compress: a.compress,
        max_bytes: a.max_bytes,
        max_age: a.max_age,
        compress_threads: a.compress_threads as usize,
        stall_timeout: a.stall_timeout,
        idle_timeout: Some(a.idle_timeout),
        header_timeout: Some(a.header_timeout),
        min_free: a.min_free,
        flow_index: !a.no_flow_index,
        flow_cutoff: a.flow_cutoff.map(|bytes| Cutoff {
            bytes,
            keep_headers: a.cutoff_keep_headers,
        }),
        ..Config::new(&a.output)
    }
}

/// The uploader's settings and what to keep locally (`--keep-local`), from the command line.
pub fn upload_config(
    url: &str,
    o: &UploadOpts,
    drain: Duration,
) -> anyhow::Result<(upload::Config, Option<u64>, Option<Duration>)> {
    let url = crate::remote::S3Url::parse(url).map_err(anyhow::Error::msg)?;
    let cfg = upload::Config {
        url,
        settings: o.s3.settings(),
        part_size: o.upload_part_size,
        remote_max_age: o.remote_max_age,
        drain,
    };
    let (bytes, age) = match o.keep_local {
        Some(KeepLocal::Bytes(b)) => (Some(b), None),
        Some(KeepLocal::Age(a)) => (None, Some(a)),
        None => (None, None),
    };
    Ok((cfg, bytes, age))
}

/// How long a recorder stopping keeps retrying a failing store for what is left to upload.
const UPLOAD_DRAIN: Duration = Duration::from_secs(30);

/// The network engine's settings from the command line.
pub fn engine_config(a: &RecordArgs) -> rx::engine::Config {
    use rx::engine::Backend;
    rx::engine::Config {
        rx: match a.rx {
            RxKind::Auto => Backend::Auto,
            RxKind::Zcrx => Backend::Zcrx,
            RxKind::Ring => Backend::Ring,
            RxKind::Recv => Backend::Recv,
            RxKind::ZcrxEmulated => Backend::ZcrxEmulated,
        },
        listen: a
            .listen
            .clone()
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
        connect: a.connect.clone(),
        iface: a.zcrx_iface.clone(),
        queue: a.queue,
        force: a.force,
        steer: a.steer,
        hugepages: a.hugepages,
        area_size: a.area_size,
        buf_size: a.buf_size,
        max_streams: a.max_streams,
        max_conns: a.max_conns.map(|n| n as usize),
        max_conns_per_peer: a.max_conns_per_peer as usize,
        allow: a.allow.clone(),
        drop_to: None,
        tls: None,
        tls_client: None,
    }
}

/// Live capture's settings from the command line.
pub fn capture_config(a: &CaptureArgs) -> rx::afpacket::Config {
    rx::afpacket::Config {
        interfaces: a.interface.clone(),
        promisc: !a.no_promisc,
        // tcpdump's -s 0: the whole packet.
        snaplen: if a.snaplen == 0 {
            rx::afpacket::DEFAULT_SNAPLEN
        } else {
            a.snaplen
        },
        fanout: a.fanout,
        fanout_group: a.fanout_group,
        block_size: a.block_size as u32,
        block_count: a.block_count,
        block_timeout: a.block_timeout,
        filter: (!a.filter.is_empty()).then(|| a.filter.join(" ")),
    }
}

/// `-d`: the filter as compiled for each interface, like `tcpdump -d`.
pub(crate) fn print_listings(a: &CaptureArgs) -> anyhow::Result<bool> {
    let listings = rx::afpacket::listings(&capture_config(a))?;
    for (iface, lines) in &listings {
        if listings.len() > 1 {
            println!("{iface}:");
        }
        for l in lines {
            println!("{l}");
        }
    }
    Ok(true)
}

/// Runs `zcap record`. Returns false when the `--read` input was bad (exit status 1).
pub fn run(a: &RecordArgs) -> anyhow::Result<bool> {
    check_buffers(a.area_size, a.buf_size)?;
    // First of all: a SIGINT/SIGTERM during the setup below stops the recorder cleanly
    // (nothing is received, what exists is finalized) rather than killing it half way.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let hup_usr1 = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGUSR1,
    ])
    .context("installing SIGHUP/SIGUSR1 handlers")?;
    if a.capture.dump_filter {
        return print_listings(&a.capture);
    }
    if !a.capture.interface.is_empty() && a.rx != RxKind::Auto {
        anyhow::bail!(
            "--rx picks the receive backend of --listen/--connect; -i always captures with AF_PACKET"
        );
    }
    // Capture rings open before the archive does: a missing interface or a ring too large
    // fails the start without creating anything.
    let rings = if a.capture.interface.is_empty() {
        None
    } else {
        let cfg = capture_config(&a.capture);
        let rings = rx::afpacket::open(&cfg)?;
        eprintln!(
            "zcap: rx: afpacket ({} ring(s) of {} × {} on {}{})",
            rings.len(),
            cfg.block_count,
            size_text(a.capture.block_size),
            a.capture.interface.join(", "),
            if cfg.promisc { ", promiscuous" } else { "" }
        );
        Some(rings)
    };
    let mut captured = Vec::new();
    let stats = Arc::new(WriterStats::default());
    let drop_to = a
        .user
        .as_deref()
        .map(|u| crate::privdrop::Target::resolve(u, &a.output))
        .transpose()?;
    let mut cfg = writer_config(a);
    cfg.sign = a
        .sign_key
        .as_deref()
        .map(crate::archive::sign::Signer::load)
        .transpose()
        .context("--sign-key")?;
    let upload = match &a.upload {
        Some(url) => {
            let (ucfg, keep_bytes, keep_age) = upload_config(url, &a.upload_opts, UPLOAD_DRAIN)?;
            let offload = Arc::new(crate::archive::retention::Offload::new(
                ucfg.url.to_string(),
                keep_bytes,
                keep_age,
            ));
            cfg.offload = Some(Arc::clone(&offload));
            Some((ucfg, offload))
        }
        None => {
            let o = &a.upload_opts;
            if o.keep_local.is_some() || o.remote_max_age.is_some() {
                anyhow::bail!("--keep-local and --remote-max-age apply to uploads: add --upload s3://BUCKET/PREFIX");
            }
            None
        }
    };
    let rotate = Arc::new(std::sync::atomic::AtomicU64::new(0));
    cfg.rotate = Some(Arc::clone(&rotate));
    let w = Writer::open(cfg, Arc::clone(&stats))?;
    let uploader = match upload {
        Some((ucfg, offload)) => {
            eprintln!("zcap: uploading to {} as segments are finalized", ucfg.url);
            Some(upload::Uploader::start(
                &a.output,
                ucfg,
                offload,
                w.books(),
            )?)
        }
        None => None,
    };
    w.stop_on(Arc::clone(&stop));
    let mut senders = Vec::new();
    let mut writers = Vec::new();
    for (i, w) in w.into_workers(a.writers as usize)?.into_iter().enumerate() {
        let (tx, events) = sync_channel(EVENT_QUEUE);
        senders.push(tx);
        let writer_stop = Arc::clone(&stop);
        writers.push(
            std::thread::Builder::new()
                .name(format!("zcap-writer-{i}"))
                .spawn(move || {
                    let r = writer::run(w, events);
                    // A dead writer must not leave a backend waiting for buffers forever.
                    if r.is_err() {
                        writer_stop.store(true, Ordering::Relaxed);
                    }
                    r
                })?,
        );
    }
    let tx = Events::new(senders);
    let started = Instant::now();
    let rx_stats = Arc::new(RxStats::default());
    let _metrics = match &a.metrics {
        Some(addr) => {
            let m = crate::metrics::serve(
                addr,
                crate::metrics::Sources {
                    rx: Arc::clone(&rx_stats),
                    writer: Arc::clone(&stats),
                    upload: uploader.as_ref().map(|u| Arc::clone(&u.stats)),
                },
            )?;
            eprintln!("zcap: metrics on http://{}/metrics", m.addr);
            Some(m)
        }
        None => None,
    };
    let signals = on_signals(
        hup_usr1,
        rotate,
        Arc::clone(&rx_stats),
        Arc::clone(&stats),
        started,
    )?;
    let live = crate::stats::Live::start(
        a.stats_json,
        a.stats_interval,
        Arc::clone(&rx_stats),
        Arc::clone(&stats),
    );
    let source = if let Some(rings) = rings {
        if let Some(t) = &drop_to {
            crate::privdrop::apply(t)?;
        }
        let r = rx::afpacket::run(rings, 1, &tx, &stop, &rx_stats);
        drop(tx);
        r.map(|reps| captured = reps).map_err(anyhow::Error::from)
    } else if let Some(path) = &a.read {
        let area =
            Area::new(a.area_size as usize, a.hugepages).context("mapping the receive area")?;
        let (input, label): (Box<dyn Read>, String) = if path.as_os_str() == "-" {
            (Box::new(std::io::stdin().lock()), "stdin".into())
        } else {
            let f =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let stem = path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = stem
                .trim_end_matches(".pcapng")
                .trim_end_matches(".pcap")
                .to_string();
            (Box::new(f), stem)
        };
        let name = a.stream_name.clone().unwrap_or_else(|| {
            format!(
                "{label}-{}",
                crate::archive::compact_time(std::time::SystemTime::now())
            )
        });
        if let Some(t) = &drop_to {
            crate::privdrop::apply(t)?;
        }
        let r = rx::file::run(
            input,
            name,
            1,
            &area,
            a.buf_size as usize,
            &tx,
            &rx_stats,
            &stop,
        );
        drop(tx);
        r.map(|_| ()).map_err(anyhow::Error::from)
    } else {
        let tls = match (&a.tls_cert, &a.tls_key) {
            (Some(c), Some(k)) => Some(
                rx::tls::server_config(c, k, a.tls_client_ca.as_deref())
                    .context("--tls-cert/--tls-key/--tls-client-ca")?,
            ),
            _ => None,
        };
        let tls_client = a
            .tls_ca
            .as_deref()
            .map(rx::tls::client_config)
            .transpose()
            .context("--tls-ca")?;
        let cfg = rx::engine::Config {
            drop_to: drop_to.clone(),
            tls,
            tls_client,
            ..engine_config(a)
        };
        rx::engine::run(&cfg, tx, &stop, &rx_stats).map_err(anyhow::Error::from)
    };
    let mut reports = Vec::new();
    for w in writers {
        reports.extend(
            w.join()
                .map_err(|_| anyhow::anyhow!("a writer thread panicked"))?
                .context("writing the archive")?,
        );
    }
    live.finish();
    signals.close();
    let uploaded = uploader.map(|u| u.finish());
    source.context("receiving")?;
    summarize(a, &reports, &stats, started.elapsed().as_secs_f64());
    if let (Some(s), Some(url)) = (&uploaded, &a.upload) {
        eprintln!(
            "zcap: upload: {} segment(s), {} uploaded to {url}{}",
            s.uploaded,
            human_bytes(s.bytes),
            if s.left == 0 && s.lost == 0 {
                "; the remote manifest is up to date".to_string()
            } else {
                format!("; {} segment(s) not uploaded (see above)", s.left + s.lost)
            }
        );
    }
    if !captured.is_empty() {
        let unarchived = stats.discarded_bytes.load(Ordering::Relaxed);
        let lost = (unarchived > 0)
            .then(|| format!("{unarchived} captured bytes not archived (named above)"));
        eprintln!("{}", capture_summary(&a.capture, &captured, lost));
    } else if let Some(l) = crate::stats::rx_summary(&rx_stats, &stats) {
        eprintln!("{l}");
    }
    let unwritten = stats.unwritten_bytes.load(Ordering::Relaxed);
    let gave_up = stats.gave_up.load(Ordering::Relaxed);
    if unwritten > 0 || gave_up > 0 {
        anyhow::bail!(
            "the disk of {} stayed full through the shutdown: {unwritten} bytes received ({}) could not be written and {gave_up} write(s) were given up (see above); segments left as .partial or without a manifest line are recovered by `zcap verify --repair {}`",
            a.output.display(),
            human_bytes(unwritten),
            a.output.display()
        );
    }
    // A bad file is a failed job; a bad sender is an event a network recorder logs and
    // survives (each such stream's error is in the log and the manifest).
    Ok(a.read.is_none() || reports.iter().all(|r| r.error.is_none()))
}

/// SIGHUP and SIGUSR1 (their handlers are installed first thing, so neither kills a recorder
/// still setting up; a SIGHUP then rotates nothing, there is nothing open), on a thread of
/// their own: SIGHUP bumps the writers' rotation counter
/// (every open segment is cut at their next tick), SIGUSR1 prints the stats line once to
/// stderr (rates since the start), as dd and tcpdump do.
fn on_signals(
    mut signals: signal_hook::iterator::Signals,
    rotate: Arc<std::sync::atomic::AtomicU64>,
    rx: Arc<RxStats>,
    w: Arc<WriterStats>,
    started: Instant,
) -> anyhow::Result<signal_hook::iterator::Handle> {
    use signal_hook::consts::SIGHUP;
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("zcap-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    rotate.fetch_add(1, Ordering::Relaxed);
                    eprintln!("zcap: SIGHUP: finalizing every open segment");
                } else {
                    let now = crate::stats::Snapshot::take(&rx, &w, started);
                    let zero = crate::stats::Snapshot::default();
                    eprintln!("{}", now.line(&zero));
                }
            }
        })?;
    Ok(handle)
}

/// The area must hold [`MIN_BUFFERS`] buffers; clap has checked each flag's own range.
fn check_buffers(area: u64, buf: u64) -> anyhow::Result<()> {
    if buf == 0 || area / buf < MIN_BUFFERS {
        anyhow::bail!(
            "--buf-size {} is too large for --area-size {}: the area must hold at least {MIN_BUFFERS} \
             buffers (a --buf-size of at most {})",
            size_text(buf),
            size_text(area),
            size_text(area / MIN_BUFFERS)
        );
    }
    Ok(())
}

/// The kernel's side of live capture: what the rings saw and dropped, and when anything was
/// dropped, what to change. `lost` names what was captured and then not kept (not archived,
/// not sent); "nothing was lost" only when there is no such thing and no kernel drop.
pub(crate) fn capture_summary(
    a: &CaptureArgs,
    reps: &[rx::afpacket::RingReport],
    lost: Option<String>,
) -> String {
    let (mut seen, mut drops, mut freezes) = (0u64, 0u64, 0u64);
    for r in reps {
        seen += r.stats.packets;
        drops += r.stats.drops;
        freezes += r.stats.freezes;
    }
    let mut line = format!(
        "zcap: capture: the kernel saw {seen} packets on {} ring(s), delivered {}, dropped {drops}",
        reps.len(),
        seen - drops.min(seen)
    );
    let nothing_lost = lost.is_none();
    if let Some(l) = lost {
        line.push_str("; ");
        line.push_str(&l);
    }
    if drops == 0 {
        if nothing_lost {
            line.push_str("; nothing was lost");
        }
        return line;
    }
    let per: Vec<String> = reps
        .iter()
        .filter(|r| r.stats.drops > 0)
        .map(|r| format!("{} {}", r.name, r.stats.drops))
        .collect();
    line.push_str(&format!(
        " ({:.2}%; {}), ring full {freezes} time(s). To drop fewer: more blocks (--block-count {}, \
         now {} × {} per ring), more capture threads (--fanout {}), faster or no compression \
         (--compress), or capture less (a filter, a smaller -s)",
        drops as f64 * 100.0 / seen.max(1) as f64,
        per.join(", "),
        a.block_count.saturating_mul(4).min(65_536),
        a.block_count,
        size_text(a.block_size),
        (a.fanout * 2).min(64),
    ));
    line
}

fn summarize(a: &RecordArgs, reports: &[StreamReport], s: &WriterStats, secs: f64) {
    let raw = s.raw_bytes.load(Ordering::Relaxed);
    let stored = s.stored_bytes.load(Ordering::Relaxed);
    let packets = s.packets.load(Ordering::Relaxed);
    let bad = reports.iter().filter(|r| r.error.is_some()).count();
    let full = s.disk_full_events.load(Ordering::Relaxed);
    let disk = if full > 0 {
        format!(
            "; disk full {full} time(s): {} segment(s) deleted for space, blocked {:.1} s",
            s.deleted_for_space.load(Ordering::Relaxed),
            s.blocked_ns.load(Ordering::Relaxed) as f64 / 1e9
        )
    } else {
        String::new()
    };
    let kept = match s.retention_refused.load(Ordering::Relaxed) {
        0 => String::new(),
        n => format!(
            "; retention left {n} segment(s) in place that do not match the manifest (see above; `zcap verify` checks them)"
        ),
    };
    let (cut_packets, cut_bytes) = (
        s.cut_packets.load(Ordering::Relaxed),
        s.cut_bytes.load(Ordering::Relaxed),
    );
    let kept = match cut_packets {
        0 => kept,
        n => format!(
            "{kept}; --flow-cutoff cut {n} packet(s), {} not stored (counted per flow: `zcap ls`, `zcap flows`)",
            human_bytes(cut_bytes)
        ),
    };
    let kept = match s.index_errors.load(Ordering::Relaxed) {
        0 => kept,
        n => format!(
            "{kept}; {n} segment(s) without a flow index (see above; `zcap index` builds them)"
        ),
    };
    eprintln!(
        "zcap: {} stream(s), {packets} packets, {} in, {} stored (ratio {:.2}), {} segment(s), {:.1} MB/s, into {}{disk}{kept}{}",
        reports.len(),
        human_bytes(raw),
        human_bytes(stored),
        if stored > 0 { raw as f64 / stored as f64 } else { 0.0 },
        s.segments.load(Ordering::Relaxed),
        raw as f64 / secs.max(1e-9) / 1e6,
        a.output.display(),
        if bad > 0 { format!("; {bad} stream(s) ended with an error (see above)") } else { String::new() },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn ring(name: &str, packets: u64, drops: u64) -> rx::afpacket::RingReport {
        rx::afpacket::RingReport {
            name: name.into(),
            iface: "eth0".into(),
            stats: rx::afpacket::Stats {
                packets,
                drops,
                freezes: drops.min(1),
            },
            blocks: 1,
        }
    }

    #[test]
    fn snaplen_zero_is_the_whole_packet_as_in_tcpdump() {
        let cli =
            crate::cli::Cli::try_parse_from(["zcap", "record", "-i", "eth0", "-s", "0"]).unwrap();
        let crate::cli::Command::Record(a) = cli.command else {
            panic!()
        };
        assert_eq!(capture_config(&a.capture).snaplen, 262_144);
    }

    #[test]
    fn the_capture_summary_says_what_was_dropped_and_what_to_change() {
        let cli =
            crate::cli::Cli::try_parse_from(["zcap", "record", "-i", "eth0", "--fanout", "2"])
                .unwrap();
        let crate::cli::Command::Record(a) = cli.command else {
            panic!()
        };
        let quiet = capture_summary(&a.capture, &[ring("a", 10, 0), ring("b", 5, 0)], None);
        assert_eq!(
            quiet,
            "zcap: capture: the kernel saw 15 packets on 2 ring(s), delivered 15, dropped 0; \
             nothing was lost"
        );
        let l = capture_summary(&a.capture, &[ring("a", 100, 25), ring("b", 100, 0)], None);
        assert!(
            l.contains("delivered 175, dropped 25 (12.50%; a 25)"),
            "{l}"
        );
        assert!(l.contains("ring full 1 time(s)"), "{l}");
        for fix in [
            "--block-count 256",
            "now 64 × 4MiB",
            "--fanout 4",
            "--compress",
            "a filter",
        ] {
            assert!(l.contains(fix), "{fix}: {l}");
        }
        let l = capture_summary(
            &a.capture,
            &[ring("a", 10, 0)],
            Some("99 bytes gone".into()),
        );
        assert!(
            l.contains("; 99 bytes gone") && !l.contains("nothing"),
            "{l}"
        );
    }

    #[test]
    fn the_area_must_hold_four_buffers() {
        assert!(check_buffers(1 << 20, 256 << 10).is_ok());
        assert!(check_buffers(64 << 20, 64 << 10).is_ok());
        let e = check_buffers(1 << 20, 512 << 10).unwrap_err().to_string();
        assert_eq!(
            e,
            "--buf-size 512KiB is too large for --area-size 1MiB: the area must hold at least 4 \
             buffers (a --buf-size of at most 256KiB)"
        );
        assert!(check_buffers(4 << 20, 16 << 20).is_err());
        assert!(check_buffers(4 << 20, 0).is_err());
    }
}
