//! zcrx against the real kernel of this machine, as far as a machine without a capable NIC
//! allows: registration errors (EOPNOTSUPP naming the driver, EPERM without CAP_NET_ADMIN,
//! the kernel's own ENODEV and EINVAL), the real ring driving the backend until RECV_ZC is
//! refused, ntuple steering refused in words, the queue's NAPI id from netdev netlink and the
//! copy-fallback warning, and `doctor`'s verdict. Tests that need root skip with a reason.

mod common;

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::Duration;
use zcap::area::Area;
use zcap::rx::zcrx::emu::{EmuConfig, Emulator};
use zcap::rx::zcrx::{self, Options, Sources, ZcrxError, ZcrxIfq};
use zcap::rx::{Event, RxStats};

fn area() -> Arc<Area> {
    Area::new(1 << 20, false).unwrap()
}

/// eth0 driven by virtio_net, as on the machines this project is developed on.
fn virtio_eth0() -> bool {
    match zcrx::driver_of("eth0") {
        Some(d) if d == "virtio_net" => true,
        other => {
            eprintln!("SKIP: eth0 is not a virtio_net NIC here (driver {other:?})");
            false
        }
    }
}

fn register_err(iface: &str, queue: u32, rq: u32) -> ZcrxError {
    match zcrx::register(iface, queue, &area(), rq) {
        Ok(_) => panic!("registration on {iface} queue {queue} unexpectedly succeeded"),
        Err(e) => e,
    }
}

#[test]
fn zcrx_on_virtio_eth0_is_eopnotsupp_naming_the_driver() {
    if !common::need_root() || !virtio_eth0() {
        return;
    }
    let e = register_err("eth0", 0, 4096);
    assert_eq!(e.errno(), libc::EOPNOTSUPP, "{e}");
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "one line: {msg}");
    for part in [
        "eth0 queue 0",
        "EOPNOTSUPP",
        "virtio_net",
        "queue-management",
        "--rx ring",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
}

#[test]
fn zcrx_on_loopback_is_eopnotsupp_for_a_virtual_device() {
    if !common::need_root() {
        return;
    }
    let e = register_err("lo", 0, 64);
    assert_eq!(e.errno(), libc::EOPNOTSUPP, "{e}");
    assert!(e.to_string().contains("virtual device"), "{e}");
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;
const CAP_NET_ADMIN: u32 = 12;

fn capget() -> [CapData; 2] {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: capget fills two CapData for a v3 header; both are live locals.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
    d
}

/// Sets this thread's capabilities (capabilities are per thread in Linux, so the other
/// tests running in parallel keep theirs).
fn capset(d: &[CapData; 2]) {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    // SAFETY: capset reads the header and two CapData, all live.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
}

#[test]
fn zcrx_without_cap_net_admin_is_eperm_and_says_how_to_grant_it() {
    if !common::need_root() {
        return;
    }
    let saved = capget();
    let mut dropped = saved;
    dropped[0].effective &= !(1 << CAP_NET_ADMIN);
    capset(&dropped);
    let r = zcrx::register("eth0", 0, &area(), 64);
    capset(&saved);
    let e = match r {
        Ok(_) => panic!("registered without CAP_NET_ADMIN"),
        Err(e) => e,
    };
    // The kernel checks the capability before anything else, whatever the NIC.
    assert_eq!(e.errno(), libc::EPERM, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("CAP_NET_ADMIN") && msg.contains("setcap"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
}

#[test]
fn zcrx_unknown_interface_is_enodev() {
    // Our own lookup: no interface by that name.
    let e = register_err("nosuch-if0", 0, 64);
    assert_eq!(e.errno(), libc::ENODEV);
    assert!(e.to_string().contains("nosuch-if0"), "{e}");
    if !common::need_root() {
        return;
    }
    // The kernel's: an index nothing has.
    let e = zcrx::uring::register_index("ghost", 0x7fff_fff0, 0, &area(), 64)
        .err()
        .expect("registered on a missing ifindex");
    assert_eq!(e.errno(), libc::ENODEV, "{e}");
}

#[test]
fn zcrx_zero_refill_entries_is_einval_from_the_kernel() {
    if !common::need_root() {
        return;
    }
    let e = register_err("eth0", 0, 0);
    assert_eq!(e.errno(), libc::EINVAL, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("tcp-data-split") && msg.contains("1..=32768"),
        "{msg}"
    );
}

#[test]
fn real_ring_drives_the_backend_until_recv_zc_is_refused() {
    // No queue is registered on this ring, so the kernel ends RECV_ZC with -EINVAL: this runs
    // the real submission, multishot poll, CQE32 and error paths of the backend.
    let area = area();
    let mut ifq = ZcrxIfq::unregistered(&area, 64).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    let (tx, rx) = sync_channel(16);
    let tx = zcap::rx::Events::from(tx);
    let stop = Arc::new(AtomicBool::new(false));
    let cstop = Arc::clone(&stop);
    let consumer = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while let Ok(ev) = rx.recv() {
            if let Event::End { error, .. } = &ev {
                seen.push(error.clone());
                cstop.store(true, Ordering::Relaxed);
            }
        }
        seen
    });
    let sources = Sources {
        listener: None,
        connected: vec![server],
        ..Sources::default()
    };
    let opts = Options {
        label: "unregistered ring".into(),
        drain_timeout: Duration::from_secs(5),
        ..Options::default()
    };
    let report = zcrx::run(
        &mut ifq,
        &area,
        sources,
        &tx,
        &stop,
        &RxStats::default(),
        &opts,
    )
    .expect("the real ring ran");
    drop(tx);
    let ends = consumer.join().unwrap();
    drop(client);
    assert_eq!(ends.len(), 1);
    let err = ends[0]
        .clone()
        .expect("the stream ends with the kernel's error");
    assert!(err.contains("EINVAL"), "{err}");
    assert_eq!(report.completions, 1, "{report:?}");
}

#[test]
fn steering_on_virtio_is_refused_in_words() {
    if !common::need_root() || !virtio_eth0() {
        return;
    }
    let e = zcap::steer::install("eth0", zcap::steer::Flow::Tcp6, 57012, 0)
        .expect_err("virtio_net accepted an ntuple rule");
    let msg = e.to_string();
    assert!(
        msg.starts_with("eth0 (virtio_net) cannot steer flows: no ntuple filters"),
        "{msg}"
    );
}

#[test]
fn loopback_streams_are_flagged_as_copy_fallback_against_the_queue_napi_id() {
    if !common::need_root() || !virtio_eth0() {
        return;
    }
    let napi = zcap::steer::queue_napi_id("eth0", 0)
        .expect("netdev netlink QUEUE_GET")
        .expect("virtio_net registers its rx queue with a NAPI instance");
    assert!(napi > 0);
    // Loopback data never passes through eth0's queue: the backend must say so, once per
    // stream, and count it.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let area = Area::new(1 << 20, false).unwrap();
    let mut emu = Emulator::new(&area, EmuConfig::default()).unwrap();
    let (tx, rx) = sync_channel(1024);
    let tx = zcap::rx::Events::from(tx);
    let stop = Arc::new(AtomicBool::new(false));
    let cstop = Arc::clone(&stop);
    let consumer = std::thread::spawn(move || {
        let mut ends = 0;
        while let Ok(ev) = rx.recv() {
            if let Event::End { .. } = ev {
                ends += 1;
                if ends == 2 {
                    cstop.store(true, Ordering::Relaxed);
                }
            }
        }
    });
    let senders: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                use std::io::Write;
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(&[1u8; 100_000]).unwrap();
            })
        })
        .collect();
    let opts = Options {
        queue_napi_id: Some(napi),
        label: "eth0 queue 0".into(),
        ..Options::default()
    };
    let sources = Sources {
        listener: Some(l),
        ..Sources::default()
    };
    let report = zcrx::run(
        &mut emu,
        &area,
        sources,
        &tx,
        &stop,
        &RxStats::default(),
        &opts,
    )
    .unwrap();
    drop(tx);
    consumer.join().unwrap();
    for s in senders {
        s.join().unwrap();
    }
    assert_eq!(report.copy_fallback_streams, 2, "{report:?}");
    assert!(emu.shutdown().clean());
    let w = zcap::steer::fallback_warning("eth0 queue 0", napi, 0);
    assert!(w.contains("copy fallback") && w.contains("--steer"), "{w}");
}

