//! Classic libpcap file framing: the 24-byte file header and 16-byte record headers, as
//! validated views over borrowed bytes (area memory or a decompressed frame). Nothing here
//! copies record data; once a view is constructed by `new_checked`, no accessor panics.

/// libpcap's MAXIMUM_SNAPLEN: a record claiming more than this ends the stream.
pub const MAX_CAPLEN: u32 = 262_144;
pub const FILE_HEADER_LEN: usize = 24;
pub const RECORD_HEADER_LEN: usize = 16;

pub const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
pub const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
const MAGIC_KUZNETZOV: u32 = 0xa1b2_cd34;

mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION_MAJOR: Range<usize> = 4..6;
    pub const VERSION_MINOR: Range<usize> = 6..8;
    pub const SNAPLEN: Range<usize> = 16..20;
    pub const LINKTYPE: Range<usize> = 20..24;

    pub const TS_SEC: Range<usize> = 0..4;
    pub const TS_FRAC: Range<usize> = 4..8;
    pub const CAPLEN: Range<usize> = 8..12;
    pub const ORIGLEN: Range<usize> = 12..16;
}

/// The facts a reader needs from a pcap file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// Fields are big-endian (the writer's host differed from ours).
    pub big_endian: bool,
    pub nanos: bool,
    pub version: (u16, u16),
    pub snaplen: u32,
    pub linktype: u32,
}

/// Reads the magic of a stream's first four bytes: `Some((big_endian, nanos))` for pcap.
pub fn sniff(magic: [u8; 4]) -> Result<Option<(bool, bool)>, String> {
    match u32::from_le_bytes(magic) {
        MAGIC_MICROS => Ok(Some((false, false))),
        MAGIC_NANOS => Ok(Some((false, true))),
        m if m == MAGIC_MICROS.swap_bytes() => Ok(Some((true, false))),
        m if m == MAGIC_NANOS.swap_bytes() => Ok(Some((true, true))),
        m if m == MAGIC_KUZNETZOV || m == MAGIC_KUZNETZOV.swap_bytes() => {
            Err("modified (Kuznetzov) pcap format is not supported".into())
        }
        _ => Ok(None),
    }
}

fn rd16(b: &[u8], be: bool) -> u16 {
    let a = [b[0], b[1]];
    if be {
        u16::from_be_bytes(a)
    } else {
        u16::from_le_bytes(a)
    }
}

pub(crate) fn rd32(b: &[u8], be: bool) -> u32 {
    let a = [b[0], b[1], b[2], b[3]];
    if be {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    }
}

impl FileHeader {
    /// Parses and validates the 24-byte file header.
    pub fn parse(b: &[u8]) -> Result<FileHeader, String> {
        if b.len() < FILE_HEADER_LEN {
            return Err(format!(
                "pcap file header needs {FILE_HEADER_LEN} bytes, have {}",
                b.len()
            ));
        }
        let magic = [b[0], b[1], b[2], b[3]];
        let (big_endian, nanos) = sniff(magic)?
            .ok_or_else(|| format!("not a pcap file header: magic {:02x?}", &b[field::MAGIC]))?;
        let version = (
            rd16(&b[field::VERSION_MAJOR], big_endian),
            rd16(&b[field::VERSION_MINOR], big_endian),
        );
        if version.0 != 2 {
            return Err(format!(
                "pcap version {}.{} is not supported (only 2.x)",
                version.0, version.1
            ));
        }
        Ok(FileHeader {
            big_endian,
            nanos,
            version,
            snaplen: rd32(&b[field::SNAPLEN], big_endian),
            linktype: rd32(&b[field::LINKTYPE], big_endian) & 0x03ff_ffff,
        })
    }
}

/// A view of one record header (16 bytes) in a file with header `fh`.
#[derive(Debug, Clone, Copy)]
pub struct Record<T: AsRef<[u8]>> {
    buf: T,
    big_endian: bool,
    nanos: bool,
}

impl<T: AsRef<[u8]>> Record<T> {
    /// Wraps `buf` (which starts at a record header) after checking it holds one.
    pub fn new_checked(buf: T, fh: &FileHeader) -> Option<Self> {
        (buf.as_ref().len() >= RECORD_HEADER_LEN).then_some(Record {
            buf,
            big_endian: fh.big_endian,
            nanos: fh.nanos,
        })
    }

