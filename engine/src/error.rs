//! The engine's error type. Every variant names what it is about: the process,
//! the fd, the memory area or the image file at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is part of the message (not a `source`), so that error
    // chains do not print it twice.
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("{0}")]
    Sys(#[from] sys::Error),
    #[error("image {path}: {reason}")]
    BadImage { path: PathBuf, reason: String },
    #[error("process {pid}: {what} is not supported yet ({detail})")]
    Unsupported {
        pid: i32,
        what: String,
        detail: String,
    },
    #[error("process {pid}: {reason}")]
    Process { pid: i32, reason: String },
    // Transparent: the sandbox's errors say what they are about, and a
    // prefix here would print the message twice in an error chain.
    #[error(transparent)]
    Sandbox(#[from] sandbox::Error),
    #[error("cgroup: {0}")]
    Cgroup(#[from] sandbox::cgroup::CgroupError),
    #[error("interrupted by {0}: rolled back, the workload runs on as it was and the partial image is removed")]
    Interrupted(String),
    /// Opening an open file description of the image failed (restore
    /// names the processes and fds that hold it).
    #[error("open file description {id}: {cause}")]
    File { id: u32, cause: Box<Error> },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps an I/O error with what was being done.
pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |cause| Error::Io { what, cause }
}

/// Wraps a nix errno with what was being done.
pub fn errno(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> Error {
    let what = what.into();
    move |e| Error::Io {
        what,
        cause: std::io::Error::from_raw_os_error(e as i32),
    }
}
