//! Reliability over time and in parallel, and security of the sandbox and of
//! a restore.
//!
//! - Endurance: one workload (tests/workloads/endure.c) goes through N
//!   consecutive dump/restore cycles while it keeps changing its memory,
//!   appending to a journal in its tmpfs, feeding a child through a pipe,
//!   running two threads and a timer, with a running checksum of all of it;
//!   after the last cycle it replays every step and says PASS or FAIL. The
//!   host must have leaked nothing (processes, fds of this test process,
//!   mounts, cgroup directories, veths, the state directory) and stasis's own
//!   peak RSS (wait4 rusage of every `stasis dump` and `stasis restore`) must
//!   not grow from cycle to cycle. 100 cycles, about 30 s on a 2-core
//!   machine.
//! - Concurrency: four sandboxes dumped and restored at once, each image
//!   restored twice side by side, every copy verifying itself.
//! - Security: the sandbox gives the workload exactly the credentials and
//!   capabilities its profile grants (tests/workloads/creds.c checks from
//!   inside), for the default profile, a root profile with few capabilities
//!   and a non-root user; after a restore each task (main thread, a thread
//!   with a smaller effective set, a child with other ids, securebits,
//!   bounding set and no_new_privs) has exactly what it had. Every file of
//!   the image and of the state directory is root's, 0600 (directories 0700).
//!
//! The tests of this file run one at a time (`serial`): the leak checks count
//! this process's fds and every process of this test binary's sandboxes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;

/// How long one `stasis dump` or `stasis restore` may take here.
const STASIS_TIMEOUT: Duration = Duration::from_secs(120);

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a stasis command to completion and returns its output and its peak
/// resident set size in KiB (wait4's rusage of that process).
fn measured(mut cmd: Command, scratch: &Path) -> (Output, u64) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let out_path = scratch.join(format!("stdout-{n}"));
    let err_path = scratch.join(format!("stderr-{n}"));
    cmd.stdout(fs::File::create(&out_path).expect("creating a stdout file"))
        .stderr(fs::File::create(&err_path).expect("creating a stderr file"));
    let child = cmd.spawn().expect("starting stasis");
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + STASIS_TIMEOUT;
    let mut status = 0;
    // SAFETY: rusage is plain old data; all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on our own child writes the status and the rusage
        // into the two live locals.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break;
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(e.raw_os_error(), Some(libc::EINTR), "wait4({pid}): {e}");
            continue;
        }
        if Instant::now() >= deadline {
            // SAFETY: kill of our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("{cmd:?} did not finish within {STASIS_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(child);
    let out = Output {
        status: std::process::ExitStatus::from_raw(status),
        stdout: fs::read(&out_path).unwrap_or_default(),
        stderr: fs::read(&err_path).unwrap_or_default(),
    };
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    (out, ru.ru_maxrss as u64)
}

/// A profile with a veth on a /30 of its own (10.X.Y.0/30, X from this
/// process, Y from a counter): returns its path and the host end's address.
fn veth_profile(h: &Harness) -> (PathBuf, Ipv4Addr) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let x = 150 + (std::process::id() % 50) as u8;
    let y = ((n * 4) % 256) as u8;
    let host = Ipv4Addr::new(10, x, y, 1);
    let inside = Ipv4Addr::new(10, x, y, 2);
    let path = h.root.join("veth.toml");
    fs::write(
        &path,
        format!("[network.veth]\naddress = \"{inside}/30\"\nhost_address = \"{host}/30\"\n"),
    )
    .expect("writing the profile");
    (path, host)
}

/// Host interfaces by name (`ip -o link`).
fn host_links() -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("running ip -o link");
    assert!(out.status.success(), "ip -o link: {}", describe(&out));
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// Host interfaces that carry `addr` (`ip -o -4 addr`).
fn links_with_address(addr: Ipv4Addr) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr"])
        .output()
        .expect("running ip -o -4 addr");
    assert!(out.status.success(), "ip -o -4 addr: {}", describe(&out));
    let want = format!("{addr}/");
    text(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w.starts_with(&want)))
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
        .collect()
}

