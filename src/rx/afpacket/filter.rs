//! Capture filters: a tcpdump filter expression compiled to classic BPF by libpcap, the
//! reference compiler, loaded with dlopen(3) when a filter is asked for — so zcap builds and
//! runs without libpcap's development files, and without libpcap at all until a filter is
//! used. The program is copied out of libpcap once (with its `tcpdump -d` listing) and
//! attached to each capture socket with SO_ATTACH_FILTER; the kernel drops what it rejects.
//!
//! [`OfflineFilter`] runs the same compiler's program over packets already recorded
//! (`pcap_offline_filter`), as `tcpdump -r FILE FILTER` does: the exact per-packet check of a
//! filtered read. [`OfflineFilters`] keeps one program per link type, for archives whose
//! streams (or pcapng interfaces) have several.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::io;

/// The shared objects tried, newest soname first (Debian and Ubuntu ship `libpcap.so.0.8`).
const LIBS: [&str; 3] = ["libpcap.so.1", "libpcap.so.0.8", "libpcap.so"];
/// PCAP_NETMASK_UNKNOWN: `ip broadcast` cannot be compiled, everything else can.
const NETMASK_UNKNOWN: u32 = 0xffff_ffff;

/// A compiled filter: the instructions the kernel runs and their listing.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub insns: Vec<libc::sock_filter>,
    /// One line per instruction, as `tcpdump -d` prints them.
    pub listing: Vec<String>,
}

/// libpcap's largest snapshot length (MAXIMUM_SNAPLEN), which it substitutes for 0 or more.
const MAX_SNAPLEN: u32 = 262_144;

/// struct bpf_program of <pcap/bpf.h>.
#[repr(C)]
struct BpfProgram {
    bf_len: c_uint,
    bf_insns: *mut libc::sock_filter,
}

/// struct pcap_pkthdr of <pcap/pcap.h>: a `struct timeval`, then caplen and len.
#[repr(C)]
struct PcapPkthdr {
    ts: libc::timeval,
    caplen: u32,
    len: u32,
}

type OpenDead = unsafe extern "C" fn(c_int, c_int) -> *mut c_void;
type Compile =
    unsafe extern "C" fn(*mut c_void, *mut BpfProgram, *const c_char, c_int, u32) -> c_int;
type FreeCode = unsafe extern "C" fn(*mut BpfProgram);
type GetErr = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type Close = unsafe extern "C" fn(*mut c_void);
type Image = unsafe extern "C" fn(*const libc::sock_filter, c_int) -> *const c_char;
type Filter = unsafe extern "C" fn(*const BpfProgram, *const PcapPkthdr, *const u8) -> c_int;

struct Lib {
    handle: *mut c_void,
}

impl Lib {
    /// Loads libpcap; `purpose` names what needs it in the error ("a capture filter").
    fn open(purpose: &str) -> io::Result<Lib> {
        for name in LIBS {
            let c = CString::new(name).expect("no NUL");
            // SAFETY: dlopen with a NUL-terminated name; a null result is checked.
            let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            if !handle.is_null() {
                return Ok(Lib { handle });
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{purpose} needs libpcap, loaded at run time, and none of {} is on this \
                 host: install it (`apt-get install libpcap0.8`, `dnf install libpcap`)",
                LIBS.join(", ")
            ),
        ))
    }

    /// The address of `name` in the library, as a function pointer of type `T`.
    ///
    /// # Safety
    /// `T` must be the function's true signature.
    unsafe fn sym<T: Copy>(&self, name: &str) -> io::Result<T> {
        let c = CString::new(name).expect("no NUL");
        // SAFETY: a live handle and a NUL-terminated symbol name.
        let p = unsafe { libc::dlsym(self.handle, c.as_ptr()) };
        if p.is_null() {
            return Err(io::Error::other(format!(
                "libpcap has no {name}: too old for zcap's filters"
            )));
        }
        assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
        // SAFETY: a non-null function address reinterpreted as the caller's signature (the
        // caller's contract); T is pointer-sized (asserted).
        Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
    }
}

impl Drop for Lib {
    fn drop(&mut self) {
        // SAFETY: the handle came from dlopen and nothing from it is used after this.
        unsafe { libc::dlclose(self.handle) };
    }
}

