//! The flow index's sidecar: one Parquet file per segment, one row per flow
//! (docs/ARCHIVE.md, "Flow index"), so that DuckDB, pandas or Spark answer flow questions
//! without zcap. [`encode`] writes a [`FlowTable`](super::FlowTable)'s rows as a whole file in
//! memory (one row group, zstd level 1); [`decode`] reads one back into [`Row`]s for the
//! pruner ([`Row::facts`]) and `zcap flows`. A sidecar is input like any other: decode checks
//! every column's type and every value's range and says in words what is wrong; it never
//! panics on hostile bytes (the parquet crate asserts on some of its read paths, so a panic
//! inside it is caught and reported as a file that does not decode). What a file claims is
//! bounded before it is decoded: its rows ([`MAX_ROWS`]), the values its pages announce (one
//! per row for plain columns, [`MAX_LIST_VALUES`] in all for `frames`), so a few hostile
//! bytes cannot make it allocate gigabytes; [`encode`] refuses to write what decode would
//! refuse.

use super::filter::FlowFacts;
use super::{Endpoint, FlowKey, FlowRow};
use parquet::basic::{Compression, Type as Physical, ZstdLevel};
use parquet::column::reader::ColumnReader;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DataType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::net::IpAddr;
use std::sync::Arc;

/// The schema, in Parquet's message syntax. Column order is the order [`encode`] writes.
pub const SCHEMA: &str = "
message flows {
  required binary stream (STRING);
  required binary segment (STRING);
  required int64 seq;
  required int64 first_ns;
  required int64 last_ns;
  required int64 first (TIMESTAMP(NANOS,true));
  required int64 last (TIMESTAMP(NANOS,true));
  optional int32 vlan;
  optional int32 inner_vlan;
  required int32 ethertype;
  required int32 proto;
  optional binary addr_a (STRING);
  optional binary addr_b (STRING);
  required int32 port_a;
  required int32 port_b;
  required int64 packets_ab;
  required int64 bytes_ab;
  required int64 packets_ba;
  required int64 bytes_ba;
  required int64 packets;
  required int64 bytes;
  required int64 cut_packets;
  required int64 cut_bytes;
  required boolean malformed;
  required boolean irregular;
  optional group frames (LIST) {
    repeated group list {
      required int32 element;
    }
  }
}
";

/// Most rows a sidecar may claim: more flows than any segment holds, and a bound on what a
/// hostile file makes decode allocate.
pub const MAX_ROWS: usize = 1 << 24;

/// Most frame indices the `frames` lists of one sidecar may hold together (a bound on what
/// a hostile file makes decode allocate; a flow in each of a segment's frames, for a
/// million flows in a 64-frame segment, holds 64 Mi).
pub const MAX_LIST_VALUES: usize = 1 << 26;

/// What every row of a sidecar repeats: whose flows they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta<'a> {
    pub stream: &'a str,
    /// The segment's path in the archive (`STREAM/000001.pcap.zst`).
    pub segment: &'a str,
    pub seq: u64,
}

/// One flow as a sidecar holds it: a [`FlowRow`] that owns its frame list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub key: FlowKey,
    pub first_ns: i64,
    pub last_ns: i64,
    pub packets_ab: u64,
    pub bytes_ab: u64,
    pub packets_ba: u64,
    pub bytes_ba: u64,
    pub cut_packets: u64,
    pub cut_bytes: u64,
    /// The data frames (indices in the segment) holding the flow's stored packets.
    pub frames: Vec<u32>,
}

impl From<FlowRow<'_>> for Row {
    fn from(r: FlowRow<'_>) -> Row {
        Row {
            key: r.key,
            first_ns: r.first_ns,
            last_ns: r.last_ns,
            packets_ab: r.packets_ab,
            bytes_ab: r.bytes_ab,
            packets_ba: r.packets_ba,
            bytes_ba: r.bytes_ba,
            cut_packets: r.cut_packets,
            cut_bytes: r.cut_bytes,
            frames: r.frames.to_vec(),
        }
    }
}

impl Row {
    /// What the filter pruner may assume of every packet of the flow. A malformed row's
    /// protocol and ports are not known ([`FlowFacts::unknown_l4`]), so protocol and port
    /// primitives cannot rule it out.
    pub fn facts(&self) -> FlowFacts<'_> {
        let k = &self.key;
        let n = usize::from(k.nvlan).min(k.vlans.len());
        let ends = k.ends.map(|[a, b]| (a, b));
        FlowFacts {
            vlans: &k.vlans[..n],
            ethertype: k.ethertype,
            proto: k.proto,
            a: ends.map(|e| e.0.addr),
            b: ends.map(|e| e.1.addr),
            a_port: ends.map_or(0, |e| e.0.port),
            b_port: ends.map_or(0, |e| e.1.port),
            l4_irregular: k.irregular || k.malformed,
            unknown_l4: k.malformed,
        }
    }

    /// Packets both ways.
    pub fn packets(&self) -> u64 {
        self.packets_ab.saturating_add(self.packets_ba)
    }

    /// Wire bytes both ways.
    pub fn bytes(&self) -> u64 {
        self.bytes_ab.saturating_add(self.bytes_ba)
    }
}

