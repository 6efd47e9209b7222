//! A dump that fails or is interrupted never harms the workload.
//!
//! The workload (tests/workloads/intact.c) records its memory map, every
//! thread's signal mask and its fd table at start, keeps changing memory
//! under a running checksum, and on SIGTERM checks that all of it is as it
//! was, that no thread is traced, and that its memory matches the checksum.
//! Each test makes a dump fail or stops it at a phase, then checks that the
//! workload runs on (it counts on, `stasis ps` says running), that it says
//! PASS, and that no image is left that restore would take.
//!
//! Phases are reached deterministically with the fault-injection hook
//! `STASIS_TEST_PAUSE_AT=<phase>:<ready file>` (docs/reliability.md): the
//! dump writes the ready file ("<its PID> <its guard's PID>") and waits
//! there for SIGKILL, a stop signal, or SIGUSR1 to go on.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// `stasis dump NAME -D IMAGE`, in the background, paused at `phase` when given.
fn spawn_dump(h: &Harness, name: &str, image: &Path, pause: Option<(&str, &Path)>) -> Child {
    let mut c = h.command();
    c.args(["dump", name, "-D"])
        .arg(image)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match pause {
        Some((phase, ready)) => {
            c.env(
                "STASIS_TEST_PAUSE_AT",
                format!("{phase}:{}", ready.display()),
            );
        }
        None => {
            c.env_remove("STASIS_TEST_PAUSE_AT");
        }
    }
    c.spawn().expect("starting stasis dump")
}