    fn u32_at(&self, r: std::ops::Range<usize>) -> u32 {
        rd32(&self.buf.as_ref()[r], self.big_endian)
    }

    pub fn ts_sec(&self) -> u32 {
        self.u32_at(field::TS_SEC)
    }

    /// Sub-second part in the file's unit (micro- or nanoseconds).
    pub fn ts_frac(&self) -> u32 {
        self.u32_at(field::TS_FRAC)
    }

    pub fn caplen(&self) -> u32 {
        self.u32_at(field::CAPLEN)
    }

    pub fn origlen(&self) -> u32 {
        self.u32_at(field::ORIGLEN)
    }

    /// Timestamp in nanoseconds since the epoch.
    pub fn ts_ns(&self) -> i64 {
        let frac = self.ts_frac() as i64;
        self.ts_sec() as i64 * 1_000_000_000 + if self.nanos { frac } else { frac * 1000 }
    }

    /// Total record length (header plus captured bytes).
    pub fn total_len(&self) -> usize {
        RECORD_HEADER_LEN + self.caplen() as usize
    }

    /// Captured packet bytes, if the buffer holds all of them.
    pub fn data(&self) -> Option<&[u8]> {
        self.buf.as_ref().get(RECORD_HEADER_LEN..self.total_len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(magic: u32, be: bool, snaplen: u32, lt: u32) -> Vec<u8> {
        let mut v = Vec::new();
        let p32 =
            |v: &mut Vec<u8>, x: u32| v.extend(if be { x.to_be_bytes() } else { x.to_le_bytes() });
        p32(&mut v, magic);
        v.extend(if be { [0, 2, 0, 4] } else { [2, 0, 4, 0] });
        p32(&mut v, 0);
        p32(&mut v, 0);
        p32(&mut v, snaplen);
        p32(&mut v, lt);
        v
    }

    #[test]
    fn parses_all_four_magics() {
        for (magic, be, nanos) in [
            (MAGIC_MICROS, false, false),
            (MAGIC_MICROS, true, false),
            (MAGIC_NANOS, false, true),
            (MAGIC_NANOS, true, true),
        ] {
            let fh = FileHeader::parse(&header(magic, be, 65535, 101)).unwrap();
            assert_eq!(
                (fh.big_endian, fh.nanos, fh.snaplen, fh.linktype),
                (be, nanos, 65535, 101)
            );
            assert_eq!(fh.version, (2, 4));
        }
    }

    #[test]
    fn rejects_unknown_magic_and_version() {
        assert!(FileHeader::parse(&[0u8; 24]).unwrap_err().contains("magic"));
        let mut h = header(MAGIC_MICROS, false, 65535, 1);
        h[4] = 3;
        assert!(FileHeader::parse(&h).unwrap_err().contains("version 3.4"));
        let k = header(MAGIC_KUZNETZOV, false, 65535, 1);
        assert!(FileHeader::parse(&k).unwrap_err().contains("Kuznetzov"));
    }

    #[test]
    fn record_fields_both_orders() {
        let fh_be = FileHeader::parse(&header(MAGIC_NANOS, true, 100, 1)).unwrap();
        let rec = [
            0, 0, 0, 10, 0, 0, 0, 5, 0, 0, 0, 3, 0, 0, 0, 9, 0xaa, 0xbb, 0xcc,
        ];
        let r = Record::new_checked(&rec[..], &fh_be).unwrap();
        assert_eq!(
            (r.ts_sec(), r.ts_frac(), r.caplen(), r.origlen()),
            (10, 5, 3, 9)
        );
        assert_eq!(r.ts_ns(), 10_000_000_005);
        assert_eq!(r.data(), Some(&[0xaa, 0xbb, 0xcc][..]));
        let fh_le = FileHeader::parse(&header(MAGIC_MICROS, false, 100, 1)).unwrap();
        let r = Record::new_checked(&rec[..], &fh_le).unwrap();
        assert_eq!(r.ts_sec(), 10 << 24);
        assert!(Record::new_checked(&rec[..15], &fh_le).is_none());
    }
}
