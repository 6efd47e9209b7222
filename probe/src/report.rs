//! Probe results, the capability summary, and their text rendering. The JSON
//! form is documented in docs/check-json.md.

use serde::{Deserialize, Serialize};

use crate::feature::{Capability, Feature};

/// Version of the JSON report layout.
pub const SCHEMA_VERSION: u32 = 1;

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The interface works.
    Ok,
    /// This kernel, or this caller's privileges, do not provide it.
    Missing,
    /// The probe failed unexpectedly (a call failed with an errno that says
    /// nothing about availability, the probe timed out or crashed).
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Missing => "missing",
            Status::Error => "error",
        }
    }
}

/// The result of one feature's probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub status: Status,
    /// What was found (ok) or why it is not available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The call that failed, e.g. `prctl(PR_SET_MM, PR_SET_MM_START_BRK)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    /// Its errno name, e.g. `EPERM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    /// Its errno number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_code: Option<i32>,
    /// Facts measured by the probe (sizes, masks, categories, layouts).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub data: serde_json::Map<String, serde_json::Value>,
}

impl Outcome {
    pub fn ok(detail: impl Into<String>) -> Self {
        Self::new(Status::Ok, Some(detail.into()))
    }

    pub fn missing(detail: impl Into<String>) -> Self {
        Self::new(Status::Missing, Some(detail.into()))
    }

    pub fn error(detail: impl Into<String>) -> Self {
        Self::new(Status::Error, Some(detail.into()))
    }

    fn new(status: Status, detail: Option<String>) -> Self {
        Self {
            status,
            detail,
            call: None,
            errno: None,
            errno_code: None,
            data: serde_json::Map::new(),
        }
    }

    /// Attaches the failed call and its errno.
    pub fn with_call(mut self, call: impl Into<String>, errno: Option<nix::errno::Errno>) -> Self {
        self.call = Some(call.into());
        if let Some(e) = errno {
            self.errno = Some(format!("{e:?}"));
            self.errno_code = Some(e as i32);
        }
        self
    }

    /// Adds one fact to `data`.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.data.insert(key.to_string(), value.into());
        self
    }

    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
}

/// One feature in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureResult {
    pub name: Feature,
    pub description: String,
    pub required: bool,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Stasis capabilities that need this feature.
    pub capabilities: Vec<Capability>,
    /// What makes it work; present when the status is not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl FeatureResult {
    pub fn new(name: Feature, outcome: Outcome) -> Self {
        let info = name.info();
        Self {
            name,
            description: info.description.to_string(),
            required: info.required,
            fix: (outcome.status != Status::Ok).then(|| info.fix.to_string()),
            outcome,
            capabilities: name.capabilities(),
        }
    }

    pub fn status(&self) -> Status {
        self.outcome.status
    }
}

/// Whether a stasis capability works on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Support {
    Yes,
    No,
    /// Some feature it needs was not checked (`--feature`).
    Unknown,
}

/// One capability in the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilityResult {
    pub name: Capability,
    pub description: String,
    pub supported: Support,
    /// For requirements with alternatives: the working alternative chosen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<Feature>,
    /// Alternatives that are not available but were not needed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable_alternatives: Vec<Feature>,
    /// Features whose absence makes it unsupported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked_by: Vec<Feature>,
    /// Features that are not available but that this capability does without
    /// (e.g. single-field PR_SET_MM for restore, which uses PR_SET_MM_MAP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_not_needed: Vec<Feature>,
}

/// Kernel identity the results belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    pub release: String,
    pub boot_id: String,
    pub machine: String,
}

impl KernelInfo {
    /// The running kernel's release, boot id and machine.
    pub fn current() -> Self {
        let uts = nix::sys::utsname::uname().ok();
        let field = |f: fn(&nix::sys::utsname::UtsName) -> &std::ffi::OsStr| {
            uts.as_ref()
                .map(|u| f(u).to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        Self {
            release: field(|u| u.release()),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            machine: field(|u| u.machine()),
        }
    }
}

/// The full answer of `stasis check`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: u32,
    pub stasis_version: String,
    pub kernel: KernelInfo,
    /// True when the results come from the per-boot cache.
    pub cached: bool,
    /// Wall time spent probing (0 when cached).
    pub duration_ms: f64,
    /// True when every required feature that was checked is ok.
    pub ok: bool,
    pub features: Vec<FeatureResult>,
    pub capabilities: Vec<CapabilityResult>,
}

impl Report {
    /// Builds a report from per-feature results (in any order).
    pub fn from_results(mut features: Vec<FeatureResult>, duration_ms: f64) -> Self {
        features.sort_by_key(|r| r.name);
        let ok = features
            .iter()
            .all(|r| !r.required || r.status() == Status::Ok);
        let capabilities = summarize(&features);
        Self {
            schema: SCHEMA_VERSION,
            stasis_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel: KernelInfo::current(),
            cached: false,
            duration_ms,
            ok,
            features,
            capabilities,
        }
    }

