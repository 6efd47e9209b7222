//! A sandbox and its state directory.
//!
//! Layout of `STATE_DIR/NAME/`: `profile.toml` (the profile used),
//! `state.json` (init's and the workload's PIDs with their start times, the
//! cgroup, the veth, the command), `log` (the workload's stdout and stderr),
//! `lock` (flock'ed by operations that must not overlap), `main.json`
//! (written by init when the process it started has exited and another one
//! of the sandbox is its main process now) and `exit.json` (written by init
//! when the sandbox's last process has exited).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;
use crate::clone::{clone_with_namespaces, Forked};
use crate::guard::{Guard, Made};
use crate::init::{init_main, ExitRecord, InitSetup, Launch, MainRecord, Report};
use crate::netlink::Rtnl;
use crate::profile::Profile;
use crate::{Error, Result};

/// Where sandboxes keep their state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/stasis";

/// How long `kill` waits for init to go.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// What `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    name: String,
    command: Vec<String>,
    /// Creation time, seconds since the epoch.
    created: u64,
    init_pid: i32,
    /// Start time of init (field 22 of /proc/PID/stat), to tell a reused PID.
    init_start: u64,
    workload_pid: Option<i32>,
    workload_ns_pid: Option<i32>,
    workload_start: Option<u64>,
    cgroup: Cgroup,
    veth_host: Option<String>,
    /// Whether the workload fields name a process init adopted (named in
    /// `main.json`, or restored as such), not the one it started.
    #[serde(default)]
    main_adopted: bool,
}

/// A sandbox's state as `stasis ps` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running,
    Frozen,
    /// The sandbox's init is gone. The record is None when init did not get
    /// to write it (it was killed).
    Exited(Option<ExitRecord>),
}

impl Status {
    /// The exit status a shell would report for an exited sandbox (137 when
    /// init was killed before recording one).
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Status::Exited(Some(r)) => Some(r.shell_code()),
            Status::Exited(None) => Some(128 + libc::SIGKILL),
            _ => None,
        }
    }
}

/// An exclusive flock on a sandbox's lock file, released on drop.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

/// A sandbox: its state directory, cgroup, and (while running) init.
#[derive(Debug)]
pub struct Sandbox {
    dir: PathBuf,
    profile: Profile,
    state: State,
    /// pidfd of init when this process created the sandbox (init is our child).
    child: Option<OwnedFd>,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Sys { what, source }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks a sandbox name: 1 to 64 of `[A-Za-z0-9_.-]`, starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn random_name() -> String {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most b.len() bytes into the buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id();
        b = t.to_le_bytes();
    }
    format!("sb-{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3])
}

/// The host end's interface name for a sandbox: `st-NAME` when short enough
/// and under the default state directory, else `st-` and a hash of the
/// sandbox's state directory.
fn default_veth_host(dir: &Path, name: &str) -> String {
    if name.len() <= 12 && dir.parent() == Some(Path::new(DEFAULT_STATE_DIR)) {
        return format!("st-{name}");
    }
    format!("st-{}", short_hash(&dir.to_string_lossy(), 12))
}

/// A short hash (FNV-1a) of a string, as hex.
fn short_hash(s: &str, hex_digits: usize) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    let full = format!("{h:016x}");
    full[..hex_digits.min(16)].to_string()
}

/// The sandbox's cgroup directory name: its name under the default state
/// directory, else the name and a hash of the state directory, so that
/// sandboxes of the same name under different state directories do not clash.
fn leaf_name(dir: &Path, name: &str) -> String {
    match dir.parent() {
        Some(p) if p == Path::new(DEFAULT_STATE_DIR) => name.to_string(),
        Some(p) => format!("{name}-{}", short_hash(&p.to_string_lossy(), 8)),
        None => name.to_string(),
    }
}

