//! What a distribution ships beside the binary: shell completions and man pages, both made
//! from the real command line ([`Cli`]), so they always list the flags this binary takes.
//! `zcap completions SHELL` and `zcap man [--out DIR]`; contrib/zcap.service is the unit.

use crate::cli::Cli;
use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The completion script for `shell`. Made in memory first: clap_complete panics when its
/// writer fails, and a closed pipe (`zcap completions bash | head`) is no reason to.
pub fn completion_script(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "zcap", &mut script);
    script
}

/// `zcap completions SHELL`: the script on stdout.
pub fn completions(shell: Shell) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    out.write_all(&completion_script(shell))?;
    out.flush()?;
    Ok(true)
}

/// The defaults of `--compress-threads` and `--writers` come from the cores of the host that
/// runs zcap (their help says so): hidden in the pages, so that a page is the same whichever
/// machine made it.
fn host_independent(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| match a.get_id().as_str() {
        "compress_threads" | "writers" => a.hide_default_value(true),
        _ => a,
    })
}

/// Every man page: `zcap.1` first, then one per subcommand named as git names them
/// (`zcap-record.1`, `zcap-ls.1`, ...), each with its rendered roff source.
pub fn man_pages() -> Vec<(String, Vec<u8>)> {
    fn walk(cmd: &clap::Command, source: &str, pages: &mut Vec<(String, Vec<u8>)>) {
        let man = clap_mangen::Man::new(host_independent(cmd.clone()))
            .source(source)
            .manual("zcap manual");
        let mut roff = Vec::new();
        man.render(&mut roff)
            .expect("rendering into memory cannot fail");
        pages.push((man.get_filename(), no_hyphenation(roff)));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, source, pages);
        }
    }
    let source = format!("zcap {}", env!("CARGO_PKG_VERSION"));
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    walk(&cmd, &source, &mut pages);
    pages
}

/// Flags and values must read as they are typed: no hyphenation (`--seg-ment-size`) and no
/// stretched spaces, from the title line on.
fn no_hyphenation(roff: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8(roff).expect("clap_mangen writes UTF-8");
    let mut out = String::with_capacity(text.len() + 16);
    let mut done = false;
    for line in text.split_inclusive('\n') {
        out.push_str(line);
        if !done && line.starts_with(".TH ") {
            out.push_str(".nh\n.ad l\n");
            done = true;
        }
    }
    out.into_bytes()
}

/// `zcap man [--out DIR]`: every page into DIR (created if missing), or `zcap.1` on stdout.
pub fn man(out: Option<&Path>) -> anyhow::Result<bool> {
    let pages = man_pages();
    let Some(dir) = out else {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&pages[0].1)?;
        stdout.flush()?;
        return Ok(true);
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the man page directory {}", dir.display()))?;
    for (name, page) in &pages {
        let path: PathBuf = dir.join(name);
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    }
    eprintln!(
        "zcap: wrote {} man pages to {} ({}, {}, ...)",
        pages.len(),
        dir.display(),
        pages[0].0,
        pages[1].0
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_per_visible_subcommand_named_as_git_does() {
        let names: Vec<String> = man_pages().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names[0], "zcap.1");
        for sub in Cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
        {
            let want = format!("zcap-{}.1", sub.get_name());
            assert!(names.contains(&want), "no {want} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
    }

    /// The roff of one option of a page: from its `.TP` line to the next.
    fn option<'a>(page: &'a str, flag: &str) -> &'a str {
        let head = format!("\\fB\\-\\-{}\\fR", flag.replace('-', "\\-"));
        let at = page
            .find(&format!(".TP\n{head}"))
            .unwrap_or_else(|| panic!("no {head} in the page"));
        let rest = &page[at + 4..];
        &rest[..rest.find(".TP").unwrap_or(rest.len())]
    }

    #[test]
    fn pages_do_not_depend_on_the_host() {
        let pages = man_pages();
        let record = &pages.iter().find(|(n, _)| n == "zcap-record.1").unwrap().1;
        let page = String::from_utf8_lossy(record);
        for flag in ["compress-threads", "writers"] {
            let o = option(&page, flag);
            assert!(!o.contains("default:"), "{o}");
            assert!(
                o.contains("Default: one per"),
                "the help says it instead: {o}"
            );
        }
        assert!(option(&page, "frame-size").contains("default: 1MiB"));
        assert_eq!(pages, man_pages(), "two runs, the same bytes");
    }

    #[test]
    fn every_shell_gets_a_script_naming_the_subcommands() {
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::Elvish,
            Shell::PowerShell,
        ] {
            let script = String::from_utf8(completion_script(shell)).unwrap();
            for word in ["record", "verify", "max-bytes"] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
        }
    }
}
