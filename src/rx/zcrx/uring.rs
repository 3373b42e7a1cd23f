//! The real kernel behind the [`ZcrxKernel`] seam: an io_uring with DEFER_TASKRUN,
//! SINGLE_ISSUER and 32-byte CQEs, an interface queue registered with
//! IORING_REGISTER_ZCRX_IFQ (the area plus a user-provided refill-ring region), multishot
//! RECV_ZC per socket, and multishot polls for the descriptors the backend watches.
//! Registration errors become [`ZcrxError`]s that say in one line what is missing.

use super::backend::ZcrxKernel;
use super::rings::{RefillRing, RingLayout, RqRegion};
use super::sys::{
    errno_words, io_uring_region_desc, io_uring_zcrx_area_reg, io_uring_zcrx_ifq_reg,
    ZcrxCompletion, IORING_MEM_REGION_TYPE_USER, IORING_REGISTER_ZCRX_IFQ, RQ_MAX_ENTRIES,
};
use crate::area::Area;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

/// Completions on this ring: large, so a burst of small packets does not overflow it into
/// `-ENOSPC` re-arms.
const CQ_ENTRIES: u32 = 16384;
const SQ_ENTRIES: u32 = 256;
/// user_data tags for our internal requests; stream ids stay below 2^62.
const TAG_WATCH: u64 = 1 << 63;
const TAG_CANCEL: u64 = 1 << 62;

/// Why zcrx could not be set up, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ZcrxError {
    #[error("zcrx: no interface named {iface} in this network namespace (ENODEV); see `ip link`")]
    NoInterface { iface: String },
    #[error("zcrx: cannot create the io_uring ({}){}", errno_words(source.raw_os_error().unwrap_or(0)), setup_hint(source))]
    Ring { source: io::Error },
    #[error("zcrx: cannot map the refill ring: {source}")]
    Memory { source: io::Error },
    #[error("zcrx on {iface} queue {queue}: {}", register_words(.iface, *.queue, .driver.as_deref(), *.errno, *.rq_entries, *.area_len))]
    Register {
        iface: String,
        queue: u32,
        driver: Option<String>,
        errno: i32,
        rq_entries: u32,
        area_len: usize,
    },
}

impl ZcrxError {
    /// The errno behind the failure (ENODEV for a missing interface).
    pub fn errno(&self) -> i32 {
        match self {
            ZcrxError::NoInterface { .. } => libc::ENODEV,
            ZcrxError::Ring { source } | ZcrxError::Memory { source } => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            ZcrxError::Register { errno, .. } => *errno,
        }
    }
}

fn setup_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) => {
            "; io_uring is disabled here (sysctl kernel.io_uring_disabled, or a container seccomp profile)"
        }
        Some(libc::ENOSYS) => "; this kernel has no io_uring",
        Some(libc::EINVAL) => "; the kernel lacks DEFER_TASKRUN/CQE32 (zcrx needs Linux 6.15 or newer)",
        _ => "",
    }
}

/// The one-line explanation of a registration errno, from io_uring/zcrx.c and
/// net/core/netdev_rx_queue.c.
fn register_words(
    iface: &str,
    queue: u32,
    driver: Option<&str>,
    errno: i32,
    rq_entries: u32,
    area_len: usize,
) -> String {
    let name = errno_words(errno);
    match errno {
        libc::EPERM => format!(
            "{name}: registering a zero-copy receive queue needs CAP_NET_ADMIN; run zcap as root or \
             grant it with `sudo setcap cap_net_admin+ep $(command -v zcap)`"
        ),
        libc::EOPNOTSUPP => match driver {
            Some(d) => format!(
                "{name}: driver {d} has no queue-management API for memory providers (zero-copy \
                 receive needs bnxt_en, mlx5_core, gve or fbnic); use --rx ring"
            ),
            None => format!(
                "{name}: {iface} is a virtual device without a driver (lo, veth, bridge, ifb); \
                 zero-copy receive needs a NIC driven by bnxt_en, mlx5_core, gve or fbnic"
            ),
        },
        libc::EINVAL => format!(
            "{name}: the NIC or the request was refused: header split is off (`ethtool -G {iface} \
             tcp-data-split on`) or hds-thresh is not 0 (`ethtool -G {iface} hds-thresh 0`), or \
             the refill ring size {rq_entries} is outside 1..={RQ_MAX_ENTRIES}, or the ring lacks \
             DEFER_TASKRUN/CQE32"
        ),
        libc::ERANGE => format!(
            "{name}: queue {queue} is out of range; {iface} has {} rx queue(s) (`ethtool -l {iface}`)",
            crate::doctor::rx_queue_count(iface).map_or("fewer".into(), |n| n.to_string())
        ),
        libc::ENODEV => format!("{name}: no interface {iface} in this network namespace"),
        libc::EEXIST => format!(
            "{name}: an XDP program is attached to {iface} (`ip link set {iface} xdp off`) or queue \
             {queue} already has a memory provider (another zcrx or devmem user)"
        ),
        libc::EBUSY => format!(
            "{name}: queue {queue} of {iface} is in use by AF_XDP or leased to another device"
        ),
        libc::ENOMEM => format!(
            "{name}: the kernel could not pin the {area_len}-byte area; raise the locked-memory \
             limit (`ulimit -l`, LimitMEMLOCK=) or use a smaller --area-size"
        ),
        libc::EFAULT => format!("{name}: the kernel could not access the area or refill ring memory"),
        _ => format!("{name}: the kernel refused the zero-copy receive queue"),
    }
}

