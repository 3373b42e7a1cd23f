//! Archives on S3-compatible object storage (docs/ARCHIVE.md, "Object storage"): an
//! `s3://BUCKET/PREFIX` URL names a remote archive laid out like a directory one
//! (`PREFIX/manifest.jsonl`, `PREFIX/STREAM/000001.pcap.zst`). [`Client`] speaks S3 to it with
//! blocking HTTP requests signed by rusty-s3 (SigV4, presigned URLs), so no async runtime runs
//! anywhere: [`upload`] gives the uploader a thread of its own and readers block on their
//! range GETs. Settings come from the environment the way every S3 tool reads them
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`) and `--s3-endpoint`; a custom endpoint (MinIO, Garage, Ceph) is
//! addressed path-style. Errors say in words what went wrong: wrong credentials, a missing
//! bucket, an unreachable endpoint, an object deleted behind zcap's back, a checksum mismatch.

pub mod upload;

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::fmt;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a presigned request stays valid: it is signed just before it is sent.
const SIGNED_FOR: Duration = Duration::from_secs(3600);
/// Largest answer read into memory for a listing, an error or a manifest.
const MAX_BODY: u64 = 1 << 30;

/// `s3://BUCKET[/PREFIX]`, parsed. The prefix has no leading or trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub prefix: String,
}

impl S3Url {
    /// Whether `s` names a remote archive rather than a directory.
    pub fn is_remote(s: &str) -> bool {
        s.starts_with("s3://")
    }

