//! `record -Z USER`: once the listener is bound, rings and NIC queues are registered and the
//! archive is open, the recorder becomes USER, as tcpdump's `-Z` does: the archive directory
//! (and the stream directories in it) are handed to USER so that new segments can be created
//! and old ones deleted, supplementary groups are replaced by USER's primary group, gid and
//! uid change (real, effective and saved), every capability is dropped from the bounding set
//! and `no_new_privs` is set, so nothing the process does later can regain privileges.
//!
//! Owns the libc calls for identities and capabilities. Every call's failure is an error: a
//! half-dropped recorder does not go on.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

/// Who to become, resolved before anything is set up (so a bad name fails at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub user: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// The archive directory handed to the user.
    pub archive: PathBuf,
}

impl Target {
    /// Looks `user` up in the user database (a name, or a numeric uid).
    pub fn resolve(user: &str, archive: &Path) -> io::Result<Target> {
        let name = CString::new(user)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user contains a NUL"))?;
        let mut pw: libc::passwd = zeroed_passwd();
        let mut buf = vec![0 as libc::c_char; 16 << 10];
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: getpwnam_r writes the entry into `pw`, its strings into `buf` (whose length
        // we pass) and sets `out` to `&pw` or null; all three outlive the call.
        let r = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            )
        };
        if r == 0 && !out.is_null() {
            return Ok(Target {
                user: user.to_string(),
                uid: pw.pw_uid,
                gid: pw.pw_gid,
                archive: archive.to_path_buf(),
            });
        }
        if let Ok(uid) = user.parse::<libc::uid_t>() {
            // A bare uid, as `-Z 65534`: its group is the uid's number too.
            return Ok(Target {
                user: user.to_string(),
                uid,
                gid: uid,
                archive: archive.to_path_buf(),
            });
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("-Z {user}: no such user"),
        ))
    }
}

fn zeroed_passwd() -> libc::passwd {
    // SAFETY: `passwd` is plain old data (integers and pointers); all-zero is a valid value
    // that getpwnam_r overwrites.
    unsafe { std::mem::zeroed() }
}

fn check(r: libc::c_int, what: &str) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("-Z: {what}: {e}")))
    }
}

/// Hands the archive to the user and becomes it, for good (see the module docs).
pub fn apply(t: &Target) -> io::Result<()> {
    chown_tree(&t.archive, t.uid, t.gid)?;
    // SAFETY: each call takes plain integers (and, for setgroups, a pointer to one gid on
    // our stack for the duration of the call) and changes only this process's credentials;
    // glibc applies set*id to every thread.
    unsafe {
        check(libc::setgroups(1, &t.gid), "setgroups")?;
        check(libc::setresgid(t.gid, t.gid, t.gid), "setresgid")?;
        // While still root: empty the bounding set, so that no later execve can grant a
        // capability (the capabilities themselves go with the uid change below).
        for cap in 0..=63 {
            if libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) == 1 {
                check(
                    libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0),
                    "dropping the capability bounding set",
                )?;
            }
        }
        check(libc::setresuid(t.uid, t.uid, t.uid), "setresuid")?;
        check(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            "no_new_privs",
        )?;
    }
    // The uid change from 0 cleared the permitted and effective sets (no SECBIT_KEEP_CAPS);
    // say so if it did not.
    let caps = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for field in ["CapPrm:", "CapEff:"] {
        if let Some(v) = caps.lines().find_map(|l| l.strip_prefix(field)) {
            if !v.trim().trim_start_matches('0').is_empty() {
                return Err(io::Error::other(format!(
                    "-Z: capabilities remain after the uid change ({field} {})",
                    v.trim()
                )));
            }
        }
    }
    // Segments are created and deleted from now on: prove it works, rather than fail at the
    // first rotation (a parent directory closed to the user is the usual cause).
    let probe = t.archive.join(".zcap-privdrop-probe");
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "-Z {}: cannot write the archive {} as that user: {e} (is a parent directory closed to it?)",
                    t.user,
                    t.archive.display()
                ),
            )
        })?;
    eprintln!(
        "zcap: running as {} (uid {}, gid {}) from now on, with no capabilities",
        t.user, t.uid, t.gid
    );
    Ok(())
}

/// The archive directory, its stream directories and the files the recorder appends to
/// (manifest, lock) go to the user; segment files need not (deleting one needs the directory).
fn chown_tree(dir: &Path, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    let own = |p: &Path| {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))
            .map_err(|e| io::Error::new(e.kind(), format!("-Z: chown {}: {e}", p.display())))
    };
    own(dir)?;
    for e in std::fs::read_dir(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("-Z: {}: {e}", dir.display())))?
    {
        let e = e?;
        let ft = e.file_type()?;
        let name = e.file_name();
        if ft.is_dir() || name == crate::archive::manifest::FILE || name == ".lock" {
            own(&e.path())?;
        }
    }
    Ok(())
}
