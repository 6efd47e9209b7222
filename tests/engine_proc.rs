//! Process state beyond files: memory shared between processes, SysV IPC,
//! timers and clocks, seccomp filters, scheduling attributes, each across a dump and restore and
//! checked from inside the restored workload.

mod common;

use common::*;

/// A parent and its child share anonymous memory (MAP_SHARED|MAP_ANONYMOUS,
/// /dev/zero, an mremap alias), a file mapping and a POSIX shared memory
/// object; after restore each sees the other's writes and they play
/// ping-pong through every object, so each is still one object. Never
/// touched pages of shared memory stay out of memory, and shared anonymous
/// memory is saved once, not once per process.
#[test]
fn memory_shared_between_processes() {
    let h = Harness::new("shmem");
    let sb = h.start_c("shmem", &[]);
    let image = h.dump(&sb, &[]);
    let shmem: serde_json::Value = serde_json::from_slice(
        &std::fs::read(image.join("shmem.json")).expect("shmem.json in the image"),
    )
    .expect("shmem.json is JSON");
    let objects = shmem["objects"].as_array().expect("objects");
    // anon (with its alias), /dev/zero, and the child's own.
    assert_eq!(objects.len(), 3, "{shmem}");
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}

/// SysV IPC of the sandbox's namespace, with two of its settings changed
/// (msgmnb, shmmni): segments (attached by parent and
/// child, one marked for removal, one attached by nobody), a semaphore set
/// and a message queue come back with their ids, keys, modes, owners,
/// contents, values and messages in order; the attached segments at the same
/// addresses and still shared (ping-pong between parent and child).
#[test]
fn sysv_ipc() {
    let h = Harness::new("sysvipc");
    let sb = h.start_c("sysvipc", &["sysctl"]);
    let image = h.dump(&sb, &[]);
    let ipc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(image.join("ipc.json")).expect("ipc.json in the image"),
    )
    .expect("ipc.json is JSON");
    assert_eq!(ipc["shm"].as_array().map(|a| a.len()), Some(3), "{ipc}");
    assert_eq!(ipc["sem"].as_array().map(|a| a.len()), Some(1), "{ipc}");
    assert_eq!(ipc["sysctls"]["msgmnb"], "12345", "{ipc}");
    assert_eq!(
        ipc["msg"][0]["messages"].as_array().map(|a| a.len()),
        Some(3),
        "{ipc}"
    );
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}

/// Scheduling policies, priorities and nice values of five threads (OTHER
/// with nice 7, BATCH with nice 3, IDLE, FIFO 11 with reset-on-fork, RR 5),
/// the process's oom_score_adj, audit login UID and child-subreaper flag
/// come back as they were; each thread checks its own. The profile adds
/// CAP_SYS_NICE (real-time policies) and CAP_AUDIT_CONTROL (loginuid) to
/// the default capabilities.
#[test]
fn process_attributes() {
    let h = Harness::new("procattrs");
    let profile = h.path("nice.toml");
    std::fs::write(
        &profile,
        r#"[process]
capabilities = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
    "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
    "CAP_SYS_NICE", "CAP_AUDIT_CONTROL",
]
"#,
    )
    .expect("writing the profile");
    let sb = run_with_profile(&h, &profile, &h.c_argv("procattrs", &[]));
    h.wait_ready(&sb);
    let (image, restored) = h.dump_and_restore(&sb);
    let p: serde_json::Value = serde_json::from_slice(
        &std::fs::read(image.join("proc-2.json")).expect("proc-2.json in the image"),
    )
    .expect("proc-2.json is JSON");
    assert_eq!(p["sched"]["oom_score_adj"], 321, "{}", p["sched"]);
    assert_eq!(
        p["sched"]["threads"].as_array().map(|a| a.len()),
        Some(5),
        "{}",
        p["sched"]
    );
    assert_eq!(p["core"]["child_subreaper"], true);
    assert_eq!(p["core"]["loginuid"], 4321);
    h.expect_pass(&restored);
}

fn verdict_number(v: &str, key: &str) -> i64 {
    verdict_field(v, key)
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in the verdict {v}"))
}

