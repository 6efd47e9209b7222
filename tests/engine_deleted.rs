//! Files with no name any more across a dump and restore: O_TMPFILE files
//! and files deleted while open or mapped (the `deleted` workload checks
//! each from inside).

mod common;

use common::*;

fn files_json(image: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(image.join("files.json")).expect("files.json"))
        .expect("files.json is JSON")
}

/// O_TMPFILE files on the sandbox's tmpfs and on the host's disk come back
/// with their contents, offsets and flags, still without a name, two
/// descriptions of one still one file; linkat through /proc/self/fd then
/// gives each a name, as it would have before the dump.
#[test]
fn o_tmpfile_files() {
    let h = Harness::new("tmpfile");
    let sb = h.start_c("deleted", &["tmpfile"]);
    let (image, restored) = h.dump_and_restore(&sb);
    h.expect_pass(&restored);
    let f = files_json(&image);
    let ghosts = f["ghosts"].as_array().expect("ghosts in files.json");
    assert_eq!(ghosts.len(), 2, "one record per O_TMPFILE file: {ghosts:?}");
    assert!(ghosts.iter().all(|g| g["tmpfile"] == true), "{ghosts:?}");
    assert!(
        std::fs::read(h.path("linked")).is_ok_and(|b| b.len() == 3001),
        "the restored workload linked its O_TMPFILE file into DIR"
    );
}

/// A sparse deleted file (64 MiB, 12 KiB and a byte of data) keeps its
/// holes and only its data is saved; two descriptions of it stay one file;
/// a deleted file on tmpfs mapped shared and held by an fd, a 40 MiB deleted
/// file, and a deleted file only mapped (private with a written page, and
/// shared) come back with their contents, the mappings still of their
/// files; linkat of a deleted file still fails.
#[test]
fn deleted_files_sparse_large_and_mapped() {
    let h = Harness::new("ghost");
    let sb = h.start_c("deleted", &["ghost"]);
    let (image, restored) = h.dump_and_restore(&sb);
    h.expect_pass(&restored);
    let f = files_json(&image);
    let ghosts = f["ghosts"].as_array().expect("ghosts in files.json");
    assert_eq!(ghosts.len(), 4, "one record per deleted file: {ghosts:?}");
    let sparse = ghosts
        .iter()
        .find(|g| g["path"].as_str().is_some_and(|p| p.ends_with("/sparse")))
        .expect("the sparse file is saved");
    let saved: u64 = sparse["extents"]
        .as_array()
        .expect("extents")
        .iter()
        .map(|e| e["data"]["len"].as_u64().unwrap())
        .sum();
    assert!(
        saved <= 64 * 1024,
        "only the sparse file's data is saved, not its holes: {saved} bytes"
    );
    assert!(!h.path("sparse").exists() && !h.path("mapped").exists());
}

/// A removed working directory, a removed directory held open, a removed
/// FIFO holding data (three fds on it) and a removed device node come back
/// removed, with their old names in /proc, the FIFO with its data and its
/// fds one FIFO, the node the same device.
#[test]
fn deleted_cwd_directory_fifo_and_device_node() {
    let h = Harness::new("deldirs");
    let sb = h.start_c("deleted", &["dirs"]);
    let (image, restored) = h.dump_and_restore(&sb);
    h.expect_pass(&restored);
    let p: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.join("proc-2.json")).expect("proc-2.json"))
            .expect("JSON");
    assert!(p["core"]["cwd_ghost"].is_u64(), "{}", p["core"]);
    for name in ["gone-cwd", "gone-dir", "gone-fifo", "gone-zero"] {
        assert!(!h.path(name).exists(), "{name} came back with a name");
    }
}

/// A restore that fails at a process's chdir (the image names a directory
/// that is not there) is reported naming the call, and the half-rebuilt
/// process is killed, never let run on: the kernel logs no crash of it.
#[test]
fn restore_failing_at_chdir_unwinds_without_a_crash() {
    let h = Harness::new("badcwd");
    let sb = h.start_c("deleted", &["tmpfile"]);
    let image = h.dump(&sb, &[]);
    let missing_dir = format!("/nonexistent-{}", unique("cwd"));
    edit_image_json(&image, "proc-2.json", |p| {
        p["core"]["cwd"] = serde_json::json!(missing_dir);
    });
    let name = h.new_name("bad");
    let out = h.restore_raw(&image, &name);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "the restore succeeded");
    assert!(
        err.contains(&format!("chdir({missing_dir})")),
        "the error names the chdir: {err}"
    );
    assert!(!h.ps_lists(&name), "{name} was left behind");
    // The process the error names (by its host PID): a crash of it would be
    // logged by the time the restore returned, since the sandbox is removed
    // only once its processes are gone.
    let pid: u32 = err
        .split("process ")
        .nth(1)
        .and_then(|t| t.split(':').next())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("the error names the process: {err}"));
    let out = std::process::Command::new("dmesg")
        .output()
        .expect("running dmesg");
    let crashes: Vec<String> = text(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("stasis-init[{pid}]: segfault")))
        .map(str::to_string)
        .collect();
    assert!(
        crashes.is_empty(),
        "the restored process crashed: {crashes:?}"
    );
}