/// What a test could leak on the host, restricted to what belongs to this
/// test binary: its sandboxes are all named `TAG-WHAT-PID-N`, their cgroups
/// are named after them, and every stasis process it starts has its
/// STASIS_STATE_DIR in its environment.
#[derive(Debug, PartialEq)]
struct HostView {
    /// Processes in a cgroup of ours, with our state dir in their
    /// environment, or children of this process: "pid comm".
    procs: BTreeSet<String>,
    /// This process's fds: number -> target.
    fds: BTreeMap<String, String>,
    /// Host mounts (mountinfo without the mount IDs).
    mounts: BTreeMap<String, usize>,
    /// Cgroup directories named after our sandboxes, in every hierarchy.
    cgroups: BTreeSet<String>,
    /// Host interfaces.
    links: BTreeSet<String>,
    /// Entries of the state directory.
    state: BTreeSet<String>,
}

impl HostView {
    fn marker() -> String {
        format!("-{}-", std::process::id())
    }

    fn take(state: &Path) -> HostView {
        let me = std::process::id();
        let marker = Self::marker();
        let env_mark = format!("STASIS_STATE_DIR={}", state.display());
        let mut procs = BTreeSet::new();
        for e in fs::read_dir("/proc").expect("listing /proc").flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            let dir = e.path();
            let cgroup = fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
            let environ = fs::read(dir.join("environ")).unwrap_or_default();
            let stat = fs::read_to_string(dir.join("stat")).unwrap_or_default();
            let after_comm: Vec<&str> = stat
                .rfind(')')
                .map(|i| stat[i + 2..].split_whitespace().take(2).collect())
                .unwrap_or_default();
            let ppid = after_comm.get(1).and_then(|p| p.parse::<u32>().ok());
            // A sandbox's init that has exited stays a zombie until the
            // host's PID 1, its parent since `stasis run -d` or `restore -d`
            // returned, reaps it: it holds nothing but its PID.
            if after_comm.first() == Some(&"Z") && ppid != Some(me) {
                continue;
            }
            let ours = cgroup.contains(&marker)
                || environ.split(|&b| b == 0).any(|v| v == env_mark.as_bytes())
                || ppid == Some(me);
            if ours {
                let comm = fs::read_to_string(dir.join("comm")).unwrap_or_default();
                procs.insert(format!("{pid} {}", comm.trim()));
            }
        }
        let fds = fs::read_dir("/proc/self/fd")
            .expect("listing /proc/self/fd")
            .flatten()
            .map(|e| {
                let target = fs::read_link(e.path())
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                (e.file_name().to_string_lossy().into_owned(), target)
            })
            .collect();
        // Tests of other checkouts running on this host at the same time
        // mount file systems under their own target/tmp: not ours.
        let our_root = Path::new(TMP);
        let mut mounts = BTreeMap::new();
        for line in fs::read_to_string("/proc/self/mountinfo")
            .expect("reading /proc/self/mountinfo")
            .lines()
        {
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.len() < 5 {
                continue;
            }
            let point = Path::new(fields[4]);
            if point.to_string_lossy().contains("/target/tmp/") && !point.starts_with(our_root) {
                continue;
            }
            *mounts.entry(fields[2..].join(" ")).or_insert(0) += 1;
        }
        let mut cgroups = BTreeSet::new();
        for h in fs::read_dir("/sys/fs/cgroup")
            .expect("listing /sys/fs/cgroup")
            .flatten()
        {
            let parent = h.path().join("stasis");
            for e in fs::read_dir(&parent).into_iter().flatten().flatten() {
                if e.path().is_dir() && e.file_name().to_string_lossy().contains(&marker) {
                    cgroups.insert(e.path().display().to_string());
                }
            }
        }
        // The digest cache of host files is kept on purpose, across
        // sandboxes: not a leak.
        let state = fs::read_dir(state)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "file-digests.json")
            .collect();
        HostView {
            procs,
            fds,
            mounts,
            cgroups,
            links: host_links(),
            state,
        }
    }

    /// Asserts that nothing of ours was added since `before`. Host
    /// interfaces come and go with other users of the host: only those
    /// listed in `ours` (seen carrying this test's addresses) count.
    /// Waits (up to 10 s) until nothing of ours was added since `before`:
    /// a dump's guard removes the killed sandbox's cgroup and exits a moment
    /// after the dump returns (`common::wait_endings` waits for its marker).
    fn assert_nothing_leaked_eventually(state: &Path, before: &HostView, ours: &BTreeSet<String>) {
        common::wait_endings(state);
        common::wait_until(
            "nothing of the test left on the host",
            Duration::from_secs(10),
            || HostView::take(state).leaks_since(before, ours).is_empty(),
            || {
                format!(
                    "leaked on the host: {}",
                    HostView::take(state).leaks_since(before, ours).join("; ")
                )
            },
        );
    }

    fn leaks_since(&self, before: &HostView, ours: &BTreeSet<String>) -> Vec<String> {
        let mut leaks = Vec::new();
        let added: Vec<_> = self.procs.difference(&before.procs).collect();
        if !added.is_empty() {
            leaks.push(format!("processes: {added:?}"));
        }
        if self.fds.len() != before.fds.len() {
            leaks.push(format!(
                "fds of the test process: {:?} before, {:?} now",
                before.fds, self.fds
            ));
        }
        let mounts: Vec<_> = self
            .mounts
            .iter()
            .filter(|(m, n)| before.mounts.get(*m).copied().unwrap_or(0) < **n)
            .map(|(m, _)| m)
            .collect();
        if !mounts.is_empty() {
            leaks.push(format!("mounts: {mounts:?}"));
        }
        let cgroups: Vec<_> = self.cgroups.difference(&before.cgroups).collect();
        if !cgroups.is_empty() {
            leaks.push(format!("cgroup directories: {cgroups:?}"));
        }
        let links: Vec<_> = self
            .links
            .difference(&before.links)
            .filter(|l| ours.contains(*l))
            .collect();
        if !links.is_empty() {
            leaks.push(format!("host interfaces: {links:?}"));
        }
        let state: Vec<_> = self.state.difference(&before.state).collect();
        if !state.is_empty() {
            leaks.push(format!("state directory entries: {state:?}"));
        }
        leaks
    }
}

