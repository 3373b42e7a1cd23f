//! Steering a TCP port to the zcrx queue, and checking that it worked.
//!
//! - [`install`] adds an ntuple rule (`ETHTOOL_SRXCLSRLINS` through the SIOCETHTOOL ioctl —
//!   the same request `ethtool -N IF flow-type tcp6 dst-port P action Q` sends) and the
//!   returned [`Rule`] deletes it (`ETHTOOL_SRXCLSRLDEL`) when dropped.
//! - [`queue_napi_id`] asks the kernel's `netdev` generic-netlink family (`QUEUE_GET`, Linux
//!   6.8+) which NAPI instance serves an rx queue; sysfs does not expose it.
//!   [`incoming_napi_id`] reads a socket's `SO_INCOMING_NAPI_ID`. When the two differ the
//!   stream's packets are not arriving on the zcrx queue and the kernel copies them into the
//!   area (copy fallback): it works, but it is not zero-copy.
//!
//! Also home of the small ethtool ioctl and generic-netlink helpers `doctor` uses. No
//! shelling out to ethtool.

use std::ffi::c_void;
use std::io;
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub(crate) const SIOCETHTOOL: libc::c_ulong = 0x8946;
pub(crate) const ETHTOOL_GFLAGS: u32 = 0x25;
pub(crate) const ETHTOOL_GRXRINGS: u32 = 0x2d;
pub(crate) const ETHTOOL_GRXCLSRLCNT: u32 = 0x2e;
pub(crate) const ETHTOOL_GRXCLSRLALL: u32 = 0x30;
pub(crate) const ETHTOOL_SRXCLSRLDEL: u32 = 0x31;
pub(crate) const ETHTOOL_SRXCLSRLINS: u32 = 0x32;
pub(crate) const ETHTOOL_GRXFHINDIR: u32 = 0x38;
pub(crate) const ETH_FLAG_NTUPLE: u32 = 1 << 27;
const TCP_V4_FLOW: u32 = 0x01;
const TCP_V6_FLOW: u32 = 0x05;
const RX_CLS_LOC_ANY: u32 = 0xffff_ffff;
const RX_CLS_LOC_SPECIAL: u64 = 0x8000_0000;
const SO_INCOMING_NAPI_ID: libc::c_int = 56;

/// `struct ethtool_flow_ext`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EthtoolFlowExt {
    pub padding: [u8; 2],
    pub h_dest: [u8; 6],
    pub vlan_etype: u16,
    pub vlan_tci: u16,
    pub data: [u32; 2],
}

/// `union ethtool_flow_union`, kept as its 52 raw bytes (aligned as the union's u32
/// members); [`FlowUnion::set_tcp_dst_port`] writes the one field zcap uses.
#[repr(C, align(4))]
#[derive(Debug, Clone, Copy)]
pub struct FlowUnion(pub [u8; 52]);

impl FlowUnion {
    /// `tcp_ip4_spec.pdst` sits at byte 10, `tcp_ip6_spec.pdst` at byte 34 (network order).
    fn set_tcp_dst_port(&mut self, v6: bool, port_be: u16) {
        let at = if v6 { 34 } else { 10 };
        self.0[at..at + 2].copy_from_slice(&port_be.to_ne_bytes());
    }
}

/// `struct ethtool_rx_flow_spec`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EthtoolRxFlowSpec {
    pub flow_type: u32,
    pub h_u: FlowUnion,
    pub h_ext: EthtoolFlowExt,
    pub m_u: FlowUnion,
    pub m_ext: EthtoolFlowExt,
    pub ring_cookie: u64,
    pub location: u32,
}

/// `struct ethtool_rxnfc` without its trailing `rule_locs[]`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EthtoolRxnfc {
    pub cmd: u32,
    pub flow_type: u32,
    pub data: u64,
    pub fs: EthtoolRxFlowSpec,
    pub rule_cnt: u32,
}

impl EthtoolRxnfc {
    pub fn new(cmd: u32) -> Self {
        EthtoolRxnfc {
            cmd,
            flow_type: 0,
            data: 0,
            fs: EthtoolRxFlowSpec {
                flow_type: 0,
                h_u: FlowUnion([0; 52]),
                h_ext: EthtoolFlowExt::default(),
                m_u: FlowUnion([0; 52]),
                m_ext: EthtoolFlowExt::default(),
                ring_cookie: 0,
                location: 0,
            },
            rule_cnt: 0,
        }
    }
}

