//! How a dumped sandbox ends: `stasis dump` returns once the sandbox is
//! killed and removed, and the dump's guard removes its cgroup once the
//! killed processes have exited, keeping the marker `.ending-NAME` in the
//! state directory until then. A new sandbox of that name waits for the
//! marker; a marker whose keeper no longer runs is dropped.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Start time of process `pid` (field 22 of /proc/PID/stat).
fn start_time(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading stat");
    let rest = &s[s.rfind(')').expect("comm") + 2..];
    rest.split_whitespace()
        .nth(19)
        .and_then(|v| v.parse().ok())
        .expect("starttime")
}

fn write_marker(state: &Path, name: &str, pid: u32, start: u64) -> std::path::PathBuf {
    let marker = state.join(format!(".ending-{name}"));
    fs::write(&marker, format!("{pid} {start}\n")).expect("writing the marker");
    marker
}

/// `stasis run -d --name NAME -- sleep 100`.
fn run_named(h: &Harness, name: &str) -> std::process::Output {
    h.command()
        .args(["run", "-d", "--name", name, "--", "sleep", "100"])
        .output()
        .expect("running stasis run")
}

/// A sandbox of a name still ending is waited for: `run` returns only once
/// the keeper named in the marker has ended, and then makes the sandbox.
#[test]
fn a_new_sandbox_of_an_ending_name_waits_for_it() {
    let h = Harness::new("ending-wait");
    let name = h.new_name("next");
    let mut keeper = Command::new("sleep")
        .arg("0.5")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawning the keeper");
    let marker = write_marker(&h.state, &name, keeper.id(), start_time(keeper.id()));
    let t = Instant::now();
    let out = run_named(&h, &name);
    let waited = t.elapsed();
    // The keeper exited before the sandbox was made: reap it now (a zombie
    // still has its start time, so it ended on its own).
    let status = keeper.try_wait().expect("checking the keeper");
    assert!(out.status.success(), "stasis run: {}", describe(&out));
    assert!(
        status.is_some(),
        "stasis run returned after {waited:?} while the ending sandbox's keeper was still running"
    );
    assert!(!marker.exists(), "the marker is gone once its keeper is");
    assert!(h.ps_lists(&name), "the new sandbox runs");
}

/// A marker left by a keeper that no longer runs does not hold the name.
#[test]
fn a_marker_whose_keeper_is_gone_is_dropped() {
    let h = Harness::new("ending-stale");
    let name = h.new_name("next");
    let mut gone = Command::new("true").spawn().expect("spawning true");
    let (pid, start) = (gone.id(), start_time(gone.id()));
    gone.wait().expect("reaping true");
    let marker = write_marker(&h.state, &name, pid, start);
    let t = Instant::now();
    let out = run_named(&h, &name);
    assert!(out.status.success(), "stasis run: {}", describe(&out));
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "a stale marker was waited for"
    );
    assert!(!marker.exists(), "the stale marker was dropped");
    assert!(h.ps_lists(&name), "the new sandbox runs");
}

/// After a dump, its sandbox is gone from `ps` at once, and the ending
/// finishes on its own: the marker goes, and no cgroup of the sandbox is
/// left in any hierarchy.
#[test]
fn a_dumped_sandbox_ends_on_its_own() {
    let h = Harness::new("ending-dump");
    let sb = h.start_c("counter", &[]);
    let _image = h.dump(&sb, &[]);
    assert!(!h.ps_lists(&sb), "the dumped sandbox is gone from ps");
    wait_endings(&h.state);
    let left: Vec<String> = fs::read_dir("/sys/fs/cgroup")
        .expect("listing /sys/fs/cgroup")
        .flatten()
        .flat_map(|hier| {
            fs::read_dir(hier.path().join("stasis"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
        })
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&sb))
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(left.is_empty(), "cgroups left after the ending: {left:?}");
}
