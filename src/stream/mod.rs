//! Record framing over a byte stream that arrives in arbitrary pieces.
//!
//! [`Framer`] is fed the bytes of one stream (a PCAP-over-IP connection or an input file) in
//! whatever pieces the receive path produced, and reports each *unit* — a pcap file header or
//! record, a pcapng block — when its last byte arrives, with its stream offset and, for
//! packets, its timestamp. It never copies packet bytes: a unit's head (at most 28 bytes) is
//! copied only when it straddles two pieces, and whole blocks are copied only for the file
//! header, section headers and interface descriptions, which every segment repeats.
//!
//! Leniency follows libpcap: a caplen above the snaplen is kept and counted; a caplen above
//! 262144, a block with a bad length, a packet on an undeclared interface or a stream that
//! ends inside a unit is an error naming the byte offset.

pub mod pcap;
pub mod pcapng;

use pcapng::Interface;

/// A framing error: where in the stream and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte offset {offset}: {reason}")]
pub struct FrameError {
    pub offset: u64,
    pub reason: String,
}

/// The container format of a stream, known after its first bytes. For pcapng, the byte order
/// is the current section's: each section may have its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pcap(pcap::FileHeader),
    PcapNg { big_endian: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    /// Part of the section's header: the pcap file header, or a pcapng SHB/IDB before the
    /// section's first other block. Kept in [`Framer::header`], not in data frames.
    Header,
    /// A pcapng SHB that starts a new section after data: the writer starts a new segment.
    /// Its bytes become the new [`Framer::header`]. The section may be in the other byte
    /// order; its blocks are read in its own.
    Section,
    /// A pcapng IDB after data began: stays in the data and is appended to the header so
    /// that later segments declare it too.
    LateInterface,
    /// A packet record or block.
    Packet { ts_ns: i64 },
    /// Any other pcapng block (statistics, name resolution, custom, unknown): kept as is.
    Other,
}

/// One complete unit: `len` bytes starting at stream offset `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    pub kind: UnitKind,
    pub start: u64,
    pub len: u64,
}

impl Unit {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Where a packet's captured bytes are in its unit, and what they are: what the writer's
/// flow index reads of every packet ([`Framer::packet`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketInfo {
    /// Offset of the captured data from the unit's start (the record or block header).
    pub data_off: u32,
    pub caplen: u32,
    /// Original (wire) length.
    pub wire_len: u32,
    /// The link type of the packet's interface (the file's for pcap).
    pub linktype: u32,
}

/// Lenient-but-counted oddities, reported when a stream ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Warnings {
    /// Records whose captured length exceeds the declared snaplen (kept unchanged).
    pub caplen_over_snaplen: u64,
    /// pcapng blocks of a type this version does not know (kept unchanged).
    pub unknown_blocks: u64,
}

const HEAD_MAX: usize = 28;

