//! A sandbox's cgroup, on whatever layout the host has: pure cgroup2, or v1
//! controllers with (or without) a cgroup2 hierarchy beside them.
//!
//! The cgroup is made in every hierarchy the sandbox uses: the cgroup2 one
//! (freezing with `cgroup.freeze`, killing with `cgroup.kill`, and on a pure
//! cgroup2 host counting and limits) and the v1 `memory`, `pids` and, when the
//! v1 freezer is chosen, `freezer` controllers.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::profile::{CgroupSettings, FreezerChoice};

/// How long freeze and thaw wait for the kernel to report the new state.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error("no cgroup freezer: neither a cgroup2 hierarchy nor the v1 freezer controller is mounted (feature: cgroup-freezer)")]
    NoHierarchy,
    #[error("cgroup freezer {0} is not available on this host (feature: {feature})", feature = freezer_feature(.0))]
    NoFreezer(&'static str),
    #[error("cgroup {path}: the `{controller}` controller is not available for the limit {key}")]
    NoController {
        path: PathBuf,
        controller: &'static str,
        key: &'static str,
    },
    #[error("cgroup {path}: the kernel did not report {state} within {timeout:?}")]
    Timeout {
        path: PathBuf,
        state: &'static str,
        timeout: Duration,
    },
    #[error("cgroup {path} already exists (a sandbox of this name is still present)")]
    Exists { path: PathBuf },
}

type Result<T> = std::result::Result<T, CgroupError>;

/// The `stasis check` feature behind a freezer version.
fn freezer_feature(v: &str) -> &'static str {
    if v == "v2" {
        "cgroup-freeze-v2"
    } else {
        "cgroup-freezer-v1"
    }
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Which freezer a cgroup uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Freezer {
    V2,
    V1,
}

/// The cgroup hierarchies mounted on this host.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// The cgroup2 mount point, if any.
    pub unified: Option<PathBuf>,
    /// v1 mount point by controller name.
    pub v1: BTreeMap<String, PathBuf>,
}

/// Moves the calling process into the cgroup it is already in (changing
/// nothing), so that the kernel's cgroup migration lock, which every move
/// takes for writing, switches to its writer mode now: the first writer
/// after a quiet spell waits for an RCU grace period (10-40 ms here), and
/// writers within about a grace period after it do not. A process that
/// will move a new sandbox's init soon (restore, whose image takes tens of
/// milliseconds to read first) has a helper call this at its start, so the
/// grace period passes meanwhile. Best effort: errors are ignored.
pub fn start_migration_grace_period() {
    let Ok(layout) = Layout::detect() else {
        return;
    };
    let Ok(own) = fs::read_to_string("/proc/self/cgroup") else {
        return;
    };
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let root = if ctrls.is_empty() {
            layout.unified.as_ref()
        } else {
            ctrls.split(',').find_map(|c| layout.v1.get(c))
        };
        let Some(root) = root else {
            continue;
        };
        let procs = root.join(path.trim_start_matches('/')).join("cgroup.procs");
        // "0": the writing process. One hierarchy is enough: the lock is global.
        if fs::write(&procs, "0").is_ok() {
            return;
        }
    }
}

impl Layout {
    /// Reads the mounted hierarchies from /proc/self/mountinfo.
    pub fn detect() -> Result<Layout> {
        let p = Path::new("/proc/self/mountinfo");
        let text = fs::read_to_string(p).map_err(io_err(p, "read"))?;
        Ok(Layout::parse(&text))
    }

