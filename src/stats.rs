//! Recording statistics for people and pipelines: a live line on stderr when it is a
//! terminal (streams, packets, bytes, rate, area in use), one JSON object per interval on
//! stdout with `--stats-json`, and the receive side of the final summary. Reads the
//! backends' [`RxStats`] and the writer's [`WriterStats`]; changes neither.

use crate::area::Area;
use crate::rx::RxStats;
use crate::units::human_bytes;
use crate::writer::WriterStats;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The receive area of the running recorder, for "area in use" (set by the engine).
static AREA: Mutex<Option<Weak<Area>>> = Mutex::new(None);

/// Lets the stats line report how much of `area` is lent out.
pub fn publish_area(area: &Arc<Area>) {
    *AREA.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::downgrade(area));
}

pub fn area_use() -> Option<(usize, usize)> {
    let g = AREA.lock().unwrap_or_else(|p| p.into_inner());
    let a = g.as_ref()?.upgrade()?;
    Some((a.lent_bytes(), a.len()))
}

/// One reading of every counter.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Snapshot {
    pub secs: f64,
    pub streams_open: u64,
    pub streams_total: u64,
    pub packets: u64,
    pub bytes_in: u64,
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub segments: u64,
    pub stream_errors: u64,
    pub starved: u64,
    pub area_in_use: u64,
    pub area_size: u64,
    pub disk_full_events: u64,
    pub blocked_secs: f64,
    /// Live capture: packets the kernel's rings saw, dropped, and ring-full events.
    pub kernel_packets: u64,
    pub kernel_drops: u64,
    pub ring_freezes: u64,
}

impl Snapshot {
    pub fn take(rx: &RxStats, w: &WriterStats, started: Instant) -> Snapshot {
        let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let (lent, len) = area_use().unwrap_or((0, 0));
        Snapshot {
            secs: started.elapsed().as_secs_f64(),
            streams_open: ld(&rx.streams_open),
            streams_total: ld(&rx.streams_opened),
            packets: ld(&w.packets),
            bytes_in: ld(&rx.bytes),
            raw_bytes: ld(&w.raw_bytes),
            stored_bytes: ld(&w.stored_bytes),
            segments: ld(&w.segments),
            stream_errors: ld(&w.stream_errors),
            starved: ld(&rx.starved),
            area_in_use: lent as u64,
            area_size: len as u64,
            disk_full_events: ld(&w.disk_full_events),
            blocked_secs: ld(&w.blocked_ns) as f64 / 1e9,
            kernel_packets: ld(&rx.capture_packets),
            kernel_drops: ld(&rx.capture_drops),
            ring_freezes: ld(&rx.capture_freezes),
        }
    }

    /// Receive rate in MB/s between `prev` and `self`.
    pub fn rate(&self, prev: &Snapshot) -> f64 {
        let dt = (self.secs - prev.secs).max(1e-9);
        self.bytes_in.saturating_sub(prev.bytes_in) as f64 / dt / 1e6
    }

    /// The live line (no newline).
    pub fn line(&self, prev: &Snapshot) -> String {
        format!(
            "zcap: {} open / {} streams, {} packets, {} in, {} stored, {:.1} MB/s, area {} of {} in use{}{}",
            self.streams_open,
            self.streams_total,
            self.packets,
            human_bytes(self.bytes_in),
            human_bytes(self.stored_bytes),
            self.rate(prev),
            human_bytes(self.area_in_use),
            human_bytes(self.area_size),
            if self.starved > prev.starved { ", backpressure" } else { "" },
            if self.kernel_packets > 0 {
                format!(", kernel dropped {} of {}", self.kernel_drops, self.kernel_packets)
            } else {
                String::new()
            },
        )
    }

    /// One JSON object (one line) for `--stats-json`.
    pub fn json(&self, prev: &Snapshot) -> String {
        serde_json::json!({
            "t": (self.secs * 1000.0).round() / 1000.0,
            "streams_open": self.streams_open,
            "streams_total": self.streams_total,
            "packets": self.packets,
            "bytes_in": self.bytes_in,
            "raw_bytes": self.raw_bytes,
            "stored_bytes": self.stored_bytes,
            "segments": self.segments,
            "stream_errors": self.stream_errors,
            "mb_per_s": (self.rate(prev) * 1000.0).round() / 1000.0,
            "area_in_use": self.area_in_use,
            "area_size": self.area_size,
            "disk_full_events": self.disk_full_events,
            "blocked_s": self.blocked_secs,
            "starved": self.starved,
            "kernel_packets": self.kernel_packets,
            "kernel_drops": self.kernel_drops,
            "ring_freezes": self.ring_freezes,
        })
        .to_string()
    }
}