#[derive(Debug, Clone, Copy)]
enum Mode {
    Detect,
    Pcap(pcap::FileHeader),
    PcapNg { big_endian: bool },
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    PcapFileHeader,
    Record {
        ts_ns: i64,
    },
    Block {
        block_type: u32,
        ts_ns: i64,
        copy: bool,
        /// The byte order the block is read in: the section's, or for an SHB its own.
        big_endian: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct Cur {
    start: u64,
    total: u64,
    done: u64,
    what: Pending,
    tail: [u8; 4],
}

/// The framing state machine of one stream. See the module docs.
#[derive(Debug)]
pub struct Framer {
    pos: u64,
    mode: Mode,
    head: [u8; HEAD_MAX],
    head_have: usize,
    cur: Option<Cur>,
    block: Vec<u8>,
    in_data: bool,
    header: Vec<u8>,
    prev_header: Vec<u8>,
    ifaces: Vec<Interface>,
    prev_ifaces: Vec<Interface>,
    last_ts: i64,
    packets: u64,
    warnings: Warnings,
    /// The packet being framed, or the last one framed.
    packet: PacketInfo,
}

impl Default for Framer {
    fn default() -> Self {
        Self::new()
    }
}

impl Framer {
    pub fn new() -> Framer {
        Framer {
            pos: 0,
            mode: Mode::Detect,
            head: [0; HEAD_MAX],
            head_have: 0,
            cur: None,
            block: Vec::new(),
            in_data: false,
            header: Vec::new(),
            prev_header: Vec::new(),
            ifaces: Vec::new(),
            prev_ifaces: Vec::new(),
            last_ts: 0,
            packets: 0,
            warnings: Warnings::default(),
            packet: PacketInfo::default(),
        }
    }

    /// Stream offset of the next byte to be fed.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The stream's format; for pcapng, the byte order of the current section (it changes
    /// when a new SHB in the other order is complete, with its [`UnitKind::Section`]).
    pub fn format(&self) -> Option<Format> {
        match self.mode {
            Mode::Detect => None,
            Mode::Pcap(fh) => Some(Format::Pcap(fh)),
            Mode::PcapNg { big_endian } => Some(Format::PcapNg { big_endian }),
        }
    }

    /// The bytes every segment of the current section starts with: the pcap file header, or
    /// the SHB followed by every IDB declared so far.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// The header of the section before the current one (after a [`UnitKind::Section`]).
    pub fn previous_header(&self) -> &[u8] {
        &self.prev_header
    }

    /// Interfaces of the current pcapng section (empty for pcap).
    pub fn interfaces(&self) -> &[Interface] {
        &self.ifaces
    }

    /// Link types of the current section, in interface order.
    pub fn linktypes(&self) -> Vec<u32> {
        match self.mode {
            Mode::Pcap(fh) => vec![fh.linktype],
            _ => self.ifaces.iter().map(|i| i.linktype as u32).collect(),
        }
    }

    /// Link types of the section before the current one (after a [`UnitKind::Section`]).
    pub fn previous_linktypes(&self) -> Vec<u32> {
        self.prev_ifaces.iter().map(|i| i.linktype as u32).collect()
    }

    pub fn packets(&self) -> u64 {
        self.packets
    }

    pub fn warnings(&self) -> Warnings {
        self.warnings
    }

    /// The packet that [`Framer::step`] just reported (valid until the next step).
    pub fn packet(&self) -> PacketInfo {
        self.packet
    }

    /// Consumes a prefix of `data` and returns how many bytes it took and the unit that
    /// ended there, if any. Call repeatedly until all of `data` is consumed.
    pub fn step(&mut self, data: &[u8]) -> Result<(usize, Option<Unit>), FrameError> {
        if self.cur.is_some() {
            return self.continue_body(data);
        }
        if self.head_have == 0 {
            let need = self.head_need(data)?;
            if data.len() >= need {
                return self.start_unit(data, true);
            }
        }
        // Slow path: the head straddles pieces; gather it (at most HEAD_MAX bytes).
        let mut used = 0;
        loop {
            let need = self.head_need(&self.head[..self.head_have])?;
            if self.head_have >= need {
                break;
            }
            let take = (need - self.head_have).min(data.len() - used);
            if take == 0 {
                self.pos += used as u64;
                return Ok((used, None));
            }
            self.head[self.head_have..self.head_have + take]
                .copy_from_slice(&data[used..used + take]);
            self.head_have += take;
            used += take;
        }
        self.pos += used as u64;
        let head = self.head;
        let have = self.head_have;
        self.head_have = 0;
        let (_, unit) = self.start_unit(&head[..have], false)?;
        Ok((used, unit))
    }

    /// Steps through all of `data`, handing each unit that ends in it to `on_unit`.
    pub fn feed(&mut self, data: &[u8], mut on_unit: impl FnMut(Unit)) -> Result<(), FrameError> {
        let mut pos = 0;
        while pos < data.len() {
            let (n, unit) = self.step(&data[pos..])?;
            pos += n;
            if let Some(u) = unit {
                on_unit(u);
            }
        }
        Ok(())
    }

    /// Checks the stream ended on a unit boundary. Call at end of input.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.pos == 0 && self.head_have == 0 {
            return Err(FrameError {
                offset: 0,
                reason: "empty stream: no bytes before the end".into(),
            });
        }
        if let Some(cur) = &self.cur {
            return Err(self.err(
                cur.start,
                format!(
                    "truncated {}: the stream ends after {} of its {} bytes",
                    self.unit_noun(),
                    cur.done,
                    cur.total
                ),
            ));
        }
        if self.head_have > 0 {
            return Err(self.err(
                self.pos - self.head_have as u64,
                format!(
                    "truncated {}: the stream ends after {} bytes of it",
                    self.head_noun(),
                    self.head_have
                ),
            ));
        }
        Ok(())
    }