/// Start time of a process (clock ticks since boot), or None when it does not exist.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    // Fields after the command start at field 3; starttime is field 22.
    rest.split(' ').nth(19)?.parse().ok()
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn pidfd_send_signal(fd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: a pidfd we own, a signal number, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until a pidfd reports its process gone (or another fd has something
/// to read), or the timeout passes.
fn wait_pidfd(fd: &OwnedFd, timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                left.as_millis().min(i32::MAX as u128) as i32
            }
        };
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r > 0 {
            return Ok(true);
        }
        if r == 0 {
            return Ok(false);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are new and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Replaces `path` atomically (readers see the old or the new contents). No
/// fsync: a sandbox's state describes processes that a crash of the machine
/// ends anyway, so it need not outlive one, and on a disk-backed state
/// directory each fsync costs milliseconds on the path of every run, dump and
/// restore.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    f.write_all(data).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename into place", path))
}

/// What a failed `create` must undo, in reverse order.
struct Undo {
    dir: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    init: Option<(i32, OwnedFd)>,
    veth: Option<String>,
}

impl Undo {
    fn run(&mut self) {
        if let Some((pid, fd)) = self.init.take() {
            let _ = pidfd_send_signal(&fd, libc::SIGKILL);
            let mut st = 0;
            // SAFETY: reaping our own child, init.
            unsafe { libc::waitpid(pid, &mut st, 0) };
        }
        if let Some(v) = self.veth.take() {
            if let Ok(mut nl) = Rtnl::open() {
                let _ = nl.delete_link(&v);
            }
        }
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.kill_all();
            let _ = cg.remove();
        }
        if let Some(d) = self.dir.take() {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// How long a new sandbox waits for an ending one of the same name.
const ENDING_WAIT: Duration = Duration::from_secs(60);

/// A sandbox killed by [`Sandbox::kill_and_leave`] whose processes may still
/// be exiting: its cgroup, and the marker `.ending-NAME` in the state
/// directory that holds back a new sandbox of the same name until the
/// cgroup is gone. The marker names the process that will remove both.
#[derive(Debug, Clone)]
pub struct Ending {
    cgroup: Cgroup,
    marker: PathBuf,
}

impl Ending {
    fn marker_path(state_dir: &Path, name: &str) -> PathBuf {
        state_dir.join(format!(".ending-{name}"))
    }

    /// Waits (up to `timeout`) for the killed processes to leave the cgroup,
    /// removes it, then the marker (also when the cgroup could not be
    /// removed: a new sandbox of the name then says why it cannot start).
    pub fn finish(&self, timeout: Duration) -> Result<()> {
        let r = self.cgroup.remove_within(timeout);
        let _ = fs::remove_file(&self.marker);
        r.map_err(Error::from)
    }

    /// Waits (up to `timeout`) until no sandbox named `name` is ending. A
    /// marker whose keeper no longer runs is stale: it is removed.
    fn wait_for(state_dir: &Path, name: &str, timeout: Duration) -> Result<()> {
        let marker = Ending::marker_path(state_dir, name);
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(200);
        loop {
            let Ok(text) = fs::read_to_string(&marker) else {
                return Ok(());
            };
            let mut it = text.split_whitespace().map(|t| t.parse::<u64>().ok());
            let keeper = it.next().flatten().and_then(|p| i32::try_from(p).ok());
            let started = it.next().flatten();
            // A zombie keeper has ended: only its parent has not seen it yet.
            let alive = keeper.is_some_and(|p| p > 0 && start_time(p) == started && !is_zombie(p));
            if !alive {
                let _ = fs::remove_file(&marker);
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::StillEnding {
                    name: name.to_string(),
                    secs: timeout.as_secs(),
                    marker,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }
}

impl Sandbox {
    /// Creates a sandbox and starts its workload. See the crate docs.
    ///
    /// The calling process must be single-threaded (init is a fork of it).
    /// A taken name is refused before anything is made. On any error,
    /// everything made so far is undone.
    pub fn create(
        state_dir: &Path,
        name: Option<&str>,
        profile: &Profile,
        launch: Launch,
    ) -> Result<Sandbox> {
        Sandbox::create_guarded(state_dir, name, profile, launch, None)
    }

    /// [`Sandbox::create`], telling `guard`'s watcher about everything it
    /// makes as soon as it exists, so that the watcher can remove it all if
    /// the calling process dies before it disarms the guard.
    pub fn create_guarded(
        state_dir: &Path,
        name: Option<&str>,
        profile: &Profile,
        launch: Launch,
        guard: Option<&Guard>,
    ) -> Result<Sandbox> {
        let name = match name {
            Some(n) if !valid_name(n) => return Err(Error::BadName(n.to_string())),
            Some(n) => n.to_string(),
            None => random_name(),
        };
        profile
            .validate()
            .map_err(|(key, message)| Error::ProfileValue { key, message })?;
        let threads = crate::clone::thread_count().map_err(sys_err("count threads"))?;
        if threads != 1 {
            return Err(Error::Sys {
                what: "create a sandbox".into(),
                source: io::Error::other(format!(
                    "the calling process has {threads} threads; init can only be forked from a single-threaded process"
                )),
            });
        }
        // Only root may look into the state: it holds the workloads' logs.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io_err("create state directory", state_dir))?;
        // Absolute, so that the recorded paths and the names derived from it
        // do not depend on the working directory.
        let state_dir = &fs::canonicalize(state_dir).map_err(io_err("resolve", state_dir))?;
        let dir = state_dir.join(&name);
        if let Some(g) = guard {
            g.note(&Made::DirPlanned(dir.clone()));
        }
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::NameTaken { name, dir })
            }
            Err(e) => return Err(io_err("create state directory", &dir)(e)),
        }
        if let Some(g) = guard {
            g.note(&Made::Dir(dir.clone()));
        }
        if let Err(e) = Ending::wait_for(state_dir, &name, ENDING_WAIT) {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        let mut undo = Undo {
            dir: Some(dir.clone()),
            cgroup: None,
            init: None,
            veth: None,
        };
        let r = Sandbox::create_in(&dir, &name, profile, launch, &mut undo, guard);
        if r.is_err() {
            undo.run();
        }
        r
    }

    fn create_in(
        dir: &Path,
        name: &str,
        profile: &Profile,
        launch: Launch,
        undo: &mut Undo,
        guard: Option<&Guard>,
    ) -> Result<Sandbox> {
        let note = |m: Made| {
            if let Some(g) = guard {
                g.note(&m);
            }
        };
        let command = match &launch {
            Launch::Command(c) => c.clone(),
            Launch::Custom(_) => vec!["(restored)".to_string()],
        };
        if matches!(&launch, Launch::Command(c) if c.is_empty()) {
            return Err(Error::Exec(crate::ExecFailure {
                errno: libc::ENOENT,
                message: "no command given".into(),
            }));
        }
        write_atomic(&dir.join("profile.toml"), profile.to_toml().as_bytes())?;
        let lock = dir.join("lock");
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock)
            .map_err(io_err("create", &lock))?;
        let log_path = dir.join("log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&log_path)
            .map_err(io_err("open log", &log_path))?;
        let devnull = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/null")
            .map_err(io_err("open", Path::new("/dev/null")))?;
        let state_fd = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
            .map_err(io_err("open state directory", dir))?;

        // The watcher hears of the cgroup before it exists: a creator killed
        // at any instant leaves none behind.
        if guard.is_some() {
            note(Made::CgroupPlanned(Cgroup::plan(
                &leaf_name(dir, name),
                &profile.cgroup,
            )?));
        }
        let cgroup = Cgroup::create(&leaf_name(dir, name), &profile.cgroup)?;
        crate::guard::pause_point("sandbox-cgroup");
        undo.cgroup = Some(cgroup.clone());
        note(Made::Cgroup(cgroup.clone()));

        let veth_host = profile.network.veth.as_ref().map(|v| {
            v.host_name
                .clone()
                .unwrap_or_else(|| default_veth_host(dir, name))
        });
        let mut nl = None;
        if let Some(h) = &veth_host {
            let mut n = Rtnl::open()?;
            if n.link_index(h)?.is_some() {
                return Err(Error::Setup {
                    step: "network".into(),
                    message: format!("host interface {h} already exists (network.veth.host_name)"),
                });
            }
            nl = Some(n);
        }

        let (go_r, go_w) = pipe().map_err(sys_err("pipe"))?;
        let (rep_r, rep_w) = pipe().map_err(sys_err("pipe"))?;
        let env = crate::process::environment(&profile.process);
        let ns = &profile.namespaces;
        let mut flags = 0u64;
        for (on, f) in [
            (ns.pid, libc::CLONE_NEWPID),
            (ns.mount, libc::CLONE_NEWNS),
            (ns.net, libc::CLONE_NEWNET),
            (ns.uts, libc::CLONE_NEWUTS),
            (ns.ipc, libc::CLONE_NEWIPC),
        ] {
            if on {
                flags |= f as u64;
            }
        }
        let setup = InitSetup {
            name: name.to_string(),
            profile: profile.clone(),
            env,
            log_path: log_path.clone(),
            log_fd: log.as_raw_fd(),
            devnull_fd: devnull.as_raw_fd(),
            state_fd: state_fd.as_raw_fd(),
            go_r: go_r.as_raw_fd(),
            report_w: rep_w.as_raw_fd(),
        };
        let cgroup_fd = cgroup.v2_fd()?;
        let (forked, in_cgroup) =
            clone_with_namespaces(flags, cgroup_fd.as_ref().map(std::os::fd::AsFd::as_fd))
                .map_err(|e| {
                    let features: Vec<&str> = [
                        (ns.pid, "ns-pid"),
                        (ns.mount, "ns-mnt"),
                        (ns.net, "ns-net"),
                        (ns.uts, "ns-uts"),
                        (ns.ipc, "ns-ipc"),
                    ]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, f)| *f)
                    .collect();
                    Error::Sys {
                        what: format!(
                            "clone3 init with new namespaces (features: {})",
                            features.join(", ")
                        ),
                        source: e,
                    }
                })?;
        let (init_pid, init_fd) = match forked {
            Forked::Child => {
                // Init keeps no fd of the cgroup directory.
                drop(cgroup_fd);
                init_main(setup, launch)
            }
            Forked::Parent { pid, pidfd } => (pid, pidfd),
        };
        drop(cgroup_fd);
        drop(launch);
        drop(go_r);
        drop(rep_w);
        drop(log);
        drop(devnull);
        drop(state_fd);
        let dup = init_fd
            .try_clone()
            .map_err(sys_err("duplicate init's pidfd"))?;
        undo.init = Some((init_pid, dup));
        let init_start = start_time(init_pid)
            .ok_or_else(|| Error::InitDied("before it could be inspected".into()))?;
        note(Made::Init {
            pid: init_pid,
            start: init_start,
        });

        // Init does its own setup meanwhile (mounts, loopback, host name), up
        // to what needs the cgroup or the veth.
        let placed = (|| -> Result<()> {
            if in_cgroup {
                cgroup.add_pid_v1(init_pid)?;
            } else {
                cgroup.add_pid(init_pid)?;
            }
            if let (Some(h), Some(n), Some(v)) = (&veth_host, nl.as_mut(), &profile.network.veth) {
                n.create_veth(h, &v.name, init_pid)?;
                undo.veth = Some(h.clone());
                note(Made::Veth(h.clone()));
                if let Some(a) = v.host_address {
                    n.add_address(h, a)?;
                }
                n.set_up(h)?;
            }
            Ok(())
        })();
        if let Err(e) = placed {
            // Init gone or on its way out: its early setup failed, and its
            // report (written before it exits) says why; the cgroup move or
            // the veth then found no process, or a process without namespaces.
            let readable = |fd: &OwnedFd| wait_pidfd(fd, Some(Duration::ZERO)).unwrap_or(false);
            if readable(&rep_r) || readable(&init_fd) {
                drop(go_w);
                let mut line = String::new();
                let _ =
                    io::BufRead::read_line(&mut io::BufReader::new(File::from(rep_r)), &mut line);
                if let Ok(Report::SetupFailed { step, message }) = serde_json::from_str(line.trim())
                {
                    return Err(Error::Setup { step, message });
                }
            }
            return Err(e);
        }

        // Let init go on, and wait for its report.
        // Init may already have failed its early setup and reported it: the
        // report then says why, not the closed pipe.
        let mut go = File::from(go_w);
        let signalled = go.write_all(b"g");
        drop(go);
        let mut rep = io::BufReader::new(File::from(rep_r));
        let mut line = String::new();
        io::BufRead::read_line(&mut rep, &mut line).map_err(sys_err("read init's report"))?;
        let report: Report = match serde_json::from_str(line.trim()) {
            Ok(r) => r,
            Err(_) if signalled.is_err() => {
                let e = signalled.unwrap_err();
                let mut st = 0;
                // SAFETY: reaping our own child, init, which closed its pipes.
                unsafe { libc::waitpid(init_pid, &mut st, 0) };
                undo.init = None;
                return Err(Error::InitDied(format!(
                    "signalling init: {e} ({})",
                    describe_wait(st)
                )));
            }
            Err(_) => {
                let mut st = 0;
                // SAFETY: reaping our own child, init, which closed its report pipe.
                unsafe { libc::waitpid(init_pid, &mut st, 0) };
                undo.init = None;
                return Err(Error::InitDied(describe_wait(st)));
            }
        };
        let ns_pid = match report {
            Report::Ready { ns_pid } => ns_pid,
            Report::SetupFailed { step, message } => return Err(Error::Setup { step, message }),
            Report::ExecFailed(f) => return Err(Error::Exec(f)),
            Report::LaunchFailed(m) => return Err(Error::Launch(m)),
        };
        let workload_pid = host_pid_of(init_pid, ns_pid, ns.pid);
        let state = State {
            name: name.to_string(),
            command,
            created: now_secs(),
            init_pid,
            init_start,
            workload_pid,
            workload_ns_pid: Some(ns_pid),
            workload_start: workload_pid.and_then(start_time),
            cgroup,
            veth_host,
            main_adopted: false,
        };
        let sb = Sandbox {
            dir: dir.to_path_buf(),
            profile: profile.clone(),
            state,
            child: Some(init_fd),
        };
        sb.save_state()?;
        // Success: nothing to undo any more.
        undo.dir = None;
        undo.cgroup = None;
        undo.init = None;
        undo.veth = None;
        Ok(sb)
    }

    fn save_state(&self) -> Result<()> {
        let data = serde_json::to_vec_pretty(&self.state).expect("state serializes");
        write_atomic(&self.dir.join("state.json"), &data)
    }

    /// Opens an existing sandbox's state.
    pub fn open(state_dir: &Path, name: &str) -> Result<Sandbox> {
        if !valid_name(name) {
            return Err(Error::BadName(name.to_string()));
        }
        let state_dir = &fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        let dir = state_dir.join(name);
        let sp = dir.join("state.json");
        let text = match fs::read_to_string(&sp) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    name: name.to_string(),
                    dir,
                })
            }
            Err(e) => return Err(io_err("read", &sp)(e)),
        };
        let mut state: State = serde_json::from_str(&text).map_err(|e| Error::BadState {
            name: name.to_string(),
            path: sp.clone(),
            message: e.to_string(),
        })?;
        let profile = Profile::load(&dir.join("profile.toml"))?;
        // The process init started may be gone while others live on: init
        // names the main process then.
        if let Some(m) = fs::read(dir.join("main.json"))
            .ok()
            .and_then(|t| serde_json::from_slice::<MainRecord>(&t).ok())
        {
            if state.workload_ns_pid != Some(m.ns_pid) {
                state.workload_pid = host_pid_of(state.init_pid, m.ns_pid, profile.namespaces.pid);
                state.workload_ns_pid = Some(m.ns_pid);
                state.workload_start = state.workload_pid.and_then(start_time);
            }
            state.main_adopted = true;
        }
        Ok(Sandbox {
            dir,
            profile,
            state,
            child: None,
        })
    }

    /// Removes what a creator that died while making sandbox `name` may have
    /// left without a state file: its state directory and its cgroup (with
    /// the processes in it only when `force`). Returns what it removed
    /// (empty: nothing of the name was there).
    pub fn remove_leftovers(state_dir: &Path, name: &str, force: bool) -> Result<Vec<String>> {
        if !valid_name(name) {
            return Err(Error::BadName(name.to_string()));
        }
        let state_dir = &fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        let dir = state_dir.join(name);
        if dir.join("state.json").exists() {
            return Ok(Vec::new());
        }
        let settings = Profile::load(&dir.join("profile.toml"))
            .map(|p| p.cgroup)
            .unwrap_or_default();
        let mut out = Vec::new();
        let cg = Cgroup::plan(&leaf_name(&dir, name), &settings)?;
        if cg.exists() && !Sandbox::cgroup_name_ambiguous(state_dir, name) {
            if !cg.procs()?.is_empty() && !force {
                return Err(Error::Setup {
                    step: "remove".into(),
                    message: format!(
                        "cgroup {} of sandbox `{name}` (which has no state) still holds processes: use --force",
                        cg.any_dir().display()
                    ),
                });
            }
            cg.kill_all()?;
            cg.remove()?;
            out.push(format!("cgroup {}", cg.any_dir().display()));
        }
        if dir.is_dir() {
            if !force {
                return Err(Error::Setup {
                    step: "remove".into(),
                    message: format!(
                        "sandbox `{name}` has no state (its creation was interrupted, or is under way): use --force"
                    ),
                });
            }
            fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
            out.push(format!("state directory {}", dir.display()));
        }
        Ok(out)
    }

    /// Whether the cgroup named after sandbox `name` of `state_dir` may be
    /// another state directory's: under the default state directory a name
    /// ending in `-` and eight hex digits is also the cgroup name of a
    /// sandbox of another state directory (`leaf_name`).
    fn cgroup_name_ambiguous(state_dir: &Path, name: &str) -> bool {
        state_dir == Path::new(DEFAULT_STATE_DIR)
            && name.rsplit_once('-').is_some_and(|(_, h)| {
                h.len() == 8
                    && h.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            })
    }

    /// Names of sandboxes under `state_dir` that left a state directory
    /// without a state file, or a cgroup (under the default cgroup parent)
    /// without a state directory: their creator died while making them.
    pub fn list_incomplete(state_dir: &Path) -> Vec<String> {
        let state_dir = &fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
        let mut names: Vec<String> = fs::read_dir(state_dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir() && !e.path().join("state.json").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| valid_name(n))
            .collect();
        // Cgroups named after a sandbox of this state directory that has no
        // state directory and is not ending (a dump's keeper removes those).
        let probe = leaf_name(&state_dir.join("x"), "x");
        let suffix = probe.strip_prefix('x').unwrap_or("").to_string();
        let parent = Cgroup::plan("x", &crate::profile::CgroupSettings::default())
            .ok()
            .and_then(|c| c.any_dir().parent().map(Path::to_path_buf));
        if let Some(parent) = parent {
            for e in fs::read_dir(&parent).into_iter().flatten().flatten() {
                let Ok(leaf) = e.file_name().into_string() else {
                    continue;
                };
                let Some(name) = leaf.strip_suffix(suffix.as_str()) else {
                    continue;
                };
                let name = name.to_string();
                if !valid_name(&name)
                    || Sandbox::cgroup_name_ambiguous(state_dir, &name)
                    || leaf_name(&state_dir.join(&name), &name) != leaf
                    || state_dir.join(&name).exists()
                    || Ending::marker_path(state_dir, &name).exists()
                    || names.contains(&name)
                {
                    continue;
                }
                names.push(name);
            }
        }
        names.sort();
        names
    }

    /// Names of all sandboxes under `state_dir` (those with a state file), sorted.
    pub fn list(state_dir: &Path) -> Result<Vec<String>> {
        let rd = match fs::read_dir(state_dir) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read state directory", state_dir)(e)),
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("state.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| valid_name(n))
            .collect();
        names.sort();
        Ok(names)
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }
    /// Host PID of init.
    pub fn init_pid(&self) -> i32 {
        self.state.init_pid
    }
    /// Whether the main process (the workload PIDs) is one init adopted
    /// after the process it started exited, e.g. a daemon's server process.
    pub fn main_adopted(&self) -> bool {
        self.state.main_adopted
    }
    /// Host PID of the workload's main process: the one init started, or,
    /// once that has exited while others live, the one init names in
    /// `main.json`.
    pub fn workload_pid(&self) -> Option<i32> {
        self.state.workload_pid
    }
    /// PID of the workload's root process inside the sandbox.
    pub fn workload_ns_pid(&self) -> Option<i32> {
        self.state.workload_ns_pid
    }
    pub fn profile(&self) -> &Profile {
        &self.profile
    }
    /// The sandbox's own state directory (`STATE_DIR/NAME`).
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }
    pub fn cgroup(&self) -> &Cgroup {
        &self.state.cgroup
    }
    pub fn command(&self) -> &[String] {
        &self.state.command
    }
    /// Host name of the veth's host end, when the profile has a veth.
    pub fn veth_host(&self) -> Option<&str> {
        self.state.veth_host.as_deref()
    }
    /// Seconds since the epoch when the sandbox was made.
    pub fn created(&self) -> u64 {
        self.state.created
    }

    /// Records what a restored sandbox's workload was: the command it was
    /// started with (what `stasis ps` shows) and whether its main process
    /// was one init had adopted (signals then go to every root, as before
    /// the dump).
    pub fn set_restored(&mut self, command: Vec<String>, main_adopted: bool) -> Result<()> {
        if !command.is_empty() {
            self.state.command = command;
        }
        self.state.main_adopted = main_adopted;
        self.save_state()
    }

    /// Records a (restored) workload's root process by host PID.
    pub fn set_workload_pid(&mut self, host_pid: i32) -> Result<()> {
        self.state.workload_pid = Some(host_pid);
        self.state.workload_start = start_time(host_pid);
        self.state.workload_ns_pid = ns_pid_of(host_pid);
        self.save_state()
    }

    /// Takes the sandbox's lock without waiting; `Error::Locked` when another
    /// operation holds it.
    pub fn lock_exclusive(&self) -> Result<LockGuard> {
        let p = self.dir.join("lock");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&p)
            .map_err(io_err("open", &p))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(Error::Locked(self.name().to_string()));
            }
            return Err(io_err("lock", &p)(e));
        }
        Ok(LockGuard { _file: f })
    }

    /// Whether init (checked by PID and start time) is still alive.
    pub fn is_running(&self) -> bool {
        if let Some(fd) = &self.child {
            return !matches!(wait_pidfd(fd, Some(Duration::ZERO)), Ok(true));
        }
        start_time(self.state.init_pid) == Some(self.state.init_start)
            && !is_zombie(self.state.init_pid)
    }

    /// The exit record init wrote, if any.
    pub fn exit_record(&self) -> Option<ExitRecord> {
        let t = fs::read(self.dir.join("exit.json")).ok()?;
        serde_json::from_slice(&t).ok()
    }

    /// running, frozen, or exited (with the workload's status).
    pub fn status(&self) -> Result<Status> {
        if !self.is_running() {
            return Ok(Status::Exited(self.exit_record()));
        }
        if self.cgroup().is_frozen().unwrap_or(false) {
            return Ok(Status::Frozen);
        }
        Ok(Status::Running)
    }

    /// A pidfd for init, verified against its start time.
    fn init_pidfd(&self) -> Result<OwnedFd> {
        if let Some(fd) = &self.child {
            return fd.try_clone().map_err(sys_err("duplicate init's pidfd"));
        }
        let fd =
            pidfd_open(self.state.init_pid).map_err(|_| Error::NotRunning(self.name().into()))?;
        // The PID could have been reused before pidfd_open: check it is still init.
        if start_time(self.state.init_pid) != Some(self.state.init_start) {
            return Err(Error::NotRunning(self.name().into()));
        }
        Ok(fd)
    }

    /// Sends a signal to the workload. Most signals go through init, which
    /// passes them on to the main process while it is the one init started,
    /// and to every child of init (the roots of what is left) after that.
    /// SIGKILL ends the whole sandbox at once (init and every process in
    /// it); SIGSTOP, which init cannot intercept, goes to the main process
    /// directly.
    pub fn signal(&self, sig: i32) -> Result<()> {
        if sig == libc::SIGKILL {
            let fd = self.init_pidfd()?;
            // A frozen tree cannot die under the v1 freezer: thaw first.
            let _ = self.cgroup().thaw();
            pidfd_send_signal(&fd, sig).map_err(sys_err(format!(
                "signal {sig} to init {}",
                self.state.init_pid
            )))?;
            if !self.profile.namespaces.pid {
                // Without a PID namespace, init's end is not the tree's.
                self.cgroup().sigkill_all()?;
            }
            return Ok(());
        }
        if sig == libc::SIGSTOP {
            let pid = self
                .state
                .workload_pid
                .ok_or_else(|| Error::NotRunning(self.name().into()))?;
            let fd = pidfd_open(pid).map_err(|_| Error::NotRunning(self.name().into()))?;
            if start_time(pid) != self.state.workload_start || self.state.workload_start.is_none() {
                return Err(Error::NotRunning(self.name().into()));
            }
            return pidfd_send_signal(&fd, sig)
                .map_err(sys_err(format!("signal {sig} to workload {pid}")));
        }
        let fd = self.init_pidfd()?;
        if self.state.main_adopted {
            // Every root of what is left (init's children) gets it.
            let init = self.state.init_pid;
            let children = fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
                .map_err(sys_err(format!("read the children of init {init}")))?;
            for c in children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
            {
                // A child that is gone meanwhile needs no signal.
                if let Ok(cfd) = pidfd_open(c) {
                    let _ = pidfd_send_signal(&cfd, sig);
                }
            }
            return Ok(());
        }
        pidfd_send_signal(&fd, sig).map_err(sys_err(format!(
            "signal {sig} to init {}",
            self.state.init_pid
        )))
    }

    /// Ends the whole sandbox at once (SIGKILL to init: the kernel kills every
    /// process of its PID namespace), waits for it, and removes the cgroup and
    /// the veth. The state directory stays (see [`Sandbox::remove`]).
    pub fn kill(&mut self) -> Result<()> {
        if let Ok(fd) = self.init_pidfd() {
            // A frozen tree cannot die under the v1 freezer: thaw first.
            let _ = self.cgroup().thaw();
            let _ = pidfd_send_signal(&fd, libc::SIGKILL);
            if !wait_pidfd(&fd, Some(KILL_TIMEOUT)).map_err(sys_err("wait for init"))? {
                return Err(Error::Sys {
                    what: format!("kill init {}", self.state.init_pid),
                    source: io::Error::from(io::ErrorKind::TimedOut),
                });
            }
            self.reap_child();
        }
        // Without a PID namespace, killing init does not end its descendants.
        self.cgroup().kill_all()?;
        self.cleanup()
    }

    /// Kills the sandbox and removes it without waiting for its processes
    /// to end: SIGKILL to init and to every process of its cgroup, its veth
    /// deleted and its state directory removed at once, so that its name is
    /// free when this returns. What is left is the kernel's part (the killed
    /// processes free their memory, which takes about 0.1 s a GiB, and exit)
    /// and then the removal of the cgroup: [`Ending::finish`], which
    /// `keeper` (a live process, by host PID) runs. A new sandbox of the same
    /// name waits for that first. The caller must not be the killed
    /// processes' parent or tracer for longer than it takes to exit: those
    /// wait for it to collect them.
    pub fn kill_and_leave(self, keeper: i32) -> Result<()> {
        let _ = self.cgroup().thaw();
        if let Ok(fd) = self.init_pidfd() {
            let _ = pidfd_send_signal(&fd, libc::SIGKILL);
        }
        self.cgroup().sigkill_all()?;
        if let Some(v) = &self.state.veth_host {
            let mut nl = Rtnl::open()?;
            nl.delete_link(v)?;
        }
        let ending = self.ending();
        let stamp = format!("{keeper} {}\n", start_time(keeper).unwrap_or(0));
        write_atomic(&ending.marker, stamp.as_bytes())?;
        let _lock = self.lock_exclusive()?;
        fs::remove_dir_all(&self.dir).map_err(io_err("remove", &self.dir))
    }

    /// What [`Sandbox::kill_and_leave`] leaves to finish, known before it runs
    /// (a keeper forked early holds it).
    pub fn ending(&self) -> Ending {
        let parent = self.dir.parent().unwrap_or(Path::new("/"));
        Ending {
            cgroup: self.cgroup().clone(),
            marker: Ending::marker_path(parent, self.name()),
        }
    }

    fn reap_child(&mut self) {
        if self.child.take().is_some() {
            let mut st = 0;
            // SAFETY: reaping our own child, init, which has exited.
            unsafe { libc::waitpid(self.state.init_pid, &mut st, 0) };
        }
    }

    /// Removes what an ended sandbox leaves on the host: its cgroup and veth.
    /// Does nothing while init is alive.
    pub fn cleanup(&self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        if let Some(v) = &self.state.veth_host {
            let mut nl = Rtnl::open()?;
            nl.delete_link(v)?;
        }
        if self.cgroup().exists() {
            self.cgroup().kill_all()?;
            self.cgroup().remove()?;
        }
        Ok(())
    }

    /// Removes an ended sandbox: cgroup, veth and state directory.
    /// `Error::Running` while it runs, `Error::Locked` while another operation
    /// holds its lock.
    pub fn remove(self) -> Result<()> {
        if self.is_running() {
            return Err(Error::Running(self.name().to_string()));
        }
        let _lock = self.lock_exclusive()?;
        self.cleanup()?;
        fs::remove_dir_all(&self.dir).map_err(io_err("remove", &self.dir))
    }

    /// Waits until the sandbox has ended, removes its cgroup and veth, and
    /// returns the workload's status as a shell would (128 + signal when killed).
    pub fn wait(&mut self) -> Result<i32> {
        let fd = match self.init_pidfd() {
            Ok(fd) => Some(fd),
            Err(Error::NotRunning(_)) => None,
            Err(e) => return Err(e),
        };
        let mut killed_by = None;
        if let Some(fd) = fd {
            wait_pidfd(&fd, None).map_err(sys_err("wait for init"))?;
            if self.child.take().is_some() {
                let mut st = 0;
                // SAFETY: reaping our own child, init, which has exited.
                unsafe { libc::waitpid(self.state.init_pid, &mut st, 0) };
                if libc::WIFSIGNALED(st) {
                    killed_by = Some(libc::WTERMSIG(st));
                }
            }
        }
        self.cleanup()?;
        Ok(match (self.exit_record(), killed_by) {
            (Some(r), _) => r.shell_code(),
            (None, Some(sig)) => 128 + sig,
            (None, None) => Status::Exited(None).exit_code().unwrap_or(137),
        })
    }

    /// Copies the log to `out`. With `follow`, keeps copying as it grows until
    /// the sandbox ends. With `forward`, SIGINT, SIGTERM, SIGHUP and SIGQUIT
    /// received meanwhile are passed on to the workload (the caller must have
    /// blocked them). Returns the exit status when it waited for the end.
    pub fn stream_log(
        &mut self,
        out: &mut dyn Write,
        follow: bool,
        forward: bool,
    ) -> Result<Option<i32>> {
        let lp = self.log_path();
        let mut log = File::open(&lp).map_err(io_err("open log", &lp))?;
        let copy = |log: &mut File, out: &mut dyn Write| -> Result<()> {
            io::copy(log, out).map_err(io_err("read log", &lp))?;
            out.flush().map_err(sys_err("write output"))
        };
        if !follow {
            copy(&mut log, out)?;
            return Ok(None);
        }
        let init = match self.init_pidfd() {
            Ok(fd) => Some(fd),
            Err(Error::NotRunning(_)) => None,
            Err(e) => return Err(e),
        };
        let Some(init) = init else {
            copy(&mut log, out)?;
            return Ok(Some(self.wait()?));
        };
        let ino = nix::sys::inotify::Inotify::init(
            nix::sys::inotify::InitFlags::IN_CLOEXEC | nix::sys::inotify::InitFlags::IN_NONBLOCK,
        )
        .map_err(|e| sys_err("inotify_init")(e.into()))?;
        ino.add_watch(&lp, nix::sys::inotify::AddWatchFlags::IN_MODIFY)
            .map_err(|e| sys_err(format!("inotify watch {}", lp.display()))(e.into()))?;
        let sigfd = if forward {
            let mut set = nix::sys::signal::SigSet::empty();
            for s in FORWARDED {
                set.add(*s);
            }
            Some(
                nix::sys::signalfd::SignalFd::with_flags(
                    &set,
                    nix::sys::signalfd::SfdFlags::SFD_CLOEXEC
                        | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
                )
                .map_err(|e| sys_err("signalfd")(e.into()))?,
            )
        } else {
            None
        };
        loop {
            copy(&mut log, out)?;
            let mut fds = vec![
                libc::pollfd {
                    fd: ino.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: init.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            if let Some(s) = &sigfd {
                fds.push(libc::pollfd {
                    fd: s.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            // SAFETY: a valid array of pollfds for the duration of the call.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(sys_err("poll")(e));
            }
            if fds[0].revents != 0 {
                while ino.read_events().map(|v| !v.is_empty()).unwrap_or(false) {}
            }
            if let Some(s) = &sigfd {
                while let Ok(Some(info)) = s.read_signal() {
                    let _ = self.signal(info.ssi_signo as i32);
                }
            }
            if fds[1].revents != 0 {
                break;
            }
        }
        let code = self.wait()?;
        copy(&mut log, out)?;
        Ok(Some(code))
    }

    /// Runs a command inside the sandbox, like nsenter: it joins the cgroup and
    /// every namespace of init, its root, and the profile's process settings
    /// (user, capabilities, environment, working directory, limits). Stdio is
    /// the caller's. Waits for it, passing SIGINT, SIGTERM, SIGHUP and SIGQUIT
    /// on, and returns its status as a shell would.
    ///
    /// The calling process must be single-threaded. It joins the sandbox's
    /// PID namespace for its children while forking, and goes back after.
    pub fn exec(&self, argv: &[String]) -> Result<i32> {
        if argv.is_empty() {
            return Err(Error::Exec(crate::ExecFailure {
                errno: libc::ENOENT,
                message: "no command given".into(),
            }));
        }
        let init_fd = self.init_pidfd()?;
        let pid = self.state.init_pid;
        let mut ns_fds = Vec::new();
        // The time namespace: a restored sandbox has one of its own.
        for ns in ["cgroup", "ipc", "uts", "net", "mnt", "time"] {
            let theirs = format!("/proc/{pid}/ns/{ns}");
            let ours = format!("/proc/self/ns/{ns}");
            if same_file(&theirs, &ours) || (ns == "time" && !Path::new(&theirs).exists()) {
                continue;
            }
            let f = File::open(&theirs).map_err(io_err("open namespace", Path::new(&theirs)))?;
            ns_fds.push((ns, f));
        }
        let root_path = format!("/proc/{pid}/root");
        let root = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&root_path)
            .map_err(io_err("open root", Path::new(&root_path)))?;
        let their_pid = format!("/proc/{pid}/ns/pid");
        let pid_ns = if same_file(&their_pid, "/proc/self/ns/pid") {
            None
        } else {
            Some((
                File::open(&their_pid).map_err(io_err("open namespace", Path::new(&their_pid)))?,
                File::open("/proc/self/ns/pid_for_children").map_err(io_err(
                    "open namespace",
                    Path::new("/proc/self/ns/pid_for_children"),
                ))?,
            ))
        };
        // The namespaces were opened while init was verified alive.
        if start_time(pid) != Some(self.state.init_start) {
            return Err(Error::NotRunning(self.name().into()));
        }
        drop(init_fd);
        let env = crate::process::environment(&self.profile.process);
        let cgroup_dirs = self.cgroup().dirs();

        let old_mask = block_signals(&[FORWARDED, &[nix::sys::signal::Signal::SIGCHLD]].concat());
        if let Some((theirs, _)) = &pid_ns {
            nix::sched::setns(theirs, nix::sched::CloneFlags::CLONE_NEWPID)
                .map_err(|e| sys_err("setns into the sandbox's PID namespace")(e.into()))?;
        }
        // SAFETY: the process is single-threaded (stasis's CLI); the child
        // only runs its own code and then execs or _exits.
        let child = unsafe { libc::fork() };
        if let Some((_, ours)) = &pid_ns {
            if child != 0 {
                let _ = nix::sched::setns(ours, nix::sched::CloneFlags::CLONE_NEWPID);
            }
        }
        if child < 0 {
            restore_mask(&old_mask);
            return Err(sys_err("fork")(io::Error::last_os_error()));
        }
        if child == 0 {
            let fail = exec_child(&cgroup_dirs, &ns_fds, &root, &self.profile, argv, &env);
            let _ = writeln!(io::stderr(), "stasis exec: {}", fail.message);
            // SAFETY: leaving the failed child without running the parent's destructors.
            unsafe { libc::_exit(crate::process::exec_failure_code(fail.errno)) };
        }
        drop(ns_fds);
        let status = wait_forwarding(child);
        restore_mask(&old_mask);
        Ok(status)
    }
}

/// The signals `run` and `exec` pass on to the workload.
pub const FORWARDED: &[nix::sys::signal::Signal] = &[
    nix::sys::signal::Signal::SIGINT,
    nix::sys::signal::Signal::SIGTERM,
    nix::sys::signal::Signal::SIGHUP,
    nix::sys::signal::Signal::SIGQUIT,
];

/// Blocks the given signals in the calling thread; returns the previous mask.
pub fn block_signals(sigs: &[nix::sys::signal::Signal]) -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for s in sigs {
        set.add(*s);
    }
    let mut old = nix::sys::signal::SigSet::empty();
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&set),
        Some(&mut old),
    );
    old
}