/// Interval timers and POSIX timers (ids with a gap, six clocks, signal
/// values, a thread as target, SIGEV_NONE, one never armed) come back with
/// their settings and time left, and a 20 ms timer goes on firing at its
/// thread. The image spends 3 s on disk: CLOCK_MONOTONIC and CLOCK_BOOTTIME
/// never go back, and go on from where they were (the workload sees them
/// step forward by less than 2.5 s), and the timers' time left moved with them.
#[test]
fn timers_and_clocks() {
    let h = Harness::new("timers");
    if missing(&h, "timers_and_clocks", &["ns-time-offsets"]) {
        return;
    }
    let sb = h.start_c("timers", &[]);
    let image = h.dump(&sb, &[]);
    let inv: serde_json::Value = serde_json::from_slice(
        &std::fs::read(image.join("inventory.json")).expect("inventory.json"),
    )
    .expect("JSON");
    assert!(
        inv["clocks"]["monotonic"]["sec"].as_i64().is_some(),
        "{}",
        inv["clocks"]
    );
    let proc_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.join("proc-2.json")).expect("proc-2.json"))
            .expect("JSON");
    let ids: Vec<i64> = proc_json["timers"]["posix"]
        .as_array()
        .expect("timers")
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [0, 1, 2, 4, 5, 6]);
    // The time the image spends on disk must not pass for the workload.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let restored = h.restore(&image);
    let v = h.expect_pass(&restored);
    let jump = verdict_number(&v, "jump_ms");
    assert!(
        jump < 2500,
        "the workload saw its monotonic clock jump by {jump} ms: {v}"
    );
}

/// The restore after a reboot, when the host's clocks are far behind the
/// workload's: the first restore is given clocks ten days ahead (the image
/// is edited), so that the restored workload's clocks are ahead of the
/// host's; that workload is dumped and restored again and its clocks must
/// not go back.
#[test]
fn monotonic_clock_survives_a_host_clock_behind() {
    const TEN_DAYS: i64 = 10 * 24 * 3600;
    let h = Harness::new("clockahead");
    if missing(
        &h,
        "monotonic_clock_survives_a_host_clock_behind",
        &["ns-time-offsets"],
    ) {
        return;
    }
    let sb = h.start_c("timers", &["allow_jump"]);
    let image = h.dump(&sb, &[]);
    edit_image_json(&image, "inventory.json", |inv| {
        for c in ["monotonic", "boottime"] {
            let s = inv["clocks"][c]["sec"]
                .as_i64()
                .expect("clocks in the inventory");
            inv["clocks"][c]["sec"] = (s + TEN_DAYS).into();
        }
    });
    let first = h.restore(&image);
    let last = h.path("last-mono");
    wait_until(
        "the restored workload to read its clock ten days ahead",
        READY_TIMEOUT,
        || read_number(&last).is_some_and(|m| m as i64 >= TEN_DAYS),
        || h.logs(&first),
    );
    // A command run in the restored sandbox lives in its time namespace too.
    let out = h.stasis(["exec", &first, "--", "/bin/cat", "/proc/uptime"]);
    assert!(out.status.success(), "stasis exec: {}", describe(&out));
    let uptime: f64 = text(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("/proc/uptime: {}", describe(&out)));
    assert!(uptime >= TEN_DAYS as f64, "uptime inside: {uptime}");
    let again = h.dump(&first, &[]);
    let restored = h.restore(&again);
    let v = h.expect_pass(&restored);
    assert!(verdict_number(&v, "mono") >= TEN_DAYS, "{v}");
}

/// seccomp filters in force while the tree is dumped (they refuse syscalls
/// stasis injects into every thread): a filter all threads share (TSYNC,
/// with FLAG_LOG), a thread's own second filter, no_new_privs, and a process
/// in strict mode. After restore each thread is filtered as before, and a
/// new TSYNC filter still reaches the thread that shared the first one.
#[test]
fn seccomp_filters() {
    let h = Harness::new("seccomp");
    if missing(&h, "seccomp_filters", &["ptrace-suspend-seccomp"])
        || missing(&h, "seccomp_filters", &["ptrace-seccomp-filter"])
    {
        return;
    }
    let sb = h.start_c("seccomp", &[]);
    let image = h.dump(&sb, &[]);
    let p: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.join("proc-2.json")).expect("proc-2.json"))
            .expect("JSON");
    let filters = p["seccomp"]["filters"].as_array().expect("filters");
    assert_eq!(filters.len(), 2, "{}", p["seccomp"]);
    assert!(p["core"]["no_new_privs"].as_bool().unwrap_or(false));
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}

/// A timer on CLOCK_THREAD_CPUTIME_ID made in a process of several threads
/// counts the CPU time of the thread that made it, which cannot be read
/// back: the dump is refused, naming the process and the timer, and the
/// workload goes on untouched.
#[test]
fn refuses_thread_cpu_clock_timer() {
    let h = Harness::new("threadclock");
    let sb = h.start_c("timers", &["thread_clock"]);
    let image = h.image_path();
    let out = h.dump_raw(&sb, &image, &[]);
    assert!(
        !out.status.success(),
        "the dump succeeded: {}",
        describe(&out)
    );
    let err = text(&out.stderr);
    for w in ["process 2", "POSIX timer 7", "CPU-time clock"] {
        assert!(err.contains(w), "the refusal does not mention {w:?}: {err}");
    }
    assert!(!image.join("manifest.json").exists());
    assert!(h.ps_lists(&sb), "sandbox {sb} is gone after a refused dump");
    h.expect_pass(&sb);
}
