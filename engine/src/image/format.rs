//! Serde types of every image record. The image is versioned as a whole,
//! major.minor (`FORMAT_VERSION`, `FORMAT_MINOR`, docs/image-format.md):
//! a field is only added with `#[serde(default)]` and a new minor, and a
//! field an older stasis may ignore is listed in `IGNORABLE` with it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `manifest.json`: what the image is and the checksum of every other file.
/// Unknown fields are refused when read (unless a newer minor declares
/// them ignorable): `ImageReader::open`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub magic: String,
    /// The format's major version: a reader refuses any other (but the
    /// legacy major 1, which it reads).
    pub format_version: u32,
    /// The format's minor version: a reader refuses a newer one unless
    /// every field it does not know is listed in `ignorable`.
    #[serde(default)]
    pub format_minor: u32,
    /// Fields added in minors after the first of this major that a reader
    /// that does not know them may ignore, as `file-pattern:key` (see
    /// docs/image-format.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignorable: Vec<String>,
    pub stasis_version: String,
    pub kernel_release: String,
    pub arch: String,
    pub cpu: CpuFeatures,
    /// Seconds since the epoch at which the dump finished.
    pub created: u64,
    pub files: BTreeMap<String, FileEntry>,
}

/// The CPU state an image needs: restore refuses a CPU without these xstate features.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CpuFeatures {
    /// XCR0: the xstate components the kernel saves.
    pub xcr0: u64,
    /// Size of the NT_X86_XSTATE buffer.
    pub xstate_size: u32,
    /// The instruction-set features (CPUID, named as /proc/cpuinfo does)
    /// programs may have chosen code paths by: restore refuses a CPU that
    /// lacks any of them. Empty in images made before they were recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    pub size: u64,
    /// xxh3-64 of the contents, lower-case hex.
    pub xxh3: String,
}

/// `inventory.json`: the sandbox and the process tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inventory {
    /// Name of the dumped sandbox.
    pub sandbox: String,
    /// The sandbox's profile, as the sandbox crate serialises it.
    pub profile: serde_json::Value,
    /// Host path of the sandbox log at dump time: fds pointing at it are
    /// reopened on the restored sandbox's log.
    pub log_path: String,
    /// In-namespace PID of the workload's root process (init's supervised child).
    pub workload_pid: i32,
    /// Every process, parents before children.
    pub processes: Vec<ProcessEntry>,
    pub stats: DumpStats,
    /// CLOCK_MONOTONIC and CLOCK_BOOTTIME as the workload saw them when it
    /// was stopped: restore starts the sandbox in a time namespace whose
    /// offsets make both clocks go on from these values.
    #[serde(default)]
    pub clocks: Option<Clocks>,
    /// The command the dumped sandbox was started with (`stasis ps` shows it
    /// for the restored one).
    #[serde(default)]
    pub command: Vec<String>,
    /// Whether the main process (`workload_pid`) was one the sandbox's init
    /// adopted after the process it started exited (a daemon).
    #[serde(default)]
    pub main_adopted: bool,
}

/// Clock readings, as (seconds, nanoseconds).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Clocks {
    pub monotonic: Timespec,
    pub boottime: Timespec,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessEntry {
    /// PID in the sandbox's PID namespace.
    pub pid: i32,
    /// Parent's PID in the namespace (1 = the sandbox's init).
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Zombie: the exit status the parent will collect (wait status encoding).
    pub zombie: Option<i32>,
}

/// Phase times (milliseconds) and sizes of a dump.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DumpStats {
    pub freeze_ms: f64,
    pub collect_ms: f64,
    pub memory_ms: f64,
    pub write_ms: f64,
    pub frozen_ms: f64,
    pub total_ms: f64,
    pub processes: usize,
    pub threads: usize,
    pub vmas: usize,
    pub pages: u64,
    pub page_bytes: u64,
    pub image_bytes: u64,
    /// `--leave-running`: time spent copying pages after the release, the
    /// pages copied then, and the write faults served meanwhile.
    #[serde(default)]
    pub live_ms: f64,
    #[serde(default)]
    pub live_pages: u64,
    #[serde(default)]
    pub live_faults: u64,
}