/// The kernel driver bound to `iface` (`/sys/class/net/IF/device/driver`), if it has one.
pub fn driver_of(iface: &str) -> Option<String> {
    let link = std::fs::read_link(format!("/sys/class/net/{iface}/device/driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// A registered zcrx interface queue: the ring, the refill ring, and the area it pins.
pub struct ZcrxIfq {
    ring: IoUring<squeue::Entry, cqueue::Entry32>,
    refill: RefillRing,
    zcrx_id: u32,
    /// The kernel pinned the area's pages; keep the mapping alive as long as the ring.
    _area: Arc<Area>,
    enabled: bool,
    watched: Vec<(RawFd, bool)>,
    pub iface: String,
    pub queue: u32,
}

fn build_ring() -> io::Result<IoUring<squeue::Entry, cqueue::Entry32>> {
    // R_DISABLED: the ring is enabled (and its single issuer fixed) by the thread that first
    // waits on it, so registration can happen on the thread that reports errors.
    IoUring::<squeue::Entry, cqueue::Entry32>::builder()
        .setup_defer_taskrun()
        .setup_single_issuer()
        .setup_r_disabled()
        .setup_submit_all()
        .setup_cqsize(CQ_ENTRIES)
        .build(SQ_ENTRIES)
}

/// Registers queue `queue` of `iface` for zero-copy receive into `area`, with a refill ring
/// of `rq_entries` (rounded up to a power of two by the kernel).
pub fn register(
    iface: &str,
    queue: u32,
    area: &Arc<Area>,
    rq_entries: u32,
) -> Result<ZcrxIfq, ZcrxError> {
    let ifindex = crate::steer::ifindex(iface).map_err(|_| ZcrxError::NoInterface {
        iface: iface.into(),
    })?;
    register_index(iface, ifindex, queue, area, rq_entries)
}

/// [`register`] by interface index (tests use it to reach the kernel's own ENODEV).
pub fn register_index(
    iface: &str,
    ifindex: u32,
    queue: u32,
    area: &Arc<Area>,
    rq_entries: u32,
) -> Result<ZcrxIfq, ZcrxError> {
    let ring = build_ring().map_err(|source| ZcrxError::Ring { source })?;
    let region = RqRegion::new(rq_entries).map_err(|source| ZcrxError::Memory { source })?;
    let mut area_reg = io_uring_zcrx_area_reg {
        addr: area.base() as u64,
        len: area.len() as u64,
        rq_area_token: 0,
        flags: 0,
        dmabuf_fd: 0,
        __resv2: [0; 2],
    };
    let mut region_desc = io_uring_region_desc {
        user_addr: region.addr(),
        size: region.size() as u64,
        flags: IORING_MEM_REGION_TYPE_USER,
        id: 0,
        mmap_offset: 0,
        __resv: [0; 4],
    };
    // SAFETY: io_uring_zcrx_ifq_reg is plain integers; all-zero is its documented initial
    // state (reserved fields must be zero).
    let mut reg: io_uring_zcrx_ifq_reg = unsafe { std::mem::zeroed() };
    reg.if_idx = ifindex;
    reg.if_rxq = queue;
    reg.rq_entries = rq_entries;
    reg.area_ptr = &mut area_reg as *mut _ as u64;
    reg.region_ptr = &mut region_desc as *mut _ as u64;
    // The kernel writes back into `reg`, `area_reg` and `region_desc`, so they are passed as
    // `*mut` through the raw syscall: io-uring's `Submitter::register_ifq` takes `&reg`, and
    // a write through a pointer derived from a shared reference is not allowed in Rust.
    // SAFETY: the three structs are live locals with the kernel's layout (asserted in
    // sys.rs); the region and the area stay mapped for the ring's lifetime (held below).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd(),
            IORING_REGISTER_ZCRX_IFQ,
            &mut reg as *mut io_uring_zcrx_ifq_reg,
            1u32,
        )
    };
    if rc < 0 {
        let errno = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        return Err(ZcrxError::Register {
            iface: iface.into(),
            queue,
            driver: driver_of(iface),
            errno,
            rq_entries,
            area_len: area.len(),
        });
    }
    let layout = RingLayout {
        head: reg.offsets.head,
        tail: reg.offsets.tail,
        rqes: reg.offsets.rqes,
        entries: reg.rq_entries,
    };
    let refill = RefillRing::new(region, layout, area_reg.rq_area_token)
        .map_err(|source| ZcrxError::Memory { source })?;
    Ok(ZcrxIfq {
        ring,
        refill,
        zcrx_id: reg.zcrx_id,
        _area: Arc::clone(area),
        enabled: false,
        watched: Vec::new(),
        iface: iface.into(),
        queue,
    })
}

impl ZcrxIfq {
    /// A ring with the zcrx setup flags and a refill ring but no registered queue: every
    /// RECV_ZC on it ends with `-EINVAL`. Lets tests drive the real submission, poll,
    /// cancel and CQE32 paths on machines where registration cannot succeed.
    pub fn unregistered(area: &Arc<Area>, rq_entries: u32) -> io::Result<ZcrxIfq> {
        let ring = build_ring()?;
        let region = RqRegion::new(rq_entries)?;
        let refill = RefillRing::new(region, RingLayout::kernel_default(rq_entries), 0)?;
        Ok(ZcrxIfq {
            ring,
            refill,
            zcrx_id: u32::MAX,
            _area: Arc::clone(area),
            enabled: false,
            watched: Vec::new(),
            iface: String::new(),
            queue: 0,
        })
    }

    pub fn zcrx_id(&self) -> u32 {
        self.zcrx_id
    }

    fn push(&mut self, e: squeue::Entry) -> io::Result<()> {
        self.enable()?;
        loop {
            // SAFETY: every entry we queue refers only to descriptors (no buffers or
            // pointers that must outlive the submission).
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn enable(&mut self) -> io::Result<()> {
        if !self.enabled {
            self.ring.submitter().register_enable_rings()?;
            self.enabled = true;
        }
        Ok(())
    }

    fn arm_watches(&mut self) -> io::Result<()> {
        for i in 0..self.watched.len() {
            let (fd, armed) = self.watched[i];
            if !armed {
                let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                    .multi(true)
                    .build()
                    .user_data(TAG_WATCH | fd as u32 as u64);
                self.push(e)?;
                self.watched[i].1 = true;
            }
        }
        Ok(())
    }
}

impl ZcrxKernel for ZcrxIfq {
    fn refill(&mut self) -> &mut RefillRing {
        &mut self.refill
    }

    fn arm(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let e = opcode::RecvZc::new(types::Fd(fd), 0)
            .ifq(self.zcrx_id)
            .build()
            .user_data(user_data);
        self.push(e)
    }

    fn cancel(&mut self, user_data: u64) -> io::Result<()> {
        let e = opcode::AsyncCancel::new(user_data)
            .build()
            .user_data(TAG_CANCEL);
        self.push(e)
    }

    fn watch(&mut self, fd: RawFd) -> io::Result<()> {
        self.watched.push((fd, false));
        Ok(())
    }

    fn unwatch(&mut self, fd: RawFd) -> io::Result<()> {
        if let Some(i) = self.watched.iter().position(|w| w.0 == fd) {
            let (_, armed) = self.watched.remove(i);
            if armed {
                let e = opcode::PollRemove::new(TAG_WATCH | fd as u32 as u64)
                    .build()
                    .user_data(TAG_CANCEL);
                self.push(e)?;
            }
        }
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<ZcrxCompletion>, timeout: Duration) -> io::Result<()> {
        self.enable()?;
        self.arm_watches()?;
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        for cqe in self.ring.completion() {
            let ud = cqe.user_data();
            if ud & TAG_WATCH != 0 {
                if !cqueue::more(cqe.flags()) {
                    let fd = (ud & u64::from(u32::MAX)) as u32 as RawFd;
                    if let Some(w) = self.watched.iter_mut().find(|w| w.0 == fd) {
                        w.1 = false;
                    }
                }
            } else if ud & TAG_CANCEL == 0 {
                out.push(ZcrxCompletion::from_entry(&cqe));
            }
        }
        Ok(())
    }
}
