//! The `zcap` binary: parse the command line, run the job, map the outcome to an exit code
//! (0 ok, 1 a check failed or input was bad — an archive that names paths outside itself
//! included — 2 a usage error (clap's own code) or an error that stopped the job). A closed
//! stdout pipe (`zcap cat A | head`) ends quietly with 0. Errors print as one line: each cause
//! in the chain once (`{e:#}`), so an error type either names its cause in its text or returns
//! it as `source()`, never both. The archive commands take plain option structs; this is the
//! one place they are made from the command line.

use clap::Parser;
use std::process::ExitCode;
use zcap::archive::location::Location;
use zcap::archive::{flowlist, path::Untrusted, read, verify};
use zcap::cli::{
    CatArgs, Cli, Command, FlowsArgs, IndexArgs, LsArgs, S3Args, UploadArgs, VerifyArgs,
};

/// The archive a command names: a directory or an s3:// URL.
fn location(archive: &str, s3: &S3Args) -> anyhow::Result<Location> {
    Location::parse(archive, &s3.settings()).map_err(anyhow::Error::msg)
}

fn ls_options(a: &LsArgs) -> anyhow::Result<read::LsOptions> {
    Ok(read::LsOptions {
        loc: location(&a.dir, &a.s3)?,
        json: a.json,
    })
}

fn selection(w: &zcap::cli::Window) -> read::Selection {
    read::Selection {
        streams: w.stream.clone(),
        from: w.from,
        to: w.to,
    }
}

fn cat_options(a: &CatArgs) -> anyhow::Result<read::CatOptions> {
    Ok(read::CatOptions {
        loc: location(&a.dir, &a.s3)?,
        sel: selection(&a.window),
        filter: a.filter_expr(),
        write: a.write.clone(),
        stats: a.stats,
    })
}

fn flows_options(a: &FlowsArgs) -> anyhow::Result<flowlist::FlowsOptions> {
    Ok(flowlist::FlowsOptions {
        loc: location(&a.dir, &a.s3)?,
        sel: selection(&a.window),
        filter: a.filter_expr(),
        json: a.json,
    })
}

fn verify_options(a: &VerifyArgs) -> anyhow::Result<verify::Options> {
    Ok(verify::Options {
        loc: location(&a.dir, &a.s3)?,
        repair: a.repair,
        json: a.json,
        key: a.key.clone(),
        head: a.head.clone(),
    })
}

fn index_options(a: &IndexArgs) -> zcap::archive::flows::Options {
    zcap::archive::flows::Options { dir: a.dir.clone() }
}

fn upload_options(a: &UploadArgs) -> anyhow::Result<zcap::remote::upload::Options> {
    let (cfg, keep_bytes, keep_age) =
        zcap::record::upload_config(&a.url, &a.opts, a.give_up_after)?;
    Ok(zcap::remote::upload::Options {
        dir: a.dir.clone(),
        cfg,
        keep_bytes,
        keep_age,
        sign: a
            .sign_key
            .as_deref()
            .map(zcap::archive::sign::Signer::load)
            .transpose()?,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Record(a) => zcap::record::run(a),
        Command::Ls(a) => ls_options(a).and_then(|o| read::ls(&o)),
        Command::Cat(a) => cat_options(a).and_then(|o| read::cat(&o)),
        Command::Flows(a) => flows_options(a).and_then(|o| flowlist::flows(&o)),
        Command::Verify(a) => verify_options(a).and_then(|o| verify::run(&o)),
        Command::Index(a) => zcap::archive::flows::run(&index_options(a)),
        Command::Replay(a) => zcap::replay::run(a),
        Command::Send(a) => zcap::send::run(a),
        Command::Doctor(a) => zcap::doctor::run(a.iface.as_deref(), a.queue, a.json, a.probe),
        Command::Demo(a) => zcap::demo::run(a),
        Command::Upload(a) => upload_options(a).and_then(|o| zcap::remote::upload::run(&o)),
        Command::Keygen(a) => zcap::archive::sign::keygen(&a.out)
            .map(|(key, public)| {
                eprintln!(
                    "zcap: wrote {} (private: give it to `record --sign-key`, keep it from \
                     everyone else) and {} (public: for `verify --key`)",
                    key.display(),
                    public.display()
                );
                true
            })
            .map_err(anyhow::Error::from),
        Command::Completions(a) => zcap::packaging::completions(a.shell),
        Command::Man(a) => zcap::packaging::man(a.out.as_deref()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("zcap: error: {e:#}");
            if e.chain().any(|c| c.downcast_ref::<Untrusted>().is_some()) {
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
    }
}
