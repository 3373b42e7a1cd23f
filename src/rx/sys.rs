//! The few raw syscalls the network backends need that std does not wrap: epoll, and
//! adopting a socket descriptor the kernel returned through an io_uring completion.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An epoll instance (level-triggered use only).
pub struct Epoll(OwnedFd);

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain epoll_create1(2); the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: `ev` is a valid epoll_event on the stack for the duration of the call.
        let rc = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn add(&self, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, data)
    }

    pub fn modify(&self, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, data)
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits up to `timeout_ms` and returns how many entries of `out` were filled.
    pub fn wait(&self, out: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let max = out.len().min(i32::MAX as usize) as i32;
        // SAFETY: the kernel writes at most `max` entries into `out`, which we borrow mutably.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), out.as_mut_ptr(), max, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }
}

/// Takes ownership of the socket an io_uring accept completion returned.
///
/// # Safety
/// `fd` must be a descriptor the kernel just created for us (an accept CQE's result) that
/// nothing else owns or closes.
pub unsafe fn adopt_socket(fd: RawFd) -> TcpStream {
    // SAFETY: forwarded to the caller's contract.
    unsafe { TcpStream::from_raw_fd(fd) }
}

/// Raises the soft limit on open descriptors to the hard limit and returns the new soft
/// limit: every connection costs a descriptor, and so does its open segment file.
pub fn raise_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own; failure leaves the limit unchanged.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// Sets the accept backlog of a listening socket (std uses 128; senders that wait while
/// the area is nearly full wait there). The kernel caps it at net.core.somaxconn.
pub fn set_backlog(fd: RawFd, backlog: i32) -> io::Result<()> {
    // SAFETY: listen(2) on a descriptor we own; calling it again only changes the backlog.
    if unsafe { libc::listen(fd, backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What a connection that cannot be read now (no free buffer) says without being read:
/// `Some(None)` the sender closed and nothing is left to read, `Some(Some(e))` the
/// connection failed, `None` it is open or still has bytes waiting.
pub fn peer_gone(fd: RawFd) -> Option<Option<io::Error>> {
    let mut byte = 0u8;
    // SAFETY: recv with MSG_PEEK writes at most one byte into a local; it consumes nothing.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Some(None),
        n if n > 0 => None,
        _ => {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => None,
                _ => Some(Some(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[test]
    fn a_close_is_seen_without_reading_and_waiting_bytes_keep_it_open() {
        let (mut c, s) = pair();
        assert!(peer_gone(s.as_raw_fd()).is_none(), "open and quiet");
        c.write_all(b"x").unwrap();
        drop(c);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            peer_gone(s.as_raw_fd()).is_none(),
            "closed, but a byte is still to be read"
        );
        let (c, s) = pair();
        drop(c);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            matches!(peer_gone(s.as_raw_fd()), Some(None)),
            "closed, nothing left"
        );
    }

    #[test]
    fn a_reset_is_an_error() {
        let (c, s) = pair();
        // SO_LINGER with a zero timeout makes close(2) send a reset.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt reads the local struct for the duration of the call.
        let rc = unsafe {
            libc::setsockopt(
                c.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        drop(c);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(matches!(peer_gone(s.as_raw_fd()), Some(Some(_))));
    }
}
