//! The real kernel behind the [`ZcrxKernel`] seam: an io_uring with DEFER_TASKRUN,
//! SINGLE_ISSUER and 32-byte CQEs, an interface queue registered with
//! IORING_REGISTER_ZCRX_IFQ (the area plus a user-provided refill-ring region), multishot
//! RECV_ZC per socket, and multishot polls for the descriptors the backend watches.
//! Registration errors become [`ZcrxError`]s that say in one line what is missing.

use super::backend::ZcrxKernel;
use super::rings::{RefillRing, RingLayout, RqRegion};
use super::sys::{
    errno_words, io_uring_region_desc, io_uring_zcrx_area_reg, io_uring_zcrx_ifq_reg, zcrx_ctrl,
    KernelVersion, ZcrxCompletion, AREA_LIMIT_TO_6_18, IORING_MEM_REGION_TYPE_USER,
    IORING_REGISTER_ZCRX_CTRL, IORING_REGISTER_ZCRX_IFQ, NIOV_SIZE, RQ_MAX_ENTRIES,
    ZCRX_CTRL_FLUSH_RQ,
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
    #[error(
        "zcrx: a {area_len}-byte area is larger than the 1 GiB that Linux {kernel} can register \
             for zero-copy receive (registration would fail with EFAULT); use --area-size 1GiB \
             or less"
    )]
    AreaTooLarge {
        area_len: usize,
        kernel: KernelVersion,
    },
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
            ZcrxError::AreaTooLarge { .. } => libc::EFAULT,
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
             {queue} already has a memory provider (another zcrx or devmem user, or one still \
             being torn down: retried for {:?})",
            EEXIST_BACKOFF.iter().sum::<Duration>()
        ),
        libc::EBUSY => format!(
            "{name}: queue {queue} of {iface} is in use by AF_XDP or leased to another device"
        ),
        libc::ENOMEM => format!(
            "{name}: the kernel could not pin the {area_len}-byte area; raise the locked-memory \
             limit (`ulimit -l`, LimitMEMLOCK=) or use a smaller --area-size"
        ),
        libc::EFAULT if area_len > AREA_LIMIT_TO_6_18 => format!(
            "{name}: the {area_len}-byte area is over the 1 GiB this kernel registers; use \
             --area-size 1GiB or less"
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
    /// The kernel answered a probing ZCRX_CTRL_FLUSH_RQ (6.19+).
    flush_rq: bool,
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

/// Waits before the retries of a registration that failed with EEXIST: the queue's previous
/// memory provider (a `doctor --probe`, a zcap that just exited) goes away in the kernel's
/// asynchronous ring teardown (`io_ring_exit_work`), a moment after its process closed it.
pub const EEXIST_BACKOFF: [Duration; 4] = [
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
];

/// Runs `attempt` again after each pause of `backoff` while it fails with EEXIST.
pub fn retry_eexist<T>(
    backoff: &[Duration],
    mut attempt: impl FnMut() -> Result<T, ZcrxError>,
) -> Result<T, ZcrxError> {
    let mut pauses = backoff.iter();
    loop {
        match attempt() {
            Err(e) if e.errno() == libc::EEXIST => match pauses.next() {
                Some(d) => std::thread::sleep(*d),
                None => return Err(e),
            },
            other => return other,
        }
    }
}

/// Refuses, before anything is registered, an area the running kernel cannot register:
/// kernels up to 6.18 fail ranges over 1 GiB with EFAULT.
pub fn check_area_len(area_len: usize, kernel: Option<KernelVersion>) -> Result<(), ZcrxError> {
    match kernel {
        Some(k) if k.limits_area_to_1gib() && area_len > AREA_LIMIT_TO_6_18 => {
            Err(ZcrxError::AreaTooLarge {
                area_len,
                kernel: k,
            })
        }
        _ => Ok(()),
    }
}

/// Registers queue `queue` of `iface` for zero-copy receive into `area`, with a refill ring
/// of `rq_entries` (rounded up to a power of two by the kernel). EEXIST is retried with a
/// short back-off ([`EEXIST_BACKOFF`]); an area the running kernel cannot register is
/// refused first.
pub fn register(
    iface: &str,
    queue: u32,
    area: &Arc<Area>,
    rq_entries: u32,
) -> Result<ZcrxIfq, ZcrxError> {
    let ifindex = crate::steer::ifindex(iface).map_err(|_| ZcrxError::NoInterface {
        iface: iface.into(),
    })?;
    check_area_len(area.len(), KernelVersion::running())?;
    retry_eexist(&EEXIST_BACKOFF, || {
        register_index(iface, ifindex, queue, area, rq_entries)
    })
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
    // rx_buf_len 0: niovs of one page; event_desc 0: no event descriptor; reserved zero.
    let mut reg = io_uring_zcrx_ifq_reg {
        if_idx: ifindex,
        if_rxq: queue,
        rq_entries,
        area_ptr: &mut area_reg as *mut _ as u64,
        region_ptr: &mut region_desc as *mut _ as u64,
        ..Default::default()
    };
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
    // Probe FLUSH_RQ on the empty ring: 0 where the kernel has it, EINVAL (unknown register
    // opcode) before 6.19.
    let flush_rq = ctrl_flush_rq(ring.as_raw_fd(), reg.zcrx_id).is_ok();
    Ok(ZcrxIfq {
        ring,
        refill,
        zcrx_id: reg.zcrx_id,
        flush_rq,
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
            flush_rq: false,
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

    /// ZCRX_CTRL_FLUSH_RQ on this ring, whatever the probe said (tests use it to see the
    /// kernel's own answer).
    pub fn flush_rq_raw(&self) -> io::Result<()> {
        ctrl_flush_rq(self.ring.as_raw_fd(), self.zcrx_id)
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

/// IORING_REGISTER_ZCRX_CTRL with ZCRX_CTRL_FLUSH_RQ for zcrx `zcrx_id` of ring `fd`.
fn ctrl_flush_rq(fd: RawFd, zcrx_id: u32) -> io::Result<()> {
    let mut ctrl = zcrx_ctrl {
        zcrx_id,
        op: ZCRX_CTRL_FLUSH_RQ,
        ..Default::default()
    };
    // SAFETY: `ctrl` is a live local with the kernel's layout (asserted in sys.rs), all
    // reserved words zero; `nr_args` must be 0 for this opcode. The kernel only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            fd,
            IORING_REGISTER_ZCRX_CTRL,
            &mut ctrl as *mut zcrx_ctrl,
            0u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl ZcrxKernel for ZcrxIfq {
    fn refill(&mut self) -> &mut RefillRing {
        &mut self.refill
    }

    fn niov_size(&self) -> usize {
        // rx_buf_len is left 0: one page per niov.
        crate::area::page_size().max(NIOV_SIZE)
    }

    fn can_flush_rq(&self) -> bool {
        self.flush_rq
    }

    fn flush_rq(&mut self) -> io::Result<()> {
        ctrl_flush_rq(self.ring.as_raw_fd(), self.zcrx_id)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn eexist() -> ZcrxError {
        ZcrxError::Register {
            iface: "eth9".into(),
            queue: 3,
            driver: None,
            errno: libc::EEXIST,
            rq_entries: 64,
            area_len: 1 << 20,
        }
    }

    #[test]
    fn eexist_is_retried_with_back_off_until_the_old_provider_is_gone() {
        let tries = Cell::new(0);
        let r = retry_eexist(&[Duration::from_millis(1); 4], || {
            tries.set(tries.get() + 1);
            if tries.get() < 3 {
                Err(eexist())
            } else {
                Ok(7)
            }
        });
        assert_eq!(r.unwrap(), 7);
        assert_eq!(tries.get(), 3);
        // A lasting EEXIST ends after the back-off, with the error in words.
        let tries = Cell::new(0);
        let e = retry_eexist(&[Duration::from_millis(1); 2], || {
            tries.set(tries.get() + 1);
            Err::<(), _>(eexist())
        })
        .unwrap_err();
        assert_eq!(tries.get(), 3);
        assert!(e.to_string().contains("EEXIST"), "{e}");
        // Other errors are not retried.
        let tries = Cell::new(0);
        let _ = retry_eexist(&EEXIST_BACKOFF, || {
            tries.set(tries.get() + 1);
            Err::<(), _>(ZcrxError::NoInterface { iface: "x".into() })
        });
        assert_eq!(tries.get(), 1);
    }

    #[test]
    fn an_area_over_1gib_is_refused_up_front_on_kernels_to_6_18() {
        let big = (1 << 30) + 4096;
        let e = check_area_len(big, Some(KernelVersion::new(6, 18))).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("1 GiB") && msg.contains("6.18"), "{msg}");
        assert!(msg.contains("--area-size 1GiB"), "{msg}");
        assert_eq!(e.errno(), libc::EFAULT);
        assert!(check_area_len(1 << 30, Some(KernelVersion::new(6, 15))).is_ok());
        assert!(check_area_len(big, Some(KernelVersion::new(6, 19))).is_ok());
        assert!(check_area_len(big, None).is_ok());
    }

    #[test]
    fn efault_on_a_large_area_names_the_limit() {
        let w = register_words("eth0", 1, Some("mlx5_core"), libc::EFAULT, 64, 2 << 30);
        assert!(w.contains("1 GiB"), "{w}");
        let w = register_words("eth0", 1, Some("mlx5_core"), libc::EFAULT, 64, 1 << 20);
        assert!(w.contains("could not access"), "{w}");
    }

    #[test]
    fn flush_rq_on_an_unregistered_ring_is_refused_by_the_kernel() {
        let area = Area::new(1 << 20, false).unwrap();
        let Ok(ifq) = ZcrxIfq::unregistered(&area, 64) else {
            eprintln!("skipped: io_uring with DEFER_TASKRUN/CQE32 unavailable here");
            return;
        };
        assert!(!ifq.can_flush_rq());
        // 6.19+: ENXIO (no such zcrx id); before: EINVAL (unknown register opcode).
        let e = ifq.flush_rq_raw().unwrap_err().raw_os_error();
        assert!(matches!(e, Some(libc::EINVAL | libc::ENXIO)), "{e:?}");
    }
}
