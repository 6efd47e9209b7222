//! `stasis dump`, `restore`, `inspect` and `demo`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct DumpArgs {
    /// The sandbox to dump.
    pub name: String,
    /// Image directory to write (created; must not hold an image already).
    #[arg(short = 'D', long = "images-dir")]
    pub dir: PathBuf,
    /// Let the workload run on after the dump instead of killing it.
    #[arg(long)]
    pub leave_running: bool,
    /// Print phase times and sizes as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Image directory.
    pub dir: PathBuf,
    /// Name of the new sandbox (generated when absent).
    #[arg(long)]
    pub name: Option<String>,
    /// Detach: print the name and return.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Print phase times as JSON (with -d).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    pub dir: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {}

pub fn dump(_state_dir: &Path, _args: DumpArgs) -> Result<u8> {
    anyhow::bail!("`stasis dump` is not implemented yet")
}
pub fn restore(_state_dir: &Path, _args: RestoreArgs) -> Result<u8> {
    anyhow::bail!("`stasis restore` is not implemented yet")
}
pub fn inspect(_args: InspectArgs) -> Result<u8> {
    anyhow::bail!("`stasis inspect` is not implemented yet")
}
pub fn demo(_state_dir: &Path, _args: DemoArgs) -> Result<u8> {
    anyhow::bail!("`stasis demo` is not implemented yet")
}