/// What is wrong with a sidecar, in words. The caller names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SidecarError {
    #[error("not a Parquet file ({0})")]
    NotParquet(String),
    #[error("a Parquet file that does not decode ({0})")]
    Unreadable(String),
    #[error("not a flow index: it has no column `{0}`")]
    MissingColumn(&'static str),
    #[error("column `{column}` is {found}, a flow index has {want}")]
    ColumnType {
        column: &'static str,
        found: String,
        want: String,
    },
    #[error("it claims {0} rows, more than any segment has flows ({MAX_ROWS} at most)")]
    TooManyRows(u64),
    #[error("column `{column}` holds {found} values for {rows} rows")]
    Length {
        column: &'static str,
        found: usize,
        rows: usize,
    },
    #[error("row {row}, column `{column}`: {what}")]
    Value {
        row: usize,
        column: &'static str,
        what: String,
    },
    #[error("writing the sidecar: {0}")]
    Encode(String),
}

fn encode_err(e: impl std::fmt::Display) -> SidecarError {
    SidecarError::Encode(e.to_string())
}

/// A count as Parquet's INT64 (a count above i64::MAX cannot happen in one segment).
fn signed(column: &'static str, row: usize, v: u64) -> Result<i64, SidecarError> {
    i64::try_from(v).map_err(|_| SidecarError::Value {
        row,
        column,
        what: format!("{v} does not fit a signed 64-bit integer"),
    })
}

