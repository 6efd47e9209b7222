//! What this kernel can do for checkpoint/restore: one probe per feature, each
//! really exercising the interface it names, in a process of its own with a
//! deadline, so that a probe can neither hang, crash nor change the caller.
//!
//! The sandbox and the engine ask this crate before they choose an optional
//! path ([`is_available`]), so there is one truth about the running kernel.
//!
//! ```no_run
//! use probe::Feature;
//! if probe::is_available(Feature::PagemapScan) {
//!     // use the PAGEMAP_SCAN ioctl
//! }
//! let report = probe::check(&[Feature::PtraceXstate])?;
//! println!("{}", report.render_table(false));
//! # Ok::<(), probe::Error>(())
//! ```

pub mod cache;
mod feature;
mod probes;
mod report;
mod runner;
mod util;
pub mod vdso;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use feature::{Capability, Feature, FeatureInfo};
pub use report::{
    CapabilityResult, FeatureResult, KernelInfo, Outcome, Report, Status, Support, SCHEMA_VERSION,
};

/// Errors of the probe API (a feature that is missing is not an error: it is
/// a result).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown feature {name:?}{}", suggest(close))]
    UnknownFeature {
        name: String,
        close: Vec<&'static str>,
    },
    #[error(
        "cannot run probes in a multithreaded process without the stasis binary \
         (set STASIS_BIN to its path)"
    )]
    NoHelper,
    #[error("running probe helper {path}: {source}")]
    HelperSpawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("probe helper {path} failed: {detail}")]
    HelperOutput { path: PathBuf, detail: String },
    #[error("probe cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn suggest(close: &[&str]) -> String {
    if close.is_empty() {
        " (`stasis check --list` lists them)".to_string()
    } else {
        format!("; did you mean {}?", close.join(", "))
    }
}

/// How to run probes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Deadline of each probe unit.
    pub timeout: Duration,
    /// The stasis binary, used to probe from a multithreaded process
    /// (default: `STASIS_BIN`, or the current executable if it is `stasis`,
    /// or a `stasis` beside it or one directory up).
    pub helper: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            helper: None,
        }
    }
}

/// Parses feature names, failing on the first unknown one (with close matches).
pub fn parse_features<S: AsRef<str>>(names: &[S]) -> Result<Vec<Feature>, Error> {
    let mut out = Vec::new();
    for n in names {
        let f: Feature = n.as_ref().parse()?;
        if !out.contains(&f) {
            out.push(f);
        }
    }
    Ok(out)
}

/// Probes `features` now (all of them when empty) and returns the report.
pub fn check(features: &[Feature]) -> Result<Report, Error> {
    check_with(features, &Options::default())
}

/// [`check`] with explicit options.
pub fn check_with(features: &[Feature], opts: &Options) -> Result<Report, Error> {
    let wanted: Vec<Feature> = if features.is_empty() {
        Feature::ALL.to_vec()
    } else {
        features.to_vec()
    };
    if !runner::single_threaded() {
        return check_via_helper(&wanted, opts);
    }
    let start = Instant::now();
    let results = probes::run(&wanted, opts.timeout);
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    Ok(Report::from_results(results, ms))
}

/// The full report of this boot: from the per-boot cache when valid, else
/// probed now and stored in the cache.
pub fn cached_report() -> Result<Report, Error> {
    if let Some(r) = cache::load() {
        return Ok(r);
    }
    let r = check(&[])?;
    if let Err(e) = cache::store(&r) {
        tracing::debug!("not caching probe results: {e}");
    }
    Ok(r)
}

/// The result for one feature (per-boot cache, else probed now).
pub fn status(feature: Feature) -> Result<FeatureResult, Error> {
    let r = cached_report()?;
    Ok(r.get(feature)
        .cloned()
        .expect("a full report holds every feature"))
}

/// True when `feature` works on this machine (per-boot cache, else probed
/// now). A probe that cannot run counts as not available (logged).
pub fn is_available(feature: Feature) -> bool {
    match status(feature) {
        Ok(r) => r.status() == Status::Ok,
        Err(e) => {
            tracing::warn!("cannot probe {feature}: {e}");
            false
        }
    }
}

fn helper_path(opts: &Options) -> Option<PathBuf> {
    if let Some(p) = &opts.helper {
        return Some(p.clone());
    }
    if let Some(p) = std::env::var_os("STASIS_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    if exe.file_name().is_some_and(|n| n == "stasis") {
        return Some(exe);
    }
    let dir = exe.parent()?;
    [dir.join("stasis"), dir.parent()?.join("stasis")]
        .into_iter()
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `stasis check --json --feature ...` (fork+exec, sound in a
/// multithreaded process) and reads its report.
fn check_via_helper(features: &[Feature], opts: &Options) -> Result<Report, Error> {
    let path = helper_path(opts).ok_or(Error::NoHelper)?;
    let mut cmd = std::process::Command::new(&path);
    cmd.arg("check").arg("--json");
    for f in features {
        cmd.arg("--feature").arg(f.name());
    }
    cmd.stdin(std::process::Stdio::null());
    let out = cmd.output().map_err(|source| Error::HelperSpawn {
        path: path.clone(),
        source,
    })?;
    if !matches!(out.status.code(), Some(0) | Some(1)) {
        return Err(Error::HelperOutput {
            path,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    serde_json::from_slice(&out.stdout).map_err(|e| Error::HelperOutput {
        path,
        detail: format!("unreadable report: {e}"),
    })
}
