//! The kernel interface of AF_PACKET capture: the packet socket and its options, the
//! TPACKET_V3 structs as the kernel lays them out (include/uapi/linux/if_packet.h, asserted
//! below), and the one word of shared ring memory that needs atomic access, the block status.
//! Every `unsafe` of the afpacket backend is here; the rest of it reads blocks through safe
//! byte-slice views ([`super::Block`]).

use std::ffi::CString;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// TPACKET_ALIGN of the kernel: ring frames and packet data are 16-byte aligned.
pub const fn tpacket_align(x: usize) -> usize {
    (x + libc::TPACKET_ALIGNMENT - 1) & !(libc::TPACKET_ALIGNMENT - 1)
}

/// Bytes of a packet's slot before the kernel's minimum `tp_mac`: the tpacket3_hdr padded to
/// TPACKET_ALIGN, then the sockaddr_ll the kernel writes after it (TPACKET3_HDRLEN). The
/// kernel (af_packet.c, tpacket_rcv) puts the MAC header no lower than this, so the room
/// between the tpacket3_hdr and the packet (where zcap writes the 16-byte pcap record
/// header, over the sockaddr_ll it does not need) is at least `TPACKET3_HDRLEN - 48` = 20.
pub const HDR_END: usize = tpacket_align(size_of::<libc::tpacket3_hdr>());
pub const TPACKET3_HDRLEN: usize = HDR_END + size_of::<libc::sockaddr_ll>();

// Offsets inside a block (struct tpacket_block_desc, hdr.bh1) and a packet
// (struct tpacket3_hdr), for the safe views that read them from the block's bytes.
pub const BLOCK_STATUS: usize = 8;
pub const BLOCK_NUM_PKTS: usize = 12;
pub const BLOCK_FIRST_PKT: usize = 16;
pub const BLOCK_LEN: usize = 20;
pub const PKT_NEXT: usize = 0;
pub const PKT_SEC: usize = 4;
pub const PKT_NSEC: usize = 8;
pub const PKT_SNAPLEN: usize = 12;
pub const PKT_LEN: usize = 16;
pub const PKT_STATUS: usize = 20;
pub const PKT_MAC: usize = 24;
pub const PKT_NET: usize = 26;
pub const PKT_VLAN_TCI: usize = 32;
pub const PKT_VLAN_TPID: usize = 36;
// struct sockaddr_ll, which the kernel writes at HDR_END of each packet's slot.
pub const SLL_PROTOCOL: usize = 2;
pub const SLL_HATYPE: usize = 8;
pub const SLL_PKTTYPE: usize = 10;
pub const SLL_HALEN: usize = 11;
pub const SLL_ADDR: usize = 12;

/// Kernel drop counters of one ring (PACKET_STATISTICS; reading them resets them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets the ring saw, delivered or dropped.
    pub packets: u64,
    pub drops: u64,
    /// Times the ring was full and froze (every block held by user space).
    pub freezes: u64,
}

/// An interface's index, state and hardware type.
#[derive(Debug, Clone, Copy)]
pub struct Iface {
    pub index: i32,
    pub up: bool,
    pub running: bool,
    /// ARPHRD_* of the interface.
    pub arphrd: u16,
}

/// An AF_PACKET raw socket. Created bound to no protocol, so it receives nothing until
/// [`Socket::bind`] (the ring is set up first, and no packet of another interface slips in).
pub struct Socket {
    fd: OwnedFd,
}

fn errno_name(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::ENOMEM) => "ENOMEM",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::ENODEV) => "ENODEV",
        Some(libc::ENXIO) => "ENXIO",
        Some(libc::EBUSY) => "EBUSY",
        Some(libc::ENETDOWN) => "ENETDOWN",
        Some(libc::EAFNOSUPPORT) => "EAFNOSUPPORT",
        _ => "error",
    }
}

/// `what` failed with the last OS error: the error, with a sentence naming it.
fn os_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {} ({e})", errno_name(&e)))
}

impl Socket {
    /// A SOCK_RAW socket (frames with their link-layer header).
    pub fn open() -> io::Result<Socket> {
        Self::open_as(libc::SOCK_RAW)
    }

