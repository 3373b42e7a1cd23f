//! The segment index trailer: a zstd skippable frame at the end of a finalized segment that
//! lists its data frames (file offset, lengths, time range, packet count). Layout in
//! docs/ARCHIVE.md; this module is its only encoder and decoder.

use std::io;

pub const SKIPPABLE_MAGIC: u32 = 0x184D_2A5B;
const HEAD_MAGIC: &[u8; 8] = b"ZCAPIDX1";
const END_MAGIC: &[u8; 8] = b"ZCAPEND1";
const ENTRY_LEN: usize = 40;

/// Trailer flag: the header frame repeats the stream's header (the segment came from a rotation).
pub const FLAG_CONT: u32 = 1;
/// Frame flag: the frame holds a pcapng IDB.
pub const FRAME_HAS_IDB: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameEntry {
    pub offset: u64,
    pub comp_len: u32,
    pub raw_len: u32,
    pub min_ns: i64,
    pub max_ns: i64,
    pub packets: u32,
    pub flags: u32,
}

impl FrameEntry {
    /// Whether any packet of the frame may fall in `[from, to]` (inclusive, ns).
    pub fn overlaps(&self, from: i64, to: i64) -> bool {
        self.packets > 0 && self.max_ns >= from && self.min_ns <= to
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trailer {
    pub flags: u32,
    pub header_comp_len: u32,
    pub header_raw_len: u32,
    pub stream_off: u64,
    pub frames: Vec<FrameEntry>,
}

impl Trailer {
    /// The whole skippable frame, ready to append to the segment.
    pub fn encode(&self) -> Vec<u8> {
        let payload_len = 32 + ENTRY_LEN * self.frames.len() + 12;
        let mut v = Vec::with_capacity(8 + payload_len);
        v.extend(SKIPPABLE_MAGIC.to_le_bytes());
        v.extend((payload_len as u32).to_le_bytes());
        v.extend(HEAD_MAGIC);
        v.extend(self.flags.to_le_bytes());
        v.extend(self.header_comp_len.to_le_bytes());
        v.extend(self.header_raw_len.to_le_bytes());
        v.extend((self.frames.len() as u32).to_le_bytes());
        v.extend(self.stream_off.to_le_bytes());
        for f in &self.frames {
            v.extend(f.offset.to_le_bytes());
            v.extend(f.comp_len.to_le_bytes());
            v.extend(f.raw_len.to_le_bytes());
            v.extend(f.min_ns.to_le_bytes());
            v.extend(f.max_ns.to_le_bytes());
            v.extend(f.packets.to_le_bytes());
            v.extend(f.flags.to_le_bytes());
        }
        v.extend((payload_len as u32).to_le_bytes());
        v.extend(END_MAGIC);
        debug_assert_eq!(v.len(), 8 + payload_len);
        v
    }

    /// Length of the trailer frame at the end of a file whose last 12 bytes are `tail`,
    /// or None if the file has no trailer (a `.partial`, or not a zcap segment).
    pub fn frame_len_from_tail(tail: &[u8]) -> Option<u64> {
        if tail.len() < 12 || &tail[tail.len() - 8..] != END_MAGIC {
            return None;
        }
        let n = tail.len() - 12;
        Some(8 + u32::from_le_bytes(tail[n..n + 4].try_into().unwrap()) as u64)
    }

    /// Decodes the whole trailer frame (skippable header included).
    pub fn decode(frame: &[u8]) -> io::Result<Trailer> {
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("segment index trailer: {what}"),
            )
        };
        if frame.len() < 8 + 44 {
            return Err(bad("too short"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(frame[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(frame[o..o + 8].try_into().unwrap());
        if u32_at(0) != SKIPPABLE_MAGIC || &frame[8..16] != HEAD_MAGIC {
            return Err(bad("bad magic"));
        }
        let payload_len = u32_at(4) as usize;
        let n = u32_at(28) as usize;
        if payload_len != frame.len() - 8 || payload_len != 32 + ENTRY_LEN * n + 12 {
            return Err(bad("length does not match its frame count"));
        }
        let mut t = Trailer {
            flags: u32_at(16),
            header_comp_len: u32_at(20),
            header_raw_len: u32_at(24),
            stream_off: u64_at(32),
            frames: Vec::with_capacity(n),
        };
        for i in 0..n {
            let o = 40 + i * ENTRY_LEN;
            t.frames.push(FrameEntry {
                offset: u64_at(o),
                comp_len: u32_at(o + 8),
                raw_len: u32_at(o + 12),
                min_ns: u64_at(o + 16) as i64,
                max_ns: u64_at(o + 24) as i64,
                packets: u32_at(o + 32),
                flags: u32_at(o + 36),
            });
        }
        Ok(t)
    }

    pub fn packets(&self) -> u64 {
        self.frames.iter().map(|f| f.packets as u64).sum()
    }

    /// Earliest and latest packet timestamps of the segment.
    pub fn time_range(&self) -> Option<(i64, i64)> {
        self.frames
            .iter()
            .filter(|f| f.packets > 0)
            .fold(None, |acc, f| match acc {
                None => Some((f.min_ns, f.max_ns)),
                Some((a, b)) => Some((a.min(f.min_ns), b.max(f.max_ns))),
            })
    }
}

/// Reads the trailer of a finalized segment file.
pub fn read_trailer(file: &std::fs::File) -> io::Result<Trailer> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut tail = [0u8; 12];
    if len < 12 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "segment is shorter than its index trailer",
        ));
    }
    file.read_exact_at(&mut tail, len - 12)?;
    let tlen = Trailer::frame_len_from_tail(&tail)
        .filter(|&t| t <= len)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "segment has no index trailer (unfinalized?)",
            )
        })?;
    let mut buf = vec![0u8; tlen as usize];
    file.read_exact_at(&mut buf, len - tlen)?;
    Trailer::decode(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_round_trips_and_is_found_from_the_tail() {
        let t = Trailer {
            flags: FLAG_CONT,
            header_comp_len: 33,
            header_raw_len: 24,
            stream_off: 1 << 40,
            frames: vec![
                FrameEntry {
                    offset: 33,
                    comp_len: 100,
                    raw_len: 1000,
                    min_ns: -5,
                    max_ns: 7,
                    packets: 3,
                    flags: 0,
                },
                FrameEntry {
                    offset: 133,
                    comp_len: 9,
                    raw_len: 9,
                    min_ns: 0,
                    max_ns: 0,
                    packets: 0,
                    flags: FRAME_HAS_IDB,
                },
            ],
        };
        let enc = t.encode();
        assert_eq!(
            u32::from_le_bytes(enc[0..4].try_into().unwrap()),
            SKIPPABLE_MAGIC
        );
        assert_eq!(
            Trailer::frame_len_from_tail(&enc[enc.len() - 12..]),
            Some(enc.len() as u64)
        );
        assert_eq!(Trailer::decode(&enc).unwrap(), t);
        assert_eq!(t.packets(), 3);
        assert_eq!(t.time_range(), Some((-5, 7)));
        let mut bad = enc.clone();
        bad[30] = 9;
        assert!(Trailer::decode(&bad).is_err());
    }
}
