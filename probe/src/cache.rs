//! Per-boot cache of a full report: valid while the kernel release, boot id,
//! effective user and capabilities, and the probe code are unchanged.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::report::Report;
use crate::Error;

/// Identity of the probe sources (set by build.rs).
const PROBE_SOURCE_HASH: &str = env!("PROBE_SOURCE_HASH");

/// What a cached report is valid for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    pub kernel_release: String,
    pub boot_id: String,
    pub euid: u32,
    /// `CapEff` of /proc/self/status.
    pub cap_eff: String,
    pub probe_version: String,
}

impl CacheKey {
    pub fn current() -> Self {
        let k = crate::report::KernelInfo::current();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let cap_eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| v.trim().to_string())
            .unwrap_or_default();
        Self {
            kernel_release: k.release,
            boot_id: k.boot_id,
            euid: nix::unistd::geteuid().as_raw(),
            cap_eff,
            probe_version: format!("{}+{}", env!("CARGO_PKG_VERSION"), PROBE_SOURCE_HASH),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    key: CacheKey,
    report: Report,
}

/// Directory of the cache: `$STASIS_STATE_DIR/probe-cache`, by default
/// `/run/stasis/probe-cache` (a tmpfs, emptied at boot).
pub fn dir() -> PathBuf {
    let state = std::env::var_os("STASIS_STATE_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/stasis"));
    state.join("probe-cache")
}

/// The cache file.
pub fn path() -> PathBuf {
    dir().join("report.json")
}

/// The cached full report, if one exists and is valid for this boot and caller.
pub fn load() -> Option<Report> {
    load_from(&path())
}

fn load_from(path: &Path) -> Option<Report> {
    let text = std::fs::read(path).ok()?;
    let file: CacheFile = serde_json::from_slice(&text).ok()?;
    if file.key != CacheKey::current() {
        tracing::debug!(path = %path.display(), "probe cache is stale");
        return None;
    }
    let mut report = file.report;
    report.cached = true;
    Some(report)
}

/// Stores a full report (written to a temporary file, then renamed).
pub fn store(report: &Report) -> Result<(), Error> {
    store_to(&path(), report)
}

fn store_to(path: &Path, report: &Report) -> Result<(), Error> {
    let err = |source| Error::Cache {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(err)?;
    let file = CacheFile {
        key: CacheKey::current(),
        report: report.clone(),
    };
    let body = serde_json::to_vec(&file).map_err(|e| err(std::io::Error::other(e)))?;
    let tmp = dir.join(format!(".report.json.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&body).map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

/// Removes the cache file (no error when there is none).
pub fn clear() -> Result<(), Error> {
    match std::fs::remove_file(path()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Cache {
            path: path(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{FeatureResult, Outcome};
    use crate::Feature;

    #[test]
    fn round_trip_and_stale_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probe-cache/report.json");
        let report = Report::from_results(
            vec![FeatureResult::new(Feature::Kcmp, Outcome::ok("works"))],
            3.0,
        );
        store_to(&path, &report).unwrap();
        let back = load_from(&path).unwrap();
        assert!(back.cached);
        assert_eq!(back.features, report.features);

        // A different boot invalidates it.
        let mut file: CacheFile = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        file.key.boot_id = "another-boot".into();
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        assert!(load_from(&path).is_none());
    }
}
