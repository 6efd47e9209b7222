//! `stasis check`.

use std::io::IsTerminal;

use anyhow::{Context, Result};
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
    /// Use the results cached earlier in this boot when they are still valid
    /// (same kernel, boot, user, capabilities and stasis build).
    #[arg(long)]
    pub cached: bool,
    /// Deadline of each probe, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub timeout_ms: u64,
}

pub fn check(args: CheckArgs) -> Result<u8> {
    if args.list {
        list(args.json)?;
        return Ok(0);
    }
    let features = match probe::parse_features(&args.features) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("stasis check: {e}");
            return Ok(2);
        }
    };
    let report = if args.cached {
        match probe::cache::load() {
            Some(full) if features.is_empty() => full,
            Some(full) => full.subset(&features),
            None => fresh(&features, args.timeout_ms)?,
        }
    } else {
        fresh(&features, args.timeout_ms)?
    };
    if args.json {
        let mut out = serde_json::to_string_pretty(&report).context("encoding the report")?;
        out.push('\n');
        print!("{out}");
    } else {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        print!("{}", report.render_table(color));
    }
    Ok(report.exit_code())
}

/// Probes now; a full run refreshes the per-boot cache.
fn fresh(features: &[probe::Feature], timeout_ms: u64) -> Result<probe::Report> {
    let opts = probe::Options {
        timeout: std::time::Duration::from_millis(timeout_ms),
        ..probe::Options::default()
    };
    let report = probe::check_with(features, &opts).context("probing the kernel")?;
    if features.is_empty() {
        if let Err(e) = probe::cache::store(&report) {
            tracing::debug!("probe results not cached: {e}");
        }
    }
    Ok(report)
}

fn list(json: bool) -> Result<()> {
    if json {
        let items: Vec<_> = probe::Feature::ALL
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name(),
                    "description": f.description(),
                    "required": f.required(),
                    "capabilities": f.capabilities(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
        return Ok(());
    }
    let width = probe::Feature::ALL
        .iter()
        .map(|f| f.name().len())
        .max()
        .unwrap_or(10);
    for f in probe::Feature::ALL {
        let req = if f.required() { "required" } else { "optional" };
        println!("{:<width$}  {req}  {}", f.name(), f.description());
    }
    Ok(())
}
