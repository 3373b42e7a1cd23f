//! zcrx: io_uring zero-copy receive into the area. The NIC (through the kernel's page-pool
//! memory provider) writes TCP payload straight into area pages; each RECV_ZC completion
//! names `(offset, length)` in the area; the backend lends that range to the writer as a
//! [`crate::area::Chunk`], and when the writer drops the chunk the buffer goes back to the
//! kernel through the refill ring. No byte is copied in user space.
//!
//! - `sys`: the kernel ABI (structs, constants, CQE32 decoding), layouts asserted;
//! - `rings`: the refill ring in shared memory (producer and consumer) — all the unsafe;
//! - `backend`: the kernel-independent core and [`run`], behind the [`ZcrxKernel`] seam;
//! - `uring`: the real kernel: ring setup, [`register`], errors in words;
//! - `emu`: the kernel's half emulated, for tests on machines without a capable NIC.
//!
//! docs/ZCRX.md says how to run it on real hardware.

pub mod backend;
pub mod emu;
pub mod rings;
pub mod sys;
pub mod uring;

pub use backend::{run, Options, Sources, ZcrxKernel, ZcrxReport};
pub use uring::{driver_of, register, ZcrxError, ZcrxIfq};