    fn unit_noun(&self) -> &'static str {
        match self.mode {
            Mode::PcapNg { .. } => "block",
            Mode::Pcap(_) => "record",
            Mode::Detect => "file header",
        }
    }

    /// What the bytes before a unit's body are called: the file header itself while the
    /// format is not known yet, else the record's or block's header.
    fn head_noun(&self) -> &'static str {
        match self.mode {
            Mode::PcapNg { .. } => "block header",
            Mode::Pcap(_) => "record header",
            Mode::Detect => "file header",
        }
    }

    fn err(&self, offset: u64, reason: String) -> FrameError {
        FrameError { offset, reason }
    }

    /// Bytes of head needed given the head bytes seen so far (`seen` may be longer).
    fn head_need(&self, seen: &[u8]) -> Result<usize, FrameError> {
        Ok(match self.mode {
            Mode::Detect => {
                if seen.len() < 4 {
                    4
                } else {
                    let magic = [seen[0], seen[1], seen[2], seen[3]];
                    match pcap::sniff(magic).map_err(|r| self.err(self.pos, r))? {
                        Some(_) => pcap::FILE_HEADER_LEN,
                        None if u32::from_le_bytes(magic) == pcapng::SHB => 12,
                        None => {
                            return Err(self.err(
                                self.pos,
                                format!(
                                "not a pcap or pcapng stream: magic {magic:02x?} matches neither"
                            ),
                            ))
                        }
                    }
                }
            }
            Mode::Pcap(_) => pcap::RECORD_HEADER_LEN,
            Mode::PcapNg { big_endian } => {
                if seen.len() < 4 {
                    8
                } else {
                    pcapng::head_len(pcap::rd32(seen, big_endian)).max(8)
                }
            }
        })
    }

    /// Begins the unit whose head is at the front of `src`. With `in_place`, `src` is the
    /// caller's data (nothing consumed yet); otherwise it is the gathered head (already
    /// consumed and counted in `pos`).
    fn start_unit(
        &mut self,
        src: &[u8],
        in_place: bool,
    ) -> Result<(usize, Option<Unit>), FrameError> {
        let start = if in_place {
            self.pos
        } else {
            self.pos - src.len() as u64
        };
        let (total, what) = self.size_unit(src, start)?;
        let head_len = self.head_need(src)?;
        let copy = matches!(
            what,
            Pending::PcapFileHeader | Pending::Block { copy: true, .. }
        );
        if copy {
            self.block.clear();
        }
        let mut cur = Cur {
            start,
            total,
            done: 0,
            what,
            tail: [0; 4],
        };
        if in_place {
            let avail = (src.len() as u64).min(total) as usize;
            self.absorb(&mut cur, &src[..avail]);
            self.pos += avail as u64;
            if cur.done == total {
                return Ok((avail, Some(self.complete(cur)?)));
            }
            self.cur = Some(cur);
            Ok((avail, None))
        } else {
            // A zero-length record is complete with its head alone.
            self.absorb(&mut cur, &src[..head_len.min(total as usize)]);
            if cur.done == total {
                return Ok((0, Some(self.complete(cur)?)));
            }
            self.cur = Some(cur);
            Ok((0, None))
        }
    }

    fn continue_body(&mut self, data: &[u8]) -> Result<(usize, Option<Unit>), FrameError> {
        let mut cur = self.cur.take().expect("unit in progress");
        let n = ((cur.total - cur.done) as usize).min(data.len());
        self.absorb(&mut cur, &data[..n]);
        self.pos += n as u64;
        if cur.done == cur.total {
            Ok((n, Some(self.complete(cur)?)))
        } else {
            self.cur = Some(cur);
            Ok((n, None))
        }
    }

    /// Accounts for `bytes` of the current unit: copies them if the unit is kept whole, and
    /// catches the trailing length word of a pcapng block.
    fn absorb(&mut self, cur: &mut Cur, bytes: &[u8]) {
        if matches!(
            cur.what,
            Pending::PcapFileHeader | Pending::Block { copy: true, .. }
        ) {
            self.block.extend_from_slice(bytes);
        }
        if let Pending::Block { .. } = cur.what {
            let tail_start = cur.total - 4;
            let end = cur.done + bytes.len() as u64;
            if end > tail_start {
                let from = tail_start.max(cur.done);
                for p in from..end {
                    cur.tail[(p - tail_start) as usize] = bytes[(p - cur.done) as usize];
                }
            }
        }
        cur.done += bytes.len() as u64;
    }

    /// Reads a unit's head: its total length and what it is. Validates everything the head
    /// alone can tell.
    fn size_unit(&mut self, head: &[u8], start: u64) -> Result<(u64, Pending), FrameError> {
        match self.mode {
            Mode::Detect => {
                if u32::from_le_bytes([head[0], head[1], head[2], head[3]]) == pcapng::SHB {
                    let be = pcapng::section_order(head).map_err(|r| self.err(start, r))?;
                    self.mode = Mode::PcapNg { big_endian: be };
                    self.size_unit(head, start)
                } else {
                    Ok((pcap::FILE_HEADER_LEN as u64, Pending::PcapFileHeader))
                }
            }
            Mode::Pcap(fh) => {
                let r = pcap::Record::new_checked(head, &fh).expect("16-byte head");
                let caplen = r.caplen();
                if caplen > pcap::MAX_CAPLEN {
                    return Err(self.err(
                        start,
                        format!(
                            "record claims a captured length of {caplen} bytes, above the maximum {}",
                            pcap::MAX_CAPLEN
                        ),
                    ));
                }
                if caplen > fh.snaplen {
                    self.warnings.caplen_over_snaplen += 1;
                }
                self.packet = PacketInfo {
                    data_off: pcap::RECORD_HEADER_LEN as u32,
                    caplen,
                    wire_len: r.origlen(),
                    linktype: fh.linktype,
                };
                Ok((r.total_len() as u64, Pending::Record { ts_ns: r.ts_ns() }))
            }
            Mode::PcapNg { big_endian } => {
                // Each section has its own byte order (Wireshark reads such files; libpcap
                // refuses them): an SHB is read in the order its byte-order magic gives,
                // which becomes the stream's when the SHB is complete.
                let mut be = big_endian;
                if pcap::rd32(head, be) == pcapng::SHB {
                    be = pcapng::section_order(head).map_err(|r| self.err(start, r))?;
                }
                let b = pcapng::Block::new_checked(head, be).map_err(|r| self.err(start, r))?;
                let block_type = b.block_type();
                let mut ts_ns = 0;
                match block_type {
                    pcapng::EPB | pcapng::OPB | pcapng::SPB => {
                        let caplen = b.check_packet().map_err(|r| self.err(start, r))?;
                        let iface_no = b.interface();
                        let iface = *self.ifaces.get(iface_no as usize).ok_or_else(|| {
                            self.err(
                                start,
                                format!(
                                    "packet on interface {iface_no}, but the section declares {} interface(s)",
                                    self.ifaces.len()
                                ),
                            )
                        })?;
                        if iface.snaplen != 0 && caplen > iface.snaplen {
                            self.warnings.caplen_over_snaplen += 1;
                        }
                        self.packet = PacketInfo {
                            data_off: b.data_offset(),
                            caplen,
                            wire_len: b.wire_len(),
                            linktype: u32::from(iface.linktype),
                        };
                        ts_ns = if block_type == pcapng::SPB {
                            self.last_ts
                        } else {
                            iface.ts_ns(b.raw_ts())
                        };
                    }
                    pcapng::SHB | pcapng::IDB | 4 | 5 | 9 | 0x0A | 0xBAD | 0x4000_0BAD => {}
                    _ => self.warnings.unknown_blocks += 1,
                }
                let copy = matches!(block_type, pcapng::SHB | pcapng::IDB);
                Ok((
                    b.total_len() as u64,
                    Pending::Block {
                        block_type,
                        ts_ns,
                        copy,
                        big_endian: be,
                    },
                ))
            }
        }
    }

    fn complete(&mut self, cur: Cur) -> Result<Unit, FrameError> {
        let kind = match cur.what {
            Pending::PcapFileHeader => {
                let fh =
                    pcap::FileHeader::parse(&self.block).map_err(|r| self.err(cur.start, r))?;
                self.mode = Mode::Pcap(fh);
                self.header.clear();
                self.header.extend_from_slice(&self.block);
                UnitKind::Header
            }
            Pending::Record { ts_ns } => {
                self.last_ts = ts_ns;
                self.packets += 1;
                self.in_data = true;
                UnitKind::Packet { ts_ns }
            }
            Pending::Block {
                block_type,
                ts_ns,
                big_endian,
                ..
            } => {
                let trailer = pcap::rd32(&cur.tail, big_endian) as u64;
                if trailer != cur.total {
                    return Err(self.err(
                        cur.start,
                        format!(
                            "block of type 0x{block_type:08x} ends with length {trailer}, but starts with {}",
                            cur.total
                        ),
                    ));
                }
                match block_type {
                    pcapng::SHB => {
                        pcapng::check_shb_version(&self.block, big_endian)
                            .map_err(|r| self.err(cur.start, r))?;
                        let kind = if cur.start == 0 {
                            UnitKind::Header
                        } else {
                            UnitKind::Section
                        };
                        self.mode = Mode::PcapNg { big_endian };
                        std::mem::swap(&mut self.ifaces, &mut self.prev_ifaces);
                        self.ifaces.clear();
                        std::mem::swap(&mut self.header, &mut self.prev_header);
                        self.header.clear();
                        self.header.extend_from_slice(&self.block);
                        self.in_data = false;
                        kind
                    }
                    pcapng::IDB => {
                        let iface = Interface::parse(&self.block, big_endian)
                            .map_err(|r| self.err(cur.start, r))?;
                        self.ifaces.push(iface);
                        self.header.extend_from_slice(&self.block);
                        if self.in_data {
                            UnitKind::LateInterface
                        } else {
                            UnitKind::Header
                        }
                    }
                    pcapng::EPB | pcapng::OPB | pcapng::SPB => {
                        self.last_ts = ts_ns;
                        self.packets += 1;
                        self.in_data = true;
                        UnitKind::Packet { ts_ns }
                    }
                    _ => {
                        self.in_data = true;
                        UnitKind::Other
                    }
                }
            }
        };
        Ok(Unit {
            kind,
            start: cur.start,
            len: cur.total,
        })
    }
}