/// Which libpcap a filter would use, or why there is none (for `doctor`).
pub fn libpcap() -> io::Result<String> {
    let lib = Lib::open("a capture filter")?;
    // SAFETY: `const char *pcap_lib_version(void)` of <pcap/pcap.h>.
    let version: unsafe extern "C" fn() -> *const c_char = unsafe { lib.sym("pcap_lib_version")? };
    // SAFETY: returns a static NUL-terminated string.
    Ok(unsafe { CStr::from_ptr(version()) }
        .to_string_lossy()
        .into_owned())
}

/// Compiles `expr` for frames of `linktype` captured to `snaplen` bytes (the program's accept
/// value, so the kernel truncates to the snaplen as without a filter). A filter that does not
/// compile is an error carrying libpcap's message.
pub fn compile(expr: &str, linktype: u32, snaplen: u32) -> io::Result<Compiled> {
    let lib = Lib::open("a capture filter")?;
    // SAFETY: the signatures of <pcap/pcap.h> (libpcap 1.x, unchanged since 0.8).
    let (freecode, image) = unsafe {
        (
            lib.sym::<FreeCode>("pcap_freecode")?,
            lib.sym::<Image>("bpf_image")?,
        )
    };
    let mut prog = compile_program(&lib, expr, linktype, snaplen)?;
    let n = prog.bf_len as usize;
    let insns = if n == 0 {
        Vec::new()
    } else {
        // SAFETY: libpcap filled `bf_len` instructions at `bf_insns`; copied before freecode.
        unsafe { std::slice::from_raw_parts(prog.bf_insns, n) }.to_vec()
    };
    let listing = insns
        .iter()
        .enumerate()
        .map(|(i, insn)| {
            // SAFETY: bpf_image formats one instruction into a static buffer we copy at once.
            unsafe { CStr::from_ptr(image(insn, i as c_int)) }
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // SAFETY: `prog` was filled by pcap_compile and is not used after.
    unsafe { freecode(&mut prog) };
    if insns.is_empty() || insns.len() > u16::MAX as usize {
        return Err(io::Error::other(format!(
            "filter `{expr}` compiled to {} instructions, which the kernel does not take",
            insns.len()
        )));
    }
    Ok(Compiled { insns, listing })
}

/// The DLT_ value libpcap's pcap_open_dead takes for a LINKTYPE_ value of a capture file:
/// the same number except for the few whose DLT_ differs by platform (pcap-common.c's
/// linktype_to_dlt, Linux values).
fn dlt(linktype: u32) -> u32 {
    match linktype {
        100 => 11, // ATM_RFC1483
        101 => 12, // RAW
        102 => 15, // SLIP_BSDOS
        103 => 16, // PPP_BSDOS
        106 => 19, // ATM_CLIP
        other => other,
    }
}

/// Compiles `expr` with libpcap on a dead handle of `linktype` and `snaplen`: the program
/// libpcap allocated, which the caller frees with `pcap_freecode`. The handle is closed
/// before returning (the program does not refer to it).
fn compile_program(lib: &Lib, expr: &str, linktype: u32, snaplen: u32) -> io::Result<BpfProgram> {
    // SAFETY: the signatures of <pcap/pcap.h> (libpcap 1.x, unchanged since 0.8).
    let (open_dead, compile, geterr, close) = unsafe {
        (
            lib.sym::<OpenDead>("pcap_open_dead")?,
            lib.sym::<Compile>("pcap_compile")?,
            lib.sym::<GetErr>("pcap_geterr")?,
            lib.sym::<Close>("pcap_close")?,
        )
    };
    let text = CString::new(expr)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the filter has a NUL byte"))?;
    // SAFETY: plain call; a null result is checked.
    let p = unsafe {
        open_dead(
            dlt(linktype) as c_int,
            snaplen.min(i32::MAX as u32) as c_int,
        )
    };
    if p.is_null() {
        return Err(io::Error::other("libpcap: pcap_open_dead failed"));
    }
    let mut prog = BpfProgram {
        bf_len: 0,
        bf_insns: std::ptr::null_mut(),
    };
    // SAFETY: `p` is live, `prog` and `text` outlive the call; optimize as tcpdump does.
    let rc = unsafe { compile(p, &mut prog, text.as_ptr(), 1, NETMASK_UNKNOWN) };
    let msg = (rc != 0).then(|| {
        // SAFETY: pcap_geterr returns the handle's NUL-terminated message buffer, copied here
        // while `p` is live.
        unsafe { CStr::from_ptr(geterr(p)) }
            .to_string_lossy()
            .into_owned()
    });
    // SAFETY: `p` came from pcap_open_dead and is not used after; the program is independent
    // of it (malloc'd by pcap_compile, freed by pcap_freecode).
    unsafe { close(p) };
    match msg {
        Some(msg) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("filter `{expr}` does not compile: {msg}"),
        )),
        None => Ok(prog),
    }
}

