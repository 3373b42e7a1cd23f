//! Command-line definitions: every subcommand, flag and help text, and nothing else.
//! tcpdump's letters where the meaning is the same; sizes take units, durations `90s`/`5m`,
//! times RFC 3339 or epoch seconds.

use crate::units::{duration_in, parse_time, size_in, speed_up_to};
use crate::writer::{Compress, MinFree};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:57012";
pub const DEFAULT_ARCHIVE: &str = "zcap-archive";

const SECOND: Duration = Duration::from_secs(1);
const DAY: Duration = Duration::from_secs(86_400);
/// The fastest `--speed`: past this a replay is `--topspeed` in all but name.
const MAX_SPEED: f64 = 1e6;

/// The area must hold at least this many `--buf-size` buffers (checked by `zcap record`). A
/// record pins every buffer it touches until it is complete; the largest (256 KiB) plus the
/// two buffers its ends share with neighbours fits in 4 buffers of a 1 MiB area or more. With
/// one buffer a record that straddles it pins the only buffer and the stream stalls.
pub const MIN_BUFFERS: u64 = 4;

#[derive(Debug, Parser)]
#[command(
    name = "zcap",
    version,
    about = "Record packet streams into compressed, time-indexed, tamper-evident pcap archives",
    long_about = "zcap records PCAP-over-IP streams (a pcap or pcapng stream over TCP, as \
`tcpdump -w - | nc HOST 57012` sends), live interfaces (`-i eth0`, AF_PACKET TPACKET_V3) and \
capture files into an archive of zstd-compressed \
pcap segments that stock tools read (`zstd -dc SEG | tcpdump -r -`), indexed by time and \
chained by SHA-256 in a manifest. On NICs that support it, the bytes arrive by io_uring \
zero-copy receive (zcrx); elsewhere by io_uring provided-buffer rings or plain recv.",
    after_help = "Examples:
  zcap record                                   listen on 127.0.0.1:57012 into ./zcap-archive
  tcpdump -i eth0 -w - | nc 127.0.0.1 57012     feed it from a sensor
  zcap record -i eth0 --fanout 2                capture eth0 live on two threads
  zcap send -i eth0 --to recorder:57012 tcp      a sensor: capture TCP here, record there
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

// Parsed once per run: boxing the record arguments would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record PCAP-over-IP streams, live interfaces (-i) or a capture file into an archive.
    Record(RecordArgs),
    /// List an archive's segments: streams, time ranges, packets, bytes, compression ratio.
    Ls(LsArgs),
    /// Write an archive's packets (optionally a time window, a filter) to stdout as pcap or
    /// pcapng.
    Cat(CatArgs),
    /// List an archive's flows (conversations) from its flow index, like `tshark -z conv`:
    /// addresses, ports, protocol, VLAN, packets and bytes each way, start, duration, cut.
    Flows(FlowsArgs),
    /// Check hashes, frames and the manifest chain; --repair recovers after a crash.
    Verify(VerifyArgs),
    /// Build the flow index (a Parquet sidecar per segment) for segments that lack one.
    #[command(
        long_about = "Build the flow index of an archive's segments that lack one: each segment's \
packets are read, summed into bidirectional flows (VLANs, EtherType, protocol, addresses, ports, \
packets and bytes each way, first/last time, the data frames holding them) and written beside \
the segment as STREAM/NNNNNN.flows.parquet, named with its SHA-256 by a `flows` line in the \
manifest. Segments indexed already are left alone, so running it again indexes nothing. It \
appends to the manifest, so it refuses while a recorder holds the archive's lock.",
        after_help = "Examples:
  zcap index arch                               index what is not indexed yet
  zcap verify arch                              checks the sidecars with everything else
  duckdb -c \"select addr_a, addr_b, sum(packets) p from 'arch/*/*.flows.parquet'
             group by all order by p desc limit 10\"   the busiest conversations