fn steps_of(verdict: &str) -> u64 {
    verdict_field(verdict, "steps")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no steps= in the verdict {verdict:?}"))
}

/// The median of `v`.
fn median(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// How much the median of stasis's peak RSS over the last quarter of the
/// cycles may exceed the median over the first quarter: allocator noise
/// (the spread of single runs is about 700 KiB here). A leak of 10 KiB per
/// cycle over 75 cycles, or of anything proportional to the image, is
/// above it.
const RSS_NOISE_KIB: u64 = 512;

fn endurance(cycles: usize) {
    let _serial = serial();
    let h = Harness::new("rl-endure");
    let (profile, host_addr) = veth_profile(&h);
    let scratch = h.root.join("out");
    fs::create_dir_all(&scratch).expect("creating the output directory");
    // The state directory and everything else is empty now; the veth
    // addresses are this test's alone.
    assert!(
        links_with_address(host_addr).is_empty(),
        "{host_addr} is already in use on this host"
    );
    let before = HostView::take(&h.state);

    let started = Instant::now();
    let mut name = run_with_profile(&h, &profile, &h.c_argv("endure", &[]));
    h.wait_ready(&name);
    let mut ours = BTreeSet::new();
    let (mut dump_rss, mut restore_rss) = (Vec::new(), Vec::new());
    let mut last = read_number(&h.path("count")).expect("DIR/count at ready");
    for cycle in 1..=cycles {
        // The workload went on since it was (re)started.
        h.wait_count_above(&name, last);
        ours.extend(links_with_address(host_addr));
        let image = h.image_path();
        let mut c = h.command();
        c.args(["dump", &name, "-D"]).arg(&image);
        let (out, rss) = measured(c, &scratch);
        assert!(
            out.status.success(),
            "cycle {cycle}: stasis dump {name} failed: {}\n{}",
            describe(&out),
            h.logs(&name)
        );
        dump_rss.push(rss);
        last = read_number(&h.path("count")).expect("DIR/count after the dump");
        let next = h.new_name(&format!("c{cycle}"));
        let mut c = h.command();
        c.arg("restore").arg(&image).args(["--name", &next, "-d"]);
        let (out, rss) = measured(c, &scratch);
        assert!(
            out.status.success(),
            "cycle {cycle}: stasis restore {} failed: {}\n{}",
            image.display(),
            describe(&out),
            h.logs(&next)
        );
        restore_rss.push(rss);
        fs::remove_dir_all(&image).expect("removing the image");
        name = next;
    }
    last = h.wait_count_above(&name, last);
    ours.extend(links_with_address(host_addr));
    let verdict = h.expect_pass(&name);
    let elapsed = started.elapsed();
    assert!(
        steps_of(&verdict) >= last,
        "the workload says {verdict} but it counted to {last}"
    );
    let out = h.rm(&name);
    assert!(out.status.success(), "stasis rm {name}: {}", describe(&out));
    assert!(
        !ours.is_empty(),
        "no host interface ever carried {host_addr}"
    );
    fs::remove_dir_all(&scratch).expect("removing the output directory");
    HostView::assert_nothing_leaked_eventually(&h.state, &before, &ours);
    assert!(
        links_with_address(host_addr).is_empty(),
        "a host interface still carries {host_addr}: {:?}",
        links_with_address(host_addr)
    );

    let k = (cycles / 4).max(2);
    eprintln!(
        "endurance: {cycles} cycles in {:.1} s ({:.0} ms per cycle), {verdict}",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / cycles as f64,
    );
    for (what, v) in [("dump", &dump_rss), ("restore", &restore_rss)] {
        let (early, late) = (median(&v[..k]), median(&v[cycles - k..]));
        eprintln!(
            "stasis {what} peak RSS: median {early} KiB over the first {k} cycles, {late} KiB over \
             the last {k}; min {} KiB, max {} KiB",
            v.iter().min().unwrap_or(&0),
            v.iter().max().unwrap_or(&0)
        );
        assert!(
            late <= early + RSS_NOISE_KIB,
            "stasis {what}'s peak RSS grew from a median of {early} KiB (first {k} cycles) to \
             {late} KiB (last {k} cycles): {v:?}"
        );
    }
}

/// 100 consecutive dump/restore cycles (25-30 s here).
#[test]
fn endurance_100_cycles() {
    endurance(100);
}

/// Four sandboxes at once, sharing one state directory: each is dumped, and
/// its image restored twice, side by side, every step of the four running in
/// parallel. Every copy must go on from its dump and pass its own checks.
#[test]
fn parallel_sandboxes_restored_twice() {
    const N: usize = 4;
    let _serial = serial();
    let owner = Harness::new("rl-par");
    let before = HostView::take(&owner.state);
    let mut workers: Vec<Harness> = (0..N)
        .map(|i| Harness::new(&format!("rl-par{i}")))
        .collect();
    for w in &mut workers {
        w.state = owner.state.clone();
    }
    let results: Vec<(u64, String, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .iter()
            .map(|h| {
                s.spawn(move || {
                    let sb = h.start_c("endure", &[]);
                    let image = h.dump(&sb, &[]);
                    let at_dump = read_number(&h.path("count")).expect("DIR/count after the dump");
                    let a = h.restore(&image);
                    h.wait_count_above(&a, at_dump);
                    let b = h.restore(&image);
                    // Both copies run side by side now.
                    assert!(h.ps_lists(&a) && h.ps_lists(&b), "{a} and {b} both run");
                    let va = h.expect_pass(&a);
                    // Only b writes DIR/count from now on.
                    fs::remove_file(h.path("count")).expect("removing DIR/count");
                    h.wait_count_above(&b, 0);
                    let vb = h.expect_pass(&b);
                    for n in [&a, &b] {
                        let out = h.rm(n);
                        assert!(out.status.success(), "stasis rm {n}: {}", describe(&out));
                    }
                    (at_dump, va, vb)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|t| t.join().expect("a sandbox's thread panicked"))
            .collect()
    });
    for (i, (at_dump, va, vb)) in results.iter().enumerate() {
        eprintln!("sandbox {i}: dumped at {at_dump}; copy a: {va}; copy b: {vb}");
        assert!(
            steps_of(va) > *at_dump && steps_of(vb) > *at_dump,
            "sandbox {i}: both copies go on from the dump at {at_dump}: {va:?}, {vb:?}"
        );
    }
    drop(workers);
    HostView::assert_nothing_leaked_eventually(&owner.state, &before, &BTreeSet::new());
}

// ---- Security ----------------------------------------------------------

/// Capability numbers by name (include/uapi/linux/capability.h).
const CAPS: &[(&str, u32)] = &[
    ("CAP_CHOWN", 0),
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_DAC_READ_SEARCH", 2),
    ("CAP_FOWNER", 3),
    ("CAP_FSETID", 4),
    ("CAP_KILL", 5),
    ("CAP_SETGID", 6),
    ("CAP_SETUID", 7),
    ("CAP_SETPCAP", 8),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_RAW", 13),
    ("CAP_SYS_CHROOT", 18),
    ("CAP_MKNOD", 27),
    ("CAP_AUDIT_WRITE", 29),
    ("CAP_SETFCAP", 31),
];

/// The capabilities configs/default.toml grants.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

fn mask(names: &[&str]) -> u64 {
    names
        .iter()
        .map(|n| {
            let bit = CAPS
                .iter()
                .find(|(c, _)| c == n)
                .unwrap_or_else(|| panic!("unknown capability {n}"))
                .1;
            1u64 << bit
        })
        .fold(0, |a, b| a | b)
}

/// A capability mask of this (test) process from /proc/self/status.
fn own_caps(key: &str) -> u64 {
    let status = fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:\t")))
        .unwrap_or_else(|| panic!("no {key} in /proc/self/status"));
    u64::from_str_radix(v.trim(), 16).expect("a hex capability mask")
}

/// Every file under `root` (itself included) is root's and unreadable to
/// others: directories 0700, files 0600.
fn assert_private(root: &Path, what: &str) {
    let mut bad = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    let mut seen = 0;
    while let Some(p) = todo.pop() {
        let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
        seen += 1;
        let mode = m.mode() & 0o7777;
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        if m.uid() != 0 || m.gid() != 0 || mode != want {
            bad.push(format!(
                "{} ({:o}, {}:{}, expected {want:o}, 0:0)",
                p.display(),
                mode,
                m.uid(),
                m.gid()
            ));
        }
        if m.is_dir() {
            todo.extend(
                fs::read_dir(&p)
                    .unwrap_or_else(|e| panic!("listing {}: {e}", p.display()))
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
    assert!(seen > 1, "{what} {} is empty", root.display());
    assert!(
        bad.is_empty(),
        "{what}: readable by others or not root's: {bad:?}"
    );
}

/// One security case: a profile (TOML text added to the defaults), the ids
/// and capabilities the workload must have under it.
fn creds_case(tag: &str, profile_text: &str, uid: u32, gid: u32, groups: &[u32], granted: &[&str]) {
    let _serial = serial();
    let mut h = Harness::new(tag);
    // A state directory stasis makes itself.
    h.state = h.root.join("fresh-state");
    let profile = h.root.join("profile.toml");
    fs::write(&profile, profile_text).expect("writing the profile");
    let keep = mask(granted);
    let bnd = keep & own_caps("CapBnd");
    let kept = keep & own_caps("CapPrm");
    // A root workload gets everything of its bounding set on exec; another
    // user gets what the sandbox put in its ambient set.
    let (eff, inh, amb) = if uid == 0 {
        (bnd, kept, 0)
    } else {
        (kept, kept, kept)
    };
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    let expect = format!(
        "uid={uid},gid={gid},groups={},inh={inh:016x},prm={eff:016x},eff={eff:016x},bnd={bnd:016x},amb={amb:016x},nnp=1",
        groups.join(":")
    );
    let name = run_with_profile(&h, &profile, &h.c_argv("creds", &[&expect]));
    h.wait_ready(&name);
    eprintln!(
        "{tag}: expected {expect}; the sandbox gave {}",
        read_trimmed(&h.path("creds-start")).unwrap_or_default()
    );
    assert_private(&h.state, "the state directory of a running sandbox");
    let image = h.dump(&name, &[]);
    assert_private(&image, "the image");
    let restored = h.restore(&image);
    assert_private(&h.state, "the state directory of a restored sandbox");
    let v = h.expect_pass(&restored);
    let child = read_trimmed(&h.path("verdict-child")).unwrap_or_default();
    eprintln!("{tag}: restored: {v}; child: {child}");
}

/// The default profile: root with configs/default.toml's 14 capabilities,
/// no_new_privs.
#[test]
fn creds_default_profile() {
    creds_case("rl-creds-default", "", 0, 0, &[], DEFAULT_CAPS);
}

/// Root with only five capabilities.
#[test]
fn creds_root_few_capabilities() {
    let caps = [
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_KILL",
        "CAP_CHOWN",
    ];
    let text = format!(
        "[process]\ncapabilities = [{}]\n",
        caps.map(|c| format!("\"{c}\"")).join(", ")
    );
    creds_case("rl-creds-few", &text, 0, 0, &[], &caps);
}

/// A non-root user with supplementary groups and two capabilities.
#[test]
fn creds_non_root_user() {
    let text = "[process]\nuser = 1000\ngroup = 1000\ngroups = [2000, 2001]\n\
                capabilities = [\"CAP_NET_BIND_SERVICE\", \"CAP_KILL\"]\n";
    creds_case(
        "rl-creds-user",
        text,
        1000,
        1000,
        &[2000, 2001],
        &["CAP_NET_BIND_SERVICE", "CAP_KILL"],
    );
}

/// A non-root user with no capability at all.
#[test]
fn creds_non_root_no_capabilities() {
    let text = "[process]\nuser = 1000\ngroup = 1000\ncapabilities = []\n";
    creds_case("rl-creds-none", text, 1000, 1000, &[], &[]);
}
