//! stasis's init: PID 1 of the sandbox. A fork of the creating stasis
//! process (no exec), so that a restore's closure and its data are there.
//!
//! Init sets up what must be done from inside the namespaces (cgroup
//! namespace, mounts, network, host name), starts the workload (or runs the
//! restore closure), reports to the creator, and then supervises: it reaps
//! every process that ends up as its child (orphans included), passes every
//! signal it receives on to the workload, and stays while any process of the
//! sandbox lives. The *main* process is the one it started (or the restored
//! tree's root); when that exits while others live (a server that daemonized
//! itself), the oldest of init's remaining children becomes the main one,
//! recorded in `main.json` in the state directory, and signals go to every
//! child of init (the roots of what is left). Once no process is left, init
//! records the exit status of the last main process in `exit.json` and exits
//! with it. After start-up it holds one fd only: an O_PATH handle on the
//! state directory, close-on-exec.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::process::{self, ExecFailure};
use crate::profile::Profile;

/// What init starts as the sandbox's workload.
pub enum Launch {
    /// fork + exec of a command (argv[0] looked up in the profile's PATH).
    Command(Vec<String>),
    /// For restore: init runs the closure after the namespaces, mounts,
    /// network and host name are set up and after it joined the cgroup. The
    /// closure forks the workload's tree itself and returns the in-namespace
    /// PID of the tree's root, which must be a child of init. Init then
    /// supervises it exactly like a command.
    Custom(LaunchFn),
}

/// The closure of [`Launch::Custom`]: returns the workload root's PID inside
/// the sandbox, or an error message.
pub type LaunchFn = Box<dyn FnOnce(&InitContext) -> Result<i32, String>>;

impl std::fmt::Debug for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Launch::Command(c) => f.debug_tuple("Command").field(c).finish(),
            Launch::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// What a [`Launch::Custom`] closure gets from init.
///
/// Inherited fds: for a `Custom` launch, init keeps the fds it inherited from
/// the creating process open while the closure runs (0, 1 and 2 are /dev/null),
/// so that the closure can use what it captured. Once the closure returns,
/// init closes every fd but its own (see [`InitContext::init_fds`]). Processes
/// the closure forks inherit all of them: they should close what they do not
/// restore, e.g. with [`InitContext::close_inherited_fds`].
#[derive(Debug)]
pub struct InitContext {
    /// The sandbox's name.
    pub name: String,
    /// The profile the sandbox was made from.
    pub profile: Profile,
    /// Path of the sandbox's log on the host (inside the sandbox it may not be
    /// reachable when the profile pivots into another root).
    pub log_path: PathBuf,
    /// The log, opened write-only with O_APPEND (close-on-exec). Init closes
    /// its copy after the closure returns.
    pub log_fd: RawFd,
    /// /dev/null opened read-write (close-on-exec). Init closes its copy after
    /// the closure returns.
    pub devnull_fd: RawFd,
    /// The workload environment the profile asks for.
    pub env: Vec<(String, String)>,
    init_fds: Vec<RawFd>,
}

impl InitContext {
    /// The fds init keeps for itself (report pipe, state directory). Processes
    /// forked by the closure must close them.
    pub fn init_fds(&self) -> &[RawFd] {
        &self.init_fds
    }

    /// Closes, in the calling process, every fd from 3 up except `keep`, the
    /// log, /dev/null and init's own fds.
    pub fn close_inherited_fds(&self, keep: &[RawFd]) {
        let mut k: Vec<RawFd> = keep.to_vec();
        k.extend([self.log_fd, self.devnull_fd]);
        k.extend(&self.init_fds);
        close_fds_except(&k);
    }
}

/// Messages from init to the creating process, one JSON line each.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Report {
    /// The workload runs; its PID inside the sandbox.
    Ready { ns_pid: i32 },
    /// Setting up the sandbox failed at `step`.
    SetupFailed { step: String, message: String },
    /// The command could not be started.
    ExecFailed(ExecFailure),
    /// The restore closure failed.
    LaunchFailed(String),
}

/// Everything init needs, prepared by the creator before the fork.
pub(crate) struct InitSetup {
    pub name: String,
    pub profile: Profile,
    pub env: Vec<(String, String)>,
    pub log_path: PathBuf,
    pub log_fd: RawFd,
    pub devnull_fd: RawFd,
    pub state_fd: RawFd,
    pub go_r: RawFd,
    pub report_w: RawFd,
}

/// Exit record written by init as `exit.json` in the state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit code, when the workload exited.
    pub code: Option<i32>,
    /// Signal number, when the workload was killed by a signal.
    pub signal: Option<i32>,
}

impl ExitRecord {
    pub fn from_wait_status(st: i32) -> ExitRecord {
        if libc::WIFSIGNALED(st) {
            ExitRecord {
                code: None,
                signal: Some(libc::WTERMSIG(st)),
            }
        } else {
            ExitRecord {
                code: Some(libc::WEXITSTATUS(st)),
                signal: None,
            }
        }
    }

