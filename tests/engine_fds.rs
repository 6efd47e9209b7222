//! eventfd, timerfd, signalfd, epoll, memfd, file locks, inotify and pidfd
//! across a dump and restore (the `fds` workload checks each from inside),
//! and the fds a dump must still refuse.

mod common;

use std::fs;

use common::*;

/// Dumps and restores the `fds MODE` workload; it must say PASS.
fn round_trip(mode: &str) -> (Harness, std::path::PathBuf) {
    let h = Harness::new(&format!("fds-{mode}"));
    let sb = h.start_c("fds", &[mode]);
    let (image, restored) = h.dump_and_restore(&sb);
    h.expect_pass(&restored);
    (h, image)
}

/// The descriptions of `files.json` of kind `kind`.
fn files_of_kind(image: &std::path::Path, kind: &str) -> Vec<serde_json::Value> {
    let text = fs::read_to_string(image.join("files.json")).expect("files.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("files.json is JSON");
    v["files"]
        .as_array()
        .expect("files.json has files")
        .iter()
        .filter(|f| f["kind"] == kind)
        .cloned()
        .collect()
}

/// Counters (one beyond 32 bits), semaphore mode, O_NONBLOCK, an fd shared by dup.
#[test]
fn eventfd_counters_and_semaphore() {
    let (_h, image) = round_trip("eventfd");
    let e = files_of_kind(&image, "eventfd");
    assert_eq!(e.len(), 3, "three eventfds (fd 13 shares fd 10's): {e:?}");
    assert!(e.iter().any(|f| f["count"] == (1u64 << 40) + 7));
    assert!(e.iter().any(|f| f["semaphore"] == true && f["count"] == 3));
}

/// One-shot, periodic, absolute real-time, absolute monotonic and
/// expired-unread timers.
#[test]
fn timerfd_remaining_interval_ticks() {
    let (_h, image) = round_trip("timerfd");
    let t = files_of_kind(&image, "timerfd");
    assert_eq!(t.len(), 5, "{t:?}");
    assert!(
        t.iter().any(|f| f["deadline_ns"].is_u64()),
        "the absolute real-time timer is saved with its deadline: {t:?}"
    );
    assert!(t.iter().any(|f| f["ticks"] == 1 && f["value_ns"] == 0));
}

/// Masks, a pending and a queued signal read through the restored signalfds.
#[test]
fn signalfd_masks() {
    round_trip("signalfd");
}

/// Watched set with events and data, a disarmed one-shot watch, an
/// edge-triggered one and a nested epoll; watches keyed by their fd numbers;
/// a thread blocked in epoll_wait wakes on an event after the restore.
#[test]
fn epoll_watched_set() {
    let (_h, image) = round_trip("epoll");
    let e = files_of_kind(&image, "epoll");
    let watches: usize = e
        .iter()
        .map(|f| f["watches"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        watches, 8,
        "6 watches of fd 10, 1 of fd 15, 1 of fd 17: {e:?}"
    );
}

/// memfds with data, holes, seals, two descriptions of one memfd, and
/// memfds mapped shared (with and without an fd) and private.
#[test]
fn memfd_contents_seals_mappings() {
    let (_h, image) = round_trip("memfd");
    let text = fs::read_to_string(image.join("files.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let memfds = v["memfds"].as_array().expect("memfds");
    assert_eq!(memfds.len(), 5, "{memfds:?}");
    let plain = memfds.iter().find(|m| m["name"] == "plain").unwrap();
    let saved: u64 = plain["extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["len"].as_u64().unwrap())
        .sum();
    assert!(
        saved < 64 * 1024,
        "the 1 MiB sparse memfd saved {saved} bytes: holes are not data"
    );
}

/// flock (exclusive and shared), OFD locks and POSIX locks of two processes.
#[test]
fn file_locks_flock_posix_ofd() {
    let (_h, image) = round_trip("locks");
    let text = fs::read_to_string(image.join("files.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let locks = v["locks"].as_array().expect("locks");
    let count = |k: &str| locks.iter().filter(|l| l["kind"] == k).count();
    assert_eq!(
        (count("flock"), count("ofd"), count("posix")),
        (2, 2, 3),
        "{locks:?}"
    );
    assert!(
        locks.iter().any(|l| l["kind"] == "posix" && l["pid"] == 3),
        "the child's POSIX lock belongs to it: {locks:?}"
    );
}

/// Watches with their wds (a gap left by a removed watch included), on the
/// host file system and on the sandbox's private /tmp; a one-shot watch.
#[test]
fn inotify_watches_and_wds() {
    let (_h, image) = round_trip("inotify");
    let i = files_of_kind(&image, "inotify");
    let w = i[0]["watches"].as_array().unwrap();
    let wds: Vec<u64> = w.iter().map(|x| x["wd"].as_u64().unwrap()).collect();
    assert_eq!(wds, vec![1, 2, 4, 5]);
    assert!(
        w.iter().any(|x| x["path"]
            .as_str()
            .unwrap()
            .starts_with("/tmp/stasis-inotify-")),
        "{w:?}"
    );
}

/// pidfds of a child, of the process itself, of a zombie child and of a
/// child already reaped, one shared by dup.
#[test]
fn pidfd_of_tree_processes() {
    let (_h, image) = round_trip("pidfd");
    let p = files_of_kind(&image, "pidfd");
    assert_eq!(p.len(), 4, "{p:?}");
}

/// A dump of `fds MODE` must fail naming the process and `words`, write no
/// image, and leave the workload running with its state intact.
fn refused(mode: &str, words: &[&str]) {
    let h = Harness::new(&format!("fds-{mode}"));
    let sb = h.start_c("fds", &[mode]);
    let image = h.image_path();
    let out = h.dump_raw(&sb, &image, &[]);
    assert!(
        !out.status.success(),
        "dump of {mode} succeeded: {}",
        describe(&out)
    );
    let err = text(&out.stderr);
    for w in ["process 2"].iter().chain(words) {
        assert!(
            err.contains(w),
            "the refusal does not mention {w:?}: {}",
            describe(&out)
        );
    }
    assert!(
        !image.join("manifest.json").exists(),
        "a refused dump left an image"
    );
    assert!(h.ps_lists(&sb), "sandbox {sb} is gone after a refused dump");
    let now = read_number(&h.path("count")).unwrap_or(0);
    h.wait_count_above(&sb, now);
    h.expect_pass(&sb);
}

#[test]
fn refuses_pidfd_outside_tree() {
    refused(
        "refuse-pidfd",
        &["fd 9", "pidfd", "outside the dumped tree"],
    );
}

#[test]
fn refuses_epoll_watch_of_closed_fd() {
    refused("refuse-epoll", &["fd 9", "epoll watch of fd 5", "closed"]);
}

#[test]
fn refuses_userfaultfd() {
    refused("refuse-uffd", &["fd 9", "anon_inode:[userfaultfd]"]);
}

#[test]
fn refuses_inotify_with_unread_events() {
    refused("refuse-inotify", &["fd 9", "inotify", "unread events"]);
}

/// A flock held through a memfd's description that only a memory mapping
/// keeps (a file's is restored: `locks_held_through_mappings`).
#[test]
fn refuses_flock_through_memfd_mapping() {
    refused(
        "refuse-maplock",
        &[
            "flock lock",
            "held through the mapping of memfd",
            "/memfd:maplock",
        ],
    );
}

/// A pty pair of the sandbox's own devpts comes back with its index and
/// passes data both ways (tests/engine_pty.rs checks the line's state).
#[test]
fn pty_pair() {
    let (_h, image) = round_trip("pty");
    let p = files_of_kind(&image, "pty");
    assert_eq!(p.len(), 2, "a master and a slave description: {p:?}");
}

/// An image that names a terminal (here the sandbox's /dev/ptmx, which
/// would open a new pty; a host terminal's path would open whatever has
/// that number now) is refused before anything of it runs.
#[test]
fn refuses_restore_of_a_terminal() {
    let h = Harness::new("fds-tty-image");
    let sb = h.start_c("fds", &["eventfd"]);
    let image = h.dump(&sb, &[]);
    let copy = h.image_path();
    copy_image(&image, &copy);
    edit_image_json(&copy, "files.json", |v| {
        let f = v["files"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|f| f["path"] == "/dev/null")
            .expect("the workload's stdin, /dev/null, in files.json");
        f["path"] = "/dev/pts/ptmx".into();
    });
    let name = h.new_name("tty");
    let out = h.restore_raw(&copy, &name);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        err.contains("/dev/pts/ptmx") && err.contains("terminals are not restored"),
        "{}",
        describe(&out)
    );
    assert!(!h.ps_lists(&name), "a refused restore left sandbox {name}");
    let restored = h.restore(&image);
    h.expect_pass(&restored);
}

/// Whether another description of `path` can take a flock of `op` now.
fn flock_free(path: &std::path::Path, op: i32) -> bool {
    use std::os::fd::AsRawFd;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    // SAFETY: flock on a file we hold open.
    let rc = unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) };
    rc == 0
}

/// A flock and OFD locks held only through shared mappings (their fds
/// closed) are held again after the restore: the workload's forked checker
/// cannot take them, and neither can the test from outside; the mappings
/// still show the files.
#[test]
fn locks_held_through_mappings() {
    let h = Harness::new("fds-maplocks");
    let sb = h.start_c("fds", &["maplocks"]);
    let flocked = h.path("maplock-flock.dat");
    assert!(
        !flock_free(&flocked, libc::LOCK_SH),
        "no lock before the dump"
    );
    let (image, restored) = h.dump_and_restore(&sb);
    let text = fs::read_to_string(image.join("files.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let held = v["mapped_locks"].as_array().expect("mapped_locks");
    let count = |k: &str| held.iter().filter(|l| l["kind"] == k).count();
    assert_eq!((count("flock"), count("ofd")), (2, 2), "{held:?}");
    assert!(
        !flock_free(&flocked, libc::LOCK_SH),
        "the restored workload's flock on {} is not held",
        flocked.display()
    );
    h.expect_pass(&restored);
}

/// What a JVM does with its performance-data file in the sandbox's /tmp:
/// flock, map shared, close the fd. The restored process still holds the
/// lock (a second JVM would otherwise delete the file as stale) and its
/// counters.
#[test]
fn jvm_shaped_perfdata_lock() {
    let (_h, image) = round_trip("hsperf");
    let text = fs::read_to_string(image.join("files.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let held = v["mapped_locks"].as_array().expect("mapped_locks");
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["kind"], "flock");
}
