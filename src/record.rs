//! `zcap record`: wires a source (a capture file, or the network engine's backends) to the
//! writer thread, handles SIGINT/SIGTERM (stop taking new data, drain, finalize) and prints
//! the summary. Owns no data path of its own.

use crate::area::Area;
use crate::cli::{RecordArgs, RxKind, DEFAULT_LISTEN, MIN_BUFFERS};
use crate::rx::{self, Events, RxStats};
use crate::units::{human_bytes, size_text};
use crate::writer::{self, Config, StreamReport, Writer, WriterStats};
use anyhow::Context;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Instant;

/// Events in flight between backends and the writer. The area bounds memory; this only
/// bounds the queue of chunk descriptors.
const EVENT_QUEUE: usize = 65_536;

pub fn writer_config(a: &RecordArgs) -> Config {
    Config {
        segment_size: a.segment_size,
        segment_time: a.segment_time,
        frame_size: a.frame_size,
        compress: a.compress,
        max_bytes: a.max_bytes,
        max_age: a.max_age,
        compress_threads: a.compress_threads as usize,
        stall_timeout: a.stall_timeout,
        idle_timeout: Some(a.idle_timeout),
        header_timeout: Some(a.header_timeout),
        min_free: a.min_free,
        ..Config::new(&a.output)
    }
}

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
        iface: a.iface.clone(),
        queue: a.queue,
        force: a.force,
        steer: a.steer,
        hugepages: a.hugepages,
        area_size: a.area_size,
        buf_size: a.buf_size,
        max_streams: a.max_streams,
        max_conns: a.max_conns.map(|n| n as usize),
        max_conns_per_peer: a.max_conns_per_peer as usize,
    }
}

/// Runs `zcap record`. Returns false when the `--read` input was bad (exit status 1).
pub fn run(a: &RecordArgs) -> anyhow::Result<bool> {
    check_buffers(a.area_size, a.buf_size)?;
    let stats = Arc::new(WriterStats::default());
    let w = Writer::open(writer_config(a), Arc::clone(&stats))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
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
    let live = crate::stats::Live::start(
        a.stats_json,
        a.stats_interval,
        Arc::clone(&rx_stats),
        Arc::clone(&stats),
    );
    let source = if let Some(path) = &a.read {
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
        rx::engine::run(&engine_config(a), tx, &stop, &rx_stats).map_err(anyhow::Error::from)
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
    source.context("receiving")?;
    summarize(a, &reports, &stats, started.elapsed().as_secs_f64());
    if let Some(l) = crate::stats::rx_summary(&rx_stats, &stats) {
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
    eprintln!(
        "zcap: {} stream(s), {packets} packets, {} in, {} stored (ratio {:.2}), {} segment(s), {:.1} MB/s, into {}{disk}{}",
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