    /// A socket of `kind`: SOCK_RAW, or SOCK_DGRAM (the kernel strips the link-layer header;
    /// for `any`, whose interfaces have different ones).
    pub fn open_as(kind: i32) -> io::Result<Socket> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_PACKET, kind | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "opening a packet socket: {} ({e}): live capture needs CAP_NET_RAW (run as \
                         root, or `setcap cap_net_raw,cap_net_admin+ep` on the zcap binary)",
                        errno_name(&e)
                    ),
                ));
            }
            return Err(io::Error::new(
                e.kind(),
                format!("opening a packet socket: {} ({e})", errno_name(&e)),
            ));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Socket {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn set<T>(&self, level: i32, name: i32, val: &T, what: &str) -> io::Result<()> {
        // SAFETY: `val` points at a live, initialized T of the length we pass.
        let rc = unsafe {
            libc::setsockopt(
                self.fd(),
                level,
                name,
                (val as *const T).cast(),
                size_of::<T>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os_err(what));
        }
        Ok(())
    }

    /// Selects TPACKET_V3 (block ring, nanosecond timestamps).
    pub fn set_v3(&self) -> io::Result<()> {
        let v = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        self.set(
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            &v,
            "PACKET_VERSION TPACKET_V3",
        )
    }

    /// Sets up the receive ring: `blocks` blocks of `block_size` bytes, a block retired to
    /// user space after `timeout_ms` even if not full.
    pub fn set_rx_ring(&self, block_size: u32, blocks: u32, timeout_ms: u32) -> io::Result<()> {
        let req = libc::tpacket_req3 {
            tp_block_size: block_size,
            tp_block_nr: blocks,
            // V3 packs packets of any size into a block; the frame fields only have to be
            // consistent (one "frame" per block).
            tp_frame_size: block_size,
            tp_frame_nr: blocks,
            tp_retire_blk_tov: timeout_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        self.set(
            libc::SOL_PACKET,
            libc::PACKET_RX_RING,
            &req,
            "PACKET_RX_RING",
        )
    }

    /// Binds to interface `index` (0: every interface) for every protocol.
    pub fn bind(&self, index: i32) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = index;
        // SAFETY: a valid sockaddr_ll on the stack, with its length.
        let rc = unsafe {
            libc::bind(
                self.fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os_err("bind"));
        }
        Ok(())
    }

    /// Puts interface `index` into promiscuous mode for as long as the socket is open.
    pub fn promisc(&self, index: i32) -> io::Result<()> {
        let mr = libc::packet_mreq {
            mr_ifindex: index,
            mr_type: libc::PACKET_MR_PROMISC as u16,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        self.set(
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &mr,
            "PACKET_ADD_MEMBERSHIP promiscuous",
        )
    }

    /// Joins fanout group `group` (hash of the flow), so the group's sockets share the load.
    pub fn fanout(&self, group: u16) -> io::Result<()> {
        let arg: libc::c_int = (group as libc::c_int) | ((libc::PACKET_FANOUT_HASH as i32) << 16);
        self.set(libc::SOL_PACKET, libc::PACKET_FANOUT, &arg, "PACKET_FANOUT")
    }

    /// Attaches a classic BPF program (SO_ATTACH_FILTER).
    pub fn attach_filter(&self, prog: &[libc::sock_filter]) -> io::Result<()> {
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut libc::sock_filter,
        };
        // The kernel copies the program during the call; `prog` outlives it.
        self.set(
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &fprog,
            "SO_ATTACH_FILTER",
        )
    }

    /// Reads (and so resets) the ring's counters.
    pub fn stats(&self) -> io::Result<Stats> {
        let mut st = MaybeUninit::<libc::tpacket_stats_v3>::zeroed();
        let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `st` has room for the `len` bytes the kernel writes; `len` is updated.
        let rc = unsafe {
            libc::getsockopt(
                self.fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                st.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(os_err("PACKET_STATISTICS"));
        }
        // SAFETY: zero-initialized, then (partly) written by the kernel: every bit pattern
        // is a valid tpacket_stats_v3.
        let st = unsafe { st.assume_init() };
        Ok(Stats {
            packets: st.tp_packets as u64,
            drops: st.tp_drops as u64,
            freezes: st.tp_freeze_q_cnt as u64,
        })
    }

    /// Index, flags and hardware type of interface `name`, in words when there is none.
    pub fn iface(&self, name: &str) -> io::Result<Iface> {
        let c = CString::new(name).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL byte")
        })?;
        if name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "no such interface {name} (names are at most {} bytes)",
                    libc::IFNAMSIZ - 1
                ),
            ));
        }
        // SAFETY: a NUL-terminated name; if_nametoindex only reads it.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if index == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no such interface {name} (see `ip link`)"),
            ));
        }
        // SAFETY: ifreq is plain old data; all-zero is valid.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(c.as_bytes()) {
            *d = *s as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS reads the name and writes ifru_flags of our ifreq.
        if unsafe { libc::ioctl(self.fd(), libc::SIOCGIFFLAGS, &mut ifr) } != 0 {
            return Err(os_err(&format!("reading the flags of {name}")));
        }
        // SAFETY: the kernel just wrote ifru_flags.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags } as i32;
        // SAFETY: SIOCGIFHWADDR reads the name and writes ifru_hwaddr of our ifreq.
        if unsafe { libc::ioctl(self.fd(), libc::SIOCGIFHWADDR, &mut ifr) } != 0 {
            return Err(os_err(&format!("reading the hardware type of {name}")));
        }
        // SAFETY: the kernel just wrote ifru_hwaddr.
        let arphrd = unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_family };
        Ok(Iface {
            index: index as i32,
            up: flags & libc::IFF_UP != 0,
            running: flags & libc::IFF_RUNNING != 0,
            arphrd,
        })
    }
}

