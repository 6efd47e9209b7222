//! Dump and restore of a sandbox's process tree.
//!
//! One module per resource kind, each holding both directions (dump: kernel
//! object to image record; restore: record to kernel object):
//! - `tree`: PIDs, parents, sessions, process groups, zombies;
//! - `memory` (+ `memory::pages`, `memory::mm`): areas, page contents, mm fields, vDSO;
//! - `thread`: registers, xstate, syscall restart, rseq, robust list;
//! - `signals`: handlers, masks, pending signals, alternate stacks;
//! - `files` (+ `files::regular`, `files::pipe`): fds and open file descriptions;
//! - `task`: comm, personality, umask, cwd, rlimits, credentials;
//! - `mounts`: the sandbox's private tmpfs contents (/tmp, /dev/shm);
//! - `net` (+ `net::unix`, `net::inet`, `net::tcp_repair`, ...): sockets and
//!   the sandbox's network namespace;
//! - `memory::shared`: shared anonymous memory and SysV segments mapped by
//!   several areas or processes, each saved and restored as one object;
//! - `ipc`: the SysV IPC objects of the sandbox's IPC namespace;
//! - `timers`: interval and POSIX timers, and the time namespace that keeps
//!   the monotonic clocks going on from the dump;
//! - `seccomp`: seccomp filters and modes;
//! - `sched`: scheduling policies, priorities and nice values, oom_score_adj;
//! - `deps`: the host files an image needs but does not hold (mapped
//!   executables and libraries, files open by path), checked at restore;
//! - `logs`: the sandbox's log, carried in the image and continued.
//!
//! `seize` stops and releases the tree, `remote` runs syscalls inside a
//! stopped task, `interrupt` keeps an interrupted dump from harming the
//! workload, `image` is the on-disk format; `dump` and `restore` are the
//! two orchestrations, `inspect` reads an image for people.

pub mod deps;
pub mod dump;
pub mod error;
pub mod faults;
pub mod files;
pub mod image;
pub mod inspect;
pub mod interrupt;
pub mod ipc;
pub mod logs;
pub mod memory;
pub mod mounts;
pub mod net;
pub mod remote;
pub mod restore;
pub mod sched;
pub mod seccomp;
pub mod seize;
pub mod signals;
pub mod task;
pub mod thread;
pub mod timers;
pub mod tree;

pub use dump::{dump, DumpOptions};
pub use error::{Error, Result};
pub use image::DumpStats;
pub use restore::{restore, RestoreOptions, RestoreStats, Restored};
