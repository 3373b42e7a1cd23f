//! `record --metrics ADDR:PORT`: a Prometheus endpoint (`GET /metrics`, text format 0.0.4)
//! served by a thread of its own. A collector reads the counters the receive side, the
//! writer and the uploader keep anyway ([`RxStats`], [`WriterStats`], [`UploadStats`]) at
//! scrape time: nothing on the data path knows the endpoint exists.
//!
//! Names follow Prometheus conventions: `zcap_` prefix, base units in the name (`_bytes`,
//! `_seconds`), `_total` for counters. Per-stream series (`stream` label) exist for the
//! streams being written; a stream that ended leaves them, its bytes stay in the totals.

use crate::remote::upload::UploadStats;
use crate::rx::RxStats;
use crate::writer::{Latency, WriterStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What the endpoint reports on.
#[derive(Debug, Clone)]
pub struct Sources {
    pub rx: Arc<RxStats>,
    pub writer: Arc<WriterStats>,
    pub upload: Option<Arc<UploadStats>>,
}

#[derive(Debug)]
struct Zcap(Sources);

fn ld(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &Latency,
) -> Result<(), std::fmt::Error> {
    // Per-bucket counts: the encoder makes them cumulative.
    let mut count = 0;
    let mut buckets = Vec::with_capacity(h.buckets.len());
    for (i, b) in h.buckets.iter().enumerate() {
        count += ld(b);
        let bound = Latency::BOUNDS.get(i).copied().unwrap_or(f64::INFINITY);
        buckets.push((bound, ld(b)));
    }
    let sum = ld(&h.sum_ns) as f64 / 1e9;
    e.encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
}

impl Collector for Zcap {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (rx, w) = (&self.0.rx, &self.0.writer);
        let e = &mut e;
        counter(
            e,
            "zcap_received_bytes",
            "Bytes received from every source.",
            ld(&rx.bytes),
        )?;
        counter(
            e,
            "zcap_packets",
            "Packets written to the archive.",
            ld(&w.packets),
        )?;
        counter(
            e,
            "zcap_raw_bytes",
            "Stream bytes written to the archive, before compression.",
            ld(&w.raw_bytes),
        )?;
        counter(
            e,
            "zcap_stored_bytes",
            "Bytes of segment files written (compressed).",
            ld(&w.stored_bytes),
        )?;
        counter(
            e,
            "zcap_frames",
            "Compressed frames written.",
            ld(&w.frames),
        )?;
        counter(e, "zcap_segments", "Segments finalized.", ld(&w.segments))?;
        counter(
            e,
            "zcap_rotations",
            "Segments cut on demand (SIGHUP) or at a wall-clock boundary (--align).",
            ld(&w.rotations),
        )?;
        counter(e, "zcap_streams", "Streams opened.", ld(&rx.streams_opened))?;
        gauge(
            e,
            "zcap_streams_open",
            "Streams open now.",
            ld(&rx.streams_open) as i64,
        )?;
        counter(e, "zcap_backpressure_events", "Times the receive side had no free buffer to post: the writer fell behind and senders were slowed.", ld(&rx.starved))?;
        counter(
            e,
            "zcap_admission_held",
            "Times accepting new connections waited because the receive area was nearly full.",
            ld(&rx.admission_held),
        )?;
        let (lent, len) = crate::stats::area_use().unwrap_or((0, 0));
        gauge(
            e,
            "zcap_area_in_use_bytes",
            "Bytes of the receive area lent out (received, not yet persisted).",
            lent as i64,
        )?;
        gauge(
            e,
            "zcap_area_size_bytes",
            "Size of the receive area.",
            len as i64,
        )?;
        counter(
            e,
            "zcap_kernel_packets",
            "Live capture: packets the kernel's rings saw.",
            ld(&rx.capture_packets),
        )?;
        counter(
            e,
            "zcap_kernel_drops",
            "Live capture: packets the kernel dropped (no free ring block).",
            ld(&rx.capture_drops),
        )?;
        counter(
            e,
            "zcap_deleted_segments",
            "Segments retention removed from the local disk (deleted or evicted after upload).",
            ld(&w.deleted_segments),
        )?;
        counter(
            e,
            "zcap_discarded_bytes",
            "Bytes received and not archived (cut or malformed streams), each named in the log.",
            ld(&w.discarded_bytes),
        )?;
        counter(
            e,
            "zcap_disk_blocked_seconds",
            "Time writers waited for disk space.",
            ld(&w.blocked_ns) / 1_000_000_000,
        )?;
        histogram(
            e,
            "zcap_segment_finalize_seconds",
            "Time to finalize a segment: trailer, fsync, rename, manifest line.",
            &w.finalize,
        )?;
        counter(
            e,
            "zcap_flow_cut_packets",
            "Packets --flow-cutoff dropped or truncated.",
            ld(&w.cut_packets),
        )?;
        counter(
            e,
            "zcap_flow_cut_bytes",
            "Bytes of packets --flow-cutoff did not store.",
            ld(&w.cut_bytes),
        )?;
        {
            let mut m =
                e.encode_descriptor("zcap_errors", "Errors, by kind.", None, MetricType::Counter)?;
            for (kind, v) in [
                ("stream", ld(&w.stream_errors)),
                ("stream_cut", ld(&w.streams_cut)),
                ("connection_refused", ld(&rx.refused)),
                ("not_allowed", ld(&rx.not_allowed)),
                ("accept", ld(&rx.accept_errors)),
                ("disk_full", ld(&w.disk_full_events)),
                ("retention_refused", ld(&w.retention_refused)),
                ("flow_index", ld(&w.index_errors)),
                (
                    "upload",
                    self.0.upload.as_ref().map_or(0, |u| ld(&u.failures)),
                ),
            ] {
                ConstCounter::new(v).encode(m.encode_family(&[("kind", kind)])?)?;
            }
        }
        let open: Vec<(String, Arc<crate::writer::StreamCounters>)> = w
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        type Field = fn(&crate::writer::StreamCounters) -> &AtomicU64;
        let per_stream: [(&str, &str, Field); 5] = [
            (
                "zcap_stream_packets",
                "Packets written, per open stream.",
                |c| &c.packets,
            ),
            (
                "zcap_stream_raw_bytes",
                "Stream bytes written, per open stream.",
                |c| &c.raw_bytes,
            ),
            (
                "zcap_stream_stored_bytes",
                "Compressed bytes written, per open stream.",
                |c| &c.stored_bytes,
            ),
            (
                "zcap_stream_frames",
                "Frames written, per open stream.",
                |c| &c.frames,
            ),
            (
                "zcap_stream_segments",
                "Segments finalized, per open stream.",
                |c| &c.segments,
            ),
        ];
        for (name, help, field) in per_stream {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (stream, c) in &open {
                ConstCounter::new(ld(field(c)))
                    .encode(m.encode_family(&[("stream", stream.as_str())])?)?;
            }
        }
        if let Some(u) = &self.0.upload {
            counter(
                e,
                "zcap_upload_segments",
                "Segments uploaded and confirmed.",
                ld(&u.segments),
            )?;
            counter(
                e,
                "zcap_upload_bytes",
                "Bytes uploaded and confirmed.",
                ld(&u.bytes),
            )?;
            gauge(
                e,
                "zcap_upload_queue_segments",
                "Segments finalized and not uploaded yet.",
                ld(&u.queued) as i64,
            )?;
            let oldest = ld(&u.oldest_pending);
            let lag = if oldest == 0 {
                0
            } else {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                now.saturating_sub(oldest)
            };
            gauge(
                e,
                "zcap_upload_lag_seconds",
                "Age of the oldest segment not uploaded yet (0: none).",
                lag as i64,
            )?;
            counter(
                e,
                "zcap_upload_remote_deleted",
                "Remote segments deleted by --remote-max-age.",
                ld(&u.remote_deleted),
            )?;
        }
        Ok(())
    }
}