See docs/ARCHIVE.md, \"Flow index\", for the columns."
    )]
    Index(IndexArgs),
    /// Send an archive or capture file as PCAP-over-IP, or serve it to whoever connects.
    Replay(ReplayArgs),
    /// Capture interfaces live (-i) and stream them as PCAP-over-IP to a recorder: a sensor.
    Send(SendArgs),
    /// Can this host do zero-copy receive and live capture? Reports what is present and what
    /// is missing.
    Doctor(DoctorArgs),
    /// Replay a bundled capture over loopback into a fresh archive, then list and verify it.
    Demo(DemoArgs),
    /// Make an Ed25519 key pair for signed manifests (record --sign-key, verify --key).
    Keygen(KeygenArgs),
    /// Upload an archive directory to object storage (s3://BUCKET/PREFIX), or finish an
    /// upload that `record --upload` left: segments first, checksums checked, then the
    /// manifest.
    Upload(UploadArgs),
    /// Print a shell completion script for zcap to stdout (bash, zsh, fish, elvish,
    /// powershell), made from these very flags.
    Completions(CompletionsArgs),
    /// Write man pages for zcap and every subcommand (zcap.1, zcap-record.1, ...) to --out
    /// DIR; without --out, print zcap.1 to stdout.
    Man(ManArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for, e.g. `zcap completions bash > /etc/bash_completion.d/zcap`.
    #[arg(value_name = "SHELL", value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Args)]
pub struct ManArgs {
    /// Write every page into this directory (created if missing), e.g.
    /// /usr/local/share/man/man1; existing pages are replaced.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// How much of an uploaded archive to keep on the local disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepLocal {
    Bytes(u64),
    Age(Duration),
}

/// `--keep-local`: a size (`50GiB`) or a duration (`2d`).
pub fn parse_keep_local(s: &str) -> Result<KeepLocal, String> {
    if let Ok(n) = crate::units::parse_size(s) {
        return Ok(KeepLocal::Bytes(n));
    }
    crate::units::parse_duration(s)
        .map(KeepLocal::Age)
        .map_err(|_| format!("`{s}` is neither a size (e.g. 50GiB) nor a duration (e.g. 2d)"))
}

/// Uploading to object storage: `record --upload` and `zcap upload`.
#[derive(Debug, Clone, Args)]
pub struct UploadOpts {
    /// Once a segment's upload is confirmed, keep its local copy only while the local
    /// archive is under SIZE (e.g. 50GiB) or the segment is younger than DURATION (e.g. 2d);
    /// 0 evicts each as soon as it is uploaded. Default: keep everything (a local copy).
    /// Evictions are recorded in the manifest; `ls` shows where such segments are.
    #[arg(long, value_name = "SIZE|DURATION", value_parser = parse_keep_local)]
    pub keep_local: Option<KeepLocal>,

    /// Delete remote segments finalized longer ago than this (never the newest), recorded
    /// in the manifest like local deletions (1s to 36500d).
    #[arg(long, value_name = "DURATION", value_parser = duration_in(SECOND, 36_500 * DAY))]
    pub remote_max_age: Option<Duration>,

    /// Segments larger than this go up as multipart uploads in parts of this size (5MiB,
    /// S3's smallest part, to 5GiB).
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = size_in(5 << 20, 5 << 30))]
    pub upload_part_size: u64,

    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Debug, Clone, Args)]
