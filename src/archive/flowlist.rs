//! Reading the flow index (docs/ARCHIVE.md, "Flow index"): a segment's sidecar, fetched from
//! the directory or the bucket and checked against its `flows` line before anything in it is
//! believed ([`load`]); the data frames a filter may match in it ([`frames_that_may_match`],
//! for `cat FILTER`); and `zcap flows`, the conversation list made from the sidecars alone
//! ([`flows`]). A sidecar that is missing, changed or does not decode is said on stderr and
//! treated as no index: a reader then decompresses all of that segment's frames, so a bad
//! index costs time, never packets. Nothing here writes to the archive.

use super::catalog::Catalog;
use super::flows::{check_sidecar, read_sidecar};
use super::location::Location;
use super::manifest::SegmentEntry;
use super::read::Selection;
use super::sidecar_name;
use crate::flow::filter::FlowFilter;
use crate::flow::sidecar::Row;
use crate::flow::FlowKey;
use std::collections::HashMap;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;

/// A segment's flow index as a reader finds it.
#[derive(Debug)]
pub enum Index {
    /// The sidecar's rows, checked against the manifest.
    Rows(Vec<Row>),
    /// No `flows` line names the segment.
    Missing,
    /// A `flows` line names it, but the sidecar cannot be used (already said on stderr).
    Unusable,
}

/// The flow index of segment `e`: its sidecar read (a local file, never through a link; or
/// one range GET of exactly the recorded size) and checked by [`check_sidecar`] against the
/// `flows` line and the segment line. What is wrong is said on stderr, naming the file.
pub fn load(loc: &Location, c: &Catalog, e: &SegmentEntry) -> Index {
    let Some((line, f)) = c.flows.get(&e.path) else {
        return Index::Missing;
    };
    let rel = sidecar_name(&e.path);
    let (shown, bytes) = match loc {
        Location::Dir(d) => {
            let path = d.join(&rel);
            let got = read_sidecar(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| b.ok_or_else(|| format!("missing (manifest line {line} names it)")));
            (path.display().to_string(), got)
        }
        Location::Remote(client) => {
            let got = client
                .get_range(&rel, 0, f.bytes)
                .map_err(|e| e.to_string());
            (client.show(&rel), got)
        }
    };
    match bytes.and_then(|b| check_sidecar(&b, *line, f, e)) {
        Ok(rows) => Index::Rows(rows),
        Err(why) => {
            eprintln!(
                "zcap: warning: {shown}: flow index not used: {why}; reading all of {}'s frames (`zcap verify --repair` rebuilds it)",
                e.path
            );
            Index::Unusable
        }
    }
}

/// Per data frame of a segment with `nframes` of them, whether a packet the filter may match
/// lies in it: the union of the `frames` of every row whose facts the filter does not rule
/// out. None when the rows do not fit the segment (then every frame must be read).
pub fn frames_that_may_match(
    rows: &[Row],
    nframes: usize,
    prune: &FlowFilter,
) -> Option<Vec<bool>> {
    let mut want = vec![false; nframes];
    for r in rows.iter().filter(|r| prune.may_match(&r.facts())) {
        for &i in &r.frames {
            *want.get_mut(i as usize)? = true;
        }
    }
    Some(want)
}

/// What `zcap flows` lists.
#[derive(Debug, Clone)]
pub struct FlowsOptions {
    pub loc: Location,
    /// Streams and a time window: flows of those streams that overlap it.
    pub sel: Selection,
    /// Only flows this tcpdump expression may match (None: all).
    pub filter: Option<String>,
    /// One JSON object per flow instead of the table.
    pub json: bool,
}

/// One conversation: the rows of one flow key, summed over segments.
#[derive(Debug, Clone)]
struct Conv {
    key: FlowKey,
    first_ns: i64,
    last_ns: i64,
    packets_ab: u64,
    bytes_ab: u64,
    packets_ba: u64,
    bytes_ba: u64,
    cut_packets: u64,
    cut_bytes: u64,
    segments: u64,
}