/// `proc-<pid>.json`: everything about one live process but its pages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessImage {
    pub pid: i32,
    pub core: Core,
    pub creds: Creds,
    pub mm: MmImage,
    pub vmas: Vec<Vma>,
    pub threads: Vec<ThreadImage>,
    pub sigactions: Vec<SigAction>,
    /// Signals pending for the whole process (shared queue).
    pub shared_pending: Vec<SigInfo>,
    pub fds: Vec<FdEntry>,
    pub rlimits: Vec<Rlimit>,
    /// Interval timers and POSIX timers.
    #[serde(default)]
    pub timers: TimersImage,
    /// seccomp filters and modes of the threads.
    #[serde(default)]
    pub seccomp: SeccompImage,
    /// Scheduling attributes of the threads, oom_score_adj.
    #[serde(default)]
    pub sched: crate::sched::SchedImage,
}

/// The timers of a process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TimersImage {
    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF, in that order (all zero: disarmed).
    pub itimers: [Itimer; 3],
    /// POSIX timers (timer_create), by ascending id.
    pub posix: Vec<PosixTimer>,
}

/// An interval and the time left (relative), as (seconds, nanoseconds).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Itimer {
    pub interval: Timespec,
    pub value: Timespec,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PosixTimer {
    /// The timer id the process knows it by.
    pub id: i32,
    /// The clock id given to timer_create.
    pub clock: i32,
    /// sigev_notify: SIGEV_SIGNAL (0), SIGEV_NONE (1), SIGEV_THREAD (2),
    /// with SIGEV_THREAD_ID (4) when a thread is the target.
    pub notify: i32,
    pub signo: i32,
    /// sigev_value.
    pub value: u64,
    /// The target thread (its TID in the sandbox) with SIGEV_THREAD_ID.
    #[serde(default)]
    pub thread: i32,
    /// Interval and time left at the dump.
    pub spec: Itimer,
    /// timer_getoverrun at the dump (informative: the kernel cannot be given it back).
    #[serde(default)]
    pub overrun: i32,
}

/// seccomp state of a process: the distinct filters, and per thread its mode
/// and its filter chain.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeccompImage {
    pub filters: Vec<SeccompFilter>,
    /// Threads in a seccomp mode; the others have none.
    pub threads: Vec<ThreadSeccomp>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeccompFilter {
    /// The BPF program: `struct sock_filter` instructions, 8 bytes each, hex.
    #[serde(with = "hex_bytes")]
    pub program: Vec<u8>,
    /// Installed with SECCOMP_FILTER_FLAG_LOG.
    #[serde(default)]
    pub log: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThreadSeccomp {
    /// TID in the sandbox.
    pub tid: i32,
    /// 1 strict, 2 filter.
    pub mode: u32,
    /// Indexes into `filters`, oldest (installed first) first.
    pub chain: Vec<u32>,
}

/// Process-wide attributes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Core {
    pub comm: String,
    pub personality: u32,
    pub umask: u32,
    pub cwd: String,
    pub root: String,
    pub no_new_privs: bool,
    pub dumpable: i32,
    pub pdeath_signal: i32,
    /// Seccomp mode of the main thread from /proc (0 none); the filters are in
    /// `ProcessImage::seccomp`.
    pub seccomp_mode: u32,
    /// PR_SET_CHILD_SUBREAPER: orphaned descendants are reparented to it.
    #[serde(default)]
    pub child_subreaper: bool,
    /// The process was stopped by this job-control signal (group-stop):
    /// restored stopped, waiting for SIGCONT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<i32>,
    /// The audit login UID (/proc/PID/loginuid) where one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loginuid: Option<u32>,
    /// The working directory was deleted: index into `files.json`'s
    /// `ghosts` (`cwd` is the path it had).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd_ghost: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Creds {
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    /// PR_GET_SECUREBITS (SECBIT_NOROOT, SECBIT_KEEP_CAPS, ... and their locks).
    #[serde(default)]
    pub securebits: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// The mm fields restored through PR_SET_MM_MAP.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MmImage {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// The saved auxiliary vector, as words.
    pub auxv: Vec<u64>,
    /// Path of the executable inside the sandbox.
    pub exe: String,
    /// What PR_GET_THP_DISABLE returned (0: transparent huge pages allowed).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub thp_disable: u64,
    /// The mlockall flags in force for future mappings (MCL_FUTURE, with
    /// MCL_ONFAULT when they are locked as they fault in), or 0.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub mlock_future: u64,
    /// membarrier registrations (MEMBARRIER_CMD_REGISTER_* bits), or 0.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub membarrier: u64,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// What backs a memory area.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VmaKind {
    /// Anonymous memory (heap, stack, mmap'd anonymous), private or shared.
    Anon,
    /// A file mapping; `path` is seen from inside the sandbox.
    File {
        path: String,
        /// Offset into the file, in bytes.
        offset: u64,
        dev: u64,
        ino: u64,
        /// The file was deleted while mapped: its contents are in `deleted_blob`.
        #[serde(default)]
        deleted: bool,
        /// A memfd (`/memfd:NAME (deleted)`): index into `files.json`'s
        /// `memfds`; mapped from the restored memfd.
        #[serde(default)]
        memfd: Option<u32>,
        /// A file deleted while mapped: index into `files.json`'s `ghosts`;
        /// mapped from the recreated file.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ghost: Option<u32>,
    },
    /// One of the kernel's special mappings: [vvar], [vvar_vclock], [vdso].
    Special { name: String },
    /// The ring of a Linux AIO context (io_setup): the area's address is
    /// the context's id, its pages (all saved) the ring; `nr_req` is what
    /// io_setup is asked for to get a ring of the same size.
    Aio { nr_req: u32 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// PROT_* bits.
    pub prot: u32,
    pub shared: bool,
    pub growsdown: bool,
    /// Flags to reapply: madvise (dontfork, wipeonfork, hugepage, nohugepage,
    /// dontdump, mergeable, sequential, random), mmap (noreserve, droppable)
    /// and mlock (locked, lockonfault).
    #[serde(default)]
    pub advice: Vec<String>,
    /// The name the kernel shows ([heap], [stack], ...), for inspection.
    #[serde(default)]
    pub label: String,
    #[serde(flatten)]
    pub kind: VmaKind,
    /// Runs of saved pages, ascending and inside [start, end).
    pub pages: Vec<PageRun>,
    /// Guard regions (MADV_GUARD_INSTALL) as [start, end) byte ranges,
    /// ascending and inside the area.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guards: Vec<[u64; 2]>,
    /// The shared memory object the area maps (shared anonymous memory, a
    /// SysV segment), saved once in `shmem.json` however many areas and
    /// processes map it. Its pages are not in `pages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_object: Option<SharedRef>,
}

/// `offset` bytes into shared memory object `object`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SharedRef {
    pub object: u32,
    pub offset: u64,
}

