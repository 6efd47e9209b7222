//! Pipes and files across a dump and restore.

mod common;

use common::*;

/// A pipe between two processes holding 40123 unread bytes: the child reads
/// them all after restore; the parent's end is still the writer.
#[test]
fn pipe_with_unread_data() {
    let h = Harness::new("pipe");
    let sb = h.start_c("pipe", &[]);
    let (_image, restored) = h.dump_and_restore(&sb);
    h.expect_pass(&restored);
}

/// A file read to the middle, an O_APPEND log, a deleted open file,
/// /dev/null, /dev/zero and a directory, at their fd numbers with their flags.
/// After the restored workload appended to its log, the log holds exactly
/// what was written before the dump, the line written through another fd
/// after restore, then the appended line.
#[test]
fn files_offsets_append_deleted_devices() {
    let h = Harness::new("files");
    let sb = h.start_c("files", &[]);
    let (_image, restored) = h.dump_and_restore(&sb);
    h.expect_pass(&restored);
    let log = std::fs::read_to_string(h.path("app.log")).expect("DIR/app.log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 12, "app.log: {log:?}");
    assert_eq!(lines[9], "line 10 before the dump");
    assert_eq!(lines[10], "grown through another fd");
    assert_eq!(lines[11], "appended after the dump");
    assert!(
        !h.path("deleted.dat").exists(),
        "the deleted file came back under its name"
    );
}