/// `struct ethtool_value`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EthtoolValue {
    pub cmd: u32,
    pub data: u32,
}

/// `struct ifreq` as SIOCETHTOOL reads it: the name and `ifr_data`.
#[repr(C)]
struct IfreqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut c_void,
    _pad: [u8; 16],
}

fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends one SIOCETHTOOL request for `iface`; `cmd` is the ethtool struct (its first u32 is
/// the command) and is updated in place by the kernel.
///
/// # Safety
/// `cmd` must point to a live, writable buffer at least as large as the kernel reads and
/// writes for its command.
pub(crate) unsafe fn ethtool_raw(iface: &str, cmd: *mut c_void) -> io::Result<()> {
    if iface.len() >= libc::IFNAMSIZ || iface.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    let sock = ioctl_socket()?;
    let mut ifr = IfreqData {
        name: [0; libc::IFNAMSIZ],
        data: cmd,
        _pad: [0; 16],
    };
    ifr.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: `ifr` is a live ifreq naming the interface and pointing at the caller's
    // buffer, whose size the caller vouches for.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut ifr as *mut IfreqData) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SIOCETHTOOL with a fixed-size ethtool struct.
pub(crate) fn ethtool<T: Copy>(iface: &str, cmd: &mut T) -> io::Result<()> {
    // SAFETY: `cmd` is a live exclusive T; callers pass the struct the command expects.
    unsafe { ethtool_raw(iface, (cmd as *mut T).cast()) }
}

/// Which ntuple flow type a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Tcp4,
    Tcp6,
}

/// An installed ntuple rule; dropping it removes the rule from the NIC.
#[derive(Debug)]
pub struct Rule {
    pub iface: String,
    pub location: u32,
    pub flow: Flow,
    pub port: u16,
    pub queue: u32,
}

impl Drop for Rule {
    fn drop(&mut self) {
        let mut del = EthtoolRxnfc::new(ETHTOOL_SRXCLSRLDEL);
        del.fs.location = self.location;
        if let Err(e) = ethtool(&self.iface, &mut del) {
            eprintln!(
                "zcap: could not remove the steering rule at location {} on {}: {e}; remove it with \
                 `ethtool -N {} delete {}`",
                self.location, self.iface, self.iface, self.location
            );
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("{iface} ({}) cannot steer flows: no ntuple filters (EOPNOTSUPP); steer port {port} to queue {queue} upstream or record without --steer", driver.as_deref().unwrap_or("no driver"))]
    Unsupported {
        iface: String,
        driver: Option<String>,
        port: u16,
        queue: u32,
    },
    #[error("installing a steering rule on {iface} needs CAP_NET_ADMIN (EPERM); run as root")]
    Permission { iface: String },
    #[error("{iface} refused the rule `flow-type {} dst-port {port} action {queue}`: {}; is ntuple on (`ethtool -K {iface} ntuple on`) and queue {queue} in range?", flow_name(*.flow), crate::rx::zcrx::sys::errno_words(*.errno))]
    Refused {
        iface: String,
        flow: Flow,
        port: u16,
        queue: u32,
        errno: i32,
    },
}

fn flow_name(f: Flow) -> &'static str {
    match f {
        Flow::Tcp4 => "tcp4",
        Flow::Tcp6 => "tcp6",
    }
}

fn steer_error(iface: &str, flow: Flow, port: u16, queue: u32, e: io::Error) -> SteerError {
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => SteerError::Unsupported {
            iface: iface.into(),
            driver: crate::rx::zcrx::driver_of(iface),
            port,
            queue,
        },
        Some(libc::EPERM) => SteerError::Permission {
            iface: iface.into(),
        },
        errno => SteerError::Refused {
            iface: iface.into(),
            flow,
            port,
            queue,
            errno: errno.unwrap_or(libc::EIO),
        },
    }
}