/// `shmem.json`: the shared memory objects areas map.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SharedMemoryImage {
    pub objects: Vec<SharedObject>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SharedObject {
    pub id: u32,
    /// Size in bytes.
    pub size: u64,
    #[serde(flatten)]
    pub kind: SharedObjectKind,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SharedObjectKind {
    /// Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS, /dev/zero), with the
    /// runs of its pages in `shmem.img` (`addr` is the offset in the object).
    Anon { pages: Vec<PageRun> },
    /// A SysV shared memory segment of the sandbox's IPC namespace (its
    /// contents are with the segment in `ipc.json`).
    Sysv { shmid: i32 },
}

/// `ipc.json`: the SysV IPC objects of the sandbox's IPC namespace.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpcImage {
    /// /proc/sys/kernel settings of the namespace (shmmax, msgmnb, sem, ...), by name.
    pub sysctls: BTreeMap<String, String>,
    pub shm: Vec<ShmSegment>,
    pub sem: Vec<SemSet>,
    pub msg: Vec<MsgQueue>,
}

/// Owner and mode of an IPC object.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpcPerm {
    pub key: i32,
    pub id: i32,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
    /// Permission bits, plus SHM_DEST (0o1000) and SHM_LOCKED (0o2000) for segments.
    pub mode: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShmSegment {
    pub perm: IpcPerm,
    pub size: u64,
    /// Runs of pages that hold data, in `shmem.img` (`addr` is the offset in the segment).
    pub pages: Vec<PageRun>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SemSet {
    pub perm: IpcPerm,
    /// semval of each semaphore.
    pub values: Vec<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MsgQueue {
    pub perm: IpcPerm,
    pub qbytes: u64,
    /// The queued messages, oldest first.
    pub messages: Vec<IpcMessage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpcMessage {
    pub mtype: i64,
    /// The text, in blobs.img.
    pub data: Blob,
}

/// `npages` pages at `addr`, stored at `offset` of one of the process's page
/// files: `file` 0 is `pages-<pid>.img`, `file` k > 0 is `pages-<pid>-<k>.img`
/// (`page_file_name`). Runs of shared memory objects live in `shmem.img` and
/// keep `file` 0.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PageRun {
    pub addr: u64,
    pub npages: u64,
    pub offset: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub file: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// The name of page file `index` of process `pid`.
pub fn page_file_name(pid: i32, index: u32) -> String {
    if index == 0 {
        format!("pages-{pid}.img")
    } else {
        format!("pages-{pid}-{index}.img")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThreadImage {
    pub tid: i32,
    pub regs: Regs,
    /// NT_X86_XSTATE contents, hex.
    #[serde(with = "hex_bytes")]
    pub xstate: Vec<u8>,
    pub sigmask: u64,
    pub pending: Vec<SigInfo>,
    pub altstack: AltStack,
    pub rseq: Option<Rseq>,
    pub clear_child_tid: u64,
    pub robust_list: u64,
    pub robust_list_len: u64,
    /// The syscall the thread was stopped in, if any, and how it resumes.
    #[serde(default)]
    pub in_syscall: Option<SyscallState>,
    /// Credentials are per thread: those of a thread other than the main
    /// one when they differ from the process's (`ProcessImage::creds`).
    #[serde(default)]
    pub creds: Option<Creds>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyscallState {
    pub nr: i64,
    /// "restart", "restart_block" (turned into EINTR), "eintr" or "none".
    pub action: String,
}

/// General-purpose registers (struct user_regs_struct).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Regs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rseq {
    pub addr: u64,
    pub len: u32,
    pub signature: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SigAction {
    pub signo: i32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// A queued signal: the raw 128-byte siginfo, hex.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SigInfo {
    pub signo: i32,
    #[serde(with = "hex_bytes")]
    pub raw: Vec<u8>,
}

/// One fd of a process, pointing at a shared open file description.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FdEntry {
    pub fd: i32,
    pub cloexec: bool,
    /// Index into `files.json`'s descriptions.
    pub file: u32,
}

/// `files.json`: every open file description of the tree, each once however
/// many fds and processes share it, and every pipe.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FilesImage {
    pub files: Vec<FileDesc>,
    pub pipes: Vec<PipeImage>,
    /// memfd objects (an inode each), shared by descriptions and mappings.
    #[serde(default)]
    pub memfds: Vec<MemfdImage>,
    /// File locks: flock and OFD locks of a description, POSIX locks of a process.
    #[serde(default)]
    pub locks: Vec<LockImage>,
    /// flock and OFD locks held by a description that only memory mappings
    /// keep (its fds closed), restored on the mappings of one process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mapped_locks: Vec<MappedLock>,
    /// Every socket of the tree (those reached through an fd, and the
    /// clients of connections waiting to be accepted).
    #[serde(default)]
    pub sockets: Vec<SocketImage>,
    /// Files at the path names of unix sockets, as they were at dump.
    #[serde(default)]
    pub unix_files: Vec<UnixFile>,
    /// Files deleted while open or mapped, once per inode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ghosts: Vec<GhostImage>,
    /// pty pairs of the sandbox's devpts, in index order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ptys: Vec<PtyImage>,
}

/// A pty pair of the sandbox's devpts and the state of its line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PtyImage {
    /// Its number in the devpts instance (/dev/pts/N).
    pub index: u32,
    /// The slave's termios (termios2: speeds included).
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    #[serde(with = "hex_bytes")]
    pub cc: Vec<u8>,
    pub ispeed: u32,
    pub ospeed: u32,
    /// Window size: rows, columns, x and y pixels.
    pub winsize: [u16; 4],
    /// TIOCSPTLCK: the slave cannot be opened.
    pub locked: bool,
    /// TIOCPKT on the master.
    pub packet: bool,
    /// TIOCEXCL on the slave.
    pub exclusive: bool,
    /// Bytes the slave has not read yet (written to the master).
    #[serde(with = "hex_bytes", default)]
    pub to_slave: Vec<u8>,
    /// Bytes the master has not read yet (written to the slave, after
    /// output processing).
    #[serde(with = "hex_bytes", default)]
    pub to_master: Vec<u8>,
    /// Every slave description was closed after one was opened: the
    /// master reads EIO (and polls POLLHUP) until a slave is opened again.
    #[serde(default)]
    pub hangup: bool,
    /// The session (PID in the sandbox) whose controlling terminal it is.
    #[serde(default)]
    pub session: Option<i32>,
    /// The foreground process group then.
    #[serde(default)]
    pub fg_pgrp: Option<i32>,
}

/// A file deleted (unlinked) while open or mapped: saved once however many
/// descriptions and mappings share its inode, recreated once at restore
/// (unlinked again) and every description reopened from it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GhostImage {
    pub id: u32,
    /// Its path when it was deleted (without " (deleted)"): it is recreated
    /// in that directory.
    pub path: String,
    /// st_mode's S_IFMT bits: a regular file, a directory or a device node.
    pub kind: u32,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Made with O_TMPFILE: it can still be linked into a directory
    /// (linkat through /proc/self/fd), which a deleted file cannot.
    #[serde(default)]
    pub tmpfile: bool,
    /// The device number of a device node.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub rdev: u64,
    /// Its data, hole by hole as in the file (in blobs.img).
    #[serde(default)]
    pub extents: Vec<MemfdExtent>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileDesc {
    pub id: u32,
    /// open(2) status flags (O_ACCMODE, O_APPEND, O_NONBLOCK, ...), without O_CLOEXEC.
    pub flags: u32,
    #[serde(flatten)]
    pub kind: FileKind,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FileKind {
    /// A regular file, directory or device node reopened by path.
    Path {
        path: String,
        pos: u64,
        /// st_mode's S_IFMT bits.
        mode: u32,
        size: u64,
        /// Deleted while open (images before `ghost`): contents are in blobs.img.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deleted: Option<Blob>,
        /// Deleted while open: index into `files.json`'s `ghosts`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ghost: Option<u32>,
    },
    /// The sandbox's log (stdout/stderr of the workload).
    SandboxLog,
    /// One end of a pipe or FIFO.
    Pipe {
        pipe: u32,
        /// Path of the FIFO, for named pipes.
        #[serde(default)]
        fifo: Option<String>,
    },
    /// An eventfd.
    Eventfd {
        count: u64,
        /// EFD_SEMAPHORE.
        semaphore: bool,
    },
    /// A timerfd; `value_ns` is the time left at dump (0: disarmed).
    Timerfd {
        clockid: i32,
        /// Expirations not read yet.
        ticks: u64,
        /// TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET as last set.
        settime_flags: u32,
        value_ns: u64,
        interval_ns: u64,
        /// Absolute expiry (ns since the epoch) of a TFD_TIMER_ABSTIME timer
        /// on a real-time clock, restored as such.
        #[serde(default)]
        deadline_ns: Option<u64>,
    },
    /// A signalfd and the signals it accepts.
    Signalfd { sigmask: u64 },
    /// An epoll instance. Its watches name their targets by fd number in
    /// process `owner`, which adds them again at restore.
    Epoll {
        owner: i32,
        watches: Vec<EpollWatch>,
    },
    /// An inotify instance and its watches, in wd order.
    Inotify { watches: Vec<InotifyWatch> },
    /// A description of a memfd (index into `memfds`).
    Memfd { memfd: u32, pos: u64 },
    /// A pidfd of process (or thread, with PIDFD_THREAD) `pid` of the tree.
    Pidfd { pid: i32 },
    /// A socket: index into `FilesImage::sockets`.
    Socket { socket: u32 },
    /// One end of a pty pair of the sandbox's devpts: index into
    /// `FilesImage::ptys`; the master (/dev/ptmx) or a slave (/dev/pts/N).
    Pty { pty: u32, master: bool },
    /// /dev/tty opened while pty `pty` (index into `FilesImage::ptys`) was
    /// the process's controlling terminal.
    DevTty { pty: u32 },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EpollWatch {
    /// fd number of the target in the owning process.
    pub tfd: i32,
    /// Target description (index into `files`).
    pub file: u32,
    pub events: u32,
    pub data: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InotifyWatch {
    pub wd: i32,
    pub mask: u32,
    /// Path of the watched inode, seen from inside the sandbox.
    pub path: String,
    pub dev: u64,
    pub ino: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemfdImage {
    pub id: u32,
    /// The name given to memfd_create (without the `memfd:` prefix).
    pub name: String,
    pub size: u64,
    /// Permission bits (07777).
    pub mode: u32,
    /// F_GET_SEALS.
    pub seals: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// The data, extent by extent (holes are not saved).
    pub extents: Vec<MemfdExtent>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemfdExtent {
    /// Offset in the memfd.
    pub offset: u64,
    pub data: Blob,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LockKind {
    /// flock(2): belongs to the open file description.
    Flock,
    /// F_OFD_SETLK: belongs to the open file description.
    Ofd,
    /// F_SETLK: belongs to the process.
    Posix,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockImage {
    pub kind: LockKind,
    /// The description locked (index into `files`).
    pub file: u32,
    /// POSIX locks: owning process and the fd it reacquires the lock through.
    #[serde(default)]
    pub pid: i32,
    #[serde(default)]
    pub fd: i32,
    pub write: bool,
    pub start: u64,
    /// Bytes from `start`; 0 reaches to the end of the file, however far.
    pub len: u64,
}

/// A flock or OFD lock whose description lives on only in file mappings:
/// restore opens the file in process `pid`, takes the lock, maps the
/// process's areas of that file through it and closes the fd, so that the
/// mappings hold the lock as they did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MappedLock {
    /// `flock` or `ofd`.
    pub kind: LockKind,
    /// The process (PID in the sandbox) whose mappings hold the description.
    pub pid: i32,
    /// Start of one of its areas mapping the file (every area of the same
    /// file in that process maps the locked description).
    pub area: u64,
    pub write: bool,
    pub start: u64,
    /// Bytes from `start`; 0 reaches to the end of the file.
    pub len: u64,
}

/// One socket: unix, TCP or UDP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SocketImage {
    pub id: u32,
    /// Inode number at dump (for inspection and error messages).
    pub ino: u64,
    /// AF_UNIX, AF_INET, AF_INET6 or AF_NETLINK.
    pub family: i32,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET (SOCK_RAW: netlink).
    pub sock_type: i32,
    pub protocol: i32,
    /// Kernel state in TCP numbering (unix sockets use it too):
    /// 1 established, 7 close, 10 listen.
    pub state: u8,
    /// Shutdown bits: 1 receive side, 2 send side.
    #[serde(default)]
    pub shutdown: u8,
    #[serde(default)]
    pub opts: SockOpts,
    #[serde(default)]
    pub unix: Option<UnixSocketImage>,
    #[serde(default)]
    pub inet: Option<InetSocketImage>,
    /// A netlink socket's port id, groups and peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netlink: Option<crate::net::netlink::NetlinkImage>,
}

/// Socket options a program may have set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct SockOpts {
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub keepalive: bool,
    pub broadcast: bool,
    pub oobinline: bool,
    pub passcred: bool,
    pub priority: i32,
    pub rcvlowat: i32,
    pub mark: u32,
    /// SO_SNDBUF / SO_RCVBUF as the kernel reports them (doubled).
    pub sndbuf: i32,
    pub rcvbuf: i32,
    /// SO_BUF_LOCK: 1 send buffer set by the program, 2 receive buffer.
    pub buf_lock: i32,
    /// SO_LINGER: seconds when lingering is on.
    pub linger: Option<i32>,
    pub rcvtimeo_us: u64,
    pub sndtimeo_us: u64,
    /// SO_PEEK_OFF (-1 off).
    pub peek_off: i32,
    /// TCP_NODELAY, TCP_CORK, keepalive timing, user timeout, congestion control.
    pub tcp_nodelay: bool,
    pub tcp_cork: bool,
    pub tcp_keepidle: i32,
    pub tcp_keepintvl: i32,
    pub tcp_keepcnt: i32,
    pub tcp_user_timeout: u32,
    pub tcp_congestion: Option<String>,
    /// TCP_DEFER_ACCEPT (seconds) of a listening socket.
    pub tcp_defer_accept: i32,
    /// IPV6_V6ONLY.
    pub v6only: bool,
    /// IP_TOS / IPV6_TCLASS.
    pub tos: i32,
    pub freebind: bool,
}

/// Unix socket specifics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct UnixSocketImage {
    /// Bound name as the kernel holds it: a path (with its terminating NUL)
    /// or an abstract name (leading NUL); empty when unbound.
    #[serde(with = "hex_bytes")]
    pub name: Vec<u8>,
    /// For a relative path name: the directory it was bound in.
    pub bind_dir: Option<String>,
    /// The connected peer (a socket id).
    pub peer: Option<u32>,
    /// A stream or seqpacket socket whose peer has closed.
    pub peer_gone: bool,
    /// A client whose connection waits in this listener's queue (socket id).
    pub connecting_to: Option<u32>,
    /// Listening: backlog and the clients waiting to be accepted, in order.
    pub backlog: u32,
    pub waiting: Vec<u32>,
    /// Bytes queued for reading (stream sockets).
    pub stream_queue: Blob,
    /// Records or datagrams queued for reading, in order (datagram and
    /// seqpacket sockets), each with the sender's name.
    pub packets: Vec<UnixPacket>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnixPacket {
    #[serde(with = "hex_bytes")]
    pub sender: Vec<u8>,
    pub data: Blob,
}

/// A file at a unix socket's path name, as it was at dump.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnixFile {
    /// Absolute path in the sandbox (relative names joined to their directory).
    pub path: String,
    /// Whether a socket file was there at dump, and its attributes.
    pub present: bool,
    /// The socket (id) whose file it is; None for the file of a closed socket.
    pub owner: Option<u32>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// TCP and UDP specifics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct InetSocketImage {
    /// Bound address (ip:port, [ip6]:port); None when unbound.
    pub local: Option<String>,
    /// Connected peer.
    pub peer: Option<String>,
    /// Listening backlog.
    pub backlog: u32,
    /// UDP: datagrams that were queued at dump and are not carried (their
    /// sender is not a socket of the tree).
    pub dropped_datagrams: u64,
    /// UDP: queued datagrams sent by sockets of the tree, in order.
    pub datagrams: Vec<UdpDatagram>,
    /// An established TCP connection, restored with TCP_REPAIR.
    pub tcp: Option<TcpConnImage>,
    /// TCP in state CLOSE after a connection ended (fd still open): restored
    /// unbound, as a fresh socket.
    #[serde(default)]
    pub ended: bool,
    /// A connection of the tree waiting in a listener's accept queue (this
    /// is its client end): restored by connecting to the restored listener
    /// again, which puts the listener's end back in its queue.
    #[serde(default)]
    pub reconnect: bool,
}

/// A datagram queued on a UDP socket, sent by socket `sender` of the tree.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UdpDatagram {
    pub sender: u32,
    /// The sender's address as the receiver saw it.
    pub from: String,
    pub data: Blob,
}

/// What TCP_REPAIR needs to recreate a connection.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct TcpConnImage {
    /// Sequence number of the first byte of the send queue (snd_una) and of
    /// the receive queue.
    pub snd_seq: u32,
    pub rcv_seq: u32,
    /// Send queue (sent but unacknowledged, then not yet sent) and receive
    /// queue (received, not yet read).
    pub send_queue: Blob,
    /// Bytes at the end of the send queue not sent yet.
    pub unsent: u64,
    pub recv_queue: Blob,
    /// Options negotiated: MSS, window scales, SACK, timestamps.
    pub mss: u32,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    pub wscale_ok: bool,
    pub sack_ok: bool,
    pub timestamps_ok: bool,
    /// TCP_TIMESTAMP (the connection's timestamp clock).
    pub timestamp: u32,
    /// TCP_REPAIR_WINDOW.
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PipeImage {
    pub id: u32,
    pub ino: u64,
    /// F_GETPIPE_SZ.
    pub capacity: u64,
    /// Unread bytes at dump time.
    pub data: Blob,
}

/// `len` bytes at `offset` of blobs.img.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Blob {
    pub offset: u64,
    pub len: u64,
}

/// Hex encoding for byte vectors in JSON.
pub mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(v.len() * 2);
        for b in v {
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <&str>::deserialize(d)?;
        if s.len() % 2 != 0 {
            return Err(serde::de::Error::custom("odd hex length"));
        }
        let digit = |c: u8| -> Result<u8, D::Error> {
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                _ => Err(serde::de::Error::custom("bad hex digit")),
            }
        };
        s.as_bytes()
            .chunks(2)
            .map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?))
            .collect()
    }
}

/// Both directions between `Regs` and `struct user_regs_struct`, field by field.
macro_rules! regs_conversions {
    ($($f:ident),* $(,)?) => {
        impl From<&libc::user_regs_struct> for Regs {
            fn from(r: &libc::user_regs_struct) -> Self {
                Regs { $($f: r.$f),* }
            }
        }

        impl From<&Regs> for libc::user_regs_struct {
            fn from(r: &Regs) -> Self {
                libc::user_regs_struct { $($f: r.$f),* }
            }
        }
    };
}

regs_conversions!(
    r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs,
    eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs,
);