pub struct UploadArgs {
    /// The local archive directory.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Where to: s3://BUCKET/PREFIX.
    #[arg(value_name = "URL")]
    pub url: String,
    #[command(flatten)]
    pub opts: UploadOpts,
    /// Sign the manifest lines this writes (evictions, remote deletions) with this key, as
    /// the recorder signed the rest (`record --sign-key`).
    #[arg(long, value_name = "KEY")]
    pub sign_key: Option<PathBuf>,
    /// Give up when the store has failed for this long (1s to 1d).
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = duration_in(SECOND, DAY))]
    pub give_up_after: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Write PREFIX.key (the private key, PKCS#8 PEM, mode 0600) and PREFIX.pub (the public
    /// key, PEM); existing files are never overwritten.
    #[arg(
        short = 'o',
        long = "out",
        value_name = "PREFIX",
        default_value = "zcap-signing"
    )]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RxKind {
    /// The best that works here: zcrx when --zcrx-iface is given and the NIC supports it, else
    /// ring, else recv; says which and why.
    Auto,
    /// io_uring zero-copy receive on --zcrx-iface/--queue (needs a capable NIC and
    /// CAP_NET_ADMIN).
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
    #[arg(short = 'r', long = "read", value_name = "FILE", conflicts_with_all = ["listen", "connect", "interface"])]
    pub read: Option<PathBuf>,

    /// Accept PCAP-over-IP senders on this address (the default source).
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "interface")]
    pub listen: Option<String>,

    /// Connect to a PCAP-over-IP server and record what it sends; reconnects with back-off.
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["listen", "interface"])]
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

    #[command(flatten)]
    pub capture: CaptureArgs,

    /// NIC whose queue zcrx registers (zero-copy receive of PCAP-over-IP on --listen).
    #[arg(
        long = "zcrx-iface",
        alias = "iface",
        value_name = "IF",
        conflicts_with = "interface"
    )]
    pub zcrx_iface: Option<String>,

    /// Receive queue of --zcrx-iface for zcrx, kept out of RSS (`ethtool -X IF equal Q`
    /// spreads RSS over 0..Q-1); steer the listen port to it (--steer or ethtool). No
    /// default: queue 0 is in every RSS table.
    #[arg(long, value_name = "Q")]
    pub queue: Option<u32>,

    /// Register --queue even though RSS also spreads other flows onto it (their data is
    /// copied into the area and can run it dry).
    #[arg(long)]
    pub force: bool,

    /// Install an ntuple rule steering the listen port to --queue, removed on exit (zcrx).
    #[arg(long)]
    pub steer: bool,

    /// Back the receive area with 2 MiB huge pages (reserve them with vm.nr_hugepages).
    #[arg(long)]
    pub hugepages: bool,

    /// Size of the receive area all buffers come from; bounds memory with --buf-size, and is
    /// what a crash can lose of a fast stream (1MiB to 64GiB: it is pre-faulted RAM, and
    /// must hold two of the largest records, 256 KiB each; zcrx takes at most 1GiB).
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = size_in(1 << 20, 64 << 30))]
    pub area_size: u64,

    /// Size of one receive buffer (ring and recv backends, --read); the area must hold at
    /// least 4 of them (4KiB to 16MiB).
    #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = size_in(4 << 10, 16 << 20))]
    pub buf_size: u64,

    /// Rotate a stream's segment when it reaches this stored size (4KiB to 1TiB).
    #[arg(short = 'C', long, value_name = "SIZE", default_value = "256MiB", value_parser = size_in(4 << 10, 1 << 40))]
    pub segment_size: u64,

    /// Rotate a stream's segment after this long, e.g. 10m (1s to 365d).
    #[arg(short = 'G', long, value_name = "DURATION", value_parser = duration_in(SECOND, 365 * DAY))]
    pub segment_time: Option<Duration>,

    /// With -G: rotate at wall-clock multiples of it instead, for every stream at once
    /// (-G 10m --align cuts on :00, :10, :20, … UTC). SIGHUP cuts every open segment now,
    /// -G or not (`systemctl reload zcap`).
    #[arg(long, requires = "segment_time")]
    pub align: bool,

    /// Raw bytes per compressed frame, the unit of time seeks (4KiB to 256MiB).
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = size_in(4 << 10, 256 << 20))]
    pub frame_size: u64,

    /// zstd, zstd:LEVEL (-7..19) or none.
    #[arg(long, value_name = "ALGO", default_value = "zstd:1")]
    pub compress: Compress,

    /// Keep no flow index. By default each segment gets a Parquet sidecar with one row per
    /// flow (addresses, ports, protocol, VLAN, packets, bytes, the frames holding it), so
    /// that `zcap cat ARCHIVE FILTER` decompresses only the frames a filter can match,
    /// `zcap flows` lists conversations, and DuckDB queries 'ARCHIVE/**/*.parquet'.
    #[arg(long, conflicts_with = "flow_cutoff")]
    pub no_flow_index: bool,

    /// Keep at most SIZE captured bytes of each IP flow, both directions together (e.g.
    /// 64KiB): the packet that crosses SIZE is kept whole, later ones are dropped. Most
    /// bytes belong to a few long flows, so this stretches retention many times over. The
    /// cut is counted per flow in the flow index and shown by `zcap ls`; non-IP and
    /// malformed packets are never cut.
    #[arg(long, value_name = "SIZE", value_parser = size_in(1, 1 << 50))]
    pub flow_cutoff: Option<u64>,

    /// With --flow-cutoff: keep the packets past the cutoff truncated to their link,
    /// network and transport headers (their wire length stays), so the flow's timing and
    /// TCP flags survive.
    #[arg(long, requires = "flow_cutoff")]
    pub cutoff_keep_headers: bool,

    /// Delete the oldest segments when the archive exceeds this size, ring buffer
    /// (16KiB to 1024TiB; keep -C at most a quarter of it).
    #[arg(long, value_name = "SIZE", value_parser = size_in(16 << 10, 1 << 50))]
    pub max_bytes: Option<u64>,

    /// Delete segments finalized longer ago than this (1s to 36500d).
    #[arg(long, value_name = "DURATION", value_parser = duration_in(SECOND, 36_500 * DAY))]
    pub max_age: Option<Duration>,

    /// Upload each finalized segment, then the manifest, to object storage
    /// (s3://BUCKET/PREFIX, any S3-compatible store) on a thread of its own; a store that
    /// is down is retried while the local archive buffers everything. With --max-bytes
    /// and --max-age, retention then only removes local copies whose upload is confirmed.
    #[arg(long, value_name = "URL")]
    pub upload: Option<String>,

    #[command(flatten)]
    pub upload_opts: UploadOpts,

    /// Keep at least this much free on the archive's file system (e.g. 5% or 2GiB): below it,
    /// delete the oldest segments (with --max-bytes/--max-age) or pause and backpressure.
    #[arg(long, value_name = "PERCENT|SIZE")]
    pub min_free: Option<MinFree>,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (bytes, packets, frames per
    /// stream and in total, streams open, area in use, backpressure, kernel drops, upload
    /// queue and lag, segment finalize latency, errors by kind). SIGUSR1 prints the stats
    /// line once to stderr.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,

    /// Print one JSON stats line per interval on stdout, for pipelines.
    #[arg(long)]
    pub stats_json: bool,

    /// Interval of the stats line (100ms to 1h).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration_in(Duration::from_millis(100), 3600 * SECOND))]
    pub stats_interval: Duration,

    /// Compress threads, shared by every stream: any of them compresses any frame, so one
    /// fast stream uses them all. 0 compresses on the writer threads. Default: one per core.
    #[arg(long, value_name = "N", default_value_t = default_compress_threads(), value_parser = clap::value_parser!(u16).range(0..=256))]
    pub compress_threads: u16,

    /// Writer threads: each frames and persists (writes, hashes, indexes, rotates) its share
    /// of the streams, in order per stream. One keeps up with the compress threads of a
    /// small host; add one per 8 or so cores for many fast senders. Default: one per 8
    /// cores, 1 to 4.
    #[arg(long, value_name = "N", default_value_t = default_writers(), value_parser = clap::value_parser!(u16).range(1..=64))]
    pub writers: u16,

    /// Stop after this many streams have ended (tests, one-shot jobs; at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_streams: Option<u64>,

    /// Cut a stream that holds an incomplete record or block this long without sending a
    /// byte more (what it sent complete is kept). 1s to 1d.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration_in(SECOND, DAY))]
    pub stall_timeout: Duration,

    /// Close a connection that sends nothing this long after connecting. 1s to 1d.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration_in(SECOND, DAY))]
    pub idle_timeout: Duration,

    /// Close a connection that sent its file header but no packet for this long. 1s to 30d.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = duration_in(SECOND, 30 * DAY))]
    pub header_timeout: Duration,

    /// Connections at once (default and ceiling: what the descriptor limit allows, two per
    /// connection, after raising the soft limit to the hard one). More are closed at once.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_conns: Option<u32>,

    /// Connections at once from one address; more are closed at once.
    #[arg(long, value_name = "N", default_value_t = crate::rx::limits::DEFAULT_MAX_PER_PEER as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_conns_per_peer: u32,

    /// After setting up (binding, opening rings and NIC queues, opening the archive), become
    /// USER as tcpdump -Z does: the archive directory is handed to USER, groups, gid and uid
    /// change, and every capability is dropped for good. Not with --steer (removing its
    /// rules at exit needs CAP_NET_ADMIN).
    #[arg(
        short = 'Z',
        long = "relinquish-privileges",
        value_name = "USER",
        conflicts_with = "steer"
    )]
    pub user: Option<String>,

    /// Speak TLS on --listen with this certificate chain (PEM); senders connect with e.g.
    /// `socat -u FILE OPENSSL:HOST:PORT,cafile=CA` or `openssl s_client`. Plain TCP stays
    /// the default (what tcpdump | nc, Arkime and NetworkMiner speak).
    #[arg(
        long,
        value_name = "CERT",
        requires = "tls_key",
        conflicts_with = "connect"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: accept only senders whose client certificate this CA (PEM) issued; the
    /// certificate's subject names the stream.
    #[arg(long, value_name = "CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// With --connect: speak TLS to the server and trust the CAs in this PEM file.
    #[arg(long, value_name = "CA", requires = "connect")]
    pub tls_ca: Option<PathBuf>,

    /// Sign the manifest with this Ed25519 private key (PEM, from `zcap keygen`): every
    /// line is followed by a signature of the chain head, which `verify --key` checks.
    #[arg(long, value_name = "KEY")]
    pub sign_key: Option<PathBuf>,

    /// Accept senders only from this network (ADDR/PREFIX or one address, IPv4 or IPv6;
    /// repeat for several). Checked on accept, before any byte is read: anyone else is
    /// closed at once, logged and counted. Default: anyone who can reach the port.
    #[arg(long, value_name = "CIDR")]
    pub allow: Vec<crate::rx::limits::Cidr>,
}

