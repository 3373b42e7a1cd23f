//! Capture filters: a tcpdump filter expression compiled to classic BPF by libpcap, the
//! reference compiler, loaded with dlopen(3) when a filter is asked for — so zcap builds and
//! runs without libpcap's development files, and without libpcap at all until a filter is
//! used. The program is copied out of libpcap once (with its `tcpdump -d` listing) and
//! attached to each capture socket with SO_ATTACH_FILTER; the kernel drops what it rejects.

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

/// struct bpf_program of <pcap/bpf.h>.
#[repr(C)]
struct BpfProgram {
    bf_len: c_uint,
    bf_insns: *mut libc::sock_filter,
}

type OpenDead = unsafe extern "C" fn(c_int, c_int) -> *mut c_void;
type Compile =
    unsafe extern "C" fn(*mut c_void, *mut BpfProgram, *const c_char, c_int, u32) -> c_int;
type FreeCode = unsafe extern "C" fn(*mut BpfProgram);
type GetErr = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type Close = unsafe extern "C" fn(*mut c_void);
type Image = unsafe extern "C" fn(*const libc::sock_filter, c_int) -> *const c_char;

struct Lib {
    handle: *mut c_void,
}

impl Lib {
    fn open() -> io::Result<Lib> {
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
                "a capture filter needs libpcap, loaded at run time, and none of {} is on this \
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
    let lib = Lib::open()?;
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
    let lib = Lib::open()?;
    // SAFETY: the signatures of <pcap/pcap.h> (libpcap 1.x, unchanged since 0.8).
    let (open_dead, compile, freecode, geterr, close, image) = unsafe {
        (
            lib.sym::<OpenDead>("pcap_open_dead")?,
            lib.sym::<Compile>("pcap_compile")?,
            lib.sym::<FreeCode>("pcap_freecode")?,
            lib.sym::<GetErr>("pcap_geterr")?,
            lib.sym::<Close>("pcap_close")?,
            lib.sym::<Image>("bpf_image")?,
        )
    };
    let text = CString::new(expr)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the filter has a NUL byte"))?;
    // SAFETY: plain call; a null result is checked.
    let p = unsafe { open_dead(linktype as c_int, snaplen.min(i32::MAX as u32) as c_int) };
    if p.is_null() {
        return Err(io::Error::other("libpcap: pcap_open_dead failed"));
    }
    let mut prog = BpfProgram {
        bf_len: 0,
        bf_insns: std::ptr::null_mut(),
    };
    // SAFETY: `p` is live, `prog` and `text` outlive the call; optimize as tcpdump does.
    let rc = unsafe { compile(p, &mut prog, text.as_ptr(), 1, NETMASK_UNKNOWN) };
    if rc != 0 {
        // SAFETY: pcap_geterr returns the handle's NUL-terminated message buffer.
        let msg = unsafe { CStr::from_ptr(geterr(p)) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: `p` came from pcap_open_dead and is not used after.
        unsafe { close(p) };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("filter `{expr}` does not compile: {msg}"),
        ));
    }
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
    // SAFETY: `prog` was filled by pcap_compile; `p` is not used after.
    unsafe {
        freecode(&mut prog);
        close(p);
    }
    if insns.is_empty() || insns.len() > u16::MAX as usize {
        return Err(io::Error::other(format!(
            "filter `{expr}` compiled to {} instructions, which the kernel does not take",
            insns.len()
        )));
    }
    Ok(Compiled { insns, listing })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have_libpcap() -> bool {
        Lib::open().is_ok()
    }

    #[test]
    fn bpf_program_layout_is_libpcaps() {
        assert_eq!(std::mem::size_of::<BpfProgram>(), 16);
        assert_eq!(std::mem::size_of::<libc::sock_filter>(), 8); // struct bpf_insn
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
    }
}
