use nix::errno::Errno;

/// A failed kernel call: which call, and the errno it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{call}: {errno}")]
pub struct Error {
    /// The call that failed, e.g. `"pidfd_open"` or `"ptrace(PTRACE_SEIZE)"`.
    pub call: &'static str,
    /// The errno it failed with.
    pub errno: Errno,
}

impl Error {
    /// An error for `call` with an explicit errno.
    pub fn new(call: &'static str, errno: Errno) -> Self {
        Self { call, errno }
    }

    /// An error for `call` with the calling thread's current `errno`.
    pub fn last(call: &'static str) -> Self {
        Self {
            call,
            errno: Errno::last(),
        }
    }
}

/// Result of a raw kernel call.
pub type Result<T> = std::result::Result<T, Error>;

/// Turns a raw `-1`-on-error return value into a `Result`.
pub(crate) fn check(call: &'static str, ret: libc::c_long) -> Result<libc::c_long> {
    if ret == -1 {
        Err(Error::last(call))
    } else {
        Ok(ret)
    }
}