    pub fn parse(s: &str) -> std::result::Result<S3Url, String> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| format!("`{s}`: an object-store URL starts with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's bucket naming rule: 3–63 of [a-z0-9.-], starting and ending with a letter or digit.
        let ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && bucket.as_bytes()[0].is_ascii_alphanumeric()
            && bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric();
        if !ok {
            return Err(format!(
                "`{s}`: `{bucket}` is not a bucket name (3 to 63 of a-z, 0-9, `.` and `-`)"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
            && !prefix.is_empty()
        {
            return Err(format!(
                "`{s}`: the prefix has an empty, `.` or `..` component"
            ));
        }
        Ok(S3Url {
            bucket: bucket.into(),
            prefix: prefix.into(),
        })
    }

    /// The object key of `rel` (a path inside the archive).
    pub fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Where and as whom to reach the store.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `--s3-endpoint`, else `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`, else AWS itself.
    pub endpoint: Option<String>,
}

/// Why a request failed, as far as a caller needs to know to decide what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The endpoint did not answer (refused, unresolvable, timed out, connection cut).
    Unreachable,
    /// The store refused the credentials or the request's signature.
    Credentials,
    /// The bucket does not exist.
    NoBucket,
    /// The object does not exist.
    NotFound,
    /// A checksum did not match (the store's `BadDigest`, or ours after an upload).
    Checksum,
    /// The store answered with an error of its own (5xx, throttling): worth retrying.
    Server,
    /// Anything else the store refused.
    Refused,
}

/// A failed request, in words: what was asked, of which object, and why it failed.
#[derive(Debug, Clone)]
pub struct RemoteError {
    pub kind: Kind,
    pub msg: String,
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for RemoteError {}

impl RemoteError {
    /// Worth trying again later: the store may come back.
    pub fn transient(&self) -> bool {
        matches!(self.kind, Kind::Unreachable | Kind::Server | Kind::Checksum)
    }
}

pub type Result<T> = std::result::Result<T, RemoteError>;

/// An object as a listing or a HEAD shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Path inside the archive (the key without the prefix).
    pub rel: String,
    pub size: u64,
    /// The ETag without quotes.
    pub etag: String,
}

/// Counters of what readers fetched (`cat --stats`, the range-read tests).
#[derive(Debug, Default)]
pub struct Fetched {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
}

/// A remote archive and the means to reach it.
pub struct Client {
    pub url: S3Url,
    endpoint: String,
    agent: ureq::Agent,
    bucket: Bucket,
    creds: Option<Credentials>,
    pub fetched: Fetched,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Client({} at {})", self.url, self.endpoint)
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `<Code>` and `<Message>` of an S3 error document.
fn error_fields(body: &str) -> (String, String) {
    let field = |tag: &str| {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        body.find(&open)
            .and_then(|a| {
                let rest = &body[a + open.len()..];
                rest.find(&close).map(|b| rest[..b].to_string())
            })
            .unwrap_or_default()
    };
    (field("Code"), field("Message"))
}

impl Client {
    /// A client for the archive at `url`. Fails only on settings that cannot work (a bad
    /// endpoint URL, a secret without a key); the store itself is first asked by the caller.
    pub fn new(url: &S3Url, settings: &Settings) -> std::result::Result<Client, String> {
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let custom = settings
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        let (endpoint, style) = match custom {
            // MinIO, Garage, Ceph RGW and friends are addressed path-style.
            Some(e) => (e, UrlStyle::Path),
            None => (
                format!("https://s3.{region}.amazonaws.com"),
                UrlStyle::VirtualHost,
            ),
        };
        let parsed: url::Url = endpoint
            .parse()
            .map_err(|e| format!("S3 endpoint `{endpoint}`: {e}"))?;
        let bucket = Bucket::new(parsed, style, url.bucket.clone(), region)
            .map_err(|e| format!("S3 endpoint `{endpoint}`: {e}"))?;
        let creds = match (
            env("AWS_ACCESS_KEY_ID"),
            env("AWS_SECRET_ACCESS_KEY"),
            env("AWS_SESSION_TOKEN"),
        ) {
            (Some(k), Some(s), Some(t)) => Some(Credentials::new_with_token(k, s, t)),
            (Some(k), Some(s), None) => Some(Credentials::new(k, s)),
            (None, None, _) => None,
            _ => {
                return Err(
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together".into(),
                )
            }
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(Some(Duration::from_secs(300)))
            .timeout_send_body(Some(Duration::from_secs(300)))
            .build()
            .into();
        Ok(Client {
            url: url.clone(),
            endpoint,
            agent,
            bucket,
            creds,
            fetched: Fetched::default(),
        })
    }

    /// The URL of `rel` for messages: `s3://bucket/prefix/rel`.
    pub fn show(&self, rel: &str) -> String {
        format!("s3://{}/{}", self.url.bucket, self.url.key(rel))
    }

    fn unreachable(&self, what: &str, e: &ureq::Error) -> RemoteError {
        RemoteError {
            kind: Kind::Unreachable,
            msg: format!(
                "{what}: cannot reach the object store at {}: {e}",
                self.endpoint
            ),
        }
    }

    /// Turns a non-2xx answer into an error in words.
    fn refused(&self, what: &str, status: u16, body: &str) -> RemoteError {
        let (code, message) = error_fields(body);
        let detail = if code.is_empty() {
            format!("HTTP {status}")
        } else if message.is_empty() {
            format!("HTTP {status} {code}")
        } else {
            format!("HTTP {status} {code}: {message}")
        };
        let (kind, msg) = match (status, code.as_str()) {
            (_, "NoSuchBucket") => (
                Kind::NoBucket,
                format!(
                    "{what}: bucket `{}` does not exist at {} ({detail})",
                    self.url.bucket, self.endpoint
                ),
            ),
            (404, "NoSuchKey") | (404, "") => {
                (Kind::NotFound, format!("{what}: no such object ({detail})"))
            }
            (
                _,
                "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken",
            )
            | (401, _) => (
                Kind::Credentials,
                format!(
                    "{what}: the object store refused the credentials ({detail}); check \
                     AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN"
                ),
            ),
            (403, _) => (
                Kind::Credentials,
                format!("{what}: access denied by the object store ({detail})"),
            ),
            (_, "BadDigest" | "InvalidDigest" | "XAmzContentSHA256Mismatch") => (
                Kind::Checksum,
                format!("{what}: the object store received other bytes than were sent ({detail})"),
            ),
            (500..=599, _) | (429, _) | (_, "SlowDown") => (
                Kind::Server,
                format!("{what}: the object store failed ({detail})"),
            ),
            _ => (Kind::Refused, format!("{what}: {detail}")),
        };
        RemoteError { kind, msg }
    }

    /// Sends a signed request and returns the response when its status is 2xx (or 206).
    fn send(
        &self,
        what: &str,
        url: url::Url,
        method: &str,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(url.as_str());
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req.body(body.unwrap_or(&[])).map_err(|e| RemoteError {
            kind: Kind::Refused,
            msg: format!("{what}: {e}"),
        })?;
        let mut resp = self
            .agent
            .run(req)
            .map_err(|e| self.unreachable(what, &e))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(resp);
        }
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .unwrap_or_default();
        Err(self.refused(what, status, &text))
    }

    fn body_string(
        &self,
        what: &str,
        mut resp: ureq::http::Response<ureq::Body>,
    ) -> Result<String> {
        resp.body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| self.unreachable(what, &e))
    }

    fn etag_of(resp: &ureq::http::Response<ureq::Body>) -> String {
        resp.headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim_matches('"')
            .to_string()
    }

    /// HEAD: the object's size and ETag, `None` when it does not exist.
    pub fn head(&self, rel: &str) -> Result<Option<Object>> {
        let key = self.url.key(rel);
        let what = format!("HEAD {}", self.show(rel));
        let url = self
            .bucket
            .head_object(self.creds.as_ref(), &key)
            .sign(SIGNED_FOR);
        match self.send(&what, url, "HEAD", &[], None) {
            Ok(resp) => {
                let size = resp
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Ok(Some(Object {
                    rel: rel.into(),
                    size,
                    etag: Self::etag_of(&resp),
                }))
            }
            Err(e) if e.kind == Kind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Bytes `start..start + len` of an object, exactly: a shorter object is an error that
    /// says so.
    pub fn get_range(&self, rel: &str, start: u64, len: u64) -> Result<Vec<u8>> {
        let key = self.url.key(rel);
        let what = format!("GET {} bytes {start}..{}", self.show(rel), start + len);
        if len == 0 {
            return Ok(Vec::new());
        }
        let url = self
            .bucket
            .get_object(self.creds.as_ref(), &key)
            .sign(SIGNED_FOR);
        let range = format!("bytes={start}-{}", start + len - 1);
        let mut resp = self
            .send(&what, url, "GET", &[("range", range)], None)
            .map_err(|e| match e.kind {
                Kind::NotFound => RemoteError {
                    kind: Kind::NotFound,
                    msg: format!(
                        "{}: the object is gone (deleted behind zcap's back?)",
                        e.msg
                    ),
                },
                _ => e,
            })?;
        let partial = resp.status().as_u16() == 206;
        let mut out = Vec::with_capacity(len as usize);
        let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
        if !partial && start > 0 {
            // A store that ignores Range sends the whole object: skip to the start.
            std::io::copy(&mut (&mut reader).take(start), &mut std::io::sink())
                .map_err(|e| self.io_err(&what, e))?;
        }
        (&mut reader)
            .take(len)
            .read_to_end(&mut out)
            .map_err(|e| self.io_err(&what, e))?;
        self.fetched.requests.fetch_add(1, Ordering::Relaxed);
        self.fetched
            .bytes
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        if (out.len() as u64) < len {
            return Err(RemoteError {
                kind: Kind::Refused,
                msg: format!(
                    "{what}: the object ends after {} of those bytes: it is shorter than the manifest says (rewritten behind zcap's back?)",
                    out.len()
                ),
            });
        }
        Ok(out)
    }

    fn io_err(&self, what: &str, e: std::io::Error) -> RemoteError {
        RemoteError {
            kind: Kind::Unreachable,
            msg: format!("{what}: reading the answer from {}: {e}", self.endpoint),
        }
    }

    /// A whole object streamed into `sink` (counted as fetched); `None` when it does not exist.
    pub fn get_to(&self, rel: &str, sink: &mut dyn std::io::Write) -> Result<Option<u64>> {
        let key = self.url.key(rel);
        let what = format!("GET {}", self.show(rel));
        let url = self
            .bucket
            .get_object(self.creds.as_ref(), &key)
            .sign(SIGNED_FOR);
        let mut resp = match self.send(&what, url, "GET", &[], None) {
            Ok(r) => r,
            Err(e) if e.kind == Kind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut reader = resp.body_mut().with_config().limit(u64::MAX).reader();
        let n = std::io::copy(&mut reader, sink).map_err(|e| self.io_err(&what, e))?;
        self.fetched.requests.fetch_add(1, Ordering::Relaxed);
        self.fetched.bytes.fetch_add(n, Ordering::Relaxed);
        Ok(Some(n))
    }

    /// A whole (small) object as text; `None` when it does not exist.
    pub fn get_text(&self, rel: &str) -> Result<Option<String>> {
        let mut buf = Vec::new();
        match self.get_to(rel, &mut buf)? {
            None => Ok(None),
            Some(_) => String::from_utf8(buf).map(Some).map_err(|_| RemoteError {
                kind: Kind::Refused,
                msg: format!("{}: not UTF-8 text", self.show(rel)),
            }),
        }
    }

    /// PUT of a whole object, with its MD5 for the store to check on receipt. Returns the
    /// ETag the store gave it.
    pub fn put(&self, rel: &str, body: &[u8]) -> Result<String> {
        let key = self.url.key(rel);
        let what = format!("PUT {}", self.show(rel));
        let url = self
            .bucket
            .put_object(self.creds.as_ref(), &key)
            .sign(SIGNED_FOR);
        let md5 = md5_base64(body);
        let resp = self.send(&what, url, "PUT", &[("content-md5", md5)], Some(body))?;
        Ok(Self::etag_of(&resp))
    }

    pub fn delete(&self, rel: &str) -> Result<()> {
        let key = self.url.key(rel);
        let what = format!("DELETE {}", self.show(rel));
        let url = self
            .bucket
            .delete_object(self.creds.as_ref(), &key)
            .sign(SIGNED_FOR);
        match self.send(&what, url, "DELETE", &[], None) {
            Ok(_) => Ok(()),
            Err(e) if e.kind == Kind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every object under the archive's prefix, keys made relative to it.
    pub fn list(&self) -> Result<Vec<Object>> {
        let what = format!("LIST {}", self.url);
        let prefix = if self.url.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.url.prefix)
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = self.bucket.list_objects_v2(self.creds.as_ref());
            if !prefix.is_empty() {
                action.with_prefix(prefix.as_str());
            }
            if let Some(t) = &token {
                action.with_continuation_token(t.as_str());
            }
            let url = action.sign(SIGNED_FOR);
            let resp = self.send(&what, url, "GET", &[], None)?;
            let text = self.body_string(&what, resp)?;
            let parsed = rusty_s3::actions::ListObjectsV2::parse_response(&text).map_err(|e| {
                RemoteError {
                    kind: Kind::Refused,
                    msg: format!("{what}: an answer that is not a listing: {e}"),
                }
            })?;
            for c in parsed.contents {
                let Some(rel) = c.key.strip_prefix(&prefix) else {
                    continue;
                };
                out.push(Object {
                    rel: rel.to_string(),
                    size: c.size.unwrap_or(0),
                    etag: c.etag.unwrap_or_default().trim_matches('"').to_string(),
                });
            }
            match parsed.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Starts a multipart upload; returns its id.
    pub fn create_multipart(&self, rel: &str) -> Result<String> {
        let key = self.url.key(rel);
        let what = format!("CreateMultipartUpload {}", self.show(rel));
        let url = self
            .bucket
            .create_multipart_upload(self.creds.as_ref(), &key)
            .sign(SIGNED_FOR);
        let resp = self.send(&what, url, "POST", &[], None)?;
        let text = self.body_string(&what, resp)?;
        let parsed =
            rusty_s3::actions::CreateMultipartUpload::parse_response(&text).map_err(|e| {
                RemoteError {
                    kind: Kind::Refused,
                    msg: format!("{what}: an answer without an upload id: {e}"),
                }
            })?;
        Ok(parsed.upload_id().to_string())
    }

    /// Uploads part `n` (from 1) of a multipart upload; returns its ETag.
    pub fn upload_part(&self, rel: &str, id: &str, n: u16, body: &[u8]) -> Result<String> {
        let key = self.url.key(rel);
        let what = format!("UploadPart {} part {n}", self.show(rel));
        let url = self
            .bucket
            .upload_part(self.creds.as_ref(), &key, n, id)
            .sign(SIGNED_FOR);
        let md5 = md5_base64(body);
        let resp = self.send(&what, url, "PUT", &[("content-md5", md5)], Some(body))?;
        Ok(Self::etag_of(&resp))
    }

    /// Completes a multipart upload from its parts' ETags, in order; returns the object's ETag.
    pub fn complete_multipart(&self, rel: &str, id: &str, etags: &[String]) -> Result<String> {
        let key = self.url.key(rel);
        let what = format!("CompleteMultipartUpload {}", self.show(rel));
        let action = self.bucket.complete_multipart_upload(
            self.creds.as_ref(),
            &key,
            id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(SIGNED_FOR);
        let body = action.body();
        let resp = self.send(&what, url, "POST", &[], Some(body.as_bytes()))?;
        let text = self.body_string(&what, resp)?;
        // S3 can answer 200 with an error document when completion fails late.
        let (code, _) = error_fields(&text);
        if !code.is_empty() {
            return Err(self.refused(&what, 200, &text));
        }
        Ok(
            rusty_s3::actions::CompleteMultipartUploadResponse::parse(&text)
                .map(|r| r.etag().trim_matches('"').to_string())
                .unwrap_or_default(),
        )
    }

    /// Aborts a multipart upload (its parts are discarded; an unknown id is not an error).
    pub fn abort_multipart(&self, rel: &str, id: &str) -> Result<()> {
        let key = self.url.key(rel);
        let what = format!("AbortMultipartUpload {}", self.show(rel));
        let url = self
            .bucket
            .abort_multipart_upload(self.creds.as_ref(), &key, id)
            .sign(SIGNED_FOR);
        match self.send(&what, url, "DELETE", &[], None) {
            Ok(_) => Ok(()),
            Err(e) if e.kind == Kind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Checks that the bucket exists and the credentials work, in words when they do not.
    pub fn probe(&self) -> Result<()> {
        let what = format!("HEAD {}", self.url);
        let url = self
            .bucket
            .head_bucket(self.creds.as_ref())
            .sign(SIGNED_FOR);
        match self.send(&what, url, "HEAD", &[], None) {
            Ok(_) => Ok(()),
            // HEAD answers carry no error document: ask again with a listing, which says why.
            Err(e) if !e.transient() => self.list_one().map(|_| ()),
            Err(e) => Err(e),
        }
    }

    fn list_one(&self) -> Result<()> {
        let what = format!("LIST {}", self.url);
        let mut action = self.bucket.list_objects_v2(self.creds.as_ref());
        action.with_max_keys(1);
        let url = action.sign(SIGNED_FOR);
        self.send(&what, url, "GET", &[], None).map(|_| ())
    }
}

/// Base64 of the MD5 of `body`, for `Content-MD5`.
fn md5_base64(body: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body))
}

/// The ETag S3 gives an object uploaded whole (`md5`) or in parts (`md5(md5s)-N`), from
/// the parts' MD5 digests. What an upload's answer is checked against.
pub fn expected_etag(part_md5s: &[[u8; 16]], multipart: bool) -> String {
    use md5::Digest;
    if !multipart {
        return crate::archive::manifest::hex(&part_md5s[0]);
    }
    let mut h = md5::Md5::new();
    for p in part_md5s {
        h.update(p);
    }
    format!(
        "{}-{}",
        crate::archive::manifest::hex(&h.finalize()),
        part_md5s.len()
    )
}

/// Whether an ETag is one S3 computes from MD5s (so [`expected_etag`] can check it):
/// 32 hex digits, with `-N` for a multipart object. Encrypted objects (SSE-KMS) differ.
pub fn etag_is_md5(etag: &str) -> bool {
    let hex = etag.split('-').next().unwrap_or("");
    hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = S3Url::parse("s3://my-bucket/a/b/").unwrap();
        assert_eq!(u.bucket, "my-bucket");
        assert_eq!(u.prefix, "a/b");
        assert_eq!(u.key("manifest.jsonl"), "a/b/manifest.jsonl");
        assert_eq!(u.to_string(), "s3://my-bucket/a/b");
        let u = S3Url::parse("s3://bkt").unwrap();
        assert_eq!(u.key("s/000001.pcap.zst"), "s/000001.pcap.zst");
        assert!(S3Url::parse("s3://Bad_Bucket/x").is_err());
        assert!(S3Url::parse("s3://ab").is_err());
        assert!(S3Url::parse("s3://bkt/a/../b").is_err());
        assert!(S3Url::parse("http://bkt").is_err());
    }

    #[test]
    fn etags_follow_s3() {
        use md5::Digest;
        let a: [u8; 16] = md5::Md5::digest(b"hello").into();
        assert_eq!(
            expected_etag(&[a], false),
            "5d41402abc4b2a76b9719d911017c592"
        );
        // md5 of the concatenated part digests, then -N.
        let b: [u8; 16] = md5::Md5::digest(b"world").into();
        let mut cat = a.to_vec();
        cat.extend(b);
        let want = format!(
            "{}-2",
            crate::archive::manifest::hex(&md5::Md5::digest(&cat))
        );
        assert_eq!(expected_etag(&[a, b], true), want);
        assert!(etag_is_md5("5d41402abc4b2a76b9719d911017c592"));
        assert!(etag_is_md5(&want));
        assert!(!etag_is_md5("opaque"));
    }

    #[test]
    fn error_documents_in_words() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";
        assert_eq!(
            error_fields(body),
            (
                "NoSuchBucket".into(),
                "The specified bucket does not exist".into()
            )
        );
        let c = Client::new(
            &S3Url::parse("s3://bkt/p").unwrap(),
            &Settings {
                endpoint: Some("http://127.0.0.1:9".into()),
            },
        )
        .unwrap();
        let e = c.refused("GET s3://bkt/p/x", 404, body);
        assert_eq!(e.kind, Kind::NoBucket);
        assert!(e.msg.contains("bucket `bkt` does not exist"), "{}", e.msg);
        let e = c.refused(
            "GET x",
            403,
            "<Error><Code>InvalidAccessKeyId</Code></Error>",
        );
        assert_eq!(e.kind, Kind::Credentials);
        assert!(e.msg.contains("refused the credentials"), "{}", e.msg);
        assert!(c.refused("GET x", 503, "").transient());
    }
}
