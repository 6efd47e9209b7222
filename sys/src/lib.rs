//! Raw kernel interfaces for checkpoint/restore that `nix` and `rustix` do not
//! wrap: pidfds, `clone3` with `set_tid`, the newer ptrace requests, syscall
//! injection into a stopped tracee, `PR_SET_MM_MAP`, `PAGEMAP_SCAN`,
//! `ARCH_MAP_VDSO_64`, userfaultfd write-protection and `kcmp`.
//!
//! Every wrapper returns [`Result`], whose [`Error`] names the call that failed
//! and the errno it failed with. Constants missing from the system headers are
//! defined here with their kernel values, each naming the kernel header.

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
compile_error!("the sys crate supports Linux on x86_64 only");

pub mod clone3;
pub mod cpu;
pub mod inject;
pub mod kcmp;
pub mod mm;
pub mod pidfd;
pub mod ptrace;
pub mod uffd;

mod error;

pub use error::{Error, Result};
pub use nix::errno::Errno;

#[cfg(test)]
mod tests;