/// A filter compiled by libpcap for one link type, checking recorded packets exactly as
/// `tcpdump -r FILE FILTER` does (`pcap_offline_filter`).
pub struct OfflineFilter {
    prog: BpfProgram,
    filter: Filter,
    freecode: FreeCode,
    linktype: u32,
    /// Keeps libpcap loaded while `prog` and the function pointers live; dropped after
    /// [`Drop::drop`] has freed the program.
    _lib: Lib,
}

// SAFETY: the program is written once by pcap_compile and only read after (by
// pcap_offline_filter, which keeps its scratch memory on its own stack); it and the library
// handle (dlopen's handles are reference counted and thread-safe) are freed once, in Drop.
unsafe impl Send for OfflineFilter {}
// SAFETY: `matches` only reads the program (see Send); libpcap's filter interpreter is
// reentrant.
unsafe impl Sync for OfflineFilter {}

impl std::fmt::Debug for OfflineFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineFilter")
            .field("linktype", &self.linktype)
            .field("insns", &self.prog.bf_len)
            .finish()
    }
}

impl OfflineFilter {
    /// Compiles `expr` (tcpdump's filter language) for packets of `linktype` captured with
    /// `snaplen` (0 or more than libpcap's maximum means its maximum, as libpcap reads such
    /// files). The error names the expression and carries libpcap's message, or says how to
    /// install libpcap when it is missing.
    pub fn new(expr: &str, linktype: u32, snaplen: u32) -> Result<OfflineFilter, String> {
        let lib = Lib::open("a packet filter").map_err(|e| e.to_string())?;
        // SAFETY: the signatures of <pcap/pcap.h>: `int pcap_offline_filter(const struct
        // bpf_program *, const struct pcap_pkthdr *, const u_char *)` (libpcap 0.9.1+) and
        // `void pcap_freecode(struct bpf_program *)`.
        let (filter, freecode) = unsafe {
            (
                lib.sym::<Filter>("pcap_offline_filter"),
                lib.sym::<FreeCode>("pcap_freecode"),
            )
        };
        let (filter, freecode) = (
            filter.map_err(|e| e.to_string())?,
            freecode.map_err(|e| e.to_string())?,
        );
        let snaplen = if snaplen == 0 || snaplen > MAX_SNAPLEN {
            MAX_SNAPLEN
        } else {
            snaplen
        };
        let prog = compile_program(&lib, expr, linktype, snaplen).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidInput => format!("{e} (link type {linktype})"),
            _ => e.to_string(),
        })?;
        Ok(OfflineFilter {
            prog,
            filter,
            freecode,
            linktype,
            _lib: lib,
        })
    }

    /// The link type the program was compiled for.
    pub fn linktype(&self) -> u32 {
        self.linktype
    }

    /// Whether the packet passes the filter: `data` holds its captured bytes (`caplen` of
    /// them; a `caplen` beyond `data` is cut to it), `wirelen` is its original length (what
    /// `len`/`greater`/`less` test), `ts_ns` its time in nanoseconds since the epoch.
    pub fn matches(&self, caplen: u32, wirelen: u32, ts_ns: i64, data: &[u8]) -> bool {
        let caplen = caplen.min(u32::try_from(data.len()).unwrap_or(u32::MAX));
        let hdr = PcapPkthdr {
            ts: libc::timeval {
                tv_sec: ts_ns.div_euclid(1_000_000_000) as libc::time_t,
                tv_usec: (ts_ns.rem_euclid(1_000_000_000) / 1000) as libc::suseconds_t,
            },
            caplen,
            len: wirelen,
        };
        // SAFETY: a program from pcap_compile (live until Drop), a header on the stack and
        // `caplen` readable bytes at `data` (clamped to the slice above); libpcap's
        // interpreter bounds every load by caplen.
        unsafe { (self.filter)(&self.prog, &hdr, data.as_ptr()) != 0 }
    }
}