/// The stats thread of a running `record`; [`Live::finish`] stops it.
pub struct Live {
    quit: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Live {
    /// Starts the live line (stderr is a terminal) and/or, with `json`, one JSON line per
    /// `interval` on stdout (`--stats-json`); starts nothing when neither is wanted.
    pub fn start(json: bool, interval: Duration, rx: Arc<RxStats>, w: Arc<WriterStats>) -> Live {
        let tty = std::io::stderr().is_terminal();
        let quit = Arc::new(AtomicBool::new(false));
        if !tty && !json {
            return Live { quit, thread: None };
        }
        let interval = interval.max(Duration::from_millis(50));
        let q = Arc::clone(&quit);
        let started = Instant::now();
        let thread = std::thread::Builder::new()
            .name("zcap-stats".into())
            .spawn(move || {
                let mut prev = Snapshot::take(&rx, &w, started);
                let mut next = Instant::now() + interval;
                while !q.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50).min(interval));
                    if Instant::now() < next {
                        continue;
                    }
                    next += interval;
                    let s = Snapshot::take(&rx, &w, started);
                    if tty {
                        eprint!("\r\x1b[K{}", s.line(&prev));
                    }
                    if json {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{}", s.json(&prev));
                        let _ = out.flush();
                    }
                    prev = s;
                }
                if tty {
                    eprint!("\r\x1b[K");
                }
            })
            .ok();
        Live { quit, thread }
    }

    /// Stops the thread and clears the live line, so the summary starts on a clean line.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.quit.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The receive side of the final summary: one line, or nothing when there was no network
/// source (e.g. `record --read`). It says "nothing received was lost" only when every byte
/// received is in the archive.
pub fn rx_summary(rx: &RxStats, w: &WriterStats) -> Option<String> {
    let opened = rx.streams_opened.load(Ordering::Relaxed);
    let refused = rx.refused.load(Ordering::Relaxed);
    let not_allowed = rx.not_allowed.load(Ordering::Relaxed);
    if opened == 0 && refused == 0 && not_allowed == 0 {
        return None;
    }
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let mut line = format!(
        "zcap: rx: {opened} connection(s), {} received in {} chunks",
        human_bytes(get(&rx.bytes)),
        get(&rx.chunks),
    );
    let starved = get(&rx.starved);
    if starved > 0 {
        line += &format!(
            "; backpressure engaged {starved} time(s) (the writer was slower than the senders)"
        );
    }
    let held = get(&rx.admission_held);
    if held > 0 {
        line += &format!(
            "; new connections waited in the listen backlog {held} time(s) (the area was nearly full)"
        );
    }
    if not_allowed > 0 {
        line += &format!("; {not_allowed} connection(s) refused: not in --allow");
    }
    if refused > 0 {
        line += &format!("; {refused} connection(s) refused by the connection limits");
    }
    let accept_errors = get(&rx.accept_errors);
    if accept_errors > 0 {
        line += &format!("; accept failed {accept_errors} time(s)");
    }
    let (cut, lost) = (get(&w.streams_cut), get(&w.discarded_bytes));
    if cut > 0 {
        line += &format!("; {cut} stream(s) cut by the limits");
    }
    if lost > 0 {
        line += &format!("; {lost} received bytes not archived (each named above)");
    } else {
        line += "; nothing received was lost";
    }
    let copied = get(&w.copied_bytes);
    if copied > 0 {
        line += &format!(
            "; {} of incomplete units copied out of the area",
            human_bytes(copied)
        );
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_has_every_counter_and_the_interval_rate() {
        let prev = Snapshot {
            secs: 1.0,
            bytes_in: 1_000_000,
            ..Default::default()
        };
        let s = Snapshot {
            secs: 2.0,
            bytes_in: 3_000_000,
            packets: 10,
            streams_open: 2,
            streams_total: 3,
            area_in_use: 4096,
            area_size: 65536,
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&s.json(&prev)).unwrap();
        assert_eq!(v["mb_per_s"], 2.0);
        assert_eq!(v["packets"], 10);
        assert_eq!(v["streams_open"], 2);
        assert_eq!(v["area_in_use"], 4096);
        assert_eq!(v["kernel_drops"], 0);
        let line = s.line(&prev);
        assert!(!line.contains("kernel dropped"), "{line}");
        let c = Snapshot {
            kernel_packets: 100,
            kernel_drops: 7,
            ..s
        };
        assert!(c.line(&prev).contains("kernel dropped 7 of 100"));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&c.json(&prev)).unwrap()["kernel_drops"],
            7
        );
        assert!(line.contains("2 open / 3 streams"), "{line}");
        assert!(line.contains("2.0 MB/s"), "{line}");
    }

    #[test]
    fn rx_summary_mentions_backpressure_only_when_it_happened() {
        let rx = RxStats::default();
        let w = WriterStats::default();
        assert_eq!(rx_summary(&rx, &w), None);
        rx.add(&rx.streams_opened, 2);
        assert!(!rx_summary(&rx, &w).unwrap().contains("backpressure"));
        rx.add(&rx.starved, 3);
        assert!(rx_summary(&rx, &w)
            .unwrap()
            .contains("backpressure engaged 3"));
    }

    #[test]
    fn rx_summary_says_nothing_was_lost_only_when_true() {
        let rx = RxStats::default();
        let w = WriterStats::default();
        rx.add(&rx.streams_opened, 1);
        assert!(rx_summary(&rx, &w)
            .unwrap()
            .contains("nothing received was lost"));
        w.streams_cut.fetch_add(2, Ordering::Relaxed);
        w.discarded_bytes.fetch_add(1234, Ordering::Relaxed);
        rx.add(&rx.refused, 5);
        let l = rx_summary(&rx, &w).unwrap();
        assert!(!l.contains("nothing"), "{l}");
        assert!(l.contains("2 stream(s) cut"), "{l}");
        assert!(l.contains("1234 received bytes not archived"), "{l}");
        assert!(l.contains("5 connection(s) refused"), "{l}");
    }
}