/// The status word of the block at `ptr` (the block's first byte in the mapped ring), read
/// with Acquire: after it says TP_STATUS_USER, the kernel's writes to the block are visible.
///
/// # Safety
/// `ptr` must be the start of a block of a live mapped TPACKET_V3 ring.
pub unsafe fn block_status(ptr: *const u8) -> u32 {
    // SAFETY: the caller's contract; the word is 4-aligned (blocks are page aligned) and the
    // kernel only ever writes it as a whole u32.
    unsafe { (*ptr.add(BLOCK_STATUS).cast::<AtomicU32>()).load(Ordering::Acquire) }
}

/// Gives the block at `ptr` back to the kernel (TP_STATUS_KERNEL, a Release store: every
/// write zcap made in the block happens before the kernel may fill it again).
///
/// # Safety
/// `ptr` must be the start of a block of a live mapped TPACKET_V3 ring, owned by user space
/// (status TP_STATUS_USER), with no slice of it in use.
pub unsafe fn release_block(ptr: *mut u8) {
    // SAFETY: the caller's contract, as for `block_status`.
    unsafe {
        (*ptr.add(BLOCK_STATUS).cast::<AtomicU32>())
            .store(libc::TP_STATUS_KERNEL, Ordering::Release)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    /// Sizes and offsets as include/uapi/linux/if_packet.h lays them out (x86_64, aarch64).
    #[test]
    fn kernel_struct_layouts() {
        assert_eq!(size_of::<libc::tpacket_req3>(), 28);
        assert_eq!(offset_of!(libc::tpacket_req3, tp_block_size), 0);
        assert_eq!(offset_of!(libc::tpacket_req3, tp_block_nr), 4);
        assert_eq!(offset_of!(libc::tpacket_req3, tp_frame_size), 8);
        assert_eq!(offset_of!(libc::tpacket_req3, tp_frame_nr), 12);
        assert_eq!(offset_of!(libc::tpacket_req3, tp_retire_blk_tov), 16);
        assert_eq!(offset_of!(libc::tpacket_req3, tp_sizeof_priv), 20);
        assert_eq!(offset_of!(libc::tpacket_req3, tp_feature_req_word), 24);

        assert_eq!(size_of::<libc::tpacket3_hdr>(), 48);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_next_offset), PKT_NEXT);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_sec), PKT_SEC);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_nsec), PKT_NSEC);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_snaplen), PKT_SNAPLEN);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_len), PKT_LEN);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_status), PKT_STATUS);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_mac), PKT_MAC);
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_net), PKT_NET);
        assert_eq!(offset_of!(libc::tpacket3_hdr, hv1), 28);
        let hv1 = offset_of!(libc::tpacket3_hdr, hv1);
        assert_eq!(size_of::<libc::tpacket_hdr_variant1>(), 12);
        assert_eq!(
            hv1 + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tci),
            PKT_VLAN_TCI
        );
        assert_eq!(
            hv1 + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tpid),
            PKT_VLAN_TPID
        );
        assert_eq!(offset_of!(libc::tpacket3_hdr, tp_padding), 40);

        assert_eq!(size_of::<libc::tpacket_hdr_v1>(), 40);
        assert_eq!(offset_of!(libc::tpacket_hdr_v1, block_status), 0);
        assert_eq!(offset_of!(libc::tpacket_hdr_v1, num_pkts), 4);
        assert_eq!(offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt), 8);
        assert_eq!(offset_of!(libc::tpacket_hdr_v1, blk_len), 12);
        assert_eq!(offset_of!(libc::tpacket_hdr_v1, seq_num), 16);
        assert_eq!(offset_of!(libc::tpacket_hdr_v1, ts_first_pkt), 24);
        assert_eq!(offset_of!(libc::tpacket_hdr_v1, ts_last_pkt), 32);
        assert_eq!(size_of::<libc::tpacket_block_desc>(), 48);
        assert_eq!(offset_of!(libc::tpacket_block_desc, version), 0);
        assert_eq!(offset_of!(libc::tpacket_block_desc, offset_to_priv), 4);
        assert_eq!(offset_of!(libc::tpacket_block_desc, hdr), 8);
        let bh1 = offset_of!(libc::tpacket_block_desc, hdr);
        assert_eq!(
            bh1 + offset_of!(libc::tpacket_hdr_v1, block_status),
            BLOCK_STATUS
        );
        assert_eq!(
            bh1 + offset_of!(libc::tpacket_hdr_v1, num_pkts),
            BLOCK_NUM_PKTS
        );
        assert_eq!(
            bh1 + offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt),
            BLOCK_FIRST_PKT
        );
        assert_eq!(bh1 + offset_of!(libc::tpacket_hdr_v1, blk_len), BLOCK_LEN);

        assert_eq!(size_of::<libc::tpacket_stats_v3>(), 12);
        assert_eq!(offset_of!(libc::tpacket_stats_v3, tp_packets), 0);
        assert_eq!(offset_of!(libc::tpacket_stats_v3, tp_drops), 4);
        assert_eq!(offset_of!(libc::tpacket_stats_v3, tp_freeze_q_cnt), 8);

        assert_eq!(size_of::<libc::sockaddr_ll>(), 20);
        assert_eq!(offset_of!(libc::sockaddr_ll, sll_family), 0);
        assert_eq!(offset_of!(libc::sockaddr_ll, sll_protocol), SLL_PROTOCOL);
        assert_eq!(offset_of!(libc::sockaddr_ll, sll_ifindex), 4);
        assert_eq!(offset_of!(libc::sockaddr_ll, sll_hatype), SLL_HATYPE);
        assert_eq!(offset_of!(libc::sockaddr_ll, sll_pkttype), SLL_PKTTYPE);
        assert_eq!(offset_of!(libc::sockaddr_ll, sll_halen), SLL_HALEN);
        assert_eq!(offset_of!(libc::sockaddr_ll, sll_addr), SLL_ADDR);

        assert_eq!(size_of::<libc::packet_mreq>(), 16);
        assert_eq!(TPACKET3_HDRLEN, libc::TPACKET3_HDRLEN);
        assert_eq!(TPACKET3_HDRLEN, 68);
        const { assert!(TPACKET3_HDRLEN - HDR_END >= 16, "room for a record header") };
    }

    #[test]
    fn align_is_the_kernels() {
        assert_eq!(tpacket_align(0), 0);
        assert_eq!(tpacket_align(1), 16);
        assert_eq!(tpacket_align(48), 48);
        assert_eq!(tpacket_align(84), 96);
    }
}
