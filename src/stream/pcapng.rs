//! pcapng block framing: block headers, the Section Header and Interface Description blocks
//! (the only ones whose contents change how later blocks are read), and the packet blocks'
//! fixed fields. Views over borrowed bytes; once `Block::new_checked` passes, accessors do not
//! panic.

use super::pcap::{rd32, MAX_CAPLEN};

pub const SHB: u32 = 0x0A0D_0D0A;
pub const IDB: u32 = 0x0000_0001;
pub const OPB: u32 = 0x0000_0002;
pub const SPB: u32 = 0x0000_0003;
pub const EPB: u32 = 0x0000_0006;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

/// Largest block accepted; libpcap refuses larger ones too.
pub const MAX_BLOCK: u32 = 16 << 20;

/// How many leading bytes of a block of this type the framer needs before it can size and
/// validate the block (type, length and, for packet blocks, timestamp and lengths).
pub fn head_len(block_type: u32) -> usize {
    match block_type {
        SHB => 12,
        EPB | OPB => 28,
        SPB => 12,
        _ => 8,
    }
}

mod field {
    use std::ops::Range;
    pub const TYPE: Range<usize> = 0..4;
    pub const LEN: Range<usize> = 4..8;
    pub const SHB_BOM: Range<usize> = 8..12;
    pub const SHB_MAJOR: Range<usize> = 12..14;
    pub const IDB_LINKTYPE: Range<usize> = 8..10;
    pub const IDB_SNAPLEN: Range<usize> = 12..16;
    pub const IDB_OPTIONS: usize = 16;
    pub const EPB_IFACE: Range<usize> = 8..12;
    pub const OPB_IFACE: Range<usize> = 8..10;
    pub const TS_HIGH: Range<usize> = 12..16;
    pub const TS_LOW: Range<usize> = 16..20;
    pub const CAPLEN: Range<usize> = 20..24;
    pub const ORIGLEN: Range<usize> = 24..28;
    pub const SPB_ORIGLEN: Range<usize> = 8..12;
}

/// Byte order of a section, from its SHB's first 12 bytes.
pub fn section_order(head: &[u8]) -> Result<bool, String> {
    let bom = &head[field::SHB_BOM];
    if rd32(bom, false) == BYTE_ORDER_MAGIC {
        Ok(false)
    } else if rd32(bom, true) == BYTE_ORDER_MAGIC {
        Ok(true)
    } else {
        Err(format!(
            "section header block has a bad byte-order magic {bom:02x?}"
        ))
    }
}

/// The leading fields of any block, validated against the stream's limits.
#[derive(Debug, Clone, Copy)]
pub struct Block<'a> {
    head: &'a [u8],
    big_endian: bool,
}