fn restore_mask(old: &nix::sys::signal::SigSet) {
    let _ =
        nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(old), None);
}

fn wait_forwarding(child: i32) -> i32 {
    let mut set = nix::sys::signal::SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set.add(nix::sys::signal::Signal::SIGCHLD);
    loop {
        let mut st = 0;
        // SAFETY: polling our own child; `st` is a valid out pointer.
        let r = unsafe { libc::waitpid(child, &mut st, libc::WNOHANG) };
        if r == child {
            return ExitRecord::from_wait_status(st).shell_code();
        }
        if r < 0 {
            return 255;
        }
        if let Ok(sig) = set.wait() {
            if sig != nix::sys::signal::Signal::SIGCHLD {
                // SAFETY: kill(2) on our own child, not yet reaped.
                unsafe { libc::kill(child, sig as i32) };
            }
        }
    }
}

fn exec_child(
    cgroup_dirs: &[PathBuf],
    ns_fds: &[(&str, File)],
    root: &File,
    profile: &Profile,
    argv: &[String],
    env: &[(String, String)],
) -> crate::ExecFailure {
    let fail = |what: String, e: io::Error| crate::ExecFailure {
        errno: e.raw_os_error().unwrap_or(libc::EIO),
        message: format!("{what}: {e}"),
    };
    for d in cgroup_dirs {
        let p = d.join("cgroup.procs");
        if let Err(e) = fs::write(&p, "0") {
            return fail(format!("join cgroup {}", d.display()), e);
        }
    }
    for (name, f) in ns_fds {
        if let Err(e) = nix::sched::setns(f, nix::sched::CloneFlags::empty()) {
            return fail(
                format!("setns into the sandbox's {name} namespace"),
                e.into(),
            );
        }
    }
    // SAFETY: fchdir to an open directory fd, then chroot(".") on a static path.
    let r = unsafe {
        if libc::fchdir(root.as_raw_fd()) != 0 {
            -1
        } else {
            libc::chroot(c".".as_ptr())
        }
    };
    if r != 0 {
        return fail(
            "enter the sandbox's root".into(),
            io::Error::last_os_error(),
        );
    }
    crate::process::reset_signals();
    // Nothing but stdio may leak into the sandbox.
    crate::init::close_fds_except(&[]);
    if let Err(f) = crate::process::apply_settings(&profile.process) {
        return f;
    }
    crate::process::exec(argv, env)
}

