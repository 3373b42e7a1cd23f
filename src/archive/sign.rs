//! Signed manifests: who vouched for an archive. A recorder given `--sign-key` follows every
//! manifest line it appends with a `sign` line holding the chain head (that line's hash) and an
//! Ed25519 signature over the head's 64 hex characters. The chain alone proves order, not
//! authorship — anyone who can write the directory can recompute it — but a signature over a
//! head covers that line and, through the chain, every line before it. `zcap verify --key PUB`
//! checks that every line is covered by a valid signature and names the first that is not.
//!
//! Keys are PEM files stock tools read: the private key PKCS#8 (`openssl pkey -in KEY`), the
//! public key SubjectPublicKeyInfo, so `openssl pkeyutl -verify -pubin -inkey PUB -rawin -in
//! HEAD -sigfile SIG` checks one signature without zcap (docs/ARCHIVE.md).

use super::manifest::{hex, Entry, Line};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The recorder's signing key.
#[derive(Clone)]
pub struct Signer {
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", key_id(&self.key.verifying_key()))
    }
}

/// The public key as the manifest names it: its 32 bytes in hex.
pub fn key_id(k: &VerifyingKey) -> String {
    hex(k.as_bytes())
}

fn bad_key(path: &Path, what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{}: not {what} ({e}); `zcap keygen` makes a key pair",
            path.display()
        ),
    )
}

impl Signer {
    /// Loads a PKCS#8 PEM Ed25519 private key (as `zcap keygen` or `openssl genpkey
    /// -algorithm ed25519` writes it).
    pub fn load(path: &Path) -> io::Result<Signer> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let key = SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| bad_key(path, "an Ed25519 private key in PKCS#8 PEM", e))?;
        Ok(Signer { key })
    }

    /// The `sign` line that vouches for the line whose hash is `head`.
    pub fn sign(&self, head: &str) -> Entry {
        Entry::Sign {
            head: head.to_string(),
            key: key_id(&self.key.verifying_key()),
            sig: hex(&self.key.sign(head.as_bytes()).to_bytes()),
        }
    }
}

/// Loads a SubjectPublicKeyInfo PEM Ed25519 public key.
pub fn load_public(path: &Path) -> io::Result<VerifyingKey> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    VerifyingKey::from_public_key_pem(&pem)
        .map_err(|e| bad_key(path, "an Ed25519 public key in PEM", e))
}

/// Writes a new key pair: `PREFIX.key` (private, mode 0600) and `PREFIX.pub`. Never
/// overwrites a file. Returns both paths.
pub fn keygen(prefix: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let with = |ext: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    let (kp, pp) = (with(".key"), with(".pub"));
    let private = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| io::Error::other(format!("encoding the private key: {e}")))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .map_err(|e| io::Error::other(format!("encoding the public key: {e}")))?;
    for (path, text, mode) in [
        (&kp, private.as_str(), 0o600),
        (&pp, public.as_str(), 0o644),
    ] {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    }
    Ok((kp, pp))
}

/// What the signatures of a manifest prove, against one public key.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Lines (numbered from 1) vouched for by a valid signature of the key: every line up to
    /// and including the last signed head.
    pub covered: usize,
    /// All lines of the manifest.
    pub lines: usize,
    /// Valid signatures of the key.
    pub valid: usize,
    /// `sign` lines that do not prove anything: (line number, why).
    pub bad: Vec<(usize, String)>,
}

impl Coverage {
    /// The first line no valid signature covers (`sign` lines count as covered by the next
    /// signature, the last one by itself).
    pub fn first_uncovered(&self) -> Option<usize> {
        (self.covered < self.lines).then_some(self.covered + 1)
    }
}