impl<'a> Block<'a> {
    /// `head` holds at least `head_len(type)` bytes of a block in a section of the given
    /// byte order. Checks the block length: at least 12, a multiple of 4, at most MAX_BLOCK,
    /// and large enough for the fixed fields of its type.
    pub fn new_checked(head: &'a [u8], big_endian: bool) -> Result<Block<'a>, String> {
        if head.len() < 8 {
            return Err("block header needs 8 bytes".into());
        }
        let b = Block { head, big_endian };
        if head.len() < head_len(b.block_type()) {
            return Err("block head is short".into());
        }
        let len = b.total_len();
        let min = match b.block_type() {
            SHB => 28,
            IDB => 20,
            EPB | OPB => 32,
            SPB => 16,
            _ => 12,
        };
        if len < min || len % 4 != 0 || len > MAX_BLOCK {
            return Err(format!(
                "block of type 0x{:08x} has a bad length {len} (must be a multiple of 4 between {min} and {MAX_BLOCK})",
                b.block_type()
            ));
        }
        Ok(b)
    }

    fn u32_at(&self, r: std::ops::Range<usize>) -> u32 {
        rd32(&self.head[r], self.big_endian)
    }

    pub fn block_type(&self) -> u32 {
        // The SHB type is a byte palindrome, so reading it in either order is the same.
        self.u32_at(field::TYPE)
    }

    pub fn total_len(&self) -> u32 {
        self.u32_at(field::LEN)
    }

    /// Interface index of an EPB or OPB.
    pub fn interface(&self) -> u32 {
        match self.block_type() {
            OPB => {
                let b = &self.head[field::OPB_IFACE];
                if self.big_endian {
                    u16::from_be_bytes([b[0], b[1]]) as u32
                } else {
                    u16::from_le_bytes([b[0], b[1]]) as u32
                }
            }
            EPB => self.u32_at(field::EPB_IFACE),
            _ => 0,
        }
    }

    /// Raw 64-bit timestamp of an EPB or OPB, in the interface's units.
    pub fn raw_ts(&self) -> u64 {
        ((self.u32_at(field::TS_HIGH) as u64) << 32) | self.u32_at(field::TS_LOW) as u64
    }

    /// Captured length of a packet block. For an SPB it is derived from the block length and
    /// the interface snaplen by the caller; here it is the original length.
    pub fn caplen(&self) -> u32 {
        match self.block_type() {
            SPB => self.u32_at(field::SPB_ORIGLEN),
            _ => self.u32_at(field::CAPLEN),
        }
    }

    /// Original (wire) length of a packet block.
    pub fn wire_len(&self) -> u32 {
        match self.block_type() {
            SPB => self.u32_at(field::SPB_ORIGLEN),
            _ => self.u32_at(field::ORIGLEN),
        }
    }

    /// Offset of a packet block's data in the block.
    pub fn data_offset(&self) -> u32 {
        match self.block_type() {
            SPB => 12,
            _ => 28,
        }
    }

    /// Checks a packet block's captured length against its block length and libpcap's cap.
    pub fn check_packet(&self) -> Result<u32, String> {
        let room = match self.block_type() {
            EPB | OPB => self.total_len() - 32,
            SPB => self.total_len() - 16,
            _ => return Ok(0),
        };
        let caplen = if self.block_type() == SPB {
            self.caplen().min(room)
        } else {
            self.caplen()
        };
        if caplen > room {
            return Err(format!(
                "packet block claims {caplen} captured bytes but its length {} leaves room for {room}",
                self.total_len()
            ));
        }
        if caplen > MAX_CAPLEN {
            return Err(format!(
                "packet block captured length {caplen} exceeds the maximum {MAX_CAPLEN}"
            ));
        }
        Ok(caplen)
    }
}

/// What the framer remembers of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interface {
    pub linktype: u16,
    pub snaplen: u32,
    /// Timestamp units per second, as a ratio: units are 10^-exp or 2^-exp seconds.
    pub tsresol: u8,
    pub tsoffset: i64,
}

impl Interface {
    /// Parses a whole IDB (`block` is the complete block including the trailing length).
    pub fn parse(block: &[u8], big_endian: bool) -> Result<Interface, String> {
        let rd16 = |b: &[u8]| {
            if big_endian {
                u16::from_be_bytes([b[0], b[1]])
            } else {
                u16::from_le_bytes([b[0], b[1]])
            }
        };
        let mut iface = Interface {
            linktype: rd16(&block[field::IDB_LINKTYPE]),
            snaplen: rd32(&block[field::IDB_SNAPLEN], big_endian),
            tsresol: 6,
            tsoffset: 0,
        };
        let opts = &block[field::IDB_OPTIONS..block.len() - 4];
        let mut i = 0;
        while i + 4 <= opts.len() {
            let code = rd16(&opts[i..]);
            let len = rd16(&opts[i + 2..]) as usize;
            let val = opts
                .get(i + 4..i + 4 + len)
                .ok_or_else(|| format!("interface option {code} overruns its block"))?;
            match (code, len) {
                (0, _) => break,
                (9, 1) => iface.tsresol = val[0],
                (14, 8) => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(val);
                    iface.tsoffset = if big_endian {
                        i64::from_be_bytes(a)
                    } else {
                        i64::from_le_bytes(a)
                    };
                }
                _ => {}
            }
            i += 4 + len.div_ceil(4) * 4;
        }
        if (iface.tsresol & 0x80 == 0 && iface.tsresol > 18)
            || (iface.tsresol & 0x80 != 0 && iface.tsresol & 0x7f > 63)
        {
            return Err(format!(
                "interface timestamp resolution 0x{:02x} is out of range",
                iface.tsresol
            ));
        }
        Ok(iface)
    }

    /// Converts a raw timestamp in this interface's units to nanoseconds since the epoch.
    pub fn ts_ns(&self, raw: u64) -> i64 {
        let ns: i128 = if self.tsresol & 0x80 == 0 {
            let exp = self.tsresol as u32;
            if exp <= 9 {
                raw as i128 * 10i128.pow(9 - exp)
            } else {
                raw as i128 / 10i128.pow(exp - 9)
            }
        } else {
            let exp = (self.tsresol & 0x7f) as u32;
            (raw as i128 * 1_000_000_000) >> exp
        };
        (ns + self.tsoffset as i128 * 1_000_000_000).clamp(i64::MIN as i128, i64::MAX as i128)
            as i64
    }
}