fn same_file(a: &str, b: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(true)
}

/// The innermost PID of a host process (last field of NSpid).
fn ns_pid_of(host_pid: i32) -> Option<i32> {
    let s = fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last()?.parse().ok())
}

/// Finds the host PID of the process with PID `ns_pid` in init's namespace:
/// first among init's children, then anywhere in /proc.
fn host_pid_of(init_pid: i32, ns_pid: i32, pid_ns: bool) -> Option<i32> {
    if !pid_ns {
        return Some(ns_pid);
    }
    let children = fs::read_to_string(format!("/proc/{init_pid}/task/{init_pid}/children"))
        .unwrap_or_default();
    for c in children
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
    {
        if ns_pid_of(c) == Some(ns_pid) {
            return Some(c);
        }
    }
    let their_ns = fs::read_link(format!("/proc/{init_pid}/ns/pid")).ok()?;
    for e in fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()) {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if fs::read_link(format!("/proc/{p}/ns/pid")).ok().as_ref() == Some(&their_ns)
            && ns_pid_of(p) == Some(ns_pid)
        {
            return Some(p);
        }
    }
    None
}

fn describe_wait(st: i32) -> String {
    if libc::WIFSIGNALED(st) {
        format!("killed by signal {}", libc::WTERMSIG(st))
    } else {
        format!("exit status {}", libc::WEXITSTATUS(st))
    }
}
