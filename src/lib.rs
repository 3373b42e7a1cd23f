//! zcap: records packet streams into compressed, time-indexed, tamper-evident pcap archives.
//!
//! Data flows one way: a receive backend (`rx`) fills the `area` and lends [`area::Chunk`]s;
//! the `writer` frames them (`stream`), compresses and persists them into the `archive`, and
//! only then drops the chunks, which returns their buffers to the backend. Readers (`ls`,
//! `cat`, `verify`, `replay`) work from the archive alone.

pub mod archive;
pub mod area;
pub mod cli;
pub mod demo;
pub mod doctor;
pub mod flow;
pub mod metrics;
pub mod privdrop;
pub mod record;
pub mod remote;
pub mod replay;
pub mod rx;
pub mod send;
pub mod stats;
pub mod steer;
pub mod stream;
pub mod units;
pub mod writer;