/// Checks every `sign` line of a chained manifest against `key`. A signature counts when the
/// line is by this key, its head is the hash of the line just before it, and the signature
/// over that head verifies; it covers that line and all before it.
pub fn check(lines: &[Line], key: &VerifyingKey) -> Coverage {
    let id = key_id(key);
    let mut c = Coverage {
        lines: lines.len(),
        ..Coverage::default()
    };
    for (i, l) in lines.iter().enumerate() {
        let Entry::Sign { head, key: by, sig } = &l.entry else {
            continue;
        };
        let before = i.checked_sub(1).map(|j| &lines[j]);
        let why = if *by != id {
            Some(format!("signed by another key ({by})"))
        } else if before.is_none_or(|b| b.hash != *head) {
            Some("its head is not the hash of the line before it".to_string())
        } else {
            match parse_sig(sig) {
                None => Some("the signature is not 64 bytes of hex".to_string()),
                Some(s) if key.verify(head.as_bytes(), &s).is_err() => {
                    Some("the signature does not verify".to_string())
                }
                Some(_) => None,
            }
        };
        match why {
            Some(w) => c.bad.push((l.number, w)),
            None => {
                c.valid += 1;
                c.covered = l.number;
            }
        }
    }
    c
}

fn parse_sig(h: &str) -> Option<Signature> {
    if h.len() != 128 {
        return None;
    }
    let mut b = [0u8; 64];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Signature::from_bytes(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::manifest;

    fn chain(entries: &[Entry]) -> Vec<Line> {
        let mut text = String::new();
        let mut prev = manifest::GENESIS.to_string();
        for e in entries {
            let (line, hash) = manifest::render(e, &prev);
            text += &line;
            prev = hash;
        }
        manifest::parse(&text).unwrap()
    }

    fn repair(n: u32) -> Entry {
        Entry::Repair {
            what: format!("line {n}"),
        }
    }

    #[test]
    fn a_signature_covers_its_head_and_everything_before_it() {
        let s = Signer {
            key: SigningKey::from_bytes(&[7; 32]),
        };
        let pubkey = s.key.verifying_key();
        // Lines 1, 2, sign(2), 4, sign(4), 6 unsigned.
        let first = chain(&[repair(1), repair(2)]);
        let mut entries = vec![repair(1), repair(2), s.sign(&first[1].hash)];
        let three = chain(&entries);
        entries.push(repair(4));
        let four = chain(&entries);
        entries.push(s.sign(&four[3].hash));
        entries.push(repair(6));
        let lines = chain(&entries);
        assert_eq!(three[2].entry, lines[2].entry);
        let c = check(&lines, &pubkey);
        assert_eq!((c.valid, c.covered, c.lines), (2, 5, 6));
        assert_eq!(c.first_uncovered(), Some(6));
        assert!(c.bad.is_empty(), "{:?}", c.bad);

        // Another key proves nothing, and says whose the signatures are.
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        let c = check(&lines, &other);
        assert_eq!((c.valid, c.covered), (0, 0));
        assert!(c.bad[0].1.contains("another key"), "{:?}", c.bad);
    }

    #[test]
    fn a_rewritten_line_breaks_every_signature_after_it() {
        let s = Signer {
            key: SigningKey::from_bytes(&[7; 32]),
        };
        let honest = chain(&[repair(1), repair(2)]);
        let signed = [repair(1), repair(2), s.sign(&honest[1].hash), repair(4)];
        // The forger changes line 2 and re-chains; the signature line is kept as it was, or
        // its head is "fixed" to the new hash: neither verifies.
        let mut forged = signed.clone();
        forged[1] = repair(99);
        let lines = chain(&forged);
        let c = check(&lines, &s.key.verifying_key());
        assert_eq!((c.valid, c.first_uncovered()), (0, Some(1)));
        assert!(c.bad[0].1.contains("head is not the hash"), "{:?}", c.bad);
        if let Entry::Sign { key, sig, .. } = &forged[2] {
            forged[2] = Entry::Sign {
                head: lines[1].hash.clone(),
                key: key.clone(),
                sig: sig.clone(),
            };
        }
        let c = check(&chain(&forged), &s.key.verifying_key());
        assert_eq!(c.valid, 0);
        assert!(c.bad[0].1.contains("does not verify"), "{:?}", c.bad);
    }

    #[test]
    fn keygen_writes_a_pair_that_loads_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("k");
        let (kp, pp) = keygen(&prefix).unwrap();
        let s = Signer::load(&kp).unwrap();
        assert_eq!(load_public(&pp).unwrap(), s.key.verifying_key());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&kp).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let e = keygen(&prefix).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        let e = Signer::load(&pp).unwrap_err().to_string();
        assert!(e.contains("not an Ed25519 private key"), "{e}");
    }
}