impl Conv {
    fn new(r: &Row) -> Conv {
        Conv {
            key: r.key,
            first_ns: r.first_ns,
            last_ns: r.last_ns,
            packets_ab: 0,
            bytes_ab: 0,
            packets_ba: 0,
            bytes_ba: 0,
            cut_packets: 0,
            cut_bytes: 0,
            segments: 0,
        }
    }

    fn add(&mut self, r: &Row) {
        self.first_ns = self.first_ns.min(r.first_ns);
        self.last_ns = self.last_ns.max(r.last_ns);
        self.packets_ab = self.packets_ab.saturating_add(r.packets_ab);
        self.bytes_ab = self.bytes_ab.saturating_add(r.bytes_ab);
        self.packets_ba = self.packets_ba.saturating_add(r.packets_ba);
        self.bytes_ba = self.bytes_ba.saturating_add(r.bytes_ba);
        self.cut_packets = self.cut_packets.saturating_add(r.cut_packets);
        self.cut_bytes = self.cut_bytes.saturating_add(r.cut_bytes);
        self.segments += 1;
    }

    fn packets(&self) -> u64 {
        self.packets_ab.saturating_add(self.packets_ba)
    }

    fn bytes(&self) -> u64 {
        self.bytes_ab.saturating_add(self.bytes_ba)
    }

    fn vlan(&self, i: usize) -> Option<u16> {
        (i < usize::from(self.key.nvlan)).then(|| self.key.vlans.get(i).copied())?
    }

    fn ends(&self) -> (Option<IpAddr>, u16, Option<IpAddr>, u16) {
        match self.key.ends {
            Some([a, b]) => (Some(a.addr), a.port, Some(b.addr), b.port),
            None => (None, 0, None, 0),
        }
    }

    /// The protocol as the table shows it: the IP protocol's name, else the EtherType's.
    fn proto_name(&self) -> String {
        let k = &self.key;
        if k.malformed {
            return "malformed".into();
        }
        let ip = k.ends.is_some() && matches!(k.ethertype, 0x0800 | 0x86dd);
        let name = match (ip, k.proto, k.ethertype) {
            (true, 6, _) => "tcp".to_string(),
            (true, 17, _) => "udp".into(),
            (true, 132, _) => "sctp".into(),
            (true, 1, _) => "icmp".into(),
            (true, 58, _) => "icmp6".into(),
            (true, p, 0x0800) => format!("ip/{p}"),
            (true, p, _) => format!("ip6/{p}"),
            (false, _, 0x0806) => "arp".into(),
            (false, _, 0x8035) => "rarp".into(),
            (false, _, 0x0800) => "ip".into(),
            (false, _, 0x86dd) => "ip6".into(),
            (false, _, t) => format!("{t:#06x}"),
        };
        if k.irregular {
            format!("{name}*")
        } else {
            name
        }
    }

    fn json(&self) -> serde_json::Value {
        let (a, pa, b, pb) = self.ends();
        serde_json::json!({
            "addr_a": a.map(|a| a.to_string()),
            "port_a": pa,
            "addr_b": b.map(|b| b.to_string()),
            "port_b": pb,
            "proto": self.key.proto,
            "ethertype": self.key.ethertype,
            "vlan": self.vlan(0),
            "inner_vlan": self.vlan(1),
            "packets_ab": self.packets_ab,
            "bytes_ab": self.bytes_ab,
            "packets_ba": self.packets_ba,
            "bytes_ba": self.bytes_ba,
            "packets": self.packets(),
            "bytes": self.bytes(),
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "first": super::read::rfc3339(Some(self.first_ns)),
            "last": super::read::rfc3339(Some(self.last_ns)),
            "duration": (self.last_ns - self.first_ns) as f64 / 1e9,
            "cut_packets": self.cut_packets,
            "cut_bytes": self.cut_bytes,
            "malformed": self.key.malformed,
            "irregular": self.key.irregular,
            "segments": self.segments,
        })
    }
}

