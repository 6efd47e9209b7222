//! The features `stasis check` probes and the stasis capabilities built on
//! them. Names are stable: scripts and other crates refer to them.

use std::fmt;

macro_rules! features {
    ($( $(#[$m:meta])* $variant:ident = $name:literal ),* $(,)?) => {
        /// One kernel interface stasis depends on, probed by really using it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Feature { $( $(#[$m])* $variant ),* }

        impl Feature {
            /// Every feature, in report order.
            pub const ALL: &'static [Feature] = &[$(Feature::$variant),*];

            /// The stable name (`--feature NAME`, JSON `name`).
            pub fn name(self) -> &'static str {
                match self { $(Feature::$variant => $name),* }
            }
        }
    };
}

features! {
    NsPid = "ns-pid",
    NsMnt = "ns-mnt",
    NsNet = "ns-net",
    NsUts = "ns-uts",
    NsIpc = "ns-ipc",
    NsCgroup = "ns-cgroup",
    NsTime = "ns-time",
    NsTimeOffsets = "ns-time-offsets",
    NsUser = "ns-user",
    NsUserUnprivileged = "ns-user-unprivileged",
    Clone3SetTid = "clone3-set-tid",
    Clone3SetTidNested = "clone3-set-tid-nested",
    NsLastPid = "ns-last-pid",
    PidMax = "pid-max",
    PtraceSeize = "ptrace-seize",
    PtraceRegs = "ptrace-regs",
    PtraceXstate = "ptrace-xstate",
    PtraceSigmask = "ptrace-sigmask",
    PtracePeeksiginfo = "ptrace-peeksiginfo",
    PtraceRseq = "ptrace-rseq",
    PtraceSeccompFilter = "ptrace-seccomp-filter",
    PtraceSuspendSeccomp = "ptrace-suspend-seccomp",
    PtraceSyscallInfo = "ptrace-syscall-info",
    PtraceInject = "ptrace-inject",
    PidfdOpen = "pidfd-open",
    PidfdGetfd = "pidfd-getfd",
    PidfdSendSignal = "pidfd-send-signal",
    ProcessVm = "process-vm",
    ProcMemWrite = "proc-mem-write",
    MapFiles = "map-files",
    Pagemap = "pagemap",
    PagemapPfn = "pagemap-pfn",
    PagemapScan = "pagemap-scan",
    SoftDirty = "soft-dirty",
    Userfaultfd = "userfaultfd",
    UffdWpAsync = "uffd-wp-async",
    DirtyTracking = "dirty-tracking",
    MmSetMmMap = "mm-set-mm-map",
    MmSetMmField = "mm-set-mm-field",
    Kcmp = "kcmp",
    ArchMapVdso = "arch-map-vdso",
    VdsoLayout = "vdso-layout",
    Memfd = "memfd",
    SockDiagUnix = "sock-diag-unix",
    SockDiagInet = "sock-diag-inet",
    SockDiagPacket = "sock-diag-packet",
    SockDiagNetlink = "sock-diag-netlink",
    TcpRepair = "tcp-repair",
    SoPeekOff = "so-peek-off",
    CgroupFreezer = "cgroup-freezer",
    CgroupFreezeV2 = "cgroup-freeze-v2",
    CgroupFreezerV1 = "cgroup-freezer-v1",
    CapSysAdmin = "cap-sys-admin",
    CapCheckpointRestore = "cap-checkpoint-restore",
    CapSysPtrace = "cap-sys-ptrace",
    CapNetAdmin = "cap-net-admin",
    CapSysResource = "cap-sys-resource",
    CapSetuid = "cap-setuid",
    CapSetgid = "cap-setgid",
}

/// What `stasis check` says about one feature besides its probe.
#[derive(Debug, Clone, Copy)]
pub struct FeatureInfo {
    /// One line: what the probe exercises.
    pub description: &'static str,
    /// Needed by stasis's core (sandbox, dump, restore with the same PIDs).
    pub required: bool,
    /// What makes it work where it is missing.
    pub fix: &'static str,
}

const fn info(description: &'static str, required: bool, fix: &'static str) -> FeatureInfo {
    FeatureInfo {
        description,
        required,
        fix,
    }
}

impl Feature {
    /// Looks a feature up by its stable name.
    pub fn from_name(name: &str) -> Option<Feature> {
        Feature::ALL.iter().copied().find(|f| f.name() == name)
    }

    /// Names within a small edit distance of `name` (or containing it), best first.
    pub fn close_matches(name: &str) -> Vec<&'static str> {
        let mut scored: Vec<(usize, &'static str)> = Feature::ALL
            .iter()
            .map(|f| f.name())
            .filter_map(|n| {
                let d = strsim::levenshtein(name, n);
                let close = d <= 3.max(name.len() / 3);
                let contains = name.len() >= 3 && (n.contains(name) || name.contains(n));
                (close || contains).then_some((if close { d } else { 10 }, n))
            })
            .collect();
        scored.sort();
        scored.into_iter().take(5).map(|(_, n)| n).collect()
    }

    /// Description, required flag and fix hint.
    pub fn info(self) -> FeatureInfo {
        use Feature::*;
        match self {
            NsPid => info(
                "create a PID namespace; its first process is PID 1",
                true,
                "kernel option CONFIG_PID_NS=y; run as root (CAP_SYS_ADMIN)",
            ),
            NsMnt => info(
                "create a mount namespace and mount a private tmpfs in it",
                true,
                "run as root (CAP_SYS_ADMIN)",
            ),
            NsNet => info(
                "create a network namespace with its own loopback device",
                true,
                "kernel option CONFIG_NET_NS=y; run as root (CAP_SYS_ADMIN)",
            ),
            NsUts => info(
                "create a UTS namespace and set a hostname only it sees",
                true,
                "kernel option CONFIG_UTS_NS=y; run as root (CAP_SYS_ADMIN)",
            ),
            NsIpc => info(
                "create an IPC namespace with its own System V IPC objects",
                true,
                "kernel option CONFIG_IPC_NS=y; run as root (CAP_SYS_ADMIN)",
            ),
            NsCgroup => info(
                "create a cgroup namespace rooted at the current cgroup",
                true,
                "kernel option CONFIG_CGROUPS=y (Linux 4.6+); run as root (CAP_SYS_ADMIN)",
            ),
            NsTime => info(
                "create a time namespace",
                false,
                "kernel option CONFIG_TIME_NS=y (Linux 5.6+)",
            ),
            NsTimeOffsets => info(
                "shift CLOCK_MONOTONIC in a new time namespace through timens_offsets",
                false,
                "kernel option CONFIG_TIME_NS=y (Linux 5.6+)",
            ),
            NsUser => info(
                "create a user namespace and map the caller's uid and gid into it",
                false,
                "kernel option CONFIG_USER_NS=y; sysctl user.max_user_namespaces > 0",
            ),
            NsUserUnprivileged => info(
                "an unprivileged user (nobody) creates a user namespace",
                false,
                "sysctl kernel.unprivileged_userns_clone=1 (Debian) or \
                 kernel.apparmor_restrict_unprivileged_userns=0 (Ubuntu); user.max_user_namespaces > 0",
            ),
            Clone3SetTid => info(
                "clone3 with set_tid creates a process with a chosen PID in a fresh PID namespace",
                true,
                "Linux 5.5+; CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN",
            ),
            Clone3SetTidNested => info(
                "clone3 set_tid chooses the PID in two nested PID namespaces at once",
                false,
                "Linux 5.5+; CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN in every namespace level",
            ),
            NsLastPid => info(
                "writing /proc/sys/kernel/ns_last_pid steers the next PID of a PID namespace",
                false,
                "kernel option CONFIG_CHECKPOINT_RESTORE=y; CAP_CHECKPOINT_RESTORE (stasis uses clone3 set_tid)",
            ),
            PidMax => info(
                "pid_max of the host and of a fresh PID namespace (the largest restorable PID)",
                false,
                "sysctl kernel.pid_max",
            ),
            PtraceSeize => info(
                "PTRACE_SEIZE and PTRACE_INTERRUPT stop a running process without a signal",
                true,
                "CAP_SYS_PTRACE; sysctl kernel.yama.ptrace_scope below 3",
            ),
            PtraceRegs => info(
                "PTRACE_GETREGSET/SETREGSET NT_PRSTATUS read and write general registers",
                true,
                "a kernel with regset ptrace (Linux 2.6.34+)",
            ),
            PtraceXstate => info(
                "PTRACE_GETREGSET/SETREGSET NT_X86_XSTATE read and write FPU/SSE/AVX state",
                true,
                "a CPU and kernel with XSAVE",
            ),
            PtraceSigmask => info(
                "PTRACE_GETSIGMASK/SETSIGMASK read and write a thread's blocked signals",
                true,
                "Linux 3.11+",
            ),
            PtracePeeksiginfo => info(
                "PTRACE_PEEKSIGINFO reads queued signals without dequeuing them",
                true,
                "Linux 3.10+",
            ),
            PtraceRseq => info(
                "PTRACE_GET_RSEQ_CONFIGURATION reads a thread's rseq registration",
                true,
                "Linux 5.13+",
            ),
            PtraceSeccompFilter => info(
                "PTRACE_SECCOMP_GET_FILTER reads a tracee's seccomp BPF filter back",
                false,
                "kernel options CONFIG_SECCOMP_FILTER=y and CONFIG_CHECKPOINT_RESTORE=y; CAP_SYS_ADMIN",
            ),
            PtraceSuspendSeccomp => info(
                "PTRACE_O_SUSPEND_SECCOMP lets injected syscalls pass a tracee's seccomp filter",
                false,
                "kernel option CONFIG_CHECKPOINT_RESTORE=y; CAP_SYS_ADMIN and no seccomp filter on stasis itself",
            ),
            PtraceSyscallInfo => info(
                "PTRACE_GET_SYSCALL_INFO describes ptrace stops (syscall entry/exit)",
                true,
                "Linux 5.3+",
            ),
            PtraceInject => info(
                "run syscalls inside a stopped tracee through a vDSO syscall instruction, then restore it",
                true,
                "needs ptrace-seize, ptrace-regs and a [vdso] mapping (no vdso=0 boot option)",
            ),
            PidfdOpen => info(
                "pidfd_open gives a race-free handle on a process",
                true,
                "Linux 5.3+",
            ),
            PidfdGetfd => info(
                "pidfd_getfd duplicates another process's file descriptor",
                true,
                "Linux 5.6+; PTRACE_MODE_ATTACH over the target (CAP_SYS_PTRACE)",
            ),
            PidfdSendSignal => info(
                "pidfd_send_signal signals a process through its pidfd",
                true,
                "Linux 5.1+",
            ),
            ProcessVm => info(
                "process_vm_readv/process_vm_writev copy memory from and to another process",
                true,
                "kernel option CONFIG_CROSS_MEMORY_ATTACH=y; CAP_SYS_PTRACE",
            ),
            ProcMemWrite => info(
                "/proc/PID/mem writes into a read-only page of another process",
                true,
                "boot option proc_mem.force_override=ptrace or always (Linux 6.12+ may refuse forced writes)",
            ),
            MapFiles => info(
                "/proc/PID/map_files opens the object behind a mapping (identity of shared memory)",
                true,
                "kernel option CONFIG_CHECKPOINT_RESTORE=y; CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN",
            ),
            Pagemap => info(
                "/proc/PID/pagemap tells which pages of another process are present or swapped",
                true,
                "kernel option CONFIG_PROC_PAGE_MONITOR=y",
            ),
            PagemapPfn => info(
                "/proc/PID/pagemap shows page frame numbers (tells shared and zero pages apart)",
                false,
                "CAP_SYS_ADMIN (PFNs read as 0 without it)",
            ),
            PagemapScan => info(
                "the PAGEMAP_SCAN ioctl returns page ranges by category in one call",
                false,
                "Linux 6.7+ (stasis reads /proc/PID/pagemap instead)",
            ),
            SoftDirty => info(
                "soft-dirty bits (clear_refs 4, pagemap bit 55) track a process's writes",
                false,
                "kernel option CONFIG_MEM_SOFT_DIRTY=y (not needed where dirty-tracking works)",
            ),
            Userfaultfd => info(
                "userfaultfd with the UFFDIO_API handshake (missing-page faults served by stasis)",
                false,
                "kernel option CONFIG_USERFAULTFD=y; root or sysctl vm.unprivileged_userfaultfd=1",
            ),
            UffdWpAsync => info(
                "userfaultfd UFFD_FEATURE_WP_ASYNC: the kernel resolves write-protect faults itself",
                false,
                "Linux 6.7+ with CONFIG_HAVE_ARCH_USERFAULTFD_WP and CONFIG_PTE_MARKER_UFFD_WP",
            ),
            DirtyTracking => info(
                "a process's written pages seen from outside: userfaultfd WP_ASYNC in it plus PAGEMAP_SCAN",
                false,
                "needs userfaultfd, uffd-wp-async and pagemap-scan (Linux 6.7+)",
            ),
            MmSetMmMap => info(
                "prctl(PR_SET_MM_MAP) with exe_fd sets brk, stack, args, env, auxv and /proc/PID/exe",
                true,
                "kernel option CONFIG_CHECKPOINT_RESTORE=y; CAP_CHECKPOINT_RESTORE or CAP_SYS_RESOURCE",
            ),
            MmSetMmField => info(
                "single-field prctl(PR_SET_MM_*) ops",
                false,
                "CAP_SYS_RESOURCE in the bounding set (stasis needs only PR_SET_MM_MAP)",
            ),
            Kcmp => info(
                "kcmp tells whether two processes share a file, memory or other kernel object",
                true,
                "kernel option CONFIG_KCMP=y (or CONFIG_CHECKPOINT_RESTORE=y)",
            ),
            ArchMapVdso => info(
                "arch_prctl(ARCH_MAP_VDSO_64) maps the vDSO back at a chosen address",
                false,
                "kernel option CONFIG_CHECKPOINT_RESTORE=y (stasis moves the vDSO with mremap otherwise)",
            ),
            VdsoLayout => info(
                "the special mappings ([vvar], [vvar_vclock], [vdso], [vsyscall]) form a layout stasis knows",
                true,
                "a kernel whose vDSO layout stasis knows: update stasis",
            ),
            Memfd => info(
                "memfd_create with sealing (files without a path)",
                false,
                "kernel option CONFIG_MEMFD_CREATE=y (Linux 3.17+)",
            ),
            SockDiagUnix => info(
                "sock_diag reports unix sockets (peer, name, queues)",
                false,
                "kernel option CONFIG_UNIX_DIAG (modprobe unix_diag)",
            ),
            SockDiagInet => info(
                "sock_diag reports TCP sockets (state, addresses)",
                false,
                "kernel options CONFIG_INET_DIAG and CONFIG_INET_TCP_DIAG (modprobe inet_diag tcp_diag)",
            ),
            SockDiagPacket => info(
                "sock_diag reports packet sockets",
                false,
                "kernel option CONFIG_PACKET_DIAG (modprobe af_packet_diag); \
                 the probe's packet socket needs CAP_NET_RAW",
            ),
            SockDiagNetlink => info(
                "sock_diag reports netlink sockets",
                false,
                "kernel option CONFIG_NETLINK_DIAG (modprobe netlink_diag)",
            ),
            TcpRepair => info(
                "TCP_REPAIR reads an established connection's sequence numbers and window",
                false,
                "CAP_NET_ADMIN",
            ),
            SoPeekOff => info(
                "SO_PEEK_OFF peeks at queued socket data from an offset without consuming it",
                false,
                "Linux 3.4+",
            ),
            CgroupFreezer => info(
                "freeze a cgroup's processes (cgroup v2 cgroup.freeze or v1 freezer.state)",
                true,
                "mount cgroup2 (Linux 5.2+) or the v1 freezer controller",
            ),
            CgroupFreezeV2 => info(
                "cgroup v2 cgroup.freeze freezes a cgroup; cgroup.events reports frozen",
                false,
                "mount cgroup2 (Linux 5.2+), e.g. mount -t cgroup2 none /sys/fs/cgroup/unified",
            ),
            CgroupFreezerV1 => info(
                "cgroup v1 freezer.state freezes a cgroup",
                false,
                "mount the v1 freezer controller, e.g. mount -t cgroup -o freezer none /sys/fs/cgroup/freezer",
            ),
            CapSysAdmin => info(
                "CAP_SYS_ADMIN is effective",
                true,
                "run stasis as root with CAP_SYS_ADMIN",
            ),
            CapCheckpointRestore => info(
                "CAP_CHECKPOINT_RESTORE is effective",
                false,
                "Linux 5.9+; run as root with CAP_CHECKPOINT_RESTORE in the bounding set",
            ),
            CapSysPtrace => info(
                "CAP_SYS_PTRACE is effective",
                true,
                "run stasis as root with CAP_SYS_PTRACE",
            ),
            CapNetAdmin => info(
                "CAP_NET_ADMIN is effective",
                false,
                "run as root with CAP_NET_ADMIN (needed for TCP_REPAIR)",
            ),
            CapSysResource => info(
                "CAP_SYS_RESOURCE is effective",
                false,
                "add CAP_SYS_RESOURCE to the bounding set (raising hard rlimits, \
                 pipe sizes over pipe-max-size; stasis restores the mm with PR_SET_MM_MAP instead)",
            ),
            CapSetuid => info(
                "CAP_SETUID is effective",
                false,
                "run as root with CAP_SETUID (restoring processes of other users)",
            ),
            CapSetgid => info(
                "CAP_SETGID is effective",
                false,
                "run as root with CAP_SETGID (restoring processes of other groups)",
            ),
        }
    }

    /// Shortcut for `info().description`.
    pub fn description(self) -> &'static str {
        self.info().description
    }

    /// Shortcut for `info().required`.
    pub fn required(self) -> bool {
        self.info().required
    }

    /// The stasis capabilities that need this feature (alone or as one of
    /// several alternatives).
    pub fn capabilities(self) -> Vec<Capability> {
        Capability::ALL
            .iter()
            .copied()
            .filter(|c| c.requirements().iter().any(|g| g.contains(&self)))
            .collect()
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Feature {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Feature::from_name(s).ok_or_else(|| crate::Error::UnknownFeature {
            name: s.to_string(),
            close: Feature::close_matches(s),
        })
    }
}

impl serde::Serialize for Feature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Feature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Feature::from_name(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown feature {s:?}")))
    }
}