    /// The status a shell would report: the exit code, or 128 + signal.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

/// Closes every fd from 3 up that is not in `keep`.
pub(crate) fn close_fds_except(keep: &[RawFd]) {
    let mut k: Vec<u32> = keep
        .iter()
        .filter(|f| **f >= 3)
        .map(|f| *f as u32)
        .collect();
    k.sort_unstable();
    k.dedup();
    let mut from = 3u32;
    for fd in k.into_iter().chain(std::iter::once(u32::MAX)) {
        if fd > from {
            // SAFETY: close_range on a range of fds this process owns; nothing
            // in this single-threaded process uses them afterwards.
            unsafe { libc::syscall(libc::SYS_close_range, from, fd - 1, 0) };
        }
        from = fd.saturating_add(1);
    }
}

fn dup2(from: RawFd, to: RawFd) {
    // SAFETY: dup2 on fds owned by this process.
    unsafe { libc::dup2(from, to) };
}

fn close(fd: RawFd) {
    // SAFETY: closing an fd this process owns and no longer uses.
    unsafe { libc::close(fd) };
}

fn send_report(fd: RawFd, r: &Report) -> bool {
    // SAFETY: `fd` is the write end of the report pipe, owned by init; the
    // ManuallyDrop keeps it open.
    let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let mut line = serde_json::to_vec(r).unwrap_or_default();
    line.push(b'\n');
    f.write_all(&line).is_ok()
}

fn block_all_signals() {
    // SAFETY: a filled, initialised signal set is passed.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Runs `f` in a process whose stderr is /dev/null (init, or a process it
/// forks): a panic becomes an error carrying its message and place, for the
/// report that reaches the user, instead of unwinding past `f`.
pub fn catch_panic<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    static LAST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut last) = LAST.lock() {
            *last = Some(info.to_string());
        }
    }));
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            let what = LAST
                .lock()
                .ok()
                .and_then(|mut l| l.take())
                .unwrap_or_else(|| "panicked".into());
            Err(format!("stasis-init failed: {what}"))
        }
    }
}

/// The body of init. Never returns.
pub(crate) fn init_main(s: InitSetup, launch: Launch) -> ! {
    let code = run(s, launch);
    // SAFETY: leaving the forked init without running the creator's atexit
    // handlers or destructors.
    unsafe { libc::_exit(code) }
}

fn run(s: InitSetup, launch: Launch) -> i32 {
    block_all_signals();
    // SAFETY: setsid and prctl with integer arguments.
    unsafe {
        libc::setsid();
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"stasis-init".as_ptr(), 0, 0, 0);
    }
    let own = [s.go_r, s.report_w, s.state_fd, s.log_fd, s.devnull_fd];
    if matches!(launch, Launch::Command(_)) {
        close_fds_except(&own);
    }
    for fd in 0..3 {
        dup2(s.devnull_fd, fd);
    }

    // What needs neither the cgroup nor the veth goes on while the creator
    // moves init into the cgroup (a move may wait for a grace period).
    if let Err((step, message)) = setup_early(&s) {
        send_report(s.report_w, &Report::SetupFailed { step, message });
        return 1;
    }

    // Wait for the creator: it has put us into the cgroup and made the veth.
    let mut b = [0u8; 1];
    // SAFETY: the go pipe's read end, owned by init; ManuallyDrop keeps it open.
    let mut go = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(s.go_r) });
    let ok = matches!(go.read(&mut b), Ok(1));
    close(s.go_r);
    if !ok {
        return 1;
    }

    if let Err((step, message)) = setup_inside(&s) {
        send_report(s.report_w, &Report::SetupFailed { step, message });
        return 1;
    }

    let pid = match launch {
        Launch::Command(argv) => match spawn_workload(&s, &argv) {
            Ok(pid) => pid,
            Err(f) => {
                let code = process::exec_failure_code(f.errno);
                send_report(s.report_w, &Report::ExecFailed(f));
                return code;
            }
        },
        Launch::Custom(f) => {
            let ctx = InitContext {
                name: s.name.clone(),
                profile: s.profile.clone(),
                log_path: s.log_path.clone(),
                log_fd: s.log_fd,
                devnull_fd: s.devnull_fd,
                env: s.env.clone(),
                init_fds: vec![s.report_w, s.state_fd],
            };
            let r = catch_panic(|| f(&ctx));
            close_fds_except(&[s.report_w, s.state_fd]);
            match r {
                Ok(pid) if pid > 0 => pid,
                Ok(pid) => {
                    send_report(
                        s.report_w,
                        &Report::LaunchFailed(format!("the launch closure returned PID {pid}")),
                    );
                    kill_rest(true);
                    return 1;
                }
                Err(m) => {
                    send_report(s.report_w, &Report::LaunchFailed(m));
                    return 1;
                }
            }
        }
    };
    close(s.log_fd);
    close(s.devnull_fd);
    if !send_report(s.report_w, &Report::Ready { ns_pid: pid }) {
        // The creator is gone before recording the sandbox: do not leave an
        // unrecorded sandbox running.
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    close(s.report_w);

    let rec = supervise(pid, s.state_fd);
    write_exit(s.state_fd, &rec);
    rec.shell_code()
}

