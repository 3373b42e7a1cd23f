//! Where an archive is: a directory, or an `s3://BUCKET/PREFIX` URL ([`crate::remote`]).
//! Readers (`ls`, `cat`, `verify`, `replay`) take a [`Location`] wherever they take an
//! archive and read it the same way: the manifest, then segments by their manifest lines.
//! A remote segment is read by range GETs of exactly what the reader needs (its trailer,
//! its header frame, the frames it reads).

use super::catalog::{Catalog, DiskSegment, View};
use super::manifest::{self, SegmentEntry};
use super::segment::Segment;
use crate::remote::{Client, S3Url, Settings};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum Location {
    Dir(PathBuf),
    Remote(Arc<Client>),
}

impl Location {
    /// A directory, or an archive on object storage when `s` starts with `s3://`.
    pub fn parse(s: &str, settings: &Settings) -> Result<Location, String> {
        if S3Url::is_remote(s) {
            let url = S3Url::parse(s)?;
            Ok(Location::Remote(Arc::new(Client::new(&url, settings)?)))
        } else {
            Ok(Location::Dir(PathBuf::from(s)))
        }
    }

    /// The archive as a user names it.
    pub fn show(&self) -> String {
        match self {
            Location::Dir(d) => d.display().to_string(),
            Location::Remote(c) => c.url.to_string(),
        }
    }

    /// A path that names the archive in messages ([`Catalog::dir`]).
    pub fn label(&self) -> PathBuf {
        match self {
            Location::Dir(d) => d.clone(),
            Location::Remote(c) => PathBuf::from(c.url.to_string()),
        }
    }

    pub fn dir(&self) -> Option<&Path> {
        match self {
            Location::Dir(d) => Some(d),
            Location::Remote(_) => None,
        }
    }

    pub fn client(&self) -> Option<&Arc<Client>> {
        match self {
            Location::Dir(_) => None,
            Location::Remote(c) => Some(c),
        }
    }

    /// The archive's manifest, read leniently ([`Catalog`]). Fails when there is none.
    pub fn catalog(&self) -> anyhow::Result<Catalog> {
        match self {
            Location::Dir(d) => Ok(Catalog::load(d)?),
            Location::Remote(c) => {
                let text = c.get_text(manifest::FILE)?;
                if text.is_none() {
                    // Missing bucket or missing archive: the bucket says which.
                    c.probe()?;
                }
                let text = text.ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: no {} there: not a zcap archive, or nothing has been uploaded to it yet",
                        c.url,
                        manifest::FILE
                    )
                })?;
                Ok(Catalog::parse_view(&self.label(), &text, View::Remote))
            }
        }
    }

    /// Opens the segment a manifest line names (its path passes the naming rule first).
    pub fn open(&self, e: &SegmentEntry) -> anyhow::Result<Segment> {
        match self {
            Location::Dir(d) => Ok(Segment::open(&super::checked_path(d, &e.path)?)?),
            Location::Remote(c) => {
                super::path::check_name(&e.path, false)?;
                Ok(Segment::open_remote(c, &e.path, e.bytes, e.frames)?)
            }
        }
    }

    /// Finalized segment objects in a remote archive, as [`super::catalog::scan_disk`]
    /// finds segment files in a directory (a remote archive holds no `.partial`).
    pub fn remote_segments(c: &Client) -> anyhow::Result<Vec<(DiskSegment, u64)>> {
        let mut out = Vec::new();
        for o in c.list()? {
            let Some((stream, name)) = o.rel.split_once('/') else {
                continue;
            };
            let Some((seq, pcapng, false)) = super::catalog::parse_segment_name(name) else {
                continue;
            };
            if super::path::check_name(&o.rel, false).is_err() {
                continue;
            }
            out.push((
                DiskSegment {
                    rel: o.rel.clone(),
                    stream: stream.to_string(),
                    seq,
                    pcapng,
                    partial: false,
                },
                o.size,
            ));
        }
        out.sort_by(|a, b| (&a.0.stream, a.0.seq).cmp(&(&b.0.stream, b.0.seq)));
        Ok(out)
    }
}
