//! Command-line definitions: every subcommand, flag and help text, and nothing else.
//! tcpdump's letters where the meaning is the same; sizes take units, durations `90s`/`5m`,
//! times RFC 3339 or epoch seconds.

use crate::units::{parse_duration, parse_size, parse_time};
use crate::writer::{Compress, MinFree};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:57012";
pub const DEFAULT_ARCHIVE: &str = "zcap-archive";

#[derive(Debug, Parser)]
#[command(
    name = "zcap",
    version,
    about = "Record packet streams into compressed, time-indexed, tamper-evident pcap archives",
    long_about = "zcap records PCAP-over-IP streams (a pcap or pcapng stream over TCP, as \
`tcpdump -w - | nc HOST 57012` sends) and capture files into an archive of zstd-compressed \
pcap segments that stock tools read (`zstd -dc SEG | tcpdump -r -`), indexed by time and \
chained by SHA-256 in a manifest. On NICs that support it, the bytes arrive by io_uring \
zero-copy receive (zcrx); elsewhere by io_uring provided-buffer rings or plain recv.",
    after_help = "Examples:
  zcap record                                   listen on 127.0.0.1:57012 into ./zcap-archive
  tcpdump -i eth0 -w - | nc 127.0.0.1 57012     feed it from a sensor
  zcap record -r trace.pcap -o arch             ingest a capture file
  zcap ls arch
  zcap cat arch --from 2026-11-25T10:02:00Z --to 2026-11-25T10:03:00Z | tshark -r -
  zcap verify arch
  zcap replay arch --to 127.0.0.1:57012 --speed 2
  zcap demo                                     try it all on a bundled capture"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record PCAP-over-IP streams or a capture file into an archive.
    Record(RecordArgs),
    /// List an archive's segments: streams, time ranges, packets, bytes, compression ratio.
    Ls(LsArgs),
    /// Write an archive's packets (optionally a time window) to stdout as pcap or pcapng.
    Cat(CatArgs),
    /// Check hashes, frames and the manifest chain; --repair recovers after a crash.
    Verify(VerifyArgs),
    /// Send an archive or capture file as PCAP-over-IP, or serve it to whoever connects.
    Replay(ReplayArgs),
    /// Can this host do zero-copy receive? Reports what is present and what is missing.
    Doctor(DoctorArgs),
    /// Replay a bundled capture over loopback into a fresh archive, then list and verify it.
    Demo(DemoArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RxKind {
    /// The best that works here: zcrx when --iface is given and the NIC supports it, else
    /// ring, else recv; says which and why.
    Auto,
    /// io_uring zero-copy receive on --iface/--queue (needs a capable NIC and CAP_NET_ADMIN).
    Zcrx,
    /// io_uring multishot recv into a provided-buffer ring in the area.
    Ring,
    /// recv(2) and epoll: for hosts where io_uring is disabled.
    Recv,
    /// The zcrx backend driven by the in-process emulation of the kernel's half of the
    /// protocol (tests and benchmarks on hosts without a capable NIC).
    #[value(hide = true)]
    ZcrxEmulated,
}

#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    /// Read a pcap/pcapng capture from FILE ('-' for stdin) instead of listening.
    #[arg(short = 'r', long = "read", value_name = "FILE", conflicts_with_all = ["listen", "connect"])]
    pub read: Option<PathBuf>,

    /// Accept PCAP-over-IP senders on this address (the default source).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,

    /// Connect to a PCAP-over-IP server and record what it sends; reconnects with back-off.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "listen")]
    pub connect: Option<String>,

    /// Archive directory (created if missing; appended to if it exists).
    #[arg(short = 'o', long = "output", value_name = "DIR", default_value = DEFAULT_ARCHIVE)]
    pub output: PathBuf,

    /// Name of the stream recorded from --read (default: the file's name and the start time).
    #[arg(long, value_name = "NAME")]
    pub stream_name: Option<String>,

    /// Receive backend.
    #[arg(long, value_enum, default_value_t = RxKind::Auto)]
    pub rx: RxKind,

    /// Interface whose queue zcrx registers on (zero-copy receive).
    #[arg(long, value_name = "IF")]
    pub iface: Option<String>,

    /// Receive queue of --iface for zcrx; steer the listen port to it (--steer or ethtool).
    #[arg(long, value_name = "Q", default_value_t = 0)]
    pub queue: u32,

    /// Install an ntuple rule steering the listen port to --queue, removed on exit.
    #[arg(long)]
    pub steer: bool,

    /// Back the receive area with 2 MiB huge pages (reserve them with vm.nr_hugepages).
    #[arg(long)]
    pub hugepages: bool,

    /// Size of the receive area all buffers come from; bounds memory with --buf-size.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub area_size: u64,

    /// Size of one receive buffer (ring and recv backends, --read).
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = parse_size)]
    pub buf_size: u64,

    /// Rotate a stream's segment when it reaches this stored size.
    #[arg(short = 'C', long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
    pub segment_size: u64,

    /// Rotate a stream's segment after this long (e.g. 10m).
    #[arg(short = 'G', long, value_name = "DURATION", value_parser = parse_duration)]
    pub segment_time: Option<Duration>,

    /// Raw bytes per compressed frame (the unit of time seeks).
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size)]
    pub frame_size: u64,

    /// zstd, zstd:LEVEL (-7..19) or none.
    #[arg(long, value_name = "ALGO", default_value = "zstd:1")]
    pub compress: Compress,

    /// Delete the oldest segments when the archive exceeds this size (ring buffer).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_bytes: Option<u64>,

    /// Delete segments finalized longer ago than this.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_age: Option<Duration>,

    /// Keep at least this much free on the archive's file system (e.g. 5% or 2GiB): below it,
    /// delete the oldest segments (with --max-bytes/--max-age) or pause and backpressure.
    #[arg(long, value_name = "PERCENT|SIZE")]
    pub min_free: Option<MinFree>,

    /// Print one JSON stats line per interval on stdout, for pipelines.
    #[arg(long)]
    pub stats_json: bool,

    /// Interval of the stats line.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub stats_interval: Duration,

    /// Writer threads: each frames, compresses and persists its share of the streams (one
    /// stream is always one writer's). More help only with several senders.
    #[arg(long, value_name = "N", default_value_t = default_writers(), value_parser = clap::value_parser!(u16).range(1..=64))]
    pub writers: u16,

    /// Stop after this many streams have ended (tests, one-shot jobs).
    #[arg(long, value_name = "N")]
    pub max_streams: Option<u64>,

    /// Cut a stream that holds an incomplete record or block this long without sending a
    /// byte more (what it sent complete is kept).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub stall_timeout: Duration,

    /// Close a connection that sends nothing this long after connecting.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Close a connection that sent its file header but no packet for this long.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Connections at once (default and ceiling: what the descriptor limit allows, two per
    /// connection, after raising the soft limit to the hard one). More are closed at once.
    #[arg(long, value_name = "N")]
    pub max_conns: Option<usize>,

    /// Connections at once from one address; more are closed at once.
    #[arg(long, value_name = "N", default_value_t = crate::rx::limits::DEFAULT_MAX_PER_PEER)]
    pub max_conns_per_peer: usize,
}