/// Rule locations in use (`ETHTOOL_GRXCLSRLALL`), and the table size.
fn rule_locations(iface: &str, count: &EthtoolRxnfc) -> io::Result<Vec<u32>> {
    let n = count.rule_cnt as usize;
    // ethtool_rxnfc followed by rule_cnt u32 locations, in a u64 buffer for alignment.
    let bytes = size_of::<EthtoolRxnfc>() + 4 * n;
    let mut buf = vec![0u64; bytes.div_ceil(8)];
    let mut head = EthtoolRxnfc::new(ETHTOOL_GRXCLSRLALL);
    head.data = count.data;
    head.rule_cnt = count.rule_cnt;
    // SAFETY: `buf` is at least size_of::<EthtoolRxnfc>() bytes and 8-aligned.
    unsafe { (buf.as_mut_ptr() as *mut EthtoolRxnfc).write(head) };
    // SAFETY: the buffer holds the struct plus `rule_cnt` u32 slots, which is what the kernel
    // writes for GRXCLSRLALL.
    unsafe { ethtool_raw(iface, buf.as_mut_ptr().cast())? };
    let base = buf.as_ptr() as *const u8;
    Ok((0..n)
        .map(|i| {
            // SAFETY: slot i is inside `buf` (sized above); read unaligned-safe.
            unsafe { (base.add(size_of::<EthtoolRxnfc>() + 4 * i) as *const u32).read_unaligned() }
        })
        .collect())
}

/// Installs `flow-type tcp4|tcp6 dst-port PORT action QUEUE` on `iface`.
pub fn install(iface: &str, flow: Flow, port: u16, queue: u32) -> Result<Rule, SteerError> {
    let err = |e| steer_error(iface, flow, port, queue, e);
    let mut count = EthtoolRxnfc::new(ETHTOOL_GRXCLSRLCNT);
    ethtool(iface, &mut count).map_err(err)?;
    let location = if count.data & RX_CLS_LOC_SPECIAL != 0 {
        RX_CLS_LOC_ANY
    } else {
        // The driver wants an explicit slot: take the highest free one, as ethtool does.
        let used = rule_locations(iface, &count).map_err(err)?;
        let size = (count.data & 0x7fff_ffff) as u32;
        (0..size)
            .rev()
            .find(|l| !used.contains(l))
            .ok_or_else(|| err(io::Error::from_raw_os_error(libc::ENOSPC)))?
    };
    let v6 = flow == Flow::Tcp6;
    let mut ins = EthtoolRxnfc::new(ETHTOOL_SRXCLSRLINS);
    ins.fs.flow_type = if v6 { TCP_V6_FLOW } else { TCP_V4_FLOW };
    ins.fs.h_u.set_tcp_dst_port(v6, port.to_be());
    // Kernel-side masks mark the bits that must match.
    ins.fs.m_u.set_tcp_dst_port(v6, 0xffff);
    ins.fs.ring_cookie = u64::from(queue);
    ins.fs.location = location;
    ethtool(iface, &mut ins).map_err(err)?;
    Ok(Rule {
        iface: iface.into(),
        location: ins.fs.location,
        flow,
        port,
        queue,
    })
}

/// The rules that steer a listener's port: tcp4 for an IPv4 address, tcp6 for IPv6, both
/// for the IPv6 wildcard (dual stack).
pub fn install_for(iface: &str, listen: &SocketAddr, queue: u32) -> Result<Vec<Rule>, SteerError> {
    let flows: &[Flow] = match listen {
        SocketAddr::V4(_) => &[Flow::Tcp4],
        SocketAddr::V6(a) if a.ip().is_unspecified() => &[Flow::Tcp6, Flow::Tcp4],
        SocketAddr::V6(_) => &[Flow::Tcp6],
    };
    flows
        .iter()
        .map(|&f| install(iface, f, listen.port(), queue))
        .collect()
}

/// `SO_INCOMING_NAPI_ID` of a socket: the NAPI instance its last packet came through
/// (0 before any data, or on devices without NAPI such as lo).
pub fn incoming_napi_id(fd: RawFd) -> io::Result<u32> {
    let mut id: u32 = 0;
    let mut len = size_of::<u32>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the local u32.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_INCOMING_NAPI_ID,
            (&mut id as *mut u32).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(id)
}

/// The once-per-stream warning for data that is not arriving on the zcrx queue.
pub fn fallback_warning(label: &str, queue_napi: u32, socket_napi: u32) -> String {
    format!(
        "its packets arrive through NAPI {socket_napi}, not {label} (NAPI {queue_napi}): the flow \
         is not steered to the zcrx queue, so the kernel copies it into the area (copy fallback, \
         no zero-copy); add --steer or an `ethtool -N` rule for its port"
    )
}