/// Live capture from interfaces (AF_PACKET TPACKET_V3), shared by `record -i` and `send`.
#[derive(Debug, Clone, Args)]
pub struct CaptureArgs {
    /// Capture live from interface IF (AF_PACKET TPACKET_V3); repeat for several. Each capture thread is one stream, `IF-tN-START`.
    #[arg(short = 'i', long = "interface", value_name = "IF")]
    pub interface: Vec<String>,

    /// Do not put the capture interfaces into promiscuous mode (-i).
    #[arg(short = 'p', long = "no-promiscuous-mode", requires = "interface")]
    pub no_promisc: bool,

    /// Bytes of each packet kept by live capture (-i), as tcpdump's -s (0 to 262144; 0 is
    /// 262144, the whole packet, as in tcpdump).
    #[arg(short = 's', long = "snapshot-length", value_name = "SNAPLEN", default_value_t = crate::rx::afpacket::DEFAULT_SNAPLEN, value_parser = clap::value_parser!(u32).range(0..=262_144))]
    pub snaplen: u32,

    /// Capture threads per interface (-i), each with its own ring and stream, sharing the
    /// packets by a hash of the flow (PACKET_FANOUT; 1 to 64).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64), requires = "interface")]
    pub fanout: u16,

    /// PACKET_FANOUT group id (0 to 65535): zcap processes with the same id share an
    /// interface's packets (the k-th -i interface uses ID + k). Default: from the process id.
    #[arg(long, value_name = "ID", requires = "interface")]
    pub fanout_group: Option<u16>,

    /// Size of one block of a capture ring (-i): a multiple of the page size, larger than
    /// the snapshot length (4KiB to 256MiB).
    #[arg(long, value_name = "SIZE", default_value = "4MiB", value_parser = size_in(4 << 10, 256 << 20))]
    pub block_size: u64,

    /// Blocks per capture ring (-i; 2 to 65536): more hold longer bursts before the kernel
    /// drops. The default 64 × 4MiB holds about 200 ms at 10 Gbit/s.
    #[arg(long, value_name = "N", default_value_t = crate::rx::afpacket::DEFAULT_BLOCK_COUNT, value_parser = clap::value_parser!(u32).range(2..=65_536))]
    pub block_count: u32,