/// The sidecar of one segment's flows: a whole Parquet file (schema [`SCHEMA`]), one row per
/// flow in the order given, zstd level 1, one row group.
pub fn encode<'a>(
    meta: &Meta,
    rows: impl Iterator<Item = FlowRow<'a>>,
) -> Result<Vec<u8>, SidecarError> {
    let rows: Vec<FlowRow<'a>> = rows.collect();
    let n = rows.len();
    let listed = rows
        .iter()
        .map(|r| r.frames.len())
        .fold(0usize, usize::saturating_add);
    if n > MAX_ROWS || listed > MAX_LIST_VALUES {
        return Err(SidecarError::Encode(format!(
            "{n} flows listing {listed} frames: more than a sidecar holds ({MAX_ROWS} flows, {MAX_LIST_VALUES} frames)"
        )));
    }
    let seq = signed("seq", 0, meta.seq)?;
    let mut c = Columns::default();
    for (i, r) in rows.iter().enumerate() {
        let k = &r.key;
        for (d, col) in [(0, &mut c.vlan), (1, &mut c.inner_vlan)] {
            if usize::from(k.nvlan) > d {
                col.0.push(i32::from(k.vlans[d]));
                col.1.push(1);
            } else {
                col.1.push(0);
            }
        }
        c.ethertype.push(i32::from(k.ethertype));
        c.proto.push(i32::from(k.proto));
        match k.ends {
            Some([a, b]) => {
                c.addr_a
                    .0
                    .push(ByteArray::from(a.addr.to_string().as_str()));
                c.addr_b
                    .0
                    .push(ByteArray::from(b.addr.to_string().as_str()));
                c.addr_a.1.push(1);
                c.addr_b.1.push(1);
                c.port_a.push(i32::from(a.port));
                c.port_b.push(i32::from(b.port));
            }
            None => {
                c.addr_a.1.push(0);
                c.addr_b.1.push(0);
                c.port_a.push(0);
                c.port_b.push(0);
            }
        }
        let packets = r.packets_ab.saturating_add(r.packets_ba);
        let bytes = r.bytes_ab.saturating_add(r.bytes_ba);
        for (name, col, v) in [
            ("packets_ab", &mut c.packets_ab, r.packets_ab),
            ("bytes_ab", &mut c.bytes_ab, r.bytes_ab),
            ("packets_ba", &mut c.packets_ba, r.packets_ba),
            ("bytes_ba", &mut c.bytes_ba, r.bytes_ba),
            ("packets", &mut c.packets, packets),
            ("bytes", &mut c.bytes, bytes),
            ("cut_packets", &mut c.cut_packets, r.cut_packets),
            ("cut_bytes", &mut c.cut_bytes, r.cut_bytes),
        ] {
            col.push(signed(name, i, v)?);
        }
        c.malformed.push(k.malformed);
        c.irregular.push(k.irregular);
        if r.frames.is_empty() {
            c.frames.1.push(1); // an empty list
            c.frames.2.push(0);
        }
        for (j, &f) in r.frames.iter().enumerate() {
            let f = i32::try_from(f).map_err(|_| SidecarError::Value {
                row: i,
                column: "frames",
                what: format!("frame index {f} does not fit a signed 32-bit integer"),
            })?;
            c.frames.0.push(f);
            c.frames.1.push(2);
            c.frames.2.push(i16::from(j > 0));
        }
    }
    let firsts: Vec<i64> = rows.iter().map(|r| r.first_ns).collect();
    let lasts: Vec<i64> = rows.iter().map(|r| r.last_ns).collect();

    let schema = Arc::new(parse_message_type(SCHEMA).map_err(encode_err)?);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).map_err(encode_err)?,
        ))
        .set_created_by(format!("zcap {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut out = Vec::new();
    let mut w = SerializedFileWriter::new(&mut out, schema, Arc::new(props)).map_err(encode_err)?;
    let mut rg = w.next_row_group().map_err(encode_err)?;
    let mut i = 0;
    while let Some(mut col) = rg.next_column().map_err(encode_err)? {
        let r = match COLUMNS.get(i).copied() {
            Some("stream") => put_repeated_str(&mut col, meta.stream, n),
            Some("segment") => put_repeated_str(&mut col, meta.segment, n),
            Some("seq") => put::<Int64Type>(&mut col, &vec![seq; n], None, None),
            Some("first_ns" | "first") => put::<Int64Type>(&mut col, &firsts, None, None),
            Some("last_ns" | "last") => put::<Int64Type>(&mut col, &lasts, None, None),
            Some("vlan") => put::<Int32Type>(&mut col, &c.vlan.0, Some(&c.vlan.1), None),
            Some("inner_vlan") => {
                put::<Int32Type>(&mut col, &c.inner_vlan.0, Some(&c.inner_vlan.1), None)
            }
            Some("ethertype") => put::<Int32Type>(&mut col, &c.ethertype, None, None),
            Some("proto") => put::<Int32Type>(&mut col, &c.proto, None, None),
            Some("addr_a") => put::<ByteArrayType>(&mut col, &c.addr_a.0, Some(&c.addr_a.1), None),
            Some("addr_b") => put::<ByteArrayType>(&mut col, &c.addr_b.0, Some(&c.addr_b.1), None),
            Some("port_a") => put::<Int32Type>(&mut col, &c.port_a, None, None),
            Some("port_b") => put::<Int32Type>(&mut col, &c.port_b, None, None),
            Some("packets_ab") => put::<Int64Type>(&mut col, &c.packets_ab, None, None),
            Some("bytes_ab") => put::<Int64Type>(&mut col, &c.bytes_ab, None, None),
            Some("packets_ba") => put::<Int64Type>(&mut col, &c.packets_ba, None, None),
            Some("bytes_ba") => put::<Int64Type>(&mut col, &c.bytes_ba, None, None),
            Some("packets") => put::<Int64Type>(&mut col, &c.packets, None, None),
            Some("bytes") => put::<Int64Type>(&mut col, &c.bytes, None, None),
            Some("cut_packets") => put::<Int64Type>(&mut col, &c.cut_packets, None, None),
            Some("cut_bytes") => put::<Int64Type>(&mut col, &c.cut_bytes, None, None),
            Some("malformed") => put::<BoolType>(&mut col, &c.malformed, None, None),
            Some("irregular") => put::<BoolType>(&mut col, &c.irregular, None, None),
            Some("frames") => {
                put::<Int32Type>(&mut col, &c.frames.0, Some(&c.frames.1), Some(&c.frames.2))
            }
            _ => Err(SidecarError::Encode(format!(
                "the schema has a column {i} that encode does not fill"
            ))),
        };
        r?;
        col.close().map_err(encode_err)?;
        i += 1;
    }
    rg.close().map_err(encode_err)?;
    w.close().map_err(encode_err)?;
    Ok(out)
}

/// The leaf columns of [`SCHEMA`] in order (`frames` is its list's element).
const COLUMNS: [&str; 26] = [
    "stream",
    "segment",
    "seq",
    "first_ns",
    "last_ns",
    "first",
    "last",
    "vlan",
    "inner_vlan",
    "ethertype",
    "proto",
    "addr_a",
    "addr_b",
    "port_a",
    "port_b",
    "packets_ab",
    "bytes_ab",
    "packets_ba",
    "bytes_ba",
    "packets",
    "bytes",
    "cut_packets",
    "cut_bytes",
    "malformed",
    "irregular",
    "frames",
];

/// Column values (and definition, repetition levels) as [`encode`] gathers them.
#[derive(Default)]
struct Columns {
    vlan: (Vec<i32>, Vec<i16>),
    inner_vlan: (Vec<i32>, Vec<i16>),
    ethertype: Vec<i32>,
    proto: Vec<i32>,
    addr_a: (Vec<ByteArray>, Vec<i16>),
    addr_b: (Vec<ByteArray>, Vec<i16>),
    port_a: Vec<i32>,
    port_b: Vec<i32>,
    packets_ab: Vec<i64>,
    bytes_ab: Vec<i64>,
    packets_ba: Vec<i64>,
    bytes_ba: Vec<i64>,
    packets: Vec<i64>,
    bytes: Vec<i64>,
    cut_packets: Vec<i64>,
    cut_bytes: Vec<i64>,
    malformed: Vec<bool>,
    irregular: Vec<bool>,
    frames: (Vec<i32>, Vec<i16>, Vec<i16>),
}

fn put<T: DataType>(
    col: &mut parquet::file::writer::SerializedColumnWriter<'_>,
    values: &[T::T],
    def: Option<&[i16]>,
    rep: Option<&[i16]>,
) -> Result<(), SidecarError> {
    col.typed::<T>()
        .write_batch(values, def, rep)
        .map(|_| ())
        .map_err(encode_err)
}

fn put_repeated_str(
    col: &mut parquet::file::writer::SerializedColumnWriter<'_>,
    s: &str,
    n: usize,
) -> Result<(), SidecarError> {
    let v = vec![ByteArray::from(s); n];
    put::<ByteArrayType>(col, &v, None, None)
}

/// Reads a sidecar back: its rows in file order. Columns are found by name (others are
/// ignored, so later versions may add some); each must have the type [`SCHEMA`] gives it.
pub fn decode(bytes: &[u8]) -> Result<Vec<Row>, SidecarError> {
    let bytes = bytes::Bytes::copy_from_slice(bytes);
    quietly(move || decode_bytes(bytes)).unwrap_or_else(|(why, at)| {
        Err(SidecarError::Unreadable(format!(
            "the Parquet reader failed its own check{}: {why}",
            at.map(|a| format!(" at {a}")).unwrap_or_default()
        )))
    })
}

thread_local! {
    /// Inside [`quietly`] on this thread: a panic is caught there, not reported.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Where the last quiet panic happened.
    static WHERE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f`, turning a panic inside it into its message and location. The panic hook (the
/// previous one, chained) stays silent for such panics only, so a hostile sidecar gives one
/// error line and every other panic is reported as before.
fn quietly<R>(
    f: impl FnOnce() -> R + std::panic::UnwindSafe,
) -> Result<R, (String, Option<String>)> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(|q| q.get()) {
                let at = info.location().map(|l| {
                    let file = l.file().rsplit("/src/").next().unwrap_or(l.file());
                    format!("{file}:{}", l.line())
                });
                WHERE.with(|w| *w.borrow_mut() = at);
            } else {
                prev(info)
            }
        }));
    });
    let was = QUIET.with(|q| q.replace(true));
    let r = std::panic::catch_unwind(f);
    QUIET.with(|q| q.set(was));
    r.map_err(|p| {
        let why = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "it gave up".into());
        (why, WHERE.with(|w| w.borrow_mut().take()))
    })
}

/// One column's values with its levels, read whole.
struct Col<T> {
    values: Vec<T>,
    def: Vec<i16>,
    rep: Vec<i16>,
}

/// The column named `name` of every row group, with the physical type and levels `want`
/// (max definition, max repetition level).
fn column<T: DataType>(
    r: &SerializedFileReader<bytes::Bytes>,
    name: &'static str,
    levels: (i16, i16),
) -> Result<Col<T::T>, SidecarError> {
    let schema = r.metadata().file_metadata().schema_descr();
    let path = if name == "frames" {
        "frames.list.element"
    } else {
        name
    };
    let (idx, descr) = schema
        .columns()
        .iter()
        .enumerate()
        .find(|(_, c)| c.path().string() == path)
        .ok_or(SidecarError::MissingColumn(name))?;
    let found = (
        descr.physical_type(),
        descr.max_def_level(),
        descr.max_rep_level(),
    );
    let want = (T::get_physical_type(), levels.0, levels.1);
    if found != want {
        let show = |(t, d, r): (Physical, i16, i16)| {
            let mode = match (d, r) {
                (0, 0) => "required",
                (_, 0) => "optional",
                _ => "a list",
            };
            format!("{mode} {t}")
        };
        return Err(SidecarError::ColumnType {
            column: name,
            found: show(found),
            want: show(want),
        });
    }
    let mut col = Col {
        values: Vec::new(),
        def: Vec::new(),
        rep: Vec::new(),
    };
    let unreadable = |e: parquet::errors::ParquetError| {
        SidecarError::Unreadable(format!("column `{name}`: {e}"))
    };
    for g in 0..r.num_row_groups() {
        let rg = r.get_row_group(g).map_err(unreadable)?;
        let rows = usize::try_from(rg.metadata().num_rows()).unwrap_or(usize::MAX);
        // What the pages claim, before anything is decoded: a run-length encoded page can
        // claim billions of values in a few bytes.
        let mut pages = rg.get_column_page_reader(idx).map_err(unreadable)?;
        let mut claimed = 0usize;
        while let Some(m) = pages.peek_next_page().map_err(unreadable)? {
            claimed = claimed.saturating_add(m.num_levels.or(m.num_rows).unwrap_or(0));
            pages.skip_next_page().map_err(unreadable)?;
        }
        let fits = if levels.1 == 0 {
            claimed == rows
        } else {
            claimed <= MAX_LIST_VALUES
        };
        if !fits {
            return Err(SidecarError::Unreadable(format!(
                "column `{name}` of row group {g} claims {claimed} values for {rows} rows"
            )));
        }
        let cr: ColumnReader = rg.get_column_reader(idx).map_err(unreadable)?;
        let mut cr = T::get_column_reader(cr).ok_or_else(|| {
            SidecarError::Unreadable(format!("column `{name}` has no {} reader", want.0))
        })?;
        let (got, _, _) = cr
            .read_records(
                rows,
                Some(&mut col.def),
                Some(&mut col.rep),
                &mut col.values,
            )
            .map_err(unreadable)?;
        if got != rows {
            return Err(SidecarError::Unreadable(format!(
                "column `{name}` of row group {g} holds {got} rows, its metadata says {rows}"
            )));
        }
    }
    Ok(col)
}

/// A required column: exactly one value per row.
fn required<T: DataType>(
    r: &SerializedFileReader<bytes::Bytes>,
    name: &'static str,
    rows: usize,
) -> Result<Vec<T::T>, SidecarError> {
    let c = column::<T>(r, name, (0, 0))?;
    if c.values.len() != rows {
        return Err(SidecarError::Length {
            column: name,
            found: c.values.len(),
            rows,
        });
    }
    Ok(c.values)
}

/// An optional column: a value or None per row.
fn optional<T: DataType>(
    r: &SerializedFileReader<bytes::Bytes>,
    name: &'static str,
    rows: usize,
) -> Result<Vec<Option<T::T>>, SidecarError> {
    let c = column::<T>(r, name, (1, 0))?;
    if c.def.len() != rows {
        return Err(SidecarError::Length {
            column: name,
            found: c.def.len(),
            rows,
        });
    }
    let mut values = c.values.into_iter();
    let mut out = Vec::with_capacity(rows);
    for (row, &d) in c.def.iter().enumerate() {
        out.push(if d == 1 {
            Some(values.next().ok_or(SidecarError::Value {
                row,
                column: name,
                what: "a value its levels announce is missing".into(),
            })?)
        } else {
            None
        });
    }
    Ok(out)
}

/// A small integer column as the type its values must fit.
fn narrow<N: TryFrom<i64>>(
    values: Vec<i64>,
    name: &'static str,
    what: &str,
) -> Result<Vec<N>, SidecarError> {
    values
        .into_iter()
        .enumerate()
        .map(|(row, v)| {
            N::try_from(v).map_err(|_| SidecarError::Value {
                row,
                column: name,
                what: format!("{v} is not {what}"),
            })
        })
        .collect()
}

fn wide(v: Vec<i32>) -> Vec<i64> {
    v.into_iter().map(i64::from).collect()
}

fn decode_bytes(bytes: bytes::Bytes) -> Result<Vec<Row>, SidecarError> {
    if bytes.len() < 12 || !bytes.starts_with(b"PAR1") || !bytes.ends_with(b"PAR1") {
        return Err(SidecarError::NotParquet(format!(
            "{} bytes without Parquet's PAR1 magic at both ends",
            bytes.len()
        )));
    }
    let r =
        SerializedFileReader::new(bytes).map_err(|e| SidecarError::NotParquet(e.to_string()))?;
    let claimed = r.metadata().file_metadata().num_rows();
    let rows = usize::try_from(claimed)
        .ok()
        .filter(|&n| n <= MAX_ROWS)
        .ok_or(SidecarError::TooManyRows(claimed as u64))?;
    let in_groups: i64 = r
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows().max(0))
        .fold(0i64, i64::saturating_add);
    if in_groups != claimed {
        return Err(SidecarError::Unreadable(format!(
            "the file claims {claimed} rows, its row groups {in_groups}"
        )));
    }

    let i64s = |name| required::<Int64Type>(&r, name, rows);
    let counts = |name: &'static str| narrow::<u64>(i64s(name)?, name, "a count (negative)");
    let first_ns = i64s("first_ns")?;
    let last_ns = i64s("last_ns")?;
    let vlan = optional::<Int32Type>(&r, "vlan", rows)?;
    let inner = optional::<Int32Type>(&r, "inner_vlan", rows)?;
    let ethertype: Vec<u16> = narrow(
        wide(required::<Int32Type>(&r, "ethertype", rows)?),
        "ethertype",
        "an EtherType (0..=65535)",
    )?;
    let proto: Vec<u8> = narrow(
        wide(required::<Int32Type>(&r, "proto", rows)?),
        "proto",
        "an IP protocol (0..=255)",
    )?;
    let addr_a = optional::<ByteArrayType>(&r, "addr_a", rows)?;
    let addr_b = optional::<ByteArrayType>(&r, "addr_b", rows)?;
    let port_a: Vec<u16> = narrow(
        wide(required::<Int32Type>(&r, "port_a", rows)?),
        "port_a",
        "a port (0..=65535)",
    )?;
    let port_b: Vec<u16> = narrow(
        wide(required::<Int32Type>(&r, "port_b", rows)?),
        "port_b",
        "a port (0..=65535)",
    )?;
    let packets_ab = counts("packets_ab")?;
    let bytes_ab = counts("bytes_ab")?;
    let packets_ba = counts("packets_ba")?;
    let bytes_ba = counts("bytes_ba")?;
    let cut_packets = counts("cut_packets")?;
    let cut_bytes = counts("cut_bytes")?;
    let malformed = required::<BoolType>(&r, "malformed", rows)?;
    let irregular = required::<BoolType>(&r, "irregular", rows)?;
    let frames = frame_lists(column::<Int32Type>(&r, "frames", (2, 1))?, rows)?;

    let addr = |row: usize, column: &'static str, b: &ByteArray| -> Result<IpAddr, SidecarError> {
        let bad = |what: String| SidecarError::Value { row, column, what };
        let s = std::str::from_utf8(b.data()).map_err(|_| bad("not UTF-8 text".into()))?;
        s.parse()
            .map_err(|_| bad(format!("{s:?} is not an IPv4 or IPv6 address")))
    };
    let mut out = Vec::with_capacity(rows);
    for (i, frames) in frames.into_iter().enumerate() {
        let mut vlans = [0u16; 2];
        let mut nvlan = 0u8;
        for (d, v, column) in [(0, vlan[i], "vlan"), (1, inner[i], "inner_vlan")] {
            let Some(v) = v else { continue };
            if usize::from(nvlan) != d {
                return Err(SidecarError::Value {
                    row: i,
                    column,
                    what: "an inner VLAN without an outer one".into(),
                });
            }
            vlans[d] = u16::try_from(v).map_err(|_| SidecarError::Value {
                row: i,
                column,
                what: format!("{v} is not a VLAN id (0..=65535)"),
            })?;
            nvlan += 1;
        }
        let ends = match (&addr_a[i], &addr_b[i]) {
            (None, None) => None,
            (Some(a), Some(b)) => Some([
                Endpoint {
                    addr: addr(i, "addr_a", a)?,
                    port: port_a[i],
                },
                Endpoint {
                    addr: addr(i, "addr_b", b)?,
                    port: port_b[i],
                },
            ]),
            (a, _) => {
                return Err(SidecarError::Value {
                    row: i,
                    column: if a.is_none() { "addr_a" } else { "addr_b" },
                    what: "null while the other endpoint has an address".into(),
                })
            }
        };
        out.push(Row {
            key: FlowKey {
                vlans,
                nvlan,
                ethertype: ethertype[i],
                proto: proto[i],
                malformed: malformed[i],
                irregular: irregular[i],
                ends,
            },
            first_ns: first_ns[i],
            last_ns: last_ns[i],
            packets_ab: packets_ab[i],
            bytes_ab: bytes_ab[i],
            packets_ba: packets_ba[i],
            bytes_ba: bytes_ba[i],
            cut_packets: cut_packets[i],
            cut_bytes: cut_bytes[i],
            frames,
        });
    }
    Ok(out)
}

/// The `frames` lists from their levels: definition 0 a null list (read as empty), 1 an
/// empty list, 2 an element; repetition 0 starts a row.
fn frame_lists(c: Col<i32>, rows: usize) -> Result<Vec<Vec<u32>>, SidecarError> {
    let bad = |row: usize, what: String| SidecarError::Value {
        row,
        column: "frames",
        what,
    };
    if c.def.len() != c.rep.len() {
        return Err(bad(0, "its levels disagree in number".into()));
    }
    let mut out: Vec<Vec<u32>> = Vec::with_capacity(rows);
    let mut values = c.values.into_iter();
    for (&d, &r) in c.def.iter().zip(&c.rep) {
        if r == 0 {
            out.push(Vec::new());
        }
        let row = out.len().saturating_sub(1);
        let Some(list) = out.last_mut() else {
            return Err(bad(0, "the first value continues a row".into()));
        };
        if d == 2 {
            let v = values
                .next()
                .ok_or_else(|| bad(row, "a value its levels announce is missing".into()))?;
            list.push(u32::try_from(v).map_err(|_| bad(row, format!("{v} is not a frame index")))?);
        }
    }
    if out.len() != rows {
        return Err(SidecarError::Length {
            column: "frames",
            found: out.len(),
            rows,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::parse::tests::{eth, ipv4, ipv6, tcp, udp};
    use super::super::{parse, FlowTable};
    use super::*;
    use proptest::prelude::*;

    const META: Meta = Meta {
        stream: "trace-20261125T081530Z",
        segment: "trace-20261125T081530Z/000007.pcap.zst",
        seq: 7,
    };

    /// A table with a bit of everything: both directions, QinQ, IPv6, non-IP, malformed,
    /// a cut packet, an empty frame list.
    fn table() -> FlowTable {
        let mut t = FlowTable::new();
        let v4 = parse(1, &eth(&[], 0x0800, &ipv4(6, &[], 0, &tcp(40000, 443))));
        let qinq = parse(
            1,
            &eth(
                &[(0x88a8, 100), (0x8100, 200)],
                0x86dd,
                &ipv6(17, &udp(5353, 53)),
            ),
        );
        let lldp = parse(1, &eth(&[(0x8100, 7)], 0x88cc, &[0; 40]));
        let mut bad = ipv4(6, &[], 0, &tcp(1, 2));
        bad[0] = 0x43;
        let bad = parse(1, &eth(&[], 0x0800, &bad));
        t.add(&v4, 1_700_000_000_000_000_000, 60, 0);
        t.add(&v4, 1_700_000_000_000_000_500, 1514, 3);
        t.add(&qinq, 20, 90, 1);
        t.add(&lldp, 30, 64, 1);
        t.add(&bad, 40, 54, 2);
        t.add_cut(crate::flow::FlowKey::of(&v4), 50, 1514, 1514, None);
        let only_cut = parse(1, &eth(&[], 0x0800, &ipv4(17, &[], 0, &udp(9, 9))));
        t.add_cut(crate::flow::FlowKey::of(&only_cut), 60, 100, 100, None);
        t
    }

    #[test]
    fn rows_round_trip() {
        let t = table();
        let bytes = encode(&META, t.rows()).unwrap();
        assert_eq!(&bytes[..4], b"PAR1");
        let back = decode(&bytes).unwrap();
        let want: Vec<Row> = t.rows().map(Row::from).collect();
        assert_eq!(back, want);
        assert!(back.iter().any(|r| r.frames.is_empty()));
        assert!(back
            .iter()
            .any(|r| r.key.nvlan == 2 && r.key.vlans == [100, 200]));
        assert!(back.iter().any(|r| r.key.ends.is_none()));
        assert_eq!(
            decode(&encode(&META, std::iter::empty()).unwrap()).unwrap(),
            []
        );
    }

    #[test]
    fn facts_of_a_malformed_row_leave_protocol_and_ports_open() {
        use super::super::filter::{FlowFilter, Tri};
        let t = table();
        let rows: Vec<Row> = t.rows().map(Row::from).collect();
        let bad = rows.iter().find(|r| r.key.malformed).unwrap();
        let f = bad.facts();
        assert!(f.unknown_l4 && f.l4_irregular && f.a.is_some());
        for expr in ["tcp", "udp", "port 80", "tcp port 2", "icmp"] {
            let e = FlowFilter::parse(expr).unwrap().eval(&f);
            assert_eq!(e, Tri::Maybe, "{expr}");
        }
        // Its addresses are known: another host rules it out.
        let e = FlowFilter::parse("host 9.9.9.9").unwrap().eval(&f);
        assert_eq!(e, Tri::False);
        let good = rows.iter().find(|r| r.key.proto == 6).unwrap().facts();
        assert_eq!(FlowFilter::parse("udp").unwrap().eval(&good), Tri::False);
        assert_eq!(
            FlowFilter::parse("port 443").unwrap().eval(&good),
            Tri::True
        );
        let tagged = rows.iter().find(|r| r.key.nvlan == 2).unwrap();
        assert_eq!(tagged.facts().vlans, &[100, 200]);
    }

    /// A sidecar written with other column types or without a column, through the same
    /// writer.
    fn custom(
        schema: &str,
        fill: impl Fn(usize, &mut parquet::file::writer::SerializedColumnWriter<'_>),
    ) -> Vec<u8> {
        let schema = Arc::new(parse_message_type(schema).unwrap());
        let mut out = Vec::new();
        let mut w = SerializedFileWriter::new(&mut out, schema, Default::default()).unwrap();
        let mut rg = w.next_row_group().unwrap();
        let mut i = 0;
        while let Some(mut col) = rg.next_column().unwrap() {
            fill(i, &mut col);
            col.close().unwrap();
            i += 1;
        }
        rg.close().unwrap();
        w.close().unwrap();
        out
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = decode(b"hello").unwrap_err();
        assert!(matches!(e, SidecarError::NotParquet(_)), "{e}");
        let other = custom("message m { required int32 x; }", |_, c| {
            put::<Int32Type>(c, &[1, 2], None, None).unwrap()
        });
        let e = decode(&other).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not a flow index: it has no column `first_ns`"
        );
        let wrong = SCHEMA.replace("required int32 proto;", "required int64 proto;");
        let bytes = custom(&wrong, |i, c| match COLUMNS[i] {
            "stream" | "segment" => put_repeated_str(c, "x", 1).unwrap(),
            "vlan" | "inner_vlan" => put::<Int32Type>(c, &[], Some(&[0]), None).unwrap(),
            "addr_a" | "addr_b" => put::<ByteArrayType>(c, &[], Some(&[0]), None).unwrap(),
            "frames" => put::<Int32Type>(c, &[], Some(&[1]), Some(&[0])).unwrap(),
            "malformed" | "irregular" => put::<BoolType>(c, &[false], None, None).unwrap(),
            "ethertype" | "port_a" | "port_b" => put::<Int32Type>(c, &[0], None, None).unwrap(),
            _ => put::<Int64Type>(c, &[0], None, None).unwrap(),
        });
        let e = decode(&bytes).unwrap_err();
        assert_eq!(
            e.to_string(),
            "column `proto` is required INT64, a flow index has required INT32"
        );
    }

    #[test]
    fn values_out_of_range_are_named() {
        // One row, every column as given (`_` columns 0), through the same writer.
        let one = |addr_a: &str, port_a: i32, vlans: (&[i32], &[i16], &[i16])| {
            let addr_a = ByteArray::from(addr_a);
            custom(SCHEMA, move |i, c| match COLUMNS[i] {
                "stream" | "segment" => put_repeated_str(c, "x", 1).unwrap(),
                "vlan" => put::<Int32Type>(c, vlans.0, Some(vlans.1), None).unwrap(),
                "inner_vlan" => put::<Int32Type>(c, vlans.0, Some(vlans.2), None).unwrap(),
                "addr_a" => {
                    put::<ByteArrayType>(c, std::slice::from_ref(&addr_a), Some(&[1]), None)
                        .unwrap()
                }
                "addr_b" => put::<ByteArrayType>(c, &["::1".into()], Some(&[1]), None).unwrap(),
                "frames" => put::<Int32Type>(c, &[3, 4], Some(&[2, 2]), Some(&[0, 1])).unwrap(),
                "malformed" | "irregular" => put::<BoolType>(c, &[false], None, None).unwrap(),
                "port_a" => put::<Int32Type>(c, &[port_a], None, None).unwrap(),
                "ethertype" | "proto" | "port_b" => put::<Int32Type>(c, &[0], None, None).unwrap(),
                _ => put::<Int64Type>(c, &[0], None, None).unwrap(),
            })
        };
        let untagged: (&[i32], &[i16], &[i16]) = (&[], &[0], &[0]);
        let rows = decode(&one("10.0.0.1", 80, untagged)).unwrap();
        assert_eq!(rows[0].frames, [3, 4]);
        assert_eq!(rows[0].key.ends.unwrap()[0].port, 80);
        let e = decode(&one("10.0.0.1", 70000, untagged)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "row 0, column `port_a`: 70000 is not a port (0..=65535)"
        );
        let e = decode(&one("10.0.0.300", 80, untagged)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "row 0, column `addr_a`: \"10.0.0.300\" is not an IPv4 or IPv6 address"
        );
        let e = decode(&one("10.0.0.1", 80, (&[7], &[0], &[1]))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "row 0, column `inner_vlan`: an inner VLAN without an outer one"
        );
    }

    #[test]
    fn truncated_and_garbled_files_are_errors_not_panics() {
        let good = encode(&META, table().rows()).unwrap();
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err(), "a {n}-byte prefix decoded");
        }
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..3000 {
            let mut b = good.clone();
            for _ in 0..1 + (rng % 4) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let at = (rng >> 8) as usize % b.len();
                b[at] ^= 1 << (rng % 8);
            }
            let _ = decode(&b); // Ok (a flipped count) or Err, never a panic or abort.
        }
        // Bytes that trip one of the parquet crate's own assertions come back as an error.
        let caught = quietly(|| -> u8 { panic!("boom") }).unwrap_err();
        assert_eq!(caught.0, "boom");
        assert!(caught.1.unwrap().contains("sidecar.rs:"));
    }

    fn arb_headers() -> impl Strategy<Value = (Vec<u8>, bool)> {
        (
            prop::sample::select(vec![0usize, 1, 2]),
            prop::sample::select(vec![6u8, 17, 1, 132]),
            0u16..4,
            0u16..4,
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(tags, proto, sp, dp, v6, reverse)| {
                let l4 = match proto {
                    6 => tcp(sp, dp),
                    17 | 132 => udp(sp, dp),
                    _ => vec![8, 0, 0, 0, 0, 0, 0, 0],
                };
                let tagset = [(0x88a8, 10), (0x8100, 20)];
                let (et, mut ip) = if v6 {
                    (0x86dd, ipv6(proto, &l4))
                } else {
                    (0x0800, ipv4(proto, &[], 0, &l4))
                };
                if reverse && !v6 {
                    let (a, b) = ip.split_at_mut(16);
                    a[12..16].swap_with_slice(&mut b[..4]);
                }
                (eth(&tagset[..tags], et, &ip), reverse)
            })
    }

    proptest! {
        #[test]
        fn random_tables_round_trip(
            pkts in prop::collection::vec((arb_headers(), any::<i64>(), 0u32..70000, 0u32..50, any::<bool>()), 0..60)
        ) {
            let mut t = FlowTable::new();
            for ((bytes, _), ts, len, frame, cut) in &pkts {
                let h = parse(1, bytes);
                if *cut {
                    t.add_cut(crate::flow::FlowKey::of(&h), *ts, *len, *len / 2, (frame % 2 == 0).then_some(*frame));
                } else {
                    t.add(&h, *ts, *len, *frame);
                }
            }
            let bytes = encode(&META, t.rows()).unwrap();
            let back = decode(&bytes).unwrap();
            let want: Vec<Row> = t.rows().map(Row::from).collect();
            prop_assert_eq!(back, want);
        }
    }
}