/// NAPI id of rx queue `queue` of `iface`, from the `netdev` netlink family. `Ok(None)` when
/// the driver does not associate the queue with a NAPI instance.
pub fn queue_napi_id(iface: &str, queue: u32) -> io::Result<Option<u32>> {
    let ifindex = ifindex(iface)?;
    let mut nl = nl::Genl::open()?;
    let family = nl.family("netdev")?;
    let mut attrs = Vec::new();
    nl::put(&mut attrs, NETDEV_A_QUEUE_IFINDEX, &ifindex.to_ne_bytes());
    nl::put(&mut attrs, NETDEV_A_QUEUE_TYPE, &0u32.to_ne_bytes()); // NETDEV_QUEUE_TYPE_RX
    nl::put(&mut attrs, NETDEV_A_QUEUE_ID, &queue.to_ne_bytes());
    let reply = nl.request(family, NETDEV_CMD_QUEUE_GET, 1, &attrs)?;
    Ok(nl::find(&reply, NETDEV_A_QUEUE_NAPI_ID).and_then(nl::u32_of))
}

const NETDEV_CMD_QUEUE_GET: u8 = 10;
const NETDEV_A_QUEUE_ID: u16 = 1;
const NETDEV_A_QUEUE_IFINDEX: u16 = 2;
const NETDEV_A_QUEUE_TYPE: u16 = 3;
const NETDEV_A_QUEUE_NAPI_ID: u16 = 4;

pub(crate) fn ifindex(iface: &str) -> io::Result<u32> {
    let c =
        std::ffi::CString::new(iface).map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))?;
    // SAFETY: `c` is a valid C string for the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::from_raw_os_error(libc::ENODEV)),
        i => Ok(i),
    }
}

/// A minimal generic-netlink client: resolve a family, send one request, get its reply's
/// attributes.
pub(crate) mod nl {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const GENL_ID_CTRL: u16 = 0x10;
    const CTRL_CMD_GETFAMILY: u8 = 3;
    const CTRL_ATTR_FAMILY_ID: u16 = 1;
    const CTRL_ATTR_FAMILY_NAME: u16 = 2;
    const NLMSG_ERROR: u16 = 2;
    const NLM_F_REQUEST: u16 = 1;
    pub const NLA_F_NESTED: u16 = 0x8000;
    const HDR: usize = 16 + 4; // nlmsghdr + genlmsghdr

    pub struct Genl {
        fd: OwnedFd,
        seq: u32,
    }

    /// Appends one attribute (padded to 4 bytes).
    pub fn put(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        buf.extend_from_slice(&(len as u16).to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(payload);
        buf.resize(buf.len().next_multiple_of(4), 0);
    }

    /// The attributes of a flat attribute stream, as (type without flags, payload).
    pub fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
        let mut out = Vec::new();
        while b.len() >= 4 {
            let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
            let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
            if len < 4 || len > b.len() {
                break;
            }
            out.push((ty, &b[4..len]));
            b = &b[len.next_multiple_of(4).min(b.len())..];
        }
        out
    }

    pub fn find(b: &[u8], ty: u16) -> Option<&[u8]> {
        attrs(b).into_iter().find(|(t, _)| *t == ty).map(|(_, p)| p)
    }

    pub fn u32_of(p: &[u8]) -> Option<u32> {
        Some(u32::from_ne_bytes(p.get(..4)?.try_into().ok()?))
    }

    impl Genl {
        pub fn open() -> io::Result<Genl> {
            // SAFETY: plain socket(2); checked below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_GENERIC,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fresh descriptor nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let tv = libc::timeval {
                tv_sec: 2,
                tv_usec: 0,
            };
            // SAFETY: setsockopt reads the local timeval for its stated size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            Ok(Genl { fd, seq: 1 })
        }

