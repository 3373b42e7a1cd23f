//! Signed manifests: `zcap keygen`, `record --sign-key`, `verify --key`. An honest archive is
//! covered line by line; a forger who swaps a segment, fixes its manifest line and re-chains
//! every later line (as anyone who can write the directory can) still passes a keyless
//! `verify`, which says it checked no signature, and fails `verify --key`, which names the
//! first line no valid signature covers. One signature is also checked with stock openssl.

mod common;

use common::{fixture, run_ok, tempdir, zcap};
use std::path::Path;
use zcap::archive::manifest::{self, Entry};

fn record(arch: &Path, seg: &str, key: Option<&Path>) {
    record_file(arch, &fixture("demo.pcap"), seg, key)
}

fn record_file(arch: &Path, input: &Path, seg: &str, key: Option<&Path>) {
    let mut cmd = zcap();
    cmd.args(["record", "-C", seg, "--frame-size", "8KiB", "-r"])
        .arg(input)
        .arg("-o")
        .arg(arch);
    if let Some(k) = key {
        cmd.arg("--sign-key").arg(k);
    }
    run_ok(&mut cmd);
}

fn lines(arch: &Path) -> Vec<manifest::Line> {
    manifest::parse(&std::fs::read_to_string(arch.join(manifest::FILE)).unwrap()).unwrap()
}

