//! The `stasis` command: argument parsing and dispatch. Every command's work is
//! done by the library crates (`probe`, `sandbox`, `engine`); the handlers in
//! `cli/` only turn arguments into calls and results into exit codes.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Checkpoint/restore for Linux process trees, in checkpointable sandboxes.
#[derive(Parser, Debug)]
#[command(name = "stasis", version, about, long_about = None)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Where sandboxes keep their state (env STASIS_STATE_DIR).
    #[arg(
        long,
        global = true,
        env = "STASIS_STATE_DIR",
        default_value = "/run/stasis"
    )]
    pub state_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Probe the running kernel for every feature checkpoint/restore needs.
    Check(cli::check::CheckArgs),
    /// Start a command in a new checkpointable sandbox.
    Run(cli::sandbox::RunArgs),
    /// List sandboxes.
    Ps(cli::sandbox::PsArgs),
    /// Show a sandbox's output.
    Logs(cli::sandbox::LogsArgs),
    /// Send a signal to a sandbox's workload.
    Kill(cli::sandbox::KillArgs),
    /// Remove a sandbox's state.
    Rm(cli::sandbox::RmArgs),
    /// Freeze every process of a sandbox (cgroup freezer).
    Freeze(cli::sandbox::NameArgs),
    /// Thaw a frozen sandbox (also one left frozen by an interrupted dump).
    Thaw(cli::sandbox::NameArgs),
    /// Run a command inside a sandbox's namespaces and cgroup.
    Exec(cli::sandbox::ExecArgs),
    /// Checkpoint a sandbox's process tree into an image directory.
    Dump(cli::engine::DumpArgs),
    /// Restore an image into a fresh sandbox.
    Restore(cli::engine::RestoreArgs),
    /// Show what an image holds.
    Inspect(cli::engine::InspectArgs),
    /// Check the kernel, run a counting workload, dump it, restore it, and show it going on.
    Demo(cli::engine::DemoArgs),
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("STASIS_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Check(a) => cli::check::check(a),
        Command::Run(a) => cli::sandbox::run(&cli.state_dir, a),
        Command::Ps(a) => cli::sandbox::ps(&cli.state_dir, a),
        Command::Logs(a) => cli::sandbox::logs(&cli.state_dir, a),
        Command::Kill(a) => cli::sandbox::kill(&cli.state_dir, a),
        Command::Rm(a) => cli::sandbox::rm(&cli.state_dir, a),
        Command::Freeze(a) => cli::sandbox::freeze(&cli.state_dir, a, true),
        Command::Thaw(a) => cli::sandbox::freeze(&cli.state_dir, a, false),
        Command::Exec(a) => cli::sandbox::exec(&cli.state_dir, a),
        Command::Dump(a) => cli::engine::dump(&cli.state_dir, a),
        Command::Restore(a) => cli::engine::restore(&cli.state_dir, a),
        Command::Inspect(a) => cli::engine::inspect(a),
        Command::Demo(a) => cli::engine::demo(&cli.state_dir, a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("stasis: error: {}", chain(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes, each cause added only where the message above it
/// does not already end with it (most errors print their source themselves).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}
