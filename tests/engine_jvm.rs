//! A real JVM (JDK 17 and later, default flags) dumped and restored: it
//! flocks its performance-data file, maps it shared and closes the fd, so
//! the lock lives on only through the mapping. Skipped, saying so, where no
//! `java` with the source-file launcher is installed (Debian:
//! `apt-get install default-jdk-headless`).

mod common;

use std::fs;
use std::process::Command;

use common::*;

/// Whether the JVM's performance-data file in sandbox `name` is locked:
/// another process's flock on it must fail.
fn perfdata_locked(h: &Harness, name: &str, pid: &str) -> bool {
    let script = format!(
        "import fcntl, glob, sys\n\
         f = glob.glob('/tmp/hsperfdata_*/{pid}')\n\
         if not f: print('NOFILE'); sys.exit()\n\
         fd = open(f[0], 'rb')\n\
         try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('FREE')\n\
         except BlockingIOError:\n    print('LOCKED')\n"
    );
    let out = h.stasis(["exec", name, "--", "python3", "-c", script.as_str()]);
    let t = text(&out.stdout);
    assert!(
        out.status.success() && (t.contains("LOCKED") || t.contains("FREE")),
        "checking the perf-data lock in {name}: {}",
        describe(&out)
    );
    t.contains("LOCKED")
}

#[test]
fn jvm_with_perfdata_lock() {
    let java = Command::new("java").arg("-version").output();
    if !java.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED jvm_with_perfdata_lock: no `java` here");
        return;
    }
    let h = Harness::new("jvm");
    let src = std::path::Path::new(WORKLOADS).join("Perf.java");
    let dir = h.dir.to_string_lossy().into_owned();
    let sb = h.start(&["java", src.to_str().unwrap(), &dir]);
    let pid = read_trimmed(&h.path("ready")).unwrap_or_default();
    assert!(
        perfdata_locked(&h, &sb, &pid),
        "the JVM in {sb} holds no lock on its perf-data file:\n{}",
        h.logs(&sb)
    );
    let (image, restored) = h.dump_and_restore(&sb);
    let files: serde_json::Value =
        serde_json::from_slice(&fs::read(image.join("files.json")).unwrap()).unwrap();
    let held = files["mapped_locks"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        held.iter().any(|l| l["kind"] == "flock"),
        "no flock held through a mapping in the image: {files}"
    );
    assert!(
        perfdata_locked(&h, &restored, &pid),
        "the restored JVM lost its perf-data lock:\n{}",
        h.logs(&restored)
    );
    h.expect_pass(&restored);
}