/// Checks that a section header's major version is one we read (1).
pub fn check_shb_version(head: &[u8], big_endian: bool) -> Result<(), String> {
    let b = &head[field::SHB_MAJOR];
    let major = if big_endian {
        u16::from_be_bytes([b[0], b[1]])
    } else {
        u16::from_le_bytes([b[0], b[1]])
    };
    if major != 1 {
        return Err(format!(
            "pcapng section version {major}.x is not supported (only 1.x)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idb(be: bool, lt: u16, snap: u32, opts: &[(u16, &[u8])]) -> Vec<u8> {
        let p16 =
            |v: &mut Vec<u8>, x: u16| v.extend(if be { x.to_be_bytes() } else { x.to_le_bytes() });
        let p32 =
            |v: &mut Vec<u8>, x: u32| v.extend(if be { x.to_be_bytes() } else { x.to_le_bytes() });
        let mut body = Vec::new();
        p16(&mut body, lt);
        p16(&mut body, 0);
        p32(&mut body, snap);
        for (code, val) in opts {
            p16(&mut body, *code);
            p16(&mut body, val.len() as u16);
            body.extend_from_slice(val);
            body.resize(body.len().div_ceil(4) * 4, 0);
        }
        let len = 12 + body.len() as u32;
        let mut v = Vec::new();
        p32(&mut v, IDB);
        p32(&mut v, len);
        v.extend(body);
        p32(&mut v, len);
        v
    }

    #[test]
    fn interface_options_set_resolution_and_offset() {
        for be in [false, true] {
            let off = if be {
                5i64.to_be_bytes()
            } else {
                5i64.to_le_bytes()
            };
            let b = idb(be, 105, 1000, &[(9, &[9]), (14, &off), (0, &[])]);
            let i = Interface::parse(&b, be).unwrap();
            assert_eq!(
                (i.linktype, i.snaplen, i.tsresol, i.tsoffset),
                (105, 1000, 9, 5)
            );
            assert_eq!(i.ts_ns(7), 5_000_000_007);
        }
        let i = Interface::parse(&idb(false, 1, 0, &[]), false).unwrap();
        assert_eq!(
            i.ts_ns(1_500_000),
            1_500_000_000,
            "default resolution is microseconds"
        );
        let i = Interface::parse(&idb(false, 1, 0, &[(9, &[0x80 | 10])]), false).unwrap();
        assert_eq!(i.ts_ns(1024), 1_000_000_000, "power-of-two resolution");
    }

    #[test]
    fn block_lengths_are_checked() {
        let mut h = vec![6, 0, 0, 0, 30, 0, 0, 0];
        h.resize(28, 0);
        assert!(Block::new_checked(&h, false)
            .unwrap_err()
            .contains("bad length 30"));
        h[4] = 32;
        let b = Block::new_checked(&h, false).unwrap();
        assert_eq!(b.check_packet().unwrap(), 0);
        h[20] = 1;
        let e = Block::new_checked(&h, false)
            .unwrap()
            .check_packet()
            .unwrap_err();
        assert!(e.contains("claims 1 captured"), "{e}");
        assert!(
            section_order(&[0x0a, 0x0d, 0x0d, 0x0a, 28, 0, 0, 0, 0x4d, 0x3c, 0x2b, 0x1a])
                == Ok(false)
        );
        assert!(
            section_order(&[0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 28, 0x1a, 0x2b, 0x3c, 0x4d])
                == Ok(true)
        );
        assert!(section_order(&[0; 12]).is_err());
    }
}