    /// The kernel hands a capture block (-i) over after this long even if it is not full:
    /// the latency of a quiet interface (1ms to 10s).
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = duration_in(Duration::from_millis(1), 10 * SECOND))]
    pub block_timeout: Duration,

    /// Print the filter as compiled for each -i interface, like `tcpdump -d`, and exit.
    #[arg(short = 'd', requires = "interface")]
    pub dump_filter: bool,

    /// With -i: a tcpdump filter expression (e.g. `tcp port 443`), compiled by libpcap
    /// (loaded at run time) and run by the kernel, which drops what it rejects.
    #[arg(value_name = "FILTER", trailing_var_arg = true, requires = "interface")]
    pub filter: Vec<String>,
}

/// One writer per core, at most 4: compression is the work that scales.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One per core: compression is the work that scales.
fn default_compress_threads() -> u16 {
    cores().min(256) as u16
}

/// One per 8 cores, at least one, at most 4: framing and persisting cost far less than
/// compressing.
fn default_writers() -> u16 {
    (cores() / 8).clamp(1, 4) as u16
}

/// How to reach an archive on object storage (`s3://BUCKET/PREFIX`).
#[derive(Debug, Clone, Default, Args)]
pub struct S3Args {
    /// S3-compatible endpoint for s3:// archives, e.g. http://127.0.0.1:3900 (default:
    /// AWS_ENDPOINT_URL, else AWS in AWS_REGION). A custom endpoint (MinIO, Garage, Ceph) is
    /// addressed path-style. Credentials come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
    /// and AWS_SESSION_TOKEN.
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
}