/// Frames a whole in-memory stream (tests, readers of decompressed frames).
pub fn frame_all(bytes: &[u8]) -> Result<(Framer, Vec<Unit>), FrameError> {
    let mut f = Framer::new();
    let mut units = Vec::new();
    f.feed(bytes, |u| units.push(u))?;
    f.finish()?;
    Ok((f, units))
}

#[cfg(test)]
pub(crate) mod testdata {
    //! Small hand-built streams for framing tests.

    pub fn pcap(be: bool, nanos: bool, snaplen: u32, records: &[(u32, u32, &[u8])]) -> Vec<u8> {
        let p32 =
            |v: &mut Vec<u8>, x: u32| v.extend(if be { x.to_be_bytes() } else { x.to_le_bytes() });
        let mut v = Vec::new();
        p32(&mut v, if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 });
        v.extend(if be { [0, 2, 0, 4] } else { [2, 0, 4, 0] });
        p32(&mut v, 0);
        p32(&mut v, 0);
        p32(&mut v, snaplen);
        p32(&mut v, 1);
        for (sec, frac, data) in records {
            p32(&mut v, *sec);
            p32(&mut v, *frac);
            p32(&mut v, data.len() as u32);
            p32(&mut v, data.len() as u32 + 4);
            v.extend_from_slice(data);
        }
        v
    }

    pub fn block(be: bool, t: u32, body: &[u8]) -> Vec<u8> {
        let p32 =
            |v: &mut Vec<u8>, x: u32| v.extend(if be { x.to_be_bytes() } else { x.to_le_bytes() });
        let mut body = body.to_vec();
        body.resize(body.len().div_ceil(4) * 4, 0);
        let len = 12 + body.len() as u32;
        let mut v = Vec::new();
        p32(&mut v, t);
        p32(&mut v, len);
        v.extend(body);
        p32(&mut v, len);
        v
    }

    pub fn shb(be: bool) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend(if be {
            0x1A2B3C4Du32.to_be_bytes()
        } else {
            0x1A2B3C4Du32.to_le_bytes()
        });
        body.extend(if be { [0, 1, 0, 0] } else { [1, 0, 0, 0] });
        body.extend((-1i64).to_le_bytes());
        block(be, 0x0A0D0D0A, &body)
    }

    pub fn idb(be: bool, lt: u16) -> Vec<u8> {
        idb_opts(be, lt, &[])
    }

    /// An IDB with options `(code, value)`, each padded to 4 bytes, then opt_endofopt.
    pub fn idb_opts(be: bool, lt: u16, opts: &[(u16, &[u8])]) -> Vec<u8> {
        let p16 =
            |v: &mut Vec<u8>, x: u16| v.extend(if be { x.to_be_bytes() } else { x.to_le_bytes() });
        let mut body = Vec::new();
        p16(&mut body, lt);
        body.extend([0, 0]);
        body.extend(if be {
            65535u32.to_be_bytes()
        } else {
            65535u32.to_le_bytes()
        });
        if !opts.is_empty() {
            for (code, val) in opts {
                p16(&mut body, *code);
                p16(&mut body, val.len() as u16);
                body.extend_from_slice(val);
                body.resize(body.len().div_ceil(4) * 4, 0);
            }
            body.extend([0; 4]);
        }
        block(be, 1, &body)
    }

    pub fn epb(be: bool, iface: u32, ts: u64, data: &[u8]) -> Vec<u8> {
        let p32 =
            |v: &mut Vec<u8>, x: u32| v.extend(if be { x.to_be_bytes() } else { x.to_le_bytes() });
        let mut body = Vec::new();
        p32(&mut body, iface);
        p32(&mut body, (ts >> 32) as u32);
        p32(&mut body, ts as u32);
        p32(&mut body, data.len() as u32);
        p32(&mut body, data.len() as u32);
        body.extend_from_slice(data);
        block(be, 6, &body)
    }
}

