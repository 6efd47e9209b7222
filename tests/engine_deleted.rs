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