impl S3Args {
    /// The client settings these flags make (the rest comes from `AWS_*`).
    pub fn settings(&self) -> crate::remote::Settings {
        crate::remote::Settings {
            endpoint: self.s3_endpoint.clone(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct LsArgs {
    /// Archive: a directory, or s3://BUCKET/PREFIX.
    #[arg(value_name = "ARCHIVE")]
    pub dir: String,
    #[command(flatten)]
    pub s3: S3Args,
    /// One JSON object per segment, one per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:
  zcap cat A > all.pcap                                 the whole archive
  zcap cat A --from 2026-11-25T10:02:00Z --to 2026-11-25T10:03:00Z | tshark -r -
  zcap cat A 'host 10.0.0.1 and port 443' -w x.pcap     one host's HTTPS, as tcpdump selects it
  zcap cat A net 10.1.0.0/16 and not tcp > x.pcap       (unquoted words are joined by spaces)
  zcap cat A --stats 'vlan 100 and udp' > /dev/null     how much the flow index saved
Filters are tcpdump's (pcap-filter(7)); the output holds exactly the packets
`zstd -dc SEGMENTS | tcpdump -r - -w - FILTER` selects, in the same order. Segments indexed
by `zcap index` (or a recorder that indexes) are decompressed only where a match can be.")]
pub struct CatArgs {
    /// Archive: a directory, or s3://BUCKET/PREFIX (read by range requests: only the
    /// frames overlapping --from/--to are fetched).
    #[arg(value_name = "ARCHIVE")]
    pub dir: String,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub window: Window,
    /// Write to FILE instead of stdout.
    #[arg(short = 'w', value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Print to stderr how many frames were decompressed (seek efficiency) and, with a
    /// filter, how many the flow index let be skipped and how many packets matched.
    #[arg(long)]
    pub stats: bool,
    /// Only packets this tcpdump filter expression accepts (e.g. `host 10.0.0.1 and port
    /// 443`), checked by libpcap (loaded at run time) as `tcpdump -r` does. Its words may be
    /// one quoted argument or several; flags may come before or after them (`--` before a
    /// filter with a word that starts with `-`).
    #[arg(value_name = "FILTER")]
    pub filter: Vec<String>,
}

impl CatArgs {
    /// The filter's words joined by spaces, as tcpdump joins them; None without any.
    pub fn filter_expr(&self) -> Option<String> {
        join_filter(&self.filter)
    }
}

/// Which packets a reader takes: a time window and streams.
#[derive(Debug, Clone, Args)]
pub struct Window {
    /// Only packets at or after this time (RFC 3339 or epoch seconds).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub from: Option<i64>,
    /// Only packets at or before this time.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub to: Option<i64>,
    /// Only these streams (repeat for several); default all.
    #[arg(long, value_name = "NAME")]
    pub stream: Vec<String>,
}

/// Trailing filter words as one expression (tcpdump joins its arguments with spaces).
fn join_filter(words: &[String]) -> Option<String> {
    (!words.is_empty()).then(|| words.join(" "))
}

#[derive(Debug, Clone, Args)]
#[command(after_help = "Examples:
  zcap flows A                                       every flow, by first packet
  zcap flows A --from 2026-11-25T10:00:00Z 'host 10.0.0.1'
  zcap flows A --json | jq -c 'select(.bytes > 1e6) | {addr_a, addr_b, port_b, bytes}'
  zcap flows A 'tcp port 443' --json | jq -s 'map(.bytes) | add'
The flow index is per segment: with --from/--to, a flow's counts are those of every segment
in which its packets span part of the window, not only of the packets inside it. `zcap index
A` builds the index for segments recorded without one; those are named on stderr, never
silently left out of the counts.")]
pub struct FlowsArgs {
    /// Archive: a directory, or s3://BUCKET/PREFIX (only the flow index is fetched, no
    /// segment).
    #[arg(value_name = "ARCHIVE")]
    pub dir: String,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub window: Window,
    /// One JSON object per flow, one per line (fields in docs/ARCHIVE.md, "Flow listing").
    #[arg(long)]
    pub json: bool,
    /// Only flows this tcpdump filter expression may match. Filtering is per flow, from the
    /// index: a flow is listed when the filter may match its packets. That is exact for
    /// host, net, port, portrange, proto (ip, ip6, tcp, udp, icmp, ...), vlan and and/or/not
    /// over them; what the index does not model (`tcp[13] & 2 != 0`, `greater 100`) lists
    /// every flow it could be true of.
    #[arg(value_name = "FILTER")]
    pub filter: Vec<String>,
}

impl FlowsArgs {
    /// The filter's words joined by spaces; None without any.
    pub fn filter_expr(&self) -> Option<String> {
        join_filter(&self.filter)
    }
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Archive: a directory, or s3://BUCKET/PREFIX (every segment is downloaded and
    /// checked).
    #[arg(value_name = "ARCHIVE")]
    pub dir: String,
    #[command(flatten)]
    pub s3: S3Args,
    /// Recover after a crash: finalize .partial segments, drop a torn manifest line.
    #[arg(long)]
    pub repair: bool,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
    /// Check the manifest's signatures with this public key (PEM, from `zcap keygen`):
    /// fails unless every line is covered by a valid signature, and names the first that
    /// is not.
    #[arg(long, value_name = "PUB")]
    pub key: Option<PathBuf>,
    /// A manifest head kept elsewhere (the hash `verify` prints last): fails if the manifest
    /// no longer holds that line, i.e. lines were cut off the end since. With --key, that is
    /// what proves nothing signed was removed.
    #[arg(long, value_name = "HASH")]
    pub head: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct IndexArgs {
    /// The archive directory (a local one: the sidecars are written beside its segments).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// An archive (a directory, or s3://BUCKET/PREFIX) or a pcap/pcapng file.
    #[arg(value_name = "SOURCE")]
    pub src: String,
    #[command(flatten)]
    pub s3: S3Args,
    /// Send to this PCAP-over-IP receiver.
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "serve")]
    pub to: Option<String>,
    /// Serve the capture to every client that connects (a PCAP-over-IP server).
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "to")]
    pub serve: Option<String>,

    /// With --to: send over TLS, trusting the server certificates this CA (PEM) issued for
    /// the host named in --to (e.g. a `zcap record --tls-cert` recorder).
    #[arg(long, value_name = "CA", requires = "to")]
    pub tls_ca: Option<PathBuf>,

    /// With --serve: serve over TLS with this certificate chain (PEM), e.g. to `zcap record
    /// --connect HOST:PORT --tls-ca CA` or `socat OPENSSL:`.
    #[arg(long, value_name = "CERT", requires_all = ["tls_key", "serve"])]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Play at X times the recorded pace: 1 = real time, 0.5 = half speed (above 0, at most
    /// 1000000).
    #[arg(long, value_name = "X", conflicts_with = "topspeed", allow_negative_numbers = true, value_parser = speed_up_to(MAX_SPEED))]
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
    /// With --serve: exit after serving this many clients (at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_clients: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// The PCAP-over-IP receiver (`zcap record --listen`, Arkime, anything that listens);
    /// one connection per capture thread, reconnecting with back-off.
    #[arg(
        long,
        value_name = "HOST:PORT",
        required_unless_present_any = ["dump_filter", "serve"]
    )]
    pub to: Option<String>,
    /// Instead, serve the live capture as PCAP-over-IP to every client that connects
    /// (dumpcap `-i TCP@HOST:PORT`, Arkime, NetworkMiner): one pcap stream of all capture
    /// threads, from the moment the client connects.
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "to")]
    pub serve: Option<String>,

    /// With --to: send over TLS, trusting the recorder certificates this CA (PEM) issued
    /// for the host named in --to (e.g. a `zcap record --tls-cert` recorder).
    #[arg(long, value_name = "CA", requires = "to")]
    pub tls_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Interface to check for zero-copy receive and live capture (default: the one with the
    /// default route).
    #[arg(short = 'i', long, visible_alias = "interface", value_name = "IF")]
    pub iface: Option<String>,
    /// Queue to check.
    #[arg(long, value_name = "Q")]
    pub queue: Option<u32>,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
    /// Also register the queue for real (restarts it once), with an area as large as the
    /// NIC's rx ring: the decisive check, off by default.
    #[arg(long)]
    pub probe: bool,
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

    /// `args` after `zcap` must fail at parse time naming `flag` and `why`.
    fn rejected(args: &[&str], flag: &str, why: &str) {
        let e = Cli::try_parse_from(std::iter::once("zcap").chain(args.iter().copied()))
            .expect_err(&format!("{args:?} was accepted"));
        assert_eq!(
            e.kind(),
            clap::error::ErrorKind::ValueValidation,
            "{args:?}: {e}"
        );
        let text = e.to_string();
        let value = args.last().unwrap().rsplit('=').next().unwrap();
        let want = format!("invalid value '{value}' for '{flag}': {why}");
        assert!(text.contains(&want), "{args:?}: want `{want}` in:\n{text}");
    }

    const SEG: &str = "must be between 4KiB and 1TiB";
    const FRAME: &str = "must be between 4KiB and 256MiB";
    const AREA: &str = "must be between 1MiB and 64GiB";
    const BUF: &str = "must be between 4KiB and 16MiB";

    #[test]
    fn zero_and_nonsense_values_are_rejected_naming_the_flag_and_range() {
        let seg = "--segment-size <SIZE>";
        rejected(&["record", "-C", "0"], seg, SEG);
        rejected(&["record", "-C", "4095"], seg, SEG);
        rejected(&["record", "--segment-size", "2TiB"], seg, SEG);
        rejected(&["record", "-C", "0.5"], seg, SEG);
        let frame = "--frame-size <SIZE>";
        rejected(&["record", "--frame-size", "0"], frame, FRAME);
        rejected(&["record", "--frame-size", "1GiB"], frame, FRAME);
        let mb = "--max-bytes <SIZE>";
        rejected(
            &["record", "--max-bytes", "0"],
            mb,
            "must be between 16KiB and 1024TiB",
        );
        rejected(
            &["record", "--max-bytes", "8KiB"],
            mb,
            "must be between 16KiB and 1024TiB",
        );
        let g = "--segment-time <DURATION>";
        rejected(&["record", "-G", "0"], g, "must be between 1s and 365d");
        rejected(&["record", "-G", "500ms"], g, "must be between 1s and 365d");
        rejected(&["record", "-G", "400d"], g, "must be between 1s and 365d");
        let age = "--max-age <DURATION>";
        rejected(
            &["record", "--max-age", "0s"],
            age,
            "must be between 1s and 36500d",
        );
        let si = "--stats-interval <DURATION>";
        rejected(
            &["record", "--stats-interval", "0"],
            si,
            "must be between 100ms and 1h",
        );
        rejected(
            &["record", "--stats-interval", "2h"],
            si,
            "must be between 100ms and 1h",
        );
        let area = "--area-size <SIZE>";
        rejected(&["record", "--area-size", "1"], area, AREA);
        rejected(&["record", "--area-size", "4KiB"], area, AREA);
        rejected(&["record", "--area-size", "1TiB"], area, AREA);
        let buf = "--buf-size <SIZE>";
        rejected(&["record", "--buf-size", "0"], buf, BUF);
        rejected(&["record", "--buf-size", "100"], buf, BUF);
        rejected(&["record", "--buf-size", "1GiB"], buf, BUF);
        rejected(
            &["record", "--max-streams", "0"],
            "--max-streams <N>",
            "0 is not in 1..",
        );
        rejected(
            &["record", "--writers", "0"],
            "--writers <N>",
            "0 is not in 1..=64",
        );

        let to = ["replay", "a", "--to", "127.0.0.1:1", "--speed"];
        let speed = "--speed <X>";
        let why = "must be a number above 0 and at most 1000000 (1 = real time";
        for bad in ["0", "-1", "-0.5", "NaN", "inf", "2e6", "fast"] {
            let args: Vec<&str> = to.iter().copied().chain([bad]).collect();
            rejected(&args, speed, why);
        }
        rejected(&["replay", "a", "--to", "h:1", "--speed=-2"], speed, why);
        let serve = [
            "replay",
            "a",
            "--serve",
            "127.0.0.1:0",
            "--max-clients",
            "0",
        ];
        rejected(&serve, "--max-clients <N>", "0 is not in 1..");
    }

    #[test]
    fn values_inside_the_ranges_parse() {
        let c = Cli::try_parse_from([
            "zcap",
            "record",
            "-C",
            "4KiB",
            "--frame-size",
            "256MiB",
            "--max-bytes",
            "1MiB",
            "-G",
            "1s",
            "--max-age",
            "36500d",
            "--stats-interval",
            "100ms",
            "--area-size",
            "1MiB",
            "--buf-size",
            "4KiB",
            "--max-streams",
            "1",
        ])
        .unwrap();
        let Command::Record(r) = c.command else {
            panic!()
        };
        assert_eq!((r.segment_size, r.frame_size), (4096, 256 << 20));
        assert_eq!(
            (r.area_size, r.buf_size, r.max_bytes),
            (1 << 20, 4096, Some(1 << 20))
        );
        assert_eq!(r.max_age, Some(Duration::from_secs(36_500 * 86_400)));
        let c =
            Cli::try_parse_from(["zcap", "replay", "a", "--to", "h:1", "--speed", "0.25"]).unwrap();
        let Command::Replay(r) = c.command else {
            panic!()
        };
        assert_eq!((r.speed, r.loops), (Some(0.25), 1));
        let c = Cli::try_parse_from(["zcap", "replay", "a", "--to", "h:1", "--loop", "0"]);
        assert_eq!(
            c.map(|c| matches!(c.command, Command::Replay(r) if r.loops == 0))
                .ok(),
            Some(true)
        );
    }

    /// An argument's help text with its line breaks made spaces.
    fn words(arg: &clap::Arg) -> String {
        let help = arg.get_long_help().or(arg.get_help()).unwrap().to_string();
        help.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The ranges the parsers enforce are the ones `--help` states.
    #[test]
    fn help_states_each_range() {
        let mut cmd = Cli::command();
        let record = cmd.find_subcommand_mut("record").unwrap();
        for (id, range) in [
            ("segment_size", "(4KiB to 1TiB)"),
            ("frame_size", "(4KiB to 256MiB)"),
            ("max_bytes", "(16KiB to 1024TiB"),
            ("segment_time", "(1s to 365d)"),
            ("max_age", "(1s to 36500d)"),
            ("stats_interval", "(100ms to 1h)"),
            ("area_size", "(1MiB to 64GiB"),
            ("buf_size", "(4KiB to 16MiB)"),
        ] {
            let arg = record.get_arguments().find(|a| a.get_id() == id).unwrap();
            let help = words(arg);
            assert!(
                help.contains(range),
                "--help of {id} does not say {range}: {help}"
            );
        }
        let replay = cmd.find_subcommand_mut("replay").unwrap();
        let speed = replay
            .get_arguments()
            .find(|a| a.get_id() == "speed")
            .unwrap();
        let help = words(speed);
        assert!(help.contains("(above 0, at most 1000000)"), "{help}");
    }

    #[test]
    fn live_capture_flags_and_the_zcrx_nic_do_not_collide() {
        let c = Cli::try_parse_from([
            "zcap",
            "record",
            "-i",
            "eth0",
            "-i",
            "eth1",
            "-p",
            "-s",
            "1500",
            "--fanout",
            "2",
            "--fanout-group",
            "77",
            "--block-size",
            "1MiB",
            "--block-count",
            "8",
            "--block-timeout",
            "10ms",
        ])
        .unwrap();
        let Command::Record(r) = c.command else {
            panic!()
        };
        assert_eq!(r.capture.interface, ["eth0", "eth1"]);
        assert!(r.capture.no_promisc);
        assert_eq!(
            (r.capture.snaplen, r.capture.fanout, r.capture.fanout_group),
            (1500, 2, Some(77))
        );
        assert_eq!((r.capture.block_size, r.capture.block_count), (1 << 20, 8));
        assert_eq!(r.capture.block_timeout, Duration::from_millis(10));
        assert_eq!(r.zcrx_iface, None);
        // The zcrx NIC keeps its old spelling as a hidden alias.
        for flag in ["--zcrx-iface", "--iface"] {
            let c = Cli::try_parse_from(["zcap", "record", flag, "eth2", "--queue", "3"]).unwrap();
            let Command::Record(r) = c.command else {
                panic!()
            };
            assert_eq!(
                (r.zcrx_iface.as_deref(), r.capture.interface.len()),
                (Some("eth2"), 0)
            );
        }
        let defaults = Cli::try_parse_from(["zcap", "record", "-i", "eth0"]).unwrap();
        let Command::Record(r) = defaults.command else {
            panic!()
        };
        assert_eq!(
            (r.capture.snaplen, r.capture.fanout, r.capture.block_count),
            (262_144, 1, 64)
        );
        assert!(!r.capture.no_promisc);
        assert!(Cli::try_parse_from(["zcap", "record", "-i", "eth0", "-r", "f"]).is_err());
        assert!(Cli::try_parse_from(["zcap", "record", "-i", "eth0", "--listen", "h:1"]).is_err());
        assert!(Cli::try_parse_from(["zcap", "record", "--fanout", "2"]).is_err());
        let both = ["zcap", "record", "-i", "eth0", "--zcrx-iface", "eth1"];
        assert!(Cli::try_parse_from(both).is_err());
        rejected(
            &["record", "-i", "e", "-s", "262145"],
            "--snapshot-length <SNAPLEN>",
            "262145 is not in 0..=262144",
        );
        rejected(
            &["record", "-i", "e", "--fanout", "0"],
            "--fanout <N>",
            "0 is not in 1..=64",
        );
        rejected(
            &["record", "-i", "e", "--block-count", "1"],
            "--block-count <N>",
            "1 is not in 2..=65536",
        );
        let help = Cli::command()
            .find_subcommand_mut("record")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(!help.contains("--iface"), "the alias stays hidden");
    }

    #[test]
    fn completions_and_man_parse() {
        let c = Cli::try_parse_from(["zcap", "completions", "bash"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Completions(CompletionsArgs {
                shell: clap_complete::Shell::Bash
            })
        ));
        for shell in ["zsh", "fish", "elvish", "powershell"] {
            assert!(Cli::try_parse_from(["zcap", "completions", shell]).is_ok());
        }
        assert!(Cli::try_parse_from(["zcap", "completions"]).is_err());
        assert!(Cli::try_parse_from(["zcap", "completions", "tcsh"]).is_err());
        let c = Cli::try_parse_from(["zcap", "man"]).unwrap();
        assert!(matches!(c.command, Command::Man(ManArgs { out: None })));
        let c = Cli::try_parse_from(["zcap", "man", "--out", "m"]).unwrap();
        let Command::Man(m) = c.command else { panic!() };
        assert_eq!(m.out, Some(PathBuf::from("m")));
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
