//! The zcrx kernel ABI as zcap uses it (Linux 6.15+, `include/uapi/linux/io_uring.h` and
//! `io_uring/zcrx.c`): the `#[repr(C)]` structs come from the io-uring crate's generated
//! bindings, except `io_uring_zcrx_ifq_reg` (defined here with the current header's field
//! names), `io_uring_zcrx_offsets` and `zcrx_ctrl` (6.19+, not in the crate), each with a
//! layout assertion, so a binding that drifts from the kernel fails the build's tests
//! instead of corrupting shared memory. The
//! completion half of a CQE32 is decoded into [`ZcrxCompletion`], a plain value.
//!
//! The only unsafe code here is uname(2), for the running kernel's version; the shared-memory
//! rings are in `rings.rs`.

pub use io_uring::types::{
    io_uring_region_desc, io_uring_zcrx_area_reg, io_uring_zcrx_cqe, io_uring_zcrx_rqe,
    IORING_MEM_REGION_TYPE_USER, IORING_ZCRX_AREA_MASK, IORING_ZCRX_AREA_SHIFT,
};

/// `IORING_REGISTER_ZCRX_IFQ`.
pub const IORING_REGISTER_ZCRX_IFQ: u32 = 32;
/// `IORING_REGISTER_ZCRX_CTRL` (6.19+): control operations on a registered zcrx; older
/// kernels answer an unknown register opcode with `EINVAL`.
pub const IORING_REGISTER_ZCRX_CTRL: u32 = 36;
/// `ZCRX_CTRL_FLUSH_RQ` of `enum zcrx_ctrl_op`: the kernel reads the whole refill ring now.
pub const ZCRX_CTRL_FLUSH_RQ: u32 = 0;
/// Kernels up to at least 6.18 fail registering an area larger than this with `EFAULT`.
pub const AREA_LIMIT_TO_6_18: usize = 1 << 30;

/// `struct io_uring_zcrx_offsets`: where the kernel put head, tail and entries in the
/// refill-ring region.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct io_uring_zcrx_offsets {
    pub head: u32,
    pub tail: u32,
    pub rqes: u32,
    pub __resv2: u32,
    pub __resv: [u64; 2],
}

/// `struct io_uring_zcrx_ifq_reg`, the argument of IORING_REGISTER_ZCRX_IFQ, with the field
/// names of the current header: what 6.15–6.18 called `__resv2` is `rx_buf_len` (niov size
/// asked for, `ZCRX_FEATURE_RX_PAGE_SIZE`, 0 = page size; must be 0 before 6.19), and the
/// first reserved word is `event_desc` (pointer to an event descriptor on kernels that have
/// it; 0 = none). Reserved words must be zero.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct io_uring_zcrx_ifq_reg {
    pub if_idx: u32,
    pub if_rxq: u32,
    pub rq_entries: u32,
    pub flags: u32,
    /// Pointer to a `struct io_uring_zcrx_area_reg`.
    pub area_ptr: u64,
    /// Pointer to a `struct io_uring_region_desc`.
    pub region_ptr: u64,
    pub offsets: io_uring_zcrx_offsets,
    pub zcrx_id: u32,
    pub rx_buf_len: u32,
    pub event_desc: u64,
    pub __resv: [u64; 2],
}

/// `struct zcrx_ctrl`, the argument of IORING_REGISTER_ZCRX_CTRL (`nr_args` 0). For
/// `ZCRX_CTRL_FLUSH_RQ` the 48-byte union (`struct zcrx_ctrl_flush_rq`) is all reserved and
/// must be zero.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct zcrx_ctrl {
    pub zcrx_id: u32,
    pub op: u32,
    pub __resv: [u64; 2],
    /// The union of `zc_export`, `zc_flush`, …: six words.
    pub data: [u64; 6],
}

/// A kernel's major and minor version, for the zcrx features that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
}

