//! The `zcap` binary: parse the command line, run the job, map the outcome to an exit code
//! (0 ok, 1 a check failed or input was bad, 2 a usage error — clap's own code — or an error
//! that stopped the job). A closed stdout pipe (`zcap cat A | head`) ends quietly with 0.
//! Errors print as one line: each cause in the chain once (`{e:#}`), so an error type either
//! names its cause in its text or returns it as `source()`, never both.

use clap::Parser;
use std::process::ExitCode;
use zcap::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Record(a) => zcap::record::run(a),
        Command::Ls(a) => zcap::archive::read::ls(a),
        Command::Cat(a) => zcap::archive::read::cat(a),
        Command::Verify(a) => zcap::archive::verify::run(a),
        Command::Replay(a) => zcap::replay::run(a),
        Command::Doctor(a) => zcap::doctor::run(a.iface.as_deref(), a.queue, a.json),
        Command::Demo(a) => zcap::demo::run(a),
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
            ExitCode::from(2)
        }
    }
}
