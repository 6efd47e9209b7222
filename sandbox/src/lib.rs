//! Checkpointable sandboxes: namespaces, stasis's own init as PID 1, mounts,
//! cgroup, network, profiles and the per-sandbox state directory.
//!
//! [`Sandbox::create`] makes one: state directory, cgroup, namespaces (a raw
//! clone3 of the calling, single-threaded process becomes init), veth, then
//! inside (by init) the cgroup namespace, mounts, network and host name, and
//! finally the workload ([`Launch::Command`]) or a restore's own tree
//! ([`Launch::Custom`]). Any failure undoes everything done so far.

pub mod cgroup;
pub mod clone;
pub mod guard;
pub mod init;
pub mod mounts;
pub mod netlink;
pub mod process;
pub mod profile;
mod sandbox;

use std::path::PathBuf;

pub use cgroup::{Cgroup, CgroupError, Freezer};
pub use guard::Guard;
pub use init::{ExitRecord, InitContext, Launch, LaunchFn};
pub use netlink::NetlinkError;
pub use process::ExecFailure;
pub use profile::{Profile, ProfileError};
pub use sandbox::{
    block_signals, valid_name, Ending, LockGuard, Sandbox, Status, DEFAULT_STATE_DIR, FORWARDED,
};

/// Errors of the sandbox crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sandbox name `{0}` is invalid: use 1 to 64 letters, digits, `_`, `-` or `.`, starting with a letter or digit")]
    BadName(String),
    #[error("sandbox name `{name}` is taken (its state directory {dir} exists)")]
    NameTaken { name: String, dir: PathBuf },
    #[error("no sandbox named `{name}` (no state directory {dir})")]
    NotFound { name: String, dir: PathBuf },
    #[error("the previous sandbox named `{name}` is still ending: its processes have not all exited after {secs} s ({marker} remains)")]
    StillEnding {
        name: String,
        secs: u64,
        marker: PathBuf,
    },
    #[error("sandbox `{0}` is busy: another stasis operation holds its lock")]
    Locked(String),
    #[error("sandbox `{0}` is not running")]
    NotRunning(String),
    #[error("sandbox `{0}` is still running (stop it first, or force)")]
    Running(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        source: std::io::Error,
    },
    #[error("state of sandbox `{name}` ({path}) is unreadable: {message}")]
    BadState {
        name: String,
        path: PathBuf,
        message: String,
    },
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("profile: key `{key}`: {message}")]
    ProfileValue { key: String, message: String },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("sandbox setup failed ({step}): {message}")]
    Setup { step: String, message: String },
    /// The command could not be started; `errno` is ENOENT when it does not exist.
    #[error("{}", .0.message)]
    Exec(ExecFailure),
    #[error("inside the new sandbox: {0}")]
    Launch(String),
    #[error("the sandbox's init exited during setup ({0})")]
    InitDied(String),
}

impl Error {
    /// The exit status a shell would give: 127 for a command that does not
    /// exist, 126 for one that cannot run; None for other errors.
    pub fn exec_exit_code(&self) -> Option<i32> {
        match self {
            Error::Exec(f) => Some(process::exec_failure_code(f.errno)),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
