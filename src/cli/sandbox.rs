//! `stasis run`, `ps`, `logs`, `kill`, `rm`, `exec` and the hidden `__init`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Sandbox name (unique; generated when absent).
    #[arg(long)]
    pub name: Option<String>,
    /// Sandbox profile (TOML); configs/default.toml's settings when absent.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Detach: print the name and return.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Follow the log as it grows, until the sandbox exits.
    #[arg(short = 'f', long)]
    pub follow: bool,
    pub name: String,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    pub name: String,
    /// Signal name or number.
    #[arg(short = 's', long, default_value = "TERM")]
    pub signal: String,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    pub name: String,
    /// Kill a running sandbox first.
    #[arg(short = 'f', long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    pub name: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

pub fn run(_state_dir: &Path, _args: RunArgs) -> Result<u8> {
    anyhow::bail!("`stasis run` is not implemented yet")
}
pub fn ps(_state_dir: &Path, _args: PsArgs) -> Result<u8> {
    anyhow::bail!("`stasis ps` is not implemented yet")
}
pub fn logs(_state_dir: &Path, _args: LogsArgs) -> Result<u8> {
    anyhow::bail!("`stasis logs` is not implemented yet")
}
pub fn kill(_state_dir: &Path, _args: KillArgs) -> Result<u8> {
    anyhow::bail!("`stasis kill` is not implemented yet")
}
pub fn rm(_state_dir: &Path, _args: RmArgs) -> Result<u8> {
    anyhow::bail!("`stasis rm` is not implemented yet")
}
pub fn exec(_state_dir: &Path, _args: ExecArgs) -> Result<u8> {
    anyhow::bail!("`stasis exec` is not implemented yet")
}
pub fn init(_args: InitArgs) -> Result<u8> {
    anyhow::bail!("`stasis __init` is not implemented yet")
}