#[cfg(test)]
mod tests {
    use super::testdata::*;
    use super::*;
    use proptest::prelude::*;

    fn kinds(units: &[Unit]) -> Vec<UnitKind> {
        units.iter().map(|u| u.kind).collect()
    }

    #[test]
    fn pcap_units_and_timestamps() {
        let s = pcap(false, false, 4, &[(1, 2, b"abcd"), (3, 4, b"xyz12")]);
        let (f, units) = frame_all(&s).unwrap();
        assert_eq!(
            kinds(&units),
            vec![
                UnitKind::Header,
                UnitKind::Packet {
                    ts_ns: 1_000_002_000
                },
                UnitKind::Packet {
                    ts_ns: 3_000_004_000
                }
            ]
        );
        assert_eq!(units[2].end(), s.len() as u64);
        assert_eq!(
            f.warnings().caplen_over_snaplen,
            1,
            "5 bytes over a snaplen of 4"
        );
        assert_eq!(f.header(), &s[..24]);
    }

    #[test]
    fn packet_info_locates_the_captured_bytes_of_every_packet_kind() {
        let s = pcap(false, false, 64, &[(1, 2, b"abcd")]);
        let mut f = Framer::new();
        let mut seen = Vec::new();
        let mut pos = 0;
        while pos < s.len() {
            let (n, u) = f.step(&s[pos..]).unwrap();
            pos += n;
            if let Some(
                u @ Unit {
                    kind: UnitKind::Packet { .. },
                    ..
                },
            ) = u
            {
                seen.push((u, f.packet()));
            }
        }
        let (u, p) = seen[0];
        let at = (u.start + u64::from(p.data_off)) as usize;
        assert_eq!(&s[at..at + p.caplen as usize], b"abcd");
        assert_eq!((p.wire_len, p.linktype), (8, 1), "origlen is caplen + 4");
        for be in [false, true] {
            let mut s = shb(be);
            s.extend(idb(be, 1));
            s.extend(idb(be, 101));
            s.extend(epb(be, 1, 7, b"raw-ip"));
            let mut spb = Vec::new();
            spb.extend(if be {
                9u32.to_be_bytes()
            } else {
                9u32.to_le_bytes()
            });
            spb.extend(b"ether-spb");
            s.extend(block(be, 3, &spb));
            let mut f = Framer::new();
            let mut got = Vec::new();
            f.feed(&s, |_| {}).unwrap();
            let mut f2 = Framer::new();
            let mut pos = 0;
            while pos < s.len() {
                let (n, u) = f2.step(&s[pos..]).unwrap();
                pos += n;
                if let Some(
                    u @ Unit {
                        kind: UnitKind::Packet { .. },
                        ..
                    },
                ) = u
                {
                    let p = f2.packet();
                    let at = (u.start + u64::from(p.data_off)) as usize;
                    got.push((
                        s[at..at + p.caplen as usize].to_vec(),
                        p.wire_len,
                        p.linktype,
                    ));
                }
            }
            assert_eq!(
                got,
                vec![(b"raw-ip".to_vec(), 6, 101), (b"ether-spb".to_vec(), 9, 1)]
            );
        }
    }

