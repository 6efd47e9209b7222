//! Deterministic fault points for the reliability tests (docs/reliability.md).
//!
//! `STASIS_TEST_PAUSE_AT=<phase>:<readyfile>`: when the process reaches
//! `pause_point(<phase>)`, it writes `<readyfile>` (atomically) and waits
//! there until it is killed, so that a test can SIGKILL it at exactly that
//! phase. `STASIS_TEST_FAIL_AT=<point>`: `fail_point(<point>)` returns true,
//! and the caller provokes the failure that point stands for.
//!
//! Both read the environment once per process; when the variables are unset
//! a call costs one check of a cached value.

use std::path::PathBuf;
use std::sync::OnceLock;

/// Every phase `STASIS_TEST_PAUSE_AT` can name: the dump's (answered by
/// `interrupt::pause_at`, which also takes SIGUSR1 to go on; at `live-copy`,
/// after a `--leave-running` dump released the workload and before it copies
/// the first page, write faults are served while it waits) and restore's.
pub const PHASES: [&str; 8] = [
    "freeze",
    "collect",
    "write",
    "live-copy",
    "sandbox-cgroup",
    "restore-launch",
    "restore-tree",
    "restore-rebuild",
];

/// The phase and ready file `STASIS_TEST_PAUSE_AT` names, read once.
pub(crate) fn pause_spec() -> Option<&'static (String, PathBuf)> {
    static SPEC: OnceLock<Option<(String, PathBuf)>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let v = std::env::var("STASIS_TEST_PAUSE_AT").ok()?;
        let (phase, ready) = v.split_once(':')?;
        Some((phase.to_string(), PathBuf::from(ready)))
    })
    .as_ref()
}

/// Pauses for good at `phase` when `STASIS_TEST_PAUSE_AT` names it, after
/// writing the ready file. Never returns in that case.
pub fn pause_point(phase: &str) {
    let Some((want, ready)) = pause_spec() else {
        return;
    };
    if want != phase {
        return;
    }
    let tmp = ready.with_extension("stasis-tmp");
    if std::fs::write(&tmp, phase).is_ok() {
        let _ = std::fs::rename(&tmp, ready);
    }
    loop {
        // SAFETY: pause has no arguments; it returns only after a handled signal.
        unsafe { libc::pause() };
    }
}

/// Whether `STASIS_TEST_FAIL_AT` names `point`.
pub fn fail_point(point: &str) -> bool {
    static SPEC: OnceLock<Option<String>> = OnceLock::new();
    SPEC.get_or_init(|| std::env::var("STASIS_TEST_FAIL_AT").ok())
        .as_deref()
        .is_some_and(|v| v == point)
}
