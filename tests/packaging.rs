//! What an operator installs beside the binary: man pages (`zcap man`), shell completions
//! (`zcap completions`) and the systemd unit (contrib/zcap.service), each checked by the
//! stock tool that will read it: man, bash, systemd-analyze — and, where systemd runs and we
//! are root, systemd itself.

mod common;

use clap::CommandFactory;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `zcap man --out DIR`, returning the pages it wrote.
fn write_man_pages(dir: &Path) -> Vec<PathBuf> {
    let out = common::run_ok(common::zcap().args(["man", "--out"]).arg(dir));
    assert!(
        text(&out.stderr).contains("man pages to"),
        "{}",
        text(&out.stderr)
    );
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    pages
}

/// A page as `man` shows it, 80 columns, without a pager; groff's warnings are on stderr.
fn render(page: &Path) -> Output {
    let out = Command::new("man")
        .args(["--warnings", "-l", "-P", "cat"])
        .arg(page)
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .env_remove("MAN_KEEP_FORMATTING")
        .stdin(Stdio::null())
        .output()
        .expect("run man");
    assert!(
        out.status.success(),
        "man -l {} failed ({}):\n{}",
        page.display(),
        out.status,
        text(&out.stderr)
    );
    out
}

#[test]
fn every_man_page_renders_with_its_name_and_flags() {
    if !common::need_tool("man") {
        return;
    }
    let t = common::tempdir();
    let pages = write_man_pages(t.path());
    let cli = zcap::cli::Cli::command();
    // One page for zcap and one for each subcommand, named as git names them.
    let mut want = vec!["zcap.1".to_string()];
    want.extend(
        cli.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| format!("zcap-{}.1", s.get_name())),
    );
    want.sort();
    let names: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, want);
    for page in &pages {
        let name = page.file_stem().unwrap().to_string_lossy().into_owned();
        let out = render(page);
        let shown = text(&out.stdout);
        let warnings = text(&out.stderr);
        assert!(
            warnings.trim().is_empty(),
            "man warns about {name}:\n{warnings}"
        );
        assert!(
            shown.contains(&format!("{name} - ")),
            "{name}: no NAME line:\n{shown}"
        );
        // A flag the command really takes, as the reader sees it.
        let flag = match name.strip_prefix("zcap-") {
            Some("record") => "--max-bytes".to_string(),
            Some(sub) => {
                let cmd = cli.find_subcommand(sub).unwrap();
                match cmd
                    .get_arguments()
                    .filter(|a| !a.is_hide_set())
                    .find_map(|a| a.get_long())
                {
                    Some(long) => format!("--{long}"),
                    None => "--help".to_string(),
                }
            }
            None => "record".to_string(), // zcap.1 lists the subcommands
        };
        assert!(
            shown.contains(&flag),
            "{name} does not show {flag}:\n{shown}"
        );
    }
    // The top page points at the others, and `zcap man` alone prints it.
    let top = text(&render(&t.path().join("zcap.1")).stdout);
    assert!(top.contains("zcap-record(1)"), "{top}");
    let stdout = common::run_ok(common::zcap().arg("man")).stdout;
    assert_eq!(stdout, std::fs::read(t.path().join("zcap.1")).unwrap());
}