impl KernelVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        KernelVersion { major, minor }
    }

    /// `6.18.44-foo` → 6.18.
    pub fn parse(release: &str) -> Option<Self> {
        let mut it = release.split(|c: char| !c.is_ascii_digit());
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        Some(KernelVersion { major, minor })
    }

    /// The running kernel (uname).
    pub fn running() -> Option<Self> {
        // SAFETY: uname fills the zeroed local struct.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `u` is a live utsname.
        if unsafe { libc::uname(&mut u) } != 0 {
            return None;
        }
        // SAFETY: uname NUL-terminates the field.
        let r = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
        Self::parse(&r.to_string_lossy())
    }

    /// IORING_REGISTER_ZCRX_CTRL with ZCRX_CTRL_FLUSH_RQ (`zcrx_flush_rq`).
    pub fn has_flush_rq(self) -> bool {
        self >= KernelVersion::new(6, 19)
    }

    /// `rx_buf_len` niov sizes (`ZCRX_FEATURE_RX_PAGE_SIZE`).
    pub fn has_rx_buf_len(self) -> bool {
        self >= KernelVersion::new(6, 19)
    }

    /// Registered ranges over [`AREA_LIMIT_TO_6_18`] fail with EFAULT.
    pub fn limits_area_to_1gib(self) -> bool {
        self <= KernelVersion::new(6, 18)
    }
}

impl std::fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}
/// `IORING_OP_RECV_ZC`.
pub const IORING_OP_RECV_ZC: u8 = io_uring::opcode::RecvZc::CODE;
/// `IORING_CQE_F_MORE`: the multishot request stays armed after this completion.
pub const IORING_CQE_F_MORE: u32 = 1 << 1;
/// `IO_RQ_MAX_ENTRIES` in io_uring/zcrx.c: more is EINVAL unless the ring has SETUP_CLAMP.
pub const RQ_MAX_ENTRIES: u32 = 32768;
/// The kernel's niov size: one page of the area per net_iov (x86-64, arm64 with 4 KiB pages).
pub const NIOV_SIZE: usize = 4096;
/// Low bits of a CQE/RQE offset: the byte offset inside the area.
pub const AREA_OFFSET_MASK: u64 = (1u64 << IORING_ZCRX_AREA_SHIFT) - 1;

/// The zcrx part of one 32-byte completion: the plain CQE fields plus the
/// `io_uring_zcrx_cqe` the kernel writes into the big half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZcrxCompletion {
    pub user_data: u64,
    /// Bytes received (`> 0` with F_MORE), or on the final completion 0 (EOF) or `-errno`.
    pub res: i32,
    pub flags: u32,
    /// `io_uring_zcrx_cqe.off`: area offset in the low 48 bits, area id above.
    pub off: u64,
}

impl ZcrxCompletion {
    /// Decodes a CQE32. `big` is the second 16 bytes, which for RECV_ZC hold an
    /// `io_uring_zcrx_cqe` (`off` first; layout asserted in the tests below).
    pub fn from_cqe32(user_data: u64, res: i32, flags: u32, big: &[u64; 2]) -> Self {
        ZcrxCompletion {
            user_data,
            res,
            flags,
            off: big[0],
        }
    }

    pub fn from_entry(cqe: &io_uring::cqueue::Entry32) -> Self {
        Self::from_cqe32(cqe.user_data(), cqe.result(), cqe.flags(), cqe.big_cqe())
    }

    /// Whether the request is still armed (not the final completion).
    pub fn more(&self) -> bool {
        self.flags & IORING_CQE_F_MORE != 0
    }

    /// Byte offset of the data inside the area.
    pub fn area_offset(&self) -> u64 {
        self.off & AREA_OFFSET_MASK
    }

    /// Which area of the ifq the data is in (always 0 on 6.15–6.18 kernels).
    pub fn area_id(&self) -> u64 {
        self.off >> IORING_ZCRX_AREA_SHIFT
    }
}

/// The refill-ring entry that returns the buffer at `area_off` of the area whose token is
/// `area_token` (`rq_area_token` from registration).
pub fn rqe_for(area_off: u64, len: u32, area_token: u64) -> io_uring_zcrx_rqe {
    io_uring_zcrx_rqe {
        off: (area_off & !IORING_ZCRX_AREA_MASK) | area_token,
        len,
        __pad: 0,
    }
}

