//! Turning a freshly forked child into the workload: credentials,
//! capabilities, limits, working directory, environment, and the exec itself.
//! Everything here runs in a single-threaded child between fork and exec.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use caps::CapSet;

use crate::profile::ProcessSettings;

/// Why a child could not become the workload.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExecFailure {
    /// errno of the failing call (ENOENT for a command that does not exist).
    pub errno: i32,
    /// What failed, naming the thing at fault.
    pub message: String,
}

impl ExecFailure {
    fn os(what: String) -> ExecFailure {
        let e = std::io::Error::last_os_error();
        ExecFailure {
            errno: e.raw_os_error().unwrap_or(libc::EIO),
            message: format!("{what}: {e}"),
        }
    }
    fn other(errno: i32, message: String) -> ExecFailure {
        ExecFailure { errno, message }
    }
}

/// The workload's environment: the profile's variables plus those named in
/// `pass_env` that are set in the caller's environment.
pub fn environment(p: &ProcessSettings) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> =
        p.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for name in &p.pass_env {
        if let Ok(v) = std::env::var(name) {
            env.retain(|(k, _)| k != name);
            env.push((name.clone(), v));
        }
    }
    env
}

/// Resets every signal's disposition to the default and unblocks all signals
/// (init blocks them all, and Rust's runtime ignores SIGPIPE).
pub fn reset_signals() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL for a valid signal number has no memory effects.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: an empty, initialised set is passed; the old mask is not wanted.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Applies rlimits, groups, user, capabilities, no_new_privs and the working
/// directory of the profile to the calling (child) process.
pub fn apply_settings(p: &ProcessSettings) -> Result<(), ExecFailure> {
    for (name, lim) in &p.rlimits {
        let rl = libc::rlimit {
            rlim_cur: lim.soft.raw(),
            rlim_max: lim.hard.raw(),
        };
        // SAFETY: setrlimit reads a valid rlimit struct.
        if unsafe { libc::setrlimit(name.resource(), &rl) } != 0 {
            return Err(ExecFailure::os(format!(
                "process.rlimits.{}: setrlimit",
                format!("{name:?}").to_lowercase()
            )));
        }
    }

    let keep: HashSet<caps::Capability> = p.capabilities.iter().map(|c| c.0).collect();
    let permitted = caps::read(None, CapSet::Permitted)
        .map_err(|e| ExecFailure::other(libc::EPERM, format!("read capabilities: {e}")))?;
    let kept: caps::CapsHashSet = keep.intersection(&permitted).copied().collect();
    let bounding = caps::read(None, CapSet::Bounding).unwrap_or_default();
    for cap in bounding {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| {
                ExecFailure::other(
                    libc::EPERM,
                    format!("process.capabilities: drop {cap} from the bounding set: {e}"),
                )
            })?;
        }
    }
    caps::set(None, CapSet::Inheritable, &kept).map_err(|e| {
        ExecFailure::other(
            libc::EPERM,
            format!("process.capabilities: set inheritable: {e}"),
        )
    })?;

    let groups: Vec<libc::gid_t> = p.groups.clone();
    // SAFETY: setgroups reads `groups.len()` gids from a live vector.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        return Err(ExecFailure::os("process.groups: setgroups".into()));
    }
    // SAFETY: plain syscalls on integers.
    if unsafe { libc::setresgid(p.group, p.group, p.group) } != 0 {
        return Err(ExecFailure::os(format!(
            "process.group: setgid {}",
            p.group
        )));
    }
    if p.user != 0 {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
            return Err(ExecFailure::os("prctl(PR_SET_KEEPCAPS)".into()));
        }
    }
    // SAFETY: plain syscall on integers.
    if unsafe { libc::setresuid(p.user, p.user, p.user) } != 0 {
        return Err(ExecFailure::os(format!("process.user: setuid {}", p.user)));
    }
    caps::set(None, CapSet::Effective, &kept).map_err(|e| {
        ExecFailure::other(
            libc::EPERM,
            format!("process.capabilities: set effective: {e}"),
        )
    })?;
    caps::set(None, CapSet::Permitted, &kept).map_err(|e| {
        ExecFailure::other(
            libc::EPERM,
            format!("process.capabilities: set permitted: {e}"),
        )
    })?;
    if p.user != 0 {
        caps::set(None, CapSet::Ambient, &kept).map_err(|e| {
            ExecFailure::other(
                libc::EPERM,
                format!("process.capabilities: set ambient: {e}"),
            )
        })?;
    }
    if p.no_new_privs {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(ExecFailure::os("process.no_new_privs: prctl".into()));
        }
    }
    std::env::set_current_dir(&p.cwd).map_err(|e| ExecFailure {
        errno: e.raw_os_error().unwrap_or(libc::ENOENT),
        message: format!("process.cwd: {}: {e}", p.cwd.display()),
    })?;
    Ok(())
}

/// Finds `cmd` the way a shell does: a name with a slash is used as is,
/// anything else is looked up in `path`.
pub fn resolve(cmd: &str, path: Option<&str>) -> Result<PathBuf, ExecFailure> {
    if cmd.is_empty() {
        return Err(ExecFailure::other(libc::ENOENT, "empty command".into()));
    }
    if cmd.contains('/') {
        return Ok(PathBuf::from(cmd));
    }
    let path = path.unwrap_or(crate::profile::DEFAULT_PATH);
    let mut denied = None;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = Path::new(dir).join(cmd);
        let c = cstr(cand.as_os_str());
        // SAFETY: access reads a NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 && !cand.is_dir() {
            return Ok(cand);
        }
        if cand.exists() && denied.is_none() {
            denied = Some(cand);
        }
    }
    if let Some(d) = denied {
        return Ok(d);
    }
    Err(ExecFailure::other(
        libc::ENOENT,
        format!("command not found: {cmd}"),
    ))
}

fn cstr(s: &OsStr) -> CString {
    CString::new(s.as_bytes()).unwrap_or_else(|_| CString::new("\u{1}invalid").expect("no NUL"))
}

/// Replaces the process image. Returns only on failure.
pub fn exec(argv: &[String], env: &[(String, String)]) -> ExecFailure {
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str());
    let prog = match resolve(&argv[0], path_var) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let cprog = cstr(prog.as_os_str());
    let cargs: Vec<CString> = argv.iter().map(|a| cstr(OsStr::new(a))).collect();
    let cenv: Vec<CString> = env
        .iter()
        .map(|(k, v)| cstr(OsStr::new(&format!("{k}={v}"))))
        .collect();
    let mut pargs: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
    pargs.push(std::ptr::null());
    let mut penv: Vec<*const libc::c_char> = cenv.iter().map(|c| c.as_ptr()).collect();
    penv.push(std::ptr::null());
    // SAFETY: NUL-terminated strings and NULL-terminated pointer arrays that
    // live across the call.
    unsafe { libc::execve(cprog.as_ptr(), pargs.as_ptr(), penv.as_ptr()) };
    let e = std::io::Error::last_os_error();
    let errno = e.raw_os_error().unwrap_or(libc::EIO);
    let message = if errno == libc::ENOENT {
        format!("command not found: {}", prog.display())
    } else {
        format!("execve {}: {e}", prog.display())
    };
    ExecFailure { errno, message }
}

/// Exit status a shell gives for an exec failure: 127 for not found, else 126.
pub fn exec_failure_code(errno: i32) -> i32 {
    if errno == libc::ENOENT || errno == libc::ENOTDIR {
        127
    } else {
        126
    }
}
