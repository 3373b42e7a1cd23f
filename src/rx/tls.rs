//! PCAP-over-IP over TLS (`record --listen … --tls-cert CERT --tls-key KEY`): the listener
//! accepts as the other network backends do (allowlist and connection limits first, before
//! any byte is read), completes the TLS handshake, and only then opens a stream. Each
//! connection runs on a thread of its own with its own area, filled through rustls: TLS
//! necessarily decrypts into memory, so this path copies once (the record's plaintext into
//! the area buffer) where `ring` and `zcrx` copy nothing in userspace. A plaintext sender, a
//! failed handshake or a peer that stalls in it gets one log line and no stream; the other
//! connections go on.

use super::conn::stream_name;
use super::limits::{Admission, Limits};
use super::{Events, RxStats, Stop};
use crate::area::Area;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use std::io;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// How long a peer may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Read timeout of an established connection: how often its thread looks at the stop flag.
const POLL: Duration = Duration::from_millis(200);

fn bad(p: &Path, e: &dyn std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", p.display()))
}

/// Every certificate of a PEM file (a chain, or a bundle of CAs).
fn certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(path, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(path, &e))?;
    if certs.is_empty() {
        return Err(bad(path, &"no certificate in it (PEM expected)"));
    }
    Ok(certs)
}

/// A root store from a PEM bundle.
pub fn roots(path: &Path) -> io::Result<Arc<rustls::RootCertStore>> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs(path)? {
        store.add(c).map_err(|e| bad(path, &e))?;
    }
    Ok(Arc::new(store))
}

/// The client side for `--connect` and senders: trust the CAs of `ca` (PEM).
pub fn client_config(ca: &Path) -> io::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| io::Error::other(e.to_string()))?
            .with_root_certificates(roots(ca)?)
            .with_no_client_auth(),
    ))
}

/// The server side from PEM files: a certificate chain and its private key; with
/// `client_ca`, every sender must present a certificate that CA issued (mutual TLS).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> io::Result<Arc<ServerConfig>> {
    let chain = certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider)
                .build()
                .map_err(|e| bad(ca, &e))?,
        ),
    };
    builder
        .with_single_cert(chain, key_der)
        .map(|mut c| {
            // Senders only write: a session ticket they never read would sit in their socket
            // and turn their close into a reset.
            c.send_tls13_tickets = 0;
            Arc::new(c)
        })
        .map_err(|e| bad(key, &format!("does not fit the certificate: {e}")))
}

/// What a TLS source needs besides its socket: the server side (unused by [`dial`]), the
/// per-connection area, the limits and where events go.
pub struct Serve<'a> {
    pub tls: Option<Arc<ServerConfig>>,
    /// Each connection's own area, and its buffers.
    pub conn_area: usize,
    pub buf_size: usize,
    pub limits: Limits,
    pub max_streams: Option<u64>,
    pub events: Events,
    pub stop: &'a Stop,
    pub stats: &'a RxStats,
}

/// Accepts TLS senders on `l` until `stop` (or `max_streams` streams have ended).
pub fn serve(l: TcpListener, s: Serve<'_>) -> io::Result<()> {
    l.set_nonblocking(true)?;
    let mut admission = Admission::new(s.limits.clone());
    let (done_tx, done_rx) = mpsc::channel::<(IpAddr, bool)>();
    let (mut next_id, mut ended) = (1u64, 0u64);
    std::thread::scope(|scope| {
        loop {
            while let Ok((peer, streamed)) = done_rx.try_recv() {
                admission.left(peer);
                ended += u64::from(streamed);
            }
            if s.stop.load(Ordering::Relaxed) || s.max_streams.is_some_and(|m| ended >= m) {
                break;
            }
            let sock = match l.accept() {
                Ok((sock, _)) => sock,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(e) => {
                    admission.accept_failed(&e, s.stats);
                    continue;
                }
            };
            let Ok(peer) = admission.admit_socket(&sock, s.stats) else {
                continue; // closed as it drops: refused, logged and counted
            };
            let id = next_id;
            next_id += 1;
            let tls = Arc::clone(s.tls.as_ref().expect("a server config to serve with"));
            let (done, s) = (done_tx.clone(), &s);
            scope.spawn(move || {
                let streamed = connection(sock, tls, id, s);
                let _ = done.send((peer, streamed));
            });
        }
    });
    Ok(())
}