/// The name of an errno value (`EOPNOTSUPP`), for messages that name what happened.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ECANCELED => "ECANCELED",
        libc::ETIME => "ETIME",
        _ => "errno",
    }
}

/// `EOPNOTSUPP (Operation not supported)`: name and text of an errno.
pub fn errno_words(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    // io::Error's Display appends " (os error N)"; the name says it better.
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    match errno_name(errno) {
        "errno" => format!("errno {errno} ({text})"),
        name => format!("{name} ({text})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    // Sizes and offsets from include/uapi/linux/io_uring.h (6.15–6.18). A mismatch means the
    // binding no longer describes what the kernel reads and writes.
    #[test]
    fn zcrx_rqe_layout() {
        assert_eq!(size_of::<io_uring_zcrx_rqe>(), 16);
        assert_eq!(align_of::<io_uring_zcrx_rqe>(), 8);
        assert_eq!(offset_of!(io_uring_zcrx_rqe, off), 0);
        assert_eq!(offset_of!(io_uring_zcrx_rqe, len), 8);
        assert_eq!(offset_of!(io_uring_zcrx_rqe, __pad), 12);
    }

    #[test]
    fn zcrx_cqe_layout() {
        assert_eq!(size_of::<io_uring_zcrx_cqe>(), 16);
        assert_eq!(offset_of!(io_uring_zcrx_cqe, off), 0);
        assert_eq!(offset_of!(io_uring_zcrx_cqe, __pad), 8);
        // The big half of a CQE32 is exactly one io_uring_zcrx_cqe, `off` in its first word.
        assert_eq!(size_of::<[u64; 2]>(), size_of::<io_uring_zcrx_cqe>());
    }

    #[test]
    fn zcrx_area_reg_layout() {
        assert_eq!(size_of::<io_uring_zcrx_area_reg>(), 48);
        assert_eq!(offset_of!(io_uring_zcrx_area_reg, addr), 0);
        assert_eq!(offset_of!(io_uring_zcrx_area_reg, len), 8);
        assert_eq!(offset_of!(io_uring_zcrx_area_reg, rq_area_token), 16);
        assert_eq!(offset_of!(io_uring_zcrx_area_reg, flags), 24);
        assert_eq!(offset_of!(io_uring_zcrx_area_reg, dmabuf_fd), 28);
        assert_eq!(offset_of!(io_uring_zcrx_area_reg, __resv2), 32);
    }

    #[test]
    fn zcrx_ifq_reg_layout() {
        assert_eq!(size_of::<io_uring_zcrx_ifq_reg>(), 96);
        assert_eq!(offset_of!(io_uring_zcrx_ifq_reg, if_idx), 0);
        assert_eq!(offset_of!(io_uring_zcrx_ifq_reg, if_rxq), 4);
        assert_eq!(offset_of!(io_uring_zcrx_ifq_reg, rq_entries), 8);
        assert_eq!(offset_of!(io_uring_zcrx_ifq_reg, flags), 12);
        assert_eq!(offset_of!(io_uring_zcrx_ifq_reg, area_ptr), 16);
        assert_eq!(offset_of!(io_uring_zcrx_ifq_reg, region_ptr), 24);
        assert_eq!(offset_of!(io_uring_zcrx_ifq_reg, offsets), 32);
        assert_eq!(offset_of!(io_uring_zcrx_ifq_reg, offsets.head), 32);
        assert_eq!(offset_of!(io_uring_zcrx_ifq_reg, offsets.tail), 36);
        assert_eq!(offset_of!(io_uring_zcrx_ifq_reg, offsets.rqes), 40);
        assert_eq!(offset_of!(io_uring_zcrx_ifq_reg, zcrx_id), 64);
        assert_eq!(offset_of!(io_uring_zcrx_ifq_reg, rx_buf_len), 68);
        assert_eq!(offset_of!(io_uring_zcrx_ifq_reg, event_desc), 72);
        assert_eq!(offset_of!(io_uring_zcrx_ifq_reg, __resv), 80);
        assert_eq!(size_of::<io_uring_zcrx_offsets>(), 32);
        // The crate's binding (6.15 names) has the same shape: one struct, two spellings.
        assert_eq!(
            size_of::<io_uring::types::io_uring_zcrx_ifq_reg>(),
            size_of::<io_uring_zcrx_ifq_reg>()
        );
    }

    #[test]
    fn zcrx_ctrl_layout() {
        // struct zcrx_ctrl { u32 zcrx_id; u32 op; u64 __resv[2]; union { 48 bytes }; }
        assert_eq!(size_of::<zcrx_ctrl>(), 72);
        assert_eq!(align_of::<zcrx_ctrl>(), 8);
        assert_eq!(offset_of!(zcrx_ctrl, zcrx_id), 0);
        assert_eq!(offset_of!(zcrx_ctrl, op), 4);
        assert_eq!(offset_of!(zcrx_ctrl, __resv), 8);
        assert_eq!(offset_of!(zcrx_ctrl, data), 24);
        assert_eq!(IORING_REGISTER_ZCRX_CTRL, 36);
        assert_eq!(ZCRX_CTRL_FLUSH_RQ, 0);
    }

    #[test]
    fn kernel_versions_decide_the_features() {
        let v = KernelVersion::parse("6.18.44-fc-v857").unwrap();
        assert_eq!(v, KernelVersion::new(6, 18));
        assert!(!v.has_flush_rq() && !v.has_rx_buf_len() && v.limits_area_to_1gib());
        let v = KernelVersion::parse("6.19.0-rc1").unwrap();
        assert!(v.has_flush_rq() && v.has_rx_buf_len() && !v.limits_area_to_1gib());
        assert!(KernelVersion::new(7, 0) > KernelVersion::new(6, 19));
        assert_eq!(KernelVersion::parse("x"), None);
    }

    #[test]
    fn region_desc_layout() {
        assert_eq!(size_of::<io_uring_region_desc>(), 64);
        assert_eq!(offset_of!(io_uring_region_desc, user_addr), 0);
        assert_eq!(offset_of!(io_uring_region_desc, size), 8);
        assert_eq!(offset_of!(io_uring_region_desc, flags), 16);
        assert_eq!(offset_of!(io_uring_region_desc, id), 20);
        assert_eq!(offset_of!(io_uring_region_desc, mmap_offset), 24);
        assert_eq!(offset_of!(io_uring_region_desc, __resv), 32);
        assert_eq!(IORING_MEM_REGION_TYPE_USER, 1);
    }

    #[test]
    fn constants_match_the_kernel() {
        assert_eq!(IORING_ZCRX_AREA_SHIFT, 48);
        assert_eq!(IORING_ZCRX_AREA_MASK, 0xffff_0000_0000_0000);
        assert_eq!(AREA_OFFSET_MASK, 0x0000_ffff_ffff_ffff);
        assert_eq!(IORING_OP_RECV_ZC, 58);
    }

    #[test]
    fn cqe_offset_and_area_id_are_split_at_bit_48() {
        let c = ZcrxCompletion::from_cqe32(7, 100, IORING_CQE_F_MORE, &[(3 << 48) | 0x2_1040, 0]);
        assert!(c.more());
        assert_eq!(c.area_offset(), 0x2_1040);
        assert_eq!(c.area_id(), 3);
        let fin = ZcrxCompletion::from_cqe32(7, -libc::ENOSPC, 0, &[0, 0]);
        assert!(!fin.more());
    }

    #[test]
    fn rqe_keeps_the_offset_and_replaces_the_area_bits_with_the_token() {
        let r = rqe_for((5 << 48) | 0x3000, 4096, 1 << 48);
        assert_eq!(r.off, (1 << 48) | 0x3000);
        assert_eq!(r.len, 4096);
        assert_eq!(r.__pad, 0);
    }

    #[test]
    fn errno_words_name_the_errno() {
        assert_eq!(errno_name(libc::EOPNOTSUPP), "EOPNOTSUPP");
        assert!(errno_words(libc::EPERM).starts_with("EPERM ("));
    }
}