    fn parse(mountinfo: &str) -> Layout {
        let mut layout = Layout::default();
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 5 || post.len() < 3 {
                continue;
            }
            // Only hierarchies mounted at their root are usable as a base.
            if pre[3] != "/" {
                continue;
            }
            let mount = PathBuf::from(unescape(pre[4]));
            match post[0] {
                "cgroup2" if layout.unified.is_none() => layout.unified = Some(mount),
                "cgroup" => {
                    for opt in post[2].split(',') {
                        if matches!(opt, "memory" | "pids" | "freezer") {
                            layout.v1.entry(opt.to_string()).or_insert(mount.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        layout
    }

    /// True when the only hierarchy is cgroup2 (no v1 controller we use).
    pub fn is_pure_v2(&self) -> bool {
        self.unified.is_some() && self.v1.is_empty()
    }
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A sandbox's cgroup: one directory per hierarchy used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    /// Directory in the cgroup2 hierarchy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v2: Option<PathBuf>,
    /// Directory per v1 controller (`memory`, `pids`, `freezer`).
    #[serde(default)]
    pub v1: BTreeMap<String, PathBuf>,
    /// Which freezer this cgroup uses.
    pub freezer: Freezer,
    /// Whether the cgroup2 directory has the memory and pids controllers.
    #[serde(default)]
    pub v2_controllers: bool,
}

impl Cgroup {
    /// Makes the cgroup `settings.parent/name` in every hierarchy the sandbox
    /// uses and applies the limits. On error nothing is left behind.
    pub fn create(name: &str, settings: &CgroupSettings) -> Result<Cgroup> {
        let layout = Layout::detect()?;
        Cgroup::create_in(&layout, name, settings)
    }

    /// The cgroup [`Cgroup::create`] would make for `name`, without making
    /// anything: its directories, for whoever must remove them should the
    /// creator die while it makes them.
    pub fn plan(name: &str, settings: &CgroupSettings) -> Result<Cgroup> {
        let layout = Layout::detect()?;
        let mut cg = Cgroup::empty(&layout, settings)?;
        cg.make_dirs(&layout, name, settings, false)?;
        Ok(cg)
    }

    fn empty(layout: &Layout, settings: &CgroupSettings) -> Result<Cgroup> {
        let freezer = match settings.freezer {
            FreezerChoice::V2 if layout.unified.is_none() => {
                return Err(CgroupError::NoFreezer("v2"))
            }
            FreezerChoice::V1 if !layout.v1.contains_key("freezer") => {
                return Err(CgroupError::NoFreezer("v1"))
            }
            FreezerChoice::V2 => Freezer::V2,
            FreezerChoice::V1 => Freezer::V1,
            FreezerChoice::Auto if layout.unified.is_some() => Freezer::V2,
            FreezerChoice::Auto if layout.v1.contains_key("freezer") => Freezer::V1,
            FreezerChoice::Auto => return Err(CgroupError::NoHierarchy),
        };
        Ok(Cgroup {
            v2: None,
            v1: BTreeMap::new(),
            freezer,
            v2_controllers: false,
        })
    }

    /// Like [`Cgroup::create`], on a given layout.
    pub fn create_in(layout: &Layout, name: &str, settings: &CgroupSettings) -> Result<Cgroup> {
        let mut cg = Cgroup::empty(layout, settings)?;
        let r = cg.make_dirs(layout, name, settings, true);
        if let Err(e) = r {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// Makes the directories (or, without `create`, only records them).
    fn make_dirs(
        &mut self,
        layout: &Layout,
        name: &str,
        s: &CgroupSettings,
        create: bool,
    ) -> Result<()> {
        if !create {
            if let Some(root) = &layout.unified {
                self.v2 = Some(root.join(&s.parent).join(name));
            }
            let mut wanted = vec!["memory", "pids"];
            if self.freezer == Freezer::V1 {
                wanted.push("freezer");
            }
            for ctrl in wanted {
                if let Some(root) = layout.v1.get(ctrl) {
                    self.v1
                        .insert(ctrl.to_string(), root.join(&s.parent).join(name));
                }
            }
            return Ok(());
        }
        if let Some(root) = &layout.unified {
            let parent = root.join(&s.parent);
            fs::create_dir_all(&parent).map_err(io_err(&parent, "mkdir"))?;
            if layout.is_pure_v2() {
                // Delegate memory and pids down to the sandbox's cgroup. The
                // parents hold no processes, so this is allowed (the root is exempt).
                self.v2_controllers = enable_controllers(root, &s.parent);
            }
            let dir = parent.join(name);
            mkdir_new(&dir)?;
            self.v2 = Some(dir);
        }
        let mut wanted = vec!["memory", "pids"];
        if self.freezer == Freezer::V1 {
            wanted.push("freezer");
        }
        for ctrl in wanted {
            let Some(root) = layout.v1.get(ctrl) else {
                continue;
            };
            let parent = root.join(&s.parent);
            fs::create_dir_all(&parent).map_err(io_err(&parent, "mkdir"))?;
            let dir = parent.join(name);
            mkdir_new(&dir)?;
            self.v1.insert(ctrl.to_string(), dir);
        }
        if let Some(m) = s.memory_max {
            let (file, dir) = self
                .limit_file("memory", "memory.max", "memory.limit_in_bytes")
                .ok_or_else(|| CgroupError::NoController {
                    path: self.any_dir(),
                    controller: "memory",
                    key: "cgroup.memory_max",
                })?;
            write_file(&dir.join(file), &m.0.to_string())?;
        }
        if let Some(p) = s.pids_max {
            let (file, dir) = self
                .limit_file("pids", "pids.max", "pids.max")
                .ok_or_else(|| CgroupError::NoController {
                    path: self.any_dir(),
                    controller: "pids",
                    key: "cgroup.pids_max",
                })?;
            write_file(&dir.join(file), &p.to_string())?;
        }
        Ok(())
    }

    /// Where a controller's file lives: v1 directory, else the cgroup2 one when
    /// it has the controllers.
    fn limit_file(
        &self,
        ctrl: &str,
        v2_name: &'static str,
        v1_name: &'static str,
    ) -> Option<(&'static str, PathBuf)> {
        if let Some(d) = self.v1.get(ctrl) {
            return Some((v1_name, d.clone()));
        }
        if self.v2_controllers {
            return self.v2.clone().map(|d| (v2_name, d));
        }
        None
    }

    /// One directory of the cgroup (the cgroup2 one where there is one).
    pub fn any_dir(&self) -> PathBuf {
        self.v2
            .clone()
            .or_else(|| self.v1.values().next().cloned())
            .unwrap_or_default()
    }

    /// All directories of this cgroup.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.v2.iter().chain(self.v1.values()).cloned().collect()
    }

    /// Moves a process (host PID) into the cgroup, in every hierarchy.
    ///
    /// A move takes the kernel's cgroup threadgroup rwsem for writing, and the
    /// first writer after a quiet spell waits for an RCU grace period
    /// (10-40 ms measured here, the bulk of a small sandbox's start); later
    /// moves within about a grace period are fast. A child forked straight
    /// into the cgroup2 directory ([`Cgroup::v2_fd`] with
    /// `CLONE_INTO_CGROUP`) needs no move there: see [`Cgroup::add_pid_v1`].
    pub fn add_pid(&self, pid: i32) -> Result<()> {
        for d in self.dirs() {
            write_file(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Moves a process (host PID) into the cgroup's v1 directories only, for
    /// a process already born in its cgroup2 directory.
    pub fn add_pid_v1(&self, pid: i32) -> Result<()> {
        for d in self.v1.values() {
            write_file(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The cgroup2 directory, opened for `clone3(CLONE_INTO_CGROUP)`.
    pub fn v2_fd(&self) -> Result<Option<std::os::fd::OwnedFd>> {
        use std::os::unix::fs::OpenOptionsExt;
        let Some(d) = &self.v2 else {
            return Ok(None);
        };
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(d)
            .map_err(io_err(d, "open"))?;
        Ok(Some(f.into()))
    }

    fn freezer_dir(&self) -> Result<PathBuf> {
        match self.freezer {
            Freezer::V2 => self.v2.clone().ok_or(CgroupError::NoFreezer("v2")),
            Freezer::V1 => self
                .v1
                .get("freezer")
                .cloned()
                .ok_or(CgroupError::NoFreezer("v1")),
        }
    }

    /// Freezes every task of the cgroup and waits until the kernel reports the
    /// cgroup frozen (v2: `frozen 1` in cgroup.events; v1: freezer.state FROZEN).
    pub fn freeze(&self) -> Result<()> {
        self.set_frozen(true)
    }

    /// Thaws the cgroup and waits until the kernel reports it thawed.
    pub fn thaw(&self) -> Result<()> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<()> {
        let dir = self.freezer_dir()?;
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        match self.freezer {
            Freezer::V2 => {
                write_file(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
                let events = dir.join("cgroup.events");
                loop {
                    if self.v2_frozen_event(&events)? == frozen {
                        return Ok(());
                    }
                    wait_for_change(&events, deadline).map_err(|_| CgroupError::Timeout {
                        path: dir.clone(),
                        state: if frozen { "frozen 1" } else { "frozen 0" },
                        timeout: FREEZE_TIMEOUT,
                    })?;
                }
            }
            Freezer::V1 => {
                let state = dir.join("freezer.state");
                let want = if frozen { "FROZEN" } else { "THAWED" };
                write_file(&state, want)?;
                // Reading freezer.state drives the v1 FREEZING -> FROZEN step.
                let mut pause = Duration::from_micros(100);
                loop {
                    let now = read_file(&state)?;
                    if now.trim() == want {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        return Err(CgroupError::Timeout {
                            path: dir,
                            state: want,
                            timeout: FREEZE_TIMEOUT,
                        });
                    }
                    if frozen {
                        // Ask again: tasks that were busy are retried on write.
                        write_file(&state, want)?;
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
            }
        }
    }

    fn v2_frozen_event(&self, events: &Path) -> Result<bool> {
        let text = read_file(events)?;
        Ok(text
            .lines()
            .any(|l| l.split_once(' ') == Some(("frozen", "1"))))
    }

    /// Whether the kernel reports the cgroup frozen (not merely requested).
    pub fn is_frozen(&self) -> Result<bool> {
        let dir = self.freezer_dir()?;
        match self.freezer {
            Freezer::V2 => self.v2_frozen_event(&dir.join("cgroup.events")),
            Freezer::V1 => Ok(read_file(&dir.join("freezer.state"))?.trim() == "FROZEN"),
        }
    }

    /// Host PIDs of every process in the cgroup, in the cgroups the
    /// workload made below it too.
    pub fn procs(&self) -> Result<Vec<i32>> {
        let mut all = Vec::new();
        let mut dirs = Vec::new();
        for d in self.dirs() {
            below(&d, &mut dirs);
            dirs.push(d);
        }
        for d in dirs {
            match read_file(&d.join("cgroup.procs")) {
                Ok(t) => all.extend(t.lines().filter_map(|l| l.trim().parse::<i32>().ok())),
                Err(CgroupError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    /// Memory charged to the cgroup, in bytes, when a memory controller counts it.
    pub fn memory_bytes(&self) -> Option<u64> {
        let (file, dir) = self.limit_file("memory", "memory.current", "memory.usage_in_bytes")?;
        read_file(&dir.join(file)).ok()?.trim().parse().ok()
    }

    /// Number of tasks (threads) in the cgroup, when a pids controller counts them.
    pub fn pids_current(&self) -> Option<u64> {
        let (file, dir) = self.limit_file("pids", "pids.current", "pids.current")?;
        read_file(&dir.join(file)).ok()?.trim().parse().ok()
    }

    /// Kills every process in the cgroup with SIGKILL and waits (bounded) until
    /// the cgroup is empty.
    pub fn kill_all(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pause = Duration::from_micros(200);
        loop {
            self.sigkill_all()?;
            if self.procs()?.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::Timeout {
                    path: self.any_dir(),
                    state: "empty after SIGKILL",
                    timeout: Duration::from_secs(10),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Sends SIGKILL to every process of the cgroup once (through
    /// `cgroup.kill` too where cgroup2 has it), without waiting for anything;
    /// a v1-frozen cgroup is thawed so that the SIGKILL is acted on.
    pub fn sigkill_all(&self) -> Result<()> {
        if let Some(d) = &self.v2 {
            let k = d.join("cgroup.kill");
            if k.exists() {
                write_file(&k, "1")?;
            }
        }
        for p in self.procs()? {
            // SAFETY: kill(2) with a PID read from the cgroup and a valid signal.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        if self.freezer == Freezer::V1 {
            if let Some(d) = self.v1.get("freezer") {
                let _ = write_file(&d.join("freezer.state"), "THAWED");
            }
        }
        Ok(())
    }

    /// Removes the cgroup's directories, waiting (bounded) for exiting tasks to
    /// leave. Directories already gone are fine.
    pub fn remove(&self) -> Result<()> {
        self.remove_within(Duration::from_secs(10))
    }

    /// [`Cgroup::remove`], waiting up to `timeout` for the tasks to leave.
    /// The cgroups the workload made below its own go first, deepest first.
    pub fn remove_within(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut dirs = Vec::new();
        for d in self.dirs() {
            below(&d, &mut dirs);
            dirs.push(d);
        }
        for d in dirs {
            let mut pause = Duration::from_micros(200);
            loop {
                match fs::remove_dir(&d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
                    {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(20));
                    }
                    Err(e) => {
                        return Err(CgroupError::Io {
                            path: d.clone(),
                            op: "rmdir",
                            source: e,
                        })
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes those of the cgroup's directories that exist and are empty
    /// (no process, no cgroup below), touching nothing else: what a creator
    /// that died while making them leaves.
    pub fn remove_if_empty(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .filter(|d| fs::remove_dir(d).is_ok())
            .collect()
    }

    /// Whether any of the cgroup's directories still exists.
    pub fn exists(&self) -> bool {
        self.dirs().iter().any(|d| d.exists())
    }
}

/// Every cgroup below `dir`, deepest first (children before their
/// parents), appended to `out`. Bounded in depth and count: a workload
/// cannot make stasis walk forever.
fn below(dir: &Path, out: &mut Vec<PathBuf>) {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
        if depth > 32 || out.len() > 65536 {
            return;
        }
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                let p = e.path();
                walk(&p, depth + 1, out);
                out.push(p);
            }
        }
    }
    walk(dir, 0, out)
}

fn mkdir_new(dir: &Path) -> Result<()> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(CgroupError::Exists {
            path: dir.to_path_buf(),
        }),
        Err(e) => Err(CgroupError::Io {
            path: dir.to_path_buf(),
            op: "mkdir",
            source: e,
        }),
    }
}

/// Enables +memory +pids in the subtree_control of the root and of each
/// directory of `parent`. Returns whether both ended up available.
fn enable_controllers(root: &Path, parent: &str) -> bool {
    let mut dir = root.to_path_buf();
    let mut ok = true;
    let comps: Vec<&str> = parent.split('/').collect();
    for i in 0..=comps.len() {
        let avail = read_file(&dir.join("cgroup.controllers")).unwrap_or_default();
        for c in ["memory", "pids"] {
            if !avail.split_whitespace().any(|a| a == c) {
                ok = false;
                continue;
            }
            if let Err(e) = write_file(&dir.join("cgroup.subtree_control"), &format!("+{c}")) {
                tracing::debug!("enabling {c} in {}: {e}", dir.display());
                ok = false;
            }
        }
        if i < comps.len() {
            dir = dir.join(comps[i]);
        }
    }
    ok
}

fn write_file(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(io_err(path, "write"))
}

fn read_file(path: &Path) -> Result<String> {
    let mut s = String::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .map_err(io_err(path, "read"))?;
    Ok(s)
}

/// Waits until `cgroup.events` changes (the kernel signals it with POLLPRI) or
/// the deadline passes.
fn wait_for_change(events: &Path, deadline: Instant) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(events)?;
    let mut buf = [0u8; 256];
    // A first read arms the notification.
    let _ = (&f).read(&mut buf)?;
    let now = Instant::now();
    if now >= deadline {
        return Err(io::Error::from(io::ErrorKind::TimedOut));
    }
    // Poll in short slices so that a change between our read of the state and
    // arming the notification is still seen promptly.
    let slice = (deadline - now).min(Duration::from_millis(50));
    let mut pfd = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLPRI,
        revents: 0,
    };
    // SAFETY: one valid pollfd for an fd we own, for the duration of the call.
    let r = unsafe { libc::poll(&mut pfd, 1, slice.as_millis() as i32) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_layout() {
        let mi = "\
30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
35 30 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
37 30 0:33 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
38 30 0:34 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
";
        let l = Layout::parse(mi);
        assert_eq!(
            l.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(l.v1.len(), 3);
        assert!(!l.is_pure_v2());
    }

    #[test]
    fn pure_v2_create_and_undo() {
        // A stand-in cgroup2 tree in a temporary directory: no controllers to
        // delegate, so a memory limit cannot be honoured and nothing may stay.
        let root = tempfile::tempdir().unwrap();
        let layout = Layout {
            unified: Some(root.path().to_path_buf()),
            v1: BTreeMap::new(),
        };
        let mut s = CgroupSettings::default();
        let cg = Cgroup::create_in(&layout, "a", &s).unwrap();
        assert_eq!(cg.freezer, Freezer::V2);
        assert_eq!(cg.dirs(), vec![root.path().join("stasis/a")]);
        assert!(cg.v1.is_empty());
        assert!(matches!(
            Cgroup::create_in(&layout, "a", &s),
            Err(CgroupError::Exists { .. })
        ));
        s.memory_max = Some(crate::profile::ByteSize(1 << 20));
        let e = Cgroup::create_in(&layout, "b", &s).unwrap_err();
        assert!(e.to_string().contains("cgroup.memory_max"), "{e}");
        assert!(!root.path().join("stasis/b").exists());
        s.memory_max = None;
        s.freezer = FreezerChoice::V1;
        assert!(matches!(
            Cgroup::create_in(&layout, "c", &s),
            Err(CgroupError::NoFreezer("v1"))
        ));
    }

    #[test]
    fn pure_v2_layout() {
        let mi = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let l = Layout::parse(mi);
        assert!(l.is_pure_v2());
    }
}