/// Setup before init is in its cgroup: mounts, loopback, host name.
fn setup_early(s: &InitSetup) -> Result<(), (String, String)> {
    let ns = &s.profile.namespaces;
    if ns.mount {
        crate::mounts::setup(&s.profile.mounts).map_err(|m| ("mounts".to_string(), m))?;
    }
    if ns.net && s.profile.network.loopback {
        let net = |e: crate::netlink::NetlinkError| ("network".to_string(), e.to_string());
        crate::netlink::Rtnl::open()
            .and_then(|mut nl| nl.set_up("lo"))
            .map_err(net)?;
    }
    if ns.uts {
        let h = s.profile.hostname.as_deref().unwrap_or(&s.name);
        nix::unistd::sethostname(h)
            .map_err(|e| ("hostname".to_string(), format!("sethostname {h}: {e}")))?;
    }
    Ok(())
}

/// Setup once init is in its cgroup and the veth is there.
fn setup_inside(s: &InitSetup) -> Result<(), (String, String)> {
    let ns = &s.profile.namespaces;
    if ns.cgroup {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP).map_err(|e| {
            (
                "cgroup namespace".to_string(),
                format!("unshare(CLONE_NEWCGROUP): {e} (feature: ns-cgroup)"),
            )
        })?;
    }
    if ns.net {
        let net = |e: crate::netlink::NetlinkError| ("network".to_string(), e.to_string());
        if let Some(v) = &s.profile.network.veth {
            let mut nl = crate::netlink::Rtnl::open().map_err(net)?;
            nl.add_address(&v.name, v.address).map_err(net)?;
            nl.set_up(&v.name).map_err(net)?;
            for r in &v.routes {
                nl.add_route(&v.name, r.destination, r.gateway, v.address.addr.is_ipv4())
                    .map_err(net)?;
            }
        }
    }
    Ok(())
}

/// Forks and execs the workload: new session, stdin /dev/null, stdout and
/// stderr to the log, the profile's process settings. Returns its PID once
/// the exec succeeded.
fn spawn_workload(s: &InitSetup, argv: &[String]) -> Result<i32, ExecFailure> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(ExecFailure {
            errno: libc::EIO,
            message: format!("pipe2: {}", std::io::Error::last_os_error()),
        });
    }
    let (r, w) = (fds[0], fds[1]);
    // SAFETY: init is single-threaded, so the child may run any code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(ExecFailure {
            errno: libc::EAGAIN,
            message: format!("fork the workload: {}", std::io::Error::last_os_error()),
        });
    }
    if pid == 0 {
        close(r);
        process::reset_signals();
        // SAFETY: setsid without arguments.
        unsafe { libc::setsid() };
        dup2(s.devnull_fd, 0);
        dup2(s.log_fd, 1);
        dup2(s.log_fd, 2);
        close_fds_except(&[w]);
        let failure = match process::apply_settings(&s.profile.process) {
            Ok(()) => process::exec(argv, &s.env),
            Err(f) => f,
        };
        // SAFETY: `w` is the error pipe's write end; ManuallyDrop keeps it open until _exit.
        let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(w) });
        let _ = f.write_all(&serde_json::to_vec(&failure).unwrap_or_default());
        // SAFETY: leaving the failed child without running inherited destructors.
        unsafe { libc::_exit(process::exec_failure_code(failure.errno)) };
    }
    close(w);
    // SAFETY: the read end is ours; File closes it.
    let mut rf = unsafe { std::fs::File::from_raw_fd(r) };
    let mut buf = Vec::new();
    let _ = rf.read_to_end(&mut buf);
    if buf.is_empty() {
        return Ok(pid);
    }
    let mut st = 0;
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    Err(serde_json::from_slice(&buf).unwrap_or(ExecFailure {
        errno: libc::EIO,
        message: "the workload failed before exec".into(),
    }))
}