/// doctor's real registration (which restarts the queue and leaves an asynchronous
/// teardown behind) is opt-in.
#[test]
fn doctor_registers_the_queue_only_with_probe() {
    let r = zcap::doctor::examine(Some("lo"), Some(0), false);
    if let Some(reg) = r.checks.iter().find(|c| c.name == "registration") {
        assert_eq!(reg.state, "unknown");
        assert!(reg.detail.contains("--probe"), "{}", reg.detail);
    }
    let out = common::zcap()
        .args(["doctor", "--iface", "lo", "--queue", "0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("registration  not tried: `zcap doctor --probe`"),
        "no registration was tried:\n{text}"
    );
}

#[test]
fn doctor_says_virtio_eth0_cannot_do_zero_copy_and_why() {
    if !common::need_root() || !virtio_eth0() {
        return;
    }
    let r = zcap::doctor::examine(Some("eth0"), Some(0), true);
    assert!(!r.zero_copy);
    assert!(
        r.verdict
            .starts_with("no zero-copy: driver virtio_net lacks"),
        "{}",
        r.verdict
    );
    assert_eq!(r.driver.as_deref(), Some("virtio_net"));
    let state = |name: &str| r.checks.iter().find(|c| c.name == name).map(|c| c.state);
    assert_eq!(state("kernel"), Some("ok"));
    assert_eq!(state("io_uring"), Some("ok"));
    assert_eq!(state("recv_zc"), Some("ok"));
    assert_eq!(state("cap_net_admin"), Some("ok"));
    assert_eq!(state("driver"), Some("missing"));
    assert_eq!(state("ntuple"), Some("missing"));
    // virtio_net does not report header split: the honest answer is "unknown".
    assert_eq!(state("header_split"), Some("unknown"));
    assert_eq!(state("napi"), Some("ok"));
    let reg = r.checks.iter().find(|c| c.name == "registration").unwrap();
    assert_eq!(reg.state, "missing");
    assert!(reg.detail.contains("EOPNOTSUPP"), "{}", reg.detail);
    // No ntuple filters: suggesting an `ethtool -N` rule would be wrong here.
    assert!(
        r.fixes.iter().all(|f| !f.contains("ethtool -N")),
        "{:?}",
        r.fixes
    );
}