    #[test]
    fn pcapng_two_interfaces_late_idb_and_unknown_block() {
        for be in [false, true] {
            let mut s = shb(be);
            s.extend(idb(be, 1));
            s.extend(epb(be, 0, 5_000_000, b"hello"));
            s.extend(idb(be, 101));
            s.extend(block(be, 0x1234, b"??"));
            s.extend(epb(be, 1, 6_000_000, b"world!"));
            let (f, units) = frame_all(&s).unwrap();
            assert_eq!(
                kinds(&units),
                vec![
                    UnitKind::Header,
                    UnitKind::Header,
                    UnitKind::Packet {
                        ts_ns: 5_000_000_000
                    },
                    UnitKind::LateInterface,
                    UnitKind::Other,
                    UnitKind::Packet {
                        ts_ns: 6_000_000_000
                    },
                ]
            );
            assert_eq!(f.linktypes(), vec![1, 101]);
            assert_eq!(f.warnings().unknown_blocks, 1);
            assert_eq!(f.header().len(), shb(be).len() + 2 * idb(be, 1).len());
        }
    }

    #[test]
    fn errors_name_the_offset() {
        let e = frame_all(b"GARBAGE!").unwrap_err();
        assert_eq!(e.offset, 0);
        assert!(e.reason.contains("not a pcap"), "{e}");

        let mut s = pcap(false, false, 65535, &[(1, 2, b"abcd")]);
        let good = s.len() as u64;
        s.extend(pcap(false, false, 0, &[(1, 1, &[0u8; 8])])[24..].iter());
        s[good as usize + 8..good as usize + 12].copy_from_slice(&300_000u32.to_le_bytes());
        let e = frame_all(&s).unwrap_err();
        assert_eq!(e.offset, good);
        assert!(e.reason.contains("300000"), "{e}");

        let s = pcap(true, true, 65535, &[(1, 2, b"abcd")]);
        let e = frame_all(&s[..s.len() - 1]).unwrap_err();
        assert_eq!(e.offset, 24);
        assert!(e.reason.contains("truncated record"), "{e}");

        assert!(frame_all(b"").unwrap_err().reason.contains("empty stream"));

        // Cut inside the file header, a record header and a block header: each is named once.
        let s = pcap(false, false, 65535, &[(1, 2, b"abcd")]);
        let e = frame_all(&s[..10]).unwrap_err();
        assert_eq!(
            (e.offset, e.reason.as_str()),
            (
                0,
                "truncated file header: the stream ends after 10 bytes of it"
            )
        );
        let e = frame_all(&s[..2]).unwrap_err();
        assert_eq!(
            e.reason,
            "truncated file header: the stream ends after 2 bytes of it"
        );
        let e = frame_all(&s[..30]).unwrap_err();
        assert_eq!(
            (e.offset, e.reason.as_str()),
            (
                24,
                "truncated record header: the stream ends after 6 bytes of it"
            )
        );
        let mut ng = shb(false);
        ng.extend(idb(false, 1));
        let at = ng.len();
        ng.extend(epb(false, 0, 0, b"x"));
        let e = frame_all(&ng[..at + 5]).unwrap_err();
        assert_eq!(
            (e.offset, e.reason.as_str()),
            (
                at as u64,
                "truncated block header: the stream ends after 5 bytes of it"
            )
        );

        let mut s = shb(false);
        s.extend(idb(false, 1));
        let at = s.len() as u64;
        s.extend(epb(false, 3, 0, b"x"));
        let e = frame_all(&s).unwrap_err();
        assert_eq!(e.offset, at);
        assert!(e.reason.contains("interface 3"), "{e}");

        let mut s = shb(false);
        let mut b = idb(false, 1);
        let n = b.len();
        b[n - 4] = 99;
        s.extend(b);
        let e = frame_all(&s).unwrap_err();
        assert!(e.reason.contains("ends with length 99"), "{e}");
    }