impl Drop for OfflineFilter {
    fn drop(&mut self) {
        // SAFETY: the program came from pcap_compile and is freed once; the library is still
        // loaded (`_lib` is dropped after this).
        unsafe { (self.freecode)(&mut self.prog) };
    }
}

/// One filter expression compiled per link type on first use: the exact check of a read over
/// an archive whose packets have several link types.
#[derive(Debug)]
pub struct OfflineFilters {
    expr: String,
    snaplen: u32,
    progs: Vec<OfflineFilter>,
}

impl OfflineFilters {
    /// Nothing is compiled yet: each link type is on first use, so that a filter which only
    /// applies to some link types (`wlan addr1 …`) serves an archive of those. A caller that
    /// knows its link types up front calls [`get`](Self::get) for each, to fail before
    /// reading anything. Fails only when libpcap cannot be loaded; the error says that
    /// `purpose` ("filtered cat") needs it and how to install it.
    pub fn new(purpose: &str, expr: &str, snaplen: u32) -> Result<OfflineFilters, String> {
        Lib::open(purpose).map_err(|e| e.to_string())?;
        Ok(OfflineFilters {
            expr: expr.to_string(),
            snaplen,
            progs: Vec::new(),
        })
    }

    /// The expression.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The program for `linktype`, compiled now if it is the first packet of that type (an
    /// error when the filter does not apply to it, e.g. `vlan` on raw IP, as tcpdump refuses).
    pub fn get(&mut self, linktype: u32) -> Result<&OfflineFilter, String> {
        let i = match self.progs.iter().position(|p| p.linktype == linktype) {
            Some(i) => i,
            None => {
                self.progs
                    .push(OfflineFilter::new(&self.expr, linktype, self.snaplen)?);
                self.progs.len() - 1
            }
        };
        Ok(&self.progs[i])
    }