/// `zcap flows ARCHIVE [--from --to] [FILTER] [--json]`: the conversations of the selected
/// segments from their sidecars, one per flow key (rows of several segments summed), by
/// first packet. Segments without a usable index are counted and named on stderr.
pub fn flows(o: &FlowsOptions) -> anyhow::Result<bool> {
    let prune = o.filter.as_deref().map(FlowFilter::parse).transpose()?;
    let c = o.loc.catalog()?;
    c.trusted()?;
    super::read::warn_chain(&c);
    let sel = &o.sel;
    if let (Some(f), Some(t)) = (sel.from, sel.to) {
        if f > t {
            anyhow::bail!("--from is after --to: the window is empty");
        }
    }
    let streams = super::read::selected_streams(&c, sel)?;
    let mut convs: Vec<Conv> = Vec::new();
    let mut at: HashMap<FlowKey, usize> = HashMap::new();
    let (mut segments, mut unindexed) = (0u64, Vec::new());
    let mut base: Option<i64> = None;
    for s in &streams {
        for e in c.stream_segments(s) {
            if !sel.segment_overlaps(e) {
                continue;
            }
            segments += 1;
            let rows = match load(&o.loc, &c, e) {
                Index::Rows(rows) => rows,
                Index::Missing | Index::Unusable => {
                    unindexed.push(e.path.clone());
                    continue;
                }
            };
            if let Some(f) = e.first_ns {
                base = Some(base.map_or(f, |b| b.min(f)));
            }
            for r in &rows {
                if r.last_ns < sel.lo() || r.first_ns > sel.hi() {
                    continue;
                }
                if prune.as_ref().is_some_and(|p| !p.may_match(&r.facts())) {
                    continue;
                }
                let i = *at.entry(r.key).or_insert_with(|| {
                    convs.push(Conv::new(r));
                    convs.len() - 1
                });
                convs[i].add(r);
            }
        }
    }
    // By first packet; ties in the order the flows were first met.
    let mut order: Vec<usize> = (0..convs.len()).collect();
    order.sort_by_key(|&i| (convs[i].first_ns, i));

    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if o.json {
        for &i in &order {
            // As an io::Error, so that a closed pipe (`| head`) ends quietly.
            serde_json::to_writer(&mut out, &convs[i].json()).map_err(io::Error::from)?;
            out.write_all(b"\n")?;
        }
    } else {
        table(
            &mut out,
            &convs,
            &order,
            base.unwrap_or(0),
            segments,
            &unindexed,
        )?;
    }
    out.flush()?;
    if !unindexed.is_empty() {
        let how = match o.loc.dir() {
            Some(d) => format!("run `zcap index {}`", d.display()),
            None => "run `zcap index DIR` on the local archive and upload it".into(),
        };
        eprintln!(
            "zcap: warning: {} of {segments} segment(s) have no usable flow index, so their flows are not listed ({}{}); {how}",
            unindexed.len(),
            unindexed[..unindexed.len().min(5)].join(", "),
            if unindexed.len() > 5 { ", ..." } else { "" },
        );
    }
    Ok(true)
}