    #[test]
    fn second_section_is_reported() {
        let mut s = shb(false);
        s.extend(idb(false, 1));
        s.extend(epb(false, 0, 1, b"a"));
        let second = s.len() as u64;
        s.extend(shb(false));
        s.extend(idb(false, 105));
        s.extend(epb(false, 0, 2, b"b"));
        let (f, units) = frame_all(&s).unwrap();
        assert_eq!(units[3].kind, UnitKind::Section);
        assert_eq!(units[3].start, second);
        assert_eq!(units[4].kind, UnitKind::Header);
        assert_eq!(f.linktypes(), vec![105]);
    }

    /// Two sections, the second in the other byte order from the first, each with its own
    /// timestamp options and a late IDB in the second.
    fn two_orders(first_be: bool) -> (Vec<u8>, u64, u64) {
        let (a, b) = (first_be, !first_be);
        let i64b = |be: bool, x: i64| if be { x.to_be_bytes() } else { x.to_le_bytes() };
        let mut s = shb(a);
        // Nanosecond resolution, 2 s offset.
        s.extend(idb_opts(a, 1, &[(9, &[9]), (14, &i64b(a, 2))]));
        s.extend(epb(a, 0, 1_700_000_000_123_456_789, b"first"));
        let second = s.len() as u64;
        s.extend(shb(b));
        // Millisecond resolution, 100 s offset.
        s.extend(idb_opts(b, 105, &[(9, &[3]), (14, &i64b(b, 100))]));
        s.extend(epb(b, 0, 1_700_000_000_123, b"second"));
        let late = s.len() as u64;
        // Power-of-two resolution (2^-10 s): 1024 units are one second.
        s.extend(idb_opts(b, 101, &[(9, &[0x80 | 10])]));
        s.extend(epb(b, 1, 5 * 1024 + 512, b"third!"));
        s.extend(block(b, 5, &[0; 8]));
        (s, second, late)
    }

    #[test]
    fn a_section_in_the_other_byte_order_is_read_in_its_order() {
        for first_be in [false, true] {
            let (s, second, late) = two_orders(first_be);
            let (f, units) = frame_all(&s).unwrap();
            assert_eq!(
                kinds(&units),
                vec![
                    UnitKind::Header,
                    UnitKind::Header,
                    UnitKind::Packet {
                        ts_ns: 1_700_000_002_123_456_789
                    },
                    UnitKind::Section,
                    UnitKind::Header,
                    UnitKind::Packet {
                        ts_ns: 1_700_000_100_123_000_000
                    },
                    UnitKind::LateInterface,
                    UnitKind::Packet {
                        ts_ns: 5_500_000_000
                    },
                    UnitKind::Other,
                ],
                "first section big-endian: {first_be}"
            );
            assert_eq!(units[3].start, second);
            assert_eq!(units[6].start, late);
            assert_eq!(units.last().unwrap().end(), s.len() as u64);
            assert_eq!(
                f.format(),
                Some(Format::PcapNg {
                    big_endian: !first_be
                })
            );
            assert_eq!(f.linktypes(), vec![105, 101]);
            assert_eq!(f.previous_linktypes(), vec![1]);
            assert_eq!(f.previous_header(), &s[..units[1].end() as usize]);
            // The second section's header: its SHB, its first IDB and the late IDB.
            let mut want = s[second as usize..units[4].end() as usize].to_vec();
            want.extend_from_slice(&s[late as usize..units[6].end() as usize]);
            assert_eq!(f.header(), &want[..]);
            assert_eq!(f.warnings(), Warnings::default());

            // Byte by byte: the SHB's head straddles pieces, and until the SHB is complete
            // the format is still the first section's.
            let mut g = Framer::new();
            let mut got = Vec::new();
            for (i, b) in s.iter().enumerate() {
                let (n, u) = g.step(std::slice::from_ref(b)).unwrap();
                assert_eq!(n, 1);
                let be = match g.format() {
                    Some(Format::PcapNg { big_endian }) => big_endian,
                    None if i < 11 => {
                        got.extend(u);
                        continue; // the first SHB's head is not complete yet
                    }
                    other => panic!("after byte {i}: {other:?}"),
                };
                let in_second = i as u64 + 1 >= units[3].end();
                assert_eq!(be, first_be ^ in_second, "after byte {i}");
                got.extend(u);
            }
            g.finish().unwrap();
            assert_eq!(got, units);
        }
    }