/// Kills every other process of the sandbox: all of the PID namespace, or,
/// without one, init's children (their children then come to init, a
/// subreaper, and are killed in turn).
fn kill_rest(pid_ns: bool) {
    if pid_ns {
        // SAFETY: as PID 1 of the namespace, kill(-1) reaches exactly the
        // other processes of this namespace.
        unsafe { libc::kill(-1, libc::SIGKILL) };
        return;
    }
    // SAFETY: getpid has no arguments.
    let me = unsafe { libc::getpid() };
    let path = format!("/proc/{me}/task/{me}/children");
    if let Ok(t) = std::fs::read_to_string(path) {
        for p in t.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: kill(2) on a child of ours.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

/// Init's children (the roots of the sandbox's tree), oldest first, by PID
/// in init's PID namespace. Read from /proc (its own procfs in a sandbox
/// with a mount namespace, else the host's: the innermost NSpid is used
/// either way). Empty when /proc cannot be read.
fn children_oldest_first() -> Vec<i32> {
    let list = std::fs::read_to_string("/proc/thread-self/children").unwrap_or_default();
    let mut v: Vec<(u64, i32)> = list
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
        .filter_map(|c| {
            let stat = std::fs::read_to_string(format!("/proc/{c}/stat")).ok()?;
            // Field 22 (starttime), counted after the command's closing parenthesis.
            let after = &stat[stat.rfind(')')? + 1..];
            let start: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
            let status = std::fs::read_to_string(format!("/proc/{c}/status")).ok()?;
            let ns_pid: i32 = status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))?
                .split_whitespace()
                .last()?
                .parse()
                .ok()?;
            Some((start, ns_pid))
        })
        .collect();
    v.sort_unstable();
    v.into_iter().map(|(_, p)| p).collect()
}

/// What `main.json` holds: the sandbox's main process once it is no longer
/// the one init started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MainRecord {
    /// PID of the main process in the sandbox's PID namespace.
    pub ns_pid: i32,
}

/// Reaps every child, follows the main process, passes signals on. Returns
/// the status of the last main process once no process is left.
fn supervise(workload: i32, state_fd: RawFd) -> ExitRecord {
    // SAFETY: an initialised, full signal set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        set
    };
    // The main process (0: none known), whether it is still the one init
    // started, and the status of the last main process that exited.
    let mut main = workload;
    let mut original = true;
    let mut result: Option<ExitRecord> = None;
    // The workload may already be gone: look before waiting.
    let mut check_children = true;
    loop {
        if check_children {
            let mut main_gone = false;
            loop {
                let mut st = 0;
                // SAFETY: reaping any child; `st` is a valid out pointer.
                let p = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
                if p > 0 {
                    if p == main {
                        result = Some(ExitRecord::from_wait_status(st));
                        main_gone = true;
                        original = false;
                    }
                    continue;
                }
                if p < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
                    // No process left in the sandbox.
                    return result.unwrap_or(ExitRecord {
                        code: None,
                        signal: None,
                    });
                }
                break;
            }
            if main_gone || main == 0 {
                // Others live on (a daemon the main process left behind):
                // the oldest of them is the main process now.
                main = children_oldest_first().first().copied().unwrap_or(0);
                if main != 0 {
                    let rec = MainRecord { ns_pid: main };
                    write_state_file(
                        state_fd,
                        "main.json",
                        &serde_json::to_vec(&rec).unwrap_or_default(),
                    );
                }
            }
        }
        // SAFETY: `set` is initialised; `info` is a valid out pointer.
        let sig = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::sigwaitinfo(&set, &mut info)
        };
        if sig < 0 {
            check_children = false;
            continue;
        }
        check_children = sig == libc::SIGCHLD;
        if sig == libc::SIGCHLD {
            continue;
        }
        if original {
            // SAFETY: kill(2) on our child, the workload, not yet reaped.
            unsafe { libc::kill(workload, sig) };
        } else {
            // The process init started is gone: every root of what is left
            // gets the signal (a daemon's children get it from their parent).
            for c in children_oldest_first() {
                // SAFETY: kill(2) on a child of ours.
                unsafe { libc::kill(c, sig) };
            }
        }
    }
}

fn write_exit(state_fd: RawFd, rec: &ExitRecord) {
    write_state_file(
        state_fd,
        "exit.json",
        &serde_json::to_vec(rec).unwrap_or_default(),
    );
}

/// Replaces `name` in the state directory atomically (through a temporary
/// file and a rename).
fn write_state_file(state_fd: RawFd, name: &str, data: &[u8]) {
    let (Ok(tmp), Ok(fin)) = (CString::new(format!("{name}.tmp")), CString::new(name)) else {
        return;
    };
    // SAFETY: openat relative to the state directory fd with a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            state_fd,
            tmp.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        return;
    }
    // SAFETY: `fd` was just opened by us; File takes ownership and closes it.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    // No fsync: the record describes a sandbox a crash ends anyway (see
    // `write_atomic`), and `stasis dump` waits for init's exit.
    if f.write_all(data).is_ok() {
        // SAFETY: renameat within the state directory, NUL-terminated names.
        unsafe { libc::renameat(state_fd, tmp.as_ptr(), state_fd, fin.as_ptr()) };
    }
}