/// One connection: handshake, then the stream. Returns whether a stream was opened.
fn connection(sock: TcpStream, tls: Arc<ServerConfig>, id: u64, s: &Serve<'_>) -> bool {
    let name = stream_name(&sock);
    let peer = sock
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let fail = |why: String| {
        eprintln!("zcap: TLS connection from {peer}: {why}; nothing recorded from it");
        false
    };
    if let Err(e) = sock.set_nonblocking(false) {
        return fail(e.to_string());
    }
    let mut sock = sock;
    let mut conn = match ServerConnection::new(tls) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let _ = sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut sock) {
            let why = match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    format!("no TLS handshake within {} s", HANDSHAKE_TIMEOUT.as_secs())
                }
                io::ErrorKind::UnexpectedEof => "closed during the TLS handshake".to_string(),
                _ => format!("TLS handshake failed: {e} (a plaintext sender on a TLS port?)"),
            };
            return fail(why);
        }
    }
    let _ = sock.set_read_timeout(Some(POLL));
    // A sensor known by its certificate: its subject names the stream (and so the manifest).
    let name = match conn.peer_certificates().and_then(|c| c.first()) {
        Some(der) => match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => {
                let subject = cert.subject().to_string();
                eprintln!("zcap: TLS connection from {peer}: client certificate {subject}");
                format!("{}-{name}", crate::archive::sanitize(&subject))
            }
            Err(e) => return fail(format!("its certificate does not parse: {e}")),
        },
        None => name,
    };
    let area = match Area::new(s.conn_area, false) {
        Ok(a) => Arc::new(a),
        Err(e) => return fail(format!("no memory for its area: {e}")),
    };
    let stream = StreamOwned::new(conn, sock);
    let r = super::file::run_source(
        Eof(stream),
        name,
        id,
        &area,
        s.buf_size,
        &s.events,
        s.stats,
        s.stop,
        true,
    );
    if let Err(e) = r {
        eprintln!("zcap: TLS connection from {peer}: {e}");
    }
    true
}

/// A peer that closes its TCP connection without a TLS close_notify ends its stream there
/// (as socat and most PCAP-over-IP senders do): the bytes before are complete records or
/// the writer says what was not. For either side's stream.
pub struct Eof<S>(pub S);

impl<S: io::Read> io::Read for Eof<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            r => r,
        }
    }
}

/// The name a server's certificate must carry, from `HOST:PORT` (`[v6]:PORT` too).
pub fn server_name(target: &str) -> io::Result<rustls::pki_types::ServerName<'static>> {
    let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{target}: {host} is not a name TLS can check: {e}"),
        )
    })
}

/// Ends a TLS stream we wrote: close_notify, the TCP write side, then reads what the peer
/// still sends (its own close) until it closes — a socket closed with unread bytes resets
/// the connection, and the reset can discard data the peer has not read yet.
pub fn close<C, D>(stream: &mut StreamOwned<C, TcpStream>) -> io::Result<()>
where
    C: std::ops::DerefMut + std::ops::Deref<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    use std::io::{Read, Write};
    stream.conn.send_close_notify();
    stream.flush()?;
    let _ = stream.sock.shutdown(std::net::Shutdown::Write);
    let _ = stream.sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}

/// `--connect HOST:PORT --tls-ca CA`: one TLS connection at a time to a PCAP-over-IP server,
/// each a stream, reconnecting with the same back-off as plain `--connect`; the server's
/// certificate must be issued by CA for HOST. Ends at `stop` or after `max_streams` streams.
pub fn dial(target: &str, tls: Arc<rustls::ClientConfig>, s: Serve<'_>) -> io::Result<()> {
    let server = server_name(target)?;
    let mut dialer = super::conn::Dialer::new(target);
    let (mut id, mut ended) = (1u64, 0u64);
    while !s.stop.load(Ordering::Relaxed) && s.max_streams.is_none_or(|m| ended < m) {
        let Some(mut sock) = dialer.poll() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let name = stream_name(&sock);
        let mut conn = rustls::ClientConnection::new(Arc::clone(&tls), server.clone())
            .map_err(|e| io::Error::other(e.to_string()))?;
        let _ = sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
        let mut failed = None;
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut sock) {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            eprintln!("zcap: TLS to {target}: handshake failed: {e}; nothing recorded");
            dialer.ended(0);
            continue;
        }
        let _ = sock.set_read_timeout(Some(POLL));
        let area = Arc::new(Area::new(s.conn_area, false)?);
        let stream = StreamOwned::new(conn, sock);
        let n = super::file::run_source(
            Eof(stream),
            name,
            id,
            &area,
            s.buf_size,
            &s.events,
            s.stats,
            s.stop,
            true,
        )?;
        id += 1;
        ended += 1;
        dialer.ended(n);
    }
    Ok(())
}
