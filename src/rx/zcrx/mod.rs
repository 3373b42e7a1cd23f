//! zcrx: io_uring zero-copy receive into the area.
//!
//! - `sys`: the kernel ABI (structs, constants, CQE32 decoding), layouts asserted;
//! - `rings`: the refill ring in shared memory (producer and consumer) — all the unsafe.

pub mod rings;
pub mod sys;