/// The endpoint's thread; dropping it stops the server.
pub struct Server {
    server: Arc<tiny_http::Server>,
    quit: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub addr: std::net::SocketAddr,
}

/// Starts serving `/metrics` on `addr` (HOST:PORT; port 0 picks one, see [`Server::addr`]).
pub fn serve(addr: &str, src: Sources) -> anyhow::Result<Server> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("--metrics {addr}: cannot listen: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow::anyhow!("--metrics {addr}: not an IP address"))?;
    let server = Arc::new(server);
    let quit = Arc::new(AtomicBool::new(false));
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Zcap(src)));
    let (s, q) = (Arc::clone(&server), Arc::clone(&quit));
    let thread = std::thread::Builder::new()
        .name("zcap-metrics".into())
        .spawn(move || {
            while !q.load(Ordering::Relaxed) {
                let req = match s.recv_timeout(Duration::from_millis(200)) {
                    Ok(Some(r)) => r,
                    Ok(None) => continue,
                    Err(_) => break,
                };
                let resp = match (req.method(), req.url()) {
                    (tiny_http::Method::Get, "/metrics") => {
                        let mut body = String::new();
                        match prometheus_client::encoding::prometheus_text::encode(
                            &mut body, &registry,
                        ) {
                            Ok(()) => tiny_http::Response::from_string(body).with_header(
                                tiny_http::Header::from_bytes(
                                    &b"Content-Type"[..],
                                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE
                                        .as_bytes(),
                                )
                                .expect("a valid header"),
                            ),
                            Err(_) => tiny_http::Response::from_string("encoding failed\n")
                                .with_status_code(500),
                        }
                    }
                    (_, "/metrics") => {
                        tiny_http::Response::from_string("only GET\n").with_status_code(405)
                    }
                    _ => tiny_http::Response::from_string("zcap: metrics are at /metrics\n")
                        .with_status_code(404),
                };
                let _ = req.respond(resp);
            }
        })?;
    Ok(Server {
        server,
        quit,
        thread: Some(thread),
        addr: bound,
    })
}

impl Drop for Server {
    fn drop(&mut self) {
        self.quit.store(true, Ordering::Relaxed);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
