//! The probe units: which features each covers and how each is exercised.

use std::time::Duration;

use crate::feature::Feature;
use crate::report::{FeatureResult, Outcome, Status};
use crate::runner::{self, Unit};

mod caps;
mod cgroup;
mod dirty;
mod mm;
mod net;
mod ns;
mod pid;
mod procmem;
mod ptrace;
mod tracee;
mod vdso;

/// Deadline for helper processes inside a unit.
pub(crate) const STEP: Duration = Duration::from_secs(2);

fn units() -> Vec<&'static Unit> {
    vec![
        &ptrace::UNIT,
        &procmem::UNIT,
        &mm::UNIT,
        &dirty::UFFD_UNIT,
        &cgroup::V2_UNIT,
        &cgroup::V1_UNIT,
        &ns::NET_UNIT,
        &pid::UNIT,
        &ns::PID_UNIT,
        &ns::MNT_UNIT,
        &ns::SIMPLE_UNIT,
        &ns::TIME_UNIT,
        &ns::USER_UNIT,
        &vdso::UNIT,
        &dirty::SOFT_DIRTY_UNIT,
        &net::UNIT,
        &caps::UNIT,
    ]
}

/// Features computed from other features' results.
fn derived_from(f: Feature) -> &'static [Feature] {
    match f {
        Feature::CgroupFreezer => &[Feature::CgroupFreezeV2, Feature::CgroupFreezerV1],
        _ => &[],
    }
}

/// Runs the units covering `wanted` and returns one result per wanted feature.
pub(crate) fn run(wanted: &[Feature], timeout: Duration) -> Vec<FeatureResult> {
    let mut needed: Vec<Feature> = wanted.to_vec();
    for f in wanted {
        needed.extend_from_slice(derived_from(*f));
    }
    let all = units();
    let selected: Vec<&Unit> = all
        .iter()
        .copied()
        .filter(|u| u.features.iter().any(|f| needed.contains(f)))
        .collect();
    let mut results = runner::run_units(&selected, timeout);
    if needed.contains(&Feature::CgroupFreezer) {
        let o = freezer_summary(&results);
        results.push((Feature::CgroupFreezer, o));
    }
    wanted
        .iter()
        .map(|&f| {
            let o = results
                .iter()
                .find(|(g, _)| *g == f)
                .map(|(_, o)| o.clone())
                .unwrap_or_else(|| Outcome::error("no probe covers this feature"));
            FeatureResult::new(f, o)
        })
        .collect()
}

fn freezer_summary(results: &[(Feature, Outcome)]) -> Outcome {
    let get = |f: Feature| results.iter().find(|(g, _)| *g == f).map(|(_, o)| o);
    let v2 = get(Feature::CgroupFreezeV2).is_some_and(|o| o.is_ok());
    let v1 = get(Feature::CgroupFreezerV1).is_some_and(|o| o.is_ok());
    let o = match (v2, v1) {
        (true, true) => Outcome::ok("cgroup v2 cgroup.freeze and v1 freezer.state both work"),
        (true, false) => Outcome::ok("cgroup v2 cgroup.freeze works (no v1 freezer)"),
        (false, true) => Outcome::ok("cgroup v1 freezer.state works (no cgroup2 freeze)"),
        (false, false) => {
            let any_error = [Feature::CgroupFreezeV2, Feature::CgroupFreezerV1]
                .iter()
                .any(|&f| get(f).is_some_and(|o| o.status == Status::Error));
            if any_error {
                Outcome::error("neither cgroup freezer could be checked (see cgroup-freeze-v2, cgroup-freezer-v1)")
            } else {
                Outcome::missing("neither cgroup v2 cgroup.freeze nor the v1 freezer works")
            }
        }
    };
    o.with("v2", v2).with("v1", v1)
}