fn verify(arch: &Path, key: Option<&Path>) -> (bool, String) {
    let mut cmd = zcap();
    cmd.arg("verify").arg(arch);
    if let Some(k) = key {
        cmd.arg("--key").arg(k);
    }
    let o = cmd.output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn signatures_cover_an_honest_archive_and_expose_a_rechained_forgery() {
    let t = tempdir();
    let prefix = t.path().join("sensor");
    let o = run_ok(zcap().arg("keygen").arg("-o").arg(&prefix));
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains("sensor.key") && said.contains("sensor.pub"),
        "{said}"
    );
    let (key, public) = (t.path().join("sensor.key"), t.path().join("sensor.pub"));
    let again = zcap()
        .arg("keygen")
        .arg("-o")
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(!again.status.success(), "keygen never overwrites a key");

    let arch = t.path().join("arch");
    record(&arch, "16KiB", Some(&key));
    let honest = lines(&arch);
    let signs = honest
        .iter()
        .filter(|l| matches!(l.entry, Entry::Sign { .. }))
        .count();
    assert_eq!(
        signs * 2,
        honest.len(),
        "every line is followed by its signature"
    );
    let (ok, out) = verify(&arch, Some(&public));
    assert!(ok, "{out}");
    assert!(out.contains("signed: every line"), "{out}");
    let (ok, out) = verify(&arch, None);
    assert!(
        ok && out.contains("signature line(s), not checked"),
        "{out}"
    );

    // Stock openssl checks one signature: the signed message is the head's hex text.
    if common::need_tool("openssl") {
        let last = honest.last().unwrap();
        let Entry::Sign { head, sig, .. } = &last.entry else {
            panic!("the last line is a signature")
        };
        let bytes: Vec<u8> = (0..64)
            .map(|i| u8::from_str_radix(&sig[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        std::fs::write(t.path().join("head.txt"), head).unwrap();
        std::fs::write(t.path().join("sig.bin"), bytes).unwrap();
        let o = std::process::Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
            .arg(&public)
            .arg("-rawin")
            .arg("-in")
            .arg(t.path().join("head.txt"))
            .arg("-sigfile")
            .arg(t.path().join("sig.bin"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "openssl verifies the signature: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // The forger: the same capture with every packet's last byte changed (so the same sizes,
    // times and stream positions), recorded alike; its second segment replaces the archive's,
    // that manifest line takes the new file's hash and size, and every later line is
    // re-chained. The signature lines are kept as they were.
    let mut altered = std::fs::read(fixture("demo.pcap")).unwrap();
    let mut pos = 24;
    while pos + 16 <= altered.len() {
        let caplen = u32::from_le_bytes(altered[pos + 8..pos + 12].try_into().unwrap()) as usize;
        if caplen > 0 {
            altered[pos + 16 + caplen - 1] ^= 0x5a;
        }
        pos += 16 + caplen;
    }
    let altered_path = t.path().join("altered.pcap");
    std::fs::write(&altered_path, &altered).unwrap();
    let other = t.path().join("other");
    record_file(&other, &altered_path, "16KiB", None);
    let donor = lines(&other)
        .into_iter()
        .find_map(|l| match l.entry {
            Entry::Segment(s) if s.seq == 2 => Some(s),
            _ => None,
        })
        .expect("the other recording has a second segment");
    let mut entries: Vec<Entry> = honest.iter().map(|l| l.entry.clone()).collect();
    let victim = entries
        .iter()
        .position(|e| matches!(e, Entry::Segment(s) if s.seq == 2))
        .expect("a second segment");
    let Entry::Segment(mut s) = entries[victim].clone() else {
        unreachable!()
    };
    std::fs::copy(other.join(&donor.path), arch.join(&s.path)).unwrap();
    s.sha256 = donor.sha256.clone();
    s.bytes = donor.bytes;
    s.raw = donor.raw;
    s.packets = donor.packets;
    s.frames = donor.frames;
    s.first_ns = donor.first_ns;
    s.last_ns = donor.last_ns;
    s.stream_off = donor.stream_off;
    s.cont = donor.cont;
    entries[victim] = Entry::Segment(s);
    let mut text = String::new();
    let mut prev = manifest::GENESIS.to_string();
    for e in &entries {
        let (line, hash) = manifest::render(e, &prev);
        text += &line;
        prev = hash;
    }
    std::fs::write(arch.join(manifest::FILE), text).unwrap();

    let (ok, out) = verify(&arch, None);
    assert!(ok, "without a key the forgery passes: {out}");
    assert!(out.contains("not checked"), "and verify says so: {out}");
    let (ok, out) = verify(&arch, Some(&public));
    assert!(!ok, "verify --key fails: {out}");
    assert!(
        out.contains(&format!(
            "{} line {}: not covered by a valid signature",
            manifest::FILE,
            victim + 1
        )),
        "verify --key names the forged line ({}): {out}",
        victim + 1
    );
}

#[test]
fn an_unsigned_archive_is_noted_and_fails_verify_key() {
    let t = tempdir();
    let prefix = t.path().join("k");
    run_ok(zcap().arg("keygen").arg("-o").arg(&prefix));
    let arch = t.path().join("arch");
    record(&arch, "64KiB", None);
    let (ok, out) = verify(&arch, None);
    assert!(ok && out.contains("the manifest is not signed"), "{out}");
    let (ok, out) = verify(&arch, Some(&t.path().join("k.pub")));
    assert!(!ok, "{out}");
    assert!(
        out.contains("line 1: not covered by a valid signature"),
        "{out}"
    );
    // A private key where a public one belongs, and the reverse, are named.
    let (ok, out) = verify(&arch, Some(&t.path().join("k.key")));
    assert!(!ok && out.contains("not an Ed25519 public key"), "{out}");
    let o = zcap()
        .args(["record", "-r"])
        .arg(fixture("demo.pcap"))
        .arg("-o")
        .arg(t.path().join("a2"))
        .arg("--sign-key")
        .arg(t.path().join("k.pub"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("--sign-key")
            && err.contains("not an Ed25519 private key"),
        "{err}"
    );
}

/// Cutting lines off the end leaves a chain that holds and signatures that verify: only a
/// head kept elsewhere shows it (`verify --key PUB --head HASH`).
#[test]
fn a_kept_head_exposes_lines_cut_off_the_end() {
    let t = tempdir();
    let prefix = t.path().join("k");
    run_ok(zcap().arg("keygen").arg("-o").arg(&prefix));
    let (key, public) = (t.path().join("k.key"), t.path().join("k.pub"));
    let arch = t.path().join("arch");
    record(&arch, "16KiB", Some(&key));
    let head = lines(&arch).last().unwrap().hash.clone();
    let (ok, out) = {
        let o = zcap()
            .arg("verify")
            .arg(&arch)
            .arg("--key")
            .arg(&public)
            .args(["--head", &head])
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    assert!(ok && out.contains("nothing before it was cut off"), "{out}");
    // The stream's end and the last segment, each with its signature, are cut off.
    let text = std::fs::read_to_string(arch.join(manifest::FILE)).unwrap();
    let keep: Vec<&str> = text.lines().collect();
    let cut = keep[..keep.len() - 4].join("\n") + "\n";
    std::fs::write(arch.join(manifest::FILE), cut).unwrap();
    for l in &keep[keep.len() - 4..] {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if v["op"] == "segment" {
            std::fs::remove_file(arch.join(v["path"].as_str().unwrap())).unwrap();
        }
    }
    let (ok, out) = verify(&arch, Some(&public));
    assert!(
        ok,
        "without the head the truncated manifest still verifies: {out}"
    );
    let o = zcap()
        .arg("verify")
        .arg(&arch)
        .arg("--key")
        .arg(&public)
        .args(["--head", &head])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("no line has the head you kept"), "{out}");
}