    /// [`OfflineFilter::matches`] with the program for `linktype`.
    pub fn matches(
        &mut self,
        linktype: u32,
        caplen: u32,
        wirelen: u32,
        ts_ns: i64,
        data: &[u8],
    ) -> Result<bool, String> {
        Ok(self.get(linktype)?.matches(caplen, wirelen, ts_ns, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have_libpcap() -> bool {
        Lib::open("a test").is_ok()
    }

    #[test]
    fn bpf_program_layout_is_libpcaps() {
        use std::mem::{offset_of, size_of};
        assert_eq!(size_of::<BpfProgram>(), 16);
        assert_eq!(offset_of!(BpfProgram, bf_len), 0);
        assert_eq!(offset_of!(BpfProgram, bf_insns), 8);
        // struct bpf_insn { u_short code; u_char jt; u_char jf; bpf_u_int32 k; }
        assert_eq!(size_of::<libc::sock_filter>(), 8);
        assert_eq!(offset_of!(libc::sock_filter, code), 0);
        assert_eq!(offset_of!(libc::sock_filter, jt), 2);
        assert_eq!(offset_of!(libc::sock_filter, jf), 3);
        assert_eq!(offset_of!(libc::sock_filter, k), 4);
    }

    #[test]
    fn pcap_pkthdr_layout_is_libpcaps() {
        use std::mem::{offset_of, size_of};
        // struct timeval { time_t tv_sec; suseconds_t tv_usec; } on 64-bit Linux.
        assert_eq!(size_of::<libc::timeval>(), 16);
        assert_eq!(offset_of!(libc::timeval, tv_sec), 0);
        assert_eq!(offset_of!(libc::timeval, tv_usec), 8);
        // struct pcap_pkthdr { struct timeval ts; bpf_u_int32 caplen; bpf_u_int32 len; }
        assert_eq!(size_of::<PcapPkthdr>(), 24);
        assert_eq!(offset_of!(PcapPkthdr, ts), 0);
        assert_eq!(offset_of!(PcapPkthdr, caplen), 16);
        assert_eq!(offset_of!(PcapPkthdr, len), 20);
    }

    /// An Ethernet/IPv4/UDP frame from 10.0.0.1:1000 to 10.0.0.2:53, 20 payload bytes.
    fn udp_frame() -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0, 0, 48, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(&[0x03, 0xe8, 0, 53, 0, 28, 0, 0]);
        f.extend_from_slice(&[0xab; 20]);
        f
    }

    #[test]
    fn offline_filter_checks_packets_like_tcpdump() {
        if !have_libpcap() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI installs libpcap0.8, and it cannot be loaded"
            );
            eprintln!("SKIP offline_filter_checks_packets_like_tcpdump: libpcap not installed");
            return;
        }
        let f = udp_frame();
        let n = f.len() as u32;
        let yes = [
            "udp",
            "host 10.0.0.2",
            "src port 1000",
            "udp and dst port 53",
            "greater 60",
        ];
        for expr in yes {
            let flt = OfflineFilter::new(expr, 1, 0).unwrap();
            assert!(flt.matches(n, n, 1_700_000_000_000_000_001, &f), "{expr}");
        }
        let no = [
            "tcp",
            "host 10.0.0.3",
            "dst port 1000",
            "ip6",
            "vlan",
            "greater 100",
        ];
        for expr in no {
            let flt = OfflineFilter::new(expr, 1, 96).unwrap();
            assert!(!flt.matches(n, n, 0, &f), "{expr}");
        }
        // `len` is the wire length; a load past caplen rejects.
        let flt = OfflineFilter::new("greater 100", 1, 96).unwrap();
        assert!(flt.matches(n, 1500, -1, &f));
        let flt = OfflineFilter::new("udp[8] = 0xab", 1, 96).unwrap();
        assert!(flt.matches(n, n, 0, &f));
        assert!(!flt.matches(42, n, 0, &f));
        // A caplen beyond the slice is cut to it, never read past.
        assert!(!flt.matches(1000, n, 0, &f[..42]));
        let e = OfflineFilter::new("udp prot 53", 1, 0).unwrap_err();
        assert!(
            e.starts_with("filter `udp prot 53` does not compile: "),
            "{e}"
        );
        assert!(e.contains("syntax error"), "{e}");
        let e = OfflineFilter::new("vlan", 101, 0).unwrap_err();
        assert!(e.starts_with("filter `vlan` does not compile: "), "{e}");
        assert!(e.ends_with("(link type 101)"), "{e}");
        // Raw IP (101): the same filter, compiled for that link type.
        let mut set = OfflineFilters::new("a test", "udp and host 10.0.0.1", 65535).unwrap();
        assert!(set.matches(1, n, n, 0, &f).unwrap());
        assert!(set.matches(101, n - 14, n - 14, 0, &f[14..]).unwrap());
        assert!(!set.matches(101, n, n, 0, &f).unwrap());
        assert_eq!(set.get(101).unwrap().linktype(), 101);
        let mut vlan = OfflineFilters::new("a test", "vlan", 0).unwrap();
        assert!(vlan.get(101).is_err());
        assert!(!vlan.matches(1, n, n, 0, &f).unwrap());
        assert_eq!(vlan.expr(), "vlan");
    }

    #[test]
    fn compiles_like_tcpdump_and_names_what_does_not() {
        if !have_libpcap() {
            eprintln!("SKIP compiles_like_tcpdump: libpcap not installed");
            return;
        }
        let c = compile("udp dst port 7777", 1, 262_144).unwrap();
        assert_eq!(c.listing[0], "(000) ldh      [12]");
        assert!(c.listing.last().unwrap().contains("ret      #0"));
        assert!(c.listing.iter().any(|l| l.contains("ret      #262144")));
        assert_eq!(c.insns.len(), c.listing.len());
        let e = compile("tcp prot 443", 1, 262_144).unwrap_err().to_string();
        assert!(
            e.starts_with("filter `tcp prot 443` does not compile: "),
            "{e}"
        );
        assert!(e.contains("syntax error"), "{e}");
        // tun interfaces: LINKTYPE_RAW (101) is DLT_RAW (12) to libpcap.
        let c = compile("ip", 101, 262_144).unwrap();
        assert_eq!(c.listing[0], "(000) ldb      [0]");
    }
}