/// One writer per core, at most 4: compression is the work that scales.
fn default_writers() -> u16 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4) as u16)
}

#[derive(Debug, Clone, Args)]
pub struct LsArgs {
    /// Archive directory.
    pub dir: PathBuf,
    /// One JSON object per segment, one per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct CatArgs {
    /// Archive directory.
    pub dir: PathBuf,
    /// Only packets at or after this time (RFC 3339 or epoch seconds).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub from: Option<i64>,
    /// Only packets at or before this time.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub to: Option<i64>,
    /// Only these streams (repeat for several); default all.
    #[arg(long, value_name = "NAME")]
    pub stream: Vec<String>,
    /// Write to FILE instead of stdout.
    #[arg(short = 'w', value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Print to stderr how many frames were decompressed (seek efficiency).
    #[arg(long)]
    pub stats: bool,
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Archive directory.
    pub dir: PathBuf,
    /// Recover after a crash: finalize .partial segments, drop a torn manifest line.
    #[arg(long)]
    pub repair: bool,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// An archive directory or a pcap/pcapng file.
    pub src: PathBuf,
    /// Send to this PCAP-over-IP receiver.
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "serve")]
    pub to: Option<String>,
    /// Serve the capture to every client that connects (a PCAP-over-IP server).
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "to")]
    pub serve: Option<String>,
    /// Play at X times the recorded pace (1 = real time).
    #[arg(long, value_name = "X", conflicts_with = "topspeed")]
    pub speed: Option<f64>,
    /// Send as fast as the receiver takes it (the default when --speed is not given).
    #[arg(long)]
    pub topspeed: bool,
    /// Play the capture N times (0 = forever).
    #[arg(long = "loop", value_name = "N", default_value_t = 1)]
    pub loops: u64,
    /// Only packets at or after this time.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub from: Option<i64>,
    /// Only packets at or before this time (`--to` names the destination).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<i64>,
    /// Only these streams of an archive.
    #[arg(long, value_name = "NAME")]
    pub stream: Vec<String>,
    /// With --serve: exit after serving this many clients.
    #[arg(long, value_name = "N")]
    pub max_clients: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Interface to check for zero-copy receive (default: the one with the default route).
    #[arg(long, value_name = "IF")]
    pub iface: Option<String>,
    /// Queue to check.
    #[arg(long, value_name = "Q")]
    pub queue: Option<u32>,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where to create the demo archive (default: a fresh directory under the temp dir).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Receive backend for the demo.
    #[arg(long, value_enum, default_value_t = RxKind::Auto)]
    pub rx: RxKind,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn record_defaults_and_units() {
        let c = Cli::try_parse_from([
            "zcap",
            "record",
            "-C",
            "1GiB",
            "--compress",
            "none",
            "-G",
            "5m",
        ])
        .unwrap();
        let Command::Record(r) = c.command else {
            panic!()
        };
        assert_eq!(r.segment_size, 1 << 30);
        assert_eq!(r.compress, Compress::None);
        assert_eq!(r.segment_time, Some(Duration::from_secs(300)));
        assert_eq!(r.output, PathBuf::from(DEFAULT_ARCHIVE));
        assert_eq!(r.area_size, 64 << 20);
        assert!(
            Cli::try_parse_from(["zcap", "record", "-r", "x", "--listen", "1.2.3.4:5"]).is_err()
        );
        assert!(Cli::try_parse_from(["zcap", "record", "--compress", "gzip"]).is_err());
        let c = Cli::try_parse_from(["zcap", "record", "--min-free", "5%"]).unwrap();
        let Command::Record(r) = c.command else {
            panic!()
        };
        assert_eq!(r.min_free, Some(MinFree::Percent(5.0)));
        assert!(Cli::try_parse_from(["zcap", "record", "--min-free", "150%"]).is_err());
    }

    #[test]
    fn replay_needs_a_destination() {
        assert!(Cli::try_parse_from(["zcap", "replay", "a"]).is_err());
        assert!(Cli::try_parse_from([
            "zcap",
            "replay",
            "a",
            "--to",
            "127.0.0.1:1",
            "--until",
            "5"
        ])
        .is_ok());
    }
}