/// The conversation table, `tshark -z conv`-style, and a totals line.
fn table<W: Write>(
    out: &mut W,
    convs: &[Conv],
    order: &[usize],
    base: i64,
    segments: u64,
    unindexed: &[String],
) -> io::Result<()> {
    let cut = convs.iter().any(|c| c.cut_packets > 0);
    let mut head = vec![
        "PROTO",
        "VLAN",
        "ADDRESS A",
        "PORT A",
        "ADDRESS B",
        "PORT B",
        "FRAMES A>B",
        "BYTES A>B",
        "FRAMES B>A",
        "BYTES B>A",
        "FRAMES",
        "BYTES",
        "REL START",
        "DURATION",
    ];
    if cut {
        head.extend(["CUT", "CUT BYTES"]);
    }
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = order
        .iter()
        .map(|&i| {
            let c = &convs[i];
            let (a, pa, b, pb) = c.ends();
            let vlan = match (c.vlan(0), c.vlan(1)) {
                (Some(o), Some(i)) => format!("{o}.{i}"),
                (Some(o), None) => o.to_string(),
                _ => "-".into(),
            };
            let mut r = vec![
                c.proto_name(),
                vlan,
                dash(a.map(|a| a.to_string())),
                dash(a.map(|_| pa.to_string())),
                dash(b.map(|b| b.to_string())),
                dash(b.map(|_| pb.to_string())),
                c.packets_ab.to_string(),
                c.bytes_ab.to_string(),
                c.packets_ba.to_string(),
                c.bytes_ba.to_string(),
                c.packets().to_string(),
                c.bytes().to_string(),
                format!("{:.9}", (c.first_ns - base) as f64 / 1e9),
                format!("{:.4}", (c.last_ns - c.first_ns) as f64 / 1e9),
            ];
            if cut {
                r.extend([c.cut_packets.to_string(), c.cut_bytes.to_string()]);
            }
            r
        })
        .collect();
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, s) in r.iter().enumerate() {
            w[i] = w[i].max(s.len());
        }
    }
    let line = |out: &mut W, cells: &[&str]| -> io::Result<()> {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            // Names left, numbers right.
            if matches!(i, 0 | 2 | 4) {
                s.push_str(&format!("{cell:<width$}  ", width = w[i]));
            } else {
                s.push_str(&format!("{cell:>width$}  ", width = w[i]));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(out, &head)?;
    for r in &rows {
        let refs: Vec<&str> = r.iter().map(String::as_str).collect();
        line(out, &refs)?;
    }
    let (packets, bytes) = convs.iter().fold((0u64, 0u64), |(p, b), c| {
        (p.saturating_add(c.packets()), b.saturating_add(c.bytes()))
    });
    let cut_packets: u64 = convs.iter().map(|c| c.cut_packets).sum();
    writeln!(
        out,
        "total: {} flow(s), {packets} packets, {bytes} bytes, from {} of {segments} segment(s){}{}{}",
        convs.len(),
        segments - unindexed.len() as u64,
        if unindexed.is_empty() {
            String::new()
        } else {
            format!(
                "; {} segment(s) without a flow index are not counted",
                unindexed.len()
            )
        },
        if cut_packets > 0 {
            format!(
                "; flow cutoff: {cut_packets} packets cut, {} bytes not stored",
                convs.iter().map(|c| c.cut_bytes).sum::<u64>()
            )
        } else {
            String::new()
        },
        if convs.iter().any(|c| c.key.irregular) {
            "; * fragments or IPv6 extension headers, counted apart from their flow"
        } else {
            ""
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::parse::tests::{eth, ipv4, tcp, udp};
    use crate::flow::{parse, FlowTable};

    fn rows(t: &FlowTable) -> Vec<Row> {
        t.rows().map(Row::from).collect()
    }

    #[test]
    fn frames_of_the_rows_a_filter_may_match() {
        let mut t = FlowTable::new();
        let web = parse(1, &eth(&[], 0x0800, &ipv4(6, &[], 0, &tcp(40000, 443))));
        let dns = parse(1, &eth(&[], 0x0800, &ipv4(17, &[], 0, &udp(5353, 53))));
        let mut bad = ipv4(6, &[], 0, &tcp(1, 443));
        bad[0] = 0x43; // IHL 3: malformed, its ports unknown
        let bad = parse(1, &eth(&[], 0x0800, &bad));
        t.add(&web, 1, 60, 0);
        t.add(&web, 2, 60, 2);
        t.add(&dns, 3, 60, 1);
        t.add(&bad, 4, 60, 3);
        let r = rows(&t);
        let want =
            |expr: &str| frames_that_may_match(&r, 5, &FlowFilter::parse(expr).unwrap()).unwrap();
        assert_eq!(want("port 443"), [true, false, true, true, false]);
        assert_eq!(want("udp"), [false, true, false, true, false]);
        assert_eq!(want("host 192.0.2.1"), [false; 5]);
        assert_eq!(want("tcp[13] & 2 != 0"), [true, true, true, true, false]);
        // A row naming a frame the segment does not have: the index cannot be used.
        assert!(frames_that_may_match(&r, 3, &FlowFilter::parse("port 443").unwrap()).is_none());
    }
}