/// Waits for the pause hook's ready file; returns (dump PID, guard PID).
fn wait_paused(child: &mut Child, ready: &Path) -> (i32, i32) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(text) = read_trimmed(ready) {
            let mut w = text.split_whitespace().map(|x| x.parse::<i32>().unwrap());
            return (w.next().unwrap(), w.next().unwrap());
        }
        if let Some(st) = child.try_wait().expect("try_wait") {
            panic!(
                "stasis dump ended ({st}) before it paused: {}",
                stderr_of(child)
            );
        }
        assert!(
            Instant::now() < deadline,
            "stasis dump did not pause within {READY_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// Waits for `child` to end; returns its status and stderr.
fn wait_end(child: &mut Child) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + EXIT_TIMEOUT;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return (st, stderr_of(child));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("stasis dump did not end within {EXIT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn send(pid: i32, sig: i32) {
    // SAFETY: kill() with integers only.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

fn pid_alive(pid: i32) -> bool {
    // A zombie has no memory map left; a reaped process has no /proc entry.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The `state` of sandbox `name` in `stasis ps --json`.
fn ps_state(h: &Harness, name: &str) -> String {
    let v = h.ps_json();
    let list = v.as_array().cloned().unwrap_or_default();
    list.iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["state"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("sandbox {name} is not in stasis ps: {v}"))
}

fn wait_state(h: &Harness, name: &str, state: &str) {
    wait_until(
        &format!("stasis ps to show sandbox {name} {state}"),
        VERDICT_TIMEOUT,
        || ps_state(h, name) == state,
        || format!("it shows {}", ps_state(h, name)),
    );
}

/// No image is left that could be taken for a good one: no manifest, no
/// files, and restore refuses the directory.
fn assert_no_image(h: &Harness, image: &Path) {
    // A guard removes what a killed dump wrote, just after the dump dies.
    wait_until(
        &format!("the partial image {} to be removed", image.display()),
        VERDICT_TIMEOUT,
        || {
            fs::read_dir(image)
                .map(|mut d| d.next().is_none())
                .unwrap_or(true)
        },
        || {
            format!(
                "it holds {:?}",
                fs::read_dir(image).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            )
        },
    );
    assert!(!image.join("manifest.json").exists());
    let name = h.new_name("never");
    let out = h.restore_raw(image, &name);
    assert!(
        !out.status.success(),
        "restore of the failed dump's directory {} succeeded: {}",
        image.display(),
        describe(&out)
    );
}

/// The workload runs on untouched: it counts on, ps says running, and its
/// own checks pass (maps, masks, fds as at start; untraced; memory intact).
fn assert_untouched(h: &Harness, sb: &str) {
    wait_state(h, sb, "running");
    let now = read_number(&h.path("count")).unwrap_or(0);
    h.wait_count_above(sb, now);
    h.expect_pass(sb);
}

/// SIGKILL of `stasis dump` paused at `phase`.
fn killed_at(phase: &str) {
    let h = Harness::new(&format!("kill-{phase}"));
    let sb = h.start_c("intact", &["plain", "8"]);
    let image = h.image_path();
    let ready = h.root.join("paused");
    let mut dump = spawn_dump(&h, &sb, &image, Some((phase, &ready)));
    let (_, guard) = wait_paused(&mut dump, &ready);
    dump.kill().expect("SIGKILL of stasis dump");
    let (st, err) = wait_end(&mut dump);
    assert!(!st.success(), "killed dump succeeded: {err}");
    wait_until(
        "the dump's guard to end",
        VERDICT_TIMEOUT,
        || !pid_alive(guard),
        String::new,
    );
    assert_no_image(&h, &image);
    assert_untouched(&h, &sb);
}

#[test]
fn sigkill_while_frozen_leaves_workload_untouched() {
    killed_at("freeze");
}

#[test]
fn sigkill_mid_injection_leaves_workload_untouched() {
    killed_at("collect");
}

#[test]
fn sigkill_while_writing_pages_leaves_workload_untouched() {
    killed_at("write");
}

/// The dump and its guard both killed while the sandbox is frozen: `stasis
/// ps` shows it frozen, and `stasis thaw` lets it go on.
#[test]
fn frozen_sandbox_left_by_a_killed_dump_shows_in_ps_and_thaws() {
    let h = Harness::new("kill-frozen");
    let sb = h.start_c("intact", &["plain", "4"]);
    let image = h.image_path();
    let ready = h.root.join("paused");
    let mut dump = spawn_dump(&h, &sb, &image, Some(("freeze", &ready)));
    let (_, guard) = wait_paused(&mut dump, &ready);
    send(guard, libc::SIGKILL);
    dump.kill().expect("SIGKILL of stasis dump");
    wait_end(&mut dump);
    assert_eq!(ps_state(&h, &sb), "frozen");
    let out = h.stasis(["thaw", &sb]);
    assert!(out.status.success(), "stasis thaw: {}", describe(&out));
    assert!(!image.join("manifest.json").exists());
    let name = h.new_name("never");
    assert!(!h.restore_raw(&image, &name).status.success());
    assert_untouched(&h, &sb);
}

/// SIGINT, SIGTERM or SIGHUP to `stasis dump` paused at `phase`: it rolls
/// back and says so.
fn interrupted_at(phase: &str, sig: i32, signame: &str) {
    let h = Harness::new(&format!("int-{phase}"));
    let sb = h.start_c("intact", &["plain", "8"]);
    let image = h.image_path();
    let ready = h.root.join("paused");
    let mut dump = spawn_dump(&h, &sb, &image, Some((phase, &ready)));
    let (pid, _) = wait_paused(&mut dump, &ready);
    send(pid, sig);
    let (st, err) = wait_end(&mut dump);
    assert_eq!(st.code(), Some(1), "interrupted dump: {st}: {err}");
    assert!(
        err.contains(&format!("interrupted by {signame}")) && err.contains("rolled back"),
        "the dump does not say it was interrupted and rolled back: {err}"
    );
    assert!(
        !err.contains("ended abruptly"),
        "the guard had to step in after an orderly rollback: {err}"
    );
    assert_no_image(&h, &image);
    assert_untouched(&h, &sb);
}

#[test]
fn sighup_while_frozen_rolls_back() {
    interrupted_at("freeze", libc::SIGHUP, "SIGHUP");
}

#[test]
fn sigterm_mid_injection_rolls_back() {
    interrupted_at("collect", libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_while_writing_pages_rolls_back() {
    interrupted_at("write", libc::SIGINT, "SIGINT");
}

/// A tmpfs (or a read-only one) mounted for one test, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: PathBuf, opts: &str) -> Self {
        fs::create_dir_all(&at).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(&at)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs -o {opts} {}: {}",
            at.display(),
            describe(&out)
        );
        Mount(at)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// The image's disk fills up while pages are written: a clear error naming
/// the file, the partial files removed, the workload untouched.
#[test]
fn disk_full_fails_cleanly() {
    let h = Harness::new("diskfull");
    let sb = h.start_c("intact", &["plain", "8"]);
    let fs_dir = h.root.join("small-fs");
    let _m = Mount::tmpfs(fs_dir.clone(), "size=1m,mode=0700");
    let out = h.dump_raw(&sb, &fs_dir, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "dump into 1 MiB succeeded: {err}");
    assert!(
        err.contains("No space left on device") && err.contains("pages-2.img"),
        "the error does not name the full disk and the file: {err}"
    );
    assert_no_image(&h, &fs_dir);
    assert_untouched(&h, &sb);
}

/// The same with a process whose pages go to two page files written at
/// once: the error names the page file that met the full disk, both partial
/// files are removed, the workload is untouched.
#[test]
fn disk_full_with_two_page_files_fails_cleanly() {
    let h = Harness::new("diskfull2");
    let sb = h.start_c("intact", &["plain", "48"]);
    let fs_dir = h.root.join("small-fs");
    let _m = Mount::tmpfs(fs_dir.clone(), "size=40m,mode=0700");
    let out = h.dump_raw(&sb, &fs_dir, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "dump into 40 MiB succeeded: {err}");
    assert!(
        err.contains("No space left on device")
            && (err.contains("pages-2.img") || err.contains("pages-2-1.img")),
        "the error does not name the full disk and the file: {err}"
    );
    assert_no_image(&h, &fs_dir);
    assert_untouched(&h, &sb);
}

/// The image directory cannot be written (a read-only file system, which
/// root cannot bypass): refused before the workload is touched.
#[test]
fn read_only_image_dir_fails_cleanly() {
    let h = Harness::new("rofs");
    let sb = h.start_c("intact", &["plain", "4"]);
    let fs_dir = h.root.join("ro-fs");
    let _m = Mount::tmpfs(fs_dir.clone(), "ro,size=1m");
    for image in [fs_dir.clone(), fs_dir.join("image")] {
        let out = h.dump_raw(&sb, &image, &[]);
        let err = text(&out.stderr);
        assert!(
            !out.status.success(),
            "dump into a read-only file system succeeded: {err}"
        );
        assert!(
            err.contains("Read-only file system") && err.contains(&image.display().to_string()),
            "the error does not name the directory and the cause: {err}"
        );
        assert!(!image.join("manifest.json").exists());
    }
    assert_untouched(&h, &sb);
}

/// A resource the dump refuses, found in the second process after the first
/// one's memory was written: the refusal names it, the written files go.
#[test]
fn unsupported_resource_found_late_fails_cleanly() {
    let h = Harness::new("late");
    let sb = h.start_c("intact", &["uring-child", "4"]);
    let image = h.image_path();
    let out = h.dump_raw(&sb, &image, &[]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "dump with an io_uring succeeded: {err}"
    );
    assert!(
        err.contains("process 3") && err.contains("io_uring"),
        "the refusal does not name process 3 and its io_uring: {err}"
    );
    assert_no_image(&h, &image);
    assert_untouched(&h, &sb);
}

/// Two dumps of one sandbox at once: the second is refused while the first
/// is held mid-injection, and the first then completes (its image restores).
#[test]
fn second_concurrent_dump_is_refused() {
    let h = Harness::new("twodumps");
    let sb = h.start_c("intact", &["plain", "4"]);
    let image = h.image_path();
    let ready = h.root.join("paused");
    let mut first = spawn_dump(&h, &sb, &image, Some(("collect", &ready)));
    let (pid, _) = wait_paused(&mut first, &ready);
    let image2 = h.image_path();
    let out = h.dump_raw(&sb, &image2, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "a second dump at once succeeded");
    assert!(
        err.contains(&sb) && err.contains("busy"),
        "the refusal does not say the sandbox is busy: {err}"
    );
    assert!(
        !image2.exists(),
        "the refused dump made {}",
        image2.display()
    );
    send(pid, libc::SIGUSR1);
    let (st, err) = wait_end(&mut first);
    assert!(st.success(), "the first dump failed: {err}");
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}

/// Dumps while the workload forks and reaps a child every step: each image
/// holds a consistent tree (a child caught alive or as a zombie comes back
/// and is reaped with its status), and the restored workload passes.
#[test]
fn dump_during_fork_storm_restores() {
    let h = Harness::new("forks");
    let mut sb = h.start_c("intact", &["forker", "2"]);
    for _ in 0..3 {
        let now = read_number(&h.path("count")).unwrap_or(0);
        h.wait_count_above(&sb, now);
        let (_, restored) = h.dump_and_restore(&sb);
        sb = restored;
    }
    let v = h.expect_pass(&sb);
    let forks: u64 = verdict_field(&v, "forks")
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    assert!(forks > 0, "the workload forked nothing: {v}");
}

/// A dump that completes with --leave-running leaves nothing in the
/// workload either (no scratch mapping, masks and registers as they were).
#[test]
fn leave_running_leaves_nothing_behind() {
    let h = Harness::new("leave");
    let sb = h.start_c("intact", &["plain", "4"]);
    let image = h.dump(&sb, &["--leave-running"]);
    assert!(image.join("manifest.json").exists());
    assert_untouched(&h, &sb);
}