        pub fn family(&mut self, name: &str) -> io::Result<u16> {
            let mut a = Vec::new();
            let mut z = name.as_bytes().to_vec();
            z.push(0);
            put(&mut a, CTRL_ATTR_FAMILY_NAME, &z);
            let reply = self.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, &a)?;
            find(&reply, CTRL_ATTR_FAMILY_ID)
                .and_then(|p| Some(u16::from_ne_bytes(p.get(..2)?.try_into().ok()?)))
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no family id in reply"))
        }

        /// Sends one request and returns the attributes of its reply (after the genl header).
        pub fn request(
            &mut self,
            family: u16,
            cmd: u8,
            version: u8,
            attrs: &[u8],
        ) -> io::Result<Vec<u8>> {
            self.seq += 1;
            let mut m = Vec::with_capacity(HDR + attrs.len());
            m.extend_from_slice(&((HDR + attrs.len()) as u32).to_ne_bytes());
            m.extend_from_slice(&family.to_ne_bytes());
            m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
            m.extend_from_slice(&self.seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&[cmd, version, 0, 0]);
            m.extend_from_slice(attrs);
            // SAFETY: sends our local buffer of the stated length to the kernel (pid 0
            // default destination of a netlink socket).
            let n = unsafe { libc::send(self.fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = vec![0u8; 65536];
            loop {
                // SAFETY: receives into our local buffer, at most its length.
                let n = unsafe {
                    libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                let b = &buf[..n as usize];
                if b.len() < 16 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "short netlink reply",
                    ));
                }
                let len = (u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize).min(b.len());
                let ty = u16::from_ne_bytes([b[4], b[5]]);
                let seq = u32::from_ne_bytes(b[8..12].try_into().unwrap());
                if seq != self.seq {
                    continue;
                }
                if ty == NLMSG_ERROR {
                    let code =
                        i32::from_ne_bytes(b.get(16..20).unwrap_or(&[0; 4]).try_into().unwrap());
                    return Err(io::Error::from_raw_os_error(if code < 0 {
                        -code
                    } else {
                        libc::EIO
                    }));
                }
                return Ok(b.get(HDR..len).unwrap_or(&[]).to_vec());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of};

    // Layouts from include/uapi/linux/ethtool.h (x86-64 / arm64).
    #[test]
    fn ethtool_struct_layouts() {
        assert_eq!(size_of::<EthtoolFlowExt>(), 20);
        assert_eq!(offset_of!(EthtoolFlowExt, h_dest), 2);
        assert_eq!(offset_of!(EthtoolFlowExt, vlan_etype), 8);
        assert_eq!(offset_of!(EthtoolFlowExt, data), 12);
        assert_eq!(size_of::<FlowUnion>(), 52);
        assert_eq!(align_of::<FlowUnion>(), 4);
        assert_eq!(size_of::<EthtoolRxFlowSpec>(), 168);
        assert_eq!(offset_of!(EthtoolRxFlowSpec, h_u), 4);
        assert_eq!(offset_of!(EthtoolRxFlowSpec, h_ext), 56);
        assert_eq!(offset_of!(EthtoolRxFlowSpec, m_u), 76);
        assert_eq!(offset_of!(EthtoolRxFlowSpec, m_ext), 128);
        assert_eq!(offset_of!(EthtoolRxFlowSpec, ring_cookie), 152);
        assert_eq!(offset_of!(EthtoolRxFlowSpec, location), 160);
        assert_eq!(size_of::<EthtoolRxnfc>(), 192);
        assert_eq!(offset_of!(EthtoolRxnfc, data), 8);
        assert_eq!(offset_of!(EthtoolRxnfc, fs), 16);
        assert_eq!(offset_of!(EthtoolRxnfc, rule_cnt), 184);
        assert_eq!(size_of::<EthtoolValue>(), 8);
        assert_eq!(size_of::<IfreqData>(), 40);
        assert_eq!(offset_of!(IfreqData, data), 16);
    }

    #[test]
    fn dst_port_lands_in_the_right_spec_field() {
        let mut u = FlowUnion([0; 52]);
        u.set_tcp_dst_port(false, 57012u16.to_be());
        assert_eq!(&u.0[10..12], &57012u16.to_be_bytes());
        let mut u = FlowUnion([0; 52]);
        u.set_tcp_dst_port(true, 57012u16.to_be());
        assert_eq!(&u.0[34..36], &57012u16.to_be_bytes());
    }

    #[test]
    fn netlink_attributes_round_trip() {
        let mut b = Vec::new();
        nl::put(&mut b, 4, &7u32.to_ne_bytes());
        nl::put(&mut b, 2 | nl::NLA_F_NESTED, b"eth0\0");
        nl::put(&mut b, 9, &[1]);
        let a = nl::attrs(&b);
        assert_eq!(a.len(), 3);
        assert_eq!(nl::find(&b, 4).and_then(nl::u32_of), Some(7));
        assert_eq!(nl::find(&b, 2), Some(&b"eth0\0"[..]));
        assert_eq!(nl::find(&b, 9), Some(&[1u8][..]));
    }
}
