//! `stasis dump --leave-running` copying memory after the workload runs again:
//! the image still holds one instant, the workload is never harmed, and a
//! dump that dies half-way leaves the workload running free.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// Host PID of the workload of sandbox `name` (the child of its init).
fn workload_pid(h: &Harness, name: &str) -> i32 {
    let init = h
        .ps_json()
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == name))
        .and_then(|e| e["init_pid"].as_i64())
        .unwrap_or_else(|| panic!("init_pid of sandbox {name}"));
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
        .unwrap_or_else(|e| panic!("children of init {init}: {e}"));
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("sandbox {name}: init {init} has no child"))
}

fn tracer_of(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("TracerPid of process {pid}"))
}

/// Waits until the running `stasis dump --leave-running` has released
/// `pid` (traced by the dump, then no longer traced): the copy after the
/// release is under way.
fn wait_released(pid: i32, dump: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut traced = false;
    loop {
        let tracer = tracer_of(pid);
        if tracer == dump.id() as i32 {
            traced = true;
        } else if traced && tracer == 0 {
            return;
        }
        if let Some(st) = dump.try_wait().expect("try_wait") {
            panic!(
                "stasis dump exited ({st}) before it could be caught copying after the release \
                 (traced seen: {traced})"
            );
        }
        assert!(
            Instant::now() < deadline,
            "stasis dump did not release the workload within 60 s"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}
/// Two threads rewrite 256 MiB without pause, each checking every page
/// before it rewrites it, while a `--leave-running` dump copies it. The dump
/// is held (STASIS_TEST_PAUSE_AT=live-copy) after the release, before its
/// first page, until the writers have gone over all their pages once more:
/// every one of those writes met a write-protected page whose frozen content
/// the dump had to save first, so write faults were served while the
/// workload ran. The original checks itself and goes on; the restored copy
/// resumes from the image and finds every page consistent with the one
/// instant it was frozen at (a page saved after the workload wrote it would
/// hold a generation from the future, which the restored writer finds when
/// it gets there or in its final check).
#[test]
fn leave_running_image_is_one_instant() {
    let h = Harness::new("live-instant");
    if missing(&h, "leave_running_image_is_one_instant", &["userfaultfd"]) {
        return;
    }
    let sb = h.start_c("livemem", &["256", "2"]);
    let image = h.image_path();
    let ready = h.path("live-copy-paused");
    let dump = h
        .command()
        .args(["dump", &sb, "-D"])
        .arg(&image)
        .args(["--leave-running", "--json"])
        .env(
            "STASIS_TEST_PAUSE_AT",
            format!("live-copy:{}", ready.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting stasis dump");
    wait_until(
        "the dump to pause before its live copy",
        Duration::from_secs(60),
        || ready.exists(),
        || h.logs(&sb),
    );
    let dump_pid: i32 = std::fs::read_to_string(&ready)
        .expect("reading the pause's ready file")
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the dump's PID in the ready file");
    // Two more passes of the slowest writer: at least one whole pass began
    // after the pause did.
    let before = read_number(&h.path("count")).unwrap_or(0);
    h.wait_count_above(&sb, before + 1);
    // SAFETY: kill() with integers only.
    assert_eq!(unsafe { libc::kill(dump_pid, libc::SIGUSR1) }, 0);
    let out = dump.wait_with_output().expect("waiting for stasis dump");
    assert!(
        out.status.success(),
        "stasis dump --leave-running failed: {}\n{}",
        describe(&out),
        h.logs(&sb)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("dump --json printed no JSON ({e}): {}", describe(&out)));
    let live_pages = st["live_pages"].as_u64().unwrap_or(0);
    let faults = st["live_faults"].as_u64().unwrap_or(0);
    eprintln!(
        "frozen {} ms, live copy {} ms, {live_pages} pages copied live, {faults} write faults served",
        st["frozen_ms"], st["live_ms"]
    );
    assert!(
        live_pages >= 65536,
        "the 256 MiB area was not copied after the release: {st:#}"
    );
    assert!(
        faults > 0,
        "the writers went over their pages while the copy waited, yet no write fault was served: {st:#}"
    );

    // The original runs on, unharmed.
    let before = read_number(&h.path("count")).unwrap_or(0);
    h.wait_count_above(&sb, before + 1);
    let v = h.expect_pass(&sb);
    eprintln!("original: {v}");

    let restored = h.restore(&image);
    let at_restore = read_number(&h.path("count")).unwrap_or(0);
    h.wait_count_above(&restored, at_restore + 1);
    let v = h.expect_pass(&restored);
    eprintln!("restored: {v}");
}

/// A `--leave-running` dump killed while it copies memory after the release:
/// the kernel lifts every write-protection when the userfaultfd goes, so the
/// workload (whose writers were waiting on protected pages) runs on and
/// checks itself; no image is left claiming to be complete.
#[test]
fn killed_live_dump_leaves_workload_running() {
    let h = Harness::new("live-killed");
    if missing(
        &h,
        "killed_live_dump_leaves_workload_running",
        &["userfaultfd"],
    ) {
        return;
    }
    let sb = h.start_c("livemem", &["1024", "2"]);
    let pid = workload_pid(&h, &sb);
    let image = h.image_path();
    let mut dump = h
        .command()
        .args(["dump", &sb, "-D"])
        .arg(&image)
        .arg("--leave-running")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting stasis dump");
    wait_released(pid, &mut dump);
    dump.kill().expect("killing stasis dump");
    let st = dump.wait().expect("waiting for stasis dump");
    assert!(!st.success(), "stasis dump was killed, yet exited {st}");
    assert!(
        !image.join("manifest.json").exists(),
        "a dump killed during its copy left a complete-looking image"
    );
    // The writers go on: more passes, then a clean verdict.
    let now = read_number(&h.path("count")).unwrap_or(0);
    h.wait_count_above(&sb, now + 2);
    let v = h.expect_pass(&sb);
    eprintln!("after the killed dump: {v}");
}

/// Memory of every kind (private and shared anonymous, file mappings, heap,
/// stack, PROT_NONE, MAP_GROWSDOWN, never-touched pages) through a
/// `--leave-running` dump: the original's memory map and contents are as
/// before (the write-protection leaves no trace), and the restored copy
/// finds every pattern where it was.
#[test]
fn leave_running_memory_of_every_kind() {
    let h = Harness::new("live-kinds");
    if missing(&h, "leave_running_memory_of_every_kind", &["userfaultfd"]) {
        return;
    }
    let sb = h.start_c("memory", &[]);
    let image = h.dump(&sb, &["--leave-running"]);
    h.expect_pass(&sb);
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}

/// Eight threads running and sleeping through a `--leave-running` dump: the
/// original and the restored copy both check their threads.
#[test]
fn leave_running_threads() {
    let h = Harness::new("live-threads");
    if missing(&h, "leave_running_threads", &["userfaultfd"]) {
        return;
    }
    let sb = h.start_c("threads", &["8"]);
    let image = h.dump(&sb, &["--leave-running"]);
    h.expect_pass(&sb);
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}

/// A tree of processes through a `--leave-running` dump: one userfaultfd per
/// process, the faults of all of them served while each one's pages are
/// copied; the original and the restored tree both check themselves.
#[test]
fn leave_running_tree() {
    let h = Harness::new("live-tree");
    if missing(&h, "leave_running_tree", &["userfaultfd"]) {
        return;
    }
    let sb = h.start_c("tree", &[]);
    let image = h.image_path();
    let out = h.dump_raw(&sb, &image, &["--leave-running", "--json"]);
    assert!(out.status.success(), "dump: {}", describe(&out));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("dump --json");
    assert!(
        st["processes"].as_u64().unwrap_or(0) > 1,
        "the tree workload has more than one process: {st:#}"
    );
    assert!(
        st["live_pages"].as_u64().unwrap_or(0) > 0,
        "no page copied after the release: {st:#}"
    );
    h.expect_pass(&sb);
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}

/// The workload unmaps memory the `--leave-running` dump has not saved yet:
/// its frozen content is gone, so the dump fails, naming the process and the
/// range, leaves no complete image, and the workload runs on unharmed.
#[test]
fn live_dump_fails_when_unsaved_memory_is_unmapped() {
    let h = Harness::new("live-unmap");
    if missing(
        &h,
        "live_dump_fails_when_unsaved_memory_is_unmapped",
        &["userfaultfd"],
    ) {
        return;
    }
    let sb = h.start_c("livemem", &["1024", "2", "unmap"]);
    let pid = workload_pid(&h, &sb);
    let image = h.image_path();
    let mut dump = h
        .command()
        .args(["dump", &sb, "-D"])
        .arg(&image)
        .arg("--leave-running")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting stasis dump");
    wait_released(pid, &mut dump);
    std::fs::write(h.path("unmap-now"), "now").expect("writing unmap-now");
    let out = dump.wait_with_output().expect("waiting for stasis dump");
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "the dump succeeded although unsaved memory was unmapped during its copy: {}",
        describe(&out)
    );
    assert!(
        err.contains("was unmapped while the --leave-running dump was still copying it"),
        "the error does not say what happened: {err}"
    );
    // The workload says so once its munmap returned (the dump may exit first).
    let unmapped = h.path("unmapped");
    wait_until(
        "the workload to unmap its second area",
        READY_TIMEOUT,
        || unmapped.exists(),
        || h.logs(&sb),
    );
    assert!(
        !image.join("manifest.json").exists(),
        "a failed dump left a complete-looking image"
    );
    let now = read_number(&h.path("count")).unwrap_or(0);
    h.wait_count_above(&sb, now + 1);
    h.expect_pass(&sb);
}
