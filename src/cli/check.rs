//! `stasis check`.

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Print the report as JSON (schema: docs/check-json.md).
    #[arg(long)]
    pub json: bool,
    /// Check only this feature (repeatable).
    #[arg(long = "feature", value_name = "NAME")]
    pub features: Vec<String>,
    /// List the feature names with their descriptions.
    #[arg(long)]
    pub list: bool,
}

pub fn check(_args: CheckArgs) -> Result<u8> {
    anyhow::bail!("`stasis check` is not implemented yet")
}
