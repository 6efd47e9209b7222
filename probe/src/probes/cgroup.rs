//! Freezing a cgroup: cgroup v2 cgroup.freeze (result read from
//! cgroup.events) and the v1 freezer controller. Each probe makes a cgroup
//! named after its unit process, moves a helper into it, freezes and thaws
//! it, then removes it; the caller removes leftovers after a timeout.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::tracee::Tracee;
use super::STEP;
use crate::feature::Feature::*;
use crate::report::Outcome;
use crate::runner::Unit;
use crate::util::{self, Call, Fail, PResult};

pub(crate) static V2_UNIT: Unit = Unit {
    name: "cgroup-v2",
    features: &[CgroupFreezeV2],
    run: || vec![(CgroupFreezeV2, util::outcome(freeze_v2()))],
    cleanup: Some(cleanup_v2),
};

pub(crate) static V1_UNIT: Unit = Unit {
    name: "cgroup-v1",
    features: &[CgroupFreezerV1],
    run: || vec![(CgroupFreezerV1, util::outcome(freeze_v1()))],
    cleanup: Some(cleanup_v1),
};

fn probe_dir_name(pid: i32) -> String {
    format!("stasis-probe-{pid}")
}

/// Mount points from /proc/self/mountinfo: (mount point, fstype, super options).
fn mounts() -> Vec<(PathBuf, String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mp = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let opts = post.nth(1).unwrap_or_default().to_string();
            Some((PathBuf::from(mp.replace("\\040", " ")), fstype, opts))
        })
        .collect()
}

/// The cgroup2 mount point, if any.
pub(crate) fn cgroup2_mount() -> Option<PathBuf> {
    mounts()
        .into_iter()
        .find(|(_, t, _)| t == "cgroup2")
        .map(|(p, _, _)| p)
}

/// The v1 hierarchy carrying the freezer controller, if mounted.
pub(crate) fn freezer_v1_mount() -> Option<PathBuf> {
    mounts()
        .into_iter()
        .find(|(_, t, o)| t == "cgroup" && o.split(',').any(|x| x == "freezer"))
        .map(|(p, _, _)| p)
}

fn write(path: &Path, v: &str) -> PResult<()> {
    std::fs::write(path, v).call(&format!("write {}", path.display()))
}

/// Polls `check` every 200 us until it is true or `timeout` passes.
fn wait_until(timeout: Duration, mut check: impl FnMut() -> PResult<bool>) -> PResult<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Removes a probe cgroup, retrying while the killed helper is still leaving.
fn remove(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while dir.exists() && std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// "frozen 1" in cgroup.events (the result, not the cgroup.freeze request).
fn frozen_v2(dir: &Path) -> PResult<bool> {
    let ev = util::read_trim(&dir.join("cgroup.events").to_string_lossy())?;
    Ok(ev.lines().any(|l| l == "frozen 1"))
}

/// State letter of a process from /proc/PID/stat.
fn proc_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

fn freeze_v2() -> PResult<Outcome> {
    let mount = cgroup2_mount()
        .ok_or_else(|| Fail::missing("read /proc/self/mountinfo", "no cgroup2 mount"))?;
    let dir = mount.join(probe_dir_name(std::process::id() as i32));
    std::fs::create_dir(&dir).call(&format!("mkdir {}", dir.display()))?;
    let result = (|| {
        if !dir.join("cgroup.freeze").exists() {
            return Err(Fail::missing(
                "stat cgroup.freeze",
                "this cgroup2 has no cgroup.freeze (Linux < 5.2)",
            ));
        }
        let mut t = Tracee::plain()?;
        write(&dir.join("cgroup.procs"), &t.pid.to_string())?;
        write(&dir.join("cgroup.freeze"), "1")?;
        if !wait_until(STEP, || frozen_v2(&dir))? {
            return Err(Fail::error(
                "cgroup.events",
                "the cgroup did not report frozen 1",
            ));
        }
        write(&dir.join("cgroup.freeze"), "0")?;
        if !wait_until(STEP, || Ok(!frozen_v2(&dir)?))? {
            return Err(Fail::error(
                "cgroup.events",
                "the cgroup stayed frozen after thawing",
            ));
        }
        t.release()?;
        match t.wait()? {
            util::Exit::Code(0) => {}
            other => {
                return Err(Fail::error(
                    "thaw",
                    format!("the helper ended with {other:?} after thawing"),
                ))
            }
        }
        Ok(Outcome::ok(format!(
            "froze and thawed a helper in {}; cgroup.events reported frozen 1 and 0",
            mount.display()
        )))
    })();
    remove(&dir);
    result
}

fn freeze_v1() -> PResult<Outcome> {
    let mount = freezer_v1_mount().ok_or_else(|| {
        Fail::missing(
            "read /proc/self/mountinfo",
            "no v1 freezer hierarchy mounted",
        )
    })?;
    let dir = mount.join(probe_dir_name(std::process::id() as i32));
    std::fs::create_dir(&dir).call(&format!("mkdir {}", dir.display()))?;
    let result = (|| {
        let state = dir.join("freezer.state");
        let mut t = Tracee::plain()?;
        write(&dir.join("cgroup.procs"), &t.pid.to_string())?;
        write(&state, "FROZEN")?;
        let frozen = wait_until(STEP, || {
            Ok(util::read_trim(&state.to_string_lossy())? == "FROZEN")
        })?;
        if !frozen {
            return Err(Fail::error(
                "freezer.state",
                "the cgroup did not reach FROZEN",
            ));
        }
        let st = proc_state(t.pid);
        write(&state, "THAWED")?;
        if !wait_until(STEP, || {
            Ok(util::read_trim(&state.to_string_lossy())? == "THAWED")
        })? {
            return Err(Fail::error("freezer.state", "the cgroup did not thaw"));
        }
        t.release()?;
        match t.wait()? {
            util::Exit::Code(0) => {}
            other => {
                return Err(Fail::error(
                    "thaw",
                    format!("the helper ended with {other:?} after thawing"),
                ))
            }
        }
        Ok(Outcome::ok(format!(
            "froze and thawed a helper in {} (state while frozen: {})",
            mount.display(),
            st.unwrap_or('?')
        )))
    })();
    remove(&dir);
    result
}

fn cleanup_v2(unit_pid: i32) {
    if let Some(m) = cgroup2_mount() {
        let dir = m.join(probe_dir_name(unit_pid));
        if dir.exists() {
            let _ = std::fs::write(dir.join("cgroup.freeze"), "0");
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            remove(&dir);
        }
    }
}

fn cleanup_v1(unit_pid: i32) {
    if let Some(m) = freezer_v1_mount() {
        let dir = m.join(probe_dir_name(unit_pid));
        if dir.exists() {
            let _ = std::fs::write(dir.join("freezer.state"), "THAWED");
            remove(&dir);
        }
    }
}