    #[test]
    fn a_bad_second_section_header_names_its_offset() {
        for first_be in [false, true] {
            let (s, second, _) = two_orders(first_be);
            let at = second as usize;
            // A byte-order magic that is neither order.
            let mut bad = s.clone();
            bad[at + 8..at + 12].copy_from_slice(&[1, 2, 3, 4]);
            let e = frame_all(&bad).unwrap_err();
            assert_eq!(e.offset, second);
            assert!(e.reason.contains("byte-order magic"), "{e}");
            // The trailing length written in the first section's order.
            let mut bad = s.clone();
            let len = shb(false).len();
            let t = at + len - 4;
            bad[t..t + 4].copy_from_slice(&if first_be {
                (len as u32).to_be_bytes()
            } else {
                (len as u32).to_le_bytes()
            });
            let e = frame_all(&bad).unwrap_err();
            assert_eq!(e.offset, second);
            assert!(e.reason.contains("ends with length"), "{e}");
            // A length that is right only in the other order.
            let mut bad = s.clone();
            bad[at + 4..at + 8].reverse();
            let e = frame_all(&bad).unwrap_err();
            assert_eq!(e.offset, second);
            assert!(e.reason.contains("bad length"), "{e}");
        }
    }

    fn sample() -> Vec<u8> {
        let mut s = shb(true);
        s.extend(idb(true, 1));
        s.extend(idb(true, 228));
        for i in 0..40u32 {
            s.extend(epb(
                true,
                i % 2,
                i as u64 * 1000,
                &vec![i as u8; (i * 7 % 61) as usize],
            ));
            if i % 9 == 0 {
                s.extend(block(true, 5, &[0; 8]));
            }
        }
        s
    }

    /// `sample()` (big-endian), then a little-endian section, then a big-endian one again.
    fn mixed_sample() -> Vec<u8> {
        let mut s = sample();
        for be in [false, true] {
            s.extend(shb(be));
            s.extend(idb_opts(be, 101, &[(9, &[9])]));
            for i in 0..10u32 {
                s.extend(epb(
                    be,
                    0,
                    i as u64 * 7,
                    &vec![i as u8; (i * 5 % 23) as usize],
                ));
            }
            s.extend(idb(be, 1));
            s.extend(epb(be, 1, 99, b"late"));
        }
        s
    }

    /// Feeds `s` in pieces of `cut` bytes; returns units until the first error.
    fn feed(s: &[u8], cut: usize) -> (Vec<Unit>, Option<FrameError>) {
        let mut f = Framer::new();
        let mut units = Vec::new();
        for piece in s.chunks(cut.max(1)) {
            let mut p = 0;
            while p < piece.len() {
                match f.step(&piece[p..]) {
                    Ok((n, u)) => {
                        assert!(n > 0, "no progress");
                        p += n;
                        units.extend(u);
                    }
                    Err(e) => return (units, Some(e)),
                }
            }
        }
        (units, f.finish().err())
    }

    proptest! {
        /// Garbage or damaged streams never panic the framer; the units it reports before an
        /// error tile the stream from offset 0 and the error lies at or after their end.
        #[test]
        fn mutated_streams_never_panic_and_units_tile(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in 1usize..300,
            which in 0u8..3,
            truncate in any::<Option<usize>>(),
        ) {
            let mut s = match which {
                0 => sample(),
                1 => mixed_sample(),
                _ => pcap(true, false, 100, &[(1, 2, b"abc"), (3, 4, &[0u8; 150])]),
            };
            for (at, b) in flips {
                let i = at % s.len();
                s[i] = b;
            }
            if let Some(t) = truncate {
                s.truncate(t % (s.len() + 1));
            }
            let (units, err) = feed(&s, cut);
            let mut end = 0;
            for u in &units {
                prop_assert_eq!(u.start, end);
                end = u.end();
            }
            prop_assert!(end <= s.len() as u64);
            if let Some(e) = err {
                prop_assert!(e.offset >= end, "error at {} before the last unit ends at {}", e.offset, end);
                prop_assert!(e.offset <= s.len() as u64);
            } else {
                prop_assert_eq!(end, s.len() as u64);
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), cut in 1usize..64) {
            let _ = feed(&bytes, cut);
        }

        #[test]
        fn any_chunking_gives_the_same_units(cuts in proptest::collection::vec(1usize..97, 1..200), which in 0u8..3) {
            let s = if which == 0 {
                sample()
            } else if which == 1 {
                mixed_sample()
            } else {
                let recs: Vec<(u32, u32, Vec<u8>)> = (0..50u32).map(|i| (i, i * 3, vec![i as u8; (i * 13 % 70) as usize])).collect();
                let refs: Vec<(u32, u32, &[u8])> = recs.iter().map(|(a, b, c)| (*a, *b, &c[..])).collect();
                pcap(false, true, 65535, &refs)
            };
            let (_, want) = frame_all(&s).unwrap();
            let mut f = Framer::new();
            let mut got = Vec::new();
            let mut pos = 0;
            let mut i = 0;
            while pos < s.len() {
                let end = (pos + cuts[i % cuts.len()]).min(s.len());
                i += 1;
                let piece = &s[pos..end];
                let mut p = 0;
                while p < piece.len() {
                    let (n, u) = f.step(&piece[p..]).unwrap();
                    prop_assert!(n > 0, "every step makes progress");
                    p += n;
                    got.extend(u);
                }
                pos = end;
            }
            f.finish().unwrap();
            prop_assert_eq!(got, want);
        }
    }
}