#[test]
fn bash_completion_loads_and_completes() {
    if !common::need_tool("bash") {
        return;
    }
    let script = r#"source <("$ZCAP" completions bash) || exit 3
complete -p zcap || exit 4
COMP_WORDS=(zcap rec); COMP_CWORD=1; COMP_LINE="zcap rec"; COMP_POINT=${#COMP_LINE}
"$(complete -p zcap | sed -n 's/.*-F \([^ ]*\) .*/\1/p')" zcap rec zcap
echo "words: ${COMPREPLY[*]}"
COMP_WORDS=(zcap record --max-by); COMP_CWORD=2; COMP_LINE="zcap record --max-by"; COMP_POINT=${#COMP_LINE}
"$(complete -p zcap | sed -n 's/.*-F \([^ ]*\) .*/\1/p')" zcap --max-by record
echo "flags: ${COMPREPLY[*]}"
"#;
    let out = common::run_ok(
        Command::new("bash")
            .args(["--norc", "--noprofile", "-c", script])
            .env("ZCAP", env!("CARGO_BIN_EXE_zcap")),
    );
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(stderr.trim().is_empty(), "bash complained:\n{stderr}");
    let complete = stdout.lines().next().unwrap_or_default();
    assert!(
        complete.starts_with("complete ") && complete.ends_with(" zcap"),
        "complete -p zcap printed {complete:?}:\n{stdout}"
    );
    assert!(stdout.contains("words: record"), "{stdout}");
    assert!(stdout.contains("flags: --max-bytes"), "{stdout}");
}

#[test]
fn every_shell_gets_a_script() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = text(&common::run_ok(common::zcap().args(["completions", shell])).stdout);
        assert!(!script.trim().is_empty(), "{shell}: empty script");
        for word in ["record", "max-bytes", "verify"] {
            assert!(script.contains(word), "{shell}: no {word}:\n{script}");
        }
    }
    let out = common::zcap()
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

/// contrib/zcap.service with its ExecStart binary replaced by `exe` (and whatever else
/// `edit` does to each line).
fn unit_with(exe: &Path, edit: impl Fn(&str) -> Option<String>) -> String {
    let unit = std::fs::read_to_string(common::repo().join("contrib/zcap.service")).unwrap();
    assert!(
        unit.lines().any(|l| {
            l.starts_with(
            "ExecStart=/usr/local/bin/zcap record --listen 127.0.0.1:57012 -o /var/lib/zcap/archive"
        )
        }),
        "the shipped ExecStart changed"
    );
    let mut out = String::new();
    for line in unit.lines() {
        let line = line.replace("/usr/local/bin/zcap", &exe.display().to_string());
        if let Some(l) = edit(&line) {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

/// The settings the unit must have, as `Key=value` lines outside comments.
fn settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_unit_is_hardened_and_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(common::repo().join("contrib/zcap.service")).unwrap();
    let set = settings(&unit);
    let get = |k: &str| {
        set.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "zcap"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        (
            "RestrictAddressFamilies",
            "AF_INET AF_INET6 AF_UNIX AF_PACKET AF_NETLINK",
        ),
        ("TimeoutStopSec", "90s"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(get(k), Some(v), "{k}");
    }
    assert_eq!(
        get("SystemCallFilter"),
        None,
        "a syscall filter would take io_uring away"
    );
    let env = std::fs::read_to_string(common::repo().join("contrib/zcap.env.example")).unwrap();
    assert!(settings(&env).iter().any(|(k, _)| k == "ZCAP_RECORD_OPTS"));
    assert!(unit.contains("$ZCAP_RECORD_OPTS"));

    if !common::need_tool("systemd-analyze") || !common::need_tool("man") {
        return;
    }
    // verify checks that ExecStart's binary exists and that Documentation='s man pages do:
    // point it at this build's binary and at the pages this build makes.
    let t = common::tempdir();
    let man1 = t.path().join("man").join("man1");
    write_man_pages(&man1);
    let path = t.path().join("zcap.service");
    std::fs::write(
        &path,
        unit_with(Path::new(env!("CARGO_BIN_EXE_zcap")), |l| {
            Some(l.to_string())
        }),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("MANPATH", t.path().join("man"))
        .env("SYSTEMD_LOG_COLOR", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run systemd-analyze");
    let stderr = text(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("zcap.service") || l.contains(&path.display().to_string()))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "systemd-analyze verify ({}) complains about the unit:\n{stderr}{}",
        out.status,
        text(&out.stdout)
    );
    if !stderr.trim().is_empty() {
        // Complaints about other units of this host (not ours) are its business.
        eprintln!("systemd-analyze verify, about other units:\n{stderr}");
    }
}

fn systemctl(args: &[&str]) -> Output {
    Command::new("systemctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run systemctl")
}

/// Removes the transient unit, its state directory and its binary, whatever happened.
struct Installed {
    name: String,
    unit: PathBuf,
    run_dir: PathBuf,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let service = format!("{}.service", self.name);
        let _ = systemctl(&["stop", &service]);
        let _ = std::fs::remove_file(&self.unit);
        let _ = systemctl(&["daemon-reload"]);
        let _ = systemctl(&["reset-failed", &service]);
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let _ = std::fs::remove_file(Path::new("/var/lib").join(&self.name));
        let _ = std::fs::remove_dir_all(Path::new("/var/lib/private").join(&self.name));
        let _ = std::fs::remove_dir_all(Path::new("/var/lib").join(&self.name));
    }
}

/// Where systemd runs and we are root: the unit, as shipped but for its port, archive and
/// binary, records a capture sent to it and leaves an archive that verifies after a stop.
#[test]
fn the_unit_records_under_systemd() {
    if !Path::new("/run/systemd/system").is_dir() {
        // Not need_tool: CI containers have systemd-analyze but no running systemd, and that
        // is no reason to fail.
        eprintln!(
            "SKIP the_unit_records_under_systemd: systemd is not running here \
             (/run/systemd/system does not exist)"
        );
        return;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP the_unit_records_under_systemd: installing a unit needs root");
        return;
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("zcap-test-{}-{stamp}", std::process::id());
    let service = format!("{name}.service");
    let port = common::free_port();
    // /run, not the build tree: ProtectHome= hides /root and /home from the service, and
    // the dynamic user must be able to execute it.
    let run_dir = Path::new("/run").join(&name);
    let installed = Installed {
        name: name.clone(),
        unit: Path::new("/run/systemd/system").join(&service),
        run_dir: run_dir.clone(),
    };
    std::fs::create_dir_all(&run_dir).unwrap();
    let exe = run_dir.join("zcap");
    std::fs::copy(env!("CARGO_BIN_EXE_zcap"), &exe).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let unit = unit_with(&exe, |l| {
        if l.starts_with("EnvironmentFile=") {
            None // this host's /etc/zcap/zcap.env is not the test's
        } else if l.starts_with("Restart=") {
            Some("Restart=no".into())
        } else if l.starts_with("StateDirectory=") {
            Some(format!("StateDirectory={name}"))
        } else if l.starts_with("ExecStart=") {
            Some(
                l.replace("127.0.0.1:57012", &format!("127.0.0.1:{port}"))
                    .replace("/var/lib/zcap/", &format!("/var/lib/{name}/")),
            )
        } else {
            Some(l.to_string())
        }
    });
    std::fs::write(&installed.unit, unit).unwrap();
    let journal = || {
        text(
            &Command::new("journalctl")
                .args(["--no-pager", "-u", &service])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default(),
        )
    };
    assert!(systemctl(&["daemon-reload"]).status.success());
    let started = systemctl(&["start", &service]);
    assert!(
        started.status.success(),
        "systemctl start {service}: {}\n{}",
        text(&started.stderr),
        journal()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut conn = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => {
                panic!("the service never listened on {port}: {e}\n{}", journal())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let pcap = std::fs::read(common::fixture("demo.pcap")).unwrap();
    conn.write_all(&pcap).unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    drop(conn);
    std::thread::sleep(Duration::from_millis(500));
    let stopped = systemctl(&["stop", &service]);
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
    let show = text(&systemctl(&["show", "-p", "Result", "-p", "ExecMainStatus", &service]).stdout);
    assert!(
        show.contains("Result=success") && show.contains("ExecMainStatus=0"),
        "the service did not stop cleanly:\n{show}\n{}",
        journal()
    );
    let archive = Path::new("/var/lib").join(&name).join("archive");
    common::run_ok(common::zcap().arg("verify").arg(&archive));
    common::assert_streams(&archive, &[pcap], &journal());
    drop(installed);
}