macro_rules! capabilities {
    ($( $variant:ident = $name:literal ),* $(,)?) => {
        /// Something a user can do with stasis, and the features it needs.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Capability { $( $variant ),* }

        impl Capability {
            /// Every capability, in report order.
            pub const ALL: &'static [Capability] = &[$(Capability::$variant),*];

            /// The stable name (JSON `capabilities[].name`).
            pub fn name(self) -> &'static str {
                match self { $(Capability::$variant => $name),* }
            }
        }
    };
}

capabilities! {
    Sandbox = "sandbox",
    Dump = "dump",
    RestoreExactPids = "restore-exact-pids",
    NestedPidNamespaces = "nested-pid-namespaces",
    IncrementalDump = "incremental-dump",
    LazyRestore = "lazy-restore",
    TcpEstablished = "tcp-established",
    UnixSockets = "unix-sockets",
    PacketNetlinkSockets = "packet-netlink-sockets",
    SeccompWorkloads = "seccomp-workloads",
    TimeNamespace = "time-namespace",
    MemfdFiles = "memfd-files",
    Rootless = "rootless",
}

impl Capability {
    /// One line for the summary.
    pub fn description(self) -> &'static str {
        use Capability::*;
        match self {
            Sandbox => "run a workload in a checkpointable sandbox (own namespaces, init, cgroup)",
            Dump => "checkpoint a sandbox's process tree",
            RestoreExactPids => "restore a tree with the same PIDs",
            NestedPidNamespaces => "restore workloads that made PID namespaces of their own",
            IncrementalDump => "incremental dumps (only pages written since the last dump)",
            LazyRestore => "lazy restore (pages served on first access)",
            TcpEstablished => "checkpoint established TCP connections",
            UnixSockets => "checkpoint unix sockets with their queued data",
            PacketNetlinkSockets => "checkpoint packet and netlink sockets",
            SeccompWorkloads => "checkpoint workloads that run under a seccomp filter",
            TimeNamespace => "keep CLOCK_MONOTONIC/BOOTTIME continuous across restore",
            MemfdFiles => "checkpoint memfd files",
            Rootless => "run sandboxes without root, in a user namespace",
        }
    }

    /// Features one might expect this capability to need, which it does
    /// without (reported when they are missing, to explain why it still works).
    pub fn not_needed(self) -> &'static [Feature] {
        use Feature::*;
        match self {
            // Restore sets the mm with PR_SET_MM_MAP (CAP_CHECKPOINT_RESTORE).
            Capability::RestoreExactPids => &[MmSetMmField, CapSysResource, NsLastPid],
            Capability::Dump => &[PagemapScan, SoftDirty],
            Capability::Sandbox => &[NsUser],
            _ => &[],
        }
    }

    /// All groups must be satisfied; a group is satisfied when any of its
    /// features works.
    pub fn requirements(self) -> &'static [&'static [Feature]] {
        use Feature::*;
        match self {
            Capability::Sandbox => &[
                &[NsPid],
                &[NsMnt],
                &[NsNet],
                &[NsUts],
                &[NsIpc],
                &[NsCgroup],
                &[CgroupFreezer],
                &[PidfdOpen],
                &[PidfdSendSignal],
                &[CapSysAdmin],
            ],
            Capability::Dump => &[
                &[CgroupFreezer],
                &[PtraceSeize],
                &[PtraceRegs],
                &[PtraceXstate],
                &[PtraceSigmask],
                &[PtracePeeksiginfo],
                &[PtraceRseq],
                &[PtraceSyscallInfo],
                &[PtraceInject],
                &[PidfdOpen],
                &[PidfdGetfd],
                &[ProcessVm],
                &[MapFiles],
                &[Pagemap],
                &[Kcmp],
                &[VdsoLayout],
                &[CapSysPtrace],
            ],
            Capability::RestoreExactPids => &[
                &[NsPid],
                &[Clone3SetTid],
                &[PtraceSeize],
                &[PtraceRegs],
                &[PtraceXstate],
                &[PtraceSigmask],
                &[PtraceInject],
                &[ProcessVm],
                &[ProcMemWrite],
                &[MmSetMmMap],
                &[VdsoLayout],
                &[CapSysAdmin],
            ],
            Capability::NestedPidNamespaces => &[&[Clone3SetTidNested]],
            Capability::IncrementalDump => &[&[SoftDirty, DirtyTracking]],
            Capability::LazyRestore => &[&[Userfaultfd]],
            Capability::TcpEstablished => &[&[TcpRepair], &[SockDiagInet], &[CapNetAdmin]],
            Capability::UnixSockets => &[&[SockDiagUnix], &[SoPeekOff]],
            Capability::PacketNetlinkSockets => &[&[SockDiagPacket], &[SockDiagNetlink]],
            Capability::SeccompWorkloads => &[&[PtraceSeccompFilter], &[PtraceSuspendSeccomp]],
            Capability::TimeNamespace => &[&[NsTime], &[NsTimeOffsets]],
            Capability::MemfdFiles => &[&[Memfd]],
            Capability::Rootless => &[&[NsUser], &[NsUserUnprivileged]],
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Capability {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Capability {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Capability::ALL
            .iter()
            .copied()
            .find(|c| c.name() == s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown capability {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut names: Vec<_> = Feature::ALL.iter().map(|f| f.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Feature::ALL.len());
        for f in Feature::ALL {
            assert_eq!(Feature::from_name(f.name()), Some(*f));
            let json = serde_json::to_string(f).unwrap();
            assert_eq!(serde_json::from_str::<Feature>(&json).unwrap(), *f);
        }
    }

    /// A feature is required exactly when a core capability (sandbox, dump,
    /// restore with the same PIDs) cannot do without it.
    #[test]
    fn required_means_needed_by_the_core() {
        let core = [
            Capability::Sandbox,
            Capability::Dump,
            Capability::RestoreExactPids,
        ];
        for f in Feature::ALL {
            let needed = core
                .iter()
                .any(|c| c.requirements().iter().any(|g| g == &[*f]));
            assert_eq!(f.required(), needed, "{f}");
        }
    }

    #[test]
    fn close_matches_suggest_the_intended_name() {
        assert_eq!(
            Feature::close_matches("ptrace-xstat").first(),
            Some(&"ptrace-xstate")
        );
        assert!(Feature::close_matches("pidfd").contains(&"pidfd-open"));
        assert!(Feature::close_matches("zzzzzzzzzzzzzzzzzz").is_empty());
    }
}
