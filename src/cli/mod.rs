//! The command line: parses arguments and hands each subcommand to the library.

mod check_cmd;
mod elf_cmd;
mod fix_cmd;
mod undo_cmd;
mod watch_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Make conda and pip environments run on NixOS by rewriting the ELF interpreter and run path of
/// their binaries.
#[derive(Debug, Parser)]
#[command(name = "autopatch", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read or edit ELF files directly (takes patchelf's flags).
    Elf(elf_cmd::ElfArgs),
    /// Patch every binary of conda or pip prefixes so it runs on NixOS.
    Fix(fix_cmd::FixArgs),
    /// Tell, per file, what the dynamic loader will load from where, and what stops it.
    Check(check_cmd::CheckArgs),
    /// Keep watched conda roots, environments and venvs patched while installers write to them
    /// (`--json`: one JSON object per line).
    Watch(watch_cmd::WatchArgs),
    /// Put back, byte for byte, every file and conda record `fix` changed under the given paths.
    Undo(undo_cmd::UndoArgs),
}

/// Runs the command line; exit 0 when everything succeeded, 1 when something failed, 2 on usage
/// errors.
pub fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Elf(args) => elf_cmd::run(args),
        Command::Fix(args) => fix_cmd::run(args),
        Command::Check(args) => check_cmd::run(args),
        Command::Watch(args) => watch_cmd::run(args),
        Command::Undo(args) => undo_cmd::run(args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("autopatch: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AUTOPATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