    /// The result for `feature`, if it was checked.
    pub fn get(&self, feature: Feature) -> Option<&FeatureResult> {
        self.features.iter().find(|r| r.name == feature)
    }

    /// True when `feature` was checked and works.
    pub fn is_ok(&self, feature: Feature) -> bool {
        self.get(feature).is_some_and(|r| r.status() == Status::Ok)
    }

    /// The capability's summary entry.
    pub fn capability(&self, c: Capability) -> Option<&CapabilityResult> {
        self.capabilities.iter().find(|r| r.name == c)
    }

    /// A copy with only the given features (capabilities re-summarised).
    pub fn subset(&self, only: &[Feature]) -> Report {
        let features: Vec<_> = self
            .features
            .iter()
            .filter(|r| only.contains(&r.name))
            .cloned()
            .collect();
        let mut r = Report::from_results(features, self.duration_ms);
        r.cached = self.cached;
        r.kernel = self.kernel.clone();
        r
    }

    /// `stasis check`'s exit code: 0 when every required feature checked works, else 1.
    pub fn exit_code(&self) -> u8 {
        if self.ok {
            0
        } else {
            1
        }
    }

    /// The human-readable table: required features first, then optional
    /// ones, then the capability summary. ANSI colours when `color`.
    pub fn render_table(&self, color: bool) -> String {
        let paint = |s: &str, code: &str| {
            if color {
                format!("\x1b[{code}m{s}\x1b[0m")
            } else {
                s.to_string()
            }
        };
        let status_cell = |st: Status| {
            let word = format!("{:<7}", st.as_str());
            match st {
                Status::Ok => paint(&word, "32"),
                Status::Missing => paint(&word, "33"),
                Status::Error => paint(&word, "31"),
            }
        };
        let width = self
            .features
            .iter()
            .map(|r| r.name.name().len())
            .max()
            .unwrap_or(10);
        let mut out = String::new();
        out.push_str(&format!(
            "stasis {} on Linux {} {}{}\n",
            self.stasis_version,
            self.kernel.release,
            self.kernel.machine,
            if self.cached {
                " (cached results of this boot)".to_string()
            } else {
                format!(" ({:.1} ms)", self.duration_ms)
            }
        ));
        for (title, required) in [("Required", true), ("Optional", false)] {
            let rows: Vec<_> = self
                .features
                .iter()
                .filter(|r| r.required == required)
                .collect();
            if rows.is_empty() {
                continue;
            }
            out.push_str(&format!("\n{}\n", paint(title, "1")));
            for r in rows {
                let o = &r.outcome;
                let mut what = o.detail.clone().unwrap_or_else(|| r.description.clone());
                if let (Some(call), Some(errno)) = (&o.call, &o.errno) {
                    what = format!("{what} [{call}: {errno}]");
                } else if let Some(call) = &o.call {
                    what = format!("{what} [{call}]");
                }
                out.push_str(&format!(
                    "  {} {:<width$}  {}\n",
                    status_cell(o.status),
                    r.name.name(),
                    what
                ));
                if let Some(fix) = &r.fix {
                    out.push_str(&format!("  {:<7} {:<width$}  fix: {}\n", "", "", fix));
                }
            }
        }
        out.push_str(&format!("\n{}\n", paint("Capabilities", "1")));
        let cwidth = self
            .capabilities
            .iter()
            .map(|c| c.name.name().len())
            .max()
            .unwrap_or(10);
        for c in &self.capabilities {
            let word = match c.supported {
                Support::Yes => paint("yes    ", "32"),
                Support::No => paint("no     ", "31"),
                Support::Unknown => paint("unknown", "2"),
            };
            let mut note = c.name.description().to_string();
            if !c.via.is_empty() {
                note.push_str(&format!(" (via {}", join(&c.via)));
                if !c.unavailable_alternatives.is_empty() {
                    note.push_str(&format!("; {} missing", join(&c.unavailable_alternatives)));
                }
                note.push(')');
            }
            if !c.blocked_by.is_empty() {
                note.push_str(&format!(" (needs {})", join(&c.blocked_by)));
            }
            if !c.missing_not_needed.is_empty() && c.supported == Support::Yes {
                note.push_str(&format!(" (works without {})", join(&c.missing_not_needed)));
            }
            out.push_str(&format!("  {word} {:<cwidth$}  {note}\n", c.name.name()));
        }
        let failed_required: Vec<_> = self
            .features
            .iter()
            .filter(|r| r.required && r.status() != Status::Ok)
            .map(|r| r.name)
            .collect();
        out.push('\n');
        if failed_required.is_empty() {
            out.push_str("Every required feature checked works.\n");
        } else {
            out.push_str(&format!(
                "Required features not working: {}\n",
                join(&failed_required)
            ));
        }
        out
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Computes the capability summary from feature results.
fn summarize(features: &[FeatureResult]) -> Vec<CapabilityResult> {
    let status = |f: Feature| features.iter().find(|r| r.name == f).map(|r| r.status());
    Capability::ALL
        .iter()
        .filter(|c| {
            c.requirements()
                .iter()
                .flat_map(|g| g.iter())
                .any(|&f| status(f).is_some())
        })
        .map(|&c| {
            let mut res = CapabilityResult {
                name: c,
                description: c.description().to_string(),
                supported: Support::Yes,
                via: Vec::new(),
                unavailable_alternatives: Vec::new(),
                blocked_by: Vec::new(),
                missing_not_needed: c
                    .not_needed()
                    .iter()
                    .copied()
                    .filter(|f| status(*f).is_some_and(|s| s != Status::Ok))
                    .collect(),
            };
            let mut unknown = false;
            for group in c.requirements() {
                let working: Vec<Feature> = group
                    .iter()
                    .copied()
                    .filter(|&f| status(f) == Some(Status::Ok))
                    .collect();
                if working.is_empty() {
                    if group.iter().any(|&f| status(f).is_none()) {
                        unknown = true;
                    } else {
                        res.blocked_by.extend(group.iter().copied());
                    }
                } else if group.len() > 1 {
                    res.via.push(working[0]);
                    res.unavailable_alternatives.extend(
                        group
                            .iter()
                            .copied()
                            .filter(|f| status(*f).is_some_and(|s| s != Status::Ok)),
                    );
                }
            }
            res.supported = if !res.blocked_by.is_empty() {
                Support::No
            } else if unknown {
                Support::Unknown
            } else {
                Support::Yes
            };
            res
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(f: Feature, st: Status) -> FeatureResult {
        let o = match st {
            Status::Ok => Outcome::ok("works"),
            Status::Missing => Outcome::missing("absent"),
            Status::Error => Outcome::error("broke"),
        };
        FeatureResult::new(f, o)
    }

    #[test]
    fn alternatives_make_a_capability_supported() {
        let r = Report::from_results(
            vec![
                result(Feature::SoftDirty, Status::Missing),
                result(Feature::DirtyTracking, Status::Ok),
            ],
            1.0,
        );
        let inc = r.capability(Capability::IncrementalDump).unwrap();
        assert_eq!(inc.supported, Support::Yes);
        assert_eq!(inc.via, vec![Feature::DirtyTracking]);
        assert_eq!(inc.unavailable_alternatives, vec![Feature::SoftDirty]);
        // Nothing required was checked-and-broken.
        assert!(r.ok);
        // Capabilities none of whose features were checked are left out.
        assert!(r.capability(Capability::Dump).is_none());
    }

    #[test]
    fn a_failed_required_feature_fails_the_report() {
        let r = Report::from_results(
            vec![
                result(Feature::MmSetMmField, Status::Missing),
                result(Feature::MmSetMmMap, Status::Error),
            ],
            1.0,
        );
        assert!(!r.ok);
        assert_eq!(r.exit_code(), 1);
        let restore = r.capability(Capability::RestoreExactPids).unwrap();
        assert_eq!(restore.supported, Support::No);
        assert_eq!(restore.blocked_by, vec![Feature::MmSetMmMap]);
        assert!(r.get(Feature::MmSetMmMap).unwrap().fix.is_some());
    }

    #[test]
    fn json_round_trips_and_table_puts_required_first() {
        let r = Report::from_results(
            vec![
                result(Feature::SoftDirty, Status::Missing),
                result(Feature::PidfdOpen, Status::Ok),
            ],
            2.0,
        );
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let table = r.render_table(false);
        let req = table.find("Required").unwrap();
        let opt = table.find("Optional").unwrap();
        assert!(req < table.find("pidfd-open").unwrap());
        assert!(opt < table.find("soft-dirty").unwrap());
        assert!(req < opt);
        assert!(!table.contains('\x1b'));
        assert!(r.render_table(true).contains("\x1b[32m"));
    }
}
